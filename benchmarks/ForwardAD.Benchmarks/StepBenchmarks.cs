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
/// an AdamW update, for activation perturbation and Wᵀ (joint, one guess), and the backprop step for reference.
/// </summary>
[MemoryDiagnoser]
public class StepBenchmarks
{
    private (GradientEstimator Estimator, Optimizer Optimizer) _ap, _wt, _backprop, _dfa, _grape;
    private long _step;

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
        var x = new float[MlpBenchmarks.Batch * MlpBenchmarks.Inputs];
        RandomFill.Normal(new RandomKey(1, 1), 0, 0f, 1f, x);
        var y = Enumerable.Range(0, MlpBenchmarks.Batch).Select(i => (float)(i % MlpBenchmarks.Classes)).ToArray();
        estimator.SetBatch(x, y);
        return (estimator, new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), store));
    }

    private void Step((GradientEstimator Estimator, Optimizer Optimizer) run)
    {
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
