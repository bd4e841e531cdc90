using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Data;
using ForwardAD.Optim;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// Sites (issue 9, docs/design.md §2): found from the graph; guesses pulled back through the ops that really consume a
/// site (checked against an independent float64 pull-back); one site-to-parameter update path; stop-gradients and
/// several losses (checked against PyTorch, Golden/two_losses.py).
/// </summary>
public class SiteTests
{
    private static int[] SiteIndices(Model model, params string[] names) => [.. names.Select(n => model.Site(model[n]).Index)];

    [Fact]
    public void Sites_next_sites_activations_and_losses_come_from_the_graph()
    {
        var residual = Problem.Residual();
        Assert.Equal(["embed", "inner", "outer", "head"], residual.Sites.Select(s => s.Name));
        var embed = residual.Sites[0];
        Assert.Equal(residual["embed.tanh"], embed.Activation);
        // "embed" feeds "inner" directly and "head" through the residual add: both are its next sites.
        Assert.Equal(SiteIndices(residual, "inner", "head"), embed.Next);
        Assert.Null(residual.Sites[2].Activation); // "outer" is consumed by the add, not by an elementwise op
        Assert.Equal(SiteIndices(residual, "head"), residual.Sites[2].Next);
        Assert.Empty(residual.Sites[3].Next);
        Assert.Equal([residual["head.weight"], residual["head.bias"]], residual.Sites[3].Parameters);
        Assert.All(residual.Sites, s => Assert.Equal([residual.Loss], s.Losses));

        var twoLosses = Problem.TwoLosses();
        var block1 = twoLosses.Site(twoLosses["block1"]);
        // The stop-gradient hides "block2" from "block1"; the residual add does not hide "head".
        Assert.Equal(SiteIndices(twoLosses, "local", "head"), block1.Next);
        Assert.Equal([twoLosses["local_loss"], twoLosses["loss"]], block1.Losses);
        Assert.Equal([twoLosses["local_loss"]], twoLosses.Site(twoLosses["local"]).Losses);
        Assert.Equal([twoLosses["loss"]], twoLosses.Site(twoLosses["block2"]).Losses);
        Assert.Equal([twoLosses["loss"], twoLosses["local_loss"]], twoLosses.Losses);
    }

