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
    [InlineData(3, 1, false)]
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
        Assert.True(Bits.Same(expected.ToArray(), actual.ToArray()), "the gathered products differ");

        var cotangent = Of(Problem.Normal(4, rows * columns, 1f));
        var start = Problem.Normal(5, rows * sourceColumns, 1f);
        var expectedScatter = Of(start);
        var products = Of(new float[rows * columns]);
        backend.MultiplyChannels(gathered, cotangent, products, accumulate: false);
        backend.ScatterAddColumns(products, indices, sourceColumns, expectedScatter, accumulate);
        var actualScatter = Of(start);
        backend.ScatterAddColumnsOfProduct(cotangent, factor, indices, sourceColumns, actualScatter, accumulate, default);
        Assert.True(Bits.Same(expectedScatter.ToArray(), actualScatter.ToArray()), "the scattered products differ");
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
        Assert.True(Bits.Same(reference, actualScatter.ToArray()), "the scatter differs from the host's");
    }

    /// <summary>Max pooling against a host loop over each window in window order, strictly greater replacing: the values
    /// and the winners' indices, with ties everywhere (values on a coarse grid), channel counts with and without a scalar
    /// tail, overlapping and padded windows, at one and three threads.</summary>
    [Theory]
    [InlineData(8, 2, 2, 0, 1)]
    [InlineData(13, 3, 2, 1, 3)]
    [InlineData(32, 3, 1, 1, 3)]
    public void Max_pooling_takes_the_first_maximum_in_window_order(int channels, int kernel, int stride, int padding, int threads)
    {
        var backend = new CpuBackend { Threads = threads };
        const int examples = 40, height = 9, width = 7;
        var g = new PoolGeometry(height, width, channels, kernel, kernel, stride, padding);
        var x = Problem.Normal(6, examples * g.InputElements, 1f).Select(v => MathF.Round(v * 2f) / 2f).ToArray(); // ties
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var (y, argmax) = (Of(new float[examples * g.OutputElements]), Of(new float[examples * g.OutputElements]));
        backend.MaxPool(Of(x), g, y, argmax);
        var (values, winners) = (y.ToArray(), argmax.ToArray());
        for (int n = 0; n < examples; n++)
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++)
                    for (int c = 0; c < channels; c++)
                    {
                        float best = float.NaN;
                        int winner = -1;
                        for (int ky = 0; ky < kernel; ky++)
                            for (int kx = 0; kx < kernel; kx++)
                            {
                                int iy = oy * stride - padding + ky, ix = ox * stride - padding + kx;
                                if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
                                int at = (iy * width + ix) * channels + c;
                                float v = x[n * g.InputElements + at];
                                if (winner < 0 || v > best) (best, winner) = (v, at);
                            }
                        int o = n * g.OutputElements + (oy * g.OutputWidth + ox) * channels + c;
                        Assert.True(BitConverter.SingleToInt32Bits(best) == BitConverter.SingleToInt32Bits(values[o]) && winner == (int)winners[o],
                            $"example {n}, output ({oy}, {ox}), channel {c}: {values[o]} at {winners[o]}, expected {best} at {winner}");
                    }
    }
}
