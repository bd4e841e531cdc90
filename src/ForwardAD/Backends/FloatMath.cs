using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ForwardAD.Backends;

/// <summary>
/// e^x in float32, the same operations on one lane and on eight, so that an element gets the same bits whether it lands
/// in a vector or in a scalar tail (and so at any split of the work over threads). .NET's float exponential widens to
/// float64 and back (about 1.3 ns per element here); this one stays in float32 at a fraction of that, with a relative
/// error under 2 ulp (Cephes' expf: x = n·ln 2 + r, |r| ≤ ln2/2, e^r = 1 + r + r²·P(r) with P of degree 5, then
/// 2ⁿ by the exponent bits; the test checks it against float64 over the whole range).
/// <para>Ranges: x &lt; −87.33 (below ln of the smallest normal float) gives 0, never a subnormal (x86 computes on
/// subnormals ~100× slower, and every use here, softmax and the GELUs, treats such tails as 0); x &gt; 88.72 gives +∞;
/// NaN gives NaN.</para>
/// </summary>
internal static class FloatMath
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2High = 0.693359375f, Ln2Low = -2.12194440e-4f; // ln 2 split: n·Ln2High is exact for |n| ≤ 2⁹
    private const float P0 = 1.9875691500E-4f, P1 = 1.3981999507E-3f, P2 = 8.3334519073E-3f, P3 = 4.1665795894E-2f,
        P4 = 1.6666665459E-1f, P5 = 5.0000001201E-1f;
    private const float Lowest = -87.33654f, Highest = 88.72284f;

    /// <summary>mask ? whenTrue : whenFalse per lane, for masks from comparisons (each lane all ones or all zeros): one
    /// vblendvps on AVX where <see cref="Vector256.ConditionalSelect{T}"/> may emit and/andn/or, the same lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Select(Vector256<float> mask, Vector256<float> whenTrue, Vector256<float> whenFalse) =>
        Avx.IsSupported ? Avx.BlendVariable(whenFalse, whenTrue, mask) : Vector256.ConditionalSelect(mask, whenTrue, whenFalse);

    /// <summary>float → int toward zero for lanes known to lie in int's range (one vcvttps2dq on AVX;
    /// <see cref="Vector256.ConvertToInt32(Vector256{float})"/> saturates out-of-range lanes in five instructions).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> TruncateInRange(Vector256<float> x) =>
        Avx.IsSupported ? Avx.ConvertToVector256Int32WithTruncation(x) : Vector256.ConvertToInt32(x);

    /// <summary>e^x for eight lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var y = ReducedExp(x, out var n);
        // 2ⁿ by the exponent bits; n = 128 (x within ln 2 of the largest float) as 2¹²⁷·2, since 2¹²⁸ has no bits.
        var top = Vector256.GreaterThan(n, Vector256.Create(127f));
        // n is a whole number in [−126, 127] here (a NaN lane converts to anything: the last select returns x there).
        y *= Vector256.ShiftLeft(TruncateInRange(Vector256.Min(n, Vector256.Create(127f))) + Vector256.Create(127), 23).AsSingle();
        y *= Select(top, Vector256.Create(2f), Vector256<float>.One);
        y = Select(Vector256.LessThan(x, Vector256.Create(Lowest)), Vector256<float>.Zero, y);
        y = Select(Vector256.GreaterThan(x, Vector256.Create(Highest)), Vector256.Create(float.PositiveInfinity), y);
        return Select(Vector256.Equals(x, x), y, x); // NaN stays NaN
    }

    /// <summary>
    /// e^x for lanes with −87.33 ≤ x &lt; 88.37 (n = round(x·log₂e) in [−126, 127]): <see cref="Exp(Vector256{float})"/>'s bits
    /// there, without its range and NaN guards, which are a third of its instructions (2ⁿ needs neither the clamp at 127
    /// nor the doubling for n = 128). For the GELUs' exponents (erfc's and the normal density's), whose lanes out of
    /// range the caller masks anyway (|x| &gt; 12). A NaN lane stays NaN (so does r); lanes out of range hold unspecified values.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ExpWithinRange(Vector256<float> x)
    {
        var y = ReducedExp(x, out var n);
        return y * Vector256.ShiftLeft(TruncateInRange(n) + Vector256.Create(127), 23).AsSingle();
    }

    /// <summary><see cref="ExpWithinRange(Vector256{float})"/> of two vectors, their operations interleaved: the bits of two calls. The
    /// exponential is one chain of ~15 dependent operations; two side by side keep the FP pipes busy where a loop of single
    /// chains waits on latency (the out-of-order window holds about two of them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ExpWithinRange(ref Vector256<float> x0, ref Vector256<float> x1)
    {
        var (log2E, half, lowest) = (Vector256.Create(Log2E), Vector256.Create(0.5f), Vector256.Create(-126f));
        var n0 = Vector256.Max(Vector256.Floor(Vector256.FusedMultiplyAdd(x0, log2E, half)), lowest);
        var n1 = Vector256.Max(Vector256.Floor(Vector256.FusedMultiplyAdd(x1, log2E, half)), lowest);
        var r0 = Vector256.FusedMultiplyAdd(n0, Vector256.Create(-Ln2High), x0);
        var r1 = Vector256.FusedMultiplyAdd(n1, Vector256.Create(-Ln2High), x1);
        r0 = Vector256.FusedMultiplyAdd(n0, Vector256.Create(-Ln2Low), r0);
        r1 = Vector256.FusedMultiplyAdd(n1, Vector256.Create(-Ln2Low), r1);
        var p0 = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r0, Vector256.Create(P1));
        var p1 = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r1, Vector256.Create(P1));
        p0 = Vector256.FusedMultiplyAdd(p0, r0, Vector256.Create(P2));
        p1 = Vector256.FusedMultiplyAdd(p1, r1, Vector256.Create(P2));
        p0 = Vector256.FusedMultiplyAdd(p0, r0, Vector256.Create(P3));
        p1 = Vector256.FusedMultiplyAdd(p1, r1, Vector256.Create(P3));
        p0 = Vector256.FusedMultiplyAdd(p0, r0, Vector256.Create(P4));
        p1 = Vector256.FusedMultiplyAdd(p1, r1, Vector256.Create(P4));
        p0 = Vector256.FusedMultiplyAdd(p0, r0, Vector256.Create(P5));
        p1 = Vector256.FusedMultiplyAdd(p1, r1, Vector256.Create(P5));
        var y0 = Vector256.FusedMultiplyAdd(p0, r0 * r0, r0) + Vector256<float>.One;
        var y1 = Vector256.FusedMultiplyAdd(p1, r1 * r1, r1) + Vector256<float>.One;
        x0 = y0 * Vector256.ShiftLeft(TruncateInRange(n0) + Vector256.Create(127), 23).AsSingle();
        x1 = y1 * Vector256.ShiftLeft(TruncateInRange(n1) + Vector256.Create(127), 23).AsSingle();
    }

    /// <summary>e^r for x = n·ln 2 + r, |r| ≤ ln2/2, with n = round(x·log₂e) at least −126 (the exponent of the smallest
    /// normal float). Lanes below −87.33 and above 89 (n &gt; 128) are replaced by <see cref="Exp(Vector256{float})"/>'s guards and
    /// masked by the GELUs that call <see cref="ExpWithinRange(Vector256{float})"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ReducedExp(Vector256<float> x, out Vector256<float> n)
    {
        n = Vector256.Max(Vector256.Floor(Vector256.FusedMultiplyAdd(x, Vector256.Create(Log2E), Vector256.Create(0.5f))), Vector256.Create(-126f));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2High), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Low), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        return Vector256.FusedMultiplyAdd(p, r * r, r) + Vector256<float>.One;
    }

    /// <summary>e^x for one value: the operations of <see cref="Exp(Vector256{float})"/>, so the same bits.</summary>
    public static float Exp(float x)
    {
        float n = MathF.Max(MathF.Floor(MathF.FusedMultiplyAdd(x, Log2E, 0.5f)), -126f);
        float r = MathF.FusedMultiplyAdd(n, -Ln2High, x);
        r = MathF.FusedMultiplyAdd(n, -Ln2Low, r);
        float p = MathF.FusedMultiplyAdd(P0, r, P1);
        p = MathF.FusedMultiplyAdd(p, r, P2);
        p = MathF.FusedMultiplyAdd(p, r, P3);
        p = MathF.FusedMultiplyAdd(p, r, P4);
        p = MathF.FusedMultiplyAdd(p, r, P5);
        float y = MathF.FusedMultiplyAdd(p, r * r, r) + 1f;
        y *= BitConverter.Int32BitsToSingle(((int)MathF.Min(n, 127f) + 127) << 23);
        y *= n > 127f ? 2f : 1f;
        if (x < Lowest) return 0f;
        if (x > Highest) return float.PositiveInfinity;
        return float.IsNaN(x) ? x : y;
    }

    /// <summary>destination[i] = e^(source[i] − shift); in place allowed. Softmax's numerators: the shift is the row maximum.</summary>
    public static void ExpShifted(ReadOnlySpan<float> source, float shift, Span<float> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"ExpShifted: destination ({destination.Length}) shorter than source ({source.Length}).", nameof(destination));
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(shift);
            for (; i <= source.Length - Vector256<float>.Count; i += Vector256<float>.Count)
                Exp(Vector256.Create(source.Slice(i, Vector256<float>.Count)) - s).CopyTo(destination.Slice(i, Vector256<float>.Count));
        }
        for (; i < source.Length; i++) destination[i] = Exp(source[i] - shift);
    }
}
