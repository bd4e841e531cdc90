using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>
/// The CPU's convolution VJPs without im2col, the direct kernels (<see cref="DirectWeightGradient"/>, the transposed convolution
/// through <see cref="DirectConvolution"/>), against im2col + GEMM (the path the PyTorch golden values check) on the same data:
/// kernels 1×1 to 5×5 (and 3×1, 1×3, which stay on im2col), paddings
/// 0–2 (beyond kh − 1 too), odd image sizes, one image and several, channel counts that are not multiples of 8, overwrite (stale NaNs
/// in x̄ and W̄ must not leak) and accumulate, at 1 and 3 threads (the same bits).
/// Tolerance: each element is a float32 sum of n products (W̄: n = N·Ho·Wo positions; x̄: n = kh·kw·O taps), plus the value it adds
/// to. Any summation order computes it within γ_n·Σ|terms| of the exact sum (γ_n = n·u/(1 − n·u), u = 2⁻²⁴: Higham, Accuracy and
/// Stability of Numerical Algorithms, §3.1), and the two paths add in different orders, so they may differ by 2γ_n·Σ|terms|; Σ|terms|
/// is computed in float64. A wrong tap, shift or row adds or drops whole products, about Σ|terms|/n, far above that for these n.
/// </summary>
public class DirectConvolutionVjpTests
{
    private static readonly bool HardwareFma = Vector256.IsHardwareAccelerated && Fma.IsSupported;

    [Theory]
    // height, width, channels, outputs, kernel height, kernel width, padding, images
    [InlineData(5, 7, 3, 5, 3, 3, 1, 1)]
    [InlineData(6, 5, 5, 7, 1, 1, 0, 3)]
    [InlineData(9, 8, 3, 10, 5, 5, 2, 2)]
    [InlineData(7, 7, 6, 9, 3, 3, 0, 2)]
    [InlineData(4, 6, 2, 3, 5, 5, 2, 3)]
    [InlineData(5, 5, 3, 4, 1, 1, 2, 2)]
    [InlineData(3, 3, 1, 1, 3, 3, 2, 2)]
    [InlineData(8, 3, 4, 6, 3, 1, 1, 1)]
    [InlineData(5, 6, 3, 5, 1, 3, 2, 2)]
    [InlineData(5, 7, 3, 16, 3, 3, 1, 2)]
    [InlineData(9, 8, 5, 32, 5, 5, 2, 3)]
    [InlineData(7, 5, 2, 16, 1, 1, 2, 2)]
    [InlineData(5, 7, 16, 5, 3, 3, 1, 2)]
    [InlineData(6, 5, 16, 16, 5, 5, 2, 3)]
    [InlineData(4, 4, 32, 8, 1, 1, 0, 2)]
    [InlineData(7, 6, 16, 3, 3, 3, 0, 1)]
    [InlineData(9, 9, 16, 32, 5, 5, 1, 2)]
    [InlineData(6, 7, 16, 16, 3, 3, 2, 2)]
    public void Vjps_match_im2col(int height, int width, int channels, int outputs, int kernelHeight, int kernelWidth, int padding, int images)
    {
        var g = new ConvGeometry(height, width, channels, kernelHeight, kernelWidth, 1, padding, 1);
        var x = Problem.Normal(1, images * g.InputElements, 1f);
        var w = Problem.Normal(2, outputs * g.PatchLength, 1f);
        var dy = Problem.Normal(3, images * g.OutputPositions * outputs, 1f);
        var staleX = Problem.Normal(4, x.Length, 1f);
        var staleW = Problem.Normal(5, w.Length, 1f);
        var (weightBound, inputBound) = AbsoluteSums(g, outputs, x, w, dy);
        foreach (var kernels in new[] { ConvolutionVjpKernels.Direct })
            foreach (bool accumulate in new[] { false, true })
            {
                float[]? firstInput = null, firstWeight = null;
                foreach (int threads in new[] { 1, 3 })
                {
                    var (expectedInput, expectedWeight) = Run(new CpuBackend { ConvolutionVjps = ConvolutionVjpKernels.Im2Col, Threads = threads },
                        g, outputs, x, w, dy, accumulate ? staleX : null, accumulate ? staleW : null);
                    var (input, weight) = Run(new CpuBackend { ConvolutionVjps = kernels, Threads = threads }, g, outputs, x, w, dy,
                        accumulate ? staleX : null, accumulate ? staleW : null);
                    string what = $"{kernels}, accumulate {accumulate}, {threads} thread(s)";
                    string taken(bool weight) => new CpuBackend { ConvolutionVjps = kernels }.ConvolutionVjpKernel(g, outputs, images, 1 << 20, weight).ToString();
                    AssertWithin(expectedWeight, weight, weightBound, images * g.OutputPositions, accumulate ? staleW : null, $"W̄ ({taken(true)}), {what}");
                    AssertWithin(expectedInput, input, inputBound, kernelHeight * kernelWidth * outputs, accumulate ? staleX : null, $"x̄ ({taken(false)}), {what}");
                    firstInput ??= input;
                    firstWeight ??= weight;
                    Assert.True(firstInput.AsSpan().SequenceEqual(input), $"x̄ differs at {threads} threads from 1 thread ({kernels}, accumulate {accumulate})");
                    Assert.True(firstWeight.AsSpan().SequenceEqual(weight), $"W̄ differs at {threads} threads from 1 thread ({kernels}, accumulate {accumulate})");
                }
            }
    }

