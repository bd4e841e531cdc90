using System.Runtime.CompilerServices;

namespace ForwardAD.Random;

/// <summary>
/// Coordinates of a random stream: (seed, stream). Element <c>i</c> of a stream comes from the
/// Philox block with counter <c>(i / 4 as 64 bits, stream as 64 bits)</c> and key <c>seed</c>,
/// lane <c>i mod 4</c>, so a tangent can be regenerated from (seed, stream, index) alone and a
/// GPU kernel draws the same numbers as the CPU loop. Streams are cheap: derive one per layer,
/// step and channel with <see cref="Derive"/>.
/// </summary>
public readonly record struct RandomKey(ulong Seed, ulong Stream)
{
    /// <summary>A sub-stream, e.g. per step or per layer: the stream id is hashed with the tag
    /// through one Philox block, so nearby tags give unrelated streams.</summary>
    public RandomKey Derive(ulong tag)
    {
        var (a, b, _, _) = Philox.Block((uint)tag, (uint)(tag >> 32), (uint)Stream, (uint)(Stream >> 32),
            (uint)Seed ^ 0x6A09E667u, (uint)(Seed >> 32) ^ 0xBB67AE85u);
        return this with { Stream = ((ulong)b << 32) | a };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal (uint, uint, uint, uint) Block(ulong blockIndex) =>
        Philox.Block((uint)blockIndex, (uint)(blockIndex >> 32), (uint)Stream, (uint)(Stream >> 32), (uint)Seed, (uint)(Seed >> 32));
}
