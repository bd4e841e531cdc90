using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// The closed set of operations. Each op keeps its shape rule, forward, JVP and VJP side by side;
/// a new op that forgets a rule does not compile. Rules are written against <see cref="Backend"/>
/// kernels, so every backend runs the same rules.
/// JVP rules write the output tangent for all K channels at once ([K, B, ...] layout) and are
/// called only when at least one input tangent is non-zero; VJP rules write the cotangents of those
/// inputs that have one, overwriting or adding as <c>RuleContext.Accumulate(i)</c> says (the first
/// writer of a cotangent in the backward order overwrites, later ones add).
/// </summary>
public abstract record Op
{
    private protected Op() { }

    /// <summary>Short name used in messages.</summary>
    public abstract string Kind { get; }

    /// <summary>Leaves (inputs, labels, parameters) have no rules: their tangent is their seed.</summary>
    public virtual bool IsLeaf => false;

    /// <summary>False for values no derivative flows through (class labels, regression targets).</summary>
    public virtual bool IsDifferentiable => true;

    /// <summary>Elements of the auxiliary buffer the forward pass saves for the derivative rules.</summary>
    internal virtual int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => 0;

    /// <summary>True when the forward kernel writes the auxiliary buffer even without derivatives (losses).</summary>
    internal virtual bool ForwardWritesAuxiliary => false;

    internal abstract void Forward(in RuleContext c, bool saveAuxiliary);
    internal abstract void Jvp(in RuleContext c);
    internal abstract void Vjp(in RuleContext c);
}

/// <summary>Leaf ops: values come from the user or the parameter store, tangents from seeds.</summary>
public abstract record LeafOp : Op
{
    public override bool IsLeaf => true;
    internal override void Forward(in RuleContext c, bool saveAuxiliary) { }
    internal override void Jvp(in RuleContext c) { }
    internal override void Vjp(in RuleContext c) { }
}

/// <summary>Real-valued data fed per example (images, features, regression targets).</summary>
public sealed record InputOp(bool Differentiable = true) : LeafOp
{
    public override string Kind => "input";
    public override bool IsDifferentiable => Differentiable;
}

/// <summary>Integer class labels in [0, Classes), one per example, stored as floats.</summary>
public sealed record ClassLabelsOp(int Classes) : LeafOp
{
    public override string Kind => "labels";
    public override bool IsDifferentiable => false;
}

/// <summary>A trainable tensor, initialised by <see cref="Initializer"/>.</summary>
public sealed record ParameterOp(Initializer Initializer) : LeafOp
{
    public override string Kind => "parameter";
}

/// <summary>
/// Dense layer s = x Wᵀ + b over the last axis, x: [..., in], W: [out, in], b: [out].
/// JVP: ṡ = ẋ Wᵀ + x Ẇᵀ + ḃ. VJP: x̄ = s̄ W, W̄ = s̄ᵀ x, b̄ = Σ_rows s̄.
/// The K tangent channels of ẋ go through one GEMM with K·B rows.
/// </summary>
public sealed record LinearOp : Op
{
    public override string Kind => "linear";

    private static float Beta(in RuleContext c, int input) => c.Accumulate(input) ? 1f : 0f;

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var (x, w, y) = (c.Input(0).Value, c.Input(1).Value, c.Output.Value);
        int outputs = c.Node.Shape.Last, inputs = w.Length / outputs, rows = y.Length / outputs;
        c.Backend.Gemm(Transpose.No, Transpose.Yes, rows, outputs, inputs, 1f, x, inputs, w, inputs, 0f, y, outputs);
        if (c.Node.Inputs.Length == 3) c.Backend.AddBias(c.Input(2).Value, y);
    }

    internal override void Jvp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Tangent);
        int outputs = c.Node.Shape.Last, inputs = w.Value.Length / outputs;
        int rowsPerChannel = dy.Length / c.TangentCount / outputs;
        bool written = false;
        if (!x.Tangent.IsEmpty)
        {
            // All K channels at once: [K·rows, in] × [in, out].
            c.Backend.Gemm(Transpose.No, Transpose.Yes, c.TangentCount * rowsPerChannel, outputs, inputs, 1f,
                x.Tangent, inputs, w.Value, inputs, 0f, dy, outputs);
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
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Tangent.IsEmpty)
        {
            if (!written) c.Backend.Fill(0f, dy);
            int channelElements = rowsPerChannel * outputs;
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.AddBias(c.Input(2).Tangent.Channel(k, outputs), dy.Channel(k, channelElements));
        }
    }

    internal override void Vjp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Cotangent);
        int outputs = c.Node.Shape.Last, inputs = w.Value.Length / outputs, rows = dy.Length / outputs;
        if (!x.Cotangent.IsEmpty)
            c.Backend.Gemm(Transpose.No, Transpose.No, rows, inputs, outputs, 1f, dy, outputs, w.Value, inputs, Beta(c, 0), x.Cotangent, inputs);
        if (!w.Cotangent.IsEmpty)
            c.Backend.Gemm(Transpose.Yes, Transpose.No, outputs, inputs, rows, 1f, dy, outputs, x.Value, inputs, Beta(c, 1), w.Cotangent, inputs);
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Cotangent.IsEmpty)
            c.Backend.SumRows(dy, c.Input(2).Cotangent, c.Accumulate(2));
    }
}

