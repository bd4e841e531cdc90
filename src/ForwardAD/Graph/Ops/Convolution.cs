using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// 2-D convolution over channels-last images: x [H, W, C] per example, weight [Cout, kh, kw, C/G], optional
/// bias [Cout], output [Ho, Wo, Cout]. Channels-last makes a convolution a dense layer over im2col patches:
/// s = cols(x) Wᵀ + b, with cols(x) [B·Ho·Wo, kh·kw·C] (one GEMM per group), so the K tangent channels of ẋ
/// are K·B more images through the same GEMM, and the rules are the dense layer's through im2col:
/// JVP ṡ = cols(ẋ) Wᵀ + cols(x) Ẇᵀ + ḃ; VJP x̄ = col2im(s̄ W), W̄ = s̄ᵀ cols(x), b̄ = Σ_rows s̄.
/// x̄ = col2im(s̄ W) is the transposed convolution that pulls a guess at the next site back through this one (Wᵀ).
/// The columns live in the plan's scratch buffer and are rebuilt when needed (never kept between rules), in passes of
/// a few images (<see cref="Backend.ConvolutionPassElements"/>: on a CPU each pass's columns are still in cache when its
/// GEMM reads them) and never more than <see cref="MaxScratchElements"/> floats. The rules ask the backend for the
/// convolution and its two VJPs (<see cref="Backend.Convolve"/>, <see cref="Backend.ConvolveTransposed"/>,
/// <see cref="Backend.ConvolutionWeightGradient"/>): im2col + GEMM by default; the CPU reads the image in place where it
/// can (<see cref="CpuBackend.ConvolutionVjps"/>), and the scratch is sized for the larger of both needs.
/// </summary>
public sealed record Conv2dOp(int Stride = 1, int Padding = 0, int Groups = 1) : Op
{
    /// <summary>The most scratch one pass of channels takes (256 MiB); channels beyond it run in several passes.</summary>
    internal const long MaxScratchElements = 1L << 26;

