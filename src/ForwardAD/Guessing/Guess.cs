using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Guessing;

/// <summary>
/// A guess of ∂L/∂s at a site s (docs/design.md §2), per example: a small immutable value built from a noise source
/// and transforms. It is compiled per site of a model, so the same guess works on an MLP, a residual network or
/// anything the graph describes. The named guesses of "How to Guess a Gradient" are compositions (see
/// <see cref="Guesses"/>); a new one is a new composition:
/// <code>Guess.Normal.PulledBack().Normalized()</code>
/// </summary>
public abstract record Guess
{
    private protected Guess() { }

    /// <summary>N(0, I) at the site (activation perturbation).</summary>
    public static Guess Normal { get; } = new NoiseGuess(NoiseKind.Normal);

    /// <summary>Uniform noise with unit variance, U(−√3, √3), at the site (self-sharpening's source).</summary>
    public static Guess Uniform { get; } = new NoiseGuess(NoiseKind.Uniform);

    /// <summary>Activation mixing: u_b = Σ_c α_bc h_c with α ~ N(0, 1), a random combination of the batch's outputs
    /// h = f(s) of the site (docs/design.md §2).</summary>
    public static Guess Mixing { get; } = new MixingGuess();

    /// <summary>The true error (softmax − onehot) per example, normalised: local information only (self-sharpening's
    /// last layer). Only at a site that feeds a loss directly (the output layer, a local head); elsewhere it is an error.</summary>
    public static Guess TrueError { get; } = new TrueErrorGuess();

    /// <summary>
    /// This guess evaluated at the next sites (<see cref="Site.Next"/>) and pulled back to this site through the real
    /// ops in between, by their VJP rules: u = J_{next←s}ᵀ v. For a dense chain this is mask ⊙ W_{i+1}ᵀ v, the
    /// paper's Wᵀ; through a residual add, a LayerNorm or several consumers it is whatever the graph really does.
    /// At a site with no next site (the output layer) the guess is used as is.
    /// </summary>
    public Guess PulledBack() => new PulledBackGuess(this);

    /// <summary>Pulled back through k sites: <see cref="PulledBack()"/> applied k times (k-layer downstream).</summary>
    public Guess PulledBack(int sites)
    {
        if (sites < 1) throw new ArgumentOutOfRangeException(nameof(sites), $"Pull back through at least one site; got {sites}.");
        var guess = this;
        for (int i = 0; i < sites; i++) guess = guess.PulledBack();
        return guess;
    }

    /// <summary>This guess at the next site carried down through that site's weight only, u = Wᵀ v, without the
    /// activation's Jacobian (add <see cref="Masked"/>). Defined where the site feeds exactly one dense site through at
    /// most one elementwise op; <see cref="PulledBack()"/> is the general form.</summary>
    public Guess Projected() => new ProjectedGuess(this, 1f);

    /// <summary>Like <see cref="Projected"/> with Wᵀ = V Σ Uᵀ replaced by V Σ^p Uᵀ: the singular values raised
    /// to <paramref name="power"/> (p = 1 is Wᵀ, p = 0 keeps only the singular directions).</summary>
    public Guess ProjectedWithSingularValuePower(float power) => new ProjectedGuess(this, power);

    /// <summary>Multiplied by the Jacobian f'(s) of the site's activation (<see cref="Site.Activation"/>; for ReLU the
    /// mask 1[s &gt; 0], taken at the forward pass's s, bias included). No activation: the Jacobian is I.</summary>
    public Guess Masked() => new MaskedGuess(this);

    /// <summary>Each example's guess at the site rescaled to Euclidean norm √n, n = the site's elements per example (root
    /// mean square 1, the scale of N(0, I)), whatever the graph did to it: E[ĝ] = n·E[u uᵀ/‖u‖²]·g for a guess u that is
    /// symmetric (u and −u alike) and independent of the other sites' guesses.</summary>
    public Guess Normalized() => new NormalizedGuess(this);

