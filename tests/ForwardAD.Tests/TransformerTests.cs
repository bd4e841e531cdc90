using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// The whole transformer language model (issue 13, <see cref="TransformerSpec"/>): a 2-layer model's losses, logits,
/// gradients and JVP against PyTorch (Golden/transformer.py), the JVP with tangents on every site and parameter against
/// central differences of the float64 reference, every guesser on it without allocating, and activation perturbation
/// unbiased on it.
/// </summary>
public class TransformerTests
{
    // ---- problems ---------------------------------------------------------------------------------

    /// <summary>Parameters off their defaults (LayerNorm γ = 1 + N(0, 0.3²), every bias and β N(0, 0.3²) by
    /// <see cref="Problem.From"/>) and valid token ids: uniform in [0, V), the targets the inputs shifted by one
    /// position, and with <paramref name="padTarget"/> the padding target −1 at position 1 of example 0 (ignored by the loss).</summary>
    internal static Problem Randomized(TransformerSpec spec, int seed, int batch, bool padTarget = false, Backends.Backend? backend = null)
    {
        var model = spec.Build();
        var problem = Problem.From(model, seed, batch, backend);
        foreach (var p in model.Parameters.Where(p => p.Name.Contains("ln") && p.Name.EndsWith(".weight")))
            problem.Parameters.Set(p, [.. Problem.Normal(seed + 7 * p.Id, p.Shape.ElementCount, 0.3f).Select(v => 1 + v)]);
        var rng = new System.Random(seed);
        int T = spec.Context;
        var x = Enumerable.Range(0, batch * T).Select(_ => (float)rng.Next(spec.Vocabulary)).ToArray();
        var y = new float[batch * T];
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < T; t++) y[b * T + t] = t + 1 < T ? x[b * T + t + 1] : rng.Next(spec.Vocabulary);
        if (padTarget && T > 1) y[1] = -1;
        problem.Inputs[model["x"].Id] = x;
        problem.Inputs[model["y"].Id] = y;
        return problem;
    }

    // ---- PyTorch golden values (Golden/transformer.py, float64) -------------------------------------

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "transformer.json"))).RootElement;

    private static float[] Data(JsonElement array) => [.. array.GetProperty("data").EnumerateArray().Select(v => v.GetSingle())];
    private static float[] Ids(JsonElement rows) => [.. rows.EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => (float)v.GetInt32())];

    /// <summary>
    /// TransformerSpec(2 layers, 2 heads, width 8, context 5, vocabulary 11) with the script's parameters against PyTorch in
    /// float64: the per-example losses (one example with an ignored padding target), the logits, the JVP of the losses and
    /// logits along a random tangent on every parameter, and the gradient of the mean loss for every parameter, name for
    /// name (our parameter names and layouts are the script's). Float32 (ε = 6e-8) through ~20 chained ops with ≤ 32-term
    /// sums and LayerNorms dividing by standard deviations of O(1); measured here: ≤ 2e-7 relative (to 1 + |expected|) for
    /// values and gradients, ≤ 3e-6 for the logit JVP (entries up to 18); 2e-5 leaves room for other summation orders and
    /// still fails for the tanh GELU in place of the exact one. (k.bias has a zero gradient: softmax ignores a shift of every
    /// score of a row; q·b_k is one. Ours is float32 rounding of ~1e-8, within the absolute part of the tolerance.)
    /// </summary>
    [Fact]
    public void Two_layer_model_matches_pytorch()
    {
        var config = Golden.GetProperty("config");
        var spec = new TransformerSpec(config.GetProperty("layers").GetInt32(), config.GetProperty("heads").GetInt32(), config.GetProperty("width").GetInt32(),
            config.GetProperty("context").GetInt32(), config.GetProperty("vocabulary").GetInt32());
        Assert.Equal(new TransformerSpec(Layers: 2, Heads: 2, Width: 8, Context: 5, Vocabulary: 11), spec);
        int batch = config.GetProperty("batch").GetInt32();
        var model = spec.Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        var golden = Golden.GetProperty("parameters");
        Assert.Equal(model.Parameters.Select(p => p.Name).Order(), golden.EnumerateObject().Select(p => p.Name).Order());
        foreach (var p in golden.EnumerateObject())
        {
            Assert.Equal(p.Value.GetProperty("shape").EnumerateArray().Select(v => v.GetInt32()), model[p.Name].Shape.Dimensions);
            store.Set(model[p.Name], Data(p.Value));
        }
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true, Seeds = [.. model.Parameters.Select(p => new TangentSeed(p))] });
        plan.SetInput(model["x"], Ids(Golden.GetProperty("x")));
        var targets = Ids(Golden.GetProperty("y"));
        Assert.Contains(-1f, targets);
        plan.SetInput(model["y"], targets);
        foreach (var p in Golden.GetProperty("jvp").GetProperty("tangents").EnumerateObject()) CpuBackend.Span(plan.Seed(model[p.Name])).CopyFrom(Data(p.Value));

        plan.Forward();
        AssertAll(Data(Golden.GetProperty("per_example_loss")), plan.Value(model.Loss).ToArray(), "losses");
        AssertAll(Data(Golden.GetProperty("logits")), plan.Value(model.Output).ToArray(), "logits");
        plan.Jvp();
        AssertAll(Data(Golden.GetProperty("jvp").GetProperty("per_example_loss")), plan.Tangent(model.Loss).ToArray(), "loss JVP");
        AssertAll(Data(Golden.GetProperty("jvp").GetProperty("logits")), plan.Tangent(model.Output).ToArray(), "logit JVP");
        plan.Backward();
        foreach (var p in Golden.GetProperty("gradients").EnumerateObject())
            AssertAll(Data(p.Value), plan.Gradient(model[p.Name]).ToArray(), $"∂L/∂{p.Name}");
    }

    /// <summary>Element by element, |actual − expected| ≤ 2e-5 (1 + |expected|): see <see cref="Two_layer_model_matches_pytorch"/>.</summary>
    private static void AssertAll(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) JvpTests.AssertClose(expected[i], actual[i], $"{what}[{i}]", 2e-5);
    }

    // ---- the JVP against central differences of the float64 reference -------------------------------

    /// <summary>
    /// The JVP of every example's loss and of the logits with tangents on every site (embedding, positions, each
    /// LayerNorm, q, k, v, proj, fc₁, fc₂, head) and every parameter at once, K = 2 channels, against central differences of
    /// the float64 reference evaluator (which has its own loops for attention, LayerNorm, embeddings, GELU and the sequence
    /// loss). One target is padding. ε = 1e-5 in double: truncation ~1e-10 relative; float32 plan ~1e-6 relative per op,
    /// hence JvpTests' 2e-4.
    /// </summary>
    [Theory]
    [InlineData(2, 2, 8, 5, 11)]
    [InlineData(1, 3, 9, 1, 4)] // T = 1 (attention to itself only), three heads of odd width 3
    public void Jvp_matches_central_differences_of_a_float64_reference(int layers, int heads, int width, int context, int vocabulary)
    {
        var spec = new TransformerSpec(layers, heads, width, context, vocabulary, MlpRatio: 2);
        const int batch = 3, K = 2;
        var problem = Randomized(spec, 60 + context, batch, padTarget: true);
        var model = problem.Model;
        var seeded = model.Parameters.Concat(model.Sites.Select(s => s.Node)).ToList();
        Assert.Contains(model.Sites, s => s.Node.Op is EmbeddingOp);
        FiniteDifferences.AssertJvpMatchesReference(problem, seeded, K, spec.ToString(), seedBase: 700);
    }

    // ---- guessers ---------------------------------------------------------------------------------

    private static readonly TransformerSpec Small = new(Layers: 2, Heads: 2, Width: 8, Context: 5, Vocabulary: 11);

    /// <summary>Every guesser compiles on the transformer, estimates a finite, non-zero gradient, and its AdamW training
    /// steps allocate nothing after two warm-up steps.</summary>
    [Theory]
    [MemberData(nameof(GuessSampling.GuesserNames), MemberType = typeof(GuessSampling))]
    public void Every_guesser_trains_a_transformer_without_allocating(string name)
    {
        GuessSampling.AssertTrainsWithoutAllocating(Randomized(Small, 5, 3, padTarget: true), name, 3);
    }

    /// <summary>σ^p Wᵀ needs the spectrum of a dense next layer; the transformer's first site (the token embedding, consumed by
    /// the positional add) has none, and the guesser is refused naming the site and the way out.</summary>
    [Fact]
    public void Singular_value_powers_on_a_transformer_are_refused_clearly()
    {
        var problem = Randomized(Small, 5, 2);
        var error = Assert.Throws<ArgumentException>(() => Guessers.WeightTransposePower(2).Compile(problem.Parameters, 2));
        Assert.Contains("embed", error.Message);
        Assert.Contains("PulledBack()", error.Message);
    }

    /// <summary>On a sequence model DFA's feedback matrix at a site is shared over positions, (site width) × V: for fc1 of
    /// l1-h1-d64-t256 that is 256 × 256, where one over whole sequences would be 256·256 × 256·256 = 2³² floats (which wrapped
    /// around to an empty matrix before sizes were checked). Both DFA and GrAPE compile and step on it.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Feedback_matrices_on_long_sequences_are_per_position(bool grape)
    {
        var problem = Randomized(new TransformerSpec(Layers: 1, Heads: 1, Width: 64, Context: 256, Vocabulary: 256), 3, 1);
        var guesser = grape ? Guessers.Grape(new GrapeOptions()) : Guessers.Dfa();
        var estimator = (FeedbackEstimator)guesser.Compile(problem.Parameters, 1);
        var model = problem.Model;
        int fc1 = Array.FindIndex(model.Sites.Where(s => s.Node != model.Output).ToArray(), s => s.Name == "block1.fc1");
        Assert.Equal(256 * 256, estimator.Feedback(fc1).Length);
        estimator.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
        Assert.All(estimator.Estimate(default).Gradient.ToArray(), v => Assert.True(float.IsFinite(v)));
    }

    /// <summary>
    /// Attention couples the positions of an example and LayerNorm the columns of a row, but nothing couples examples: ℓ_b
    /// depends on example b's activations only, so E[d_b u_b] = ∂L/∂s_b at every site (u_b ~ N(0, I) over the whole [T, D]
    /// activation) and activation perturbation is unbiased, for joint and per-layer tangents. Mean of 6000 estimates within 5
    /// standard errors of backprop's gradient, on a model small enough for the test to take a few seconds.
    /// </summary>
    [Theory]
    [InlineData(TangentMode.Joint)]
    [InlineData(TangentMode.PerLayer)]
    public void Activation_perturbation_is_unbiased_on_a_transformer(TangentMode mode)
    {
        const int batch = 3;
        var problem = Randomized(new TransformerSpec(Layers: 1, Heads: 2, Width: 4, Context: 3, Vocabulary: 5, MlpRatio: 2), 31, batch, padTarget: true);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var g = plan.ParameterGradients.ToArray().Select(v => (double)v).ToArray();
        const int samples = 6000;
        var estimator = Guessers.ActivationPerturbation(mode, guesses: mode == TangentMode.Joint ? 2 : 1).Compile(problem.Parameters, batch);
        estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        AssertMeanWithinStandardErrors(g, estimator, samples, $"activation perturbation ({mode})");
    }

    /// <summary>
    /// Wᵀ on a transformer: the guess at a site is N(0, I) noise ε_n at each of its next sites n (<see cref="Site.Next"/>: for
    /// ln1, the q, k and v projections; for the residual stream's sites, every LayerNorm downstream on the stream; for v, the
    /// output projection through attention) pulled back through the real ops in between, u_b = Σ_n J_nbᵀ ε_n, so the mean
    /// estimate of ∂L/∂s_b is Σ_n J_nbᵀ J_nb g_b (g_b the exact per-example cotangent). J_nb g_b by float64 central differences
    /// of the reference evaluator (perturbing example b only; attention's and LayerNorm's Jacobians come from its own
    /// loops), Σ_n J_nᵀ(·) by the plan's pull-back from all next sites at once (what the guesser runs, adjoint-tested per op).
    /// Per-layer tangents: each site's estimate has its own JVP, so other sites' guesses add no cross terms.
    /// </summary>
    [Fact]
    public void Weight_transpose_mean_through_attention_and_layer_norms_is_Jt_J_g()
    {
        const int batch = 2;
        var problem = Randomized(new TransformerSpec(Layers: 1, Heads: 2, Width: 4, Context: 3, Vocabulary: 5, MlpRatio: 2), 32, batch, padTarget: true);
        var model = problem.Model;
        // ln1 feeds q, k, v; v reaches proj only through attention.
        Assert.Equal(["block1.q", "block1.k", "block1.v"], model.Sites.Single(s => s.Name == "block1.ln1").Next.Select(j => model.Sites[j].Name));
        Assert.Equal(["block1.proj"], model.Sites.Single(s => s.Name == "block1.v").Next.Select(j => model.Sites[j].Name));
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        var cotangents = new List<float[]>();
        foreach (var site in model.Sites)
        {
            var g = plan.Cotangent(site.Node).ToArray();
            if (site.Next.IsEmpty) { cotangents.Add(g); continue; } // the head: N(0, I) noise, Cov = I
            var next = site.Next.Select(j => model.Sites[j].Node).ToList();
            int n = site.ElementCount;
            var pullBack = plan.CreatePullBack(next, site.Node);
            var expected = new float[batch * n];
            for (int b = 0; b < batch; b++)
            {
                var direction = new double[batch * n];
                for (int j = 0; j < n; j++) direction[b * n + j] = g[b * n + j];
                const double epsilon = 1e-6;
                var perturbation = new Dictionary<int, double[]> { [site.Node.Id] = direction };
                reference.Run(leaves, perturbation, epsilon);
                var plus = next.ToDictionary(f => f.Id, f => (double[])reference.Values[f.Id].Clone());
                reference.Run(leaves, perturbation, -epsilon);
                foreach (var f in next)
                {
                    int m = f.Shape.ElementCount;
                    var jg = new float[batch * m];
                    for (int j = 0; j < m; j++) jg[b * m + j] = (float)((plus[f.Id][b * m + j] - reference.Values[f.Id][b * m + j]) / (2 * epsilon));
                    CpuBackend.Span(pullBack.Cotangent(f)).CopyFrom(jg);
                }
                pullBack.Run();
                Array.Copy(pullBack.Cotangent(site.Node).ToArray(), b * n, expected, b * n, n);
            }
            cotangents.Add(expected);
        }
        var mean = GuessSampling.ParametersFrom(problem, plan, cotangents);
        const int samples = 6000;
        var estimator = Guessers.WeightTranspose(TangentMode.PerLayer).Compile(problem.Parameters, batch);
        estimator.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
        AssertMeanWithinStandardErrors(mean, estimator, samples, "Wᵀ on a transformer");
    }

    /// <summary>Mean of <paramref name="samples"/> estimates within 5 standard errors of <paramref name="expected"/> per component
    /// (a false failure has odds ~6e-7 each), plus float32 rounding.</summary>
    private static void AssertMeanWithinStandardErrors(double[] expected, Training.GradientEstimator estimator, int samples, string what)
    {
        var (sum, squares) = (new double[expected.Length], new double[expected.Length]);
        for (int s = 0; s < samples; s++)
        {
            var estimate = CpuBackend.Span(estimator.Estimate(new RandomKey(2027, 0).Derive((ulong)s)).Gradient);
            for (int j = 0; j < expected.Length; j++) { sum[j] += estimate[j]; squares[j] += (double)estimate[j] * estimate[j]; }
        }
        for (int j = 0; j < expected.Length; j++)
        {
            double mean = sum[j] / samples, std = Math.Sqrt(Math.Max(0, squares[j] / samples - mean * mean) * samples / (samples - 1));
            double bound = 5 * std / Math.Sqrt(samples) + 1e-6 * (1 + Math.Abs(expected[j]));
            Assert.True(Math.Abs(mean - expected[j]) <= bound, $"{what}: component {j} mean {mean:G6}, expected {expected[j]:G6} (5 standard errors = {bound:G3})");
        }
    }
}
