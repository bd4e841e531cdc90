using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Token mixing (MLP-Mixer, Ren et al. 2022's LocalMixer): a linear map across the tokens of each example, the same for
/// every channel. x [P, C] per example, W [P', P], optional b [P'], output y [P', C]:
/// <c>y_b = W x_b + b 1ᵀ</c>. JVP: <c>ẏ_b = W ẋ_b + Ẇ x_b + ḃ 1ᵀ</c>. VJP: <c>x̄_b = Wᵀ ȳ_b</c>, <c>W̄ = Σ_b ȳ_b x_bᵀ</c>,
/// <c>b̄ = Σ_b ȳ_b 1</c>.
/// Why a dedicated op rather than transpose + <see cref="LinearOp"/>: with tokens on the rows of each example, <c>W x_b</c>
/// is one strided-batched GEMM over the K·B examples (<see cref="Backend.GemmStridedBatched"/>, A = W with stride 0), so
/// nothing is transposed in memory and no backend kernel is added (CUDA runs the same rule as one cuBLAS batched call),
/// while a transpose on each side would cost two extra passes over every activation, tangent and cotangent. Its output
/// is a site; <c>x̄_b = Wᵀ ȳ_b</c> is the pull-back a Wᵀ guess at the next site goes through.
/// </summary>
public sealed record TokenMixingOp : Op
{
    /// <summary>"token-mixing".</summary>
    public override string Kind => "token-mixing";
    internal override bool InputVjpReadsForwardValues => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 3);
        var (x, weight) = (inputs[0], inputs[1]);
        if (!x.IsBatched || x.Shape.Rank != 2)
            throw new ShapeMismatchException(name, "a batched token matrix [P, C] (tokens, channels)", x.ToString(), "Reshape patches to [tokens, channels] first.");
        if (weight.Shape.Rank != 2 || weight.Shape[1] != x.Shape[0])
            throw new ShapeMismatchException(name, $"weight [P', {x.Shape[0]}]", $"{weight.Shape} for {weight}",
                $"The weight's second dimension must equal the token count of {x} ({x.Shape[0]}).");
        if (inputs.Count == 3 && inputs[2].Shape != new Shape(weight.Shape[0]))
            throw new ShapeMismatchException(name, $"bias [{weight.Shape[0]}]", $"{inputs[2].Shape} for {inputs[2]}", "The bias has one element per output token.");
        return (new Shape(weight.Shape[0], x.Shape[1]), true);
    }

    /// <summary>A row of C ones (the bias is b 1ᵀ, a rank-1 GEMM), then B·P' floats for b̄'s per-example row sums.</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) =>
        node.Shape[1] + (long)batchSize * node.Shape[0];

    private static (int Tokens, int Outputs, int Channels) Sizes(in RuleContext c) => (c.InputShape(0)[0], c.Node.Shape[0], c.Node.Shape[1]);

    /// <summary>y_i = A x_i (+ y_i) for the <paramref name="count"/> examples of <paramref name="x"/>, with one A for all.</summary>
    private static void MixAll(in RuleContext c, View a, View x, View y, int count, float beta)
    {
        var (tokens, outputs, channels) = Sizes(c);
        c.Backend.GemmStridedBatched(Transpose.No, Transpose.No, outputs, channels, tokens, 1f, a, tokens, 0, x, channels, (long)tokens * channels,
            beta, y, channels, (long)outputs * channels, count);
    }

    /// <summary>y_i += b 1ᵀ for the <paramref name="count"/> examples of y: a rank-1 GEMM with the row of ones in scratch.</summary>
    private static void AddTokenBias(in RuleContext c, View bias, View y, int count)
    {
        var (_, outputs, channels) = Sizes(c);
        var ones = c.Scratch.Slice(0, channels);
        c.Backend.Fill(1f, ones);
        c.Backend.GemmStridedBatched(Transpose.No, Transpose.No, outputs, channels, 1, 1f, bias, 1, 0, ones, channels, 0,
            1f, y, channels, (long)outputs * channels, count);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        MixAll(c, c.Input(1).Value, c.Input(0).Value, c.Output.Value, c.BatchSize, 0f);
        if (c.Node.Inputs.Length == 3) AddTokenBias(c, c.Input(2).Value, c.Output.Value, c.BatchSize);
    }

    internal override void Jvp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Tangent);
        int perChannel = dy.Length / c.TangentCount;
        bool written = false;
        if (!x.Tangent.IsEmpty)
        {
            MixAll(c, w.Value, x.Tangent, dy, c.TangentCount * c.BatchSize, 0f); // all K·B tangent examples in one batched GEMM
            written = true;
        }
        if (!w.Tangent.IsEmpty)
        {
            for (int k = 0; k < c.TangentCount; k++)
                MixAll(c, w.Tangent.Channel(k, w.Value.Length), x.Value, dy.Channel(k, perChannel), c.BatchSize, written ? 1f : 0f);
            written = true;
        }
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Tangent.IsEmpty)
        {
            if (!written) c.Backend.Fill(0f, dy);
            int outputs = c.Node.Shape[0];
            for (int k = 0; k < c.TangentCount; k++)
                AddTokenBias(c, c.Input(2).Tangent.Channel(k, outputs), dy.Channel(k, perChannel), c.BatchSize);
        }
    }

    internal override void Vjp(in RuleContext c)
    {
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Cotangent);
        var (tokens, outputs, channels) = Sizes(c);
        int outputElements = outputs * channels, inputElements = tokens * channels;
        if (!x.Cotangent.IsEmpty) // x̄_i = Wᵀ ȳ_i for every example of every pull-back channel
            c.Backend.GemmStridedBatched(Transpose.Yes, Transpose.No, tokens, channels, outputs, 1f, w.Value, tokens, 0, dy, channels, outputElements,
                c.Accumulate(0) ? 1f : 0f, x.Cotangent, channels, inputElements, dy.Length / outputElements);
        if (!w.Cotangent.IsEmpty) // W̄ = Σ_b ȳ_b x_bᵀ: one GEMM per example, accumulating (parameter cotangents have one channel)
            for (int b = 0; b < c.BatchSize; b++)
                c.Backend.Gemm(Transpose.No, Transpose.Yes, outputs, tokens, channels, 1f, dy.Slice(b * outputElements, outputElements), channels,
                    x.Value.Slice(b * inputElements, inputElements), channels, b > 0 || c.Accumulate(1) ? 1f : 0f, w.Cotangent, tokens);
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Cotangent.IsEmpty)
        {
            // b̄ = Σ_b ȳ_b 1: the row sums of ȳ as [B·P', C] (a GEMM with the ones), then their sum over examples.
            var ones = c.Scratch.Slice(0, channels);
            var rowSums = c.Scratch.Slice(channels, c.BatchSize * outputs);
            c.Backend.Fill(1f, ones);
            c.Backend.Gemm(Transpose.No, Transpose.No, c.BatchSize * outputs, 1, channels, 1f, dy, channels, ones, 1, 0f, rowSums, 1);
            c.Backend.SumRows(rowSums, c.Input(2).Cotangent, c.Accumulate(2));
        }
    }
}