    internal abstract GuessProgram Compile(GuessCompiler compiler, Site site);
}

/// <summary>The distribution of a <see cref="NoiseGuess"/>: both have zero mean and unit variance per element.</summary>
public enum NoiseKind
{
    /// <summary>u ~ N(0, I).</summary>
    Normal,
    /// <summary>u ~ U(−√3, √3) per element: unit variance, bounded.</summary>
    Uniform,
}

/// <summary>Fresh noise at the site, drawn per example at its global index (the same numbers on every backend and rank
/// split): u ~ N(0, I) or U(−√3, √3)ⁿ, so Cov(u) = I and E[ĝ] = E[(g·u) u] = g. See <see cref="Guess.Normal"/>.</summary>
/// <param name="Kind">Normal or uniform noise.</param>
public sealed record NoiseGuess(NoiseKind Kind) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) => new NoiseProgram(compiler, site, Kind);
    /// <summary>"N(0,I)" or "U(-√3,√3)".</summary>
    public override string ToString() => Kind == NoiseKind.Normal ? "N(0,I)" : "U(-√3,√3)";
}

/// <summary>Activation mixing (<see cref="Guess.Mixing"/>): u_b = Σ_c α_bc h_c, α ~ N(0, 1), a random combination of the
/// batch's site outputs h = f(s) (a feature map mixes as a whole), in the span of the batch's activations. Unscaled:
/// compose <see cref="Guess.Normalized"/> for the scale of N(0, I).</summary>
public sealed record MixingGuess : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) => new MixingProgram(compiler, site);
    /// <summary>"mix(h)".</summary>
    public override string ToString() => "mix(h)";
}

/// <summary>The true error of the loss a site feeds, normalised: ê_b = e_b/‖e_b‖ with e_b = ∂ℓ_b/∂z_b (softmax − onehot for
/// cross-entropy), the same in every channel; at an output site the forward gradient (g_b·ê_b) ê_b is then exactly g_b
/// (<see cref="Guess.TrueError"/>). Only at a site that feeds a loss directly, through reshapes at most: compiling it at
/// any other site throws <see cref="ArgumentException"/>.</summary>
public sealed record TrueErrorGuess : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site)
    {
        var model = compiler.Plan.Model;
        var loss = model.Losses.FirstOrDefault(l => BeforeReshapes(model, l.Inputs[0]) == site.Node.Id)
            ?? throw new ArgumentException($"The true-error guess exists only at a site that feeds a loss directly (an output layer); {site} does not.");
        return new TrueErrorProgram(compiler, site, loss);
    }

    /// <summary>The node a chain of reshapes starts from: a reshape keeps each example's elements in order, so the error
    /// e = ∂ℓ/∂z of a loss on the reshaped logits (a LocalMixer's grouped heads) is the site's error element for element.</summary>
    private static int BeforeReshapes(Model model, int id)
    {
        while (model.Nodes[id].Op is ReshapeOp) id = model.Nodes[id].Inputs[0];
        return id;
    }
    /// <summary>"true error".</summary>
    public override string ToString() => "true error";
}

/// <summary><see cref="Guess.PulledBack()"/>: <paramref name="Source"/> evaluated at the next sites and pulled back to this
/// site by the VJPs of the real ops in between, u = J_{next←s}ᵀ v; at a site with no next site, <paramref name="Source"/> itself.</summary>
/// <param name="Source">The guess evaluated at the next sites.</param>
public sealed record PulledBackGuess(Guess Source) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) =>
        site.Next.IsEmpty ? Source.Compile(compiler, site) : new PullBackProgram(compiler, site, Source);
    /// <summary>"Jᵀ·" and the source, as in "Jᵀ·N(0,I)".</summary>
    public override string ToString() => $"Jᵀ·{Source}";
}

