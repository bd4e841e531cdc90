using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace ForwardAD.Backends;

/// <summary>
/// A pointwise nonlinearity y = f(x). Each function gives its value and its derivative f'(x)
/// (given x and y, whichever is cheaper); the JVP and VJP rules of the elementwise op are then the
/// same for all of them: ẏ = f'(x) ⊙ ẋ and x̄ = f'(x) ⊙ ȳ. The set is closed (sealed records);
/// a backend maps each one to its kernel by <see cref="Name"/>.
/// </summary>
public abstract record ElementwiseFunction
{
    private protected ElementwiseFunction() { }

    public abstract string Name { get; }

    /// <summary>y = f(x) on host memory.</summary>
    public abstract void Apply(ReadOnlySpan<float> x, Span<float> y);

    /// <summary>f'(x), given x and y = f(x).</summary>
    public abstract void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative);

    public static ElementwiseFunction Relu { get; } = new ReluFunction();
    public static ElementwiseFunction Tanh { get; } = new TanhFunction();
    public static ElementwiseFunction Gelu { get; } = new GeluFunction();
    public static ElementwiseFunction Identity { get; } = new IdentityFunction();

    /// <summary>Looks a function up by its name (command lines, checkpoints).</summary>
    public static ElementwiseFunction Parse(string name) => name.ToLowerInvariant() switch
    {
        "relu" => Relu,
        "tanh" => Tanh,
        "gelu" => Gelu,
        "identity" or "linear" or "none" => Identity,
        _ => throw new ArgumentException($"Unknown activation '{name}'. Use relu, tanh, gelu or identity."),
    };

    public override string ToString() => Name;
}

/// <summary>ReLU: f(x) = max(x, 0); f'(x) = 1[x > 0], the mask of DESIGN.md §2 (taken at the
/// pre-activation the forward pass computed, bias included).</summary>
public sealed record ReluFunction : ElementwiseFunction
{
    public override string Name => "relu";
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Max(x, 0f, y);
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative)
    {
        // 1[x > 0] as (x > 0 lane mask) AND 1.0f: exact, branch-free, 8 lanes at a time.
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256.Create(1f);
            for (; i <= x.Length - Vector256<float>.Count; i += Vector256<float>.Count)
                (Vector256.GreaterThan(Vector256.Create(x.Slice(i, Vector256<float>.Count)), Vector256<float>.Zero) & one)
                    .CopyTo(derivative.Slice(i, Vector256<float>.Count));
        }
        for (; i < x.Length; i++) derivative[i] = x[i] > 0f ? 1f : 0f;
    }
}

/// <summary>tanh: f'(x) = 1 − y².</summary>
public sealed record TanhFunction : ElementwiseFunction
{
    public override string Name => "tanh";
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Tanh(x, y);
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative)
    {
        TensorPrimitives.Multiply(y, y, derivative);
        TensorPrimitives.Subtract(1f, derivative, derivative);
    }
}

/// <summary>
/// GELU, exact form (PyTorch's default): f(x) = x·Φ(x), f'(x) = Φ(x) + x·φ(x), with Φ the
/// standard normal CDF, Φ(x) = ½(1 + erf(x/√2)).
/// </summary>
public sealed record GeluFunction : ElementwiseFunction
{
    private const double InverseSqrt2 = 0.70710678118654752440;
    private const double InverseSqrt2Pi = 0.39894228040143267794;

    public override string Name => "gelu";
    public override void Apply(ReadOnlySpan<float> x, Span<float> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = (float)(x[i] * NormalCdf(x[i]));
    }
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative)
    {
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i];
            derivative[i] = (float)(NormalCdf(v) + v * InverseSqrt2Pi * Math.Exp(-0.5 * v * v));
        }
    }

    internal static double NormalCdf(double x) => 0.5 * (1.0 + Erf(x * InverseSqrt2));

    /// <summary>erf with absolute error below 1.2e-7 (Numerical Recipes' erfc Chebyshev fit),
    /// evaluated in double: far below float32 resolution of the result.</summary>
    internal static double Erf(double x)
    {
        double z = Math.Abs(x);
        double t = 1.0 / (1.0 + 0.5 * z);
        double r = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
            t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
            t * (-0.82215223 + t * 0.17087277)))))))));
        return x >= 0 ? 1.0 - r : r - 1.0;
    }
}

/// <summary>f(x) = x, f'(x) = 1.</summary>
public sealed record IdentityFunction : ElementwiseFunction
{
    public override string Name => "identity";
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => x.CopyTo(y);
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative) => derivative.Fill(1f);
}
