using ForwardAD.Autodiff;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Dense layer s = x Wᵀ + b over the last axis, x: [..., in], W: [out, in], b: [out].
/// JVP: ṡ = ẋ Wᵀ + x Ẇᵀ + ḃ. VJP: x̄ = s̄ W, W̄ = s̄ᵀ x, b̄ = Σ_rows s̄.
/// The K tangent channels of ẋ go through one GEMM with K·B rows; so do the C channels of a pull-back's x̄.
/// W̄ = s̄ᵀ x is the one place a dense site's estimated cotangent becomes a weight update (docs/design.md §2, sites).
/// </summary>
public sealed record LinearOp : Op
{
    /// <summary>"linear".</summary>
    public override string Kind => "linear";

    /// <summary>x̄ = s̄ W reads only the weight.</summary>
    internal override bool InputVjpReadsForwardValues => false;

    /// <summary>W̄ = s̄ᵀ x reads x (and the weight, a parameter); b̄ = Σ s̄ reads nothing, nor does any rule read s.</summary>
    internal override bool VjpReadsInput(int input) => input != 2;
    internal override bool VjpReadsOutput => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 3);
        var (x, weight) = (inputs[0], inputs[1]);
        if (!x.IsBatched) throw new ShapeMismatchException(name, "a batched input", $"parameter {x}", "A linear layer's input must be data or an activation.");
        if (weight.Shape.Rank != 2 || weight.Shape[1] != x.Shape.Last)
            throw new ShapeMismatchException(name, $"weight [out, {x.Shape.Last}]", $"{weight.Shape} for {weight}",
                $"The weight's second dimension must equal the input's last dimension ({x} has {x.Shape.Last}).");
        if (inputs.Count == 3 && inputs[2].Shape != new Shape(weight.Shape[0]))
            throw new ShapeMismatchException(name, $"bias [{weight.Shape[0]}]", $"{inputs[2].Shape} for {inputs[2]}", "The bias must have one element per output.");
        return (x.Shape.WithLast(weight.Shape[0]), true);
    }

    private static float Beta(in RuleContext c, int input) => c.Accumulate(input) ? 1f : 0f;

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var (x, w, y) = (c.Input(0).Value, c.Input(1).Value, c.Output.Value);
        int outputs = c.Node.Shape.Last, inputs = w.Length / outputs, rows = y.Length / outputs;
        bool hasBias = c.Node.Inputs.Length == 3;
        // b + Σ_p x·w rounds as Σ + b: the bias rides in y (β = 1) when the GEMM adds its whole depth in one rounding, the
        // bits of the product then the bias pass without that pass over y (nor the GEMM's clearing of y).
        bool biasInProduct = hasBias && Folds(c, rows, outputs, inputs);
        if (biasInProduct) c.Backend.RepeatRow(c.Input(2).Value, y);
        c.Backend.Gemm(Transpose.No, Transpose.Yes, rows, outputs, inputs, 1f, x, inputs, w, inputs, biasInProduct ? 1f : 0f, y, outputs);
        if (hasBias && !biasInProduct) c.Backend.AddBias(c.Input(2).Value, y);
    }

    /// <summary>Whether an addend may ride in this product's C: its depth within the GEMM's single block, and a matrix on both
    /// sides (a GEMM may hand a product with one row or one column to another kernel, whose rounding was not measured).</summary>
    private static bool Folds(in RuleContext c, int rows, int outputs, int inputs) =>
        rows > 1 && outputs > 1 && inputs <= c.Backend.GemmSingleBlockDepth;

    /// <summary>Adds the injected tangent itself: inside the tangent product when that is the only term and the GEMM sums the
    /// depth in one block, else after the terms, as the plan would.</summary>
    internal override bool JvpAddsInjectedTangent => true;

    internal override void Jvp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Tangent);
        int outputs = c.Node.Shape.Last, inputs = w.Value.Length / outputs;
        int rowsPerChannel = dy.Length / c.TangentCount / outputs;
        var injected = c.InjectedTangent;
        bool biasTangent = c.Node.Inputs.Length == 3 && !c.Input(2).Tangent.IsEmpty;
        // ṡ = ẋ Wᵀ + seed with the seed in ṡ before a β = 1 product when that product is the only term: the bits of the
        // product then the plan's add (see Forward).
        bool seedInProduct = !injected.IsEmpty && !x.Tangent.IsEmpty && w.Tangent.IsEmpty && !biasTangent
            && Folds(c, c.TangentCount * rowsPerChannel, outputs, inputs);
        bool written = false;
        if (!x.Tangent.IsEmpty)
        {
            // All K channels at once: [K·rows, in] × [in, out].
            if (seedInProduct) c.Backend.Copy(injected, dy);
            c.Backend.Gemm(Transpose.No, Transpose.Yes, c.TangentCount * rowsPerChannel, outputs, inputs, 1f,
                x.Tangent, inputs, w.Value, inputs, seedInProduct ? 1f : 0f, dy, outputs);
            written = true;
        }
        if (!w.Tangent.IsEmpty)
        {
            int weightElements = w.Value.Length, channelElements = rowsPerChannel * outputs;
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.Gemm(Transpose.No, Transpose.Yes, rowsPerChannel, outputs, inputs, 1f,
                    x.Value, inputs, w.Tangent.Channel(k, weightElements), inputs, written ? 1f : 0f,
                    dy.Channel(k, channelElements), outputs);
            written = true;
        }
        if (biasTangent)
        {
            if (!written) c.Backend.Fill(0f, dy);
            int channelElements = rowsPerChannel * outputs;
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.AddBias(c.Input(2).Tangent.Channel(k, outputs), dy.Channel(k, channelElements));
        }
        if (!injected.IsEmpty && !seedInProduct) c.Backend.Add(dy, injected, dy);
    }

    internal override void Vjp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Cotangent);
        int outputs = c.Node.Shape.Last, inputs = w.Value.Length / outputs, rows = dy.Length / outputs;
        if (!x.Cotangent.IsEmpty) // rows = C·B·positions: every pull-back channel in one GEMM
            c.Backend.Gemm(Transpose.No, Transpose.No, rows, inputs, outputs, 1f, dy, outputs, w.Value, inputs, Beta(c, 0), x.Cotangent, inputs);
        if (!w.Cotangent.IsEmpty)
            c.Backend.Gemm(Transpose.Yes, Transpose.No, outputs, inputs, rows, 1f, dy, outputs, x.Value, inputs, Beta(c, 1), w.Cotangent, inputs);
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Cotangent.IsEmpty)
            c.Backend.SumRows(dy, c.Input(2).Cotangent, c.Accumulate(2));
    }
}