    [Fact]
    public void Users_mark_sites_and_ops_own_their_shape_rules()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(3), differentiable: false);
        var h = builder.Dense("dense", x, 4, ElementwiseFunction.Relu).Output;
        var marked = builder.MarkSite(builder.Add("sum", h, h));
        var logits = builder.Dense("head", marked, 2, ElementwiseFunction.Identity).Output;
        var model = builder.Build(builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", 2)), logits);
        var site = model.Site(marked);
        Assert.Empty(site.Parameters);
        Assert.Equal(SiteIndices(model, "sum"), model.Sites[0].Next);
        Assert.Contains("cannot be a site", Assert.Throws<ArgumentException>(() => builder.MarkSite(x)).Message);
        // The builder only wires: the op's own rule checks arity and shapes and names the node.
        Assert.Contains("takes 2 inputs; got 1", Assert.Throws<ArgumentException>(() => builder.Apply("bad", new AddOp(), h)).Message);
        var misfit = builder.Parameter("misfit", new Shape(2, 5), Initializer.Zeros);
        var mismatch = Assert.Throws<ShapeMismatchException>(() => builder.Apply("wrong", new LinearOp(), h, misfit));
        Assert.Equal("wrong", mismatch.Node);
        Assert.Contains("weight [out, 4]", mismatch.Message);
        Assert.Contains("stop-gradient", Assert.Throws<ArgumentException>(() => builder.MarkSite(builder.StopGradient("stop", h))).Message);
    }

    public static TheoryData<string, int> PullBackCases() => new()
    {
        { "residual", 1 }, { "residual", 2 }, { "gelu", 1 }, { "gelu", 2 }, { "two-losses", 1 },
    };

    private static Model CaseModel(string name) => name switch
    {
        "residual" => Problem.Residual(),
        "gelu" => new MlpSpec(3, [5, 4, 4], 3, ElementwiseFunction.Gelu).Build(),
        _ => Problem.TwoLosses(),
    };

    /// <summary>
    /// The Wᵀ / k-layer downstream guess at every site equals the float64 pull-back, op by op, of N(0, I) noise at
    /// the next sites (regenerated from its Philox key) through the real consuming ops: the residual add, the GELU,
    /// the tanh, several consumers at once; recursively for k = 2.
    /// </summary>
    [Theory]
    [MemberData(nameof(PullBackCases))]
    public void Pulled_back_guesses_equal_the_float64_vjp_of_the_consuming_ops(string modelName, int k)
    {
        const int batch = 3, guesses = 2;
        var model = CaseModel(modelName);
        var problem = Problem.From(model, 11, batch);
        var estimator = new ActivationGuesser("pulled back", Guess.Normal.PulledBack(k), Guess.Normal, TangentMode.Joint, guesses).Compile(problem.Parameters, batch);
        estimator.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
        var key = new RandomKey(5, 6);
        estimator.Estimate(key);
        var reference = new ReferenceEvaluator(model, batch);
        reference.Run(problem.Leaves());

        double[] Noise(RandomKey noiseKey, Site site)
        {
            var values = new float[guesses * batch * site.ElementCount];
            RandomFill.Normal(noiseKey, 0, 0f, 1f, values);
            return [.. values.Select(v => (double)v)];
        }
        double[] Expected(Site site, int depth, RandomKey siteKey)
        {
            if (depth == 0 || site.Next.IsEmpty) return Noise(siteKey, site);
            var starts = site.Next.Select((j, index) => (j, index)).ToDictionary(
                p => model.Sites[p.j].Node.Id, p => Expected(model.Sites[p.j], depth - 1, siteKey.Derive(1 + (ulong)p.index)));
            return reference.PullBack(starts, site.Node, guesses);
        }

        foreach (var site in model.Sites)
        {
            var expected = Expected(site, k, key.Derive((ulong)site.Index));
            var actual = estimator.Plan.Seed(site.Node).ToArray();
            Assert.Equal(expected.Length, actual.Length);
            double scale = expected.Max(Math.Abs);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-5 * (1 + scale), $"{modelName} k={k} {site} element {i}: {actual[i]} vs float64 {expected[i]}");
        }
    }

    /// <summary>The update path is backprop's own rule: the exact site cotangents through it give the exact gradient.</summary>
    [Theory]
    [InlineData("residual")]
    [InlineData("gelu")]
    [InlineData("two-losses")]
    public void Exact_site_cotangents_through_the_update_path_give_the_backprop_gradient(string modelName)
    {
        const int batch = 5;
        var model = CaseModel(modelName);
        var problem = Problem.From(model, 12, batch);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var destination = new View(new CpuBackend().Allocate(problem.Parameters.All.Length));
        var update = plan.CreateParameterUpdate([.. model.Sites.Select(s => s.Node)], destination);
        for (int i = 0; i < model.Sites.Length; i++) update.Write(i, plan.Cotangent(model.Sites[i].Node));
        var exact = plan.ParameterGradients.ToArray();
        var viaSites = destination.ToArray();
        for (int j = 0; j < exact.Length; j++) JvpTests.AssertClose(exact[j], viaSites[j], $"{modelName} parameter element {j}", 1e-5);
    }

    /// <summary>Nothing crosses a stop-gradient: no tangent past it, no cotangent before it, no pull-back across it.</summary>
    [Fact]
    public void Tangents_and_cotangents_stop_at_a_stop_gradient()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(3), differentiable: false);
        var first = builder.Dense("first", x, 4, ElementwiseFunction.Relu);
        var stop = builder.StopGradient("stop", first.Output);
        var logits = builder.Dense("second", stop, 2, ElementwiseFunction.Identity).Output;
        var model = builder.Build(builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", 2)), logits);
        var problem = Problem.From(model, 13, 4);

        var jvp = problem.Compile(new PlanOptions(4) { TangentCount = 2, Seeds = [new TangentSeed(first.PreActivation, new RandomKey(1, 2))] });
        jvp.ForwardJvp();
        Assert.False(jvp.IsTangentZero(first.Output));
        Assert.True(jvp.IsTangentZero(stop));
        Assert.True(jvp.IsTangentZero(model.Loss));
        Assert.Contains("no derivative flows", Assert.Throws<ArgumentException>(() => Plan.Compile(problem.Parameters, new PlanOptions(4) { Seeds = [new TangentSeed(stop)] })).Message);

        var backprop = problem.Compile(new PlanOptions(4) { Gradients = true });
        backprop.Forward();
        backprop.Backward();
        Assert.All(backprop.Gradient(first.Weight).ToArray(), v => Assert.Equal(0f, v));
        Assert.Contains(backprop.Gradient(model["second.weight"]).ToArray(), v => v != 0f);
        Assert.Contains("derivative path", Assert.Throws<ArgumentException>(() => backprop.CreatePullBack([model["second"]], first.PreActivation)).Message);

        var site = model.Site(first.PreActivation);
        Assert.Empty(site.Next);
        Assert.Empty(site.Losses);
    }

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "two_losses.json"))).RootElement;

    private static float[] Floats(JsonElement e) => [.. e.EnumerateArray().Select(v => v.GetSingle())];

    /// <summary>The objective Σ_losses mean_b ℓ_b with a stop-gradient and a residual that bypasses it: losses and every
    /// parameter's gradient against PyTorch's autograd (Golden/two_losses.py).</summary>
    [Fact]
    public void Two_loss_gradients_match_pytorch()
    {
        const int batch = 4;
        var model = Problem.TwoLosses();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        foreach (var p in Golden.GetProperty("parameters").EnumerateObject()) store.Set(model[p.Name], Floats(p.Value));
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true });
        plan.SetInput(model["x"], Floats(Golden.GetProperty("x")));
        plan.SetInput(model["y"], [.. Golden.GetProperty("y").EnumerateArray().Select(v => (float)v.GetInt32())]);
        plan.Forward();
        plan.Backward();
        var mainLoss = plan.Value(model.Loss).ToArray();
        var localLoss = plan.Value(model["local_loss"]).ToArray();
        var expectedMain = Floats(Golden.GetProperty("main_loss"));
        var expectedLocal = Floats(Golden.GetProperty("local_loss"));
        for (int b = 0; b < batch; b++)
        {
            JvpTests.AssertClose(expectedMain[b], mainLoss[b], $"main loss {b}", 1e-5);
            JvpTests.AssertClose(expectedLocal[b], localLoss[b], $"local loss {b}", 1e-5);
        }
        foreach (var g in Golden.GetProperty("gradients").EnumerateObject())
        {
            var expected = Floats(g.Value);
            var actual = plan.Gradient(model[g.Name]).ToArray();
            for (int j = 0; j < expected.Length; j++) JvpTests.AssertClose(expected[j], actual[j], $"∂L/∂{g.Name}[{j}]", 1e-5);
        }
        // The stop-gradient is real: block2 learns from the main loss only, and block1 still hears it through the residual.
        Assert.Contains(plan.Gradient(model["block2.weight"]).ToArray(), v => v != 0f);
    }

    /// <summary>Every estimator on a residual and a two-loss model: training steps allocate nothing.</summary>
    [Fact]
    public void Estimators_on_site_graphs_allocate_nothing()
    {
        var guessers = new Guesser[]
        {
            Guessers.ActivationPerturbation(), Guessers.WeightTranspose(TangentMode.PerLayer), Guessers.Downstream(2, guesses: 2),
            Guessers.ActivationMixing(), Guessers.SelfSharpening(), Guessers.Dfa(),
            Guessers.Grape(new GrapeOptions { Mode = TangentMode.PerLayer }),
            new ActivationGuesser("local Wᵀ", Guesses.WeightTranspose, Guess.Normal) { Loss = SiteLoss.Local },
        };
        foreach (var model in new[] { Problem.Residual(), Problem.TwoLosses() })
        {
            var problem = Problem.From(model, 14, 8);
            foreach (var guesser in guessers)
            {
                var estimator = guesser.Compile(problem.Parameters, 8);
                estimator.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
                Allocations.AssertNone(t => estimator.Estimate(new RandomKey(1, (ulong)t), t), warmUp: 2, steps: 3,
                    $"{guesser.Name} on {string.Join(",", model.Sites.Select(s => s.Name))}");
            }
        }
    }

    /// <summary>The "Sites" example of docs/library.md, verbatim between the markers (its using lines are this file's): a guesser on a
    /// residual model trains.</summary>
    [Fact]
    public void Readme_residual_example_trains()
    {
        // docs/library.md: sites example (after its using lines)
        var (train, test) = Digits.Load().Split(0.2, seed: 1);
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(64), differentiable: false);
        var h = b.Dense("embed", x, 64, ElementwiseFunction.Relu).Output;
        var inner = b.Dense("inner", h, 64, ElementwiseFunction.Gelu).Output;
        var r = b.Add("residual", h, b.Dense("outer", inner, 64, ElementwiseFunction.Identity).Output); // h + W₂ gelu(W₁ h)
        var logits = b.Dense("head", r, 10, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 10)), logits);
        // Sites from the graph: embed, inner, outer, head. Wᵀ at "embed" pulls noise at "inner" AND "head" back through gelu, the add, relu.
        var guesser = new ActivationGuesser("Wᵀ, normalised", Guess.Normal.PulledBack().Normalized(), Guess.Normal, TangentMode.PerLayer);
        var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed: 1);
        var trainer = new Trainer(guesser, Optimizers.AdamW(1e-3f), parameters, train, test, new TrainingOptions(BatchSize: 32, Seed: 1));
        // docs/library.md: end
        var report = trainer.RunEpoch(0);
        Assert.Equal(["embed", "inner", "outer", "head"], model.Sites.Select(s => s.Name));
        Assert.Equal(4, report.SiteCosines.Length);
        Assert.True(report.TestAccuracy > 0.3, $"one epoch of normalised Wᵀ reached {report.TestAccuracy:P1} test accuracy (chance is 10%)");
        Assert.True(report.GlobalCosine > 0, $"mean cosine to backprop {report.GlobalCosine:F3}");
    }

    /// <summary>The singular-value-power variant needs a plain dense successor and says so on a residual graph.</summary>
    [Fact]
    public void Projection_by_a_weight_explains_where_it_is_undefined()
    {
        var problem = Problem.From(Problem.Residual(), 15, 4);
        var error = Assert.Throws<ArgumentException>(() => Guessers.WeightTransposePower(0.5f).Compile(problem.Parameters, 4));
        Assert.Contains("PulledBack()", error.Message);
    }
}
