using System.Runtime.CompilerServices;

namespace ForwardAD.Random;

/// <summary>
/// Fills spans with uniform or Gaussian numbers at absolute positions of a <see cref="RandomKey"/>
/// stream. Position <c>first + j</c> always gets the same value, whatever the span boundaries.
/// </summary>
public static class RandomFill
{
    private const double TwoPi = 2 * Math.PI;

    /// <summary>Maps 32 random bits to a float in the open interval (0, 1): the top 24 bits plus
    /// half a step, so the value is exact in float32 and never 0 (safe under log).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToUnitOpen(uint bits) => ((bits >> 8) + 0.5f) * (1.0f / 16777216.0f);

    /// <summary>Uniform numbers in (low, high), element i = low + (high − low)·U(bits of lane i).</summary>
    public static void Uniform(RandomKey key, long first, float low, float high, Span<float> destination)
    {
        float width = high - low;
        long index = first;
        int j = 0;
        while (j < destination.Length)
        {
            var (r0, r1, r2, r3) = key.Block((ulong)(index >> 2));
            int lane = (int)(index & 3);
            for (; lane < 4 && j < destination.Length; lane++, j++, index++)
            {
                uint bits = lane switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
                destination[j] = low + width * ToUnitOpen(bits);
            }
        }
    }

    /// <summary>
    /// Standard normal numbers by Box–Muller: block b gives lanes 0,1 from (u0, u1) and lanes 2,3
    /// from (u2, u3): z = √(−2 ln u)·cos(2π v), z' = √(−2 ln u)·sin(2π v). Computed in double and
    /// rounded once to float, so that backends with different float libm agree bit for bit.
    /// </summary>
    public static void Normal(RandomKey key, long first, float mean, float standardDeviation, Span<float> destination)
    {
        long index = first;
        int j = 0;
        while (j < destination.Length)
        {
            var (r0, r1, r2, r3) = key.Block((ulong)(index >> 2));
            int lane = (int)(index & 3);
            // Only the pairs actually needed are transformed.
            double z0 = 0, z1 = 0, z2 = 0, z3 = 0;
            if (lane <= 1) (z0, z1) = BoxMuller(r0, r1);
            if (lane + (destination.Length - j) > 2) (z2, z3) = BoxMuller(r2, r3);
            for (; lane < 4 && j < destination.Length; lane++, j++, index++)
            {
                double z = lane switch { 0 => z0, 1 => z1, 2 => z2, _ => z3 };
                destination[j] = (float)(mean + standardDeviation * z);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (double, double) BoxMuller(uint a, uint b)
    {
        double radius = Math.Sqrt(-2.0 * Math.Log(ToUnitOpen(a)));
        var (sin, cos) = Math.SinCos(TwoPi * ToUnitOpen(b));
        return (radius * cos, radius * sin);
    }
}
