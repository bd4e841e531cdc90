using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Normalisation of each row over the last axis, every token of every example on its own (no coupling between examples,
/// unlike batch normalisation): inputs x [..., D], then optionally the affine parameters [D]. With x̂ the normalised row and
/// s = σ̂⁻¹ its inverse scale, the derivative of the normalisation is the symmetric projection
/// N(v) = s (v − mean(v) − x̂ mean(v ⊙ x̂)) (LayerNorm; RMSNorm drops the mean(v) term), so
/// JVP ẏ = γ ⊙ N(ẋ) + γ̇ ⊙ x̂ (+ β̇) and VJP x̄ = N(γ ⊙ ȳ), γ̄ = Σ_rows ȳ ⊙ x̂, β̄ = Σ_rows ȳ.
/// The forward pass saves x̂ [B, ..., D] and s [B·rows].
/// </summary>
public abstract record RowNormalizationOp(float Epsilon) : Op
{
    private protected abstract bool Centre { get; }
    private protected abstract int AffineInputs { get; }
    internal override bool ForwardWritesAuxiliary => true;

    private protected static bool HasScale(in RuleContext c) => c.Node.Inputs.Length > 1;
    private protected static bool HasShift(in RuleContext c) => c.Node.Inputs.Length > 2;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        if (inputs.Count != 1 && inputs.Count != 1 + AffineInputs)
            throw new ArgumentException($"Node '{name}': {Kind} takes x and optionally {(AffineInputs == 2 ? "γ, β (1 or 3 inputs)" : "γ (1 or 2 inputs)")}; got {inputs.Count}.");
        if (!(Epsilon > 0f)) throw new ArgumentException($"Node '{name}': {Kind} needs ε > 0; got {Epsilon}.");
        var x = inputs[0];
        if (!x.IsBatched || x.Shape.Rank < 1)
            throw new ShapeMismatchException(name, "a batched activation [..., D]", x.ToString(), $"{Kind} normalises the last axis of each example's rows.");
        var width = new Shape(x.Shape.Last);
        for (int i = 1; i < inputs.Count; i++)
            if (inputs[i].Shape != width || inputs[i].IsBatched)
                throw new ShapeMismatchException(name, $"parameter {width}", inputs[i].ToString(), "The affine scale γ (and shift β) has one value per feature of the last axis.");
        return (x.Shape, true);
    }

    /// <summary>x̂ [B, ..., D], then s [rows].</summary>
    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) =>
        node.ElementCount(batchSize) + node.ElementCount(batchSize) / node.Shape.Last;

    /// <summary>γ ⊙ ȳ for the C channels of a pull-back (and ȳ ⊙ x̂ for γ̄, C = 1).</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) =>
        node.Inputs.Length > 1 ? (long)Math.Max(1, channels) * node.ElementCount(batchSize) : 0;

    private static (View Normalized, View InverseStd) Saved(in RuleContext c)
    {
        int elements = c.Node.ElementCount(c.BatchSize);
        return (c.Output.Auxiliary.Slice(0, elements), c.Output.Auxiliary.Slice(elements, elements / c.Node.Shape.Last));
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var (normalized, inverseStd) = Saved(c);
        c.Backend.NormalizeLastAxis(c.Input(0).Value, c.Node.Shape.Last, Epsilon, Centre, normalized, inverseStd);
        if (!HasScale(c))
        {
            c.Backend.Copy(normalized, c.Output.Value);
            return;
        }
        c.Backend.ScaleColumns(normalized, c.Input(1).Value, c.Output.Value, accumulate: false);
        if (HasShift(c)) c.Backend.AddBias(c.Input(2).Value, c.Output.Value);
    }

    internal override void Jvp(in RuleContext c)
    {
        var (normalized, inverseStd) = Saved(c);
        var (dx, dy) = (c.Input(0).Tangent, c.Output.Tangent);
        int elements = normalized.Length, width = c.Node.Shape.Last;
        if (!dx.IsEmpty)
        {
            // All K channels in one call, then γ ⊙ in place.
            c.Backend.NormalizeLastAxisDerivative(normalized, inverseStd, dx, Centre, dy, accumulate: false);
            if (HasScale(c)) c.Backend.ScaleColumns(dy, c.Input(1).Value, dy, accumulate: false);
        }
        else c.Backend.Fill(0f, dy);
        if (HasScale(c) && !c.Input(1).Tangent.IsEmpty)
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.ScaleColumns(normalized, c.Input(1).Tangent.Channel(k, width), dy.Channel(k, elements), accumulate: true);
        if (HasShift(c) && !c.Input(2).Tangent.IsEmpty)
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.AddBias(c.Input(2).Tangent.Channel(k, width), dy.Channel(k, elements));
    }

    internal override void Vjp(in RuleContext c)
    {
        var (normalized, inverseStd) = Saved(c);
        var (dy, dx) = (c.Output.Cotangent, c.Input(0).Cotangent);
        if (!dx.IsEmpty)
        {
            var v = dy;
            if (HasScale(c))
            {
                v = c.Scratch.Slice(0, dy.Length);
                c.Backend.ScaleColumns(dy, c.Input(1).Value, v, accumulate: false);
            }
            c.Backend.NormalizeLastAxisDerivative(normalized, inverseStd, v, Centre, dx, c.Accumulate(0));
        }
        if (HasScale(c) && !c.Input(1).Cotangent.IsEmpty)
        {
            var product = c.Scratch.Slice(0, normalized.Length);
            c.Backend.MultiplyChannels(normalized, dy, product, accumulate: false);
            c.Backend.SumRows(product, c.Input(1).Cotangent, c.Accumulate(1));
        }
        if (HasShift(c) && !c.Input(2).Cotangent.IsEmpty) c.Backend.SumRows(dy, c.Input(2).Cotangent, c.Accumulate(2));
    }
}

