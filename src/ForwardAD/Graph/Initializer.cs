using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Graph;

/// <summary>How a parameter's initial values are drawn. Deterministic: the numbers come from the
/// Philox stream of (seed, parameter index), so a model initialises identically on every backend.</summary>
public abstract record Initializer
{
    private protected Initializer() { }
    internal abstract void Fill(Backend backend, RandomKey key, View destination);

    public static Initializer Zeros { get; } = new ConstantInitializer(0f);

    /// <summary>PyTorch's nn.Linear default for weights: U(−1/√fanIn, 1/√fanIn) (kaiming_uniform with a = √5).</summary>
    public static Initializer LinearDefault(int fanIn) => new UniformInitializer(1f / MathF.Sqrt(fanIn));
    /// <summary>Kaiming/He uniform for ReLU: U(−√(6/fanIn), √(6/fanIn)).</summary>
    public static Initializer KaimingUniform(int fanIn) => new UniformInitializer(MathF.Sqrt(6f / fanIn));
    /// <summary>Glorot/Xavier uniform: U(−√(6/(fanIn+fanOut)), …).</summary>
    public static Initializer XavierUniform(int fanIn, int fanOut) => new UniformInitializer(MathF.Sqrt(6f / (fanIn + fanOut)));
}

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
