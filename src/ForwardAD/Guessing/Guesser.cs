using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Guessing;

/// <summary>
/// How the guesses of the sites share tangent channels (docs/design.md §2). Joint: one channel carries every
/// site's guess (K = G; cheap, cross-site terms add variance). PerLayer: one channel per site
/// (K = L·G; independent estimates, L× the tangent work).
/// </summary>
public enum TangentMode
{
    /// <summary>One channel carries every site's guess (K = G): one JVP per guess; the other sites' guesses add variance to each site's scalar.</summary>
    Joint,
    /// <summary>One channel per site (K = L·G): each site's JVP sees only its own guess, at L× the tangent work.</summary>
    PerLayer,
}

/// <summary>Which loss a site's JVP is taken of. Objective: the sum of all the model's losses (the global loss; with one
/// loss, the loss). Local: only the losses the site reaches (its block's local losses, past no stop-gradient): in joint
/// mode the other blocks' guesses then add no noise to this site's estimate.</summary>
public enum SiteLoss
{
    /// <summary>The JVP of the sum of all the model's losses.</summary>
    Objective,
    /// <summary>The JVP of the losses the site reaches without crossing a stop-gradient: its block's local losses.</summary>
    Local,
}

/// <summary>Where an activation guess enters. Site: at the site s itself (docs/design.md §2). Normalized: where the model
/// declares a site's normalised output (<see cref="SiteBlocks.Normalized"/>: Ren et al.'s placement, after the LayerNorm
/// that follows a linear layer and before its ReLU), the estimate there masked by that ReLU's derivative and pulled back
/// through the LayerNorm to s; sites without one (heads, the classifier) take it at s.</summary>
public enum GuessPlacement
{
    /// <summary>The guess is a tangent at the site s itself.</summary>
    Site,
    /// <summary>The guess is a tangent at the site's declared normalised output z = LN(s), its estimate masked by the
    /// following ReLU and pulled back through the LayerNorm to s; at s where no normalised output is declared.</summary>
    Normalized,
}

/// <summary>A way to estimate the gradient from one batch: a description, compiled into a
/// <see cref="GradientEstimator"/> for a parameter store and batch size.</summary>
public abstract record Guesser
{
    private protected Guesser() { }

    /// <summary>Short name for reports and CSV columns.</summary>
    public abstract string Name { get; }

    /// <summary>Compiles the guesser for a whole batch of <paramref name="batchSize"/> examples in this process.</summary>
    public GradientEstimator Compile(ParameterStore parameters, int batchSize) => Compile(parameters, BatchShard.Whole(batchSize));

    /// <summary>Compiles the guesser for one rank's share of the batch (data-parallel training, docs/design.md §7): every
    /// per-example random number at its global index, every mean over the global batch, so that the ranks' estimates
    /// combined as <see cref="GradientEstimator.Exchange"/> says are what one process with the whole batch computes.</summary>
    public abstract GradientEstimator Compile(ParameterStore parameters, BatchShard shard);

    /// <summary>The guesser's <see cref="Name"/>.</summary>
    public override string ToString() => Name;
}

/// <summary>The exact gradient by backprop: the oracle as a guesser.</summary>
public sealed record BackpropGuesser : Guesser
{
    /// <summary>"backprop".</summary>
    public override string Name => "backprop";
    /// <summary>The training step's backprop keeps only what its backward pass reads (the memory autograd keeps).</summary>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard) => new BackpropEstimator(parameters, shard, releaseBuffers: true);
}

/// <summary>
/// Activation guessing: at every site s (<see cref="Graph.Model.Sites"/>) a guess u of ∂L/∂s per example
/// (<see cref="Last"/> at sites with no next site, the output layer; <see cref="Hidden"/> elsewhere), one JVP giving
/// per-example scalars d_b = ∂(ℓ_b/B)/∂s·u_b of the loss <see cref="Loss"/> says, and the site cotangent Σ_g d_b u_b
/// turned into a parameter update by the site op's own VJP (for dense ΔW = Σ_b d_b u_b x_bᵀ, Δb = Σ_b d_b u_b),
/// averaged over <see cref="Guesses"/> guesses.
/// </summary>
public sealed record ActivationGuesser(string Label, Guess Hidden, Guess Last, TangentMode Mode = TangentMode.Joint, int Guesses = 1) : Guesser
{
    /// <summary><see cref="ActivationGuesser.Label"/>, with " (per-layer)" in per-layer tangent mode.</summary>
    public override string Name => Mode == TangentMode.PerLayer ? $"{Label} (per-layer)" : Label;

