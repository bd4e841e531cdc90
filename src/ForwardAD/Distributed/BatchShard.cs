using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Distributed;

/// <summary>
/// One rank's share of a global batch (docs/design.md §7): examples [<see cref="First"/>, First + <see cref="Count"/>) of the
/// <see cref="GlobalBatch"/> examples of every step, and the <see cref="Communicator"/> of the ranks that hold the rest.
/// Estimators compiled for a shard draw every per-example random number at the example's global index and divide by the
/// global batch, so that the ranks together compute what one process with the whole batch computes.
/// </summary>
public sealed record BatchShard
{
    /// <summary>Examples [<paramref name="first"/>, first + <paramref name="count"/>) of a batch of <paramref name="globalBatch"/>,
    /// the rest held by the other ranks of <paramref name="communicator"/>. <see cref="Split"/> computes a rank's share.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="globalBatch"/> is below 1, or the range is empty or does
    /// not lie inside the batch.</exception>
    public BatchShard(int globalBatch, int first, int count, Communicator communicator)
    {
        if (globalBatch < 1) throw new ArgumentOutOfRangeException(nameof(globalBatch), $"The batch size must be at least 1; got {globalBatch}.");
        if (count < 1 || first < 0 || (long)first + count > globalBatch)
            throw new ArgumentOutOfRangeException(nameof(count), $"A shard holds at least one example inside the batch of {globalBatch}; got examples [{first}, {(long)first + count}).");
        (GlobalBatch, First, Count, Communicator) = (globalBatch, first, count, communicator);
    }

    /// <summary>B: the examples of one step over all ranks; estimates and losses are divided by it, not by <see cref="Count"/>.</summary>
    public int GlobalBatch { get; }
    /// <summary>The global index of this shard's first example: per-example random numbers are drawn at global indices.</summary>
    public int First { get; }
    /// <summary>B_r: the examples this rank holds, the batch size its plans are compiled for.</summary>
    public int Count { get; }
    /// <summary>The ranks that hold the other shares and sum the estimates.</summary>
    public Communicator Communicator { get; }

    /// <summary>True when this shard is the whole batch (one rank).</summary>
    public bool IsWhole => Count == GlobalBatch;

    /// <summary>The whole batch in one process.</summary>
    public static BatchShard Whole(int batchSize) => new(batchSize, 0, batchSize, Communicator.SingleProcess);

    /// <summary>The communicator's rank's share of a batch split by global example index: rank r holds examples
    /// [⌊rB/N⌋, ⌊(r+1)B/N⌋), so the shares differ by at most one example when N does not divide B.</summary>
    public static BatchShard Split(int globalBatch, Communicator communicator)
    {
        int size = communicator.Size, rank = communicator.Rank;
        if (globalBatch < size)
            throw new ArgumentException($"A batch of {globalBatch} examples cannot be split over {size} ranks: every rank needs at least one. Use a batch of at least {size} or fewer ranks.");
        int first = (int)((long)rank * globalBatch / size), end = (int)((long)(rank + 1) * globalBatch / size);
        return new BatchShard(globalBatch, first, end - first, communicator);
    }

    /// <summary>Fills <paramref name="destination"/>, laid out [channels, <see cref="Count"/>, <paramref name="perExample"/>],
    /// with the numbers the whole batch's buffer [channels, <see cref="GlobalBatch"/>, perExample] has at this shard's
    /// examples: normal N(a, b²) or, with <paramref name="uniform"/>, uniform U(a, b), at the stream positions of the
    /// global layout. For the whole batch this is one fill from position 0.</summary>
    public void Fill(Backend backend, RandomKey key, int perExample, bool uniform, float a, float b, View destination)
    {
        long local = (long)Count * perExample;
        if (local == 0 || destination.Length % local != 0)
            throw new ArgumentException($"A per-example buffer of {destination.Length} values is not whole channels of {Count} examples × {perExample}.", nameof(destination));
        if (IsWhole) { FillAt(0, destination); return; }
        int channels = (int)(destination.Length / local);
        for (int k = 0; k < channels; k++)
            FillAt(((long)k * GlobalBatch + First) * perExample, destination.Slice((int)(k * local), (int)local));

        void FillAt(long first, View target)
        {
            if (uniform) backend.FillUniform(key, first, a, b, target);
            else backend.FillNormal(key, first, a, b, target);
        }
    }

    /// <summary>"batch of B" for the whole batch, else "examples first..last of B (communicator)".</summary>
    public override string ToString() => IsWhole ? $"batch of {GlobalBatch}" : $"examples {First}..{First + Count - 1} of {GlobalBatch} ({Communicator})";
}
