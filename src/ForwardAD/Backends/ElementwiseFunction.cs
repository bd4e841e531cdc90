using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
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

    /// <summary>The function's lower-case name (<c>relu</c>, <c>tanh</c>, <c>gelu</c>, <c>gelu_tanh</c>, <c>identity</c>):
    /// what <see cref="Parse"/> accepts, what checkpoints store and how backends pick the kernel.</summary>
    public abstract string Name { get; }

    /// <summary>y = f(x) on host memory.</summary>
    public abstract void Apply(ReadOnlySpan<float> x, Span<float> y);

    /// <summary>f'(x), given x and y = f(x).</summary>
    public abstract void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative);

    /// <summary>y = f(x) and f'(x) together (a forward pass that saves the derivative): the same bits as
    /// <see cref="Apply"/> then <see cref="Differentiate"/>; a function whose two share work (GELU: Φ(x)) does it once.</summary>
    public virtual void ApplyWithDerivative(ReadOnlySpan<float> x, Span<float> y, Span<float> derivative)
    {
        Apply(x, y);
        Differentiate(x, y, derivative);
    }

    /// <summary>ReLU, max(x, 0) (<see cref="ReluFunction"/>).</summary>
    public static ElementwiseFunction Relu { get; } = new ReluFunction();
    /// <summary>The hyperbolic tangent (<see cref="TanhFunction"/>).</summary>
    public static ElementwiseFunction Tanh { get; } = new TanhFunction();
    /// <summary>Exact GELU x·Φ(x) (PyTorch's default); <see cref="GeluTanh"/> is the tanh approximation.</summary>
    public static ElementwiseFunction Gelu { get; } = new GeluFunction();
    /// <summary>GELU, tanh approximation (<see cref="GeluTanhFunction"/>; PyTorch's <c>approximate="tanh"</c>).</summary>
    public static ElementwiseFunction GeluTanh { get; } = new GeluTanhFunction();
    /// <summary>f(x) = x (<see cref="IdentityFunction"/>): a linear layer without nonlinearity.</summary>
    public static ElementwiseFunction Identity { get; } = new IdentityFunction();

    /// <summary>Looks a function up by its name (command lines, checkpoints).</summary>
    public static ElementwiseFunction Parse(string name) => name.ToLowerInvariant() switch
    {
        "relu" => Relu,
        "tanh" => Tanh,
        "gelu" => Gelu,
        "gelu_tanh" or "gelu-tanh" => GeluTanh,
        "identity" or "linear" or "none" => Identity,
        _ => throw new ArgumentException($"Unknown activation '{name}'. Use relu, tanh, gelu (exact), gelu_tanh (tanh approximation) or identity."),
    };

    /// <summary>The function's <see cref="Name"/>.</summary>
    public override string ToString() => Name;
}

/// <summary>ReLU: f(x) = max(x, 0); f'(x) = 1[x > 0], the mask of docs/design.md §2 (taken at the
/// pre-activation the forward pass computed, bias included).</summary>
public sealed record ReluFunction : ElementwiseFunction
{
    /// <inheritdoc/>
    public override string Name => "relu";
    /// <inheritdoc/>
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Max(x, 0f, y);
    /// <inheritdoc/>
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

    /// <summary>max(x, 0) and 1[x &gt; 0] in one pass over x (Vector256.Max is IEEE maximum, as TensorPrimitives.Max: NaN
    /// stays NaN, max(−0, 0) = +0), so the bits of <see cref="Apply"/> then <see cref="Differentiate"/>.</summary>
    public override void ApplyWithDerivative(ReadOnlySpan<float> x, Span<float> y, Span<float> derivative)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256.Create(1f);
            for (; i <= x.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var v = Vector256.Create(x.Slice(i, Vector256<float>.Count));
                Vector256.Max(v, Vector256<float>.Zero).CopyTo(y.Slice(i, Vector256<float>.Count));
                (Vector256.GreaterThan(v, Vector256<float>.Zero) & one).CopyTo(derivative.Slice(i, Vector256<float>.Count));
            }
        }
        for (; i < x.Length; i++)
        {
            y[i] = MathF.Max(x[i], 0f);
            derivative[i] = x[i] > 0f ? 1f : 0f;
        }
    }
}

