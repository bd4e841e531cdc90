using System.Collections.Immutable;

namespace ForwardAD.Graph;

/// <summary>
/// How finely a site's tangent stays apart on its way to its block's local loss (Ren et al., "Scaling Forward Gradient With
/// Local Losses", ICLR 2023, §3: local forward gradients). A site of per-example shape [P, n] is cut into P·G blocks
/// (<see cref="TokenGroup"/>: token p, the g-th of G equal channel chunks), P blocks (<see cref="Token"/>: one token's row),
/// or one (<see cref="Example"/>). "Apart" means: the tangent of block β reaches only block β of the local loss's cut node
/// (<see cref="LocalLossBlocks.Cut"/>), so the JVP of that block of the loss along u is exactly ∇_β ℓ · u_β.
/// </summary>
public enum BlockPartition
{
    /// <summary>One block per example: the whole per-example site shares one tangent path to the loss.</summary>
    Example,
    /// <summary>One block per token: row p of the per-example [P, n] site.</summary>
    Token,
    /// <summary>One block per (token, channel group): the g-th of G equal chunks of token p's channels.</summary>
    TokenGroup,
}

/// <summary>A site of a block and its <see cref="BlockPartition"/> for a tangent entering at the site (how it was found: see
/// the model family's builder), and where the block's architecture would rather take its noise (<see cref="Normalized"/>).</summary>
public sealed record SiteBlocks(Node Site, BlockPartition Partition)
{
    /// <summary>The site's normalised output, where Ren et al. add their noise (null: the model declares none).</summary>
    public NormalizedOutput? Normalized { get; init; }
}

/// <summary>
/// Where Ren et al. ("Scaling Forward Gradient With Local Losses", ICLR 2023; their <c>local_forward_gradient</c> code) add the
/// activity noise of a linear layer s = f(x; θ): after the LayerNorm that follows it and before its ReLU, z = LN(s) (what
/// <see cref="Node"/> computes), so that the perturbed value is <c>ReLU(z + u)</c> (or <c>ReLU(z + u + residual)</c> at a
/// block's last layer); <see cref="Gate"/> is that ReLU. An estimate ĝ_z = ℓ̇ u of ∂ℓ/∂z becomes one of ∂ℓ/∂s by
/// <c>ĝ_s = J_LNᵀ (f'(gate) ⊙ ĝ_z)</c>: the mask is exact (every path from z to the loss passes the gate, so ∂ℓ/∂z is zero
/// where f' is) and drops noise, the LayerNorm's VJP is the real op's. <see cref="Partition"/>: how finely a tangent entering
/// at z stays apart up to the loss's cut, which can be finer than at s, since the LayerNorm that couples a token's groups
/// is behind it (a linear layer followed by a LayerNorm over all of a token's channels, then a group-wise layer: per token
/// at s, per (token, group) at z).
/// </summary>
public sealed record NormalizedOutput(Node Node, Node Gate, BlockPartition Partition);

/// <summary>
/// One block's local loss seen as P·G per-(token, group) losses (Ren et al. 2023 §3.2 and their
/// <c>spatial_avg_group_linear_cross_entropy</c>): the cut node h [P, C] is the block output that the loss averages over the
/// P tokens and splits into G channel groups, each with its own head. The loss of block (p, g) replaces the token average of
/// group g by <c>h_{p,g}/P + stopgrad(avg_g − h_{p,g}/P)</c>: its value is the ordinary loss, its tangent
/// <c>ℓ̇_{p,g} = ⟨∂ℓ/∂h_{p,g}, ḣ_{p,g}⟩</c> (the VJP of the loss to h, dotted with h's tangent block by block), and
/// <c>Σ_{p,g} ℓ̇_{p,g} = ℓ̇</c>. <see cref="Sites"/> lists, for the sites whose tangents reach h, how finely they stay apart.
/// </summary>
public sealed record LocalLossBlocks(Node Loss, Node Cut, int Tokens, int Groups, ImmutableArray<SiteBlocks> Sites)
{
    /// <summary>The partition of <paramref name="site"/>; <see cref="BlockPartition.Example"/> for a site not listed.</summary>
    public BlockPartition PartitionOf(Node site) => EntryOf(site)?.Partition ?? BlockPartition.Example;

    /// <summary>The entry of <paramref name="site"/>, or null when the site is not listed.</summary>
    public SiteBlocks? EntryOf(Node site)
    {
        foreach (var entry in Sites)
            if (entry.Site.Id == site.Id) return entry;
        return null;
    }
}