/// <summary><see cref="Guess.Projected"/>: <paramref name="Source"/> at the single next dense site carried down through its
/// weight only, u = V Σ^p Uᵀ v for W = U Σ Vᵀ (p = 1: u = Wᵀ v), without the activation's Jacobian. At a site with no next
/// site, <paramref name="Source"/> itself.</summary>
/// <param name="Source">The guess evaluated at the next site.</param>
/// <param name="SingularValuePower">p: the power the next weight's singular values are raised to (1 for plain Wᵀ).</param>
public sealed record ProjectedGuess(Guess Source, float SingularValuePower) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) =>
        site.Next.IsEmpty ? Source.Compile(compiler, site) : new ProjectedProgram(compiler, site, Source, SingularValuePower);
    /// <summary>"Wᵀ·" and the source for p = 1, else "(WᵀΣ^q)·" with q = p − 1, and the source.</summary>
    public override string ToString() => SingularValuePower == 1f ? $"Wᵀ·{Source}" : $"(WᵀΣ^{SingularValuePower - 1})·{Source}";
}

/// <summary><see cref="Guess.Masked"/>: <paramref name="Source"/> multiplied elementwise by f'(s), the Jacobian of the site's
/// activation at the forward pass's s (for ReLU the mask 1[s &gt; 0]); unchanged when the site has no activation.</summary>
/// <param name="Source">The guess to mask.</param>
public sealed record MaskedGuess(Guess Source) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) => new MaskedProgram(compiler, site, Source.Compile(compiler, site));
    /// <summary>"f'⊙" and the source.</summary>
    public override string ToString() => $"f'⊙{Source}";
}

/// <summary><see cref="Guess.Normalized"/>: each example's <paramref name="Source"/> guess rescaled to Euclidean norm √n,
/// n = the site's elements per example.</summary>
/// <param name="Source">The guess to rescale.</param>
public sealed record NormalizedGuess(Guess Source) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, Site site) => new NormalizedProgram(compiler, site, Source.Compile(compiler, site));
    /// <summary>"normalize(" and the source and ")".</summary>
    public override string ToString() => $"normalize({Source})";
}

/// <summary>The guesses of Singhal et al. (arXiv 2312.04709), as compositions.</summary>
public static class Guesses
{
    /// <summary>Activation perturbation: u ~ N(0, I) at the site.</summary>
    public static Guess ActivationPerturbation { get; } = Guess.Normal;

    /// <summary>Wᵀ: ε ~ N(0, I) at the next sites pulled back through the ops that consume this one; for a dense
    /// chain u = mask_i ⊙ (W_{i+1}ᵀ ε) and E[ĝ] = M Wᵀ W M g.</summary>
    public static Guess WeightTranspose { get; } = Guess.Normal.PulledBack();

    /// <summary>
    /// Wᵀ rescaled per site and example to root mean square 1 (<see cref="Guess.Normalized"/>). A pulled-back guess keeps
    /// the scale of the ops it went through: through batch norm's γ/σ its rms at a CNN's convolution sites is ~4 against
    /// ~0.3 without batch norm, and in joint mode, where every site shares one JVP scalar d_b = Σ_i ⟨g_i, u_i⟩, those
    /// sites then drown the others (measured on cnn-small, Fashion-MNIST, one epoch, AdamW 1e-3, seed 1: 12.6 % test
    /// accuracy joint, 51.3 % joint normalised, 77.4 % per-layer, 79.1 % per-layer normalised).
    /// E[ĝ_i] = n_i·E[u_i u_iᵀ/‖u_i‖²]·g_i (no cross-site terms: the sites' sources are independent and symmetric).
    /// </summary>
    public static Guess WeightTransposeNormalized { get; } = Guess.Normal.PulledBack().Normalized();

    /// <summary>k-layer downstream: ε at the sites k steps down, pulled back through every op in between (k = 1 is Wᵀ).</summary>
    public static Guess Downstream(int k) => Guess.Normal.PulledBack(k);

