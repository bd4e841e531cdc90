using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ForwardAD.Backends;

namespace ForwardAD.Random;

/// <summary>
/// Philox4x32-10 + Box–Muller in float32, defined operation by operation so that every backend can
/// reproduce it bit for bit: the logarithm and the sine/cosine are fixed polynomials (Cephes' logf and
/// sinf/cosf minimax fits, about 1 ulp) evaluated with explicit fused multiply-adds in a fixed order;
/// the angle 2πv is reduced to an octant exactly (v has 24 bits, so 8v splits exactly into octant and
/// fraction). The scalar <see cref="Pair"/> is the definition; the AVX2 path computes the same operations
/// on 8 pairs at once and is tested to agree bit for bit. A CUDA kernel does the same with fmaf.
/// </summary>
public static class BoxMuller
{
    // Cephes logf: log(1+x) = x − x²/2 + x³·P(x) on [√½ − 1, √2 − 1].
    private const float L8 = 7.0376836292E-2f, L7 = -1.1514610310E-1f, L6 = 1.1676998740E-1f, L5 = -1.2420140846E-1f,
        L4 = 1.4249322787E-1f, L3 = -1.6668057665E-1f, L2 = 2.0000714765E-1f, L1 = -2.4999993993E-1f, L0 = 3.3333331174E-1f;
    private const float Ln2High = 0.693359375f, Ln2Low = -2.12194440e-4f, Sqrt2 = 1.41421356f;
    // Cephes sinf/cosf on [0, π/4].
    private const float S2 = -1.9515295891E-4f, S1 = 8.3321608736E-3f, S0 = -1.6666654611E-1f;
    private const float C2 = 2.443315711809948E-5f, C1 = -1.388731625493765E-3f, C0 = 4.166664568298827E-2f;
    private const float QuarterPi = 0.785398163397448f;

    /// <summary>32 random bits to a float in (0, 1): the top 24 bits plus half a step, exact in float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Unit(uint bits) => ((bits >> 8) + 0.5f) * (1.0f / 16777216.0f);

