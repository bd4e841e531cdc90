using System.Diagnostics;
using ForwardAD.Backends;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Benchmarks;

/// <summary>
/// `conv-gemm-rate`: issue 12's second target, the benchmark CNN's convolution GEMMs against the machine's GEMM rate. The
/// GEMMs of <see cref="CnnBenchmarks"/>'s forward (cols(x) Wᵀ: conv1 [128·32·32, 27] × [27, 32], conv2 [128·16·16, 288] ×
/// [288, 64]) and the reference shape of the MLP benchmark (512 × 1024 × 1024, A Bᵀ), through the library's default GEMM
/// (OpenBLAS when installed), at whatever thread count OPENBLAS_NUM_THREADS sets; medians of single calls after warm-up.
/// Then the same convolutions as the library runs them, in passes of a few images whose columns stay in cache; then their VJPs
/// by each of the CPU's kernels (im2col, direct), which is how <see cref="CpuBackend.ConvolutionVjps"/> chose.
/// </summary>
internal static class ConvGemmRate
{
    public static int Run(int repeats)
    {
        var gemm = Gemm.CreateDefault();
        double Rate(int m, int n, int k)
        {
            var a = new float[m * k];
            var b = new float[n * k];
            var c = new float[m * n];
            for (int i = 0; i < a.Length; i++) a[i] = (i % 7) * 0.1f;
            for (int i = 0; i < b.Length; i++) b[i] = (i % 5) * 0.1f;
            void Call() => gemm.Multiply(Transpose.No, Transpose.Yes, m, n, k, 1f, a, k, b, k, 0f, c, n);
            Call();
            Call();
            var samples = new double[repeats];
            for (int r = 0; r < repeats; r++)
            {
                long start = Stopwatch.GetTimestamp();
                Call();
                samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            }
            Array.Sort(samples);
            return 2.0 * m * n * k / samples[repeats / 2] / 1e9;
        }
        double reference = Rate(512, 1024, 1024);
        Console.WriteLine($"{gemm.Name} GEMM, OPENBLAS_NUM_THREADS={Environment.GetEnvironmentVariable("OPENBLAS_NUM_THREADS") ?? "(unset)"}, medians of {repeats} calls");
        Console.WriteLine("| GEMM | GFLOP/s | / 512×1024×1024 rate |");
        Console.WriteLine("|---|---:|---:|");
        Console.WriteLine($"| reference 512×1024×1024 | {reference:F1} | 100 % |");
        foreach (var (name, m, n, k) in new[] { ("conv1 cols(x)Wᵀ 131072×32×27", 131072, 32, 27), ("conv2 cols(x)Wᵀ 32768×64×288", 32768, 64, 288) })
        {
            double rate = Rate(m, n, k);
            Console.WriteLine($"| {name} | {rate:F1} | {rate / reference:P0} |");
        }
        Console.WriteLine();
        Console.WriteLine("The same convolutions as the library runs them, im2col + GEMM in passes of a few images (`Backend.ConvolutionPassElements`), per pass size: the GEMMs alone (columns still in cache) and the whole convolution; then the direct convolution (implicit GEMM, no columns: both columns are the whole convolution). * = the CPU default.");
        Console.WriteLine("| convolution | images per pass | GEMMs GFLOP/s | GEMMs / reference | im2col + GEMM ms | im2col + GEMM / reference |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        var backend = new CpuBackend { DirectPatchLength = 0 };
        var direct = new CpuBackend { DirectPatchLength = int.MaxValue };
        int libraryDirectPatch = new CpuBackend().DirectPatchLength; // the default: which path the library takes
        foreach (var (name, g, outputs) in new[] { ("conv1", new ConvGeometry(32, 32, 3, 3, 3, 1, 1, 1), 32), ("conv2", new ConvGeometry(16, 16, 32, 3, 3, 1, 1, 1), 64),
            ("deeper 8×8×128→128 (not in the CNN)", new ConvGeometry(8, 8, 128, 3, 3, 1, 1, 1), 128), ("deeper 4×4×256→256 (not in the CNN)", new ConvGeometry(4, 4, 256, 3, 3, 1, 1, 1), 256) })
        {
            const int batch = 128;
            var x = new View(backend.Allocate(batch * g.InputElements));
            var w = new View(backend.Allocate(outputs * g.PatchLength));
            var y = new View(backend.Allocate(batch * g.OutputPositions * outputs));
            var columns = new View(backend.Allocate(batch * g.OutputPositions * g.PatchLength));
            CpuBackend.Span(x).Fill(0.5f);
            CpuBackend.Span(w).Fill(0.25f);
            int libraryPass = Math.Clamp(backend.ConvolutionPassElements / (g.OutputPositions * g.PatchLength), 1, batch);
            double flops = 2.0 * batch * g.OutputPositions * outputs * g.PatchLength;
            foreach (int perPass in new[] { batch, 32, 8, 4, 2, 1, libraryPass }.Distinct().Order())
            {
                // Returns the seconds spent in the GEMMs; the caller times the whole pass loop.
                double Conv()
                {
                    long gemmTicks = 0;
                    for (int first = 0; first < batch; first += perPass)
                    {
                        int count = Math.Min(perPass, batch - first), rows = count * g.OutputPositions;
                        var cols = columns.Slice(0, rows * g.PatchLength);
                        backend.Im2Col(x.Slice(first * g.InputElements, count * g.InputElements), g, cols);
                        long start = Stopwatch.GetTimestamp();
                        backend.Gemm(Transpose.No, Transpose.Yes, rows, outputs, g.PatchLength, 1f, cols, g.PatchLength, w, g.PatchLength, 0f,
                            y.Slice(first * g.OutputPositions * outputs, rows * outputs), outputs);
                        gemmTicks += Stopwatch.GetTimestamp() - start;
                    }
                    return (double)gemmTicks / Stopwatch.Frequency;
                }
                Conv();
                Conv();
                var total = new double[repeats];
                var gemms = new double[repeats];
                for (int r = 0; r < repeats; r++)
                {
                    long start = Stopwatch.GetTimestamp();
                    gemms[r] = Conv();
                    total[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
                }
                Array.Sort(total);
                Array.Sort(gemms);
                double gemmRate = flops / gemms[repeats / 2] / 1e9, t = total[repeats / 2];
                Console.WriteLine($"| {name} | {perPass}{(perPass == libraryPass && g.PatchLength > libraryDirectPatch ? "*" : "")} | {gemmRate:F1} | {gemmRate / reference:P0} | {t * 1e3:F2} | {flops / t / 1e9 / reference:P0} |");
            }
            // The direct (implicit-GEMM) convolution: no columns, image by image; the library's choice for short patches.
            // With OPENBLAS_NUM_THREADS > 1, OpenBLAS's idle threads keep spinning (sched_yield) for ~0.1 s after each GEMM
            // call and would take the second core from our own kernel's helper: wait until they have parked.
            Thread.Sleep(300);
            var samples = new double[repeats];
            for (int r = -2; r < repeats; r++)
            {
                long start = Stopwatch.GetTimestamp();
                direct.Convolve(x, g, w, outputs, 0f, y, columns);
                if (r >= 0) samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            }
            Array.Sort(samples);
            double rate = flops / samples[repeats / 2] / 1e9;
            string chosen = g.PatchLength <= libraryDirectPatch ? "*" : "";
            Console.WriteLine($"| {name} | direct{chosen} | {rate:F1} | {rate / reference:P0} | {samples[repeats / 2] * 1e3:F2} | {rate / reference:P0} |");
        }
        Vjps(repeats, reference);
        return 0;
    }

    /// <summary>The convolutions' VJPs by each of the CPU's kernels (<see cref="CpuBackend.ConvolutionVjps"/>): x̄ = col2im(s̄ W) and
    /// W̄ = s̄ᵀ cols(x) at batch 128, the backend's threads as OPENBLAS_NUM_THREADS sets them. On a shared machine the kernels are
    /// compared in interleaved rounds (one call of each per round, after two warm-up rounds), so that a busy spell slows all of them;
    /// the minimum over rounds is the steadier figure, the median is also given. GFLOP/s count the useful products,
    /// 2·B·Ho·Wo·kh·kw·C·O, at the minimum.</summary>
    private static void Vjps(int repeats, double reference)
    {
        Console.WriteLine();
        Console.WriteLine($"Convolution VJPs by kernel (CpuBackend.ConvolutionVjps; {new CpuBackend().Threads} backend thread(s)), batch 128, 3×3, padding 1, " +
            $"{repeats} interleaved rounds. * = Automatic's choice.");
        Console.WriteLine("| convolution | VJP | kernel | min ms | median ms | GFLOP/s | / reference |");
        Console.WriteLine("|---|---|---|---:|---:|---:|---:|");
        foreach (var (name, height, channels, outputs) in new[] { ("conv1", 32, 3, 32), ("conv2", 16, 32, 64), ("16×16×32→40", 16, 32, 40),
            ("16×16×16→32", 16, 16, 32), ("16×16×64→64", 16, 64, 64), ("8×8×32→128", 8, 32, 128), ("8×8×64→128", 8, 64, 128), ("8×8×128→128", 8, 128, 128) })
        {
            const int batch = 128;
            var g = new ConvGeometry(height, height, channels, 3, 3, 1, 1, 1);
            var automatic = new CpuBackend();
            var x = new View(automatic.Allocate(batch * g.InputElements));
            var w = new View(automatic.Allocate(outputs * g.PatchLength));
            var dy = new View(automatic.Allocate(batch * g.OutputPositions * outputs));
            var dx = new View(automatic.Allocate(x.Length));
            var dw = new View(automatic.Allocate(w.Length));
            var scratch = new View(automatic.Allocate((int)Math.Max((long)batch * g.OutputPositions * g.PatchLength, CpuBackend.ConvolutionVjpScratch(g, outputs, batch))));
            RandomFill.Normal(new RandomKey(1, 1), 0, 0f, 1f, CpuBackend.Span(x));
            RandomFill.Normal(new RandomKey(1, 2), 0, 0f, 1f, CpuBackend.Span(w));
            RandomFill.Normal(new RandomKey(1, 3), 0, 0f, 1f, CpuBackend.Span(dy));
            double flops = 2.0 * batch * g.OutputPositions * outputs * g.PatchLength;
            foreach (var (vjp, weight) in new[] { ("x̄", false), ("W̄", true) })
            {
                var chosen = automatic.ConvolutionVjpKernel(g, outputs, batch, scratch.Length, weight);
                // Each kernel that applies here (one that falls back to im2col would only repeat the im2col row).
                var backends = new[] { ConvolutionVjpKernels.Im2Col, ConvolutionVjpKernels.Direct }
                    .Select(k => new CpuBackend { ConvolutionVjps = k })
                    .Where(b => b.ConvolutionVjpKernel(g, outputs, batch, scratch.Length, weight) == b.ConvolutionVjps).ToArray();
                var samples = backends.Select(_ => new double[repeats]).ToArray();
                for (int round = -2; round < repeats; round++)
                    for (int i = 0; i < backends.Length; i++)
                    {
                        long start = Stopwatch.GetTimestamp();
                        if (weight) backends[i].ConvolutionWeightGradient(x, g, dy, outputs, dw, false, scratch);
                        else backends[i].ConvolveTransposed(dy, g, w, outputs, dx, false, scratch);
                        if (round >= 0) samples[i][round] = Stopwatch.GetElapsedTime(start).TotalSeconds;
                    }
                for (int i = 0; i < backends.Length; i++)
                {
                    Array.Sort(samples[i]);
                    var kernels = backends[i].ConvolutionVjps;
                    double rate = flops / samples[i][0] / 1e9;
                    Console.WriteLine($"| {name} | {vjp} | {kernels}{(kernels == chosen ? "*" : "")} | {samples[i][0] * 1e3:F2} | {samples[i][repeats / 2] * 1e3:F2} | {rate:F1} | {rate / reference:P0} |");
                }
            }
        }
    }
}
