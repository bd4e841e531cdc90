using ForwardAD.Backends;

namespace ForwardAD.Cuda.Tests;

/// <summary>
/// The convolution, pooling and normalisation kernels of the CUDA backend (native/conv.cu, scale_columns,
/// reciprocal_sqrt) against the CPU backend on random inputs, over strides 1 and 2 (and 3), padding 0–2, odd sizes,
/// 1×1, 3×3, 2×3 and 3×2 kernels, groups 1, 2 and depthwise, several examples N, R = 3N channel copies for the gather
/// and the scatter, both accumulate modes. Skipped, with the reason, where there is no GPU.
///
/// Kernels that copy or pick (im2col, max pooling and its argmax, gather) and the single-operation ones (per-column
/// scale, 1/√(x+ε)) must give the CPU's bits. Kernels that sum (col2im, average pooling and its adjoint, scatter-add)
/// must agree within the float32 bound of a sum of n terms, |error| ≤ n·2⁻²⁴·Σ|term| (Higham's recursive-summation
/// bound with one more rounding per term for a product), Σ|term| being the same CPU kernel run on absolute values;
/// and they must give the same bits on two runs (no atomics). They add in the CPU's order, so they are expected to be
/// bit-identical too (native/host-check/conv_check.cpp shows it on the host); the output says whether they were.
/// Every destination starts as NaN, so an element the kernel forgets to write shows up.
/// </summary>
public sealed class ConvParityTests(CudaFixture fixture, ITestOutputHelper output) : IClassFixture<CudaFixture>
{
    private readonly CpuBackend _cpu = new();

    private static string Describe(in ConvGeometry g, int examples) =>
        $"N={examples} H={g.Height} W={g.Width} C={g.Channels} kernel {g.KernelHeight}×{g.KernelWidth} stride {g.Stride} padding {g.Padding} groups {g.Groups}";

    private static string Describe(in PoolGeometry g, int examples) =>
        $"N={examples} H={g.Height} W={g.Width} C={g.Channels} window {g.KernelHeight}×{g.KernelWidth} stride {g.Stride} padding {g.Padding}";

    private static float[] NaNs(int n) => Enumerable.Repeat(float.NaN, n).ToArray();
    private static float[] Abs(float[] values) => values.Select(MathF.Abs).ToArray();

    /// <summary>Bit for bit; the message names the kernel, the geometry, the first differing index and how many differ.</summary>
    private static void SameBits(float[] cpu, float[] cuda, string what)
    {
        Assert.True(cpu.Length == cuda.Length, $"{what}: CUDA gave {cuda.Length} values, the CPU {cpu.Length}.");
        int first = -1, count = 0;
        for (int i = 0; i < cpu.Length; i++)
            if (BitConverter.SingleToUInt32Bits(cpu[i]) != BitConverter.SingleToUInt32Bits(cuda[i])) { if (count++ == 0) first = i; }
        if (count > 0)
            Assert.Fail($"{what}: not bit-identical to the CPU; first difference at [{first}]: CPU {cpu[first]:G9} (0x{BitConverter.SingleToUInt32Bits(cpu[first]):X8}), " +
                        $"CUDA {cuda[first]:G9} (0x{BitConverter.SingleToUInt32Bits(cuda[first]):X8}); {count} of {cpu.Length} differ.");
    }

    /// <summary>A sum kernel: within n·2⁻²⁴·magnitude of the CPU (magnitude = the CPU kernel on absolute values), the same
    /// bits on two CUDA runs. Reports whether it was also bit-identical to the CPU.</summary>
    private void SameSum(float[] cpu, float[] cuda, float[] cudaAgain, float[] magnitude, int terms, string what)
    {
        Assert.True(cpu.Length == cuda.Length, $"{what}: CUDA gave {cuda.Length} values, the CPU {cpu.Length}.");
        for (int i = 0; i < cpu.Length; i++)
        {
            if (BitConverter.SingleToUInt32Bits(cuda[i]) != BitConverter.SingleToUInt32Bits(cudaAgain[i]))
                Assert.Fail($"{what}: not deterministic; at [{i}] one CUDA run gave {cuda[i]:G9}, the next {cudaAgain[i]:G9}.");
            double bound = (terms + 1) * Math.ScaleB(1.0, -24) * magnitude[i] * (1 + 1e-6);
            if (!(Math.Abs((double)cpu[i] - cuda[i]) <= bound)) // NaN (an element never written) fails too
                Assert.Fail($"{what}: first difference beyond float32 rounding at [{i}]: CPU {cpu[i]:G9}, CUDA {cuda[i]:G9}, " +
                            $"|difference| {Math.Abs((double)cpu[i] - cuda[i]):G3} > {bound:G3} = ({terms} + 1)·2⁻²⁴·Σ|term| with Σ|term| = {magnitude[i]:G6}.");
        }
        int differing = cpu.Zip(cuda).Count(p => BitConverter.SingleToUInt32Bits(p.First) != BitConverter.SingleToUInt32Bits(p.Second));
        output.WriteLine(differing == 0 ? $"{what}: bit-identical to the CPU" : $"{what}: {differing} of {cpu.Length} within rounding but not bit-identical");
    }