/// <summary>y = f(x) pointwise. The forward pass saves f'(x), so the JVP (ẏ = f'(x) ⊙ ẋ, all K
/// channels) and the VJP (x̄ = f'(x) ⊙ ȳ) are one multiply each.</summary>
public sealed record ElementwiseOp(ElementwiseFunction Function) : Op
{
    public override string Kind => Function.Name;

    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => node.ElementCount(batchSize);

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        c.Backend.Elementwise(Function, c.Input(0).Value, c.Output.Value);
        if (saveAuxiliary) c.Backend.ElementwiseDerivative(Function, c.Input(0).Value, c.Output.Value, c.Output.Auxiliary);
    }

    internal override void Jvp(in RuleContext c) =>
        c.Backend.MultiplyChannels(c.Output.Auxiliary, c.Input(0).Tangent, c.Output.Tangent, accumulate: false);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty)
            c.Backend.MultiplyChannels(c.Output.Auxiliary, c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>y = a + b (same shapes): residual connections. ẏ = ȧ + ḃ; ā = b̄ = ȳ.</summary>
public sealed record AddOp : Op
{
    public override string Kind => "add";
    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.Add(c.Input(0).Value, c.Input(1).Value, c.Output.Value);

    internal override void Jvp(in RuleContext c)
    {
        var (a, b, dy) = (c.Input(0).Tangent, c.Input(1).Tangent, c.Output.Tangent);
        if (a.IsEmpty) c.Backend.Copy(b, dy);
        else if (b.IsEmpty) c.Backend.Copy(a, dy);
        else c.Backend.Add(a, b, dy);
    }

    internal override void Vjp(in RuleContext c)
    {
        for (int i = 0; i < 2; i++)
            if (!c.Input(i).Cotangent.IsEmpty) c.Backend.Copy(c.Output.Cotangent, c.Input(i).Cotangent, c.Accumulate(i));
    }
}

/// <summary>Same elements, new per-example shape (flatten an image before a dense layer). Rules are copies.</summary>
public sealed record ReshapeOp(Shape Target) : Op
{
    public override string Kind => "reshape";
    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.Copy(c.Input(0).Value, c.Output.Value);
    internal override void Jvp(in RuleContext c) => c.Backend.Copy(c.Input(0).Tangent, c.Output.Tangent);
    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty) c.Backend.Copy(c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>
/// A per-example loss ℓ_b (output shape [], one scalar per example) of a prediction p_b against data.
/// The forward kernel saves e_b = ∂ℓ_b/∂p_b, so every loss shares the derivative rules:
/// JVP ℓ̇_{k,b} = e_b · ṗ_{k,b} (one dot per example and channel), VJP p̄_b = e_b ℓ̄_b.
/// No derivative flows to the labels or targets.
/// </summary>
public abstract record PerExampleLossOp : Op
{
    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => nodes[node.Inputs[0]].ElementCount(batchSize);
    internal override bool ForwardWritesAuxiliary => true;

    internal override void Jvp(in RuleContext c) =>
        c.Backend.RowDot(c.Output.Auxiliary, c.Input(0).Tangent, c.Output.Auxiliary.Length / c.BatchSize, c.Output.Tangent);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty)
            c.Backend.ScaleRows(c.Output.Auxiliary, c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>Softmax cross-entropy ℓ_b = logsumexp(z_b) − z_b[y_b]; e_b = softmax(z_b) − onehot(y_b).</summary>
public sealed record SoftmaxCrossEntropyOp : PerExampleLossOp
{
    public override string Kind => "softmax-cross-entropy";

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.SoftmaxCrossEntropy(c.Input(0).Value, c.Input(1).Value, c.Input(0).Value.Length / c.BatchSize, c.Output.Value, c.Output.Auxiliary);
}

/// <summary>
/// Mean squared error ℓ_b = (1/D) Σ_j (p_bj − t_bj)², so that the batch mean equals PyTorch's
/// MSELoss(reduction="mean"); e_b = 2(p_b − t_b)/D.
/// </summary>
public sealed record MeanSquaredErrorOp : PerExampleLossOp
{
    public override string Kind => "mean-squared-error";

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.SquaredError(c.Input(0).Value, c.Input(1).Value, c.Input(0).Value.Length / c.BatchSize, c.Output.Value, c.Output.Auxiliary);
}
