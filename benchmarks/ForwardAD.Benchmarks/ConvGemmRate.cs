using System.Diagnostics;
using ForwardAD.Tensors;

namespace ForwardAD.Benchmarks;

/// <summary>
/// `conv-gemm-rate`: issue 12's second target, the benchmark CNN's convolution GEMMs against the machine's GEMM rate. The
/// GEMMs of <see cref="CnnBenchmarks"/>'s forward (cols(x) Wᵀ: conv1 [128·32·32, 27] × [27, 32], conv2 [128·16·16, 288] ×
/// [288, 64]) and the reference shape of the MLP benchmark (512 × 1024 × 1024, A Bᵀ), through the library's default GEMM
/// (OpenBLAS when installed), at whatever thread count OPENBLAS_NUM_THREADS sets; medians of single calls after warm-up.
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
        return 0;
    }
}
