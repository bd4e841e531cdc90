using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// De-biased guessers (docs/design.md §2, de-biasing): the Wᵀ site estimate ĝ_b with E[ĝ_b] = C_b g_b, C_b = D_b Wᵀ W D_b,
/// corrected to (C_b + λ_b I)⁻¹ ĝ_b with λ_b = ρ·tr(C_b)/n. References are computed here in double by Gaussian
/// elimination, independently of the library's Cholesky and Woodbury code.
/// </summary>
public class DebiasingTests
{
    private const int Batch = 4;

    /// <summary>Widths 4 and 6 between 3 inputs and 3 classes: the first site solves n×n (n = 4 ≤ m = 6), the second
    /// through Woodbury (n = 6 > m = 3), so both branches are checked.</summary>
    private static Problem TinyProblem(int seed) =>
        Problem.RandomMlp(seed, ElementwiseFunction.Relu, Batch, widths: [4, 6], inputs: 3, outputs: 3);

    /// <summary>x = A⁻¹ b by Gaussian elimination with partial pivoting (A is copied).</summary>
    private static double[] Solve(double[,] a, double[] b)
    {
        int n = b.Length;
        var m = (double[,])a.Clone();
        var x = (double[])b.Clone();
        for (int c = 0; c < n; c++)
        {
            int pivot = c;
            for (int r = c + 1; r < n; r++) if (Math.Abs(m[r, c]) > Math.Abs(m[pivot, c])) pivot = r;
            for (int k = 0; k < n; k++) (m[c, k], m[pivot, k]) = (m[pivot, k], m[c, k]);
            (x[c], x[pivot]) = (x[pivot], x[c]);
            for (int r = c + 1; r < n; r++)
            {
                double f = m[r, c] / m[c, c];
                for (int k = c; k < n; k++) m[r, k] -= f * m[c, k];
                x[r] -= f * x[c];
            }
        }
        for (int r = n - 1; r >= 0; r--)
        {
            double sum = x[r];
            for (int k = r + 1; k < n; k++) sum -= m[r, k] * x[k];
            x[r] = sum / m[r, r];
        }
        return x;
    }