    [Theory]
    [InlineData(7, 5, 4, 3, 3, 1, 1, 1)]
    [InlineData(7, 5, 4, 3, 3, 2, 1, 2)]
    [InlineData(7, 5, 4, 3, 3, 1, 2, 4)] // depthwise
    [InlineData(7, 5, 4, 1, 1, 1, 0, 1)]
    [InlineData(7, 5, 4, 1, 1, 2, 2, 2)] // 1×1 with padding: whole border rows of zeros
    [InlineData(7, 5, 4, 2, 3, 2, 0, 4)]
    [InlineData(6, 6, 6, 2, 3, 1, 1, 3)]
    [InlineData(5, 7, 2, 3, 2, 2, 2, 1)]
    [InlineData(8, 8, 3, 3, 3, 2, 0, 3)]
    [InlineData(4, 9, 4, 3, 3, 3, 1, 2)]
    [InlineData(16, 16, 32, 3, 3, 1, 1, 1)] // N = 8 below: more elements than one grid's threads, the grid-stride loop wraps
    public void Im2col_and_col2im_match_the_cpu(int height, int width, int channels, int kernelHeight, int kernelWidth, int stride, int padding, int groups)
    {
        var cuda = fixture.Require();
        var g = new ConvGeometry(height, width, channels, kernelHeight, kernelWidth, stride, padding, groups);
        foreach (int examples in height == 16 ? new[] { 8 } : new[] { 1, 3 })
        {
            string where = Describe(g, examples);
            int imageLength = examples * g.InputElements, columnsLength = examples * g.OutputPositions * g.PatchLength;
            var images = Host.Normal(11 + examples, imageLength);
            var cpuColumns = _cpu.Upload(new float[columnsLength]);
            _cpu.Im2Col(_cpu.Upload(images), g, cpuColumns);
            var gpuColumns = cuda.Upload(NaNs(columnsLength));
            cuda.Im2Col(cuda.Upload(images), g, gpuColumns);
            SameBits(cpuColumns.ToArray(), gpuColumns.ToArray(), $"Im2Col {where}");

            var columns = Host.Normal(21 + examples, columnsLength);
            var start = Host.Normal(31 + examples, imageLength);
            foreach (bool accumulate in new[] { false, true })
            {
                float[] Cpu(float[] cols, float[] initial)
                {
                    var x = _cpu.Upload(initial);
                    _cpu.Col2Im(_cpu.Upload(cols), g, x, accumulate);
                    return x.ToArray();
                }
                float[] Gpu()
                {
                    var x = cuda.Upload(accumulate ? start : NaNs(imageLength));
                    cuda.Col2Im(cuda.Upload(columns), g, x, accumulate);
                    return x.ToArray();
                }
                SameSum(Cpu(columns, start), Gpu(), Gpu(), Cpu(Abs(columns), Abs(start)), g.KernelHeight * g.KernelWidth + 1,
                        $"Col2Im {where} accumulate={accumulate}");
            }
        }
    }

