using ForwardAD.Autodiff;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>Leaf ops: values come from the user or the parameter store, tangents from seeds. Their shape is
/// given when they are created (<see cref="ModelBuilder.Input"/>, <see cref="ModelBuilder.Parameter"/>).</summary>
public abstract record LeafOp : Op
{
    /// <summary>True: a leaf has no inputs; its value is fed, loaded or initialised, never computed.</summary>
    public override bool IsLeaf => true;
    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs) =>
        throw new InvalidOperationException($"Node '{name}': a {Kind} is a leaf; its shape is given when it is created, not inferred.");
    internal override void Forward(in RuleContext c, bool saveAuxiliary) { }
    internal override void Jvp(in RuleContext c) { }
    internal override void Vjp(in RuleContext c) { }
}

/// <summary>Real-valued data fed per example (images, features, regression targets).</summary>
public sealed record InputOp(bool Differentiable = true) : LeafOp
{
    /// <summary>"input".</summary>
    public override string Kind => "input";
    /// <summary><see cref="Differentiable"/>: whether a tangent may be seeded at the input (false for data such as images,
    /// so that no JVP work flows from it).</summary>
    public override bool IsDifferentiable => Differentiable;
}

/// <summary>Integer class labels in [0, Classes), one per example, stored as floats.</summary>
public sealed record ClassLabelsOp(int Classes) : LeafOp
{
    /// <summary>"labels".</summary>
    public override string Kind => "labels";
    /// <summary>False: no tangent is seeded here and no derivative flows to it.</summary>
    public override bool IsDifferentiable => false;
}

/// <summary>Model state that is not trained: running statistics of batch normalisation. Its value lives in the
/// parameter store beside the parameters (<see cref="Autodiff.ParameterStore.State"/>), is saved in checkpoints and
/// restored on resume, and changes only when a training plan's forward pass updates it; no derivative flows through it
/// and no update rule sees it (weight decay would otherwise shrink it).</summary>
public sealed record StateOp(Initializer Initializer) : LeafOp
{
    /// <summary>"state".</summary>
    public override string Kind => "state";
    /// <summary>False: no tangent is seeded here and no derivative flows to it.</summary>
    public override bool IsDifferentiable => false;
}

/// <summary>A trainable tensor, initialised by <see cref="Initializer"/>.</summary>
public sealed record ParameterOp(Initializer Initializer) : LeafOp
{
    /// <summary>"parameter".</summary>
    public override string Kind => "parameter";
}

/// <summary>Token ids of a sequence, per example [Length], stored as floats: whole numbers in [0, Vocabulary), or
/// <see cref="Padding"/> (a negative id: no token there). An embedding gives padding a zero vector; a sequence loss whose ignore
/// index is the padding id skips it. Checked by <see cref="Autodiff.Plan.SetInput"/> like class labels; no derivative flows.</summary>
public sealed record TokensOp(int Length, int Vocabulary, int Padding = -1) : LeafOp
{
    /// <summary>"tokens".</summary>
    public override string Kind => "tokens";
    /// <summary>False: no tangent is seeded here and no derivative flows to it.</summary>
    public override bool IsDifferentiable => false;
}
