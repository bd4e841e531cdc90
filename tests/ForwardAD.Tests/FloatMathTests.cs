using System.Runtime.Intrinsics;
using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>The float32 exponential of softmax and the GELUs: accuracy against float64 over the whole range, the same
/// bits in a vector lane and in a scalar tail, and the ends of the range.</summary>
public class FloatMathTests
{
    /// <summary>Distance in units in the last place between a float and the float64 truth.</summary>
    private static double Ulps(float value, double truth)
    {
        float rounded = (float)truth;
        double ulp = MathF.BitIncrement(MathF.Abs(rounded)) - MathF.Abs(rounded);
        return Math.Abs(value - truth) / ulp;
    }

    [Fact]
    public void Exp_is_within_two_ulp_of_float64_over_the_range_of_normal_results()
    {
        // Every 97th float bit pattern between −87.3 and 88.7 (about 9 M values, every exponent and mantissa region),
        // plus both ends.
        double worst = 0;
        float worstAt = 0;
        foreach (var (from, to) in new[] { (0f, 88.7f), (0f, -87.3f) })
        {
            int first = BitConverter.SingleToInt32Bits(from), last = BitConverter.SingleToInt32Bits(to);
            for (int bits = first; bits <= last; bits += 97)
            {
                float x = BitConverter.Int32BitsToSingle(bits);
                double error = Ulps(FloatMath.Exp(x), Math.Exp(x));
                if (error > worst) (worst, worstAt) = (error, x);
            }
        }
        Assert.True(worst <= 2.0, $"exp({worstAt}) is {worst:F2} ulp from float64");
    }

    [Fact]
    public void Vector_lanes_and_the_scalar_give_the_same_bits()
    {
        var random = new System.Random(7);
        var x = new float[1 << 16];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(random.NextDouble() * 200 - 100); // across both ends too
        for (int i = 0; i < x.Length; i += 8)
        {
            var lanes = FloatMath.Exp(Vector256.Create(x.AsSpan(i, 8)));
            for (int l = 0; l < 8; l++)
                Assert.Equal(BitConverter.SingleToInt32Bits(FloatMath.Exp(x[i + l])), BitConverter.SingleToInt32Bits(lanes[l]));
        }
        // And through the span kernel, whose last elements go through the scalar path.
        var shifted = new float[x.Length - 3];
        FloatMath.ExpShifted(x.AsSpan(0, shifted.Length), 1.5f, shifted);
        for (int i = 0; i < shifted.Length; i++) Assert.Equal(FloatMath.Exp(x[i] - 1.5f), shifted[i]);
    }

    [Theory]
    [InlineData(0f, 1f)]
    [InlineData(-87.4f, 0f)]          // below ln of the smallest normal float: 0, never a subnormal
    [InlineData(-1000f, 0f)]
    [InlineData(float.NegativeInfinity, 0f)]
    [InlineData(88.8f, float.PositiveInfinity)]
    [InlineData(float.PositiveInfinity, float.PositiveInfinity)]
    public void Ends_of_the_range(float x, float expected)
    {
        Assert.Equal(expected, FloatMath.Exp(x));
        Assert.Equal(expected, FloatMath.Exp(Vector256.Create(x))[3]);
    }

    [Fact]
    public void Nan_stays_nan_and_results_near_the_ends_are_normal()
    {
        Assert.True(float.IsNaN(FloatMath.Exp(float.NaN)));
        Assert.True(float.IsNaN(FloatMath.Exp(Vector256.Create(float.NaN))[0]));
        Assert.True(FloatMath.Exp(-87.3f) >= 1.17549435e-38f, "exp(−87.3) ≈ 1.2e-38 must come out normal");
        Assert.True(float.IsFinite(FloatMath.Exp(88.7f)) && FloatMath.Exp(88.7f) > 3.3e38f);
    }

    /// <summary>The unguarded exponential the GELUs use gives <see cref="FloatMath.Exp(Vector256{float})"/>'s bits over its whole
    /// range (every 97th float between −87.33 and 88.37, both ends) and keeps NaN.</summary>
    [Fact]
    public void The_unguarded_exponential_gives_the_guarded_ones_bits_within_its_range()
    {
        // Bit patterns from 0 up to each end: for the negative side, the patterns of −0 up to −87.33 (sign bit set, the
        // magnitude growing with the pattern).
        foreach (var (from, to) in new[] { (0f, 88.37f), (-0f, -87.33f) })
        {
            int first = BitConverter.SingleToInt32Bits(from), last = BitConverter.SingleToInt32Bits(to);
            var lanes = new float[8];
            for (int bits = first; bits <= last; bits += 97 * 8)
            {
                for (int l = 0; l < 8; l++) lanes[l] = BitConverter.Int32BitsToSingle(Math.Min(bits + 97 * l, last));
                var (guarded, unguarded) = (FloatMath.Exp(Vector256.Create(lanes)), FloatMath.ExpWithinRange(Vector256.Create(lanes)));
                for (int l = 0; l < 8; l++)
                    Assert.True(BitConverter.SingleToInt32Bits(guarded[l]) == BitConverter.SingleToInt32Bits(unguarded[l]),
                        $"exp({lanes[l]}): {unguarded[l]} unguarded, {guarded[l]} guarded");
            }
        }
        Assert.True(float.IsNaN(FloatMath.ExpWithinRange(Vector256.Create(float.NaN))[0]));
    }
}
