using System.Collections.Immutable;

namespace ForwardAD.Graph;

/// <summary>
/// Where a guess enters (docs/design.md §2, sites): the output <c>s = f(x; θ)</c> of a parameterised op (dense now;
/// conv, embedding, attention projections as they land), found by <see cref="ModelBuilder.Build"/> from the graph,
/// or any differentiable node a user marks with <see cref="ModelBuilder.MarkSite"/>.
/// Everything an estimator needs is here or one graph step away:
/// <list type="bullet">
/// <item><see cref="Parameters"/>: the op's parameters; a site cotangent becomes their update through the op's own
/// VJP (<see cref="Autodiff.Plan.CreateParameterUpdate"/>), the same rule backprop uses.</item>
/// <item><see cref="Activation"/>: the elementwise op applied to s, when it is s's only consumer; its Jacobian
/// f'(s) is the guessing paper's mask, and its output h = f(s) is what activation mixing mixes and where GrAPE
/// perturbs by default.</item>
/// <item><see cref="Next"/>: the sites reached from s without crossing another site, a stop-gradient or a loss;
/// "Wᵀ" is the pull-back of a guess at them to s through the real ops in between.</item>
/// <item><see cref="Losses"/>: the losses s reaches (a derivative path, no stop-gradient): its local losses.</item>
/// </list>
/// </summary>
public sealed record Site(int Index, Node Node, ImmutableArray<Node> Parameters, Node? Activation, ImmutableArray<int> Next, ImmutableArray<Node> Losses)
{
    /// <summary>The site node's name ("fc1", "block2.channel1"): how reports and per-site metrics name it.</summary>
    public string Name => Node.Name;

    /// <summary>h = f(s) when an elementwise op follows the site, else s itself.</summary>
    public Node Output => Activation ?? Node;

    /// <summary>Elements of the site per example (a guess for one example has this many numbers).</summary>
    public int ElementCount => Node.Shape.ElementCount;

    /// <summary>"site 'name' (kind, per-example shape)".</summary>
    public override string ToString() => $"site '{Name}' ({Node.Op.Kind}, {Node.Shape})";
}
