using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ForwardAD.Random;

/// <summary>
/// Fills spans with uniform or Gaussian numbers at absolute positions of a <see cref="RandomKey"/>
/// stream. Position <c>first + j</c> always gets the same value, whatever the span boundaries.
/// </summary>
public static class RandomFill
{
    /// <summary>Maps 32 random bits to a float in the open interval (0, 1): the top 24 bits plus
    /// half a step, so the value is exact in float32 and never 0 (safe under log).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToUnitOpen(uint bits) => Random.BoxMuller.Unit(bits);

    /// <summary>Uniform numbers in (low, high), element i = low + (high − low)·U(bits of lane i). Sixteen at a
    /// time with AVX2 (the same float operations, so the same bits).</summary>
    public static void Uniform(RandomKey key, long first, float low, float high, Span<float> destination)
    {
        float width = high - low;
        long index = first;
        int j = 0;
        bool vectorized = Avx2.IsSupported;
        Span<float> sixteen = stackalloc float[16];
        while (j < destination.Length)
        {
            if (vectorized && (index & 3) == 0 && destination.Length - j >= 16)
            {
                var (w0, w1, w2, w3) = Random.BoxMuller.PhiloxBlocks(key, (ulong)(index >> 2));
                var scale = Vector256.Create(1.0f / 16777216.0f);
                var half = Vector256.Create(0.5f);
                // Lanes: words 0 and 1 of blocks 0..3, then words 2 and 3 of blocks 0..3.
                var first8 = (Vector256.ConvertToSingle(Vector256.ShiftRightLogical(Vector256.Narrow(w0, w1), 8).AsInt32()) + half) * scale;
                var second8 = (Vector256.ConvertToSingle(Vector256.ShiftRightLogical(Vector256.Narrow(w2, w3), 8).AsInt32()) + half) * scale;
                (Vector256.Create(low) + Vector256.Create(width) * first8).CopyTo(sixteen);
                (Vector256.Create(low) + Vector256.Create(width) * second8).CopyTo(sixteen[8..]);
                var target = destination.Slice(j, 16);
                for (int b = 0; b < 4; b++)
                {
                    target[4 * b] = sixteen[b];
                    target[4 * b + 1] = sixteen[4 + b];
                    target[4 * b + 2] = sixteen[8 + b];
                    target[4 * b + 3] = sixteen[12 + b];
                }
                j += 16;
                index += 16;
                continue;
            }
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
    /// Normal numbers mean + sd·z by Box–Muller (see <see cref="Random.BoxMuller"/> for the exact float
    /// operations): block b gives lanes 0, 1 from its words (w0, w1) and lanes 2, 3 from (w2, w3):
    /// z = √(−2 ln u)·cos 2πv, z' = √(−2 ln u)·sin 2πv. With AVX2 in chunks of up to 256 (then sixteen at a time, then one
    /// by one); the same bits either way.
    /// </summary>
    public static void Normal(RandomKey key, long first, float mean, float standardDeviation, Span<float> destination)
    {
        long index = first;
        int j = 0;
        bool vectorized = Avx2.IsSupported;
        // The chunks' temporaries, made (and zeroed) once per call.
        int vectors = vectorized && destination.Length >= 32 ? Math.Min(Chunk, destination.Length) / 16 : 0;
        Span<Vector256<uint>> radiusBits = stackalloc Vector256<uint>[vectors];
        Span<Vector256<uint>> angleBits = stackalloc Vector256<uint>[vectors];
        Span<Vector256<float>> radii = stackalloc Vector256<float>[vectors];
        while (j < destination.Length)
        {
            if (vectorized && (index & 3) == 0 && destination.Length - j >= 32)
            {
                int count = Math.Min(Chunk, (destination.Length - j) & ~31);
                NormalChunk(key, (ulong)(index >> 2), mean, standardDeviation, destination.Slice(j, count), radiusBits, angleBits, radii);
                j += count;
                index += count;
                continue;
            }
            if (vectorized && (index & 3) == 0 && destination.Length - j >= 16)
            {
                NormalSixteen(key, (ulong)(index >> 2), mean, standardDeviation, destination.Slice(j, 16));
                j += 16;
                index += 16;
                continue;
            }
            var (r0, r1, r2, r3) = key.Block((ulong)(index >> 2));
            int lane = (int)(index & 3);
            var (z0, z1) = lane <= 1 ? Random.BoxMuller.Pair(r0, r1) : default;
            var (z2, z3) = lane + (destination.Length - j) > 2 ? Random.BoxMuller.Pair(r2, r3) : default;
            for (; lane < 4 && j < destination.Length; lane++, j++, index++)
            {
                float z = lane switch { 0 => z0, 1 => z1, 2 => z2, _ => z3 };
                destination[j] = MathF.FusedMultiplyAdd(standardDeviation, z, mean);
            }
        }
    }

    /// <summary>Normals per chunk of <see cref="NormalChunk"/>: its temporaries (1.5 KiB) stay in L1.</summary>
    private const int Chunk = 256;

    /// <summary>
    /// A whole number of 32-normal groups (at most <see cref="Chunk"/>) from the blocks starting at <paramref name="block"/>,
    /// in stream order: for each group of eight blocks, <see cref="NormalSixteen"/>'s lanes for blocks 0..3, then for 4..7.
    /// Per lane the operations of <see cref="Random.BoxMuller.Pair"/>, in three passes over the chunk: the Philox words,
    /// the radii √(−2 ln u), then the rotations by 2πv. One pass doing all three per vector left the FP pipes waiting on
    /// the logarithm's and the sine's chains (~70 cycles of latency each); short passes overlap many vectors.
    /// </summary>
    private static void NormalChunk(RandomKey key, ulong block, float mean, float standardDeviation, Span<float> destination,
        Span<Vector256<uint>> radiusBits, Span<Vector256<uint>> angleBits, Span<Vector256<float>> radii)
    {
        int vectors = destination.Length / 16; // eight pairs each
        for (int k = 0; k < vectors; k += 2)
        {
            var ((w0, w1, w2, w3), (v0, v1, v2, v3)) = Random.BoxMuller.PhiloxBlocks8(key, block + 4 * (ulong)k);
            // Lanes 0..3: the (word 0, word 1) pair of blocks 0..3; lanes 4..7: their (word 2, word 3) pair.
            (radiusBits[k], angleBits[k]) = (Vector256.Narrow(w0, w2), Vector256.Narrow(w1, w3));
            (radiusBits[k + 1], angleBits[k + 1]) = (Vector256.Narrow(v0, v2), Vector256.Narrow(v1, v3));
        }
        for (int k = 0; k < vectors; k++) radii[k] = Random.BoxMuller.Radius(radiusBits[k]);
        var scale = Vector256.Create(standardDeviation);
        var shift = Vector256.Create(mean);
        for (int k = 0; k < vectors; k++)
        {
            var (cos, sin) = Random.BoxMuller.Rotate(angleBits[k], radii[k]);
            StoreInBlockOrder(Vector256.FusedMultiplyAdd(scale, cos, shift), Vector256.FusedMultiplyAdd(scale, sin, shift), destination.Slice(16 * k, 16));
        }
    }

    /// <summary>Eight (cos, sin) pairs, lanes as <see cref="NormalSixteen"/> draws them, to block order
    /// [c0 s0 c4 s4 | c1 s1 c5 s5 | c2 s2 c6 s6 | c3 s3 c7 s7].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreInBlockOrder(Vector256<float> cos, Vector256<float> sin, Span<float> target)
    {
        var low = Avx.UnpackLow(cos, sin).AsUInt64();   // pairs P0 P1 | P4 P5
        var high = Avx.UnpackHigh(cos, sin).AsUInt64(); // pairs P2 P3 | P6 P7
        Avx2.Permute4x64(low, 0b11_01_10_00).AsSingle().CopyTo(target);
        Avx2.Permute4x64(high, 0b11_01_10_00).AsSingle().CopyTo(target[8..]);
    }

    /// <summary>Four Philox blocks → sixteen normals in stream order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void NormalSixteen(RandomKey key, ulong block, float mean, float standardDeviation, Span<float> destination)
    {
        var (w0, w1, w2, w3) = Random.BoxMuller.PhiloxBlocks(key, block);
        // Lanes 0..3: the (w0, w1) pair of blocks 0..3; lanes 4..7: their (w2, w3) pair.
        var (cos, sin) = Random.BoxMuller.Pairs(Vector256.Narrow(w0, w2), Vector256.Narrow(w1, w3));
        var scale = Vector256.Create(standardDeviation);
        var shift = Vector256.Create(mean);
        StoreInBlockOrder(Vector256.FusedMultiplyAdd(scale, cos, shift), Vector256.FusedMultiplyAdd(scale, sin, shift), destination);
    }

}
