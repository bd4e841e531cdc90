using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>
/// The CPU's one-pass kernels of a max pool folded with the elementwise op before it give the bits of the composition that
/// <see cref="Backend.GatherColumnsOfProduct"/> and <see cref="Backend.ScatterAddColumnsOfProduct"/> define by default (and
/// the CUDA backend runs): gather the factor, multiply, gather or scatter. At one and three threads, with one and two
/// tangent channels, overwriting and accumulating.
/// </summary>
public sealed class FoldedPoolKernelTests
{
    /// <summary>Per example, <paramref name="columns"/> distinct winners among <paramref name="sourceColumns"/> positions.</summary>
    private static float[] Winners(int examples, int sourceColumns, int columns, int seed)
    {
        var random = new System.Random(seed);
        var indices = new float[examples * columns];
        for (int r = 0; r < examples; r++)
        {
            var positions = Enumerable.Range(0, sourceColumns).OrderBy(_ => random.Next()).Take(columns).ToArray();
            for (int j = 0; j < columns; j++) indices[r * columns + j] = positions[j];
        }
        return indices;
    }

    [Theory]
    [InlineData(1, 1, false)]
    [InlineData(3, 2, true)]
    public void The_gather_and_the_scatter_of_a_product_give_the_composed_kernels_bits(int threads, int channels, bool accumulate)
    {
        var backend = new CpuBackend { Threads = threads };
        const int examples = 300, sourceColumns = 64, columns = 16; // 4·10⁴ outputs a channel: parallel parts at 3 threads
        int rows = channels * examples;
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var factor = Of(Problem.Normal(1, examples * sourceColumns, 1f));
        var indices = Of(Winners(examples, sourceColumns, columns, 2));

        var source = Of(Problem.Normal(3, rows * sourceColumns, 1f));
        var expected = Of(new float[rows * columns]);
        var gathered = Of(new float[examples * columns]);
        backend.GatherColumns(factor, sourceColumns, indices, gathered);
        backend.GatherColumns(source, sourceColumns, indices, expected);
        backend.MultiplyChannels(gathered, expected, expected, accumulate: false);
        var actual = Of(new float[rows * columns]);
        backend.GatherColumnsOfProduct(source, factor, sourceColumns, indices, actual, default);
        Assert.True(expected.ToArray().AsSpan().SequenceEqual(actual.ToArray()), "the gathered products differ");

        var cotangent = Of(Problem.Normal(4, rows * columns, 1f));
        var start = Problem.Normal(5, rows * sourceColumns, 1f);
        var expectedScatter = Of(start);
        var products = Of(new float[rows * columns]);
        backend.MultiplyChannels(gathered, cotangent, products, accumulate: false);
        backend.ScatterAddColumns(products, indices, sourceColumns, expectedScatter, accumulate);
        var actualScatter = Of(start);
        backend.ScatterAddColumnsOfProduct(cotangent, factor, indices, sourceColumns, actualScatter, accumulate, default);
        Assert.True(expectedScatter.ToArray().AsSpan().SequenceEqual(actualScatter.ToArray()), "the scattered products differ");
        Assert.NotEqual(start, actualScatter.ToArray());
        // And against the host: overwriting clears what was there (the destination starts non-zero), accumulating keeps it.
        var (factorHost, indexHost, cotangentHost) = (factor.ToArray(), indices.ToArray(), cotangent.ToArray());
        var reference = accumulate ? (float[])start.Clone() : new float[start.Length];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < columns; j++)
            {
                int i = (int)indexHost[r % examples * columns + j];
                reference[r * sourceColumns + i] += factorHost[r % examples * sourceColumns + i] * cotangentHost[r * columns + j];
            }
        Assert.True(reference.AsSpan().SequenceEqual(actualScatter.ToArray()), "the scatter differs from the host's");
    }
}