    /// <summary>The loss each site's JVP is taken of (default: the objective, the sum of every loss).</summary>
    public SiteLoss Loss { get; init; } = SiteLoss.Objective;

    /// <summary>
    /// Ren et al.'s local forward gradients (ICLR 2023, §3.2): at the sites whose blocks stay apart up to their local loss
    /// (<see cref="Model.LocalLossBlocks"/>: per (token, group) or per token), one JVP scalar per block instead of per example,
    /// ĝ_{b,β} = ℓ̇_{b,β} u_{b,β} with ℓ̇_{b,β} = ⟨∂ℓ_b/∂h_β, ḣ_β⟩ (<see cref="LocalBlockJvps"/>): still unbiased, since
    /// E[(∇_β·u_β) u_β] = ∇_β, without the other blocks' noise. Other sites keep the per-example scalar. Needs
    /// <see cref="SiteLoss.Local"/> and a model that declares its blocks (the LocalMixer does).
    /// </summary>
    public bool LocalBlocks { get; init; }

    /// <summary>
    /// Where the guesses enter (<see cref="GuessPlacement"/>). With <see cref="GuessPlacement.Normalized"/> the guess u is a
    /// tangent at z = LN(s), the JVP scalar d is of the loss along it (per block of the z partition with
    /// <see cref="LocalBlocks"/>), and the site's estimate is ĝ_s = J_LNᵀ (f'(gate) ⊙ Σ d u): for noise u ~ N(0, I),
    /// E[ĝ_s] = J_LNᵀ (f' ⊙ ∂ℓ/∂z) = J_LNᵀ ∂ℓ/∂z = ∂ℓ/∂s, unbiased (the mask only zeroes entries whose gradient is zero).
    /// A guess that reads the site's neighbourhood reads z's: Wᵀ pulls the next sites' guesses back to z, the mask and
    /// mixing use the gate.
    /// </summary>
    public GuessPlacement Placement { get; init; } = GuessPlacement.Site;

    /// <summary>
    /// At the sites <see cref="Last"/> would guess (no next site: output layer, local heads, classifier), the exact
    /// gradient instead of a guess: ĝ_s = Σ over the site's losses of ∂(ℓ_b/B)/∂s_b, by a pull-back from those losses to
    /// s through the parameter-free ops in between (for a head: the loss's own error (softmax − onehot)/B), then the op's
    /// parameter VJP. Local information only, no backprop through the network; those sites carry no tangent, so their noise
    /// leaves the other sites' JVPs. Ren et al. train their heads and classifier so.
    /// </summary>
    public bool ExactLast { get; init; }

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="Guesses"/> is below 1.</exception>
    /// <exception cref="ArgumentException"><see cref="Placement"/> is Normalized or <see cref="LocalBlocks"/> is set on a
    /// model that declares no local-loss blocks, or <see cref="LocalBlocks"/> is set without <see cref="SiteLoss.Local"/>.</exception>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard)
    {
        if (Guesses < 1) throw new ArgumentOutOfRangeException(nameof(Guesses), $"At least one guess per step; got {Guesses}.");
        if (Placement == GuessPlacement.Normalized && !parameters.Model.LocalLossBlocks.Any(b => b.Sites.Any(s => s.Normalized is not null)))
            throw new ArgumentException($"{Name}: guesses at the normalised outputs (Placement = Normalized) need a model that declares them (SiteBlocks.Normalized, as LocalMixerSpec.Build does); this model declares none. Use Placement = Site.");
        if (LocalBlocks && Loss != SiteLoss.Local)
            throw new ArgumentException($"{Name}: per-block JVPs (LocalBlocks) are JVPs of each block's local loss; set Loss = SiteLoss.Local.");
        if (LocalBlocks && parameters.Model.LocalLossBlocks.IsEmpty)
            throw new ArgumentException($"{Name}: per-block JVPs (LocalBlocks) need a model that declares its local-loss blocks (Model.LocalLossBlocks, as LocalMixerSpec.Build does); this model declares none. Use the per-example scalars (LocalBlocks = false).");
        return new ActivationGuessEstimator(this, parameters, shard);
    }
}

