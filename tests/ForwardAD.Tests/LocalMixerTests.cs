using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// The LocalMixer (issue 14): token mixing, the group-wise linear layer and the grouped local loss (adjoint identities and
/// central differences of the float64 reference), the whole tiny mixer's local-loss JVPs against central differences, its
/// backprop gradients and stop-gradients against PyTorch (Golden/local_mixer.py), activation perturbation with local losses
/// unbiased on it, every mixer guesser allocation-free, and the spec's text form and errors.
/// </summary>
public class LocalMixerTests
{
    /// <summary>Groups of 3 channels: LayerNorm over a group of 2 (TinySpec's) gives ±1 whatever its input, so no gradient
    /// reaches the sites inside a block; the per-block tests need one that does.</summary>
    internal static LocalMixerSpec BlockSpec => new(new Shape(4, 4, 2), Patch: 2, Width: 6, Blocks: 2, Groups: 2, Classes: 3, Expansion: 2, Variant: LocalMixerVariant.Blocks);

    internal static LocalMixerSpec TinySpec => new(new Shape(4, 4, 2), Patch: 2, Width: 4, Blocks: 2, Groups: 2, Classes: 3, Expansion: 2, Variant: LocalMixerVariant.Blocks);

    /// <summary>Ren et al.'s construction, tiny: 4 tokens of 2×2×2 pixels, a patch block and one mixer block, 2 groups of 3
    /// channels (hidden 12: groups of 6), 3 classes.</summary>
    internal static LocalMixerSpec RenSpec => new(new Shape(4, 4, 2), Patch: 2, Width: 6, Blocks: 2, Groups: 2, Classes: 3, Expansion: 2);

    private sealed record OpModel(Model Model, Node X, Node Op);

    /// <summary>x → op → flatten → mean squared error against a fixed target (so every output element carries a cotangent),
    /// or x → op → grouped cross-entropy.</summary>
    private static OpModel Build(string name)
    {
        var b = new ModelBuilder();
        if (name == "patches p2 c3")
        {
            var image = b.Input("x", new Shape(4, 6, 3));
            var patches = b.Patches("op", image, 2);
            var flatPatches = b.Flatten("flat", patches);
            var patchTarget = b.Input("target", flatPatches.Shape, differentiable: false);
            return new OpModel(b.Build(b.MeanSquaredError("loss", flatPatches, patchTarget), flatPatches), image, patches);
        }
        if (name == "grouped-ce g3 c4")
        {
            var z = b.Input("x", new Shape(3, 4));
            var ce = b.GroupedSoftmaxCrossEntropy("loss", z, b.ClassLabels("y", 4));
            return new OpModel(b.Build(ce, z), z, ce);
        }
        var x = b.Input("x", name.StartsWith("grouped-linear") ? new Shape(3, 6) : new Shape(5, 4));
        var op = name switch
        {
            "token-mixing p5 q3 c4" => b.TokenMixing("op", x, 3),
            "token-mixing p5 q7 c4 no-bias" => b.TokenMixing("op", x, 7, bias: false),
            "grouped-linear c6 o4 g2" => b.GroupedLinear("op", x, 4, 2),
            "grouped-linear c6 o6 g3 no-bias" => b.GroupedLinear("op", x, 6, 3, bias: false),
            _ => throw new ArgumentException(name),
        };
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return new OpModel(b.Build(b.MeanSquaredError("loss", flat, target), flat), x, op);
    }

    public static TheoryData<string> Ops => new()
    {
        "token-mixing p5 q3 c4", "token-mixing p5 q7 c4 no-bias", "grouped-linear c6 o4 g2", "grouped-linear c6 o6 g3 no-bias", "grouped-ce g3 c4", "patches p2 c3",
    };

    /// <summary>Parameters off their defaults (biases non-zero).</summary>
    internal static Problem Randomized(Model model, int seed, int batch)
    {
        var problem = Problem.From(model, seed, batch);
        foreach (var p in model.Parameters) problem.Parameters.Set(p, Problem.Normal(seed + 13 * p.Id, p.Shape.ElementCount, 0.5f));
        return problem;
    }