/// <summary>tanh: f'(x) = 1 − y².</summary>
public sealed record TanhFunction : ElementwiseFunction
{
    /// <inheritdoc/>
    public override string Name => "tanh";
    /// <inheritdoc/>
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => TensorPrimitives.Tanh(x, y);
    /// <inheritdoc/>
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative)
    {
        TensorPrimitives.Multiply(y, y, derivative);
        TensorPrimitives.Subtract(1f, derivative, derivative);
    }
}

/// <summary>
/// GELU, exact form (PyTorch's default, <c>approximate="none"</c>; the name "gelu" has always meant this one):
/// f(x) = x·Φ(x), f'(x) = Φ(x) + x·φ(x), with Φ the standard normal CDF and φ its density.
/// <para>Vectorised in float32 (Vector256, scalar tail with the same operations). Φ is computed from erfc, never as
/// ½(1 + erf): with z = |x|/√2, r = erfc(z) = t·exp(−z² − 1.26551223 + t·P(t)), t = 1/(1 + z/2), P the degree-9 Chebyshev fit
/// of Numerical Recipes (Press et al., 2nd ed., §6.2, erfcc: fractional error below 1.2e-7 for every z ≥ 0);
/// Φ(x) = r/2 for x &lt; 0 and 1 − r/2 for x ≥ 0. The negative tail (where 1 + erf would cancel) keeps its relative accuracy,
/// and erf = 1 − r is accurate to ~1e-7 absolute (float32 rounding of 1 − r and of the exponent; the tests state the bound).</para>
/// </summary>
public sealed record GeluFunction : ElementwiseFunction
{
    /// <inheritdoc/>
    public override string Name => "gelu";
    /// <inheritdoc/>
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => Gaussian.Gelu(x, y, derivative: false);
    /// <inheritdoc/>
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative) => Gaussian.Gelu(x, derivative, derivative: true);
    /// <summary>Φ(x) once for both: two exponentials per element instead of three, one pass over x.</summary>
    public override void ApplyWithDerivative(ReadOnlySpan<float> x, Span<float> y, Span<float> derivative) => Gaussian.GeluWithDerivative(x, y, derivative);
}

/// <summary>
/// GELU, tanh approximation (PyTorch's <c>approximate="tanh"</c>, GPT-2's): f(x) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³).
/// Since ½(1 + tanh u) = σ(2u), it is computed as f(x) = x·σ(2u) with σ(v) = 1/(1 + e^(−v)) (no cancellation near
/// tanh u = −1), and f'(x) = σ + 2xσ(1 − σ)·√(2/π)(1 + 3·0.044715x²) (from 1 − tanh²u = 4σ(1 − σ)). Vectorised in float32.
/// </summary>
public sealed record GeluTanhFunction : ElementwiseFunction
{
    /// <inheritdoc/>
    public override string Name => "gelu_tanh";
    /// <inheritdoc/>
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => Gaussian.GeluTanh(x, y, derivative: false);
    /// <inheritdoc/>
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative) => Gaussian.GeluTanh(x, derivative, derivative: true);
}

/// <summary>The float32 kernels of both GELUs, 8 lanes at a time (Vector256) with a scalar tail of the same operations.
/// native/elementwise.cu evaluates the same formulas on the GPU.</summary>
internal static class Gaussian
{
    private const float InverseSqrt2 = 0.70710678118654752440f;
    private const float InverseSqrt2Pi = 0.39894228040143267794f;
    private const float Sqrt2OverPi = 0.79788456080286535588f;
    private const float Cubic = 0.044715f;

    /// <summary>Elements per block of <see cref="Normal(ReadOnlySpan{float}, Span{float}, Span{float}, Span{float}, Span{float})"/>:
    /// its four temporaries, 1 KiB each, stay in L1.</summary>
    private const int Block = 256;

