using ForwardAD.Tensors;
using ForwardAD.Backends;
using ForwardAD.Graph;

namespace ForwardAD.Autodiff;

/// <summary>The buffers a compiled plan keeps for one node. Empty views are symbolic zeros or
/// values the plan was not compiled to keep.</summary>
internal sealed class NodeBuffers
{
    /// <summary>The primal value: [B, ...shape] or [...shape] for parameters.</summary>
    public View Value;
    /// <summary>The tangent, [K, B, ...shape]; empty when no seed reaches the node.</summary>
    public View Tangent;
    /// <summary>The injected tangent of a seeded node (the same view as <see cref="Tangent"/> for leaves, and for nodes no
    /// other tangent reaches: their tangent is the seed itself).</summary>
    public View Seed;
    /// <summary>∂(cotangent seed)/∂value, [B, ...shape]; empty when the node is off every path to the seed.</summary>
    public View Cotangent;
    /// <summary>Op-specific values saved by the forward pass for the rules (f'(x), softmax − onehot).</summary>
    public View Auxiliary;
}

/// <summary>What a rule sees: the backend, the sizes, its node and its inputs' buffers.</summary>
internal readonly struct RuleContext(Backend backend, int batchSize, int tangentCount, Node node, NodeBuffers[] buffers, View scratch,
    PlanOptions options, Model model, int overwriteMask = 0, int channels = 1, View injectedTangent = default, bool foldedInput = false,
    bool derivativeFromOutput = false)
{
    /// <summary>In an elementwise op's VJP rule: the plan saved no derivative for this node and keeps its output until this
    /// rule, which reads f'(x) from y (<see cref="Graph.ElementwiseOp.DerivativeFromOutput"/>); in its forward rule: write y only.</summary>
    public bool DerivativeFromOutput { get; } = derivativeFromOutput;

    /// <summary>Input 0 is an elementwise op folded into this rule (a max pool's, <see cref="Plan"/>): in a JVP rule its
    /// tangent f'(x) ⊙ ẋ was never written, and the rule reads f'(x) (<c>Input(0).Auxiliary</c>) and ẋ
    /// (<see cref="FoldedInput"/>'s tangent); in a VJP rule the op's VJP does not run, and the rule writes x̄ = f'(x) ⊙ (its
    /// own input cotangent) into <see cref="FoldedInput"/>'s cotangent, overwriting it unless <c>Accumulate(0)</c>.</summary>
    public bool InputFolded { get; } = foldedInput;

    /// <summary>The buffers of the folded elementwise op's own input x (see <see cref="InputFolded"/>).</summary>
    public NodeBuffers FoldedInput => buffers[model.Nodes[Node.Inputs[0]].Inputs[0]];

    /// <summary>In a JVP rule whose op <see cref="Graph.Op.JvpAddsInjectedTangent"/>: the tangent injected at this node
    /// ([K, B, ...shape]), which the rule adds to its output; empty when the node is not seeded (or the plan adds it).</summary>
    public View InjectedTangent { get; } = injectedTangent;

    /// <summary>The per-example (or parameter) shape of input <paramref name="index"/>.</summary>
    public Shape InputShape(int index) => model.Nodes[Node.Inputs[index]].Shape;

    /// <summary>Scratch space shared by all rules of a plan (or pull-back), at least <see cref="Graph.Op.ScratchElements"/>
    /// long for this node; its contents do not survive the rule.</summary>
    public View Scratch { get; } = scratch;

    /// <summary>Batch statistics (training) or running statistics (evaluation).</summary>
    public bool Training => options.Mode == PlanMode.Training;

    /// <summary>Whether this forward pass updates the running statistics.</summary>
    public bool UpdatesRunningStatistics => options.Mode == PlanMode.Training && options.UpdatesRunningStatistics;

    /// <summary>In a VJP rule: false when this rule is the first to write input i's cotangent in the
    /// backward pass (it overwrites, so no buffer needs clearing first), true when it adds to it.</summary>
    public bool Accumulate(int input) => (overwriteMask & (1 << input)) == 0;

    public Backend Backend { get; } = backend;
    public int BatchSize { get; } = batchSize;
    /// <summary>K, the number of tangent channels.</summary>
    public int TangentCount { get; } = tangentCount;
    /// <summary>In a VJP rule: C, the number of cotangent channels ([C, B, ...]); 1 in the backward pass, the
    /// number of guesses in a pull-back (where only input cotangents, never parameter cotangents, are asked for).</summary>
    public int Channels { get; } = channels;
    public Node Node { get; } = node;
    public NodeBuffers Output => buffers[Node.Id];
    public NodeBuffers Input(int index) => buffers[Node.Inputs[index]];
}
