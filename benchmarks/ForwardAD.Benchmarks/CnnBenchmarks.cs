using BenchmarkDotNet.Attributes;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Benchmarks;

/// <summary>
/// The benchmark CNN of the three-way comparison (issues 11 and 12), the same network on every side
/// (benchmarks/peers/torch_cnn.py, ForwardAD.TorchSharpPeer): input 32×32×3 (channels last), batch 128 (issue 12), float32;
/// conv 32 3×3 pad 1 → batch norm (affine, training mode) → relu → max pool 2 → conv 64 3×3 pad 1 → batch norm → relu →
/// max pool 2 → flatten (4096) → linear 10 → softmax cross-entropy. Sites: conv1, bn1, conv2, bn2, head (the conv
/// outputs and, through their affine parameters, the batch-norm outputs). Every row trains: batch statistics, running
/// averages updated on each pass, as the peers do.
/// Rows: forward; JVP K=1 with per-example tangents on every site, drawn once outside the timing (as the MLP's and the
/// peers'); backprop (forward + backward); whole AdamW steps by backprop and by activation perturbation. The steps cycle
/// through eight random batches with random labels (see <see cref="StepBenchmarks"/>: one repeated batch is memorised
/// and drives Adam's moments into denormals).
/// </summary>
[MemoryDiagnoser]
public class CnnBenchmarks
{
    public const int Image = 32, InChannels = 3, Classes = 10, Batch = 128;

    private Plan _forward = null!, _jvp1 = null!, _backprop = null!;
    private (GradientEstimator Estimator, Optimizer Optimizer) _backpropStep, _apStep, _dfaStep, _grapeStep;
    private static readonly (float[] X, float[] Y)[] Batches = [.. Enumerable.Range(0, 8).Select(MakeBatch)];
    private long _step;

    /// <summary>The benchmark CNN, built once here (each side defines it once).</summary>
    public static Model Build()
    {
        var b = new ModelBuilder();
        var h = b.Input("x", new Shape(Image, Image, InChannels), differentiable: false);
        foreach (var (name, channels) in new[] { ("1", 32), ("2", 64) })
        {
            h = b.BatchNorm($"bn{name}", b.Conv2d($"conv{name}", h, channels, 3, padding: 1));
            h = b.MaxPool2d($"pool{name}", b.Activation($"relu{name}", h, ElementwiseFunction.Relu), 2);
        }
        var logits = b.Dense("head", b.Flatten("flat", h), Classes, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", Classes)), logits);
    }

    private static (float[], float[]) MakeBatch(int index)
    {
        var x = new float[Batch * Image * Image * InChannels];
        RandomFill.Normal(new RandomKey(11, (ulong)index), 0, 0f, 1f, x);
        var labels = new float[Batch];
        RandomFill.Uniform(new RandomKey(12, (ulong)index), 0, 0f, Classes, labels);
        for (int i = 0; i < labels.Length; i++) labels[i] = MathF.Floor(labels[i]);
        return (x, labels);
    }

    [GlobalSetup]
    public void Setup()
    {
        var model = Build();
        _forward = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(Batch));
        var jvpStore = ParameterStore.Initialize(model, new CpuBackend(), 1);
        _jvp1 = Compile(jvpStore, new PlanOptions(Batch) { ReuseBuffers = true, Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node))] });
        for (int l = 0; l < model.Sites.Length; l++)
            RandomFill.Normal(new RandomKey(13, (ulong)l), 0, 0f, 1f, CpuBackend.Span(_jvp1.Seed(model.Sites[l].Node)));
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
        var store = ParameterStore.Initialize(Build(), new CpuBackend(), 1);
        return (guesser.Compile(store, Batch), new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), store));
    }

    private void Step((GradientEstimator Estimator, Optimizer Optimizer) run)
    {
        var (x, y) = Batches[_step % Batches.Length];
        run.Estimator.SetBatch(x, y);
        var (gradient, loss) = run.Estimator.Estimate(new RandomKey(17, 0).Derive((ulong)_step), _step);
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

    /// <summary>DFA: one feedback matrix per site ([H·W·C, classes] for a conv site), the error projected to every site.</summary>
    [Benchmark]
    public void DfaAdamW() => Step(_dfaStep);

    /// <summary>GrAPE with its defaults: DFA plus the JVP that aligns each site's feedback matrix.</summary>
    [Benchmark]
    public void GrapeAdamW() => Step(_grapeStep);
}
