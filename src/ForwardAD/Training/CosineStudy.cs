using System.Collections.Immutable;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Training;

/// <summary>One measurement of one guesser at one step of the trajectory.</summary>
public sealed record CosineSample(int Epoch, long Step, string Guesser, double Cosine, double Effectiveness);

/// <summary>Mean ± standard deviation of a guesser's measurements.</summary>
public sealed record CosineSummary(string Guesser, double CosineMean, double CosineStd, double EffectivenessMean, double EffectivenessStd, int Samples);

/// <summary>
/// Figure 1 of "How to Guess a Gradient": along a backprop training trajectory, at every n-th step, each
/// guesser's estimate on the same batch is compared with the true gradient g: the cosine cos(ĝ, g), and the
/// 1-step effectiveness, the loss reduction of one step along ĝ relative to one step along g on that batch,
/// each at its best step size from a grid (default 1e-5 … 1e-1):
/// max_η [L(θ) − L(θ − ηĝ)] / max_η [L(θ) − L(θ − ηg)].
/// </summary>
public sealed class CosineStudy
{
    /// <summary>The step-size grid of the 1-step effectiveness: 1e-5, 1e-4, …, 1e-1.</summary>
    public static ImmutableArray<float> DefaultStepSizes { get; } = [1e-5f, 1e-4f, 1e-3f, 1e-2f, 1e-1f];

    private readonly ParameterStore _parameters;
    private readonly BackpropEstimator _oracle;
    private readonly (Guesser Guesser, GradientEstimator Estimator)[] _guessers;
    private readonly Optimizer _trajectory;
    private readonly Dataset _train;
    private readonly int _batch;
    private readonly ulong _seed;
    private readonly ImmutableArray<float> _stepSizes;
    private readonly View _saved, _exact;
    private readonly float[] _features, _labels;
    private readonly int[] _order;

    /// <summary>A study of <paramref name="guessers"/> along the trajectory that <paramref name="trajectoryRule"/> (with backprop
    /// gradients) takes from the current parameters.</summary>
    /// <param name="parameters">The model's parameters; the trajectory changes them, the measurements restore them.</param>
    /// <param name="guessers">The guessers measured, each compiled here for <paramref name="batchSize"/>.</param>
    /// <param name="trajectoryRule">The update rule of the backprop steps the measurements are taken along.</param>
    /// <param name="train">The training set; batches are drawn from it in an order shuffled by <paramref name="seed"/>.</param>
    /// <param name="batchSize">Examples per step, for the trajectory and every estimate.</param>
    /// <param name="seed">Seeds the batch order and the guessers' noise.</param>
    /// <param name="stepSizes">The effectiveness grid (<see cref="DefaultStepSizes"/> when null).</param>
    /// <exception cref="ArgumentException">The training set has fewer examples than one batch.</exception>
    public CosineStudy(ParameterStore parameters, IReadOnlyList<Guesser> guessers, UpdateRule trajectoryRule, Dataset train, int batchSize, ulong seed, ImmutableArray<float>? stepSizes = null)
    {
        if (train.Count < batchSize) throw new ArgumentException($"The training set has {train.Count} examples, fewer than one batch of {batchSize}.");
        _parameters = parameters;
        _oracle = new BackpropEstimator(parameters, batchSize, updatesRunningStatistics: false);
        _guessers = [.. guessers.Select(g => (g, g.Compile(parameters, batchSize)))];
        _trajectory = new Optimizer(trajectoryRule, parameters);
        _train = train;
        _batch = batchSize;
        _seed = seed;
        _stepSizes = stepSizes ?? DefaultStepSizes;
        var backend = parameters.Backend;
        _saved = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        _exact = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        _features = new float[batchSize * train.FeatureSize];
        _labels = new float[batchSize];
        _order = new int[train.Count];
    }

    /// <summary>Follows the backprop trajectory for <paramref name="epochs"/> epochs, measuring every
    /// <paramref name="every"/>-th step; <paramref name="progress"/> gets (steps done, steps in all).</summary>
    public List<CosineSample> Run(int epochs, int every, Action<long, long>? progress = null)
    {
        var backend = _parameters.Backend;
        var samples = new List<CosineSample>();
        int stepsPerEpoch = _train.Count / _batch;
        long step = 0, total = (long)epochs * stepsPerEpoch;
        for (int epoch = 0; epoch < epochs; epoch++)
        {
            Dataset.Permute(new RandomKey(_seed, 0xE90C).Derive((ulong)epoch), _order);
            for (int s = 0; s < stepsPerEpoch; s++, step++)
            {
                _train.CopyBatch(_order.AsSpan(s * _batch, _batch), _features, _labels);
                _oracle.SetBatch(_features, _labels);
                var (gradient, loss) = _oracle.Estimate(default);
                if (step % every == 0)
                {
                    backend.Copy(gradient, _exact);
                    backend.Copy(_parameters.All, _saved);
                    double exactReduction = BestReduction(_exact, loss);
                    var key = new RandomKey(_seed, 0xC051).Derive((ulong)step);
                    foreach (var (guesser, estimator) in _guessers)
                    {
                        estimator.SetBatch(_features, _labels);
                        var (estimate, _) = estimator.Estimate(key, step);
                        double cosine = Cosine(backend, estimate, _exact);
                        double effectiveness = exactReduction > 0 ? BestReduction(estimate, loss) / exactReduction : double.NaN;
                        samples.Add(new CosineSample(epoch, step, guesser.Name, cosine, effectiveness));
                    }
                    backend.Copy(_saved, _parameters.All);
                    backend.Copy(_exact, gradient);
                }
                _trajectory.Step(new UpdateInputs(step, loss, default), gradient);
                progress?.Invoke(step + 1, total);
            }
        }
        return samples;
    }

    /// <summary>max over the step sizes of L(θ) − L(θ − η·direction) on the current batch (θ restored after).</summary>
    private double BestReduction(View direction, double loss)
    {
        var backend = _parameters.Backend;
        double best = double.NegativeInfinity;
        foreach (var eta in _stepSizes)
        {
            backend.Copy(_saved, _parameters.All);
            backend.Axpby(-eta, direction, 1f, _parameters.All);
            _oracle.Plan.Forward();
            best = Math.Max(best, loss - _oracle.Plan.MeanLoss());
        }
        backend.Copy(_saved, _parameters.All);
        return best;
    }

    private static double Cosine(Backend backend, View a, View b)
    {
        double aa = backend.SumOfSquares(a), bb = backend.SumOfSquares(b);
        return aa == 0 || bb == 0 ? 0 : backend.Dot(a, b) / Math.Sqrt(aa * bb);
    }

    /// <summary>Per guesser, in order of first appearance: mean and standard deviation of the cosines and of the finite
    /// effectiveness values (NaN when there are none), and the sample count.</summary>
    public static List<CosineSummary> Summarize(IEnumerable<CosineSample> samples) =>
        [.. samples.GroupBy(s => s.Guesser).Select(g =>
        {
            var cosines = g.Select(s => s.Cosine).ToArray();
            var effective = g.Select(s => s.Effectiveness).Where(double.IsFinite).ToArray();
            return new CosineSummary(g.Key, Mean(cosines), Std(cosines), Mean(effective), Std(effective), cosines.Length);
        })];

    private static double Mean(double[] v) => v.Length == 0 ? double.NaN : v.Average();
    private static double Std(double[] v)
    {
        if (v.Length < 2) return double.NaN;
        double mean = v.Average();
        return Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Length - 1));
    }
}
