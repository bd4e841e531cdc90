using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Guessing;

/// <summary>
/// A guess of ∂L/∂s_i, the gradient at a layer's pre-activation, per example: a small immutable value
/// built from a noise source and transforms. The named guesses of "How to Guess a Gradient" are
/// compositions (see <see cref="Guesses"/>); a new one is a new composition:
/// <code>Guess.Normal.Projected().Masked().Normalized()</code>
/// </summary>
public abstract record Guess
{
    private protected Guess() { }

    /// <summary>N(0, I) at the layer's pre-activation (activation perturbation).</summary>
    public static Guess Normal { get; } = new NoiseGuess(NoiseKind.Normal);

    /// <summary>Uniform noise with unit variance, U(−√3, √3), at the pre-activation (self-sharpening's source).</summary>
    public static Guess Uniform { get; } = new NoiseGuess(NoiseKind.Uniform);

    /// <summary>Activation mixing: u_b = Σ_c α_bc x_{i+1,c} with α ~ N(0, 1), a random combination of the
    /// batch's layer outputs (DESIGN.md §2).</summary>
    public static Guess Mixing { get; } = new MixingGuess();

    /// <summary>The true error of the output layer, (softmax − onehot) per example, normalised: local
    /// information only (self-sharpening's last layer). At a hidden layer it is an error to use it.</summary>
    public static Guess TrueError { get; } = new TrueErrorGuess();

    /// <summary>This guess evaluated one layer up and carried down through the next layer's weights:
    /// u_i = W_{i+1}ᵀ v_{i+1}. At the output layer there is no next layer and the guess is used as is.</summary>
    public Guess Projected() => new ProjectedGuess(this, 1f);

    /// <summary>Like <see cref="Projected"/> with W_{i+1}ᵀ = V Σ Uᵀ replaced by V Σ^p Uᵀ: the singular values raised
    /// to <paramref name="power"/> (p = 1 is Wᵀ, p = 0 keeps only the singular directions).</summary>
    public Guess ProjectedWithSingularValuePower(float power) => new ProjectedGuess(this, power);

    /// <summary>Multiplied by the local Jacobian σ'(s_i) of the layer's activation (for ReLU the mask
    /// 1[s_i &gt; 0], taken at the pre-activation of the forward pass, bias included).</summary>
    public Guess Masked() => new MaskedGuess(this);

    /// <summary>Each example's guess rescaled to Euclidean norm √n (n = the layer's width).</summary>
    public Guess Normalized() => new NormalizedGuess(this);

    /// <summary>Pulled back k layers through local Jacobians: k times (<see cref="Projected"/>, then <see cref="Masked"/>).</summary>
    public Guess PulledBack(int layers)
    {
        if (layers < 1) throw new ArgumentOutOfRangeException(nameof(layers), $"Pull back at least one layer; got {layers}.");
        var guess = this;
        for (int i = 0; i < layers; i++) guess = guess.Projected().Masked();
        return guess;
    }

    internal abstract GuessProgram Compile(GuessCompiler compiler, int layer);
}

public enum NoiseKind { Normal, Uniform }

public sealed record NoiseGuess(NoiseKind Kind) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer) => new NoiseProgram(compiler.Backend, Kind);
    public override string ToString() => Kind == NoiseKind.Normal ? "N(0,I)" : "U(-√3,√3)";
}

public sealed record MixingGuess : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer) => new MixingProgram(compiler, layer);
    public override string ToString() => "mix(x)";
}

public sealed record TrueErrorGuess : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer)
    {
        if (layer != compiler.Layers.Length - 1 || compiler.Plan.Model.Layers[layer].Output != compiler.Plan.Model.Output)
            throw new ArgumentException($"The true-error guess exists only at the output layer; layer {layer + 1} is hidden.");
        return new TrueErrorProgram(compiler);
    }
    public override string ToString() => "true error";
}

public sealed record ProjectedGuess(Guess Source, float SingularValuePower) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer) =>
        layer == compiler.Layers.Length - 1 ? Source.Compile(compiler, layer) : new ProjectedProgram(compiler, layer, Source.Compile(compiler, layer + 1), SingularValuePower);
    public override string ToString() => SingularValuePower == 1f ? $"Wᵀ·{Source}" : $"(WᵀΣ^{SingularValuePower - 1})·{Source}";
}

public sealed record MaskedGuess(Guess Source) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer) => new MaskedProgram(compiler, layer, Source.Compile(compiler, layer));
    public override string ToString() => $"σ'⊙{Source}";
}

public sealed record NormalizedGuess(Guess Source) : Guess
{
    internal override GuessProgram Compile(GuessCompiler compiler, int layer) => new NormalizedProgram(compiler, layer, Source.Compile(compiler, layer));
    public override string ToString() => $"normalize({Source})";
}