/// <summary>LayerNorm over the last axis (PyTorch's nn.LayerNorm(D)): y = x̂ γ + β, x̂ = (x − μ_row)/√(σ²_row + ε) with the
/// biased variance of the row. Inputs x, then optionally γ, β [D]. Rules on <see cref="RowNormalizationOp"/>.</summary>
public sealed record LayerNormOp(float Epsilon = 1e-5f) : RowNormalizationOp(Epsilon)
{
    /// <summary>"layer-norm".</summary>
    public override string Kind => "layer-norm";
    private protected override bool Centre => true;
    private protected override int AffineInputs => 2;
}

/// <summary>RMSNorm over the last axis (Zhang &amp; Sennrich 2019): y = γ ⊙ x / √(mean_row(x²) + ε). Inputs x, then optionally γ [D].
/// Its derivative is LayerNorm's without the centring term: N(v) = s (v − x̂ mean(v ⊙ x̂)).</summary>
public sealed record RmsNormOp(float Epsilon = 1e-5f) : RowNormalizationOp(Epsilon)
{
    /// <summary>"rms-norm".</summary>
    public override string Kind => "rms-norm";
    private protected override bool Centre => false;
    private protected override int AffineInputs => 1;
}

/// <summary>
/// Token embedding: ids [T] (a <see cref="TokensOp"/>) and a table E [V, D] → y [T, D], y_t = E[id_t] (padding ids give zeros).
/// JVP ẏ_t = Ė[id_t] (a gather of the table's tangent rows, all K channels in one call); VJP Ē[v] = Σ_{t: id_t = v} ȳ_t
/// (a scatter-add in the order of the batch's positions: deterministic). No derivative flows to the ids. The output is a
/// site; its parameter update is that scatter-add of the site's cotangent.
/// </summary>
public sealed record EmbeddingOp : Op
{
    /// <summary>"embedding".</summary>
    public override string Kind => "embedding";

