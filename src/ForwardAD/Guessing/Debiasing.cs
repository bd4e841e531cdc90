using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Training;

namespace ForwardAD.Guessing;

/// <summary>
/// A biased guesser corrected by a ridge solve (docs/design.md §2, de-biasing; the open question of "How to Guess a
/// Gradient", §6). A guess u with E[u uᵀ] = C gives a site estimate ĝ = (g·u) u with E[ĝ] = C g; the corrected
/// estimate (C + λI)⁻¹ ĝ has expectation (C + λI)⁻¹ C g, which tends to g as λ → 0 on the span of C (where the
/// gradient of a Wᵀ site lies: g = M Wᵀ e). Less bias, more variance: directions in which C is small are amplified
/// by up to 1/λ. λ is relative: λ_b = <see cref="RelativeRidge"/> · tr(C_b)/n, the mean eigenvalue of C_b times the factor.
/// Known C: the Wᵀ guess (unit-variance noise at the next dense site, pulled back through it and the site's
/// activation): C_b = D_b Wᵀ W D_b per example b, D_b = diag f'(s_b) (for ReLU the mask M). The output site's guess
/// is left as it is (unbiased there).
/// </summary>
public sealed record DebiasedGuesser(ActivationGuesser Inner, double RelativeRidge = DebiasedGuesser.DefaultRelativeRidge) : Guesser
{
    /// <summary>λ = 0.1 · tr(C)/n: directions of C below a tenth of its mean eigenvalue are damped, not inverted.</summary>
    public const double DefaultRelativeRidge = 0.1;

    /// <summary>"de-biased " + the inner guesser's name + " (ρ value)".</summary>
    public override string Name => $"de-biased {Inner.Name} (ρ {RelativeRidge:G3})";

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="RelativeRidge"/> is not finite and positive, or the inner
    /// guesser asks for fewer than one guess.</exception>
    /// <exception cref="ArgumentException">The inner guesser places its guesses at normalised outputs, or its hidden guess
    /// has no known covariance (unit-variance noise pulled back one dense site).</exception>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard)
    {
        if (!(RelativeRidge > 0) || !double.IsFinite(RelativeRidge))
            throw new ArgumentOutOfRangeException(nameof(RelativeRidge), $"The relative ridge ρ must be a finite number > 0 (λ = ρ·tr(C)/n); got {RelativeRidge}.");
        if (Inner.Guesses < 1) throw new ArgumentOutOfRangeException(nameof(Inner), $"At least one guess per step; got {Inner.Guesses}.");
        if (Inner.Placement != GuessPlacement.Site)
            throw new ArgumentException($"De-biasing corrects the covariance of a guess at the site itself; '{Inner.Name}' places its guesses at the normalised outputs (Placement = {Inner.Placement}). Use Placement = Site.");
        if (!HasWeightTransposeCovariance(Inner.Hidden))
            throw new ArgumentException($"De-biasing needs a hidden guess whose covariance is known: unit-variance noise pulled back one dense site " +
                $"(Guess.Normal.PulledBack(), Guess.Uniform.PulledBack() or Guess.Normal.Projected().Masked()); '{Inner.Name}' uses {Inner.Hidden}.");
        return new ActivationGuessEstimator(Inner, parameters, shard,
            (plan, site) => site.Next.IsEmpty ? null : new WeightTransposeCorrection(plan, site, RelativeRidge));
    }

    /// <summary>Unit-variance noise (N(0, 1) or U(−√3, √3)) at the next site, pulled back: Cov(u) = Jᵀ J.</summary>
    private static bool HasWeightTransposeCovariance(Guess guess) => guess switch
    {
        PulledBackGuess { Source: NoiseGuess } => true,
        MaskedGuess { Source: ProjectedGuess { Source: NoiseGuess, SingularValuePower: 1f } } => true,
        _ => false,
    };
}

/// <summary>A linear map applied in place to a site's estimated cotangent [B, n] before it becomes a parameter update.</summary>
internal abstract class SiteCorrection
{
    public abstract void Apply(View cotangent);
}