/// <summary>
/// Directional descent (weight perturbation): v ~ N(0, I) over all parameters, one JVP of the mean loss,
/// ĝ = (g·v) v, averaged over <see cref="Guesses"/> directions (K = G channels).
/// </summary>
public sealed record DirectionalDescent(int Guesses = 1) : Guesser
{
    /// <summary>"directional descent".</summary>
    public override string Name => "directional descent";
    /// <inheritdoc/>
    /// <remarks>Every rank draws the same directions v_k from (seed, step, k); the ranks exchange only the K partial JVP
    /// scalars (docs/design.md §7). Throws <see cref="ArgumentOutOfRangeException"/> when <see cref="Guesses"/> &lt; 1.</remarks>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard) => new DirectionalEstimator(parameters, shard, Guesses, null);
}

/// <summary>
/// The paper's cosine-matched control (appendix A.2): a direction y with a set cosine θ to the true gradient g,
/// y = √N (θ ĝ + √(1−θ²) r̂), ĝ = g/‖g‖, r̂ a random unit vector orthogonal to g; then ĝ_est = (g·y) y with
/// g·y from one JVP. It needs the oracle gradient each step, so it is a measurement device, not a method.
/// </summary>
public sealed record CosineMatchedDescent(double Cosine, int Guesses = 1) : Guesser
{
    /// <summary>"cosine-matched (θ)".</summary>
    public override string Name => $"cosine-matched ({Cosine:0.###})";
    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="Cosine"/> is outside [−1, 1].</exception>
    /// <exception cref="ArgumentException">The shard is not the whole batch: the directions need the exact gradient of the
    /// whole batch, so this control runs in one process only.</exception>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard)
    {
        if (Cosine is < -1 or > 1) throw new ArgumentOutOfRangeException(nameof(Cosine), $"A cosine lies in [−1, 1]; got {Cosine}.");
        if (!shard.IsWhole) throw new ArgumentException($"{Name} shapes its directions with the exact gradient of the whole batch, a measurement device for one process; run it without data parallelism.");
        return new DirectionalEstimator(parameters, shard, Guesses, Cosine);
    }
}