    /// <summary>No input cotangent at all (ids are not differentiable).</summary>
    internal override bool InputVjpReadsForwardValues => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (ids, table) = (inputs[0], inputs[1]);
        if (ids.Op is not TokensOp tokens)
            throw new ArgumentException($"Node '{name}': an embedding looks up token ids from Tokens(); got {ids}.");
        if (table.IsBatched || table.Shape.Rank != 2 || table.Shape[0] != tokens.Vocabulary)
            throw new ShapeMismatchException(name, $"table [{tokens.Vocabulary}, D]", table.ToString(), $"One row per token of the vocabulary of {ids}.");
        return (new Shape(tokens.Length, table.Shape[1]), true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.GatherRows(c.Input(1).Value, c.Input(0).Value, c.Node.Shape.Last, c.Output.Value);

    internal override void Jvp(in RuleContext c) =>
        c.Backend.GatherRows(c.Input(1).Tangent, c.Input(0).Value, c.Node.Shape.Last, c.Output.Tangent);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(1).Cotangent.IsEmpty)
            c.Backend.ScatterAddRows(c.Output.Cotangent, c.Input(0).Value, c.Node.Shape.Last, c.Input(1).Cotangent, c.Accumulate(1));
    }
}

/// <summary>
/// Learned positional embedding: x [T, D] and P [maxLength, D] (T ≤ maxLength) → y[b, t] = x[b, t] + P[t].
/// JVP ẏ = ẋ + Ṗ[:T] broadcast over the batch; VJP x̄ = ȳ, P̄[:T] = Σ_b ȳ_b (rows beyond T get 0). The output is a site.
/// </summary>
public sealed record AddPositionOp : Op
{
    /// <summary>"add-position".</summary>
    public override string Kind => "add-position";

    /// <summary>x̄ = ȳ reads nothing.</summary>
    internal override bool InputVjpReadsForwardValues => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (x, positions) = (inputs[0], inputs[1]);
        if (!x.IsBatched || x.Shape.Rank != 2)
            throw new ShapeMismatchException(name, "a batched sequence [T, D]", x.ToString(), "Positional embeddings add one row per position of a sequence.");
        if (positions.IsBatched || positions.Shape.Rank != 2 || positions.Shape[1] != x.Shape[1] || positions.Shape[0] < x.Shape[0])
            throw new ShapeMismatchException(name, $"table [maxLength ≥ {x.Shape[0]}, {x.Shape[1]}]", positions.ToString(),
                $"One row of width {x.Shape[1]} per position, for sequences up to its length.");
        return (x.Shape, true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        c.Backend.Copy(c.Input(0).Value, c.Output.Value);
        c.Backend.AddBias(c.Input(1).Value.Slice(0, c.Node.Shape.ElementCount), c.Output.Value);
    }

    internal override void Jvp(in RuleContext c)
    {
        var (dx, dp, dy) = (c.Input(0).Tangent, c.Input(1).Tangent, c.Output.Tangent);
        if (!dx.IsEmpty) c.Backend.Copy(dx, dy);
        else c.Backend.Fill(0f, dy);
        if (dp.IsEmpty) return;
        int used = c.Node.Shape.ElementCount, table = c.InputShape(1).ElementCount, channel = dy.Length / c.TangentCount;
        for (int k = 0; k < c.TangentCount; k++) c.Backend.AddBias(dp.Slice(k * table, used), dy.Channel(k, channel));
    }

    internal override void Vjp(in RuleContext c)
    {
        var (dy, dx, dp) = (c.Output.Cotangent, c.Input(0).Cotangent, c.Input(1).Cotangent);
        if (!dx.IsEmpty) c.Backend.Copy(dy, dx, c.Accumulate(0));
        if (dp.IsEmpty) return;
        int used = c.Node.Shape.ElementCount;
        c.Backend.SumRows(dy, dp.Slice(0, used), c.Accumulate(1));
        if (!c.Accumulate(1) && dp.Length > used) c.Backend.Fill(0f, dp.Slice(used, dp.Length - used));
    }
}
