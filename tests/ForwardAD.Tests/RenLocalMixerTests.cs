using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Ren et al.'s LocalMixer as their released code builds and trains it (LocalMixerVariant.Ren, the default): its structure
/// (the patch block, one head per block, where the noise enters and which layers get which JVP scalars), the per-block
/// scalars at the normalised outputs against central differences, their estimator unbiased with exact heads, the end-to-end
/// model of their backprop baseline, and every guesser on it allocation-free.
/// </summary>
public class RenLocalMixerTests
{
    private static LocalMixerSpec Spec => LocalMixerTests.RenSpec;

    /// <summary>Per declared site of the tiny Ren mixer: its normalised output, the ReLU after it, and the partition of a
    /// tangent entering at the site and at the normalised output (docs/design.md §2, local losses).</summary>
    private static readonly Dictionary<string, (string Normalized, string Gate, BlockPartition AtSite, BlockPartition AtNormalized)> Declared = new()
    {
        ["block1.patch"] = ("block1.patch.ln", "block1.patch.relu", BlockPartition.Token, BlockPartition.TokenGroup),
        ["block1.channel2"] = ("block1.channel2.ln", "block1.relu", BlockPartition.TokenGroup, BlockPartition.TokenGroup),
        ["block2.token"] = ("block2.token.ln", "block2.token.relu", BlockPartition.Token, BlockPartition.Token),
        ["block2.channel1"] = ("block2.channel1.ln", "block2.channel1.relu", BlockPartition.Token, BlockPartition.TokenGroup),
        ["block2.channel2"] = ("block2.channel2.ln", "block2.relu", BlockPartition.TokenGroup, BlockPartition.TokenGroup),
    };

