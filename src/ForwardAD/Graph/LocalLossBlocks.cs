using System.Collections.Immutable;

namespace ForwardAD.Graph;

/// <summary>
/// How finely a site's tangent stays apart on its way to its block's local loss (Ren et al., "Scaling Forward Gradient With
/// Local Losses", ICLR 2023, §3: local forward gradients). A site of per-example shape [P, n] is cut into P·G blocks
/// (<see cref="TokenGroup"/>: token p, the g-th of G equal channel chunks), P blocks (<see cref="Token"/>: one token's row),
/// or one (<see cref="Example"/>). "Apart" means: the tangent of block β reaches only block β of the local loss's cut node
/// (<see cref="LocalLossBlocks.Cut"/>), so the JVP of that block of the loss along u is exactly ∇_β ℓ · u_β.
/// </summary>
public enum BlockPartition { Example, Token, TokenGroup }

/// <summary>A site of a block and its <see cref="BlockPartition"/> (how it was found: see the model family's builder).</summary>
public sealed record SiteBlocks(Node Site, BlockPartition Partition);

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
    public BlockPartition PartitionOf(Node site)
    {
        foreach (var entry in Sites)
            if (entry.Site.Id == site.Id) return entry.Partition;
        return BlockPartition.Example;
    }
}