    /// <summary>
    /// Φ(x) and, unless <paramref name="density"/> is empty, φ(x) for a block of whole vectors, from the erfc fit described
    /// on <see cref="GeluFunction"/>. Per lane these are the operations of the scalar <see cref="Normal(float)"/> (so the
    /// same bits wherever an element lands), run in passes over the block: erfc's chain (a division, nine Horner steps, an
    /// exponential: ~130 cycles of latency) is too long for the out-of-order window to overlap more than two elements'
    /// worth of it, so a loop doing the whole chain per vector ran at a third of the FP pipes' rate. Each pass here is a
    /// short chain (and the exponentials run two vectors side by side).
    /// </summary>
    private static void Normal(ReadOnlySpan<float> x, Span<float> t, Span<float> square, Span<float> cdf, Span<float> density)
    {
        const int W = 8;
        nuint n = (nuint)x.Length;
        if (x.Length % W != 0 || t.Length < x.Length || square.Length < x.Length || cdf.Length < x.Length || (!density.IsEmpty && density.Length < x.Length))
            throw new ArgumentException("Normal: a whole number of vectors, and temporaries at least as long as x.");
        // Whole vectors read and written through references (the lengths are checked above): a bounds check per load
        // and store would be a fifth of the instructions of the short passes.
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref float ts = ref MemoryMarshal.GetReference(t);
        ref float squares = ref MemoryMarshal.GetReference(square);
        ref float cdfs = ref MemoryMarshal.GetReference(cdf);
        // Pass 1: z = |x|/√2, t = 1/(1 + z/2), z².
        for (nuint j = 0; j < n; j += W)
        {
            var z = Vector256.Abs(Vector256.LoadUnsafe(ref xs, j)) * InverseSqrt2;
            (Vector256<float>.One / (Vector256<float>.One + z * 0.5f)).StoreUnsafe(ref ts, j);
            (z * z).StoreUnsafe(ref squares, j);
        }
        // Pass 2: erfc's exponent t·P(t) − 1.26551223 − z² (P by Horner), kept in cdf until pass 3.
        for (nuint j = 0; j < n; j += W)
        {
            var u = Vector256.LoadUnsafe(ref ts, j);
            var p = Vector256.Create(0.17087277f);
            p = p * u + Vector256.Create(-0.82215223f);
            p = p * u + Vector256.Create(1.48851587f);
            p = p * u + Vector256.Create(-1.13520398f);
            p = p * u + Vector256.Create(0.27886807f);
            p = p * u + Vector256.Create(-0.18628806f);
            p = p * u + Vector256.Create(0.09678418f);
            p = p * u + Vector256.Create(0.37409196f);
            p = p * u + Vector256.Create(1.00002368f);
            (u * p + Vector256.Create(-1.26551223f) - Vector256.LoadUnsafe(ref squares, j)).StoreUnsafe(ref cdfs, j);
        }
        // Pass 3: erfc(z)/2 = t·e^(exponent)/2 (the exponent lies in [−74, 0] up to rounding, masked beyond |x| = 12), then Φ.
        nuint k = 0;
        for (; k + 2 * W <= n; k += 2 * W)
        {
            var (e0, e1) = (Vector256.LoadUnsafe(ref cdfs, k), Vector256.LoadUnsafe(ref cdfs, k + W));
            FloatMath.ExpWithinRange(ref e0, ref e1);
            Cdf(Vector256.LoadUnsafe(ref xs, k), Vector256.LoadUnsafe(ref ts, k), e0).StoreUnsafe(ref cdfs, k);
            Cdf(Vector256.LoadUnsafe(ref xs, k + W), Vector256.LoadUnsafe(ref ts, k + W), e1).StoreUnsafe(ref cdfs, k + W);
        }
        if (k < n) Cdf(Vector256.LoadUnsafe(ref xs, k), Vector256.LoadUnsafe(ref ts, k), FloatMath.ExpWithinRange(Vector256.LoadUnsafe(ref cdfs, k))).StoreUnsafe(ref cdfs, k);
        if (density.IsEmpty) return;
        // Pass 4: φ(x) = e^(−z²)/√(2π), 0 beyond |x| = 12.
        ref float densities = ref MemoryMarshal.GetReference(density);
        for (k = 0; k + 2 * W <= n; k += 2 * W)
        {
            var (e0, e1) = (-Vector256.LoadUnsafe(ref squares, k), -Vector256.LoadUnsafe(ref squares, k + W));
            FloatMath.ExpWithinRange(ref e0, ref e1);
            Density(Vector256.LoadUnsafe(ref xs, k), e0).StoreUnsafe(ref densities, k);
            Density(Vector256.LoadUnsafe(ref xs, k + W), e1).StoreUnsafe(ref densities, k + W);
        }
        if (k < n) Density(Vector256.LoadUnsafe(ref xs, k), FloatMath.ExpWithinRange(-Vector256.LoadUnsafe(ref squares, k))).StoreUnsafe(ref densities, k);

        // Beyond |x| = 12, Φ(−|x|) < 2e-33 and φ(x) < 6e-32, and e^(−z²) soon underflows into subnormals, which x86
        // multiplies ~100× slower (GELU outputs feed GEMMs): those tails are exactly 0 here.
        static Vector256<float> Tail(Vector256<float> x) => Vector256.GreaterThan(Vector256.Abs(x), Vector256.Create(12f));

        static Vector256<float> Cdf(Vector256<float> x, Vector256<float> t, Vector256<float> exponential)
        {
            var half = FloatMath.Select(Tail(x), Vector256<float>.Zero, t * exponential * 0.5f);
            return FloatMath.Select(Vector256.LessThan(x, Vector256<float>.Zero), half, Vector256<float>.One - half);
        }

        static Vector256<float> Density(Vector256<float> x, Vector256<float> exponential) =>
            FloatMath.Select(Tail(x), Vector256<float>.Zero, exponential * InverseSqrt2Pi);
    }

