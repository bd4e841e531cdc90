using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// The statistics of the guessers (docs/design.md §2). Every test draws a fixed number of estimates with fixed
/// keys and bounds the distance between their mean and the expected value by 5 standard errors (from the
/// known variance where it has a closed form, else from the sample variance): a two-sided 5σ bound fails by
/// chance with probability below 6e-7 per component.
/// </summary>
public class GuesserTests
{
    private const int Batch = 4;

    private static Problem SmallProblem(int seed, ElementwiseFunction? activation = null) =>
        Problem.RandomMlp(seed, activation ?? ElementwiseFunction.Relu, Batch, widths: [5, 4], inputs: 3, outputs: 3);

    private static float[] Oracle(Problem problem)
    {
        var oracle = new BackpropEstimator(problem.Parameters, Batch);
        SetBatch(problem, oracle);
        return oracle.Estimate(default).Gradient.ToArray();
    }

    private static void SetBatch(Problem problem, GradientEstimator estimator) =>
        estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);

    private static (double[] Mean, double[] Std) Sample(Problem problem, Guesser guesser, int samples) =>
        GuessSampling.Sample(problem, guesser, Batch, samples, seed: 2024);

    private static void AssertWithinStandardErrors(double[] expected, double[] mean, double[] std, int samples, string what) =>
        GuessSampling.AssertWithinStandardErrors(expected, mean, std, samples, what);

    /// <summary>A random model: the seed of its sizes and data, and its activation.</summary>
    public sealed record ModelCase(int Seed, int Activation);

    /// <summary>Random models for the properties below (the [Property] ones find it by their parameter's type).</summary>
    public static Arbitrary<ModelCase> Models() =>
        (from seed in Gen.Choose(0, 100_000) from activation in Gen.Choose(0, 3) select new ModelCase(seed, activation)).ToArbitrary();

    private static Problem RandomProblem(ModelCase c) =>
        Problem.RandomMlp(c.Seed, Problem.Activations[c.Activation], Batch, widths: [4, 3], inputs: 3, outputs: 3);

    /// <summary>
    /// The expected weight estimate Σ_b E[d_b u_b] x_bᵀ (and bias Σ_b E[d_b u_b]) when E[d_b u_b] is the given
    /// per-example direction, computed from an exact backprop plan on the problem's batch.
    /// </summary>
    private static double[] ExpectedMean(Problem problem, Func<Plan, int, int, double[]> direction)
    {
        var model = problem.Model;
        var plan = problem.Compile(new PlanOptions(Batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var layout = ParameterLayout.Of(model);
        var expected = new double[layout.TotalCount];
        for (int i = 0; i < model.Sites.Length; i++)
        {
            var x = plan.Value(model.Sites[i].Input(model)).ToArray();
            int inputs = model.Sites[i].Input(model).Shape.Last;
            for (int b = 0; b < Batch; b++)
                AddOuterProduct(layout, model.Sites[i], direction(plan, i, b), x.AsSpan(b * inputs, inputs), expected);
        }
        return expected;
    }

    /// <summary>expected[W] += direction ⊗ x and expected[b] += direction: one example's share of a weight estimate.</summary>
    private static void AddOuterProduct(ParameterLayout layout, Site layer, double[] direction, ReadOnlySpan<float> x, double[] expected)
    {
        int weightOffset = layout.Entries.Single(e => e.Parameter == layer.Weight()).Offset;
        int biasOffset = layout.Entries.Single(e => e.Parameter == layer.Bias()).Offset;
        for (int j = 0; j < direction.Length; j++)
        {
            for (int c = 0; c < x.Length; c++) expected[weightOffset + j * x.Length + c] += direction[j] * x[c];
            expected[biasOffset + j] += direction[j];
        }
    }

    /// <summary>Directional descent over random models: E[(g·v)v] = g with Var[(g·v)v_j] = ‖g‖² + g_j² for v ~ N(0, I).</summary>
    [Property(Replay = PropertyConfig.Replay, MaxTest = 4, Arbitrary = new[] { typeof(GuesserTests) })]
    public void Directional_descent_is_unbiased(ModelCase c)
    {
        var problem = RandomProblem(c);
        var g = Oracle(problem).Select(v => (double)v).ToArray();
        const int samples = 8000;
        var (mean, _) = Sample(problem, Guessers.DirectionalDescent(), samples);
        double normSquared = g.Sum(v => v * v);
        var exactStd = g.Select(v => Math.Sqrt(normSquared + v * v)).ToArray();
        AssertWithinStandardErrors(g, mean, exactStd, samples, $"directional descent {c}");
    }

    /// <summary>Activation perturbation over random models, joint and per-layer: E[d_b u_b] = ∂L/∂s_b, so the
    /// weight estimate is unbiased.</summary>
    [Theory]
    [InlineData(TangentMode.Joint)]
    [InlineData(TangentMode.PerLayer)]
    public void Activation_perturbation_is_unbiased(TangentMode mode) =>
        Prop.ForAll(Models(), c =>
        {
            var problem = RandomProblem(c);
            var g = Oracle(problem).Select(v => (double)v).ToArray();
            const int samples = 8000;
            var (mean, std) = Sample(problem, Guessers.ActivationPerturbation(mode, guesses: 2), samples);
            AssertWithinStandardErrors(g, mean, std, samples, $"activation perturbation ({mode}) {c}");
        }).CheckFixed(maxTest: 4);

    /// <summary>
    /// Wᵀ: E[u uᵀ] = M Wᵀ W M per example (M = the ReLU mask), so the mean weight estimate of layer i is
    /// Σ_b (M_b W_{i+1}ᵀ W_{i+1} M_b g_b) x_bᵀ with g_b the exact per-example ∂L/∂s_{i,b} from backprop.
    /// </summary>
    [Fact]
    public void Weight_transpose_mean_is_M_Wt_W_M_g()
    {
        var problem = SmallProblem(3);
        var model = problem.Model;
        var expected = ExpectedMean(problem, (plan, i, b) =>
        {
            var layer = model.Sites[i];
            int n = layer.Node.Shape.Last;
            var g = plan.Cotangent(layer.Node).ToArray().AsSpan(b * n, n).ToArray();
            var s = plan.Value(layer.Node).ToArray().AsSpan(b * n, n).ToArray();
            if (i == model.Sites.Length - 1) return g.Select(v => (double)v).ToArray(); // last layer: N(0, I), Cov = I
            var w = problem.Parameters.ToArray(model.Sites[i + 1].Weight());
            int m = model.Sites[i + 1].Node.Shape.Last;
            var masked = Enumerable.Range(0, n).Select(j => s[j] > 0 ? (double)g[j] : 0).ToArray();
            var wm = Enumerable.Range(0, m).Select(r => Enumerable.Range(0, n).Sum(j => w[r * n + j] * masked[j])).ToArray();
            return Enumerable.Range(0, n).Select(j => s[j] > 0 ? Enumerable.Range(0, m).Sum(r => w[r * n + j] * wm[r]) : 0).ToArray();
        });
        const int samples = 20000;
        var (mean, std) = Sample(problem, Guessers.WeightTranspose(TangentMode.PerLayer), samples);
        AssertWithinStandardErrors(expected, mean, std, samples, "Wᵀ");
        // And it is biased: the mean is not the gradient.
        var oracle = Oracle(problem);
        Assert.True(expected.Zip(oracle).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
    }

    /// <summary>
    /// Normalised Wᵀ in joint mode: u = √n·v/‖v‖ with v = M Wᵀ ε per example, so the estimate of ∂L/∂s_b averages to
    /// n·E[v vᵀ/‖v‖²]·g_b (no closed form: taken here by float64 Monte Carlo over ε with 20× the estimator's samples), and the
    /// joint channel adds no cross-site terms (the sites' ε are independent and symmetric). The head keeps N(0, I): g.
    /// </summary>
    [Fact]
    public void Normalized_weight_transpose_mean_is_n_E_vvT_over_norm_squared_g()
    {
        var problem = SmallProblem(3);
        var model = problem.Model;
        const int samples = 20000, draws = 20 * samples;
        var random = new System.Random(11);
        double Gaussian() => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        var expected = ExpectedMean(problem, (plan, i, b) =>
        {
            var layer = model.Sites[i];
            int n = layer.Node.Shape.Last;
            var g = plan.Cotangent(layer.Node).ToArray().AsSpan(b * n, n).ToArray();
            var s = plan.Value(layer.Node).ToArray().AsSpan(b * n, n).ToArray();
            if (i == model.Sites.Length - 1) return g.Select(v => (double)v).ToArray();
            var w = problem.Parameters.ToArray(model.Sites[i + 1].Weight());
            int m = model.Sites[i + 1].Node.Shape.Last;
            var mean = new double[n];
            var v = new double[n];
            var epsilon = new double[m];
            for (int d = 0; d < draws; d++)
            {
                for (int r = 0; r < m; r++) epsilon[r] = Gaussian();
                double squared = 0, projection = 0;
                for (int j = 0; j < n; j++)
                {
                    double sum = 0;
                    if (s[j] > 0) for (int r = 0; r < m; r++) sum += w[r * n + j] * epsilon[r];
                    v[j] = sum;
                    squared += sum * sum;
                    projection += sum * g[j];
                }
                if (squared == 0) continue; // every unit masked: the guess is 0
                for (int j = 0; j < n; j++) mean[j] += n * projection * v[j] / squared / draws;
            }
            return mean;
        });
        var (sampled, std) = Sample(problem, Guessers.WeightTranspose(TangentMode.Joint, normalized: true), samples);
        AssertWithinStandardErrors(expected, sampled, std, samples, "normalised Wᵀ (joint)");
        // And not the raw Wᵀ's mean M Wᵀ W M g: normalising changes the estimator.
        var (raw, _) = Sample(problem, Guessers.WeightTranspose(TangentMode.Joint), samples);
        Assert.True(expected.Zip(raw).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
    }

    /// <summary>
    /// Wᵀ on a residual network (issue 9): the guess at a site s is u_b = J_bᵀ ε with J_b the Jacobian of the next sites
    /// with respect to s at example b (for "embed": through tanh into both "inner" and, across the residual add,
    /// "head"), so E[u uᵀ] = J_bᵀ J_b and the estimate of ∂L/∂s_b averages to J_bᵀ J_b g_b. J_b g_b is taken by
    /// float64 central differences of the next sites, J_bᵀ(·) by the float64 reference pull-back.
    /// </summary>
    [Theory]
    [InlineData("residual")]
    [InlineData("gelu")]
    public void Weight_transpose_mean_through_the_real_consuming_ops_is_Jt_J_g(string name)
    {
        // The residual network, and an MLP with GELU between its dense layers (the mask is then GELU's f').
        var model = name == "residual" ? Problem.Residual() : new MlpSpec(3, [5, 4], 3, ElementwiseFunction.Gelu).Build();
        var problem = Problem.From(model, 16, Batch);
        var reference = new ReferenceEvaluator(model, Batch);
        var leaves = problem.Leaves();
        var expected = ExpectedMean(problem, (plan, i, b) =>
        {
            var site = model.Sites[i];
            int n = site.ElementCount;
            var g = plan.Cotangent(site.Node).ToArray().AsSpan(b * n, n).ToArray().Select(v => (double)v).ToArray();
            if (site.Next.IsEmpty) return g; // the head: N(0, I), Cov = I
            // Perturb s by g on example b only and read every next site: (J g)_f by central differences.
            var direction = new double[Batch * n];
            g.CopyTo(direction, b * n);
            const double epsilon = 1e-6;
            var perturbation = new Dictionary<int, double[]> { [site.Node.Id] = direction };
            var starts = new Dictionary<int, double[]>();
            reference.Run(leaves, perturbation, epsilon);
            var plus = site.Next.ToDictionary(j => model.Sites[j].Node.Id, j => (double[])reference.Values[model.Sites[j].Node.Id].Clone());
            reference.Run(leaves, perturbation, -epsilon);
            foreach (var (id, values) in plus) starts[id] = [.. values.Select((v, e) => (v - reference.Values[id][e]) / (2 * epsilon))];
            reference.Run(leaves);
            return reference.PullBack(starts, site.Node, 1).AsSpan(b * n, n).ToArray();
        });
        const int samples = 20000;
        var (mean, std) = Sample(problem, Guessers.WeightTranspose(TangentMode.PerLayer), samples);
        AssertWithinStandardErrors(expected, mean, std, samples, $"Wᵀ on the {name} network");
    }

    /// <summary>Activation perturbation stays unbiased for the objective Σ_losses mean ℓ on a model with a local loss, a
    /// stop-gradient and a residual that bypasses it, whether a site's JVP is of the objective or of its own losses.</summary>
    [Theory]
    [InlineData(TangentMode.PerLayer, SiteLoss.Objective)]
    [InlineData(TangentMode.Joint, SiteLoss.Local)]
    public void Activation_perturbation_is_unbiased_with_local_losses(TangentMode mode, SiteLoss loss)
    {
        var problem = Problem.From(Problem.TwoLosses(), 17, Batch);
        var g = Oracle(problem).Select(v => (double)v).ToArray();
        const int samples = 8000;
        var guesser = new ActivationGuesser("ap", Guess.Normal, Guess.Normal, mode, 2) { Loss = loss };
        var (mean, std) = Sample(problem, guesser, samples);
        AssertWithinStandardErrors(g, mean, std, samples, $"activation perturbation with local losses ({mode}, {loss})");
    }

    /// <summary>Raw activation mixing u_b = M_b Σ_c α_bc x_c has Cov(u_b) = M_b XᵀX M_b (α iid N(0,1)), so the
    /// estimate of ∂L/∂s_b averages to M_b XᵀX M_b g_b, with X the batch of layer outputs.</summary>
    [Fact]
    public void Activation_mixing_mean_is_Cov_mix_g()
    {
        var problem = SmallProblem(4, ElementwiseFunction.Tanh);
        var model = problem.Model;
        var expected = ExpectedMean(problem, (plan, i, b) =>
        {
            var layer = model.Sites[i];
            int n = layer.Node.Shape.Last;
            var g = plan.Cotangent(layer.Node).ToArray();
            var output = plan.Value(layer.Output).ToArray();
            var mask = layer.Output == layer.Node ? Enumerable.Repeat(1f, Batch * n).ToArray() : plan.Derivative(layer.Output).ToArray();
            var mg = Enumerable.Range(0, n).Select(j => mask[b * n + j] * (double)g[b * n + j]).ToArray();
            var xmg = Enumerable.Range(0, Batch).Select(c => Enumerable.Range(0, n).Sum(j => output[c * n + j] * mg[j])).ToArray();
            return Enumerable.Range(0, n).Select(j => mask[b * n + j] * Enumerable.Range(0, Batch).Sum(c => output[c * n + j] * xmg[c])).ToArray();
        });
        const int samples = 20000;
        var mixing = new ActivationGuesser("raw mixing", Guess.Mixing.Masked(), Guess.Mixing.Masked(), TangentMode.PerLayer);
        var (mean, std) = Sample(problem, mixing, samples);
        AssertWithinStandardErrors(expected, mean, std, samples, "activation mixing");
    }

    /// <summary>
    /// Directional descent's cosine to the gradient: cos = |g·v|/(‖g‖‖v‖), whose mean is √(2/(πN)) up to
    /// O(1/N) for N parameters; per-sample standard deviation √((1 − 2/π)/N).
    /// </summary>
    [Fact]
    public void Directional_descent_cosine_is_about_sqrt_2_over_pi_N()
    {
        var problem = Problem.RandomMlp(5, ElementwiseFunction.Relu, Batch, widths: [40, 30], inputs: 20, outputs: 5);
        var g = Oracle(problem);
        int n = g.Length;
        var estimator = Guessers.DirectionalDescent().Compile(problem.Parameters, Batch);
        SetBatch(problem, estimator);
        const int samples = 1500;
        double total = 0;
        for (int s = 0; s < samples; s++)
        {
            var estimate = estimator.Estimate(new RandomKey(7, 0).Derive((ulong)s)).Gradient.ToArray();
            total += Metrics.Cosine(estimate, g);
        }
        double mean = total / samples, expected = Math.Sqrt(2 / (Math.PI * n));
        double bound = 5 * Math.Sqrt((1 - 2 / Math.PI) / n) / Math.Sqrt(samples) + 1.0 / n;
        Assert.InRange(mean, expected - bound, expected + bound);
    }

    /// <summary>Cosine-matched descent builds directions with exactly the requested cosine to the gradient.</summary>
    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    [InlineData(0.9)]
    public void Cosine_matched_estimates_have_the_set_cosine(double cosine)
    {
        var problem = SmallProblem(6);
        var g = Oracle(problem);
        var estimator = Guessers.CosineMatched(cosine).Compile(problem.Parameters, Batch);
        SetBatch(problem, estimator);
        var estimate = estimator.Estimate(new RandomKey(1, 2)).Gradient.ToArray();
        Assert.InRange(Metrics.Cosine(estimate, g), cosine - 1e-4, cosine + 1e-4);
    }

    /// <summary>Self-sharpening's output layer uses the true error: its estimate there equals the gradient exactly.</summary>
    [Fact]
    public void Self_sharpening_output_layer_is_exact()
    {
        var problem = SmallProblem(7);
        var g = Oracle(problem);
        var estimator = Guessers.SelfSharpening(TangentMode.PerLayer).Compile(problem.Parameters, Batch);
        SetBatch(problem, estimator);
        var estimate = estimator.Estimate(new RandomKey(3, 3)).Gradient.ToArray();
        var last = problem.Model.Sites[^1];
        var layout = ParameterLayout.Of(problem.Model);
        var (_, offset) = layout.Entries.Single(e => e.Parameter == last.Weight());
        for (int j = 0; j < last.Weight().Shape.ElementCount; j++)
            JvpTests.AssertClose(g[offset + j], estimate[offset + j], $"output weight {j}", 1e-4);
    }

    /// <summary>k-layer downstream with k = 1 is Wᵀ: the same noise gives the same estimate.</summary>
    [Fact]
    public void One_layer_downstream_is_weight_transpose()
    {
        var problem = SmallProblem(8);
        var a = Guessers.Downstream(1).Compile(problem.Parameters, Batch);
        var b = Guessers.WeightTranspose().Compile(problem.Parameters, Batch);
        SetBatch(problem, a);
        SetBatch(problem, b);
        Assert.Equal(a.Estimate(new RandomKey(9, 9)).Gradient.ToArray(), b.Estimate(new RandomKey(9, 9)).Gradient.ToArray());
    }

    /// <summary>With p = 1 the singular-value-power variant is Wᵀ itself (up to the extra float rounding of V Vᵀ).</summary>
    [Fact]
    public void Singular_value_power_one_is_weight_transpose()
    {
        var problem = SmallProblem(9);
        var plain = Guessers.WeightTranspose().Compile(problem.Parameters, Batch);
        var spectral = new ActivationGuesser("p≈1", Guess.Normal.ProjectedWithSingularValuePower(1.0000001f).Masked(), Guess.Normal).Compile(problem.Parameters, Batch);
        SetBatch(problem, plain);
        SetBatch(problem, spectral);
        var x = plain.Estimate(new RandomKey(4, 4)).Gradient.ToArray();
        var y = spectral.Estimate(new RandomKey(4, 4)).Gradient.ToArray();
        for (int j = 0; j < x.Length; j++) JvpTests.AssertClose(x[j], y[j], $"component {j}", 1e-3);
    }

    [Fact]
    public void Jacobi_eigen_decomposition_reconstructs_the_matrix()
    {
        const int n = 6;
        var rng = new System.Random(3);
        var b = Enumerable.Range(0, n * n).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var a = new double[n * n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) for (int k = 0; k < n; k++) a[i * n + j] += b[k * n + i] * b[k * n + j];
        var copy = (double[])a.Clone();
        var vectors = new double[n * n];
        var values = new double[n];
        SpectralPower.JacobiEigen(copy, n, vectors, values);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double r = 0;
                for (int k = 0; k < n; k++) r += vectors[i * n + k] * values[k] * vectors[j * n + k];
                Assert.InRange(r - a[i * n + j], -1e-10, 1e-10);
            }
    }
}

public class MetricTests
{
    /// <summary>Effective rank (Roy &amp; Vetterli 2007): n equal singular values give n, one non-zero gives 1, and it
    /// lies in between otherwise (exp of the entropy of σ/Σσ).</summary>
    [Fact]
    public void Effective_rank_follows_its_definition()
    {
        Assert.Equal(5, Metrics.EffectiveRank([2, 2, 2, 2, 2]), 12);
        Assert.Equal(1, Metrics.EffectiveRank([3, 0, 0]), 12);
        double p = 3.0 / 4, q = 1.0 / 4;
        Assert.Equal(Math.Exp(-(p * Math.Log(p) + q * Math.Log(q))), Metrics.EffectiveRank([3, 1]), 12);
        Assert.Equal(0, Metrics.EffectiveRank([0, 0]));
    }

    [Fact]
    public void Cosine_is_scale_invariant_and_zero_for_a_zero_vector()
    {
        Assert.Equal(1, Metrics.Cosine([1, 2, 3], [2, 4, 6]), 12);
        Assert.Equal(-1, Metrics.Cosine([1, 0], [-3, 0]), 12);
        Assert.Equal(0, Metrics.Cosine([0, 0], [1, 1]));
        Assert.Throws<ArgumentException>(() => Metrics.Cosine([1], [1, 2]));
    }
}