/// <summary>
/// Non-overlapping patches as tokens (the input of Ren et al.'s LocalMixer, their <c>preprocess</c>): x [H, W, C] per
/// example → [P, k·k·C], P = (H/k)·(W/k), token (i, j) holding the pixels of patch (i, j) in (row, column, channel) order.
/// A fixed permutation of x: JVP ẏ = patches(ẋ), VJP x̄ = patches⁻¹(ȳ) (each pixel lies in exactly one patch). It is im2col
/// with kernel = stride = k, so the rules are the backend's <see cref="Backend.Im2Col"/> and its adjoint
/// <see cref="Backend.Col2Im"/>, and no kernel is added. Why an op and not a convolution: Ren et al.'s first block normalises
/// each patch's pixels (a LayerNorm over the token) before its first linear layer, which a convolution cannot express.
/// </summary>
public sealed record PatchesOp(int Patch) : Op
{
    /// <summary>"patches".</summary>
    public override string Kind => "patches";
    internal override bool InputVjpReadsForwardValues => false;
    internal override bool VjpReadsInput(int input) => false;
    internal override bool VjpReadsOutput => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        var x = inputs[0];
        if (!x.IsBatched || x.Shape.Rank != 3)
            throw new ShapeMismatchException(name, "a batched image [H, W, C] (channels last)", x.ToString(), "Reshape flat data to [H, W, C] first.");
        if (Patch < 1 || x.Shape[0] % Patch != 0 || x.Shape[1] % Patch != 0)
            throw new ShapeMismatchException(name, $"an image whose height and width are multiples of the patch size {Patch}", x.Shape.ToString(),
                "Choose a patch size that divides both.");
        return (new Shape(x.Shape[0] / Patch * (x.Shape[1] / Patch), Patch * Patch * x.Shape[2]), true);
    }

    private ConvGeometry Geometry(Shape input) => new(input[0], input[1], input[2], Patch, Patch, Patch, 0, 1);

    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.Im2Col(c.Input(0).Value, Geometry(c.InputShape(0)), c.Output.Value);

    /// <summary>All K·B tangent images in one call (im2col reads the image count off the view).</summary>
    internal override void Jvp(in RuleContext c) => c.Backend.Im2Col(c.Input(0).Tangent, Geometry(c.InputShape(0)), c.Output.Tangent);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty) c.Backend.Col2Im(c.Output.Cotangent, Geometry(c.InputShape(0)), c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>
/// The grouped local loss of a LocalMixer block (Ren et al. 2022, §4): logits [G, classes] per example, one row per channel
/// group (each group's own head on its own pooled channels), and the example's class label; the loss is the mean over the
/// groups of the softmax cross-entropy, ℓ_b = (1/G) Σ_g (logsumexp(z_bg) − z_bg[y_b]), so its scale is one classifier's.
/// e_bg = ∂ℓ_b/∂z_bg = (softmax(z_bg) − onehot(y_b))/G; the shared loss rules give JVP and VJP. The forward pass composes
/// existing kernels (no new backend kernel): the label repeated for each group by <see cref="Backend.GatherColumns"/>, the
/// row-wise <see cref="Backend.SoftmaxCrossEntropy"/> over the B·G rows, and the group mean as a GEMM with a column of ones.
/// </summary>
public sealed record GroupedSoftmaxCrossEntropyOp : PerExampleLossOp
{
    /// <summary>"grouped-softmax-cross-entropy".</summary>
    public override string Kind => "grouped-softmax-cross-entropy";

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (logits, labels) = (inputs[0], inputs[1]);
        if (labels.Op is not ClassLabelsOp classLabels)
            throw new ArgumentException($"Node '{name}': grouped cross-entropy needs class labels from ClassLabels(); got {labels}.");
        if (logits.Shape.Rank != 2 || logits.Shape[1] != classLabels.Classes || !logits.IsBatched)
            throw new ShapeMismatchException(name, $"logits [B, G, {classLabels.Classes}] (one row of class logits per group)", logits.ToString(),
                $"Reshape the grouped head's output to [groups, {classLabels.Classes}].");
        return (Shape.Scalar, true);
    }

    /// <summary>G zeros (the gather indices), G ones, B·G repeated labels, B·G per-group losses.</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) =>
        2L * nodes[node.Inputs[0]].Shape[0] * (1 + batchSize);

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var shape = c.InputShape(0);
        int groups = shape[0], classes = shape[1], rows = c.BatchSize * groups;
        var zeros = c.Scratch.Slice(0, groups);
        var ones = c.Scratch.Slice(groups, groups);
        var labels = c.Scratch.Slice(2 * groups, rows);
        var rowLosses = c.Scratch.Slice(2 * groups + rows, rows);
        c.Backend.Fill(0f, zeros);
        c.Backend.Fill(1f, ones);
        c.Backend.GatherColumns(c.Input(1).Value, 1, zeros, labels); // labels[b, g] = y_b
        c.Backend.SoftmaxCrossEntropy(c.Input(0).Value, labels, classes, rowLosses, c.Output.Auxiliary);
        c.Backend.Gemm(Transpose.No, Transpose.No, c.BatchSize, 1, groups, 1f / groups, rowLosses, groups, ones, 1, 0f, c.Output.Value, 1);
        c.Backend.Scale(c.Output.Auxiliary, 1f / groups, c.Output.Auxiliary);
    }
}