    /// <summary>The definition: (√(−2 ln u)·cos 2πv, √(−2 ln u)·sin 2πv) for u, v = Unit(a), Unit(b).</summary>
    public static (float Cos, float Sin) Pair(uint a, uint b)
    {
        float radius = MathF.Sqrt(-2f * Log(Unit(a)));
        float v8 = Unit(b) * 8f;
        float octant = MathF.Floor(v8);
        int n = (int)octant;
        float f = v8 - octant;
        float t = ((n & 1) == 0 ? f : 1f - f) * QuarterPi;
        float z = t * t;
        float sine = MathF.FusedMultiplyAdd(t * z, MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(S2, z, S1), z, S0), t);
        float cosine = MathF.FusedMultiplyAdd(z * z, MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(C2, z, C1), z, C0), MathF.FusedMultiplyAdd(-0.5f, z, 1f));
        if (((n + 1) & 2) != 0) (sine, cosine) = (cosine, sine);
        if (n >= 4) sine = -sine;
        if (((n + 2) & 4) != 0) cosine = -cosine;
        return (radius * cosine, radius * sine);
    }

    /// <summary>ln x for x in (0, 1] (positive normal floats), Cephes logf with explicit FMAs.</summary>
    public static float Log(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        float e = (int)(bits >> 23) - 127;
        float m = BitConverter.UInt32BitsToSingle((bits & 0x007FFFFFu) | 0x3F800000u); // [1, 2)
        if (m > Sqrt2) { m *= 0.5f; e += 1f; }
        float f = m - 1f;
        float z = f * f;
        float p = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(
            MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(L8, f, L7), f, L6), f, L5), f, L4), f, L3), f, L2), f, L1), f, L0);
        float y = MathF.FusedMultiplyAdd(e, Ln2Low, f * z * p);
        y = MathF.FusedMultiplyAdd(-0.5f, z, y);
        return MathF.FusedMultiplyAdd(e, Ln2High, f + y);
    }

    /// <summary>Eight pairs at once, the same operations as <see cref="Pair"/> lane by lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (Vector256<float> Cos, Vector256<float> Sin) Pairs(Vector256<uint> a, Vector256<uint> b) => Rotate(b, Radius(a));

    /// <summary>√(−2 ln u) for u = Unit(a), eight lanes: <see cref="Pair"/>'s radius.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Radius(Vector256<uint> a) => Vector256.Sqrt(Vector256.Create(-2f) * Log(UnitVector(a)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> UnitVector(Vector256<uint> bits) =>
        (Vector256.ConvertToSingle(Vector256.ShiftRightLogical(bits, 8).AsInt32()) + Vector256.Create(0.5f)) * Vector256.Create(1.0f / 16777216.0f);

    /// <summary>(radius·cos 2πv, radius·sin 2πv) for v = Unit(b), eight lanes: the rest of <see cref="Pair"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (Vector256<float> Cos, Vector256<float> Sin) Rotate(Vector256<uint> b, Vector256<float> radius)
    {
        var v = UnitVector(b);
        var v8 = v * Vector256.Create(8f);
        var octant = Vector256.Floor(v8);
        var n = FloatMath.TruncateInRange(octant); // 0…7
        var f = v8 - octant;
        var odd = Vector256.Equals(n & Vector256<int>.One, Vector256<int>.One).AsSingle();
        var t = FloatMath.Select(odd, Vector256<float>.One - f, f) * Vector256.Create(QuarterPi);
        var z = t * t;
        var sine = Vector256.FusedMultiplyAdd(t * z, Vector256.FusedMultiplyAdd(Vector256.FusedMultiplyAdd(Vector256.Create(S2), z, Vector256.Create(S1)), z, Vector256.Create(S0)), t);
        var cosine = Vector256.FusedMultiplyAdd(z * z, Vector256.FusedMultiplyAdd(Vector256.FusedMultiplyAdd(Vector256.Create(C2), z, Vector256.Create(C1)), z, Vector256.Create(C0)),
            Vector256.FusedMultiplyAdd(Vector256.Create(-0.5f), z, Vector256<float>.One));
        var swap = Vector256.Equals((n + Vector256<int>.One) & Vector256.Create(2), Vector256.Create(2)).AsSingle();
        (sine, cosine) = (FloatMath.Select(swap, cosine, sine), FloatMath.Select(swap, sine, cosine));
        var signBit = Vector256.Create(-0f);
        var sineNegative = Vector256.GreaterThanOrEqual(n, Vector256.Create(4)).AsSingle() & signBit;
        var cosineNegative = Vector256.Equals((n + Vector256.Create(2)) & Vector256.Create(4), Vector256.Create(4)).AsSingle() & signBit;
        return (radius * (cosine ^ cosineNegative), radius * (sine ^ sineNegative));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Log(Vector256<float> x)
    {
        var bits = x.AsUInt32();
        var e = Vector256.ConvertToSingle(Vector256.ShiftRightLogical(bits, 23).AsInt32() - Vector256.Create(127));
        var m = ((bits & Vector256.Create(0x007FFFFFu)) | Vector256.Create(0x3F800000u)).AsSingle();
        var big = Vector256.GreaterThan(m, Vector256.Create(Sqrt2));
        m = FloatMath.Select(big, m * Vector256.Create(0.5f), m);
        e = FloatMath.Select(big, e + Vector256<float>.One, e);
        var f = m - Vector256<float>.One;
        var z = f * f;
        var p = Vector256.Create(L8);
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L7));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L6));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L5));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L4));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L3));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L2));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L1));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(L0));
        var y = Vector256.FusedMultiplyAdd(e, Vector256.Create(Ln2Low), f * z * p);
        y = Vector256.FusedMultiplyAdd(Vector256.Create(-0.5f), z, y);
        return Vector256.FusedMultiplyAdd(e, Vector256.Create(Ln2High), f + y);
    }

    /// <summary>Eight Philox blocks (counters blockIndex..blockIndex+7) as two interleaved groups of four: the rounds of
    /// one group are a chain of dependent multiplies, and two independent chains keep the multiplier busy while each
    /// waits. The same operations per block as <see cref="PhiloxBlocks"/>, so the same bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ((Vector256<ulong>, Vector256<ulong>, Vector256<ulong>, Vector256<ulong>) First, (Vector256<ulong>, Vector256<ulong>, Vector256<ulong>, Vector256<ulong>) Second)
        PhiloxBlocks8(RandomKey key, ulong blockIndex)
    {
        var low = Vector256.Create(0xFFFFFFFFul);
        var index = Vector256.Create(blockIndex) + Vector256.Create(0ul, 1ul, 2ul, 3ul);
        var indexB = index + Vector256.Create(4ul);
        var a0 = index & low;
        var a1 = Vector256.ShiftRightLogical(index, 32);
        var b0 = indexB & low;
        var b1 = Vector256.ShiftRightLogical(indexB, 32);
        var a2 = Vector256.Create(key.Stream & 0xFFFFFFFF);
        var a3 = Vector256.Create(key.Stream >> 32);
        var b2 = a2;
        var b3 = a3;
        uint k0 = (uint)key.Seed, k1 = (uint)(key.Seed >> 32);
        var multiplierA = Vector256.Create(0xD2511F53ul).AsUInt32();
        var multiplierB = Vector256.Create(0xCD9E8D57ul).AsUInt32();
        for (int round = 0; round < 10; round++)
        {
            if (round > 0) { k0 += 0x9E3779B9; k1 += 0xBB67AE85; }
            var key0 = Vector256.Create((ulong)k0);
            var key1 = Vector256.Create((ulong)k1);
            var productA = Avx2.Multiply(multiplierA, a0.AsUInt32());
            var productB = Avx2.Multiply(multiplierB, a2.AsUInt32());
            var productC = Avx2.Multiply(multiplierA, b0.AsUInt32());
            var productD = Avx2.Multiply(multiplierB, b2.AsUInt32());
            var nextA0 = Vector256.ShiftRightLogical(productB, 32) ^ a1 ^ key0;
            var nextA2 = Vector256.ShiftRightLogical(productA, 32) ^ a3 ^ key1;
            var nextB0 = Vector256.ShiftRightLogical(productD, 32) ^ b1 ^ key0;
            var nextB2 = Vector256.ShiftRightLogical(productC, 32) ^ b3 ^ key1;
            (a0, a1, a2, a3) = (nextA0, productB & low, nextA2, productA & low);
            (b0, b1, b2, b3) = (nextB0, productD & low, nextB2, productC & low);
        }
        return ((a0, a1, a2, a3), (b0, b1, b2, b3));
    }

    /// <summary>
    /// Four Philox blocks at once (counters blockIndex..blockIndex+3 of the key's stream), on AVX2:
    /// each 64-bit lane holds one 32-bit word, and vpmuludq gives the 32×32→64-bit products.
    /// Returns the four output words of the four blocks.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (Vector256<ulong>, Vector256<ulong>, Vector256<ulong>, Vector256<ulong>) PhiloxBlocks(RandomKey key, ulong blockIndex)
    {
        var low = Vector256.Create(0xFFFFFFFFul);
        var index = Vector256.Create(blockIndex) + Vector256.Create(0ul, 1ul, 2ul, 3ul);
        var c0 = index & low;
        var c1 = Vector256.ShiftRightLogical(index, 32);
        var c2 = Vector256.Create(key.Stream & 0xFFFFFFFF);
        var c3 = Vector256.Create(key.Stream >> 32);
        uint k0 = (uint)key.Seed, k1 = (uint)(key.Seed >> 32);
        var multiplierA = Vector256.Create(0xD2511F53ul).AsUInt32();
        var multiplierB = Vector256.Create(0xCD9E8D57ul).AsUInt32();
        for (int round = 0; round < 10; round++)
        {
            if (round > 0) { k0 += 0x9E3779B9; k1 += 0xBB67AE85; }
            var productA = Avx2.Multiply(multiplierA, c0.AsUInt32());
            var productB = Avx2.Multiply(multiplierB, c2.AsUInt32());
            var next0 = Vector256.ShiftRightLogical(productB, 32) ^ c1 ^ Vector256.Create((ulong)k0);
            var next2 = Vector256.ShiftRightLogical(productA, 32) ^ c3 ^ Vector256.Create((ulong)k1);
            (c0, c1, c2, c3) = (next0, productB & low, next2, productA & low);
        }
        return (c0, c1, c2, c3);
    }
}
