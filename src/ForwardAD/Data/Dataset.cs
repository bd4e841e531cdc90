using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// A labelled data set in memory: <see cref="Count"/> examples of <see cref="FeatureShape"/> floats
/// each (row-major, example after example) and one class label per example.
/// </summary>
public sealed record Dataset(string Name, Shape FeatureShape, int Classes, float[] Features, float[] Labels)
{
    /// <summary>Number of examples (one label each).</summary>
    public int Count => Labels.Length;
    /// <summary>Floats per example: the element count of <see cref="FeatureShape"/>.</summary>
    public int FeatureSize => FeatureShape.ElementCount;

    /// <summary>A deterministic shuffle then split: the last ⌈fraction·N⌉ examples of the permutation are the test set.</summary>
    public (Dataset Train, Dataset Test) Split(double testFraction, ulong seed)
    {
        if (testFraction is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(testFraction), $"The test fraction must be in (0, 1); got {testFraction}.");
        var order = Permutation(Count, new RandomKey(seed, 0x5B117));
        int test = (int)Math.Ceiling(testFraction * Count);
        return (Subset(order[..^test], $"{Name} (train)"), Subset(order[^test..], $"{Name} (test)"));
    }

    /// <summary>The examples at <paramref name="indices"/>, in that order (repeats allowed), copied into a new data set
    /// called <paramref name="name"/> with the same shape and classes.</summary>
    public Dataset Subset(ReadOnlySpan<int> indices, string name)
    {
        var features = new float[indices.Length * FeatureSize];
        var labels = new float[indices.Length];
        CopyBatch(indices, features, labels);
        return this with { Name = name, Features = features, Labels = labels };
    }

    /// <summary>
    /// The mean and standard deviation of every feature over this data set (population, accumulated in float64),
    /// for z-scoring with <see cref="Standardize"/>. A constant feature gets standard deviation 1, so that it maps
    /// to 0 instead of NaN. Compute them on the training set and apply them to train and test alike.
    /// </summary>
    public (float[] Mean, float[] StandardDeviation) FeatureStatistics()
    {
        if (Count == 0) throw new InvalidOperationException($"'{Name}' has no examples to compute feature statistics from.");
        int size = FeatureSize;
        var sum = new double[size];
        var squares = new double[size];
        for (int e = 0; e < Count; e++)
        {
            var row = Features.AsSpan(e * size, size);
            for (int j = 0; j < size; j++) sum[j] += row[j];
        }
        var mean = new float[size];
        for (int j = 0; j < size; j++) mean[j] = (float)(sum[j] / Count);
        // Two passes (mean first, then squared deviations): Σx² − N·mean² loses everything to cancellation
        // for features with a large offset, such as raw pixel values around 128.
        for (int e = 0; e < Count; e++)
        {
            var row = Features.AsSpan(e * size, size);
            for (int j = 0; j < size; j++) { double d = row[j] - sum[j] / Count; squares[j] += d * d; }
        }
        var deviation = new float[size];
        for (int j = 0; j < size; j++)
        {
            double std = Math.Sqrt(squares[j] / Count);
            deviation[j] = std > 0 && (float)std > 0 ? (float)std : 1f;
        }
        return (mean, deviation);
    }

    /// <summary>A copy with every feature z-scored: <c>(x − mean) / standardDeviation</c>, per feature.</summary>
    public Dataset Standardize(ReadOnlySpan<float> mean, ReadOnlySpan<float> standardDeviation)
    {
        int size = FeatureSize;
        if (mean.Length != size || standardDeviation.Length != size)
            throw new ArgumentException($"'{Name}' has {size} features per example; the statistics have {mean.Length} means and {standardDeviation.Length} standard deviations.");
        var features = new float[Features.Length];
        for (int e = 0; e < Count; e++)
            for (int j = 0; j < size; j++)
                features[e * size + j] = (Features[e * size + j] - mean[j]) / standardDeviation[j];
        return this with { Features = features };
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
