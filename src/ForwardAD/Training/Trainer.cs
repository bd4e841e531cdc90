using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Training;

/// <summary>What one epoch achieved.</summary>
public sealed record EpochReport(int Epoch, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy,
    double ExamplesPerSecond, TimeSpan WallTime);

/// <summary>Progress of a run, called from the training thread.</summary>
public interface ITrainingObserver
{
    void StepCompleted(int epoch, int step, int stepsPerEpoch, double batchLoss) { }
    void EpochCompleted(EpochReport report) { }
}

/// <summary>
/// Mini-batch training: every epoch a Philox permutation of the training set (seed, epoch), full
/// batches only (the remainder rotates through later epochs' permutations), one estimate and one
/// optimizer step per batch, then an evaluation on the train and test sets.
/// </summary>
public sealed class Trainer
{
    private readonly GradientEstimator _estimator;
    private readonly Optimizer _optimizer;
    private readonly Dataset _train;
    private readonly Evaluator _trainEvaluator, _testEvaluator;
    private readonly float[] _features, _labels;
    private readonly int[] _order;
    private readonly ulong _seed;
    private long _step;

    public Trainer(GradientEstimator estimator, UpdateRule rule, Dataset train, Dataset test, ulong seed)
    {
        var plan = estimator.Plan;
        int batch = plan.BatchSize;
        if (train.Count < batch)
            throw new ArgumentException($"The training set '{train.Name}' has {train.Count} examples, fewer than one batch of {batch}. Use a smaller --batch-size.");
        var x = plan.Model["x"];
        if (x.Shape.ElementCount != train.FeatureSize)
            throw new ArgumentException($"The model's input {x} takes {x.Shape.ElementCount} values per example; '{train.Name}' has {train.FeatureSize}.");
        _estimator = estimator;
        _optimizer = new Optimizer(rule, plan.Parameters);
        _train = train;
        _trainEvaluator = new Evaluator(plan.Parameters, train);
        _testEvaluator = new Evaluator(plan.Parameters, test);
        _features = new float[batch * train.FeatureSize];
        _labels = new float[batch];
        _order = new int[train.Count];
        _seed = seed;
    }

    public int StepsPerEpoch => _train.Count / _estimator.Plan.BatchSize;

    /// <summary>Runs one epoch (0-based number) and evaluates.</summary>
    public EpochReport RunEpoch(int epoch, ITrainingObserver? observer = null)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var plan = _estimator.Plan;
        int batch = plan.BatchSize;
        Dataset.Permute(new RandomKey(_seed, 0xE90C).Derive((ulong)epoch), _order);
        for (int s = 0; s < StepsPerEpoch; s++)
        {
            _train.CopyBatch(_order.AsSpan(s * batch, batch), _features, _labels);
            _estimator.SetBatch(_features, _labels);
            var (gradient, loss) = _estimator.Estimate(new RandomKey(_seed, 0x6E55).Derive((ulong)_step));
            _optimizer.Step(new UpdateInputs(_step, loss, new RandomKey(_seed, 0x0971).Derive((ulong)_step)), gradient);
            _step++;
            observer?.StepCompleted(epoch, s, StepsPerEpoch, loss);
        }
        double seconds = watch.Elapsed.TotalSeconds;
        var train = _trainEvaluator.Evaluate();
        var test = _testEvaluator.Evaluate();
        var report = new EpochReport(epoch, train.Loss, train.Accuracy, test.Loss, test.Accuracy, StepsPerEpoch * batch / seconds, watch.Elapsed);
        observer?.EpochCompleted(report);
        return report;
    }
}
