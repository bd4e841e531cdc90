using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>Guessers, DFA and GrAPE on convolutional sites (issue 12): every kind runs, activation perturbation is
/// unbiased (and, with batch statistics, estimates the per-example diagonal), Wᵀ pulls back through the real
/// consuming convolution, and a CNN training step allocates nothing.</summary>
public class CnnGuesserTests
{
    private const int Batch = 4;

    /// <summary>x [5, 5, 1] → conv 3 (3×3, pad 1) → batch norm → tanh → max pool 2 → conv 4 (2×2) → relu → flatten → dense 3.</summary>
    internal static Model SmallCnn(bool frozenStatistics, bool batchNorm = true)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(5, 5, 1), differentiable: false);
        var h = b.Conv2d("conv1", x, 3, 3, padding: 1);
        if (batchNorm) h = b.BatchNorm("bn1", h, affine: false, frozenStatistics: frozenStatistics);
        h = b.MaxPool2d("pool", b.Activation("tanh1", h, ElementwiseFunction.Tanh), 2);
        h = b.Flatten("flat", b.Activation("relu2", b.Conv2d("conv2", h, 4, 2), ElementwiseFunction.Relu));
        var logits = b.Dense("head", h, 3, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 3)), logits);
    }

    /// <summary>Every guesser compiles on a CNN with batch normalisation, estimates a finite, non-zero gradient, and
    /// its AdamW training steps allocate nothing after the first two.</summary>
    [Theory]
    [MemberData(nameof(GuessSampling.GuesserNames), MemberType = typeof(GuessSampling))]
    public void Every_guesser_trains_a_cnn_without_allocating(string name)
    {
        GuessSampling.AssertTrainsWithoutAllocating(Problem.From(SmallCnn(frozenStatistics: false), 5, Batch), name, Batch);
    }

    /// <summary>σ^p Wᵀ needs the spectrum of a dense next layer; on a conv site it is refused with the way out named.</summary>
    [Fact]
    public void Singular_value_powers_on_a_conv_site_are_refused_clearly()
    {
        var problem = Problem.From(SmallCnn(frozenStatistics: false), 5, Batch);
        var error = Assert.Throws<ArgumentException>(() => Guessers.WeightTransposePower(2).Compile(problem.Parameters, Batch));
        Assert.Contains("conv1", error.Message);
        Assert.Contains("PulledBack()", error.Message);
    }

    // ---- expectations ---------------------------------------------------------------------------

    private static (double[] Mean, double[] Std) Sample(Problem problem, Guesser guesser, int samples) =>
        GuessSampling.Sample(problem, guesser, Batch, samples, seed: 2026);

    private static void AssertWithinStandardErrors(double[] expected, double[] mean, double[] std, int samples, string what) =>
        GuessSampling.AssertWithinStandardErrors(expected, mean, std, samples, what);

    private static double[] Gradient(Problem problem)
    {
        var plan = problem.Compile(new PlanOptions(Batch) { Gradients = true, UpdatesRunningStatistics = false });
        plan.Forward();
        plan.Backward();
        return [.. plan.ParameterGradients.ToArray().Select(v => (double)v)];
    }

    /// <summary>With frozen statistics the examples are independent, so E[d_b u_b] = ∂L/∂s_b at every conv and dense site
    /// (tangent shaped like the feature map) and activation perturbation is unbiased on the CNN.</summary>
    [Theory]
    [InlineData(TangentMode.Joint)]
    [InlineData(TangentMode.PerLayer)]
    public void Activation_perturbation_is_unbiased_on_a_cnn(TangentMode mode)
    {
        var problem = Problem.From(SmallCnn(frozenStatistics: true), 21, Batch);
        var g = Gradient(problem);
        const int samples = 6000;
        var (mean, std) = Sample(problem, Guessers.ActivationPerturbation(mode, guesses: 2), samples);
        AssertWithinStandardErrors(g, mean, std, samples, $"activation perturbation on a CNN ({mode})");
    }

    /// <summary>
    /// With batch statistics, ℓ_b depends on every example's activation at a site before the normalisation, and a
    /// per-example guess d_b u_b with d_b = ℓ̇_b / B has expectation (1/B) ∂ℓ_b/∂s_b: the diagonal blocks of the batch's
    /// Jacobian, not ∂L/∂s_b = (1/B) Σ_b' ∂ℓ_b'/∂s_b. The test computes that diagonal exactly (a pull-back of e_c/B from the
    /// loss in C = B channels, row c of channel c), checks the estimator's mean against it, and that it differs from
    /// the gradient: per-example activation perturbation is biased under batch statistics (docs/models.md, "What batch statistics mean for per-example guesses").
    /// </summary>
    [Fact]
    public void Activation_perturbation_with_batch_statistics_estimates_the_per_example_diagonal()
    {
        var problem = Problem.From(SmallCnn(frozenStatistics: false), 22, Batch);
        var model = problem.Model;
        var plan = problem.Compile(new PlanOptions(Batch) { Gradients = true, UpdatesRunningStatistics = false });
        plan.Forward();
        var diagonal = new List<float[]>();
        foreach (var site in model.Sites)
        {
            var pullBack = plan.CreatePullBack([model.Loss], site.Node, Batch);
            var seed = new float[Batch * Batch];
            for (int c = 0; c < Batch; c++) seed[c * Batch + c] = 1f / Batch;
            CpuBackend.Span(pullBack.Cotangent(model.Loss)).CopyFrom(seed);
            pullBack.Run();
            var all = pullBack.Cotangent(site.Node).ToArray();
            int n = site.ElementCount;
            var rows = new float[Batch * n];
            for (int b = 0; b < Batch; b++) Array.Copy(all, (b * Batch + b) * n, rows, b * n, n);
            diagonal.Add(rows);
        }
        var expected = GuessSampling.ParametersFrom(problem, plan, diagonal);
        const int samples = 6000;
        var (mean, std) = Sample(problem, Guessers.ActivationPerturbation(TangentMode.Joint, guesses: 2), samples);
        AssertWithinStandardErrors(expected, mean, std, samples, "activation perturbation under batch statistics");
        var g = Gradient(problem);
        double bias = expected.Zip(g).Max(p => Math.Abs(p.First - p.Second)), scale = g.Max(Math.Abs);
        Assert.True(bias > 0.05 * scale, $"the diagonal expectation should differ from the gradient (largest difference {bias:G3}, gradient scale {scale:G3})");
    }

    /// <summary>
    /// Wᵀ on a CNN: the guess at conv1 is the noise at conv2 pulled back through conv2's transposed convolution, the
    /// max pool's scatter, tanh's derivative and the frozen normalisation: u_b = J_bᵀ ε, so the mean estimate of
    /// ∂L/∂s_b is J_bᵀ J_b g_b (g_b the exact per-example cotangent). J_b g_b by float64 central differences of the
    /// reference evaluator (perturbing example b only), J_bᵀ(·) by the plan's pull-back (adjoint-tested in CnnTests).
    /// </summary>
    [Fact]
    public void Weight_transpose_mean_through_a_convolution_is_Jt_J_g()
    {
        var problem = Problem.From(SmallCnn(frozenStatistics: true), 23, Batch);
        var model = problem.Model;
        var plan = problem.Compile(new PlanOptions(Batch) { Gradients = true, UpdatesRunningStatistics = false });
        plan.Forward();
        plan.Backward();
        var reference = new ReferenceEvaluator(model, Batch);
        var leaves = problem.Leaves();
        var cotangents = new List<float[]>();
        foreach (var site in model.Sites)
        {
            var g = plan.Cotangent(site.Node).ToArray();
            if (site.Next.IsEmpty) { cotangents.Add(g); continue; } // the head: N(0, I) noise, Cov = I
            var next = model.Sites[site.Next.Single()].Node;
            int n = site.ElementCount, m = next.Shape.ElementCount;
            var pullBack = plan.CreatePullBack([next], site.Node);
            var expected = new float[Batch * n];
            for (int b = 0; b < Batch; b++)
            {
                var direction = new double[Batch * n];
                for (int j = 0; j < n; j++) direction[b * n + j] = g[b * n + j];
                const double epsilon = 1e-6;
                var perturbation = new Dictionary<int, double[]> { [site.Node.Id] = direction };
                reference.Run(leaves, perturbation, epsilon);
                var plus = (double[])reference.Values[next.Id].Clone();
                reference.Run(leaves, perturbation, -epsilon);
                var jg = new float[Batch * m];
                for (int j = 0; j < m; j++) jg[b * m + j] = (float)((plus[b * m + j] - reference.Values[next.Id][b * m + j]) / (2 * epsilon));
                CpuBackend.Span(pullBack.Cotangent(next)).CopyFrom(jg);
                pullBack.Run();
                Array.Copy(pullBack.Cotangent(site.Node).ToArray(), b * n, expected, b * n, n);
            }
            cotangents.Add(expected);
        }
        var mean = GuessSampling.ParametersFrom(problem, plan, cotangents);
        const int samples = 12000;
        var (sampled, std) = Sample(problem, Guessers.WeightTranspose(TangentMode.PerLayer), samples);
        AssertWithinStandardErrors(mean, sampled, std, samples, "Wᵀ on a CNN");
    }
}