/// <summary>The named guessers, as compositions of <see cref="Guesses"/>.</summary>
public static class Guessers
{
    /// <summary>The exact gradient (<see cref="BackpropGuesser"/>): the reference the estimates are measured against.</summary>
    public static Guesser Backprop { get; } = new BackpropGuesser();
    /// <summary>Directional descent (<see cref="Guessing.DirectionalDescent"/>): ĝ = (1/G) Σ_k (g·v_k) v_k, v_k ~ N(0, I) over
    /// all parameters; unbiased, variance growing with the parameter count.</summary>
    public static Guesser DirectionalDescent(int guesses = 1) => new DirectionalDescent(guesses);
    /// <summary>Activation perturbation: u_b ~ N(0, I) at every site, ĝ_b = d_b u_b with d_b the per-example JVP; unbiased
    /// (Cov(u) = I).</summary>
    public static Guesser ActivationPerturbation(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("activation perturbation", Guesses.ActivationPerturbation, Guess.Normal, mode, guesses);
    /// <summary>Ren et al.'s activation perturbation (ICLR 2023, their <c>update_forward_grad_activations</c>): N(0, I) noise
    /// at each site's normalised output where the model declares one (<see cref="GuessPlacement.Normalized"/>), each JVP
    /// taken of the site's own block's local loss, one scalar per (token, group) block where the blocks stay apart up to the
    /// loss (<see cref="ActivationGuesser.LocalBlocks"/>), and the heads and classifier trained with their exact local
    /// gradients (<see cref="ActivationGuesser.ExactLast"/>). With <paramref name="placement"/> = Site and
    /// <paramref name="exactLast"/> false: the per-block JVPs alone, noise at the sites and on the heads.</summary>
    public static Guesser RenActivationPerturbation(TangentMode mode = TangentMode.Joint, int guesses = 1, GuessPlacement placement = GuessPlacement.Normalized, bool exactLast = true) =>
        new ActivationGuesser("Ren et al. activation perturbation", Guesses.ActivationPerturbation, Guess.Normal, mode, guesses)
        { Loss = SiteLoss.Local, LocalBlocks = true, Placement = placement, ExactLast = exactLast };
    /// <summary>Wᵀ (<see cref="Guesses.WeightTranspose"/>), or with <paramref name="normalized"/> each site's guess rescaled
    /// to rms 1 (<see cref="Guesses.WeightTransposeNormalized"/>: what keeps joint mode from failing on batch-norm CNNs).</summary>
    public static Guesser WeightTranspose(TangentMode mode = TangentMode.Joint, int guesses = 1, bool normalized = false) =>
        normalized
            ? new ActivationGuesser("Wᵀ (normalised)", Guesses.WeightTransposeNormalized, Guess.Normal, mode, guesses)
            : new ActivationGuesser("Wᵀ", Guesses.WeightTranspose, Guess.Normal, mode, guesses);
    /// <summary>k-layer downstream (<see cref="Guesses.Downstream"/>), or with <paramref name="normalized"/> each site's guess
    /// rescaled to rms 1 (as <see cref="WeightTranspose"/>'s, for the same reason).</summary>
    public static Guesser Downstream(int k, TangentMode mode = TangentMode.Joint, int guesses = 1, bool normalized = false) =>
        new ActivationGuesser(normalized ? $"{k}-layer downstream (normalised)" : $"{k}-layer downstream",
            normalized ? Guesses.Downstream(k).Normalized() : Guesses.Downstream(k), Guess.Normal, mode, guesses);
    /// <summary>Activation mixing at hidden sites (<see cref="Guesses.ActivationMixing"/>: f' ⊙ Σ_c α_bc h_c, rescaled to norm
    /// √n), N(0, I) at the output site.</summary>
    public static Guesser ActivationMixing(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("activation mixing", Guesses.ActivationMixing, Guess.Normal, mode, guesses);
    /// <summary>Self-sharpening: uniform noise pulled back one site at hidden sites (<see cref="Guesses.SelfSharpening"/>), the
    /// normalised true error at the output site (<see cref="Guess.TrueError"/>), so the estimate there is exact.</summary>
    public static Guesser SelfSharpening(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("self-sharpening", Guesses.SelfSharpening, Guess.TrueError, mode, guesses);
    /// <summary>Wᵀ with the next weight's singular values raised to <paramref name="power"/> (<see cref="Guesses.WeightTransposePower"/>,
    /// the spectrum study); dense chains only.</summary>
    public static Guesser WeightTransposePower(float power, TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser($"Wᵀ with σ^{power:0.##}", Guesses.WeightTransposePower(power), Guess.Normal, mode, guesses);
    /// <summary>The cosine-matched control (<see cref="CosineMatchedDescent"/>): directions at a set cosine to the true gradient.</summary>
    public static Guesser CosineMatched(double cosine, int guesses = 1) => new CosineMatchedDescent(cosine, guesses);
    /// <summary>Direct feedback alignment with fixed random feedback matrices B_l drawn from <paramref name="seed"/>:
    /// δs_l = (B_l e) ⊙ f'(s_l).</summary>
    public static Guesser Dfa(FeedbackInitialization initialization = FeedbackInitialization.XavierUniform, ulong seed = 0) =>
        new DirectFeedbackAlignment(initialization, null, seed);
    /// <summary>GrAPE: DFA whose feedback matrices are moved each step toward JVP estimates of the Jacobians, as
    /// <paramref name="options"/> says (<see cref="GrapeOptions"/>).</summary>
    public static Guesser Grape(GrapeOptions options, FeedbackInitialization initialization = FeedbackInitialization.XavierUniform, ulong seed = 0) =>
        new DirectFeedbackAlignment(initialization, options, seed);
}

/// <summary>The compiled <see cref="ActivationGuesser"/>.</summary>
internal sealed class ActivationGuessEstimator : GradientEstimator
{
    private readonly ActivationGuesser _guesser;
    private readonly Plan _plan;
    private readonly Site[] _sites;                 // every site, in model order (the order the parameter update is written in)
    private readonly Site[] _placed;                // per site: where its guess enters (the site itself, or its normalised output)
    private readonly int[] _slot;                   // per site: its place among the guessed sites (per-layer channels); -1: exact
    private readonly int _guessedCount;
    private readonly GuessProgram?[] _programs;     // per site; null at an exact site
    private readonly ParameterUpdate _update;
    private readonly (Node[] Losses, View Scales)[] _lossGroups; // sites that take the JVP of the same losses share d
    private readonly int[] _siteGroup;
    private readonly View _scaled, _summed, _siteCotangent, _gradient;
    private readonly int _guesses, _globalBatch;
    private readonly bool _readsForwardValues;
    private readonly SiteCorrection?[] _corrections;
    private readonly LocalBlockJvps[] _blockJvps;              // one per local loss read per block (LocalBlocks)
    private readonly (int Blocks, BlockPartition Partition)[] _siteBlocks; // per site; Blocks = -1: per-example scalars
    private readonly (PullBack PullBack, View Cotangent, Node Gate)?[] _toSite; // per site placed at z = LN(s): z → s
    private readonly (PullBack PullBack, View[] LossSeeds)?[] _exact;          // per exact site reaching a loss: losses → s
    private readonly bool[] _isExact;

    /// <remarks>corrections: Optional linear maps applied to each site's estimated cotangent before it becomes a
    /// parameter update (de-biasing, <see cref="DebiasedGuesser"/>); null: none.</remarks>
    public ActivationGuessEstimator(ActivationGuesser guesser, ParameterStore parameters, BatchShard shard,
        Func<Plan, Site, SiteCorrection?>? corrections = null)
    {
        int batchSize = shard.Count;
        _globalBatch = shard.GlobalBatch;
        var model = parameters.Model;
        if (model.Sites.IsEmpty) throw new ArgumentException("Activation guessing needs a model with sites (outputs of parameterised ops such as dense layers).");
        _guesser = guesser;
        _guesses = guesser.Guesses;
        _sites = [.. model.Sites];
        int count = _sites.Length;

        // What the model declares per site (LocalMixer: its block, partition and normalised output).
        var entries = new (LocalLossBlocks Blocks, SiteBlocks Entry)?[count];
        foreach (var blocks in model.LocalLossBlocks)
            foreach (var entry in blocks.Sites)
            {
                int index = model.Site(entry.Site).Index;
                if (entries[index] is not null) throw new ArgumentException($"{_sites[index]} is declared in two local losses' blocks.");
                entries[index] = (blocks, entry);
            }
        // Ren et al.'s placement: the guess enters at z = LN(s) and reads z's neighbourhood (its gate for masks and mixing,
        // the next sites' z for pull-backs); the site's index, parameters, next sites and losses stay.
        _placed = new Site[count];
        for (int i = 0; i < count; i++)
        {
            _placed[i] = _sites[i];
            if (guesser.Placement != GuessPlacement.Normalized || entries[i]?.Entry.Normalized is not { } z) continue;
            if (z.Node.Shape.ElementCount != _sites[i].ElementCount || z.Gate.Shape.ElementCount != _sites[i].ElementCount || z.Gate.Op is not ElementwiseOp)
                throw new ArgumentException($"{_sites[i]}: its declared normalised output {z.Node} and gate {z.Gate} must be an activation and an elementwise op with the site's {_sites[i].ElementCount} elements per example.");
            _placed[i] = _sites[i] with { Node = z.Node, Activation = z.Gate };
        }
        _isExact = [.. _sites.Select(s => guesser.ExactLast && s.Next.IsEmpty)];
        _slot = new int[count];
        for (int i = 0; i < count; i++) _slot[i] = _isExact[i] ? -1 : _guessedCount++;
        int channels = guesser.Mode == TangentMode.PerLayer ? Math.Max(1, _guessedCount) * _guesses : _guesses;
        _plan = Plan.Compile(parameters, new PlanOptions(batchSize)
        {
            TangentCount = channels,
            Seeds = [.. Enumerable.Range(0, count).Where(i => !_isExact[i]).Select(i => new TangentSeed(_placed[i].Node))],
            SaveDerivatives = _guessedCount == 0, // the exact sites' pull-backs read the losses' errors: kept even with no seed
        });
        var compiler = new GuessCompiler(_plan, _guesses, shard, _placed);
        _programs = [.. Enumerable.Range(0, count).Select(i => _isExact[i] ? null : (_sites[i].Next.IsEmpty ? guesser.Last : guesser.Hidden).Compile(compiler, _placed[i]))];
        _readsForwardValues = _programs.Any(p => p?.ReadsForwardValues == true);
        // Channels of other sites stay zero in per-layer mode: clear the seeds once.
        for (int i = 0; i < count; i++)
            if (!_isExact[i]) parameters.Backend.Fill(0f, _plan.Seed(_placed[i].Node));

        var groups = new List<(Node[] Losses, View Scales)>();
        _siteGroup = new int[count];
        for (int i = 0; i < count; i++)
        {
            _siteGroup[i] = -1;
            if (_isExact[i]) continue;
            Node[] losses = guesser.Loss == SiteLoss.Local ? [.. _sites[i].Losses] : [.. model.Losses];
            int group = groups.FindIndex(g => g.Losses.SequenceEqual(losses));
            if (group < 0) { group = groups.Count; groups.Add((losses, compiler.Workspace(channels * batchSize))); }
            _siteGroup[i] = group;
        }
        _lossGroups = [.. groups];
        // Per-block JVPs (Ren et al.): a site listed with a finer partition than the example (at the place its guess enters),
        // in a block whose loss is the only one it reaches, takes that loss's block scalars.
        var blockJvps = new List<LocalBlockJvps>();
        _siteBlocks = [.. _sites.Select(_ => (-1, BlockPartition.Example))];
        if (guesser.LocalBlocks)
            for (int i = 0; i < count; i++)
            {
                if (_isExact[i] || entries[i] is not { } declared) continue;
                var (blocks, entry) = declared;
                var partition = ReferenceEquals(_placed[i], _sites[i]) ? entry.Partition : entry.Normalized!.Partition;
                if (partition == BlockPartition.Example) continue;
                if (_sites[i].Losses.Length != 1 || _sites[i].Losses[0].Id != blocks.Loss.Id)
                    throw new ArgumentException($"{_sites[i]} is declared per {partition} for local loss '{blocks.Loss.Name}', but it reaches the losses " +
                        $"{string.Join(", ", _sites[i].Losses.Select(l => l.Name))}; a per-block site must reach that loss only (a stop-gradient after its block).");
                int index = blockJvps.FindIndex(j => j.Blocks == blocks);
                if (index < 0) { index = blockJvps.Count; blockJvps.Add(new LocalBlockJvps(_plan, blocks)); }
                int perExample = blockJvps[index].BlocksPerExample(partition);
                if (_sites[i].ElementCount % perExample != 0)
                    throw new ArgumentException($"{_sites[i]} is declared per {partition} ({perExample} blocks per example) but has {_sites[i].ElementCount} elements per example, not a multiple.");
                _siteBlocks[i] = (index, partition);
            }
        _blockJvps = [.. blockJvps];
        int widest = _sites.Max(compiler.Elements);
        _scaled = _guesses > 1 ? compiler.Workspace(widest) : View.Empty; // one guess is scaled straight into the cotangent
        _summed = compiler.Workspace(widest / _guesses);
        // A guess at z is pulled back to s through the real ops in between (the LayerNorm and reshapes) into its own buffer.
        _toSite = new (PullBack, View, Node)?[count];
        for (int i = 0; i < count; i++)
            if (!_isExact[i] && !ReferenceEquals(_placed[i], _sites[i]))
            {
                var pullBack = _plan.CreatePullBack([_placed[i].Node], _sites[i].Node);
                _toSite[i] = (pullBack, pullBack.Cotangent(_placed[i].Node), _placed[i].Activation!);
            }
        _siteCotangent = _toSite.Any(t => t is not null) ? compiler.Workspace(widest / _guesses) : View.Empty;
        // Exact sites: the pull-back from the losses they reach, each loss's cotangent 1/B (B the global batch).
        _exact = new (PullBack, View[])?[count];
        for (int i = 0; i < count; i++)
            if (_isExact[i] && !_sites[i].Losses.IsEmpty)
            {
                var pullBack = _plan.CreatePullBack([.. _sites[i].Losses], _sites[i].Node);
                _exact[i] = (pullBack, [.. _sites[i].Losses.Select(pullBack.Cotangent)]);
            }
        _gradient = compiler.Workspace(parameters.All.Length);
        _update = _plan.CreateParameterUpdate([.. _sites.Select(s => s.Node)], _gradient);
        _corrections = [.. _sites.Select((s, i) => _isExact[i] ? null : corrections?.Invoke(_plan, s))];
    }

    public override Plan Plan => _plan;

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        var backend = _plan.Backend;
        int batch = _plan.BatchSize;
        float scale = 1f / ((float)_globalBatch * _guesses);
        if (_readsForwardValues) _plan.Forward();
        for (int i = 0; i < _sites.Length; i++)
            _programs[i]?.Write(key.Derive((ulong)i), GuessSlice(_plan.Seed(_placed[i].Node), _slot[i]));
        // Guesses that need no forward value (plain noise) are drawn first; forward and JVP then run fused, site by site.
        if (_readsForwardValues) _plan.Jvp();
        else _plan.ForwardJvp();
        // d_{k,b} = Σ_losses ℓ̇_{k,b} / B, with the average over G guesses folded in: scale = 1/(B·G), B the global batch
        // (a rank holding a share of it returns Σ over its examples, its share of the sum).
        foreach (var (losses, scales) in _lossGroups) SumLossTangents(losses, scale, scales);
        foreach (var blocks in _blockJvps) blocks.Run(scale);
        for (int i = 0; i < _sites.Length; i++)
        {
            var summed = _summed.Slice(0, _sites[i].ElementCount * batch);
            if (_isExact[i])
            {
                // ∂(Σ_losses ℓ_b/B)/∂s_b exactly, by the VJPs of the parameter-free ops between the site and its losses.
                if (_exact[i] is { } exact)
                {
                    foreach (var seed in exact.LossSeeds) backend.Fill(1f / _globalBatch, seed);
                    exact.PullBack.Run(summed);
                }
                else backend.Fill(0f, summed); // a site that reaches no loss has no gradient
                _update.Write(i, summed);
                continue;
            }
            var guess = GuessSlice(_plan.Seed(_placed[i].Node), _slot[i]);
            int channelBase = _guesser.Mode == TangentMode.PerLayer ? _slot[i] * _guesses : 0;
            var (blockIndex, partition) = _siteBlocks[i];
            // Per-example: d_{k,b}, one scalar per row [n] of the guess. Per block: d_{k,b,β}, one per block [n/blocks]:
            // ScaleRows reads the row length off the scale count, so both scale the guess in place of the same call.
            int perExample = blockIndex < 0 ? 1 : _blockJvps[blockIndex].BlocksPerExample(partition);
            var scales = (blockIndex < 0 ? _lossGroups[_siteGroup[i]].Scales : _blockJvps[blockIndex].For(partition))
                .Slice(channelBase * batch * perExample, _guesses * batch * perExample);
            // Σ_g d_{g,b} u_{g,b}: scale each example's guess by its scalar, then sum the G channels: the cotangent where the
            // guess entered. One guess: the scaled guess is the cotangent (no pass that only copies).
            if (_guesses == 1) backend.ScaleRows(guess, scales, summed, accumulate: false);
            else
            {
                var scaled = _scaled.Slice(0, guess.Length);
                backend.ScaleRows(guess, scales, scaled, accumulate: false);
                backend.SumRows(scaled, summed, accumulate: false);
            }
            var cotangent = summed;
            if (_toSite[i] is { } toSite)
            {
                // Ren et al.: ĝ_s = J_LNᵀ (f'(gate) ⊙ ĝ_z), the mask of the ReLU after z, then the LayerNorm's own VJP.
                backend.MultiplyChannels(_plan.Derivative(toSite.Gate), summed, toSite.Cotangent, accumulate: false);
                cotangent = _siteCotangent.Slice(0, summed.Length);
                toSite.PullBack.Run(cotangent);
            }
            _corrections[i]?.Apply(cotangent);
            _update.Write(i, cotangent);
        }
        return (_gradient, _plan.MeanLoss());
    }

    /// <summary>scales = factor · Σ_l ℓ̇_l over the given losses, [K, B]; losses no seed reaches add nothing.</summary>
    private void SumLossTangents(Node[] losses, float factor, View scales)
    {
        var backend = _plan.Backend;
        bool written = false;
        foreach (var loss in losses)
        {
            var tangent = _plan.Tangent(loss);
            if (tangent.IsEmpty) continue;
            if (!written) backend.Scale(tangent, factor, scales);
            else backend.Axpby(factor, tangent, 1f, scales);
            written = true;
        }
        if (!written) backend.Fill(0f, scales);
    }

    /// <summary>The channels of a seed that carry the G guesses of the guessed site in <paramref name="slot"/>.</summary>
    private View GuessSlice(View seed, int slot)
    {
        if (_guesser.Mode == TangentMode.Joint) return seed;
        int perChannel = seed.Length / (_guessedCount * _guesses);
        return seed.Slice(slot * _guesses * perChannel, _guesses * perChannel);
    }
}

/// <summary>The compiled <see cref="DirectionalDescent"/> and <see cref="CosineMatchedDescent"/>.</summary>
internal sealed class DirectionalEstimator : GradientEstimator
{
    private readonly Plan _plan;
    private readonly BackpropEstimator? _oracle;
    private readonly double? _cosine;
    private readonly int _guesses;
    private readonly Node[] _parameters;
    private readonly View _gradient, _direction, _orthogonal;
    private readonly View[] _gradients;
    private readonly ParameterLayout _layout;
    private readonly float[] _lossTangent;
    private readonly double[] _directionals;
    private readonly BatchShard _shard;

    public DirectionalEstimator(ParameterStore parameters, BatchShard shard, int guesses, double? cosine)
    {
        int batchSize = shard.Count;
        _shard = shard;
        _directionals = new double[guesses];
        if (guesses < 1) throw new ArgumentOutOfRangeException(nameof(guesses), $"At least one guess per step; got {guesses}.");
        var model = parameters.Model;
        _guesses = guesses;
        _cosine = cosine;
        _parameters = [.. model.Parameters];
        _layout = ParameterLayout.Of(model);
        _plan = Plan.Compile(parameters, new PlanOptions(batchSize)
        {
            TangentCount = guesses,
            // Directions are drawn from their key each run when no oracle shapes them (memory: never stored twice).
            Seeds = [.. _parameters.Select(p => new TangentSeed(p, cosine is null ? new RandomKey(0, (ulong)p.Id) : null))],
            ReuseBuffers = true,
        });
        _oracle = cosine is null ? null : new BackpropEstimator(parameters, batchSize, updatesRunningStatistics: false);
        var backend = parameters.Backend;
        _gradient = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        _gradients = _layout.Slices(model, _gradient);
        if (cosine is not null)
        {
            _direction = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
            _orthogonal = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        }
        _lossTangent = new float[guesses * batchSize];
    }

    public override Plan Plan => _plan;

    /// <summary>The K JVP scalars are summed over the ranks inside <see cref="Estimate"/>: every rank returns the same estimate.</summary>
    public override EstimateExchange Exchange => EstimateExchange.Agreed;

    public override void SetBatch(ReadOnlySpan<float> features, ReadOnlySpan<float> labels)
    {
        base.SetBatch(features, labels);
        _oracle?.SetBatch(features, labels);
    }

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        var backend = _plan.Backend;
        int batch = _plan.BatchSize;
        if (_cosine is null)
            foreach (var p in _parameters) _plan.SetSeedGenerator(p, key.Derive((ulong)p.Id));
        else
            WriteCosineMatchedDirections(key);
        _plan.ForwardJvp();
        backend.CopyToHost(_plan.Tangent(_plan.Model.Loss), _lossTangent);
        // g·v_k = (1/B) Σ_b ℓ̇_{k,b}. Data parallel (docs/design.md §7): every rank draws the same v_k (keyed by step and
        // parameter, not by example), sums its own examples, and one all-reduce of the K partial sums gives every rank
        // the same g·v_k: 8K bytes a step, whatever the parameter count.
        for (int k = 0; k < _guesses; k++)
        {
            double directional = 0;
            for (int b = 0; b < batch; b++) directional += _lossTangent[k * batch + b];
            _directionals[k] = directional;
        }
        _shard.Communicator.AllReduceSum(_directionals);
        backend.Fill(0f, _gradient);
        for (int k = 0; k < _guesses; k++)
        {
            // ĝ = (1/G) Σ_k (g·v_k) v_k.
            float weight = (float)(_directionals[k] / _shard.GlobalBatch / _guesses);
            foreach (var p in _parameters)
                backend.Axpby(weight, _plan.Seed(p).Channel(k, p.Shape.ElementCount), 1f, _gradients[p.Id]);
        }
        return (_gradient, _plan.MeanLoss());
    }

    /// <summary>y_k = √N (θ ĝ + √(1−θ²) r̂_k) with r̂_k ⟂ g, written into the parameter seeds.</summary>
    private void WriteCosineMatchedDirections(RandomKey key)
    {
        var backend = _plan.Backend;
        var (g, _) = _oracle!.Estimate(key);
        double n = g.Length, gNorm = Math.Sqrt(backend.SumOfSquares(g));
        double theta = _cosine!.Value, sine = Math.Sqrt(Math.Max(0, 1 - theta * theta));
        for (int k = 0; k < _guesses; k++)
        {
            backend.FillNormal(key.Derive((ulong)k), 0, 0f, 1f, _orthogonal);
            if (gNorm > 0) backend.Axpby((float)(-backend.Dot(_orthogonal, g) / (gNorm * gNorm)), g, 1f, _orthogonal);
            double rNorm = Math.Sqrt(backend.SumOfSquares(_orthogonal));
            backend.Fill(0f, _direction);
            if (gNorm > 0) backend.Axpby((float)(Math.Sqrt(n) * theta / gNorm), g, 1f, _direction);
            if (rNorm > 0) backend.Axpby((float)(Math.Sqrt(n) * sine / rNorm), _orthogonal, 1f, _direction);
            foreach (var (p, offset) in _layout.Entries)
                backend.Copy(_direction.Slice(offset, p.Shape.ElementCount), _plan.Seed(p).Channel(k, p.Shape.ElementCount));
        }
    }
}
