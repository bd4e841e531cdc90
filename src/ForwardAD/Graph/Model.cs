using System.Collections.Immutable;
using ForwardAD.Backends;

namespace ForwardAD.Graph;

/// <summary>
/// A dense layer as the guessing methods see it (DESIGN.md §2): input x_i, weight W_i, bias b_i,
/// pre-activation s_i = W_i x_i + b_i and output x_{i+1} = σ(s_i) (the pre-activation itself when σ is the identity).
/// </summary>
public sealed record DenseLayer(Node Input, Node Weight, Node? Bias, Node PreActivation, Node Output, ElementwiseFunction Activation);

/// <summary>
/// An immutable model: nodes in topological order (a node's inputs come before it), the
/// per-example loss, the network output, and the dense layers in order. It holds no buffers;
/// compile it into a <see cref="Autodiff.Plan"/> to run it.
/// </summary>
public sealed record Model(ImmutableArray<Node> Nodes, Node Loss, Node Output, ImmutableArray<DenseLayer> Layers)
{
    public IEnumerable<Node> Parameters => Nodes.Where(n => n.IsParameter);
    public IEnumerable<Node> Inputs => Nodes.Where(n => n.Op is InputOp or ClassLabelsOp);

    /// <summary>Total number of trainable scalars.</summary>
    public long ParameterCount => Parameters.Sum(p => (long)p.Shape.ElementCount);

    public Node this[string name]
    {
        get
        {
            foreach (var node in Nodes) // a plain loop: looked up inside training steps, it must not allocate
                if (node.Name == name) return node;
            throw new KeyNotFoundException($"The model has no node named '{name}'. Nodes: {string.Join(", ", Nodes.Select(n => n.Name))}.");
        }
    }

    /// <summary>True when <paramref name="node"/> is this model's node (same id and description).</summary>
    public bool Contains(Node node) => node.Id >= 0 && node.Id < Nodes.Length && (ReferenceEquals(Nodes[node.Id], node) || Nodes[node.Id] == node);
}