    /// <summary>Activation mixing: f' ⊙ Σ_c α_bc h_c, each row rescaled to norm √n.</summary>
    public static Guess ActivationMixing { get; } = Guess.Mixing.Masked().Normalized();

    /// <summary>Self-sharpening's hidden-site guess: uniform noise pulled back one site.</summary>
    public static Guess SelfSharpening { get; } = Guess.Uniform.PulledBack();

    /// <summary>Wᵀ with the singular values of W raised to p (the paper's spectrum study); dense chains only.</summary>
    public static Guess WeightTransposePower(float power) => Guess.Normal.ProjectedWithSingularValuePower(power).Masked();
}

/// <summary>Compiles guesses for one plan: gives programs the plan's values, its pull-backs and their own workspace.
/// <paramref name="sites"/>: where each site's guess enters, by site index (the model's sites when null; a site placed at
/// its normalised output, <see cref="GuessPlacement.Normalized"/>, is read there, and so are the next sites a pull-back
/// starts from).</summary>
internal sealed class GuessCompiler(Plan plan, int channels, BatchShard shard, IReadOnlyList<Site>? sites = null)
{
    public Plan Plan { get; } = plan;
    /// <summary>Which examples of the global batch the plan holds: per-example noise is drawn at their global positions.</summary>
    public BatchShard Shard { get; } = shard;
    public Backend Backend => Plan.Backend;
    public IReadOnlyList<Site> Sites { get; } = sites ?? plan.Model.Sites;
    /// <summary>Guesses per program (G): each program writes [G, B, ...site shape].</summary>
    public int Channels { get; } = channels;
    public int BatchSize => Plan.BatchSize;

    /// <summary>Rows of a guess over all channels, G·B·(positions per example), each of the site's last-axis length.</summary>
    public int Rows(Site site) => Channels * BatchSize * site.Node.Shape.LeadingCount;
    public static int Width(Site site) => site.Node.Shape.Last;
    public int Elements(Site site) => Channels * BatchSize * site.ElementCount;

    public View Workspace(int elements) => new(Backend.Allocate(Math.Max(1, elements)), 0, elements);
}

/// <summary>A compiled guess: writes G channels of the guess for its site, allocation-free.</summary>
internal abstract class GuessProgram
{
    public abstract void Write(RandomKey key, View destination);

    /// <summary>True when the guess reads values of the current forward pass (masks, site outputs, the loss
    /// error); false lets the estimator draw it first and run forward and JVP fused.</summary>
    public abstract bool ReadsForwardValues { get; }
}

/// <summary>Noise [G, B, site elements], example b's at its global index (<see cref="BatchShard.Fill"/>): a rank holding a
/// share of the batch draws exactly the numbers one process would draw for those examples.</summary>
internal sealed class NoiseProgram(GuessCompiler compiler, Site site, NoiseKind kind) : GuessProgram
{
    public override bool ReadsForwardValues => false;

    private static readonly float UniformBound = MathF.Sqrt(3f);

    public override void Write(RandomKey key, View destination)
    {
        if (kind == NoiseKind.Normal) compiler.Shard.Fill(compiler.Backend, key, site.ElementCount, uniform: false, 0f, 1f, destination);
        else compiler.Shard.Fill(compiler.Backend, key, site.ElementCount, uniform: true, -UniformBound, UniformBound, destination);
    }
}

/// <summary>u[g] = α_g H with α_g ~ N(0,1) of size B×B and H = f(s) (B×n, n = the site's elements per example: a
/// feature map mixes as a whole): all G channels in one GEMM.</summary>
internal sealed class MixingProgram : GuessProgram
{
    private readonly GuessCompiler _compiler;
    private readonly Site _site;
    private readonly View _coefficients;

    public override bool ReadsForwardValues => true;