    [Theory]
    [InlineData(7, 5, 3, 3, 3, 1, 1)] // overlapping windows: indices repeat within a row
    [InlineData(7, 5, 3, 3, 3, 2, 1)]
    [InlineData(7, 5, 3, 3, 3, 2, 0)]
    [InlineData(7, 5, 3, 2, 2, 2, 0)] // tiling windows, odd sizes cut the last row and column
    [InlineData(7, 5, 3, 2, 3, 1, 1)]
    [InlineData(6, 6, 4, 3, 2, 2, 1)]
    [InlineData(7, 5, 3, 1, 1, 1, 0)]
    [InlineData(8, 8, 2, 5, 5, 2, 2)]
    [InlineData(32, 32, 16, 3, 3, 2, 1)] // N = 4 below: larger than one tile of the scatter per row
    public void Pooling_gather_and_scatter_match_the_cpu(int height, int width, int channels, int kernelHeight, int kernelWidth, int stride, int padding)
    {
        var cuda = fixture.Require();
        var g = new PoolGeometry(height, width, channels, kernelHeight, kernelWidth, stride, padding);
        int windowsPerPixel = ((kernelHeight + stride - 1) / stride) * ((kernelWidth + stride - 1) / stride);
        foreach (int examples in height == 32 ? new[] { 4 } : new[] { 1, 2 })
            foreach (bool ties in new[] { false, true })
            {
                string where = $"{Describe(g, examples)}{(ties ? ", tied values" : "")}";
                int imageLength = examples * g.InputElements, outputLength = examples * g.OutputElements;
                // Small whole numbers tie often: the first maximum in window order must win on both backends.
                var images = Host.Normal(41 + examples, imageLength).Select(v => ties ? MathF.Round(v * 1.5f) : v).ToArray();

                var cpuMax = _cpu.Upload(new float[outputLength]);
                var cpuArgmax = _cpu.Upload(new float[outputLength]);
                _cpu.MaxPool(_cpu.Upload(images), g, cpuMax, cpuArgmax);
                var gpuMax = cuda.Upload(NaNs(outputLength));
                var gpuArgmax = cuda.Upload(NaNs(outputLength));
                cuda.MaxPool(cuda.Upload(images), g, gpuMax, gpuArgmax);
                var argmax = cpuArgmax.ToArray();
                SameBits(cpuMax.ToArray(), gpuMax.ToArray(), $"MaxPool values {where}");
                SameBits(argmax, gpuArgmax.ToArray(), $"MaxPool argmax {where}");

                var cpuAverage = _cpu.Upload(new float[outputLength]);
                _cpu.AvgPool(_cpu.Upload(images), g, cpuAverage);
                float[] GpuAverage()
                {
                    var y = cuda.Upload(NaNs(outputLength));
                    cuda.AvgPool(cuda.Upload(images), g, y);
                    return y.ToArray();
                }
                var magnitude = _cpu.Upload(new float[outputLength]);
                _cpu.AvgPool(_cpu.Upload(Abs(images)), g, magnitude);
                SameSum(cpuAverage.ToArray(), GpuAverage(), GpuAverage(), magnitude.ToArray(), g.KernelHeight * g.KernelWidth + 1, $"AvgPool {where}");

                var cotangent = Host.Normal(51 + examples, outputLength);
                var start = Host.Normal(61 + examples, imageLength);
                foreach (bool accumulate in new[] { false, true })
                {
                    float[] Cpu(float[] dy, float[] initial)
                    {
                        var dx = _cpu.Upload(initial);
                        _cpu.AvgPoolBackward(_cpu.Upload(dy), g, dx, accumulate);
                        return dx.ToArray();
                    }
                    float[] Gpu()
                    {
                        var dx = cuda.Upload(accumulate ? start : NaNs(imageLength));
                        cuda.AvgPoolBackward(cuda.Upload(cotangent), g, dx, accumulate);
                        return dx.ToArray();
                    }
                    SameSum(Cpu(cotangent, start), Gpu(), Gpu(), Cpu(Abs(cotangent), Abs(start)), windowsPerPixel + 1,
                            $"AvgPoolBackward {where} accumulate={accumulate}");
                }

                // Max pooling's JVP and VJP: one index set [N, Ho·Wo·C] applied to R = 3N channel copies.
                int copies = 3 * examples;
                var source = Host.Normal(71 + examples, copies * g.InputElements);
                var cpuGathered = _cpu.Upload(new float[copies * g.OutputElements]);
                _cpu.GatherColumns(_cpu.Upload(source), g.InputElements, _cpu.Upload(argmax), cpuGathered);
                var gpuGathered = cuda.Upload(NaNs(copies * g.OutputElements));
                cuda.GatherColumns(cuda.Upload(source), g.InputElements, cuda.Upload(argmax), gpuGathered);
                SameBits(cpuGathered.ToArray(), gpuGathered.ToArray(), $"GatherColumns R={copies} {where}");

                var values = Host.Normal(81 + examples, copies * g.OutputElements);
                var initial = Host.Normal(91 + examples, copies * g.InputElements);
                CheckScatter(cuda, values, argmax, g.InputElements, initial, windowsPerPixel, $"ScatterAddColumns R={copies} {where}");
            }
    }

