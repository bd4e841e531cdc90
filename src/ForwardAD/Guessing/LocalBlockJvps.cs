using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;

namespace ForwardAD.Guessing;

/// <summary>
/// The per-(example, token, group) JVPs of one block's local loss from the one forward-mode pass (Ren et al., "Scaling
/// Forward Gradient With Local Losses", ICLR 2023, §3.2 and their <c>spatial_avg_group_linear_cross_entropy</c>). With the
/// token average made stop-gradient except for each token's own share, <c>avg_g ↦ h_{p,g}/P + stopgrad(avg_g − h_{p,g}/P)</c>,
/// the loss of block (p, g) has the ordinary value and the tangent
/// <c>ℓ̇_{k,b,p,g} = ⟨∂ℓ_b/∂h_{b,p,g}, ḣ_{k,b,p,g}⟩</c>: one local VJP of the loss back to the cut h (the token average, the
/// group heads and the cross-entropy: no parameter gradient, C = 1 channel, since ∂ℓ/∂h is the same for every tangent
/// channel), then one dot product per block and channel. Σ_{p,g} ℓ̇_{p,g} = ℓ̇, the per-example JVP, so nothing is lost;
/// what is gained is that a site whose blocks stay apart up to h (<see cref="BlockPartition"/>) gets one scalar per block.
/// </summary>
internal sealed class LocalBlockJvps
{
    private readonly Plan _plan;
    private readonly PullBack _pullBack;
    private readonly View _lossSeed, _cutCotangent;

    public LocalLossBlocks Blocks { get; }

    /// <summary>[K, B, P, G]: ℓ̇ per (token, group) block, times the factor of <see cref="Run"/>.</summary>
    public View TokenGroup { get; }

    /// <summary>[K, B, P]: ℓ̇ per token (Σ_g of <see cref="TokenGroup"/>), times the factor of <see cref="Run"/>.</summary>
    public View Token { get; }

    public LocalBlockJvps(Plan plan, LocalLossBlocks blocks)
    {
        var cut = blocks.Cut;
        if (!cut.IsBatched || cut.Shape.Rank != 2 || cut.Shape[0] != blocks.Tokens || blocks.Groups < 1 || cut.Shape[1] % blocks.Groups != 0)
            throw new ArgumentException($"Local loss '{blocks.Loss.Name}': its cut {cut} must be [tokens = {blocks.Tokens}, channels] with the channels a multiple of the {blocks.Groups} groups.", nameof(blocks));
        if (plan.IsTangentZero(cut))
            throw new ArgumentException($"Local loss '{blocks.Loss.Name}': no seed of this plan reaches its cut {cut}; per-block JVPs need the cut's tangent.", nameof(blocks));
        _plan = plan;
        Blocks = blocks;
        _pullBack = plan.CreatePullBack([blocks.Loss], cut);
        _lossSeed = _pullBack.Cotangent(blocks.Loss);
        _cutCotangent = _pullBack.Cotangent(cut);
        int rows = plan.TangentCount * plan.BatchSize * blocks.Tokens;
        TokenGroup = new View(plan.Backend.Allocate(rows * blocks.Groups), 0, rows * blocks.Groups);
        Token = new View(plan.Backend.Allocate(rows), 0, rows);
    }

    /// <summary>The scalars of a site with the given partition, [K, B, blocks per example].</summary>
    public View For(BlockPartition partition) => partition switch
    {
        BlockPartition.TokenGroup => TokenGroup,
        BlockPartition.Token => Token,
        _ => throw new ArgumentOutOfRangeException(nameof(partition), $"Per-example sites take the loss's own tangent, not a block JVP; got {partition}."),
    };

    /// <summary>Blocks per example of a partition: P·G, P or 1.</summary>
    public int BlocksPerExample(BlockPartition partition) => partition switch
    {
        BlockPartition.TokenGroup => Blocks.Tokens * Blocks.Groups,
        BlockPartition.Token => Blocks.Tokens,
        _ => 1,
    };

    /// <summary>After the forward and JVP passes: the block JVPs of <c>factor · ℓ_b</c> (factor 1/(B·G) folds the batch mean
    /// and the average over G guesses in, as the per-example scalars do).</summary>
    public void Run(float factor)
    {
        var backend = _plan.Backend;
        backend.Fill(factor, _lossSeed);
        _pullBack.Run();
        var tangent = _plan.Tangent(Blocks.Cut);
        int width = Blocks.Cut.Shape[1];
        backend.RowDot(_cutCotangent, tangent, width / Blocks.Groups, TokenGroup); // ℓ̇_{k,b,p,g} = ⟨∂ℓ_b/∂h_{b,p,g}, ḣ_{k,b,p,g}⟩
        backend.RowDot(_cutCotangent, tangent, width, Token);                      // ℓ̇_{k,b,p} = Σ_g ℓ̇_{k,b,p,g}
    }
}