/// <summary>The guesses of Singhal et al. (arXiv 2312.04709), as compositions.</summary>
public static class Guesses
{
    /// <summary>Activation perturbation: u ~ N(0, I) at s_i.</summary>
    public static Guess ActivationPerturbation { get; } = Guess.Normal;

    /// <summary>Wᵀ: u = mask_i ⊙ (W_{i+1}ᵀ ε), ε ~ N(0, I) of the next layer's width; E[ĝ] = M Wᵀ W M g.</summary>
    public static Guess WeightTranspose { get; } = Guess.Normal.Projected().Masked();

    /// <summary>k-layer downstream: ε at s_{i+k} pulled back through layers i+1..i+k (k = 1 is Wᵀ).</summary>
    public static Guess Downstream(int k) => Guess.Normal.PulledBack(k);

    /// <summary>Activation mixing: mask ⊙ Σ_c α_bc x_{i+1,c}, each row rescaled to norm √n.</summary>
    public static Guess ActivationMixing { get; } = Guess.Mixing.Masked().Normalized();

    /// <summary>Self-sharpening's hidden-layer guess: uniform noise pulled back one layer.</summary>
    public static Guess SelfSharpening { get; } = Guess.Uniform.PulledBack(1);

    /// <summary>Wᵀ with the singular values of W raised to p (the paper's spectrum study).</summary>
    public static Guess WeightTransposePower(float power) => Guess.Normal.ProjectedWithSingularValuePower(power).Masked();
}

/// <summary>Compiles guesses for one plan: gives programs the plan's values and their own workspace.</summary>
internal sealed class GuessCompiler(Plan plan, int channels)
{
    public Plan Plan { get; } = plan;
    public Backend Backend => Plan.Backend;
    public System.Collections.Immutable.ImmutableArray<DenseLayer> Layers => Plan.Model.Layers;
    /// <summary>Guesses per program (G): each program writes [G, B, ...pre-activation shape].</summary>
    public int Channels { get; } = channels;
    public int BatchSize => Plan.BatchSize;

    /// <summary>Rows of the guess for layer i over all channels: G·B·(positions per example).</summary>
    public int Rows(int layer) => Channels * BatchSize * Layers[layer].PreActivation.Shape.LeadingCount;
    public int Width(int layer) => Layers[layer].PreActivation.Shape.Last;
    public int Elements(int layer) => Rows(layer) * Width(layer);

    public View Workspace(int elements) => new(Backend.Allocate(Math.Max(1, elements)), 0, elements);
}

/// <summary>A compiled guess: writes G channels of the guess for its layer, allocation-free.</summary>
internal abstract class GuessProgram
{
    public abstract void Write(RandomKey key, View destination);

    /// <summary>True when the guess reads values of the current forward pass (masks, layer outputs, the loss
    /// error); false lets the estimator draw it first and run forward and JVP fused.</summary>
    public abstract bool ReadsForwardValues { get; }
}

internal sealed class NoiseProgram(Backend backend, NoiseKind kind) : GuessProgram
{
    public override bool ReadsForwardValues => false;

    private static readonly float UniformBound = MathF.Sqrt(3f);

    public override void Write(RandomKey key, View destination)
    {
        if (kind == NoiseKind.Normal) backend.FillNormal(key, 0, 0f, 1f, destination);
        else backend.FillUniform(key, 0, -UniformBound, UniformBound, destination);
    }
}

/// <summary>u[g] = α_g X with α_g ~ N(0,1) of size B×B and X = x_{i+1} (B×n): all G channels in one GEMM.</summary>
internal sealed class MixingProgram : GuessProgram
{
    private readonly GuessCompiler _compiler;
    private readonly int _layer;
    private readonly View _coefficients;

    public override bool ReadsForwardValues => true;

    public MixingProgram(GuessCompiler compiler, int layer)
    {
        if (compiler.Layers[layer].Output.Shape.Rank != 1)
            throw new ArgumentException("Activation mixing is defined for dense layers over vectors ([B, n]); this layer's output is " + compiler.Layers[layer].Output.Shape);
        _compiler = compiler;
        _layer = layer;
        _coefficients = compiler.Workspace(compiler.Channels * compiler.BatchSize * compiler.BatchSize);
    }

    public override void Write(RandomKey key, View destination)
    {
        int batch = _compiler.BatchSize, width = _compiler.Width(_layer);
        _compiler.Backend.FillNormal(key, 0, 0f, 1f, _coefficients);
        _compiler.Backend.Gemm(Transpose.No, Transpose.No, _compiler.Channels * batch, width, batch, 1f,
            _coefficients, batch, _compiler.Plan.Value(_compiler.Layers[_layer].Output), width, 0f, destination, width);
    }
}

