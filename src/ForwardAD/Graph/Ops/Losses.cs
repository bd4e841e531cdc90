using ForwardAD.Autodiff;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// A per-example loss ℓ_b (output shape [], one scalar per example) of a prediction p_b against data.
/// The forward kernel saves e_b = ∂ℓ_b/∂p_b, so every loss shares the derivative rules:
/// JVP ℓ̇_{k,b} = e_b · ṗ_{k,b} (one dot per example and channel), VJP p̄_b = e_b ℓ̄_b (per channel in a pull-back).
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
        var prediction = c.Input(0).Cotangent;
        if (prediction.IsEmpty) return;
        var (error, loss) = (c.Output.Auxiliary, c.Output.Cotangent);
        for (int channel = 0; channel < c.Channels; channel++)
            c.Backend.ScaleRows(error, loss.Channel(channel, c.BatchSize), prediction.Channel(channel, error.Length), c.Accumulate(0));
    }
}

/// <summary>Softmax cross-entropy ℓ_b = logsumexp(z_b) − z_b[y_b]; e_b = softmax(z_b) − onehot(y_b).</summary>
public sealed record SoftmaxCrossEntropyOp : PerExampleLossOp
{
    /// <summary>"softmax-cross-entropy".</summary>
    public override string Kind => "softmax-cross-entropy";

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (logits, labels) = (inputs[0], inputs[1]);
        if (labels.Op is not ClassLabelsOp classLabels)
            throw new ArgumentException($"Node '{name}': softmax cross-entropy needs class labels from ClassLabels(); got {labels}.");
        if (logits.Shape.Rank != 1 || logits.Shape[0] != classLabels.Classes || !logits.IsBatched)
            throw new ShapeMismatchException(name, $"logits [B, {classLabels.Classes}]", logits.ToString(),
                $"One logit per class of {labels}; flatten multi-axis outputs first.");
        return (Shape.Scalar, true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.SoftmaxCrossEntropy(c.Input(0).Value, c.Input(1).Value, c.Input(0).Value.Length / c.BatchSize, c.Output.Value, c.Output.Auxiliary);
}

/// <summary>
/// Mean squared error ℓ_b = (1/D) Σ_j (p_bj − t_bj)², so that the batch mean equals PyTorch's
/// MSELoss(reduction="mean"); e_b = 2(p_b − t_b)/D.
/// </summary>
public sealed record MeanSquaredErrorOp : PerExampleLossOp
{
    /// <summary>"mean-squared-error".</summary>
    public override string Kind => "mean-squared-error";

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (prediction, target) = (inputs[0], inputs[1]);
        if (target.Op is not InputOp) throw new ArgumentException($"Node '{name}': the target must be an input node; got {target}.");
        if (prediction.Shape != target.Shape || !prediction.IsBatched)
            throw new ShapeMismatchException(name, $"prediction of the target's shape {target.Shape}", prediction.Shape.ToString(), $"Compare {prediction} with {target}.");
        return (Shape.Scalar, true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.SquaredError(c.Input(0).Value, c.Input(1).Value, c.Input(0).Value.Length / c.BatchSize, c.Output.Value, c.Output.Auxiliary);
}

/// <summary>
/// Sequence cross-entropy of logits [T, V] against target tokens [T] (a <see cref="TokensOp"/> with length T and vocabulary V):
/// ℓ_b = (1/n_b) Σ_{t: y_bt ≠ ignore} (logsumexp(z_bt) − z_bt[y_bt]), the mean over the example's n_b kept positions (PyTorch's
/// cross_entropy with ignore_index and reduction="mean", per example); an example with every position ignored has ℓ_b = 0.
/// Padding targets (negative ids) are ignored whatever the ignore index.
/// e_b = ∂ℓ_b/∂z_b = (softmax(z_bt) − onehot(y_bt))/n_b on kept positions, 0 on ignored ones: the shared loss rules then give the
/// JVP ℓ̇_b = ⟨e_b, ż_b⟩ and the VJP z̄_b = e_b ℓ̄_b.
/// </summary>
public sealed record SequenceCrossEntropyOp(int IgnoreIndex = -1) : PerExampleLossOp
{
    /// <summary>"sequence-cross-entropy".</summary>
    public override string Kind => "sequence-cross-entropy";

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (logits, targets) = (inputs[0], inputs[1]);
        if (targets.Op is not TokensOp tokens)
            throw new ArgumentException($"Node '{name}': sequence cross-entropy needs target tokens from Tokens(); got {targets}.");
        if (logits.Shape.Rank != 2 || logits.Shape[0] != tokens.Length || logits.Shape[1] != tokens.Vocabulary || !logits.IsBatched)
            throw new ShapeMismatchException(name, $"logits [B, {tokens.Length}, {tokens.Vocabulary}]", logits.ToString(),
                $"One logit per position of {targets} and token of its vocabulary.");
        if (IgnoreIndex != tokens.Padding && (IgnoreIndex < 0 || IgnoreIndex >= tokens.Vocabulary))
            throw new ArgumentException($"Node '{name}': the ignore index {IgnoreIndex} is neither the padding id {tokens.Padding} of {targets} nor a token in [0, {tokens.Vocabulary}); " +
                "no target could ever equal it. Use the padding id (the default −1) or a vocabulary id that marks padding.");
        return (Shape.Scalar, true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var shape = c.InputShape(0);
        c.Backend.SequenceCrossEntropy(c.Input(0).Value, c.Input(1).Value, shape[0], shape[1], IgnoreIndex, c.Output.Value, c.Output.Auxiliary);
    }
}
