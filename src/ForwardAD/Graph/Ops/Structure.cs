using ForwardAD.Autodiff;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>y = a + b (same shapes): residual connections. ẏ = ȧ + ḃ; ā = b̄ = ȳ.</summary>
public sealed record AddOp : Op
{
    /// <summary>"add".</summary>
    public override string Kind => "add";
    internal override bool InputVjpReadsForwardValues => false;
    /// <summary>ā = b̄ = s̄: copies, no value read.</summary>
    internal override bool VjpReadsInput(int input) => false;
    internal override bool VjpReadsOutput => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 2, 2);
        var (a, b) = (inputs[0], inputs[1]);
        if (a.Shape != b.Shape || a.IsBatched != b.IsBatched)
            throw new ShapeMismatchException(name, a.Shape.ToString(), b.Shape.ToString(), $"Both operands of add must have the same shape ({a} and {b}).");
        return (a.Shape, a.IsBatched);
    }

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
    /// <summary>"reshape".</summary>
    public override string Kind => "reshape";
    internal override bool InputVjpReadsForwardValues => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        var x = inputs[0];
        if (Target.ElementCount != x.Shape.ElementCount)
            throw new ShapeMismatchException(name, $"a shape of {x.Shape.ElementCount} elements", $"{Target} ({Target.ElementCount} elements)", $"Reshape keeps the element count of {x}.");
        return (Target, x.IsBatched);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.Copy(c.Input(0).Value, c.Output.Value);
    internal override void Jvp(in RuleContext c) => c.Backend.Copy(c.Input(0).Tangent, c.Output.Tangent);
    internal override void Vjp(in RuleContext c)
    {
        if (!c.Input(0).Cotangent.IsEmpty) c.Backend.Copy(c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
    }
}

/// <summary>
/// y = x in the forward pass, and no derivative through it: ẏ = 0 (a symbolic zero, so nothing downstream of
/// it sees an upstream tangent) and x̄ gets nothing from ȳ. Local losses put one between blocks (Ren et al.
/// 2022) so that each block learns only from its own loss. The plan treats it as a non-differentiable op: it is
/// never seeded, its output has no tangent, and the backward pass stops at it; only a plan compiled with
/// <see cref="Autodiff.PlanOptions.TangentsCrossStopGradients"/> passes tangents through (ẏ = ẋ), to measure the
/// Jacobian of the function the model computes.
/// </summary>
public sealed record StopGradientOp : Op
{
    /// <summary>"stop-gradient".</summary>
    public override string Kind => "stop-gradient";
    /// <summary>False: the output has no tangent (ẏ = 0) and x gets no cotangent, unless the plan lets tangents cross.</summary>
    public override bool IsDifferentiable => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        return (inputs[0].Shape, inputs[0].IsBatched);
    }

    internal override void Forward(in RuleContext c, bool saveAuxiliary) => c.Backend.Copy(c.Input(0).Value, c.Output.Value);
    // ẏ = ẋ; called only by a plan whose tangents cross stop-gradients. The VJP never runs: the backward pass stops here.
    internal override void Jvp(in RuleContext c) => c.Backend.Copy(c.Input(0).Tangent, c.Output.Tangent);
    internal override void Vjp(in RuleContext c) { }
}