/// <summary>The normalised output error e_b/‖e_b‖ in every channel: with it the forward gradient at the
/// output layer is exact, (g_b·ê_b) ê_b = g_b, since g_b = e_b/B.</summary>
internal sealed class TrueErrorProgram(GuessCompiler compiler) : GuessProgram
{
    public override bool ReadsForwardValues => true;

    public override void Write(RandomKey key, View destination)
    {
        var error = compiler.Plan.Derivative(compiler.Plan.Model.Loss);
        for (int g = 0; g < compiler.Channels; g++) compiler.Backend.Copy(error, destination.Channel(g, error.Length));
        compiler.Backend.NormalizeRows(destination, compiler.Width(compiler.Layers.Length - 1), 1f);
    }
}

/// <summary>u_i = W_{i+1}ᵀ v_{i+1} for all channels in one GEMM ([G·B, n_{i+1}] × [n_{i+1}, n_i]); with a
/// singular-value power p ≠ 1, u_i = V Σ^{p−1} Vᵀ (W_{i+1}ᵀ v) = V Σ^p Uᵀ v, from the eigen-decomposition
/// WᵀW = V Σ² Vᵀ computed on the host each step (a study variant, not a fast path).</summary>
internal sealed class ProjectedProgram : GuessProgram
{
    private readonly GuessCompiler _compiler;
    private readonly int _layer;
    private readonly GuessProgram _source;
    private readonly float _power;
    private readonly View _above, _projected, _spectral;
    private readonly double[] _gram = [], _vectors = [], _values = [];
    private readonly float[] _hostWeight = [], _hostSpectral = [];

    /// <summary>W_{i+1} is a parameter, not a forward value: only the source decides.</summary>
    public override bool ReadsForwardValues => _source.ReadsForwardValues;

    public ProjectedProgram(GuessCompiler compiler, int layer, GuessProgram source, float power)
    {
        _compiler = compiler;
        _layer = layer;
        _source = source;
        _power = power;
        _above = compiler.Workspace(compiler.Elements(layer + 1));
        if (power != 1f)
        {
            int n = compiler.Width(layer), m = compiler.Width(layer + 1);
            _projected = compiler.Workspace(compiler.Elements(layer));
            _spectral = compiler.Workspace(n * n);
            (_gram, _vectors, _values) = (new double[n * n], new double[n * n], new double[n]);
            (_hostWeight, _hostSpectral) = (new float[m * n], new float[n * n]);
        }
    }

    public override void Write(RandomKey key, View destination)
    {
        var backend = _compiler.Backend;
        int below = _compiler.Width(_layer), above = _compiler.Width(_layer + 1), rows = _compiler.Rows(_layer);
        _source.Write(key.Derive(1), _above);
        var weight = _compiler.Plan.Value(_compiler.Layers[_layer + 1].Weight);
        if (_power == 1f)
        {
            backend.Gemm(Transpose.No, Transpose.No, rows, below, above, 1f, _above, above, weight, below, 0f, destination, below);
            return;
        }
        backend.Gemm(Transpose.No, Transpose.No, rows, below, above, 1f, _above, above, weight, below, 0f, _projected, below);
        backend.CopyToHost(weight, _hostWeight);
        SpectralPower.Matrix(_hostWeight, above, below, _power - 1f, _gram, _vectors, _values, _hostSpectral);
        backend.CopyFromHost(_hostSpectral, _spectral);
        // Rows are v_bᵀ; (M v_b)ᵀ = v_bᵀ M since M is symmetric.
        backend.Gemm(Transpose.No, Transpose.No, rows, below, below, 1f, _projected, below, _spectral, below, 0f, destination, below);
    }
}

internal sealed class MaskedProgram(GuessCompiler compiler, int layer, GuessProgram source) : GuessProgram
{
    private readonly DenseLayer _dense = compiler.Layers[layer];

    public override bool ReadsForwardValues => _dense.Output != _dense.PreActivation || source.ReadsForwardValues;

    public override void Write(RandomKey key, View destination)
    {
        source.Write(key, destination);
        if (_dense.Output != _dense.PreActivation) // identity activation: the Jacobian is I
            compiler.Backend.MultiplyChannels(compiler.Plan.Derivative(_dense.Output), destination, destination, accumulate: false);
    }
}

internal sealed class NormalizedProgram(GuessCompiler compiler, int layer, GuessProgram source) : GuessProgram
{
    private readonly float _norm = MathF.Sqrt(compiler.Width(layer));

    public override bool ReadsForwardValues => source.ReadsForwardValues;

    public override void Write(RandomKey key, View destination)
    {
        source.Write(key, destination);
        compiler.Backend.NormalizeRows(destination, compiler.Width(layer), _norm);
    }
}