    public MixingProgram(GuessCompiler compiler, Site site)
    {
        _compiler = compiler;
        _site = site;
        _coefficients = compiler.Workspace(compiler.Channels * compiler.BatchSize * compiler.BatchSize);
    }

    public override void Write(RandomKey key, View destination)
    {
        int batch = _compiler.BatchSize, width = _site.ElementCount;
        // α [G, B, B]. A rank holding a share of the batch mixes its own examples' outputs (it has no others): the block
        // of the whole batch's α at its examples, row b's coefficients at global positions (b_global·B + first ..).
        var shard = _compiler.Shard;
        if (shard.IsWhole) _compiler.Backend.FillNormal(key, 0, 0f, 1f, _coefficients);
        else
            for (int row = 0; row < _compiler.Channels * batch; row++)
            {
                int channel = row / batch, example = shard.First + row % batch;
                _compiler.Backend.FillNormal(key, ((long)channel * shard.GlobalBatch + example) * shard.GlobalBatch + shard.First, 0f, 1f, _coefficients.Slice(row * batch, batch));
            }
        _compiler.Backend.Gemm(Transpose.No, Transpose.No, _compiler.Channels * batch, width, batch, 1f,
            _coefficients, batch, _compiler.Plan.Value(_site.Output), width, 0f, destination, width);
    }
}

/// <summary>The normalised error e_b/‖e_b‖ of the loss the site feeds, in every channel: with it the forward gradient
/// at an output site is exact, (g_b·ê_b) ê_b = g_b, since g_b = e_b/B (when that loss is the site's only one).</summary>
internal sealed class TrueErrorProgram(GuessCompiler compiler, Site site, Node loss) : GuessProgram
{
    public override bool ReadsForwardValues => true;

    public override void Write(RandomKey key, View destination)
    {
        var error = compiler.Plan.Derivative(loss);
        for (int g = 0; g < compiler.Channels; g++) compiler.Backend.Copy(error, destination.Channel(g, error.Length));
        compiler.Backend.NormalizeRows(destination, GuessCompiler.Width(site), 1f);
    }
}

/// <summary>
/// The source guess at each next site f_j (keyed key.Derive(1 + j)), pulled back to this site by one K-channel
/// pull-back through the ops in between, written straight into the destination: u = Σ_j J_{f_j←s}ᵀ v_j.
/// </summary>
internal sealed class PullBackProgram : GuessProgram
{
    private readonly GuessProgram[] _sources;
    private readonly View[] _starts;
    private readonly PullBack _pullBack;

    public override bool ReadsForwardValues { get; }

    public PullBackProgram(GuessCompiler compiler, Site site, Guess source)
    {
        var next = site.Next.Select(j => compiler.Sites[j]).ToArray();
        _sources = [.. next.Select(f => source.Compile(compiler, f))];
        _pullBack = compiler.Plan.CreatePullBack([.. next.Select(f => f.Node)], site.Node, compiler.Channels);
        _starts = [.. next.Select(f => _pullBack.Cotangent(f.Node))];
        ReadsForwardValues = _pullBack.ReadsForwardValues || _sources.Any(s => s.ReadsForwardValues);
    }

    public override void Write(RandomKey key, View destination)
    {
        for (int j = 0; j < _sources.Length; j++) _sources[j].Write(key.Derive(1 + (ulong)j), _starts[j]);
        _pullBack.Run(destination);
    }
}

/// <summary>u = W_fᵀ v for all channels in one GEMM ([G·B, m] × [m, n]) with f the one dense next site; with a
/// singular-value power p ≠ 1, u = V Σ^{p−1} Vᵀ (Wᵀ v) = V Σ^p Uᵀ v, from the eigen-decomposition
/// WᵀW = V Σ² Vᵀ computed on the host each step (a study variant, not a fast path).</summary>
internal sealed class ProjectedProgram : GuessProgram
{
    private readonly GuessCompiler _compiler;
    private readonly Site _site;
    private readonly Node _weight;
    private readonly int _above, _below;
    private readonly GuessProgram _source;
    private readonly float _power;
    private readonly View _next, _projected, _spectral;
    private readonly double[] _gram = [], _vectors = [], _values = [];
    private readonly float[] _hostWeight = [], _hostSpectral = [];