    private static (float Cdf, float Density) Normal(float x)
    {
        float z = MathF.Abs(x) * InverseSqrt2;
        float t = 1f / (1f + z * 0.5f);
        float p = 0.17087277f;
        p = p * t + -0.82215223f;
        p = p * t + 1.48851587f;
        p = p * t + -1.13520398f;
        p = p * t + 0.27886807f;
        p = p * t + -0.18628806f;
        p = p * t + 0.09678418f;
        p = p * t + 0.37409196f;
        p = p * t + 1.00002368f;
        float square = z * z;
        if (MathF.Abs(x) > 12f) return (x < 0f ? 0f : 1f, 0f); // the tails, as in the vector path
        float half = t * FloatMath.Exp(t * p + -1.26551223f - square) * 0.5f;
        return (x < 0f ? half : 1f - half, FloatMath.Exp(-square) * InverseSqrt2Pi);
    }

    /// <summary>destination = x·Φ(x), or Φ(x) + x·φ(x) when <paramref name="derivative"/>.</summary>
    public static void Gelu(ReadOnlySpan<float> x, Span<float> destination, bool derivative)
    {
        if (destination.Length < x.Length) throw new ArgumentException($"GELU: the destination must hold {x.Length} values; it holds {destination.Length}.", nameof(destination));
        if (derivative) GeluInBlocks(x, default, destination);
        else GeluInBlocks(x, destination, default);
    }

    /// <summary>y = x·Φ(x) and derivative = Φ(x) + x·φ(x), from one evaluation of (Φ, φ) per element.</summary>
    public static void GeluWithDerivative(ReadOnlySpan<float> x, Span<float> y, Span<float> derivative)
    {
        if (y.Length < x.Length || derivative.Length < x.Length)
            throw new ArgumentException($"GELU: both destinations must hold {x.Length} values; they hold {y.Length} and {derivative.Length}.");
        GeluInBlocks(x, y, derivative);
    }