    /// <summary>
    /// The structure of their <c>block0</c>, <c>mlp_block</c> and loss: block 1 is patches → LayerNorm → patch-linear → LN →
    /// ReLU → LN per group → group-wise linear → LN per group → ReLU, with no token mixing and no residual; block 2 has token
    /// mixing and the residual from its (stop-gradient) input; each block has one linear head over all d channels and one
    /// cross-entropy (no grouped loss); each linear layer declares its normalised output (a LayerNorm reached through
    /// reshapes only) and the ReLU after it, with the partitions of the table above; Ren et al.'s estimator seeds exactly
    /// those normalised outputs, never a site, a head or the classifier.
    /// </summary>
    [Fact]
    public void Ren_construction_is_their_released_network()
    {
        var model = Spec.Build();
        Node N(string name) => model[name];
        Node In(Node node, int i = 0) => model.Nodes[node.Inputs[i]];
        Node ThroughReshapes(Node node) => node.Op is ReshapeOp ? ThroughReshapes(In(node)) : node;

        // Block 1 (their block0).
        Assert.IsType<PatchesOp>(N("patch.tokens").Op);
        Assert.Equal(new Shape(Spec.Tokens, Spec.Patch * Spec.Patch * Spec.Input[2]), N("patch.tokens").Shape);
        Assert.IsType<LayerNormOp>(N("block1.ln").Op);
        Assert.Equal(N("patch.tokens"), In(N("block1.ln")));
        Assert.IsType<LinearOp>(N("block1.patch").Op);
        Assert.Equal(N("block1.ln"), In(N("block1.patch")));
        Assert.Equal(new Shape(Spec.Tokens, Spec.Expansion * Spec.Width), N("block1.patch").Shape);
        var grouped = Assert.IsType<Conv2dOp>(N("block1.channel2").Op);
        Assert.Equal(Spec.Groups, grouped.Groups);
        var groupNorm = ThroughReshapes(In(N("block1.channel2")));
        Assert.IsType<LayerNormOp>(groupNorm.Op);
        Assert.Equal(new Shape(Spec.Tokens, Spec.Groups, Spec.Expansion * Spec.Width / Spec.Groups), groupNorm.Shape); // within each group
        Assert.Equal(N("block1.patch.relu"), ThroughReshapes(In(groupNorm)));
        Assert.Equal(N("block1.channel2.ln"), ThroughReshapes(In(N("block1.relu"))));
        Assert.DoesNotContain(model.Nodes, n => n.Name.StartsWith("block1.", StringComparison.Ordinal) && n.Op is TokenMixingOp or AddOp);
        // Block 2 (their mlp_block): token mixing, channel mixing, the residual from its cut-off input.
        Assert.IsType<TokenMixingOp>(N("block2.token").Op);
        Assert.IsType<StopGradientOp>(N("block2.in").Op);
        Assert.Equal(N("block1.relu"), In(N("block2.in")));
        Assert.Equal(new[] { N("block2.channel2.merged"), N("block2.in") }, new[] { In(N("block2.residual")), In(N("block2.residual"), 1) });
        Assert.Equal(N("block2.residual"), In(N("block2.relu")));
        // One head per block over the concatenated groups, one cross-entropy per example.
        Assert.Equal(Spec.Blocks + 1, model.Losses.Length);
        Assert.DoesNotContain(model.Nodes, n => n.Op is GroupedSoftmaxCrossEntropyOp);
        for (int block = 1; block <= Spec.Blocks; block++)
        {
            var loss = N($"block{block}.loss");
            Assert.IsType<SoftmaxCrossEntropyOp>(loss.Op);
            Assert.Equal(N($"block{block}.head"), In(loss));
            Assert.Equal(new Shape(Spec.Classes, Spec.Width), In(N($"block{block}.head"), 1).Shape);
            Assert.IsType<GlobalAvgPoolOp>(ThroughReshapes(In(N($"block{block}.head"))).Op);
        }
        // Where the noise enters, and which scalars the layers get.
        var declared = model.LocalLossBlocks.SelectMany(b => b.Sites).ToDictionary(e => e.Site.Name);
        Assert.Equal(Declared.Keys.Order(), declared.Keys.Order());
        foreach (var (site, (normalized, gate, atSite, atNormalized)) in Declared)
        {
            var entry = declared[site];
            Assert.Equal(atSite, entry.Partition);
            var z = Assert.IsType<NormalizedOutput>(entry.Normalized);
            Assert.Equal((normalized, gate, atNormalized), (z.Node.Name, z.Gate.Name, z.Partition));
            Assert.IsType<LayerNormOp>(z.Node.Op);
            Assert.Equal(entry.Site, ThroughReshapes(In(z.Node)));
            Assert.Equal(ElementwiseFunction.Relu, Assert.IsType<ElementwiseOp>(z.Gate.Op).Function);
        }
        var plan = Guessers.RenActivationPerturbation().Compile(LocalMixerTests.Randomized(model, 5, 2).Parameters, 2).Plan;
        foreach (var (site, (normalized, _, _, _)) in Declared)
        {
            Assert.False(plan.Seed(N(normalized)).IsEmpty);
            Assert.Throws<ArgumentException>(() => plan.Seed(N(site)));
        }
        foreach (var unperturbed in new[] { "block1.head", "block2.head", "classifier" })
            Assert.Throws<ArgumentException>(() => plan.Seed(N(unperturbed)));
    }