    /// <summary>Which geometries of <see cref="Vjps_match_im2col"/> the direct kernels take (so that the theory covers them, not
    /// only their im2col fallback).</summary>
    [Theory]
    [InlineData(5, 7, 3, 16, 3, 3, 1, true, false)]
    [InlineData(9, 8, 5, 32, 5, 5, 2, true, false)]
    [InlineData(7, 5, 2, 16, 1, 1, 2, true, false)]
    [InlineData(5, 7, 16, 5, 3, 3, 1, false, true)]
    [InlineData(6, 5, 16, 16, 5, 5, 2, true, true)]
    [InlineData(4, 4, 32, 8, 1, 1, 0, false, true)]
    [InlineData(9, 9, 16, 32, 5, 5, 1, true, true)]
    [InlineData(6, 7, 16, 16, 3, 3, 2, true, true)]
    [InlineData(8, 3, 4, 6, 3, 1, 1, false, false)]
    [InlineData(3, 3, 1, 1, 3, 3, 2, false, false)]
    public void Kernels_cover_the_cases_meant_for_them(int height, int width, int channels, int outputs, int kernelHeight, int kernelWidth, int padding,
        bool weight, bool input)
    {
        var g = new ConvGeometry(height, width, channels, kernelHeight, kernelWidth, 1, padding, 1);
        const int images = 3, scratch = 1 << 20;
        var direct = new CpuBackend { ConvolutionVjps = ConvolutionVjpKernels.Direct };
        Assert.Equal(weight && HardwareFma ? ConvolutionVjpKernels.Direct : ConvolutionVjpKernels.Im2Col, direct.ConvolutionVjpKernel(g, outputs, images, scratch, weightGradient: true));
        Assert.Equal(input && HardwareFma ? ConvolutionVjpKernels.Direct : ConvolutionVjpKernels.Im2Col, direct.ConvolutionVjpKernel(g, outputs, images, scratch, weightGradient: false));
    }

    /// <summary>The default backend's choices, as measured (<see cref="CpuBackend.ConvolutionVjps"/>), with the scratch a plan sizes: the
    /// benchmark CNN's conv1 (W̄ direct, x̄ im2col: C = 3) and conv2 (both direct); 128 outputs keep W̄ on im2col; stride 2 and groups
    /// stay on im2col.</summary>
    [Theory]
    [InlineData(32, 32, 3, 32, 1, 1, true, false)]
    [InlineData(16, 16, 32, 64, 1, 1, true, true)]
    [InlineData(8, 8, 128, 128, 1, 1, false, true)]
    [InlineData(16, 16, 32, 64, 2, 1, false, false)]
    [InlineData(16, 16, 32, 64, 1, 2, false, false)]
    public void Automatic_takes_the_measured_kernels(int height, int width, int channels, int outputs, int stride, int groups, bool weight, bool input)
    {
        var g = new ConvGeometry(height, width, channels, 3, 3, stride, 1, groups);
        const int batch = 128;
        long scratch = Math.Max((long)batch * g.OutputPositions * g.PatchLength, CpuBackend.ConvolutionVjpScratch(g, outputs, batch));
        var backend = new CpuBackend();
        Assert.Equal(weight && HardwareFma ? ConvolutionVjpKernels.Direct : ConvolutionVjpKernels.Im2Col, backend.ConvolutionVjpKernel(g, outputs, batch, (int)scratch, weightGradient: true));
        Assert.Equal(input && HardwareFma ? ConvolutionVjpKernels.Direct : ConvolutionVjpKernels.Im2Col, backend.ConvolutionVjpKernel(g, outputs, batch, (int)scratch, weightGradient: false));
    }