    /// <summary>y = x·Φ(x) and derivative = Φ(x) + x·φ(x), either one empty when not wanted (the callers check the
    /// lengths), from one evaluation of (Φ, φ) per element: whole vectors in blocks
    /// (<see cref="Normal(ReadOnlySpan{float}, Span{float}, Span{float}, Span{float}, Span{float})"/>), the rest one by one,
    /// the same operations, so the same bits.</summary>
    private static void GeluInBlocks(ReadOnlySpan<float> x, Span<float> y, Span<float> derivative)
    {
        bool values = !y.IsEmpty, derivatives = !derivative.IsEmpty;
        int i = 0;
        if (Vector256.IsHardwareAccelerated && x.Length >= Vector256<float>.Count)
        {
            // Temporaries no longer than the span (a short span zeroes little of them).
            int size = Math.Min(Block, x.Length & ~(Vector256<float>.Count - 1));
            Span<float> t = stackalloc float[size], square = stackalloc float[size], cdf = stackalloc float[size];
            Span<float> density = derivatives ? stackalloc float[size] : default;
            ref float cdfs = ref MemoryMarshal.GetReference(cdf), densities = ref MemoryMarshal.GetReference(density);
            for (int count; (count = Math.Min(Block, (x.Length - i) & ~(Vector256<float>.Count - 1))) > 0; i += count)
            {
                var block = x.Slice(i, count);
                Normal(block, t, square, cdf, derivatives ? density : default);
                ref float xs = ref MemoryMarshal.GetReference(block);
                ref float ys = ref values ? ref y[i] : ref Unsafe.NullRef<float>();
                ref float ds = ref derivatives ? ref derivative[i] : ref Unsafe.NullRef<float>();
                for (nuint j = 0; j < (nuint)count; j += (nuint)Vector256<float>.Count)
                {
                    var (v, c) = (Vector256.LoadUnsafe(ref xs, j), Vector256.LoadUnsafe(ref cdfs, j));
                    if (values) (v * c).StoreUnsafe(ref ys, j);
                    if (derivatives) (c + v * Vector256.LoadUnsafe(ref densities, j)).StoreUnsafe(ref ds, j);
                }
            }
        }
        for (; i < x.Length; i++)
        {
            var (cdf, density) = Normal(x[i]);
            if (values) y[i] = x[i] * cdf;
            if (derivatives) derivative[i] = cdf + x[i] * density;
        }
    }

    /// <summary>destination = x·σ(2u), or σ + 2xσ(1 − σ)·u'(x) when <paramref name="derivative"/>.</summary>
    public static void GeluTanh(ReadOnlySpan<float> x, Span<float> destination, bool derivative)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i <= x.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var v = Vector256.Create(x.Slice(i, Vector256<float>.Count));
                var square = v * v;
                var u = v * (Vector256<float>.One + square * Cubic) * Sqrt2OverPi;
                var sigma = Vector256<float>.One / (Vector256<float>.One + FloatMath.Exp(u * -2f));
                var result = derivative
                    ? sigma + v * sigma * (Vector256<float>.One - sigma) * (Vector256<float>.One + square * (3f * Cubic)) * (2f * Sqrt2OverPi)
                    : v * sigma;
                result.CopyTo(destination.Slice(i, Vector256<float>.Count));
            }
        for (; i < x.Length; i++)
        {
            float v = x[i], square = v * v;
            float u = v * (1f + square * Cubic) * Sqrt2OverPi;
            float sigma = 1f / (1f + FloatMath.Exp(u * -2f));
            destination[i] = derivative ? sigma + v * sigma * (1f - sigma) * (1f + square * (3f * Cubic)) * (2f * Sqrt2OverPi) : v * sigma;
        }
    }
}

/// <summary>f(x) = x, f'(x) = 1.</summary>
public sealed record IdentityFunction : ElementwiseFunction
{
    /// <inheritdoc/>
    public override string Name => "identity";
    /// <inheritdoc/>
    public override void Apply(ReadOnlySpan<float> x, Span<float> y) => x.CopyTo(y);
    /// <inheritdoc/>
    public override void Differentiate(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> derivative) => derivative.Fill(1f);
}