/// <summary>
/// z_b = (C_b + λ_b I)⁻¹ r_b per example, C_b = D_b Wᵀ W D_b (W the next dense site's m×n weight, D_b = diag f'(s_b)),
/// λ_b = ρ·tr(C_b)/n, solved on the host in double by Cholesky: on the n×n system when n ≤ m, else through the
/// Woodbury identity (λI + D WᵀW D)⁻¹ = λ⁻¹ [I − D Wᵀ (λI_m + W D² Wᵀ)⁻¹ W D] on an m×m one. All buffers are
/// allocated here; <see cref="Apply"/> allocates nothing.
/// </summary>
internal sealed class WeightTransposeCorrection : SiteCorrection
{
    private readonly Backend _backend;
    private readonly View _weight, _derivative;
    private readonly int _n, _m, _batch, _order;
    private readonly double _ridge;
    private readonly float[] _hostCotangent, _hostWeight, _hostDerivative;
    private readonly double[] _gram, _columnNorms, _system, _rhs, _solution;

    public WeightTransposeCorrection(Plan plan, Site site, double relativeRidge)
    {
        var model = plan.Model;
        var next = site.Next.Length == 1 ? model.Sites[site.Next[0]] : null;
        if (next is null || next.Node.Op is not LinearOp || next.Node.Inputs[0] != site.Output.Id || site.Node.Shape.Rank != 1)
            throw new ArgumentException($"De-biasing Wᵀ needs {site} to be a dense site feeding exactly one dense site through at most one " +
                "elementwise op (then C = D Wᵀ W D); other graphs have another C.");
        _backend = plan.Backend;
        _weight = plan.Value(model.Nodes[next.Node.Inputs[1]]);
        _derivative = site.Activation is { } activation ? plan.Derivative(activation) : View.Empty;
        (_n, _m, _batch) = (site.Node.Shape.Last, next.Node.Shape.Last, plan.BatchSize);
        _order = Math.Min(_n, _m);
        _ridge = relativeRidge;
        _hostCotangent = new float[_batch * _n];
        _hostWeight = new float[_m * _n];
        _hostDerivative = new float[_derivative.IsEmpty ? 0 : _batch * _n];
        _gram = new double[_n <= _m ? _n * _n : 0];
        _columnNorms = new double[_n];
        _system = new double[_order * _order];
        _rhs = new double[Math.Max(_n, _m)];
        _solution = new double[_n];
    }

