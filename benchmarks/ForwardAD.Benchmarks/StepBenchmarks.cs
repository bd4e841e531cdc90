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
/// A full training step of issue 3 on the depth-6, width-1024 MLP at batch 512: guess, JVP, estimate and
/// an AdamW update, for activation perturbation and Wᵀ (joint, one guess), DFA and GrAPE, and the backprop
/// step for reference. Steps cycle through eight random batches with random labels, so that the model keeps
/// training as in a real run: repeating one batch lets it memorise the batch within tens of steps, after
/// which gradients and Adam's second moments underflow into denormal floats, which x86 computes ~100×
/// slower (a DFA run here slowed from 0.2 to 0.6 s per step that way).
/// </summary>
[MemoryDiagnoser]
public class StepBenchmarks
{
    private (GradientEstimator Estimator, Optimizer Optimizer) _ap, _wt, _backprop, _dfa, _grape;
    private static readonly (float[] X, float[] Y)[] Batches = [.. Enumerable.Range(0, 8).Select(MakeBatch)];
    private long _step;

    private static (float[], float[]) MakeBatch(int index)
    {
        var x = new float[MlpBenchmarks.Batch * MlpBenchmarks.Inputs];
        RandomFill.Normal(new RandomKey(1, (ulong)index), 0, 0f, 1f, x);
        var labels = new float[MlpBenchmarks.Batch];
        RandomFill.Uniform(new RandomKey(2, (ulong)index), 0, 0f, MlpBenchmarks.Classes, labels);
        for (int i = 0; i < labels.Length; i++) labels[i] = MathF.Floor(labels[i]);
        return (x, labels);
    }

    [GlobalSetup]
    public void Setup()
    {
        _ap = Create(Guessers.ActivationPerturbation());
        _wt = Create(Guessers.WeightTranspose());
        _backprop = Create(Guessers.Backprop);
        _dfa = Create(Guessers.Dfa());
        _grape = Create(Guessers.Grape(new GrapeOptions()));
    }

    internal static (GradientEstimator, Optimizer) Create(Guesser guesser)
    {
        var model = MlpSpec.Uniform(MlpBenchmarks.Inputs, MlpBenchmarks.Depth, MlpBenchmarks.Width, MlpBenchmarks.Classes, ElementwiseFunction.Relu).Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        var estimator = guesser.Compile(store, MlpBenchmarks.Batch);
        return (estimator, new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), store));
    }

    private void Step((GradientEstimator Estimator, Optimizer Optimizer) run)
    {
        var (x, y) = Batches[_step % Batches.Length];
        run.Estimator.SetBatch(x, y);
        var (gradient, loss) = run.Estimator.Estimate(new RandomKey(7, 0).Derive((ulong)_step), _step);
        run.Optimizer.Step(new UpdateInputs(_step, loss, default), gradient);
        _step++;
    }

    [Benchmark(Baseline = true)]
    public void BackpropAdamW() => Step(_backprop);

    [Benchmark]
    public void ActivationPerturbationAdamW() => Step(_ap);

    [Benchmark]
    public void WeightTransposeAdamW() => Step(_wt);

    [Benchmark]
    public void DfaAdamW() => Step(_dfa);

    /// <summary>GrAPE with its defaults: original rule, one joint tangent channel on the hidden outputs.</summary>
    [Benchmark]
    public void GrapeAdamW() => Step(_grape);
}
