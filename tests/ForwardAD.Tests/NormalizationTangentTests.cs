using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>
/// The CPU's fused batch-normalisation tangent (two passes) gives the bits of the composition of general kernels that
/// <see cref="Backend.NormalizationTangent"/> defines (nine passes), at one thread and at several, for column counts
/// on and off the vector width, overwriting and accumulating, and hands out the column sums a VJP takes as γ̄ and β̄ with
/// SumRows' bits. (Its math is checked where batch norm's JVP and VJP are:
/// finite differences and the adjoint identity in the JVP/VJP tests.)
/// </summary>
public sealed class NormalizationTangentTests
{
    [Theory]
    [InlineData(2048, 32, 1, false)]
    [InlineData(2048, 32, 2, true)]
    [InlineData(4099, 13, 2, false)]
    [InlineData(4099, 13, 3, true)]
    [InlineData(7, 3, 1, true)]
    public void The_fused_tangent_gives_the_composed_kernels_bits(int rows, int columns, int threads, bool accumulate)
    {
        var backend = new CpuBackend { Threads = threads };
        int n = rows * columns;
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var normalized = Of(Problem.Normal(1, n, 1f));
        var v = Of(Problem.Normal(2, n, 0.5f));
        var scale = Of(Problem.Normal(3, columns, 2f));
        var start = Problem.Normal(4, n, 1f);

        // The reference: the default's composition, kernel by kernel.
        var expected = Of(start);
        var (product, partial) = (Of(new float[n]), Of(new float[n]));
        var (meanProduct, mean) = (Of(new float[columns]), Of(new float[columns]));
        var target = accumulate ? partial : expected;
        backend.MultiplyChannels(normalized, v, product, accumulate: false);
        var (productSums, sums) = (Of(new float[columns]), Of(new float[columns]));
        backend.SumRows(product, productSums, accumulate: false);
        backend.SumRows(v, sums, accumulate: false);
        backend.SumRows(product, meanProduct, accumulate: false);
        backend.Scale(meanProduct, -1f / rows, meanProduct);
        backend.SumRows(v, mean, accumulate: false);
        backend.Scale(mean, -1f / rows, mean);
        backend.Copy(v, target);
        backend.AddBias(mean, target);
        backend.ScaleColumns(normalized, meanProduct, target, accumulate: true);
        backend.ScaleColumns(target, scale, target, accumulate: false);
        if (accumulate) backend.Copy(target, expected, accumulate: true);

        var actual = Of(start);
        var (actualMeanProduct, actualMean) = (Of(new float[columns]), Of(new float[columns]));
        var (actualProductSums, actualSums) = (Of(new float[columns]), Of(new float[columns]));
        backend.NormalizationTangent(normalized, v, scale, actual, accumulate, actualMeanProduct, actualMean, Of(new float[n]), Of(new float[n]),
            actualProductSums, actualSums);

        Assert.True(expected.ToArray().AsSpan().SequenceEqual(actual.ToArray()), "the tangent differs from the composed kernels'");
        Assert.True(meanProduct.ToArray().AsSpan().SequenceEqual(actualMeanProduct.ToArray()), "−mean(v ⊙ x̂) differs");
        Assert.True(mean.ToArray().AsSpan().SequenceEqual(actualMean.ToArray()), "−mean(v) differs");
        // The raw sums a VJP takes as γ̄ and β̄: SumRows' bits.
        Assert.True(productSums.ToArray().AsSpan().SequenceEqual(actualProductSums.ToArray()), "Σ x̂ v differs from SumRows'");
        Assert.True(sums.ToArray().AsSpan().SequenceEqual(actualSums.ToArray()), "Σ v differs from SumRows'");
        Assert.NotEqual(start, actual.ToArray()); // it wrote
    }