    /// <summary>C_b = D_b Wᵀ W D_b of a hidden site for example b (D from the ReLU mask 1[s &gt; 0]) and its λ_b.</summary>
    private static (double[,] C, double Lambda) Covariance(Problem problem, Plan plan, int site, int b, double rho)
    {
        var model = problem.Model;
        var layer = model.Sites[site];
        int n = layer.Node.Shape.Last, m = model.Sites[site + 1].Node.Shape.Last;
        var s = plan.Value(layer.Node).ToArray().AsSpan(b * n, n).ToArray();
        var w = problem.Parameters.ToArray(model.Sites[site + 1].Weight());
        var c = new double[n, n];
        double trace = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                if (s[i] <= 0 || s[j] <= 0) continue;
                for (int r = 0; r < m; r++) c[i, j] += (double)w[r * n + i] * w[r * n + j];
            }
        for (int i = 0; i < n; i++) trace += c[i, i];
        // As the library: tr C = 0 (every unit inactive) means C = 0, and λ = ρ keeps C + λI invertible.
        return (c, trace > 0 ? rho * trace / n : rho);
    }

    private static double[] Multiply(double[,] a, double[] x) =>
        [.. Enumerable.Range(0, x.Length).Select(i => Enumerable.Range(0, x.Length).Sum(j => a[i, j] * x[j]))];

    private static double[,] PlusRidge(double[,] c, double lambda)
    {
        var a = (double[,])c.Clone();
        for (int i = 0; i < a.GetLength(0); i++) a[i, i] += lambda;
        return a;
    }

    /// <summary>Per site, [B, n] of (C_b + λ_b I)⁻¹ C_b g_b at hidden sites and g_b at the output site (g_b = ∂L/∂s_b).</summary>
    private static List<float[]> ExpectedSiteCotangents(Problem problem, Plan plan, double rho)
    {
        var sites = problem.Model.Sites;
        var result = new List<float[]>();
        for (int i = 0; i < sites.Length; i++)
        {
            int n = sites[i].Node.Shape.Last;
            var g = plan.Cotangent(sites[i].Node).ToArray();
            var expected = new float[Batch * n];
            for (int b = 0; b < Batch; b++)
            {
                var gb = g.AsSpan(b * n, n).ToArray().Select(v => (double)v).ToArray();
                double[] e = gb;
                if (i < sites.Length - 1)
                {
                    var (c, lambda) = Covariance(problem, plan, i, b, rho);
                    e = Solve(PlusRidge(c, lambda), Multiply(c, gb));
                }
                for (int j = 0; j < n; j++) expected[b * n + j] = (float)e[j];
            }
            result.Add(expected);
        }
        return result;
    }

    private static Plan Exact(Problem problem)
    {
        var plan = problem.Compile(new PlanOptions(Batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        return plan;
    }

    /// <summary>The correction applied to a given cotangent equals the reference ridge solve, on both the n×n
    /// (Cholesky) and the m×m (Woodbury) branch.</summary>
    [Theory]
    [InlineData(0.1)]
    [InlineData(1e-3)]
    public void Correction_is_the_ridge_solve(double rho)
    {
        var problem = TinyProblem(11);
        var plan = Exact(problem);
        var backend = problem.Parameters.Backend;
        for (int i = 0; i < problem.Model.Sites.Length - 1; i++)
        {
            var site = problem.Model.Sites[i];
            int n = site.Node.Shape.Last;
            var r = Problem.Normal(100 + i, Batch * n, 1f);
            var view = new View(backend.Allocate(r.Length), 0, r.Length);
            backend.CopyFromHost(r, view);
            new WeightTransposeCorrection(plan, site, rho).Apply(view);
            var corrected = view.ToArray();
            for (int b = 0; b < Batch; b++)
            {
                var (c, lambda) = Covariance(problem, plan, i, b, rho);
                var expected = Solve(PlusRidge(c, lambda), [.. r.AsSpan(b * n, n).ToArray().Select(v => (double)v)]);
                double scale = expected.Max(Math.Abs);
                for (int j = 0; j < n; j++)
                    Assert.True(Math.Abs(corrected[b * n + j] - expected[j]) <= 1e-4 * (1 + scale),
                        $"site {i} example {b} component {j}: {corrected[b * n + j]} against {expected[j]} (ρ {rho})");
            }
        }
    }

    /// <summary>The de-biased Wᵀ estimate averages to the parameter update of (C + λI)⁻¹ C g per site and example (5
    /// standard errors of the sample), for a large and a small ridge.</summary>
    [Theory]
    [InlineData(0.5, 20000)]
    [InlineData(1e-2, 20000)]
    public void Debiased_weight_transpose_mean_is_the_ridge_solution(double rho, int samples)
    {
        var problem = TinyProblem(12);
        var plan = Exact(problem);
        var expected = GuessSampling.ParametersFrom(problem, plan, ExpectedSiteCotangents(problem, plan, rho));
        var guesser = new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose(TangentMode.PerLayer), rho);
        var (mean, std) = GuessSampling.Sample(problem, guesser, Batch, samples, seed: 2025);
        GuessSampling.AssertWithinStandardErrors(expected, mean, std, samples, $"de-biased Wᵀ, ρ {rho}");
    }

    /// <summary>(C + λI)⁻¹ C g → g as λ → 0: the gradient of a Wᵀ site is D Wᵀ e, in the span of C = D WᵀW D. Plain
    /// Wᵀ's C g is far from g; the corrected expectation approaches g monotonically as ρ falls.</summary>
    [Fact]
    public void Ridge_solution_tends_to_the_gradient()
    {
        var problem = TinyProblem(13);
        var plan = Exact(problem);
        var g = plan.ParameterGradients.ToArray().Select(v => (double)v).ToArray();
        double Error(double[] x) => Math.Sqrt(x.Zip(g).Sum(p => (p.First - p.Second) * (p.First - p.Second)) / g.Sum(v => v * v));
        var errors = new[] { 1.0, 1e-1, 1e-2, 1e-4, 1e-6 }
            .Select(rho => Error(GuessSampling.ParametersFrom(problem, plan, ExpectedSiteCotangents(problem, plan, rho)))).ToArray();
        for (int k = 1; k < errors.Length; k++) Assert.True(errors[k] < errors[k - 1], $"error not falling: {string.Join(", ", errors)}");
        Assert.True(errors[^1] < 1e-4, $"relative error {errors[^1]} at ρ = 1e-6");
        Assert.True(errors[0] > 1e-2, "at ρ = 1 the correction should still leave visible bias");
    }

    /// <summary>The combinator wraps the existing guesser values: self-sharpening (uniform noise, true error at the
    /// output) and joint tangents; a guess without known covariance is refused naming the fix; training steps allocate nothing.</summary>
    [Fact]
    public void Composes_with_existing_guessers_and_allocates_nothing()
    {
        var problem = TinyProblem(14);
        GuessSampling.AssertTrainsWithoutAllocating(problem, new DebiasedGuesser((ActivationGuesser)Guessers.SelfSharpening()), "de-biased self-sharpening", Batch);
        GuessSampling.AssertTrainsWithoutAllocating(problem, new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose(TangentMode.Joint, guesses: 2)), "de-biased Wᵀ", Batch);
        var e = Assert.Throws<ArgumentException>(() => new DebiasedGuesser((ActivationGuesser)Guessers.ActivationMixing()).Compile(problem.Parameters, Batch));
        Assert.Contains("covariance is known", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose(), 0).Compile(problem.Parameters, Batch));
        var residual = Problem.From(Problem.Residual(), 3, Batch);
        e = Assert.Throws<ArgumentException>(() => new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose()).Compile(residual.Parameters, Batch));
        Assert.Contains("dense site feeding exactly one dense site", e.Message);
    }
}
