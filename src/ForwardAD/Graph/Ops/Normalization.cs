using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Batch normalisation over the last axis (channels last: BatchNorm2d on [H, W, C], BatchNorm1d on [F]), with
/// statistics over the n = B·(elements/C) rows of each channel. Inputs: x, running mean, running variance (state),
/// then optionally γ, β. y = x̂ γ + β with x̂ = (x − μ) σ̂⁻¹.
/// <para>Training with batch statistics (μ, σ² of the batch, biased): the statistics depend on every example, so the
/// exact derivative couples the examples of a batch (what PyTorch's forward AD gives):
/// ẏ = γ σ̂⁻¹ (ẋ − mean(ẋ) − x̂ · mean(ẋ ⊙ x̂)) + γ̇ x̂ + β̇ (means over the rows of a channel, per tangent channel), and,
/// the projection being symmetric, x̄ = γ σ̂⁻¹ (ȳ − mean(ȳ) − x̂ · mean(ȳ ⊙ x̂)); γ̄ = Σ ȳ ⊙ x̂, β̄ = Σ ȳ. A per-example
/// guess is then no longer per example: a tangent on one example moves every other example's output.</para>
/// <para>Evaluation (and <see cref="FrozenStatistics"/> in training) normalises with the running statistics: an affine map
/// per channel, ẏ = γ σ̂⁻¹ ẋ + γ̇ x̂ + β̇, examples independent. The running statistics are updated in training
/// (batch mean, unbiased batch variance, momentum <see cref="Momentum"/>, as PyTorch) by plans that update state;
/// frozen statistics normalise with the values from before the step's update.</para>
/// </summary>
public sealed record BatchNormOp(float Momentum = 0.1f, float Epsilon = 1e-5f, bool FrozenStatistics = false) : Op
{
    /// <summary>"batch-norm".</summary>
    public override string Kind => "batch-norm";
    internal override bool ForwardWritesAuxiliary => true;