    private void CheckScatter(CudaBackend cuda, float[] values, float[] indices, int destinationColumns, float[] initial, int repeats, string where)
    {
        foreach (bool accumulate in new[] { false, true })
        {
            float[] Cpu(float[] source, float[] start)
            {
                var d = _cpu.Upload(start);
                _cpu.ScatterAddColumns(_cpu.Upload(source), _cpu.Upload(indices), destinationColumns, d, accumulate);
                return d.ToArray();
            }
            float[] Gpu()
            {
                var d = cuda.Upload(accumulate ? initial : NaNs(initial.Length));
                cuda.ScatterAddColumns(cuda.Upload(values), cuda.Upload(indices), destinationColumns, d, accumulate);
                return d.ToArray();
            }
            SameSum(Cpu(values, initial), Gpu(), Gpu(), Cpu(Abs(values), Abs(initial)), repeats + 1, $"{where} accumulate={accumulate}");
        }
    }

    /// <summary>Indices that repeat many times within a row, inside one tile of the kernel and across tiles
    /// (rows of 2·128 + 37 values scattered into 50 columns).</summary>
    [Fact]
    public void Scatter_add_with_many_repeated_indices_matches_the_cpu()
    {
        var cuda = fixture.Require();
        const int examples = 2, copies = 6, columns = 2 * CudaBackend.ScatterTile + 37, destinationColumns = 50;
        var random = new System.Random(7);
        var indices = Enumerable.Range(0, examples * columns).Select(_ => (float)random.Next(destinationColumns)).ToArray();
        int repeats = Enumerable.Range(0, examples).Max(n => indices.Skip(n * columns).Take(columns).GroupBy(v => v).Max(group => group.Count()));
        CheckScatter(cuda, Host.Normal(101, copies * columns), indices, destinationColumns, Host.Normal(102, copies * destinationColumns), repeats,
                     $"ScatterAddColumns R={copies} N={examples} m={columns} into {destinationColumns} columns (random indices)");
    }

    [Fact]
    public void Per_column_scale_and_reciprocal_square_root_match_the_cpu_bit_for_bit()
    {
        var cuda = fixture.Require();
        const int rows = 37, columns = 13;
        var a = Host.Normal(111, rows * columns);
        var scale = Host.Normal(112, columns);
        var start = Host.Normal(113, rows * columns);
        foreach (bool accumulate in new[] { false, true })
        {
            var cpu = _cpu.Upload(start);
            _cpu.ScaleColumns(_cpu.Upload(a), _cpu.Upload(scale), cpu, accumulate);
            var gpu = cuda.Upload(accumulate ? start : NaNs(start.Length));
            cuda.ScaleColumns(cuda.Upload(a), cuda.Upload(scale), gpu, accumulate);
            SameBits(cpu.ToArray(), gpu.ToArray(), $"ScaleColumns rows={rows} columns={columns} accumulate={accumulate}");
        }
        var variance = Host.Normal(114, 1000).Select(v => v * v).ToArray();
        var cpuInverse = _cpu.Upload(new float[variance.Length]);
        _cpu.ReciprocalSqrt(_cpu.Upload(variance), 1e-5f, cpuInverse);
        var gpuInverse = cuda.Upload(NaNs(variance.Length));
        cuda.ReciprocalSqrt(cuda.Upload(variance), 1e-5f, gpuInverse);
        SameBits(cpuInverse.ToArray(), gpuInverse.ToArray(), "ReciprocalSqrt ε=1e-5");
    }

    [Fact]
    public void A_view_that_does_not_fit_the_geometry_is_refused_before_the_launch()
    {
        var cuda = fixture.Require();
        var g = new ConvGeometry(7, 5, 4, 3, 3, 1, 1, 2);
        var images = cuda.Upload(new float[2 * g.InputElements]);
        var error = Assert.Throws<ArgumentException>(() => cuda.Im2Col(images, g, cuda.Upload(new float[2 * g.OutputPositions * g.PatchLength - 1])));
        Assert.Contains("Im2Col", error.Message);
        Assert.Contains($"{2 * g.OutputPositions * g.PatchLength}", error.Message);
        var pool = new PoolGeometry(7, 5, 4, 2, 2, 2, 0);
        var partial = Assert.Throws<ArgumentException>(() => cuda.MaxPool(cuda.Upload(new float[g.InputElements + 1]), pool, images, images));
        Assert.Contains("MaxPool", partial.Message);
    }
}
