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
/// The rows every model of the three-way comparison has (CNN, transformer): forward; JVP K=1 with per-example tangents
/// on every site, drawn once outside the timing; backprop (forward + backward); whole AdamW steps by backprop, activation
/// perturbation, DFA and GrAPE. A model supplies its network, batch size, inputs "x"/"y" and the keys of its random
/// draws. The steps cycle through eight batches (as <see cref="StepBenchmarks"/>: a repeated batch is memorised and
/// Adam's moments underflow into denormals).
/// </summary>
[MemoryDiagnoser]
public abstract class ModelRowBenchmarks
{
    private Plan _forward = null!, _jvp1 = null!, _backprop = null!;
    private (GradientEstimator Estimator, Optimizer Optimizer) _backpropStep, _apStep, _dfaStep, _grapeStep;
    private (float[] X, float[] Y)[] _batches = null!;
    private long _step;

    /// <summary>The network, built afresh for every plan and step (each gets its own parameters).</summary>
    protected abstract Model BuildModel();

    protected abstract int BatchSize { get; }

    /// <summary>Inputs and targets of batch <paramref name="index"/> (0…7).</summary>
    protected abstract (float[] X, float[] Y) MakeBatch(int index);

    /// <summary>Key streams of the JVP row's tangents and of the steps' guesses.</summary>
    protected abstract (ulong Tangents, ulong Guesses) Keys { get; }

    [GlobalSetup]
    public void Setup()
    {
        _batches = [.. Enumerable.Range(0, 8).Select(MakeBatch)];
        var model = BuildModel();
        _forward = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(BatchSize));
        _jvp1 = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1),
            new PlanOptions(BatchSize) { ReuseBuffers = true, Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node))] });
        for (int l = 0; l < model.Sites.Length; l++)
            RandomFill.Normal(new RandomKey(Keys.Tangents, (ulong)l), 0, 0f, 1f, CpuBackend.Span(_jvp1.Seed(model.Sites[l].Node)));
        // Backprop as the training step runs it (BackpropGuesser): only what the backward pass reads is kept.
        _backprop = Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(BatchSize) { Gradients = true, ReuseBuffers = true });
        _backpropStep = CreateStep(Guessers.Backprop);
        _apStep = CreateStep(Guessers.ActivationPerturbation());
        _dfaStep = CreateStep(Guessers.Dfa());
        _grapeStep = CreateStep(Guessers.Grape(new GrapeOptions()));
    }

    private Plan Compile(ParameterStore store, PlanOptions options)
    {
        var plan = Plan.Compile(store, options);
        plan.SetInput(store.Model["x"], _batches[0].X);
        plan.SetInput(store.Model["y"], _batches[0].Y);
        return plan;
    }

    private (GradientEstimator, Optimizer) CreateStep(Guesser guesser)
    {
        var store = ParameterStore.Initialize(BuildModel(), new CpuBackend(), 1);
        return (guesser.Compile(store, BatchSize), new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), store));
    }

    private void Step((GradientEstimator Estimator, Optimizer Optimizer) run)
    {
        var (x, y) = _batches[_step % _batches.Length];
        run.Estimator.SetBatch(x, y);
        var (gradient, loss) = run.Estimator.Estimate(new RandomKey(Keys.Guesses, 0).Derive((ulong)_step), _step);
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

    /// <summary>DFA: one feedback matrix per site (shared over positions for a sequence model), the error projected to every site.</summary>
    [Benchmark]
    public void DfaAdamW() => Step(_dfaStep);

    /// <summary>GrAPE with its defaults: DFA plus the JVP that aligns each site's feedback matrix.</summary>
    [Benchmark]
    public void GrapeAdamW() => Step(_grapeStep);
}