    /// <summary>
    /// ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ for the op's input (J v: the plan's JVP, K = 2; Jᵀ w: a pull-back, C = 3), and L̇ = ⟨∇_θ L, θ̇⟩ for its
    /// parameters (backprop against the JVP of the mean loss). Float64 dot products of float32 values: 1e-4 relative, as
    /// SequenceOpsTests.
    /// </summary>
    [Theory]
    [MemberData(nameof(Ops))]
    public void Jvp_and_vjp_are_adjoint(string name)
    {
        var m = Build(name);
        const int batch = 3, K = 2, C = 3;
        var problem = Randomized(m.Model, name.Length * 31 + 7, batch);
        var parameters = m.Model.Parameters.ToList();
        var plan = problem.Compile(new PlanOptions(batch)
        {
            TangentCount = K, Gradients = true, Seeds = [new TangentSeed(m.X), .. parameters.Select(p => new TangentSeed(p))],
        });
        Adjoint.AssertInputAdjoint(plan, m.X, m.Op, parameters, K, C, name);
        if (parameters.Count == 0) return;
        plan.Forward();
        plan.Backward();
        var tangents = parameters.ToDictionary(p => p, p => Problem.Normal(2 + p.Id, plan.Seed(p).Length, 1f));
        foreach (var (p, t) in tangents) CpuBackend.Span(plan.Seed(p)).CopyFrom(t);
        plan.Jvp();
        var lossTangent = plan.Tangent(m.Model.Loss).ToArray();
        for (int k = 0; k < K; k++)
        {
            double expected = 0, actual = 0;
            for (int b = 0; b < batch; b++) expected += lossTangent[k * batch + b] / batch;
            foreach (var p in parameters)
            {
                var gradient = plan.Gradient(p).ToArray();
                for (int i = 0; i < gradient.Length; i++) actual += (double)gradient[i] * tangents[p][k * gradient.Length + i];
            }
            JvpTests.AssertClose(expected, actual, $"{name}: L̇ vs ⟨∇θ L, θ̇⟩, channel {k}", 1e-4);
        }
    }

    /// <summary>Each op's JVP (input and parameters seeded, K = 2) against central differences of the float64 reference,
    /// through the shared whole-model check.</summary>
    [Theory]
    [MemberData(nameof(Ops))]
    public void Op_jvp_matches_central_differences(string name)
    {
        var m = Build(name);
        var problem = Randomized(m.Model, name.Length * 17 + 3, 3);
        FiniteDifferences.AssertJvpMatchesReference(problem, [m.X, .. m.Model.Parameters], 2, name);
    }