    /// <summary>W is a parameter, not a forward value: only the source decides.</summary>
    public override bool ReadsForwardValues => _source.ReadsForwardValues;

    public ProjectedProgram(GuessCompiler compiler, Site site, Guess source, float power)
    {
        var next = site.Next.Length == 1 ? compiler.Sites[site.Next[0]] : null;
        if (next is null || next.Node.Op is not LinearOp || next.Node.Inputs[0] != site.Output.Id)
            throw new ArgumentException($"Projecting by Wᵀ (or WᵀΣ^p) needs {site} to feed exactly one dense site through at most one elementwise op; " +
                "use PulledBack() (Guesses.WeightTranspose) for any other graph.");
        _compiler = compiler;
        _site = site;
        _weight = compiler.Plan.Model.Nodes[next.Node.Inputs[1]];
        (_above, _below) = (GuessCompiler.Width(next), GuessCompiler.Width(site));
        _source = source.Compile(compiler, next);
        _power = power;
        _next = compiler.Workspace(compiler.Elements(next));
        if (power != 1f)
        {
            int n = _below, m = _above;
            _projected = compiler.Workspace(compiler.Elements(site));
            _spectral = compiler.Workspace(n * n);
            (_gram, _vectors, _values) = (new double[n * n], new double[n * n], new double[n]);
            (_hostWeight, _hostSpectral) = (new float[m * n], new float[n * n]);
        }
    }

    public override void Write(RandomKey key, View destination)
    {
        var backend = _compiler.Backend;
        int rows = _compiler.Rows(_site);
        _source.Write(key.Derive(1), _next);
        var weight = _compiler.Plan.Value(_weight);
        if (_power == 1f)
        {
            backend.Gemm(Transpose.No, Transpose.No, rows, _below, _above, 1f, _next, _above, weight, _below, 0f, destination, _below);
            return;
        }
        backend.Gemm(Transpose.No, Transpose.No, rows, _below, _above, 1f, _next, _above, weight, _below, 0f, _projected, _below);
        backend.CopyToHost(weight, _hostWeight);
        SpectralPower.Matrix(_hostWeight, _above, _below, _power - 1f, _gram, _vectors, _values, _hostSpectral);
        backend.CopyFromHost(_hostSpectral, _spectral);
        // Rows are v_bᵀ; (M v_b)ᵀ = v_bᵀ M since M is symmetric.
        backend.Gemm(Transpose.No, Transpose.No, rows, _below, _below, 1f, _projected, _below, _spectral, _below, 0f, destination, _below);
    }
}

internal sealed class MaskedProgram(GuessCompiler compiler, Site site, GuessProgram source) : GuessProgram
{
    public override bool ReadsForwardValues => site.Activation is not null || source.ReadsForwardValues;

    public override void Write(RandomKey key, View destination)
    {
        source.Write(key, destination);
        if (site.Activation is { } activation) // no activation: the Jacobian is I
            compiler.Backend.MultiplyChannels(compiler.Plan.Derivative(activation), destination, destination, accumulate: false);
    }
}

/// <summary>Each example's guess rescaled to norm √n, n its elements (a whole feature map at a convolutional site).</summary>
internal sealed class NormalizedProgram(GuessCompiler compiler, Site site, GuessProgram source) : GuessProgram
{
    private readonly float _norm = MathF.Sqrt(site.ElementCount);

    public override bool ReadsForwardValues => source.ReadsForwardValues;

    public override void Write(RandomKey key, View destination)
    {
        source.Write(key, destination);
        compiler.Backend.NormalizeRows(destination, site.ElementCount, _norm);
    }
}