    /// <summary>
    /// The scalars each layer gets are exact where the model declares them: with a tangent u at a site's normalised output z,
    /// the block scalar (the local loss's VJP to the block output dotted with its tangent, LocalBlockJvps) of every block of
    /// z's partition equals the JVP of the local loss ℓ_b along u restricted to that block, by float64 central differences of
    /// the reference evaluator (1e-4 relative, as the blocks construction's test). And why the noise goes after the
    /// LayerNorm: at the patch-linear and channel1 sites themselves the per-(token, group) split is not exact (their
    /// LayerNorm spans all of a token's groups), which is why they are declared per token there.
    /// </summary>
    [Fact]
    public void Block_scalars_at_the_normalised_outputs_are_exact()
    {
        var model = Spec.Build();
        const int batch = 2;
        var problem = LocalMixerTests.Randomized(model, 53, batch);
        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        foreach (var blocks in model.LocalLossBlocks)
            foreach (var entry in blocks.Sites)
            {
                var z = entry.Normalized!;
                Assert.True(MaxDifference(z.Node, z.Partition) < 0, $"{z.Node.Name} per {z.Partition}");
                if (entry.Partition == BlockPartition.Token && z.Partition == BlockPartition.TokenGroup)
                    Assert.True(MaxDifference(entry.Site, BlockPartition.TokenGroup) > 1e-3, $"{entry.Site.Name}: the per-(token, group) split at the site should not be exact");

                // Asserts the declared split (returns −1) or measures a split that is not declared (its largest error).
                double MaxDifference(Node at, BlockPartition partition)
                {
                    var plan = problem.Compile(new PlanOptions(batch) { Seeds = [new TangentSeed(at)] });
                    var u = Problem.Normal(900 + at.Id, plan.Seed(at).Length, 1f);
                    CpuBackend.Span(plan.Seed(at)).CopyFrom(u);
                    plan.ForwardJvp();
                    var jvps = new LocalBlockJvps(plan, blocks);
                    jvps.Run(1f);
                    var scalars = jvps.For(partition).ToArray();
                    int count = jvps.BlocksPerExample(partition), n = at.Shape.ElementCount, width = n / count;
                    double largest = 0;
                    for (int b = 0; b < batch; b++)
                        for (int block = 0; block < count; block++)
                        {
                            double expected = LocalMixerTests.BlockDerivative(reference, leaves, at.Id, blocks.Loss.Id, u, batch, n, b, block, width);
                            if (at == z.Node && partition == z.Partition)
                                JvpTests.AssertClose(expected, scalars[b * count + block], $"{at.Name} per {partition}: block {block} of example {b}", 1e-4);
                            largest = Math.Max(largest, Math.Abs(expected - scalars[b * count + block]));
                        }
                    return at == z.Node && partition == z.Partition ? -1 : largest;
                }
            }
    }

    /// <summary>
    /// Ren et al.'s estimator (noise at the normalised outputs, per-block scalars, the estimate masked by the ReLU's
    /// derivative and pulled back through the LayerNorm, heads and classifier exact) is unbiased for the gradient of the
    /// local losses, which the stop-gradients make backprop's gradient of the objective: E[ĝ_s] = J_LNᵀ (f' ⊙ ∂ℓ/∂z) = ∂ℓ/∂s.
    /// 2000 joint and 1000 per-layer (2 guesses) estimates on one batch, each component within 5 standard errors
    /// (GuessSampling). The heads and the classifier are not estimates: every sample equals backprop's gradient (no spread
    /// beyond float64 cancellation, 1e-6 relative).
    /// </summary>
    [Fact]
    public void Ren_activation_perturbation_is_unbiased_and_its_heads_exact()
    {
        var model = Spec.Build();
        const int batch = 2, samples = 2000;
        var problem = LocalMixerTests.Randomized(model, 77, batch);
        var (backprop, _) = GuessSampling.Sample(problem, Guessers.Backprop, batch, 1, 5);
        var (mean, std) = GuessSampling.Sample(problem, Guessers.RenActivationPerturbation(), batch, samples, 11);
        GuessSampling.AssertWithinStandardErrors(backprop, mean, std, samples, "Ren et al.'s activation perturbation");
        var (perLayer, perLayerStd) = GuessSampling.Sample(problem, Guessers.RenActivationPerturbation(TangentMode.PerLayer, 2), batch, samples / 2, 12);
        GuessSampling.AssertWithinStandardErrors(backprop, perLayer, perLayerStd, samples / 2, "Ren et al.'s activation perturbation (per-layer, 2 guesses)");

        var layout = ParameterLayout.Of(model);
        var heads = layout.Entries.Where(e => e.Parameter.Name.Contains(".head.", StringComparison.Ordinal) || e.Parameter.Name.StartsWith("classifier.", StringComparison.Ordinal))
            .SelectMany(e => Enumerable.Range(e.Offset, e.Parameter.Shape.ElementCount)).ToArray();
        Assert.Equal(Spec.Blocks * (Spec.Width + 1) * Spec.Classes + (Spec.Width + 1) * Spec.Classes, heads.Length);
        foreach (int j in heads)
        {
            // The sample standard deviation from Σx and Σx²: zero up to the cancellation of float64 sums, ~1e-8 relative.
            Assert.True(std[j] <= 1e-6 * (1 + Math.Abs(backprop[j])), $"head component {j} varies: sd {std[j]:G3}");
            Assert.True(Math.Abs(mean[j] - backprop[j]) <= 1e-6 * (1 + Math.Abs(backprop[j])), $"head component {j}: {mean[j]:G7}, backprop {backprop[j]:G7}");
        }
        Assert.Contains(heads, j => backprop[j] != 0);
    }

