using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Graph;

/// <summary>How a parameter's initial values are drawn. Deterministic: the numbers come from the
/// Philox stream of (seed, parameter index), so a model initialises identically on every backend.</summary>
public abstract record Initializer
{
    private protected Initializer() { }
    internal abstract void Fill(Backend backend, RandomKey key, View destination);

    /// <summary>Every value 0 (biases under <see cref="InitScheme.TorchZeroBias"/>, batch norm β).</summary>
    public static Initializer Zeros { get; } = new ConstantInitializer(0f);

    /// <summary>PyTorch's nn.Linear/nn.Conv2d default for weights, kaiming_uniform_(a = √5): gain = √(2/(1 + a²)) = √(1/3),
    /// bound = gain·√(3/fanIn) = 1/√fanIn, so U(−1/√fanIn, 1/√fanIn), variance 1/(3·fanIn). The same bound is their bias default.</summary>
    public static Initializer LinearDefault(int fanIn)
    {
        if (fanIn < 1) throw new ArgumentOutOfRangeException(nameof(fanIn), $"A fan-in is at least 1; got {fanIn}.");
        return new UniformInitializer(1f / MathF.Sqrt(fanIn));
    }

    /// <summary>Kaiming/He uniform for ReLU: U(−√(6/fanIn), √(6/fanIn)).</summary>
    public static Initializer KaimingUniform(int fanIn) => new UniformInitializer(MathF.Sqrt(6f / fanIn));
    /// <summary>Glorot/Xavier uniform: U(−√(6/(fanIn+fanOut)), …).</summary>
    public static Initializer XavierUniform(int fanIn, int fanOut) => new UniformInitializer(MathF.Sqrt(6f / (fanIn + fanOut)));
}

/// <summary>Every value <paramref name="Value"/>; draws no random numbers.</summary>
/// <param name="Value">The value written to every element (1 for a normalisation's γ, 0 for its β).</param>
public sealed record ConstantInitializer(float Value) : Initializer
{
    internal override void Fill(Backend backend, RandomKey key, View destination) => backend.Fill(Value, destination);
}

/// <summary>U(−Bound, Bound).</summary>
public sealed record UniformInitializer(float Bound) : Initializer
{
    internal override void Fill(Backend backend, RandomKey key, View destination) => backend.FillUniform(key, 0, -Bound, Bound, destination);
}

/// <summary>N(0, StandardDeviation²).</summary>
public sealed record NormalInitializer(float StandardDeviation) : Initializer
{
    internal override void Fill(Backend backend, RandomKey key, View destination) => backend.FillNormal(key, 0, 0f, StandardDeviation, destination);
}

/// <summary>
/// How the weights and biases of a model's dense and convolution layers start; a <see cref="ModelBuilder"/> takes one
/// (the model specs pass theirs to it). Under every scheme, token embeddings start N(0, 1) as nn.Embedding, LayerNorm and
/// batch norm γ = 1, β = 0 as in PyTorch, and a transformer's learned positions N(0, 0.02²) as GPT-2's (not as
/// nn.Embedding; <see cref="PositionInit"/> offers both).
/// <list type="bullet">
/// <item><see cref="Torch"/> (the default): exactly nn.Linear's and nn.Conv2d's reset_parameters: weight
/// kaiming_uniform_(a = √5) = U(±1/√fan_in), bias U(±1/√fan_in), with fan_in = in_features for a dense layer and
/// in_channels/groups·kh·kw for a convolution, so that results compare with PyTorch runs (same distributions; the
/// numbers differ, as the generators do).</item>
/// <item><see cref="TorchZeroBias"/>: the same weights, zero biases; the default before the biases were drawn, so a
/// model built with it has, seed for seed, the same parameters as one built before.</item>
/// </list>
/// </summary>
public sealed record InitScheme
{
    private InitScheme(string name, bool zeroBiases) => (Name, ZeroBiases) = (name, zeroBiases);

    /// <summary>The scheme's name: what <see cref="Named"/> reads and what a run's configuration records.</summary>
    public string Name { get; }

    /// <summary>Biases start at zero instead of U(±1/√fan_in).</summary>
    public bool ZeroBiases { get; }

    /// <summary>"torch", the default: weights and biases both U(±1/√fan_in), as nn.Linear and nn.Conv2d.</summary>
    public static InitScheme Torch { get; } = new("torch", zeroBiases: false);
    /// <summary>"torch-zero-bias": weights U(±1/√fan_in), biases zero.</summary>
    public static InitScheme TorchZeroBias { get; } = new("torch-zero-bias", zeroBiases: true);

    /// <summary>Every scheme, in the order tools list them.</summary>
    public static ImmutableArray<InitScheme> All { get; } = [Torch, TorchZeroBias];

    /// <summary>The scheme called <paramref name="name"/> (see <see cref="All"/>).</summary>
    public static InitScheme Named(string name) =>
        All.FirstOrDefault(s => s.Name == name) ?? throw new ArgumentException(
            $"No initialisation scheme named '{name}'. Schemes: {string.Join(", ", All.Select(s => s.Name))}.", nameof(name));

    /// <summary>A dense or convolution weight whose outputs each sum <paramref name="fanIn"/> inputs.</summary>
    public Initializer Weight(int fanIn) => Initializer.LinearDefault(fanIn);

    /// <summary>The bias of a layer with <paramref name="fanIn"/> inputs per output: PyTorch's
    /// bound = 1/√fan_in (the weight's own fan-in), or zeros.</summary>
    public Initializer Bias(int fanIn) => ZeroBiases ? Initializer.Zeros : Initializer.LinearDefault(fanIn);

    /// <summary>The scheme's <see cref="Name"/>.</summary>
    public override string ToString() => Name;
}
