using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// A labelled data set in memory: <see cref="Count"/> examples of <see cref="FeatureShape"/> floats
/// each (row-major, example after example) and one class label per example.
/// </summary>
public sealed record Dataset(string Name, Shape FeatureShape, int Classes, float[] Features, float[] Labels)
{
    public int Count => Labels.Length;
    public int FeatureSize => FeatureShape.ElementCount;

    /// <summary>A deterministic shuffle then split: the last ⌈fraction·N⌉ examples of the permutation are the test set.</summary>
    public (Dataset Train, Dataset Test) Split(double testFraction, ulong seed)
    {
        if (testFraction is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(testFraction), $"The test fraction must be in (0, 1); got {testFraction}.");
        var order = Permutation(Count, new RandomKey(seed, 0x5B117));
        int test = (int)Math.Ceiling(testFraction * Count);
        return (Subset(order[..^test], $"{Name} (train)"), Subset(order[^test..], $"{Name} (test)"));
    }

    public Dataset Subset(ReadOnlySpan<int> indices, string name)
    {
        var features = new float[indices.Length * FeatureSize];
        var labels = new float[indices.Length];
        CopyBatch(indices, features, labels);
        return this with { Name = name, Features = features, Labels = labels };
    }

    /// <summary>Copies the examples at <paramref name="indices"/> into batch buffers.</summary>
    public void CopyBatch(ReadOnlySpan<int> indices, Span<float> features, Span<float> labels)
    {
        int size = FeatureSize;
        for (int i = 0; i < indices.Length; i++)
        {
            Features.AsSpan(indices[i] * size, size).CopyTo(features.Slice(i * size, size));
            labels[i] = Labels[indices[i]];
        }
    }

    /// <summary>A uniformly random permutation of 0..n−1 (Fisher–Yates driven by a Philox stream):
    /// the same on every machine for the same key.</summary>
    public static int[] Permutation(int n, RandomKey key)
    {
        var order = new int[n];
        Permute(key, order);
        return order;
    }

    /// <summary>Writes a random permutation of 0..order.Length−1 into <paramref name="order"/> without allocating.</summary>
    public static void Permute(RandomKey key, Span<int> order)
    {
        for (int i = 0; i < order.Length; i++) order[i] = i;
        Span<float> u = stackalloc float[1];
        for (int i = order.Length - 1; i > 0; i--)
        {
            RandomFill.Uniform(key, i, 0f, 1f, u);
            int j = Math.Min((int)(u[0] * (i + 1)), i);
            (order[i], order[j]) = (order[j], order[i]);
        }
    }
}
