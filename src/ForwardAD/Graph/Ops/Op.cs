using ForwardAD.Autodiff;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// The closed set of operations. Each op keeps its shape rule, forward, JVP and VJP side by side (one file
/// per op family in Graph/Ops); a new op that forgets a rule does not compile, and adding one touches no
/// other file: <see cref="ModelBuilder.Apply"/> wires any op, the plan runs its rules, and the sites, guessers
/// and feedback rules find it through the graph. Rules are written against <see cref="Backends.Backend"/>
/// kernels, so every backend runs the same rules.
/// JVP rules write the output tangent for all K channels at once ([K, B, ...] layout) and are
/// called only when at least one input tangent is non-zero. VJP rules write the cotangents of those
/// inputs that have one, overwriting or adding as <c>RuleContext.Accumulate(i)</c> says (the first
/// writer of a cotangent in the backward order overwrites, later ones add). In a K-channel pull-back
/// (<see cref="Plan.CreatePullBack"/>) cotangents carry <c>RuleContext.Channels</c> channels, [C, B, ...]:
/// input cotangents must then be written for every channel; parameter cotangents are never asked for there.
/// </summary>
public abstract record Op
{
    private protected Op() { }

    /// <summary>Short name used in messages.</summary>
    public abstract string Kind { get; }

    /// <summary>Leaves (inputs, labels, parameters) have no rules: their tangent is their seed.</summary>
    public virtual bool IsLeaf => false;

    /// <summary>False for values no derivative flows through (class labels, regression targets, stop-gradients).</summary>
    public virtual bool IsDifferentiable => true;

    /// <summary>
    /// The shape rule: the per-example output shape and whether the output is batched, from the inputs; or a
    /// <see cref="ShapeMismatchException"/> naming the node <paramref name="name"/>, the expected and the actual shape.
    /// </summary>
    internal abstract (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs);

    /// <summary>True when the VJP rule for the op's non-parameter inputs reads forward values or saved derivatives
    /// (f'(x) of an activation); false when it reads only parameters (a linear map, an add, a copy). A guess pulled
    /// back through ops that read nothing can be drawn before the forward pass.</summary>
    internal virtual bool InputVjpReadsForwardValues => true;

    /// <summary>True when the VJP rule reads the forward value of input <paramref name="input"/> (a dense layer's x, for
    /// W̄ = s̄ᵀx). A plan that reuses buffers in the backward pass (<see cref="PlanOptions.ReuseBuffers"/> with gradients)
    /// keeps only the values some VJP rule reads. Default true: an op that says nothing keeps every value.</summary>
    internal virtual bool VjpReadsInput(int input) => true;

    /// <summary>True when the VJP rule reads the op's own forward value (see <see cref="VjpReadsInput"/>). Default true.</summary>
    internal virtual bool VjpReadsOutput => true;

    /// <summary>Elements of the auxiliary buffer the forward pass saves for the derivative rules.</summary>
    internal virtual int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => 0;

    /// <summary>Scratch elements any rule of this node needs with <paramref name="channels"/> tangent or cotangent channels
    /// (the plan keeps one scratch buffer, as long as the largest need; a rule's scratch does not survive it).</summary>
    internal virtual long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) => 0;

    /// <summary>True when the forward kernel writes the auxiliary buffer even without derivatives (losses).</summary>
    internal virtual bool ForwardWritesAuxiliary => false;

    /// <summary>True when the JVP rule adds the tangent injected at its node (<see cref="RuleContext.InjectedTangent"/>)
    /// itself, in its last pass over the output, with the plan's arithmetic (its own tangent first, then + the seed in one
    /// rounding): one pass over the tangent less than the plan's separate add. False: the plan adds it after the rule.</summary>
    internal virtual bool JvpAddsInjectedTangent => false;

    internal abstract void Forward(in RuleContext c, bool saveAuxiliary);
    internal abstract void Jvp(in RuleContext c);
    internal abstract void Vjp(in RuleContext c);

    /// <summary>Checks the number of inputs; every shape rule starts with it.</summary>
    private protected void RequireInputs(string name, IReadOnlyList<Node> inputs, int minimum, int maximum)
    {
        if (inputs.Count < minimum || inputs.Count > maximum)
            throw new ArgumentException($"Node '{name}': a {Kind} op takes {(minimum == maximum ? $"{minimum}" : $"{minimum} to {maximum}")} inputs; got {inputs.Count}.");
    }
}