    /// <summary>An addend (the tangent injected at the node) is added in the last pass with the bits of a separate add after
    /// it, at one thread and several; an addend with accumulate is refused.</summary>
    [Theory]
    [InlineData(2048, 32, 1)]
    [InlineData(4099, 13, 3)]
    public void An_addend_is_added_last_with_a_separate_adds_bits(int rows, int columns, int threads)
    {
        var backend = new CpuBackend { Threads = threads };
        int n = rows * columns;
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        View Zeros(int length) => Of(new float[length]);
        var normalized = Of(Problem.Normal(1, n, 1f));
        var v = Of(Problem.Normal(2, n, 0.5f));
        var scale = Of(Problem.Normal(3, columns, 2f));
        var addend = Of(Problem.Normal(5, n, 1f));

        var expected = Zeros(n);
        backend.NormalizationTangent(normalized, v, scale, expected, false, Zeros(columns), Zeros(columns), Zeros(n), Zeros(n));
        backend.Add(expected, addend, expected);
        var actual = Zeros(n);
        backend.NormalizationTangent(normalized, v, scale, actual, false, Zeros(columns), Zeros(columns), Zeros(n), Zeros(n), addend: addend);

        Assert.True(expected.ToArray().AsSpan().SequenceEqual(actual.ToArray()), "the folded addend differs from a separate add");
        Assert.Throws<ArgumentException>(() => backend.NormalizationTangent(normalized, v, scale, actual, true, Zeros(columns), Zeros(columns),
            Zeros(n), Zeros(n), addend: addend));
    }

    /// <summary>β̄ = Σ ȳ and γ̄ = Σ x̂ ȳ in one pass give SumRows' bits after MultiplyChannels (the default's composition).</summary>
    [Theory]
    [InlineData(2048, 32)]
    [InlineData(4099, 13)]
    public void Column_sums_with_products_give_the_composed_kernels_bits(int rows, int columns)
    {
        var backend = new CpuBackend();
        int n = rows * columns;
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var (x, v) = (Of(Problem.Normal(1, n, 1f)), Of(Problem.Normal(2, n, 0.5f)));
        var (product, expectedProducts, expectedSums) = (Of(new float[n]), Of(new float[columns]), Of(new float[columns]));
        backend.MultiplyChannels(x, v, product, accumulate: false);
        backend.SumRows(product, expectedProducts, accumulate: false);
        backend.SumRows(v, expectedSums, accumulate: false);
        var (sums, products) = (Of(Problem.Normal(3, columns, 1f)), Of(Problem.Normal(4, columns, 1f))); // overwritten, not added to
        backend.ColumnSumsWithProducts(x, v, sums, products, Of(new float[n]));
        Assert.True(expectedSums.ToArray().AsSpan().SequenceEqual(sums.ToArray()), "Σ v differs from SumRows'");
        Assert.True(expectedProducts.ToArray().AsSpan().SequenceEqual(products.ToArray()), "Σ x v differs from SumRows' of the products");
    }

    /// <summary>The forward's normalisation and affine step written in one pass give the bits of the two passes the default
    /// composes (x̂ = (x − μ)σ̂⁻¹, then y = x̂γ + β), x̂ included, for column counts on and off the vector width.</summary>
    [Theory]
    [InlineData(4099, 13, 1)]
    [InlineData(4099, 13, 3)]
    [InlineData(2048, 32, 2)]
    public void Normalisation_and_affine_step_in_one_pass_give_the_two_passes_bits(int rows, int columns, int threads)
    {
        var backend = new CpuBackend { Threads = threads };
        int n = rows * columns;
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var x = Of(Problem.Normal(1, n, 3f));
        var (shift, scale, gamma, beta) = (Of(Problem.Normal(2, columns, 1f)), Of(Problem.Normal(3, columns, 2f)), Of(Problem.Normal(4, columns, 1f)),
            Of(Problem.Normal(5, columns, 1f)));
        var (expectedNormalized, expected) = (Of(new float[n]), Of(new float[n]));
        backend.ShiftScaleColumns(x, shift, scale, expectedNormalized);
        backend.ScaleShiftColumns(expectedNormalized, gamma, beta, expected);
        var (normalized, y) = (Of(new float[n]), Of(new float[n]));
        backend.NormalizeScaleShiftColumns(x, shift, scale, gamma, beta, normalized, y);
        Assert.True(Bits.Same(expectedNormalized.ToArray(), normalized.ToArray()), "x̂ differs");
        Assert.True(Bits.Same(expected.ToArray(), y.ToArray()), "y differs");
        Assert.Contains(y.ToArray(), value => value != 0f);
    }
}
