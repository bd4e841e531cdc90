using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
using ForwardAD.Guessing;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Studies;

/// <summary>
/// Figure 4 (right) of "How to Guess a Gradient": directional descent whose guesses have, at every step, the cosine
/// θ_t that <see cref="Reference"/> (Wᵀ) has on the same batch at the same parameters. With the true gradient g,
/// y = √N (|θ_t| ĝ + √(1−θ_t²) r̂), r̂ a random unit vector orthogonal to g, ĝ = g/‖g‖, and the estimate is
/// sign(θ_t)(g·y) y: cosine exactly θ_t, and E[(g·y) y] = N θ_t² g points along g. It is as close to g as Wᵀ's
/// estimate is, but its error is fresh, isotropic noise instead of Wᵀ's systematic bias: what separates the two
/// training curves is the bias. A measurement device (it needs the oracle), not a method. g·y is taken from the
/// oracle's g, the value a JVP along y would give.
/// </summary>
public sealed record CosineMatchedTo(Guesser Reference) : Guesser
{
    /// <summary><c>cosine-matched to</c> and the reference guesser's name.</summary>
    public override string Name => $"cosine-matched to {Reference.Name}";

    /// <summary>An estimator that, per step, runs backprop (the oracle) and the reference's estimator on the same batch and
    /// returns a directional-descent estimate with the reference's cosine to the true gradient.</summary>
    /// <exception cref="ArgumentException"><paramref name="shard"/> is part of a batch (data parallelism): the study needs
    /// the whole batch's exact gradient.</exception>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard) => shard.IsWhole
        ? new Estimator(this, parameters, shard.Count)
        : throw new ArgumentException($"{Name} needs the exact gradient of the whole batch at every step, a measurement device for one process; run it without data parallelism.");

    private sealed class Estimator : GradientEstimator
    {
        private readonly BackpropEstimator _oracle;
        private readonly GradientEstimator _reference;
        private readonly Backend _backend;
        private readonly View _gradient, _direction, _orthogonal, _exact;

        public Estimator(CosineMatchedTo guesser, ParameterStore parameters, int batchSize)
        {
            _oracle = new BackpropEstimator(parameters, batchSize, updatesRunningStatistics: true);
            _reference = guesser.Reference.Compile(parameters, batchSize);
            _backend = parameters.Backend;
            int n = parameters.All.Length;
            View Allocate() => new(_backend.Allocate(Math.Max(1, n)), 0, n);
            (_gradient, _direction, _orthogonal, _exact) = (Allocate(), Allocate(), Allocate(), Allocate());
        }

        public override Plan Plan => _oracle.Plan;

        public override void SetBatch(ReadOnlySpan<float> features, ReadOnlySpan<float> labels)
        {
            _oracle.SetBatch(features, labels);
            _reference.SetBatch(features, labels);
        }

        /// <summary>θ_t of the last step: the cosine the estimate was matched to.</summary>
        public double LastCosine { get; private set; }

        public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
        {
            var b = _backend;
            var (reference, _) = _reference.Estimate(key.Derive(1), step);
            var (g, loss) = _oracle.Estimate(default);
            b.Copy(g, _exact);
            double gg = b.SumOfSquares(_exact), rr = b.SumOfSquares(reference);
            double theta = gg == 0 || rr == 0 ? 0 : b.Dot(reference, _exact) / Math.Sqrt(gg * rr);
            LastCosine = theta;
            double n = _exact.Length, gNorm = Math.Sqrt(gg), a = Math.Abs(theta), sine = Math.Sqrt(Math.Max(0, 1 - a * a));
            b.FillNormal(key.Derive(2), 0, 0f, 1f, _orthogonal);
            if (gNorm > 0) b.Axpby((float)(-b.Dot(_orthogonal, _exact) / gg), _exact, 1f, _orthogonal);
            double rNorm = Math.Sqrt(b.SumOfSquares(_orthogonal));
            b.Fill(0f, _direction);
            if (gNorm > 0) b.Axpby((float)(Math.Sqrt(n) * a / gNorm), _exact, 1f, _direction);
            if (rNorm > 0) b.Axpby((float)(Math.Sqrt(n) * sine / rNorm), _orthogonal, 1f, _direction);
            double directional = b.Dot(_exact, _direction); // g·y, what one JVP along y gives
            b.Fill(0f, _gradient);
            b.Axpby((float)(Math.Sign(theta) * directional), _direction, 0f, _gradient);
            return (_gradient, loss);
        }
    }
}