    /// <summary>
    /// The tiny mixer of either construction with tangents on every parameter (K = 2): the JVP of every loss (the two local losses and the main one)
    /// against central differences of the float64 reference, ε = 1e-5 (truncation ~1e-10; float32 plan ~1e-6 relative, hence
    /// 2e-4 as FiniteDifferences). The stop-gradients make the reference's differences and the plan's tangents agree only
    /// if both cut the same paths: the reference perturbs parameters, so a block's parameters change later blocks' values,
    /// but the plan's tangents must not cross a stop-gradient; so the check is of each loss against the perturbation of the
    /// parameters that reach it through no stop-gradient (its own block's, and the heads').
    /// </summary>
    [Theory]
    [InlineData("blocks")]
    [InlineData("ren")]
    public void Local_loss_jvps_match_central_differences_of_a_float64_reference(string variant)
    {
        var model = (variant == "ren" ? RenSpec : TinySpec).Build();
        const int batch = 3, K = 2;
        var problem = Randomized(model, 41, batch);
        var parameters = model.Parameters.ToList();
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Seeds = [.. parameters.Select(p => new TangentSeed(p))] });
        var seeds = parameters.ToDictionary(p => p.Id, p => Problem.Normal(500 + p.Id, plan.Seed(p).Length, 1f));
        foreach (var p in parameters) CpuBackend.Span(plan.Seed(p)).CopyFrom(seeds[p.Id]);
        plan.ForwardJvp();
        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        foreach (var loss in model.Losses)
        {
            reference.Run(leaves);
            var values = reference.Values[loss.Id];
            var ours = plan.Value(loss).ToArray();
            for (int i = 0; i < batch; i++) JvpTests.AssertClose(values[i], ours[i], $"{loss.Name} of example {i}", 1e-5);
            // The parameters whose tangents reach this loss in the plan: those of sites that list it, and the heads' own.
            var reaching = model.Sites.Where(s => s.Losses.Contains(loss)).SelectMany(s => s.Parameters).Select(p => p.Id).ToHashSet();
            var tangent = plan.Tangent(loss).ToArray();
            for (int k = 0; k < K; k++)
            {
                var direction = seeds.Where(kv => reaching.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => JvpTests.Channel(kv.Value, k, K));
                const double epsilon = 1e-5;
                reference.Run(leaves, direction, epsilon);
                var plus = reference.Values[loss.Id];
                reference.Run(leaves, direction, -epsilon);
                var minus = reference.Values[loss.Id];
                for (int i = 0; i < batch; i++)
                    JvpTests.AssertClose((plus[i] - minus[i]) / (2 * epsilon), tangent[k * batch + i], $"{loss.Name}: tangent k={k} b={i}");
            }
        }
        // Every parameter reaches exactly one loss: the blocks are cut apart.
        foreach (var p in parameters)
            Assert.Single(model.Losses, l => model.Sites.Any(s => s.Parameters.Contains(p) && s.Losses.Contains(l)));
    }

    /// <summary>
    /// Backprop through the local losses of the tiny mixer against PyTorch (Golden/local_mixer.py: the same model written with
    /// torch ops, parameters fixed by a formula and dumped, stop-gradients as detach()): every loss, and the gradient of the
    /// objective (Σ of the batch-mean losses) for every parameter, to 1e-4 absolute or relative. A missing stop-gradient
    /// would give block 1's parameters block 2's and the head's gradient too.
    /// </summary>
    [Fact]
    public void Local_loss_gradients_match_pytorch()
    {
        var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "local_mixer.json"))).RootElement;
        var spec = TinySpec;
        var model = spec.Build();
        int batch = golden.GetProperty("batch").GetInt32();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        var parameters = golden.GetProperty("parameters");
        foreach (var p in model.Parameters) store.Set(p, Floats(parameters.GetProperty(p.Name)));
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true });
        plan.SetInput(model["x"], Floats(golden.GetProperty("x")));
        plan.SetInput(model["y"], Floats(golden.GetProperty("y")));
        plan.Forward();
        plan.Backward();
        var losses = golden.GetProperty("losses");
        foreach (var loss in model.Losses)
            AssertAll(Floats(losses.GetProperty(loss.Name)), plan.Value(loss).ToArray(), loss.Name);
        var gradients = golden.GetProperty("gradients");
        foreach (var p in model.Parameters)
            AssertAll(Floats(gradients.GetProperty(p.Name)), plan.Gradient(p).ToArray(), $"∂/∂{p.Name}");
    }

    private static float[] Floats(JsonElement array) => [.. array.EnumerateArray().Select(v => v.GetSingle())];

    private static void AssertAll(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (Math.Abs(expected[i] - actual[i]) > 1e-4 * Math.Max(1, Math.Abs(expected[i])))
                throw new Xunit.Sdk.XunitException($"{what}[{i}]: PyTorch {expected[i]:G7}, ours {actual[i]:G7}.");
    }

    /// <summary>
    /// Activation perturbation with each site's JVP taken of its own block's loss (Ren et al.'s training, SiteLoss.Local) is
    /// unbiased on the mixer: E[ĝ] = ∇ of the objective, which the stop-gradients make the local losses' gradients. 2000
    /// estimates on one batch, each component within 5 standard errors (GuessSampling).
    /// </summary>
    /// <summary>
    /// Self-sharpening's true-error guess at a head of the blocks construction, whose logits reach the grouped cross-entropy
    /// through a reshape ([G·classes] → [G, classes], each example's elements in order): per layer, the head's estimate is its
    /// exact local-loss gradient, as at an MLP's output layer (GuesserTests), against backprop on the same batch.
    /// </summary>
    [Fact]
    public void Self_sharpening_heads_take_the_true_error_through_the_grouped_reshape()
    {
        var model = TinySpec.Build();
        const int batch = 2;
        var problem = Randomized(model, 29, batch);
        var (backprop, _) = GuessSampling.Sample(problem, Guessers.Backprop, batch, 1, 5);
        var (estimate, _) = GuessSampling.Sample(problem, Guessers.SelfSharpening(TangentMode.PerLayer), batch, 1, 5);
        var layout = ParameterLayout.Of(model);
        var heads = model.Sites.Where(s => s.Node.Name.EndsWith(".head", StringComparison.Ordinal)).ToArray();
        Assert.Equal(2, heads.Length);
        foreach (var head in heads)
        {
            var (_, offset) = layout.Entries.Single(e => e.Parameter == head.Weight());
            for (int j = 0; j < head.Weight().Shape.ElementCount; j++)
                JvpTests.AssertClose(backprop[offset + j], estimate[offset + j], $"{head.Node.Name} weight {j}", 1e-4);
        }
    }

    [Fact]
    public void Activation_perturbation_with_local_losses_is_unbiased_on_the_mixer()
    {
        var model = TinySpec.Build();
        const int batch = 2, samples = 2000;
        var problem = Randomized(model, 77, batch);
        var (backprop, _) = GuessSampling.Sample(problem, Guessers.Backprop, batch, 1, 5);
        var guesser = (ActivationGuesser)Guessers.ActivationPerturbation() with { Loss = SiteLoss.Local };
        var (mean, std) = GuessSampling.Sample(problem, guesser, batch, samples, 11);
        GuessSampling.AssertWithinStandardErrors(backprop, mean, std, samples, "activation perturbation (local losses) on the mixer");
    }

    /// <summary>
    /// Wᵀ with local losses on the mixer: the guess at a site is the noise at each of its next sites pulled back through the
    /// real ops in between (token mixing's Wᵀ, LayerNorm's projection, ReLU's mask, the residual add, the grouped 1×1
    /// convolution's transpose, the token average), u_b = Σ_k J_kbᵀ ε_k, so the mean estimate of ∂L/∂s_b is
    /// Σ_k J_kbᵀ J_kb g_b (g_b the exact per-example cotangent; the patch embedding has two next sites, block 1's token
    /// mixing and, through the residual, its head). J_kb g_b by float64 central differences of the reference evaluator
    /// (perturbing example b only), J_kbᵀ(·) by the plan's pull-back (adjoint-tested above); heads and the classifier have
    /// no next site: N(0, I) noise, Cov = I. 3000 per-layer estimates, 5 standard errors (GuessSampling).
    /// </summary>
    [Fact]
    public void Weight_transpose_mean_on_the_mixer_is_the_sum_of_Jt_J_g()
    {
        var model = TinySpec.Build();
        const int batch = 2, samples = 3000;
        var problem = Randomized(model, 29, batch);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        var cotangents = new List<float[]>();
        foreach (var site in model.Sites)
        {
            var g = plan.Cotangent(site.Node).ToArray();
            if (site.Next.IsEmpty) { cotangents.Add(g); continue; }
            int n = site.ElementCount;
            var expected = new float[batch * n];
            foreach (var nextIndex in site.Next)
            {
                var next = model.Sites[nextIndex].Node;
                int m = next.Shape.ElementCount;
                var pullBack = plan.CreatePullBack([next], site.Node);
                for (int b = 0; b < batch; b++)
                {
                    var direction = new double[batch * n];
                    for (int j = 0; j < n; j++) direction[b * n + j] = g[b * n + j];
                    const double epsilon = 1e-6;
                    var perturbation = new Dictionary<int, double[]> { [site.Node.Id] = direction };
                    reference.Run(leaves, perturbation, epsilon);
                    var plus = (double[])reference.Values[next.Id].Clone();
                    reference.Run(leaves, perturbation, -epsilon);
                    var jg = new float[batch * m];
                    for (int j = 0; j < m; j++) jg[b * m + j] = (float)((plus[b * m + j] - reference.Values[next.Id][b * m + j]) / (2 * epsilon));
                    CpuBackend.Span(pullBack.Cotangent(next)).CopyFrom(jg);
                    pullBack.Run();
                    var back = pullBack.Cotangent(site.Node).ToArray();
                    for (int j = 0; j < n; j++) expected[b * n + j] += back[b * n + j];
                }
            }
            cotangents.Add(expected);
        }
        Assert.Contains(model.Sites, s => s.Next.Length == 2); // the patch embedding: token mixing and, by the residual, the head
        var mean = GuessSampling.ParametersFrom(problem, plan, cotangents);
        var guesser = (ActivationGuesser)Guessers.WeightTranspose(TangentMode.PerLayer) with { Loss = SiteLoss.Local };
        var (sampled, std) = GuessSampling.Sample(problem, guesser, batch, samples, 13);
        GuessSampling.AssertWithinStandardErrors(mean, sampled, std, samples, "Wᵀ (local losses) on the mixer");
    }

    /// <summary>
    /// Ren et al.'s block JVPs are exact where the model says so: for every site a LocalMixer block declares per (token, group)
    /// or per token, the scalar of block β read from the one pass with a full tangent u (LocalBlockJvps: the loss's VJP to
    /// the block output dotted with its tangent) equals the JVP of the local loss ℓ_b along u restricted to β, by float64
    /// central differences of the reference evaluator (1e-4 relative, as the other local-loss JVP tests). Sanity of the
    /// declaration's other side: at channel1, whose LayerNorm spans all of a token's channels, the per-(token, group) split
    /// is not exact, which is why it is declared per token.
    /// </summary>
    [Fact]
    public void Block_jvps_are_the_local_loss_jvps_along_the_tangent_restricted_to_each_block()
    {
        var model = BlockSpec.Build();
        const int batch = 2;
        var problem = Randomized(model, 53, batch);
        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        Assert.Equal(BlockSpec.Blocks, model.LocalLossBlocks.Length);
        double coupledDifference = 0;
        foreach (var blocks in model.LocalLossBlocks)
            foreach (var entry in blocks.Sites.Where(e => e.Partition != BlockPartition.Example)) // the patch embedding: per example
            {
                var site = entry.Site;
                var plan = problem.Compile(new PlanOptions(batch) { Seeds = [new TangentSeed(site)] });
                var u = Problem.Normal(900 + site.Id, plan.Seed(site).Length, 1f);
                CpuBackend.Span(plan.Seed(site)).CopyFrom(u);
                plan.ForwardJvp();
                var jvps = new LocalBlockJvps(plan, blocks);
                jvps.Run(1f);
                // The whole-example identity: Σ_β ℓ̇_β = ℓ̇.
                var perToken = jvps.Token.ToArray();
                var lossTangent = plan.Tangent(blocks.Loss).ToArray();
                for (int b = 0; b < batch; b++)
                    JvpTests.AssertClose(lossTangent[b], perToken.Skip(b * blocks.Tokens).Take(blocks.Tokens).Sum(), $"{site.Name}: Σ_p ℓ̇_p of example {b}", 1e-4);
                foreach (var partition in new[] { entry.Partition, BlockPartition.TokenGroup }.Distinct())
                {
                    var scalars = jvps.For(partition).ToArray();
                    int count = jvps.BlocksPerExample(partition), n = site.Shape.ElementCount, width = n / count;
                    for (int b = 0; b < batch; b++)
                        for (int block = 0; block < count; block++)
                        {
                            double expected = BlockDerivative(reference, leaves, site.Id, blocks.Loss.Id, u, batch, n, b, block, width);
                            if (partition == entry.Partition)
                                JvpTests.AssertClose(expected, scalars[b * count + block], $"{site.Name} per {partition}: block {block} of example {b}", 1e-4);
                            else
                                coupledDifference = Math.Max(coupledDifference, Math.Abs(expected - scalars[b * count + block]));
                        }
                }
            }
        Assert.True(coupledDifference > 1e-3, $"channel1's per-(token, group) split should not be exact (LayerNorm over the token's channels); largest difference {coupledDifference:G3}");
    }

    /// <summary>
    /// Per-block JVPs with the guesses at the sites, on the blocks construction (one JVP scalar per (token, group) block at
    /// channel2, per token at channel1 and token mixing, per example elsewhere; heads perturbed) are unbiased for the gradient of the local losses: E[ℓ̇_β u_β] = ∇_β. 2000 joint and
    /// 1000 per-layer (2 guesses) estimates on one batch, 5 standard errors (GuessSampling). And it is the point of the method:
    /// the summed variance of the estimate over the parameters of those sites is measurably below that of the per-example
    /// scalars on the same batch (2000 samples each; on this tiny mixer (4 tokens, 2 groups of 3 channels) it is 0.20×:
    /// 16× less at channel2 (per (token, group)), 4–7× at channel1 and token mixing (per token), partly because the heads'
    /// noise, after the cut, no longer enters; the ratio is asserted below 0.6, the sample variances being accurate to
    /// about ±5 % at this sample count).
    /// </summary>
    [Fact]
    public void Ren_activation_perturbation_is_unbiased_with_less_variance_than_per_example_jvps()
    {
        var model = BlockSpec.Build();
        const int batch = 2, samples = 2000;
        var problem = Randomized(model, 77, batch);
        var (backprop, _) = GuessSampling.Sample(problem, Guessers.Backprop, batch, 1, 5);
        var (mean, std) = GuessSampling.Sample(problem, AtSites(), batch, samples, 11);
        GuessSampling.AssertWithinStandardErrors(backprop, mean, std, samples, "Ren et al. activation perturbation on the mixer");
        var (perLayer, perLayerStd) = GuessSampling.Sample(problem, AtSites(TangentMode.PerLayer, 2), batch, samples / 2, 12);
        GuessSampling.AssertWithinStandardErrors(backprop, perLayer, perLayerStd, samples / 2, "Ren et al. activation perturbation (per-layer, 2 guesses) on the mixer");

        var old = (ActivationGuesser)Guessers.ActivationPerturbation() with { Loss = SiteLoss.Local };
        var (_, oldStd) = GuessSampling.Sample(problem, old, batch, samples, 11);
        var layout = ParameterLayout.Of(model);
        var blockSites = model.LocalLossBlocks.SelectMany(b => b.Sites).Select(s => s.Site.Id).ToHashSet();
        var indices = layout.Entries.Where(e => model.Sites.Any(s => blockSites.Contains(s.Node.Id) && s.Parameters.Contains(e.Parameter)))
            .SelectMany(e => Enumerable.Range(e.Offset, e.Parameter.Shape.ElementCount)).ToArray();
        Assert.NotEmpty(indices);
        double ren = indices.Sum(j => std[j] * std[j]), perExample = indices.Sum(j => oldStd[j] * oldStd[j]);
        Assert.True(ren < 0.6 * perExample,  $"summed variance at the per-block sites: Ren {ren:G4}, per-example {perExample:G4} (ratio {ren / perExample:F3})");

        static Guesser AtSites(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
            Guessers.RenActivationPerturbation(mode, guesses, GuessPlacement.Site, exactLast: false);
    }

    /// <summary>Per-block JVPs need the local losses and a model that declares its blocks; the errors say which.</summary>
    [Fact]
    public void Ren_activation_perturbation_refuses_models_without_blocks()
    {
        var mlp = Problem.RandomMlp(1, ElementwiseFunction.Relu, 2, inputs: 4, widths: [5], outputs: 3);
        var error = Assert.Throws<ArgumentException>(() => Guessers.RenActivationPerturbation().Compile(mlp.Parameters, 2));
        Assert.Contains("declares none", error.Message);
        var objective = (ActivationGuesser)Guessers.RenActivationPerturbation() with { Loss = SiteLoss.Objective };
        Assert.Contains("SiteLoss.Local", Assert.Throws<ArgumentException>(() => objective.Compile(Randomized(TinySpec.Build(), 1, 2).Parameters, 2)).Message);
    }

    /// <summary>Backprop, activation perturbation, Wᵀ and mixing (the four columns of Table 1), the guessers with local losses
    /// (and activation perturbation with the objective too), train the tiny mixer without allocating after warm-up.</summary>
    [Theory]
    [InlineData("backprop")]
    [InlineData("activation-perturbation")]
    [InlineData("activation-perturbation local")]
    [InlineData("weight-transpose local")]
    [InlineData("mixing local")]
    [InlineData("ren")]
    [InlineData("ren per-layer")]
    [InlineData("weight-transpose blocks")]
    [InlineData("mixing blocks")]
    public void Mixer_guessers_train_without_allocating(string name)
    {
        var problem = Randomized(TinySpec.Build(), 3, 4);
        GuessSampling.AssertTrainsWithoutAllocating(problem, name, 4);
    }

    [Theory]
    [InlineData("p4-d64-b2-g4", "p4-d64-b2-g4")]
    [InlineData("blocks-g8-b3-d32-p7-e2-t16", "p7-d32-b3-g8-e2-t16-blocks")]
    [InlineData("P4-D64-B2-G4-E1-T0", "p4-d64-b2-g4")]
    [InlineData("p4-d64-b2-g4-Blocks", "p4-d64-b2-g4-blocks")]
    public void Spec_text_round_trips(string text, string canonical)
    {
        var spec = LocalMixerSpec.Parse(text, new Shape(28, 28, 1), 10);
        Assert.Equal(canonical, spec.ToString());
        Assert.Equal(spec, LocalMixerSpec.Parse(spec.ToString(), new Shape(28, 28, 1), 10));
    }

    [Theory]
    [InlineData("p4-d64-b2", "option g<N> is missing")]
    [InlineData("p4-d64-b2-g4-x3", "unknown option 'x3'")]
    [InlineData("p4-d64-b2-g4-g2", "option 'g' is given twice")]
    [InlineData("p4-dd-b2-g4", "'dd' needs a whole number")]
    [InlineData("p5-d64-b2-g4", "p5 must divide the image's height 28")]
    [InlineData("p4-d64-b2-g5", "g5 must divide the width d64")]
    [InlineData("p4-d64-b0-g4", "b0: at least one block")]
    [InlineData("p4--d64-b2-g4", "an empty option")]
    [InlineData("p4-d64-b2-g4-t16", "Ren et al.'s token mixing is one linear map")]
    [InlineData("p4-d64-b2-g4-blocks-blocks", "'blocks' is given twice")]
    public void Spec_errors_name_the_token_and_the_fix(string text, string message)
    {
        var e = Assert.ThrowsAny<Exception>(() => LocalMixerSpec.Parse(text, new Shape(28, 28, 1), 10));
        Assert.True(e is FormatException or ArgumentException);
        Assert.Contains(message, e.Message);
    }

    /// <summary>The model's structure: the sites of each block reach only that block's local loss, the classifier only the
    /// main loss; one local loss per block.</summary>
    [Fact]
    public void Each_block_learns_from_its_own_local_loss()
    {
        var model = (TinySpec with { Blocks = 3, TokenHidden = 3 }).Build();
        Assert.Equal(4, model.Losses.Length);
        foreach (var site in model.Sites)
        {
            var loss = Assert.Single(site.Losses);
            string expected = site.Name == "classifier" ? "loss" : site.Name == "patch" ? "block1.loss" : site.Name[..site.Name.IndexOf('.')] + ".loss";
            Assert.Equal(expected, loss.Name);
        }
    }

    /// <summary>The truth of one per-block JVP scalar: ∂ℓ_b/∂ε of the loss when node's block of example b moves along u,
    /// by float64 central differences of the reference interpreter (step 1e-6).</summary>
    internal static double BlockDerivative(ReferenceEvaluator reference, IReadOnlyDictionary<int, double[]> leaves, int node, int loss,
        float[] u, int batch, int n, int b, int block, int width)
    {
        var direction = new double[batch * n];
        for (int j = block * width; j < (block + 1) * width; j++) direction[b * n + j] = u[b * n + j];
        const double epsilon = 1e-6;
        var perturbation = new Dictionary<int, double[]> { [node] = direction };
        reference.Run(leaves, perturbation, epsilon);
        double plus = reference.Values[loss][b];
        reference.Run(leaves, perturbation, -epsilon);
        return (plus - reference.Values[loss][b]) / (2 * epsilon);
    }
}
