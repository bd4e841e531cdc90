using BenchmarkDotNet.Attributes;
using ForwardAD.Tensors;

namespace ForwardAD.Benchmarks;

/// <summary>OpenBLAS against the managed kernel on the dominant shape of the MLP step
/// (512×1024 · 1024×1024ᵀ): the measurement behind the default GEMM choice.</summary>
[MemoryDiagnoser]
public class GemmBenchmarks
{
    private const int M = 512, N = 1024, K = 1024;
    private readonly float[] _a = new float[M * K], _b = new float[N * K], _c = new float[M * N];
    private readonly ManagedGemm _managed = new();
    private readonly Gemm? _openBlas = OpenBlasGemm.TryCreate();

    [Benchmark(Baseline = true)]
    public void Managed() => _managed.Multiply(Transpose.No, Transpose.Yes, M, N, K, 1f, _a, K, _b, K, 0f, _c, N);

    [Benchmark]
    public void OpenBlas() => (_openBlas ?? _managed).Multiply(Transpose.No, Transpose.Yes, M, N, K, 1f, _a, K, _b, K, 0f, _c, N);

    public static double Flops => 2.0 * M * N * K;
}