    private static bool Affine(in RuleContext c) => c.Node.Inputs.Length == 5;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        if (inputs.Count != 3 && inputs.Count != 5)
            throw new ArgumentException($"Node '{name}': batch-norm takes x, running mean, running variance and optionally γ, β (3 or 5 inputs); got {inputs.Count}.");
        if (!(Momentum is > 0f and <= 1f) || !(Epsilon > 0f))
            throw new ArgumentException($"Node '{name}': batch-norm needs 0 < momentum ≤ 1 and ε > 0; got momentum {Momentum}, ε {Epsilon}.");
        var x = inputs[0];
        if (!x.IsBatched || x.Shape.Rank < 1)
            throw new ShapeMismatchException(name, "a batched activation [..., C]", x.ToString(), "Batch normalisation normalises the last axis (channels last).");
        var channels = new Shape(x.Shape.Last);
        for (int i = 1; i < inputs.Count; i++)
        {
            bool state = i < 3;
            if (inputs[i].Shape != channels || inputs[i].IsState != state || (!state && !inputs[i].IsParameter))
                throw new ShapeMismatchException(name, $"{(state ? "state" : "parameter")} {channels}", inputs[i].ToString(),
                    "Inputs 2 and 3 are the running mean and variance (State nodes), 4 and 5 the scale γ and shift β (parameters), one value per channel.");
        }
        return (x.Shape, true);
    }

    /// <summary>x̂ [B, ...], then σ̂⁻¹ [C].</summary>
    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => node.ElementCount(batchSize) + node.Shape.Last;

    /// <summary>Two [B, ...] temporaries and six per-channel vectors.</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) =>
        2L * node.ElementCount(batchSize) + 6L * node.Shape.Last;

    private readonly record struct Buffers(View Normalized, View InverseStd, View Temporary, View Temporary2, View Vector0, View Vector1, View Scale, View Vector3, View Vector4, int Rows);

    private static Buffers Split(in RuleContext c)
    {
        int elements = c.Node.ElementCount(c.BatchSize), channels = c.Node.Shape.Last;
        var (aux, s) = (c.Output.Auxiliary, c.Scratch);
        View Vector(int i) => s.Slice(2 * elements + i * channels, channels);
        return new Buffers(aux.Slice(0, elements), aux.Slice(elements, channels), s.Slice(0, elements), s.Slice(elements, elements),
            Vector(0), Vector(1), Vector(2), Vector(3), Vector(4), elements / channels);
    }

    private bool UsesBatchStatistics(in RuleContext c) => c.Training && !FrozenStatistics;

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var backend = c.Backend;
        var b = Split(c);
        var (x, runningMean, runningVariance) = (c.Input(0).Value, c.Input(1).Value, c.Input(2).Value);
        bool batchStatistics = UsesBatchStatistics(c), update = c.UpdatesRunningStatistics;
        if ((batchStatistics || update) && b.Rows < 2)
            throw new ArgumentException($"Node '{c.Node.Name}': batch statistics need more than one value per channel; got {b.Rows}. " +
                "Use a batch size of at least 2, or evaluation mode.");
        // Vector0 = −μ_B; Vector1 = σ²_B = mean((x − μ_B)²) (biased, for normalising).
        if (batchStatistics || update) backend.ColumnMoments(x, b.Vector0, b.Vector1, b.Temporary);
        View negativeMean = b.Vector0;
        if (batchStatistics) backend.ReciprocalSqrt(b.Vector1, Epsilon, b.InverseStd);
        else
        {
            // Running statistics (evaluation, or frozen): x̂ = (x − μ_run) σ̂_run⁻¹, with the values before this step's update.
            backend.ReciprocalSqrt(runningVariance, Epsilon, b.InverseStd);
            backend.Scale(runningMean, -1f, b.Scale);
            negativeMean = b.Scale;
        }
        // x̂ = (x − μ) σ̂⁻¹ (saved for the derivatives), y = x̂ γ + β.
        if (Affine(c)) backend.NormalizeScaleShiftColumns(x, negativeMean, b.InverseStd, c.Input(3).Value, c.Input(4).Value, b.Normalized, c.Output.Value);
        else
        {
            backend.ShiftScaleColumns(x, negativeMean, b.InverseStd, b.Normalized);
            backend.Copy(b.Normalized, c.Output.Value);
        }
        if (update)
        {
            // μ_run ← (1 − m) μ_run + m μ_B; σ²_run ← (1 − m) σ²_run + m · n/(n − 1) σ²_B (PyTorch keeps the unbiased variance).
            backend.Axpby(-Momentum, b.Vector0, 1f - Momentum, runningMean);
            backend.Axpby(Momentum * b.Rows / (b.Rows - 1f), b.Vector1, 1f - Momentum, runningVariance);
        }
    }

    /// <summary>Scale = γ σ̂⁻¹ (σ̂⁻¹ without affine parameters).</summary>
    private static void WriteScale(in RuleContext c, in Buffers b)
    {
        if (Affine(c)) c.Backend.MultiplyChannels(b.InverseStd, c.Input(3).Value, b.Scale, accumulate: false);
        else c.Backend.Copy(b.InverseStd, b.Scale);
    }

    /// <summary>destination (+)= Scale ⊙ (v − mean(v) − x̂ mean(v ⊙ x̂)) with batch statistics, Scale ⊙ v without, then
    /// + <paramref name="addend"/> when given: the JVP of the normalisation for one tangent channel, and (symmetric) its VJP
    /// for one cotangent channel.</summary>
    private void Normalize(in RuleContext c, in Buffers b, View v, View destination, bool accumulate, View productSums = default, View sums = default,
        View addend = default)
    {
        var backend = c.Backend;
        if (!UsesBatchStatistics(c))
        {
            backend.ScaleColumns(v, b.Scale, destination, accumulate);
            if (!addend.IsEmpty) backend.Add(destination, addend, destination);
            return;
        }
        backend.NormalizationTangent(b.Normalized, v, b.Scale, destination, accumulate, b.Vector3, b.Vector4, b.Temporary, b.Temporary2, productSums, sums, addend);
    }

    /// <summary>Adds the injected tangent itself: with batch statistics in the normalisation's last pass.</summary>
    internal override bool JvpAddsInjectedTangent => true;

    internal override void Jvp(in RuleContext c)
    {
        var b = Split(c);
        WriteScale(c, b);
        int elements = b.Normalized.Length, channels = c.Node.Shape.Last;
        var (dx, dy, injected) = (c.Input(0).Tangent, c.Output.Tangent, c.InjectedTangent);
        bool parameterTangents = Affine(c) && (!c.Input(3).Tangent.IsEmpty || !c.Input(4).Tangent.IsEmpty);
        for (int k = 0; k < c.TangentCount; k++)
        {
            var output = dy.Channel(k, elements);
            // The seed comes last, as the plan adds it: folded into the normalisation's pass when nothing else is added.
            var seed = injected.IsEmpty ? default : injected.Channel(k, elements);
            bool folded = !seed.IsEmpty && !dx.IsEmpty && !parameterTangents;
            if (!dx.IsEmpty) Normalize(c, b, dx.Channel(k, elements), output, accumulate: false, addend: folded ? seed : default);
            else c.Backend.Fill(0f, output);
            if (Affine(c))
            {
                if (!c.Input(3).Tangent.IsEmpty) c.Backend.ScaleColumns(b.Normalized, c.Input(3).Tangent.Channel(k, channels), output, accumulate: true);
                if (!c.Input(4).Tangent.IsEmpty) c.Backend.AddBias(c.Input(4).Tangent.Channel(k, channels), output);
            }
            if (!seed.IsEmpty && !folded) c.Backend.Add(output, seed, output);
        }
    }

    internal override void Vjp(in RuleContext c)
    {
        var b = Split(c);
        int elements = b.Normalized.Length;
        var (dy, dx) = (c.Output.Cotangent, c.Input(0).Cotangent);
        // γ̄ = Σ_r x̂ ȳ and β̄ = Σ_r ȳ are the sums x̄'s batch statistics take anyway: with one cotangent channel and γ̄, β̄ to
        // overwrite, they come from that pass (the same row-order sums) instead of three more passes over the activation.
        bool shared = !dx.IsEmpty && Affine(c) && UsesBatchStatistics(c) && dy.Length == elements
            && !c.Input(3).Cotangent.IsEmpty && !c.Accumulate(3) && !c.Input(4).Cotangent.IsEmpty && !c.Accumulate(4);
        if (!dx.IsEmpty)
        {
            WriteScale(c, b);
            for (int channel = 0; channel < dy.Length / elements; channel++)
                Normalize(c, b, dy.Channel(channel, elements), dx.Channel(channel, elements), c.Accumulate(0),
                    shared ? c.Input(3).Cotangent : default, shared ? c.Input(4).Cotangent : default);
        }
        if (!Affine(c) || shared) return;
        if (dx.IsEmpty && dy.Length == elements && !c.Input(3).Cotangent.IsEmpty && !c.Accumulate(3) && !c.Input(4).Cotangent.IsEmpty && !c.Accumulate(4))
        {
            // γ̄ and β̄ alone (a site's parameter update): one pass over x̂ and ȳ.
            c.Backend.ColumnSumsWithProducts(b.Normalized, dy, c.Input(4).Cotangent, c.Input(3).Cotangent, b.Temporary);
            return;
        }
        if (!c.Input(3).Cotangent.IsEmpty)
        {
            c.Backend.MultiplyChannels(b.Normalized, dy, b.Temporary, accumulate: false);
            c.Backend.SumRows(b.Temporary, c.Input(3).Cotangent, c.Accumulate(3));
        }
        if (!c.Input(4).Cotangent.IsEmpty) c.Backend.SumRows(dy, c.Input(4).Cotangent, c.Accumulate(4));
    }
}