    public override void Apply(View cotangent)
    {
        _backend.CopyToHost(cotangent, _hostCotangent);
        _backend.CopyToHost(_weight, _hostWeight);
        if (!_derivative.IsEmpty) _backend.CopyToHost(_derivative, _hostDerivative);
        int n = _n, m = _m;
        var w = _hostWeight;
        // ‖W_:j‖² for the traces, and G = WᵀW once per step when the solve is n×n.
        for (int j = 0; j < n; j++)
        {
            double sum = 0;
            for (int r = 0; r < m; r++) sum += (double)w[r * n + j] * w[r * n + j];
            _columnNorms[j] = sum;
        }
        if (n <= m)
            for (int i = 0; i < n; i++)
                for (int j = 0; j <= i; j++)
                {
                    double sum = 0;
                    for (int r = 0; r < m; r++) sum += (double)w[r * n + i] * w[r * n + j];
                    _gram[i * n + j] = _gram[j * n + i] = sum;
                }
        for (int b = 0; b < _batch; b++)
        {
            var r = _hostCotangent.AsSpan(b * n, n);
            var dh = _hostDerivative;
            int o = b * n;
            double trace = 0;
            for (int j = 0; j < n; j++) trace += D(dh, o, j) * D(dh, o, j) * _columnNorms[j];
            // tr C = 0 means C = 0: any λ > 0 gives z = r/λ, and r is then 0 for a pulled-back guess.
            double lambda = trace > 0 ? _ridge * trace / n : _ridge;
            if (n <= m)
            {
                // (D G D + λI) z = r.
                for (int i = 0; i < n; i++)
                {
                    for (int j = 0; j <= i; j++) _system[i * n + j] = D(dh, o, i) * _gram[i * n + j] * D(dh, o, j);
                    _system[i * n + i] += lambda;
                    _rhs[i] = r[i];
                }
                Cholesky.Factor(_system, n);
                Cholesky.Solve(_system, n, _rhs, _solution);
                for (int j = 0; j < n; j++) r[j] = (float)_solution[j];
            }
            else
            {
                // K = λI_m + W D² Wᵀ, t = W D r; z = (r − D Wᵀ K⁻¹ t)/λ.
                for (int p = 0; p < m; p++)
                {
                    for (int q = 0; q <= p; q++)
                    {
                        double sum = 0;
                        for (int j = 0; j < n; j++) sum += w[p * n + j] * D(dh, o, j) * D(dh, o, j) * w[q * n + j];
                        _system[p * m + q] = sum;
                    }
                    _system[p * m + p] += lambda;
                    double t = 0;
                    for (int j = 0; j < n; j++) t += w[p * n + j] * D(dh, o, j) * r[j];
                    _rhs[p] = t;
                }
                Cholesky.Factor(_system, m);
                Cholesky.Solve(_system, m, _rhs, _solution);
                for (int j = 0; j < n; j++)
                {
                    double back = 0;
                    for (int p = 0; p < m; p++) back += w[p * n + j] * _solution[p];
                    r[j] = (float)((r[j] - D(dh, o, j) * back) / lambda);
                }
            }
        }
        _backend.CopyFromHost(_hostCotangent, cotangent);
    }

    /// <summary>f'(s) of example row <paramref name="offset"/>, or 1 without an activation.</summary>
    private static double D(float[] derivative, int offset, int j) => derivative.Length == 0 ? 1.0 : derivative[offset + j];
}

/// <summary>Cholesky factorisation A = L Lᵀ of a symmetric positive definite matrix (lower triangle read and
/// overwritten with L, row-major n×n) and the two triangular solves.</summary>
internal static class Cholesky
{
    public static void Factor(double[] a, int n)
    {
        for (int j = 0; j < n; j++)
        {
            double diagonal = a[j * n + j];
            for (int k = 0; k < j; k++) diagonal -= a[j * n + k] * a[j * n + k];
            // A pivot that is not positive means C + λI lost definiteness in float arithmetic, or the weights that build C
            // are no longer finite: either way the run cannot go on, and it ends as a diverged run does (a clear message,
            // the last checkpoint intact), not with a stack trace.
            if (!(diagonal > 0))
                throw new Training.TrainingDivergedException(double.IsFinite(diagonal)
                    ? $"The de-biasing solve lost definiteness (pivot {diagonal:G3} at row {j} of C + λI): raise the ridge ρ or lower the learning rate."
                    : $"The de-biasing solve met non-finite weights (pivot {diagonal:G3} at row {j} of C + λI): training diverged. Lower the learning rate or raise the ridge ρ.");
            double l = Math.Sqrt(diagonal);
            a[j * n + j] = l;
            for (int i = j + 1; i < n; i++)
            {
                double sum = a[i * n + j];
                for (int k = 0; k < j; k++) sum -= a[i * n + k] * a[j * n + k];
                a[i * n + j] = sum / l;
            }
        }
    }

    /// <summary>x = (L Lᵀ)⁻¹ b with L from <see cref="Factor"/>; b and x may not overlap.</summary>
    public static void Solve(double[] factor, int n, ReadOnlySpan<double> b, Span<double> x)
    {
        for (int i = 0; i < n; i++)
        {
            double sum = b[i];
            for (int k = 0; k < i; k++) sum -= factor[i * n + k] * x[k];
            x[i] = sum / factor[i * n + i];
        }
        for (int i = n - 1; i >= 0; i--)
        {
            double sum = x[i];
            for (int k = i + 1; k < n; k++) sum -= factor[k * n + i] * x[k];
            x[i] = sum / factor[i * n + i];
        }
    }
}
