using ForwardAD.Random;

namespace ForwardAD.Tests;

public class RandomTests
{
    /// <summary>Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).</summary>
    [Theory]
    [InlineData(0u, 0u, 0u, 0u, 0u, 0u, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [InlineData(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    [InlineData(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void Philox_matches_random123_known_answers(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1, uint e0, uint e1, uint e2, uint e3) =>
        Assert.Equal((e0, e1, e2, e3), Philox.Block(c0, c1, c2, c3, k0, k1));

    /// <summary>Position i of a stream is the same number whatever the chunking: any tangent can be regenerated.</summary>
    [Fact]
    public void Values_depend_only_on_their_position()
    {
        var key = new RandomKey(123, 9);
        var whole = new float[103];
        RandomFill.Normal(key, 5, 0f, 1f, whole);
        var pieces = new float[103];
        int at = 0;
        foreach (var length in new[] { 1, 2, 3, 5, 7, 11, 74 })
        {
            RandomFill.Normal(key, 5 + at, 0f, 1f, pieces.AsSpan(at, length));
            at += length;
        }
        Assert.Equal(whole, pieces);
        var uniformWhole = new float[50];
        var uniformPieces = new float[50];
        RandomFill.Uniform(key, 3, -1, 1, uniformWhole);
        RandomFill.Uniform(key, 3, -1, 1, uniformPieces.AsSpan(0, 13));
        RandomFill.Uniform(key, 16, -1, 1, uniformPieces.AsSpan(13));
        Assert.Equal(uniformWhole, uniformPieces);
    }

    /// <summary>
    /// N = 200 000 normal draws: the sample mean has standard error 1/√N ≈ 0.0022 and the sample variance
    /// √(2/N) ≈ 0.0032; 5 standard errors bound both. The Kolmogorov–Smirnov statistic against Φ must stay
    /// below the 0.1% critical value 1.95/√N.
    /// </summary>
    [Fact]
    public void Normal_draws_have_the_right_moments_and_distribution()
    {
        const int n = 200_000;
        var values = new float[n];
        RandomFill.Normal(new RandomKey(2024, 1), 0, 0f, 1f, values);
        double mean = values.Average(v => (double)v);
        double variance = values.Sum(v => (v - mean) * (v - mean)) / (n - 1);
        Assert.InRange(mean, -5 / Math.Sqrt(n), 5 / Math.Sqrt(n));
        Assert.InRange(variance, 1 - 5 * Math.Sqrt(2.0 / n), 1 + 5 * Math.Sqrt(2.0 / n));
        Assert.True(KolmogorovSmirnov(values, x => 0.5 * (1 + Erf(x / Math.Sqrt(2)))) < 1.95 / Math.Sqrt(n));
    }

    [Fact]
    public void Uniform_draws_are_uniform_in_the_open_interval()
    {
        const int n = 200_000;
        var values = new float[n];
        RandomFill.Uniform(new RandomKey(7, 3), 0, 0f, 1f, values);
        Assert.All(values, v => Assert.InRange(v, float.Epsilon, 1f - 1e-8f));
        Assert.True(KolmogorovSmirnov(values, x => Math.Clamp(x, 0, 1)) < 1.95 / Math.Sqrt(n));
        Assert.InRange(values.Average(v => (double)v), 0.5 - 5 * Math.Sqrt(1.0 / 12 / n), 0.5 + 5 * Math.Sqrt(1.0 / 12 / n));
    }

    [Fact]
    public void Derived_streams_differ_and_are_deterministic()
    {
        var key = new RandomKey(1, 0);
        Assert.Equal(key.Derive(5), key.Derive(5));
        Assert.NotEqual(key.Derive(5), key.Derive(6));
        Assert.NotEqual(key.Derive(5).Stream, new RandomKey(2, 0).Derive(5).Stream);
    }

    /// <summary>The AVX2 path computes exactly the scalar definition, element by element: from a small position, and across
    /// the block counter's 2³² boundary, at the start of a 256-normal chunk and inside one (then the high word changes
    /// between lanes 1 and 2 of a vector of four blocks).</summary>
    [Theory]
    [InlineData(12L)]
    [InlineData((1L << 34) - 2048)]
    [InlineData((1L << 34) - 2048 + 8)]
    public void Vectorised_normals_equal_the_scalar_definition_bit_for_bit(long first)
    {
        var key = new RandomKey(0xDEADBEEF12345678, 0x0123456789ABCDEF);
        var values = new float[4099];
        RandomFill.Normal(key, first, 0f, 1f, values);
        for (int j = 0; j < values.Length; j++)
        {
            long index = first + j;
            var (r0, r1, r2, r3) = Philox.Block((uint)(index >> 2), (uint)(index >> 34), (uint)key.Stream, (uint)(key.Stream >> 32), (uint)key.Seed, (uint)(key.Seed >> 32));
            var (c0, s0) = BoxMuller.Pair(r0, r1);
            var (c1, s1) = BoxMuller.Pair(r2, r3);
            float expected = (index & 3) switch { 0 => c0, 1 => s0, 2 => c1, _ => s1 };
            Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(values[j]));
        }
    }

    /// <summary>The float polynomials are accurate: ln within 2e-7 relative (a couple of ulps) and each normal within
    /// 1e-5 of the float64 Box–Muller of the same bits.</summary>
    [Fact]
    public void Float_box_muller_is_accurate()
    {
        var rng = new System.Random(5);
        for (int i = 0; i < 200_000; i++)
        {
            uint a = (uint)rng.NextInt64(0, 1L << 32), b = (uint)rng.NextInt64(0, 1L << 32);
            double u = BoxMuller.Unit(a), v = BoxMuller.Unit(b);
            double log = Math.Log(u);
            Assert.True(Math.Abs(BoxMuller.Log((float)u) - log) <= 2e-7 * Math.Abs(log) + 1e-37, $"ln({u})");
            var (cos, sin) = BoxMuller.Pair(a, b);
            double radius = Math.Sqrt(-2 * log);
            Assert.True(Math.Abs(cos - radius * Math.Cos(2 * Math.PI * v)) <= 1e-5 * (1 + radius), $"cos at u={u}, v={v}");
            Assert.True(Math.Abs(sin - radius * Math.Sin(2 * Math.PI * v)) <= 1e-5 * (1 + radius), $"sin at u={u}, v={v}");
        }
    }

    private static double KolmogorovSmirnov(float[] values, Func<double, double> cdf)
    {
        var sorted = values.Select(v => (double)v).Order().ToArray();
        double d = 0;
        for (int i = 0; i < sorted.Length; i++)
        {
            double f = cdf(sorted[i]);
            d = Math.Max(d, Math.Max(Math.Abs(f - (double)i / sorted.Length), Math.Abs((double)(i + 1) / sorted.Length - f)));
        }
        return d;
    }

    private static double Erf(double x)
    {
        // Abramowitz–Stegun 7.1.26 is too coarse for a KS test at N = 2e5; use the series/continued form.
        if (Math.Abs(x) > 6) return Math.Sign(x);
        double sum = 0, term = x;
        for (int n = 0; n < 300; n++) { sum += term / (2 * n + 1); term *= -x * x / (n + 1); }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }
}

/// <summary>The CUDA kernels' random numbers, compiled for the host (native/host-check/rng_bits.cpp wrote the golden
/// file), are bit for bit those of the CPU backend: the GPU draws the same tangents.</summary>
public class CudaRandomParityTests
{
    [Fact]
    public void Cpu_draws_the_bits_of_the_cuda_kernels()
    {
        var golden = File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "Golden", "cuda_rng_bits.txt")).Select(l => Convert.ToUInt32(l, 16)).ToArray();
        var key = new RandomKey(0xDEADBEEF12345678, 0x0123456789ABCDEF);
        var normal = new float[4099];
        RandomFill.Normal(key, 12, 0f, 1f, normal);
        var uniform = new float[1000];
        RandomFill.Uniform(key, 5, -1f, 1f, uniform);
        Assert.Equal(golden, normal.Concat(uniform).Select(BitConverter.SingleToUInt32Bits).ToArray());
    }
}