    /// <summary>Every kernel's VJPs allocate nothing per call, split over 2 threads (work items made once per backend).</summary>
    [Theory]
    [InlineData(ConvolutionVjpKernels.Im2Col)]
    [InlineData(ConvolutionVjpKernels.Direct)]
    public void Vjps_allocate_nothing(ConvolutionVjpKernels kernels)
    {
        var g = new ConvGeometry(16, 16, 16, 3, 3, 1, 1, 1);
        const int outputs = 32, images = 16;
        var backend = new CpuBackend { ConvolutionVjps = kernels, Threads = 2 };
        View Make(long length) => new(backend.Allocate((int)length));
        var (x, w, dy) = (Make(images * g.InputElements), Make(outputs * g.PatchLength), Make(images * g.OutputPositions * outputs));
        var (dx, dw) = (Make(x.Length), Make(w.Length));
        var scratch = Make(Math.Max((long)images * g.OutputPositions * g.PatchLength, CpuBackend.ConvolutionVjpScratch(g, outputs, images)));
        Assert.Equal(kernels, backend.ConvolutionVjpKernel(g, outputs, images, scratch.Length, weightGradient: true));
        Allocations.AssertNone(_ =>
        {
            backend.ConvolveTransposed(dy, g, w, outputs, dx, accumulate: false, scratch);
            backend.ConvolutionWeightGradient(x, g, dy, outputs, dw, accumulate: true, scratch);
        }, warmUp: 2, steps: 3, $"{kernels} convolution VJPs at 2 threads");
    }

    /// <summary>x̄ and W̄ by one backend: from NaN (overwrite: nothing stale may leak) or from the given values (accumulate).</summary>
    private static (float[] Input, float[] Weight) Run(CpuBackend backend, in ConvGeometry g, int outputs, float[] x, float[] w, float[] dy,
        float[]? startInput, float[]? startWeight)
    {
        View Upload(float[] values)
        {
            var view = new View(backend.Allocate(values.Length));
            values.CopyTo(CpuBackend.Span(view));
            return view;
        }
        int images = x.Length / g.InputElements;
        long scratchLength = Math.Max((long)images * g.OutputPositions * g.PatchLength, CpuBackend.ConvolutionVjpScratch(g, outputs, images));
        var scratch = Upload(Enumerable.Repeat(float.NaN, (int)scratchLength).ToArray()); // stale scratch must not leak either
        var input = Upload(startInput ?? Enumerable.Repeat(float.NaN, x.Length).ToArray());
        var weight = Upload(startWeight ?? Enumerable.Repeat(float.NaN, w.Length).ToArray());
        backend.ConvolveTransposed(Upload(dy), g, Upload(w), outputs, input, startInput is not null, scratch);
        backend.ConvolutionWeightGradient(Upload(x), g, Upload(dy), outputs, weight, startWeight is not null, scratch);
        return (CpuBackend.Span(input).ToArray(), CpuBackend.Span(weight).ToArray());
    }

    /// <summary>Σ|terms| of every W̄ and x̄ element in float64, by the definition: W̄[o, ky, kx, c] = Σ_{n, oy, ox} s̄[n, oy, ox, o]·
    /// x[n, oy + ky − p, ox + kx − p, c] and x̄[n, iy, ix, c] = Σ_{ky, kx, o} s̄[n, iy + p − ky, ix + p − kx, o]·W[o, ky, kx, c].</summary>
    private static (double[] Weight, double[] Input) AbsoluteSums(in ConvGeometry g, int outputs, float[] x, float[] w, float[] dy)
    {
        int images = x.Length / g.InputElements;
        var weight = new double[w.Length];
        var input = new double[x.Length];
        for (int n = 0; n < images; n++)
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++)
                    for (int ky = 0; ky < g.KernelHeight; ky++)
                        for (int kx = 0; kx < g.KernelWidth; kx++)
                        {
                            int iy = oy + ky - g.Padding, ix = ox + kx - g.Padding;
                            if (iy < 0 || iy >= g.Height || ix < 0 || ix >= g.Width) continue;
                            for (int o = 0; o < outputs; o++)
                            {
                                double s = Math.Abs(dy[((n * g.OutputHeight + oy) * g.OutputWidth + ox) * outputs + o]);
                                for (int c = 0; c < g.Channels; c++)
                                {
                                    int pixel = ((n * g.Height + iy) * g.Width + ix) * g.Channels + c, tap = ((o * g.KernelHeight + ky) * g.KernelWidth + kx) * g.Channels + c;
                                    weight[tap] += s * Math.Abs(x[pixel]);
                                    input[pixel] += s * Math.Abs(w[tap]);
                                }
                            }
                        }
        return (weight, input);
    }

    /// <summary>|actual − expected| ≤ 2γ_{n+1}·(Σ|terms| + |start|) for every element (see the class), and finite.</summary>
    private static void AssertWithin(float[] expected, float[] actual, double[] absoluteSums, int terms, float[]? start, string what)
    {
        const double Unit = 1.0 / (1 << 24);
        double gamma = (terms + 1) * Unit / (1 - (terms + 1) * Unit);
        for (int i = 0; i < expected.Length; i++)
        {
            double scale = absoluteSums[i] + (start is null ? 0 : Math.Abs(start[i]));
            Assert.True(float.IsFinite(actual[i]), $"{what}: element {i} is {actual[i]}");
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 2 * gamma * scale,
                $"{what}: element {i} is {actual[i]:G9}, im2col gives {expected[i]:G9}; allowed {2 * gamma * scale:G3} (Σ|terms| {scale:G6}, {terms} terms)");
        }
    }
}