    /// <summary>
    /// Their backprop baseline: Build(endToEnd: true) is the same network (same nodes, ids, parameters and initial values)
    /// with identities where the stop-gradients were and the main loss as the only objective. Its backprop gradient reaches
    /// the first block (cut off from the main loss in the local model), leaves the heads at zero, and is the main loss's
    /// gradient: ⟨∇L, v⟩ against float64 central differences of the mean main loss along a random direction v of every
    /// parameter (1e-4 relative).
    /// </summary>
    [Fact]
    public void End_to_end_model_is_the_same_network_without_cuts()
    {
        var local = Spec.Build();
        var model = Spec.Build(endToEnd: true);
        Assert.Equal(local.Nodes.Select(n => (n.Name, n.Shape)), model.Nodes.Select(n => (n.Name, n.Shape)));
        Assert.DoesNotContain(model.Nodes, n => n.Op is StopGradientOp);
        Assert.Equal(new[] { model.Loss }, model.Losses);
        Assert.Empty(model.LocalLossBlocks);
        var backend = new CpuBackend();
        Assert.Equal(ParameterStore.Initialize(local, backend, 3).All.ToArray(), ParameterStore.Initialize(model, backend, 3).All.ToArray());

        const int batch = 3;
        var problem = LocalMixerTests.Randomized(model, 21, batch);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        Assert.Contains(plan.Gradient(model["block1.patch.weight"]).ToArray(), v => v != 0);
        foreach (var head in model.Parameters.Where(p => p.Name.Contains(".head.", StringComparison.Ordinal)))
            Assert.All(plan.Gradient(head).ToArray(), v => Assert.Equal(0f, v));
        var direction = model.Parameters.ToDictionary(p => p.Id, p => Problem.Normal(300 + p.Id, p.Shape.ElementCount, 1f).Select(v => (double)v).ToArray());
        double expected = 0;
        foreach (var p in model.Parameters)
        {
            var gradient = plan.Gradient(p).ToArray();
            for (int i = 0; i < gradient.Length; i++) expected += gradient[i] * direction[p.Id][i];
        }
        var reference = new ReferenceEvaluator(model, batch);
        const double epsilon = 1e-5;
        double plus = reference.Run(problem.Leaves(), direction, epsilon).Average();
        double minus = reference.Run(problem.Leaves(), direction, -epsilon).Average();
        JvpTests.AssertClose((plus - minus) / (2 * epsilon), expected, "end to end: ⟨∇L, v⟩", 1e-4);
    }

