using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>Shape rule shared by the pooling ops: a batched channels-last image [H, W, C] and a window that fits it.</summary>
public abstract record PoolOp(int Kernel, int Stride, int Padding) : Op
{
    internal PoolGeometry Geometry(Shape input) => new(input[0], input[1], input[2], Kernel, Kernel, Stride, Padding);

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        var x = inputs[0];
        if (Kernel < 1 || Stride < 1 || Padding < 0 || 2 * Padding > Kernel)
            throw new ArgumentException($"Node '{name}': {Kind} needs kernel ≥ 1, stride ≥ 1 and 0 ≤ padding ≤ kernel/2 (as PyTorch); got kernel {Kernel}, stride {Stride}, padding {Padding}.");
        if (!x.IsBatched || x.Shape.Rank != 3)
            throw new ShapeMismatchException(name, "a batched image [H, W, C] (channels last)", x.ToString(), "Pooling works on feature maps.");
        var g = Geometry(x.Shape);
        // Compared directly: (H + 2p − k)/s + 1 rounds toward zero, so it is 1, not 0, when the window overhangs by less than a stride.
        if (g.Height + 2 * Padding < Kernel || g.Width + 2 * Padding < Kernel)
            throw new ShapeMismatchException(name, $"an image of at least {Kernel}×{Kernel} after padding {Padding}", x.Shape.ToString(), "The window is larger than the padded image.");
        return (new Shape(g.OutputHeight, g.OutputWidth, g.Channels), true);
    }
}

/// <summary>
/// Max pooling over kernel × kernel windows (padded positions never win, as in PyTorch). The forward pass saves, per
/// output, the index of its window's first maximum; the JVP gathers the tangent there (ẏ = ẋ[argmax], all K channels
/// with one index set) and the VJP scatters the cotangent back (x̄[argmax] += ȳ). Ties and the measure-zero points where
/// two inputs are equal take the first maximum, so FD checks use inputs without ties.
/// </summary>
public sealed record MaxPool2dOp(int Kernel, int Stride, int Padding = 0) : PoolOp(Kernel, Stride, Padding)
{
    /// <summary>"max-pool2d".</summary>
    public override string Kind => "max-pool2d";
    internal override bool ForwardWritesAuxiliary => true;

    /// <summary>The argmax indices are stored as floats, exact up to 2²⁴: larger feature maps are refused.</summary>
    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        var result = base.InferShape(name, inputs);
        if (inputs[0].Shape.ElementCount > 1 << 24)
            throw new ShapeMismatchException(name, "a feature map of at most 2²⁴ elements per example", $"{inputs[0].Shape} ({inputs[0].Shape.ElementCount:N0})",
                "Max pooling records each winner's index as a float, exact only up to 2²⁴; pool or stride earlier.");
        return result;
    }
    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => node.ElementCount(batchSize);

    internal override void Forward(in RuleContext c, bool saveAuxiliary) =>
        c.Backend.MaxPool(c.Input(0).Value, Geometry(c.InputShape(0)), c.Output.Value, c.Output.Auxiliary);

    internal override void Jvp(in RuleContext c)
    {
        if (c.InputFolded)
            // The elementwise op before the pool was folded in: ẏ = f'(x)[argmax]·ẋ[argmax], the products its JVP would have
            // written and the gather picked, read at the winners only.
            c.Backend.GatherColumnsOfProduct(c.FoldedInput.Tangent, c.Input(0).Auxiliary, c.InputShape(0).ElementCount, c.Output.Auxiliary, c.Output.Tangent, c.Scratch);
        else c.Backend.GatherColumns(c.Input(0).Tangent, c.InputShape(0).ElementCount, c.Output.Auxiliary, c.Output.Tangent);
    }

    /// <summary>The defaults of <see cref="Backend.GatherColumnsOfProduct"/> and <see cref="Backend.ScatterAddColumnsOfProduct"/>
    /// gather the factor (and form the products) in the scratch: two floats per output.</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) => 2L * node.ElementCount(batchSize);

    internal override void Vjp(in RuleContext c)
    {
        if (c.InputFolded)
            // Through the folded elementwise op: x̄[argmax] (+)= f'(x)[argmax]·ȳ, without its cotangent or its VJP's pass.
            c.Backend.ScatterAddColumnsOfProduct(c.Output.Cotangent, c.Input(0).Auxiliary, c.Output.Auxiliary, c.InputShape(0).ElementCount,
                c.FoldedInput.Cotangent, c.Accumulate(0), c.Scratch);
        else if (!c.Input(0).Cotangent.IsEmpty)
            c.Backend.ScatterAddColumns(c.Output.Cotangent, c.Output.Auxiliary, c.InputShape(0).ElementCount, c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>Average pooling over kernel × kernel windows, padding counted as zeros (PyTorch's count_include_pad). Linear:
/// the JVP pools the tangent (K·B images), the VJP spreads ȳ/(kernel²) over each window.</summary>
public sealed record AvgPool2dOp(int Kernel, int Stride, int Padding = 0) : PoolOp(Kernel, Stride, Padding)
{
    /// <summary>"avg-pool2d".</summary>
    public override string Kind => "avg-pool2d";
    internal override bool InputVjpReadsForwardValues => false;

    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.AvgPool(c.Input(0).Value, Geometry(c.InputShape(0)), c.Output.Value);
    internal override void Jvp(in RuleContext c) => c.Backend.AvgPool(c.Input(0).Tangent, Geometry(c.InputShape(0)), c.Output.Tangent);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty)
            c.Backend.AvgPoolBackward(c.Output.Cotangent, Geometry(c.InputShape(0)), c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>Global average pooling: [H, W, C] → [C], the mean over positions (average pooling with one H × W window).</summary>
public sealed record GlobalAvgPoolOp : Op
{
    /// <summary>"global-avg-pool".</summary>
    public override string Kind => "global-avg-pool";
    internal override bool InputVjpReadsForwardValues => false;

    private static PoolGeometry Geometry(Shape input) => new(input[0], input[1], input[2], input[0], input[1], 1, 0);

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        var x = inputs[0];
        if (!x.IsBatched || x.Shape.Rank != 3)
            throw new ShapeMismatchException(name, "a batched image [H, W, C] (channels last)", x.ToString(), "Global average pooling works on feature maps.");
        return (new Shape(x.Shape[2]), true);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.AvgPool(c.Input(0).Value, Geometry(c.InputShape(0)), c.Output.Value);
    internal override void Jvp(in RuleContext c) => c.Backend.AvgPool(c.Input(0).Tangent, Geometry(c.InputShape(0)), c.Output.Tangent);

    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty)
            c.Backend.AvgPoolBackward(c.Output.Cotangent, Geometry(c.InputShape(0)), c.Input(0).Cotangent, c.Accumulate(0));
    }
}
