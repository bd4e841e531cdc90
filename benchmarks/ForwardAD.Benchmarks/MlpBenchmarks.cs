using BenchmarkDotNet.Attributes;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Benchmarks;

/// <summary>
/// The core benchmark of issue 2: MLP depth 6 (six weight matrices), width 1024, input 3072,
/// 10 classes, batch 512, float32. Tangents on every pre-activation are drawn once in setup (the
/// PyTorch peer also draws them outside its timing), so the rows time the passes themselves.
/// </summary>
[MemoryDiagnoser]
public class MlpBenchmarks
{
    public const int Inputs = 3072, Width = 1024, Classes = 10, Batch = 512, Depth = 6;

    private Plan _forward = null!, _jvp1 = null!, _jvp6 = null!, _jvp16 = null!, _backprop = null!;

    [GlobalSetup]
    public void Setup()
    {
        var model = MlpSpec.Uniform(Inputs, Depth, Width, Classes, ElementwiseFunction.Relu).Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        _forward = Compile(store, new PlanOptions(Batch));
        _jvp1 = CompileJvp(store, 1);
        _jvp6 = CompileJvp(store, Depth);
        _jvp16 = CompileJvp(store, 16);
        _backprop = Compile(store, new PlanOptions(Batch) { Gradients = true });
    }

    internal static Plan Compile(ParameterStore store, PlanOptions options)
    {
        var plan = Plan.Compile(store, options);
        var x = new float[Batch * Inputs];
        RandomFill.Normal(new RandomKey(1, 1), 0, 0f, 1f, x);
        var y = new float[Batch];
        for (int i = 0; i < Batch; i++) y[i] = i % Classes;
        plan.SetInput(store.Model["x"], x);
        plan.SetInput(store.Model["y"], y);
        return plan;
    }

    /// <summary>K channels of per-example tangents on every pre-activation, stored once. For K = depth,
    /// channel l carries layer l's tangent only (one channel per layer).</summary>
    internal static Plan CompileJvp(ParameterStore store, int channels, bool reuse = true)
    {
        var layers = store.Model.Sites;
        var plan = Compile(store, new PlanOptions(Batch)
        {
            TangentCount = channels,
            ReuseBuffers = reuse,
            Seeds = [.. layers.Select(l => new TangentSeed(l.Node))],
        });
        for (int l = 0; l < layers.Length; l++)
        {
            var seed = CpuBackend.Span(plan.Seed(layers[l].Node));
            RandomFill.Normal(new RandomKey(2, (ulong)l), 0, 0f, 1f, seed);
            if (channels == layers.Length)
            {
                int perChannel = seed.Length / channels;
                for (int k = 0; k < channels; k++)
                    if (k != l) seed.Slice(k * perChannel, perChannel).Clear();
            }
        }
        return plan;
    }

    [Benchmark(Baseline = true)]
    public void Forward() => _forward.Forward();

    [Benchmark]
    public void JvpK1() => _jvp1.ForwardJvp();

    [Benchmark]
    public void JvpK6PerLayer() => _jvp6.ForwardJvp();

    [Benchmark]
    public void JvpK16() => _jvp16.ForwardJvp();

    [Benchmark]
    public void Backprop()
    {
        _backprop.Forward();
        _backprop.Backward();
    }
}