    /// <summary>
    /// GrAPE aligns its feedback with J = ∂y/∂h of the function the model computes, which the stop-gradients between blocks
    /// do not change. A tangent seeded at the first block's site ends at the first cut by default (the output's tangent is a
    /// symbolic zero); with <see cref="PlanOptions.TangentsCrossStopGradients"/> it reaches the output with the same bits as
    /// the end-to-end model (identities where the cuts were, same parameters and inputs) gives, while the backward pass still
    /// stops at the cuts: the gradients are those of the plan without the option.
    /// </summary>
    [Fact]
    public void Tangents_cross_stop_gradients_only_when_asked()
    {
        const int batch = 2, K = 2;
        var local = Spec.Build();
        var endToEnd = Spec.Build(endToEnd: true);
        var site = local["block1.patch"];
        Plan Run(Model model, bool cross, bool gradients = false)
        {
            var plan = LocalMixerTests.Randomized(model, 61, batch).Compile(new PlanOptions(batch)
            {
                TangentCount = K, Gradients = gradients, Seeds = [new TangentSeed(model[site.Name])], TangentsCrossStopGradients = cross,
            });
            CpuBackend.Span(plan.Seed(model[site.Name])).CopyFrom(Problem.Normal(17, plan.Seed(model[site.Name]).Length, 1f));
            plan.ForwardJvp();
            if (gradients) plan.Backward();
            return plan;
        }

        Assert.True(Run(local, cross: false).IsTangentZero(local.Output));
        var crossing = Run(local, cross: true);
        Assert.False(crossing.IsTangentZero(local.Output));
        var expected = Run(endToEnd, cross: false).Tangent(endToEnd.Output).ToArray();
        Assert.Contains(expected, v => v != 0);
        Assert.Equal(expected, crossing.Tangent(local.Output).ToArray());

        var withCuts = Run(local, cross: false, gradients: true);
        var crossingWithCuts = Run(local, cross: true, gradients: true);
        foreach (var p in local.Parameters)
            Assert.Equal(withCuts.Gradient(p).ToArray(), crossingWithCuts.Gradient(p).ToArray());
    }

    /// <summary>Each block's sites reach only that block's local loss, the classifier only the main loss.</summary>
    [Fact]
    public void Each_block_learns_from_its_own_local_loss()
    {
        var model = (Spec with { Blocks = 3 }).Build();
        Assert.Equal(4, model.Losses.Length);
        foreach (var site in model.Sites)
            Assert.Equal(site.Name == "classifier" ? "loss" : site.Name[..site.Name.IndexOf('.')] + ".loss", Assert.Single(site.Losses).Name);
    }

    /// <summary>Backprop, Ren et al.'s estimator (joint and per-layer), mixing and Wᵀ at their placement, and the per-block
    /// JVPs at the sites train Ren et al.'s mixer without allocating after warm-up; backprop trains the end-to-end model so.</summary>
    [Theory]
    [InlineData("backprop")]
    [InlineData("ren")]
    [InlineData("ren per-layer")]
    [InlineData("weight-transpose ren")]
    [InlineData("mixing ren")]
    [InlineData("ren at sites")]
    [InlineData("backprop end to end")]
    public void Guessers_train_the_ren_mixer_without_allocating(string name)
    {
        var problem = LocalMixerTests.Randomized(Spec.Build(endToEnd: name == "backprop end to end"), 3, 4);
        GuessSampling.AssertTrainsWithoutAllocating(problem, name == "backprop end to end" ? "backprop" : name, 4);
    }

    /// <summary>Guesses at the normalised outputs need a model that declares them, and de-biasing refuses them.</summary>
    [Fact]
    public void Normalised_placement_is_refused_where_it_cannot_work()
    {
        var mlp = Problem.RandomMlp(1, ElementwiseFunction.Relu, 2, inputs: 4, widths: [5], outputs: 3);
        var placed = (ActivationGuesser)Guessers.ActivationPerturbation() with { Placement = GuessPlacement.Normalized };
        Assert.Contains("declares none", Assert.Throws<ArgumentException>(() => placed.Compile(mlp.Parameters, 2)).Message);
        var debiased = new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose() with { Placement = GuessPlacement.Normalized });
        Assert.Contains("Placement = Site", Assert.Throws<ArgumentException>(() => debiased.Compile(LocalMixerTests.Randomized(Spec.Build(), 1, 2).Parameters, 2)).Message);
    }
}
