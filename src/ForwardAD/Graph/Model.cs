using System.Collections.Immutable;

namespace ForwardAD.Graph;

/// <summary>
/// An immutable model: nodes in topological order (a node's inputs come before it), the main per-example
/// loss, the network output, every loss (the main one first, then local losses), and the sites derived from
/// the graph. It holds no buffers; compile it into a <see cref="Autodiff.Plan"/> to run it.
/// The training objective is Σ over <see cref="Losses"/> of the batch mean of each; with one loss it is the
/// mean loss, and a stop-gradient between blocks makes each block learn from its own local losses only.
/// </summary>
public sealed record Model(ImmutableArray<Node> Nodes, Node Loss, Node Output, ImmutableArray<Node> Losses, ImmutableArray<Site> Sites)
{
    /// <summary>The trainable parameters, in model order (the order of the parameter store and of checkpoints).</summary>
    public IEnumerable<Node> Parameters => Nodes.Where(n => n.IsParameter);

    /// <summary>Local losses that can be read per (token, group) block, with how finely each site's tangent stays apart on
    /// the way (Ren et al.'s local forward gradients; <see cref="Graph.LocalLossBlocks"/>); empty for models that declare none.
    /// <see cref="LocalMixerSpec.Build"/> declares its blocks.</summary>
    public ImmutableArray<LocalLossBlocks> LocalLossBlocks { get; init; } = [];
    /// <summary>Untrained state (batch normalisation's running statistics), in model order.</summary>
    public IEnumerable<Node> States => Nodes.Where(n => n.IsState);
    /// <summary>The nodes a plan is fed per batch: inputs, class labels and tokens, in model order.</summary>
    public IEnumerable<Node> Inputs => Nodes.Where(n => n.Op is InputOp or ClassLabelsOp or TokensOp);

    /// <summary>Total number of trainable scalars.</summary>
    public long ParameterCount => Parameters.Sum(p => (long)p.Shape.ElementCount);

    /// <summary>The node called <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No node has that name; the message lists the names.</exception>
    public Node this[string name]
    {
        get
        {
            foreach (var node in Nodes) // a plain loop: looked up inside training steps, it must not allocate
                if (node.Name == name) return node;
            throw new KeyNotFoundException($"The model has no node named '{name}'. Nodes: {string.Join(", ", Nodes.Select(n => n.Name))}.");
        }
    }

    /// <summary>The site at <paramref name="node"/>; throws naming the sites when there is none.</summary>
    public Site Site(Node node)
    {
        foreach (var site in Sites)
            if (site.Node.Id == node.Id) return site;
        throw new ArgumentException($"{node} is not a site of this model. Sites: {string.Join(", ", Sites.Select(s => s.Name))}.", nameof(node));
    }

    /// <summary>True when <paramref name="node"/> is this model's node (same id and description).</summary>
    public bool Contains(Node node) => node.Id >= 0 && node.Id < Nodes.Length && (ReferenceEquals(Nodes[node.Id], node) || Nodes[node.Id] == node);
}
