using BenchmarkDotNet.Attributes;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Benchmarks;

/// <summary>
/// The benchmark transformer of the three-way comparison (issue 11), the same model on every side
/// (benchmarks/peers/torch_transformer.py, ForwardAD.TorchSharpPeer's tf_* rows): <see cref="TransformerSpec"/>
/// l2-h4-d128-t64 (2 pre-LN GPT-2 blocks, 4 heads, width 128, context 64, vocabulary 256, MLP ratio 4, exact GELU,
/// LayerNorm ε 1e-5), batch 32 sequences, float32; the loss is the batch mean of each sequence's mean next-token
/// cross-entropy. Initialisation as <see cref="ModelBuilder"/>'s defaults: nn.Linear's U(±1/√fan_in) weights with zero
/// biases, token table N(0, 1), positions N(0, 0.02²), LayerNorm γ = 1, β = 0. Sites (where the JVP's tangents enter):
/// the embedding and position outputs, every LayerNorm output, q, k, v, proj, fc1 (before GELU), fc2 and the head: 20.
/// Rows: forward; JVP K=1 with per-example tangents on every site, drawn once outside the timing; backprop (forward +
/// backward); whole AdamW steps by backprop, activation perturbation, DFA and GrAPE. Tokens are uniform in [0, 256)
/// with targets the inputs shifted by one (a window of 65 random bytes), eight batches that the steps cycle through
/// (as <see cref="StepBenchmarks"/>: a repeated batch is memorised and Adam's moments underflow into denormals).
/// </summary>
[MemoryDiagnoser]
public class TransformerBenchmarks
{
    public static readonly TransformerSpec Spec = new(Layers: 2, Heads: 4, Width: 128, Context: 64, Vocabulary: 256);
    public const int Batch = 32;

    private Plan _forward = null!, _jvp1 = null!, _backprop = null!;
    private (GradientEstimator Estimator, Optimizer Optimizer) _backpropStep, _apStep, _dfaStep, _grapeStep;
    private static readonly (float[] X, float[] Y)[] Batches = [.. Enumerable.Range(0, 8).Select(MakeBatch)];
    private long _step;

    /// <summary>Batch <paramref name="index"/>: each sequence a window of T + 1 uniform random bytes, x its first T, y its last T.</summary>
    private static (float[], float[]) MakeBatch(int index)
    {
        int T = Spec.Context;
        var window = new float[Batch * (T + 1)];
        RandomFill.Uniform(new RandomKey(21, (ulong)index), 0, 0f, Spec.Vocabulary, window);
        var (x, y) = (new float[Batch * T], new float[Batch * T]);
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < T; t++)
            {
                // Floor, clamped: a uniform float can round up to the bound itself.
                x[b * T + t] = Math.Min(MathF.Floor(window[b * (T + 1) + t]), Spec.Vocabulary - 1);
                y[b * T + t] = Math.Min(MathF.Floor(window[b * (T + 1) + t + 1]), Spec.Vocabulary - 1);
            }
        return (x, y);
    }

    [GlobalSetup]
    public void Setup()
    {
        var model = Spec.Build();
        _forward = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(Batch));
        _jvp1 = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1),
            new PlanOptions(Batch) { ReuseBuffers = true, Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node))] });
        for (int l = 0; l < model.Sites.Length; l++)
            RandomFill.Normal(new RandomKey(23, (ulong)l), 0, 0f, 1f, CpuBackend.Span(_jvp1.Seed(model.Sites[l].Node)));
        _backprop = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(Batch) { Gradients = true });
        _backpropStep = CreateStep(Guessers.Backprop);
        _apStep = CreateStep(Guessers.ActivationPerturbation());
        _dfaStep = CreateStep(Guessers.Dfa());
        _grapeStep = CreateStep(Guessers.Grape(new GrapeOptions()));
    }

    private static Plan Compile(ParameterStore store, PlanOptions options)
    {
        var plan = Plan.Compile(store, options);
        plan.SetInput(store.Model["x"], Batches[0].X);
        plan.SetInput(store.Model["y"], Batches[0].Y);
        return plan;
    }

    private static (GradientEstimator, Optimizer) CreateStep(Guesser guesser)
    {
        var store = ParameterStore.Initialize(Spec.Build(), new CpuBackend(), 1);
        return (guesser.Compile(store, Batch), new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), store));
    }

    private void Step((GradientEstimator Estimator, Optimizer Optimizer) run)
    {
        var (x, y) = Batches[_step % Batches.Length];
        run.Estimator.SetBatch(x, y);
        var (gradient, loss) = run.Estimator.Estimate(new RandomKey(27, 0).Derive((ulong)_step), _step);
        run.Optimizer.Step(new UpdateInputs(_step, loss, default), gradient);
        _step++;
    }

    [Benchmark(Baseline = true)]
    public void Forward() => _forward.Forward();

    [Benchmark]
    public void JvpK1() => _jvp1.ForwardJvp();

    [Benchmark]
    public void Backprop()
    {
        _backprop.Forward();
        _backprop.Backward();
    }

    [Benchmark]
    public void BackpropAdamW() => Step(_backpropStep);

    /// <summary>Activation perturbation with its defaults: one joint tangent channel, N(0, I) on every site.</summary>
    [Benchmark]
    public void ActivationPerturbationAdamW() => Step(_apStep);

    /// <summary>DFA: one feedback matrix per site, shared over positions ((site width) × V), the error projected to every site.</summary>
    [Benchmark]
    public void DfaAdamW() => Step(_dfaStep);

    /// <summary>GrAPE with its defaults: DFA plus the JVP that aligns each site's feedback matrix.</summary>
    [Benchmark]
    public void GrapeAdamW() => Step(_grapeStep);
}