    /// <summary>"conv2d".</summary>
    public override string Kind => "conv2d";
    internal override bool InputVjpReadsForwardValues => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 3);
        var (x, weight) = (inputs[0], inputs[1]);
        if (Stride < 1 || Padding < 0 || Groups < 1)
            throw new ArgumentException($"Node '{name}': conv2d needs stride ≥ 1, padding ≥ 0 and groups ≥ 1; got stride {Stride}, padding {Padding}, groups {Groups}.");
        if (!x.IsBatched || x.Shape.Rank != 3)
            throw new ShapeMismatchException(name, "a batched image [H, W, C] (channels last)", x.ToString(), "Reshape flat data to [H, W, C] first.");
        int channels = x.Shape[2];
        if (channels % Groups != 0)
            throw new ShapeMismatchException(name, $"input channels divisible by groups ({Groups})", $"{channels} channels", "Each group convolves C/G input channels.");
        if (weight.Shape.Rank != 4 || weight.Shape[3] != channels / Groups || weight.Shape[0] % Groups != 0)
            throw new ShapeMismatchException(name, $"weight [Cout, kh, kw, {channels / Groups}] with Cout divisible by {Groups}", $"{weight.Shape} for {weight}",
                "A conv2d weight is [output channels, kernel height, kernel width, input channels per group].");
        if (inputs.Count == 3 && inputs[2].Shape != new Shape(weight.Shape[0]))
            throw new ShapeMismatchException(name, $"bias [{weight.Shape[0]}]", $"{inputs[2].Shape} for {inputs[2]}", "The bias has one element per output channel.");
        var g = Geometry(x.Shape, weight.Shape);
        // Compared directly: (H + 2p − k)/s + 1 rounds toward zero in C#, so it is 1, not 0, when the kernel overhangs the
        // padded image by less than a stride.
        if (x.Shape[0] + 2 * Padding < weight.Shape[1] || x.Shape[1] + 2 * Padding < weight.Shape[2])
            throw new ShapeMismatchException(name, $"an image of at least {weight.Shape[1]}×{weight.Shape[2]} after padding {Padding}", x.Shape.ToString(), "The kernel is larger than the padded image.");
        return (new Shape(g.OutputHeight, g.OutputWidth, weight.Shape[0]), true);
    }

    internal ConvGeometry Geometry(Shape input, Shape weight) =>
        new(input[0], input[1], input[2], weight[1], weight[2], Stride, Padding, Groups);

    private ConvGeometry Geometry(in RuleContext c) => Geometry(c.InputShape(0), c.InputShape(1));

    /// <summary>Images per im2col pass that the scratch buffer holds: as many batches as fit <see cref="MaxScratchElements"/>,
    /// at least one (the scratch is sized for this).</summary>
    private static int ImagesPerScratch(in ConvGeometry g, int batch, int channels)
    {
        long perBatch = (long)batch * g.OutputPositions * g.PatchLength;
        return batch * (int)Math.Clamp(MaxScratchElements / Math.Max(1, perBatch), 1, channels);
    }

    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels)
    {
        var g = Geometry(nodes[node.Inputs[0]].Shape, nodes[node.Inputs[1]].Shape);
        return Math.Max((long)ImagesPerScratch(g, batchSize, channels) * g.OutputPositions * g.PatchLength,
            CpuBackend.ConvolutionVjpScratch(g, node.Shape[2], batchSize));
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var g = Geometry(c);
        var (x, w, y) = (c.Input(0).Value, c.Input(1).Value, c.Output.Value);
        c.Backend.Convolve(x, g, w, c.Node.Shape[2], 0f, y, c.Scratch);
        if (c.Node.Inputs.Length == 3) c.Backend.AddBias(c.Input(2).Value, y);
    }

    internal override void Jvp(in RuleContext c)
    {
        var g = Geometry(c);
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Tangent);
        int outputs = c.Node.Shape[2], batch = c.BatchSize, images = batch * c.TangentCount;
        int outputPerImage = g.OutputPositions * outputs;
        bool written = false;
        if (!x.Tangent.IsEmpty)
        {
            // ṡ = cols(ẋ) Wᵀ: the K channels are K·B images through the same convolution.
            c.Backend.Convolve(x.Tangent.Slice(0, images * g.InputElements), g, w.Value, outputs, 0f, dy.Slice(0, images * outputPerImage), c.Scratch);
            written = true;
        }
        if (!w.Tangent.IsEmpty)
        {
            // ṡ_k += cols(x) Ẇ_kᵀ: the K weight tangents through one convolution of x (im2col: each pass's columns once).
            c.Backend.Convolve(x.Value, g, w.Tangent.Slice(0, c.TangentCount * w.Value.Length), outputs, written ? 1f : 0f,
                dy.Slice(0, c.TangentCount * batch * outputPerImage), c.Scratch, c.TangentCount);
            written = true;
        }
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Tangent.IsEmpty)
        {
            if (!written) c.Backend.Fill(0f, dy);
            for (int k = 0; k < c.TangentCount; k++)
                c.Backend.AddBias(c.Input(2).Tangent.Channel(k, outputs), dy.Channel(k, batch * outputPerImage));
        }
    }

    internal override void Vjp(in RuleContext c)
    {
        var g = Geometry(c);
        var (x, w, dy) = (c.Input(0), c.Input(1), c.Output.Cotangent);
        int outputs = c.Node.Shape[2];
        // x̄ = col2im(s̄ W), for all C·B images of a pull-back; W̄ = s̄ᵀ cols(x) over the batch. Which kernels compute them is the
        // backend's choice (im2col + GEMM by default; the CPU reads the image in place where it can).
        if (!x.Cotangent.IsEmpty)
            c.Backend.ConvolveTransposed(dy, g, w.Value, outputs, x.Cotangent.Slice(0, dy.Length / (g.OutputPositions * outputs) * g.InputElements), c.Accumulate(0), c.Scratch);
        if (!w.Cotangent.IsEmpty)
            c.Backend.ConvolutionWeightGradient(x.Value, g, dy.Slice(0, c.BatchSize * g.OutputPositions * outputs), outputs, w.Cotangent, c.Accumulate(1), c.Scratch);
        if (c.Node.Inputs.Length == 3 && !c.Input(2).Cotangent.IsEmpty)
            c.Backend.SumRows(dy, c.Input(2).Cotangent, c.Accumulate(2));
    }
}
