using System.Collections.Immutable;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

public class JvpTests
{
    private static ElementwiseFunction[] Activations => Problem.Activations;

    /// <summary>Random cases: problem seed, activation, loss, batch, K, and which nodes get seeds.</summary>
    public sealed record Case(int Seed, int Activation, bool SquaredError, int Batch, int Channels, int SeedMask);

    /// <summary>The cases of the property below (FsCheck finds this Arbitrary by the type of its parameter).</summary>
    public static Arbitrary<Case> Cases() =>
        (from seed in Gen.Choose(0, 1_000_000)
         from activation in Gen.Choose(0, 3)
         from mse in Gen.Elements(false, true)
         from batch in Gen.Choose(1, 4)
         from channels in Gen.Choose(1, 3)
         from mask in Gen.Choose(1, 1 << 20)
         select new Case(seed, activation, mse, batch, channels, mask)).ToArbitrary();

    /// <summary>
    /// Every JVP rule, composed in random MLPs, against central finite differences of a float64 reference
    /// interpreter: ℓ̇_{k,b} ≈ (ℓ_b(θ + εv_k) − ℓ_b(θ − εv_k)) / 2ε with v_k the seeds of channel k on random
    /// nodes (parameters, pre-activations, activations). ε = 1e-5 in double has truncation error ~1e-10;
    /// the float32 plan is accurate to ~1e-6 relative, so 2e-4 relative + absolute is a safe but tight bound.
    /// </summary>
    [Property(Replay = PropertyConfig.Replay, Arbitrary = new[] { typeof(JvpTests) })]
    public Property Jvp_matches_central_differences_of_a_float64_reference(Case c)
    {
        var problem = Problem.RandomMlp(c.Seed, Activations[c.Activation], c.Batch, c.SquaredError ? LossKind.MeanSquaredError : LossKind.SoftmaxCrossEntropy);
        var candidates = problem.Model.Nodes.Where(n => n.Op.IsDifferentiable && n.Op is not InputOp && n != problem.Model.Loss).ToList();
        var seededNodes = candidates.Where((n, i) => (c.SeedMask >> (i % 20) & 1) == 1).ToList();
        if (seededNodes.Count == 0) seededNodes.Add(candidates[0]);
        var plan = problem.Compile(new PlanOptions(c.Batch) { TangentCount = c.Channels, Seeds = [.. seededNodes.Select(n => new TangentSeed(n))] });
        var seeds = new Dictionary<int, float[]>();
        foreach (var node in seededNodes)
        {
            seeds[node.Id] = Problem.Normal(c.Seed + 1000 * node.Id, plan.Seed(node).Length, 1f);
            CpuBackend.Span(plan.Seed(node)).CopyFrom(seeds[node.Id]);
        }
        plan.ForwardJvp();
        var lossTangent = plan.Tangent(problem.Model.Loss).ToArray();
        var outputTangent = plan.Tangent(problem.Model.Output).ToArray();

        var reference = new ReferenceEvaluator(problem.Model, c.Batch);
        var leaves = problem.Leaves();
        int outputSize = problem.Model.Output.ElementCount(c.Batch);
        // A case with a pre-activation within reach of a ReLU kink is discarded (FsCheck counts it as such and draws
        // another), not passed: finite differences are invalid across the kink.
        return Prop.When(!NearReluKink(problem, reference, leaves), () =>
        {
        for (int k = 0; k < c.Channels; k++)
        {
            var direction = seeds.ToDictionary(kv => kv.Key, kv => Channel(kv.Value, k, c.Channels));
            const double epsilon = 1e-5;
            var plus = reference.Run(leaves, direction, epsilon);
            var outPlus = reference.Values[problem.Model.Output.Id];
            var minus = reference.Run(leaves, direction, -epsilon);
            var outMinus = reference.Values[problem.Model.Output.Id];
            for (int b = 0; b < c.Batch; b++)
                AssertClose((plus[b] - minus[b]) / (2 * epsilon), lossTangent[k * c.Batch + b], $"loss tangent k={k} b={b} {c}");
            for (int i = 0; i < outputSize; i++)
                AssertClose((outPlus[i] - outMinus[i]) / (2 * epsilon), outputTangent[k * outputSize + i], $"output tangent k={k} i={i} {c}");
        }
        });
    }

    /// <summary>Finite differences are invalid across a ReLU kink: true when a ReLU's input is within 1e-3 of it.</summary>
    internal static bool NearReluKink(Problem problem, ReferenceEvaluator reference, Dictionary<int, double[]> leaves)
    {
        reference.Run(leaves);
        return problem.Model.Nodes.Any(n => n.Op is ElementwiseOp { Function: ReluFunction } &&
            reference.Values[n.Inputs[0]].Any(v => Math.Abs(v) < 1e-3));
    }

    internal static double[] Channel(float[] values, int k, int channels)
    {
        int n = values.Length / channels;
        return values.Skip(k * n).Take(n).Select(v => (double)v).ToArray();
    }

    internal static void AssertClose(double expected, double actual, string what, double tolerance = 2e-4)
    {
        if (Math.Abs(expected - actual) > tolerance * (1 + Math.Abs(expected)))
            throw new Xunit.Sdk.XunitException($"{what}: expected {expected:G9}, got {actual:G9} (tolerance {tolerance} relative).");
    }

    /// <summary>The K channels are independent: channel k of a K = 3 run equals a K = 1 run with that channel's seeds.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Channels_are_independent(int seed)
    {
        var problem = Problem.RandomMlp(seed, ElementwiseFunction.Tanh, 5, widths: [7, 6], inputs: 4, outputs: 3);
        var seedNodes = problem.Model.Sites.Select(l => l.Node).Append(problem.Model.Sites[0].Weight()).ToList();
        const int K = 3;
        var joint = problem.Compile(new PlanOptions(5) { TangentCount = K, Seeds = [.. seedNodes.Select(n => new TangentSeed(n))] });
        foreach (var n in seedNodes) CpuBackend.Span(joint.Seed(n)).CopyFrom(Problem.Normal(seed * 100 + n.Id, joint.Seed(n).Length, 1f));
        joint.Forward();
        joint.Jvp();
        var all = joint.Tangent(problem.Model.Loss).ToArray();
        for (int k = 0; k < K; k++)
        {
            var single = problem.Compile(new PlanOptions(5) { Seeds = [.. seedNodes.Select(n => new TangentSeed(n))] });
            foreach (var n in seedNodes)
                CpuBackend.Span(single.Seed(n)).CopyFrom(joint.Seed(n).ToArray().AsSpan(k * single.Seed(n).Length, single.Seed(n).Length));
            single.ForwardJvp();
            var one = single.Tangent(problem.Model.Loss).ToArray();
            for (int b = 0; b < 5; b++) AssertClose(one[b], all[k * 5 + b], $"channel {k} example {b}", 1e-5);
        }
    }

    /// <summary>K = L with one channel per layer: channel l carries layer l's guess only, and the channels
    /// sum to the joint single-channel JVP with every layer seeded (linearity of the JVP).</summary>
    [Fact]
    public void Per_layer_channels_sum_to_the_joint_channel()
    {
        var problem = Problem.RandomMlp(11, ElementwiseFunction.Relu, 6, widths: [8, 8, 8], inputs: 5, outputs: 4);
        var layers = problem.Model.Sites;
        int L = layers.Length;
        var perLayer = problem.Compile(new PlanOptions(6) { TangentCount = L, Seeds = [.. layers.Select(l => new TangentSeed(l.Node))] });
        var joint = problem.Compile(new PlanOptions(6) { TangentCount = 1, Seeds = [.. layers.Select(l => new TangentSeed(l.Node))] });
        for (int l = 0; l < L; l++)
        {
            var node = layers[l].Node;
            var guess = Problem.Normal(500 + l, joint.Seed(node).Length, 1f);
            CpuBackend.Span(joint.Seed(node)).CopyFrom(guess);
            var channels = CpuBackend.Span(perLayer.Seed(node));
            channels.Clear();
            guess.CopyTo(channels.Slice(l * guess.Length, guess.Length));
        }
        perLayer.ForwardJvp();
        joint.ForwardJvp();
        var split = perLayer.Tangent(problem.Model.Loss).ToArray();
        var sum = joint.Tangent(problem.Model.Loss).ToArray();
        for (int b = 0; b < 6; b++)
            AssertClose(Enumerable.Range(0, L).Sum(l => (double)split[l * 6 + b]), sum[b], $"example {b}", 1e-5);
    }

    [Fact]
    public void Fused_and_separate_passes_agree_bit_for_bit()
    {
        var problem = Problem.RandomMlp(5, ElementwiseFunction.Gelu, 4, widths: [9, 9], inputs: 6, outputs: 3);
        var options = new PlanOptions(4) { TangentCount = 2, Seeds = [.. problem.Model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(3, (ulong)l.Node.Id)))] };
        var a = problem.Compile(options);
        var b = problem.Compile(options);
        a.ForwardJvp();
        b.Forward();
        b.Jvp();
        Assert.Equal(a.Tangent(problem.Model.Loss).ToArray(), b.Tangent(problem.Model.Loss).ToArray());
        Assert.Equal(a.MeanLoss(), b.MeanLoss());
    }

    /// <summary>Generated seeds are N(0, I) from their Philox stream: regenerating from the key gives the same tangent.</summary>
    [Fact]
    public void Generated_seeds_can_be_regenerated_from_their_key()
    {
        var problem = Problem.RandomMlp(8, ElementwiseFunction.Relu, 3, widths: [5], inputs: 4, outputs: 3);
        var node = problem.Model.Sites[0].Node;
        var key = new RandomKey(42, 7);
        var plan = problem.Compile(new PlanOptions(3) { TangentCount = 2, Seeds = [new TangentSeed(node, key)] });
        plan.ForwardJvp();
        var expected = new float[plan.Seed(node).Length];
        RandomFill.Normal(key, 0, 0f, 1f, expected);
        Assert.Equal(expected, plan.Seed(node).ToArray());
        plan.SetSeedGenerator(node, key.Derive(1));
        plan.ForwardJvp();
        Assert.NotEqual(expected, plan.Seed(node).ToArray());
    }

    /// <summary>Symbolic zeros: nodes upstream of every seed have no tangent buffer and no work.</summary>
    [Fact]
    public void Nodes_upstream_of_the_seeds_have_symbolic_zero_tangents()
    {
        var problem = Problem.RandomMlp(9, ElementwiseFunction.Relu, 2, widths: [4, 4], inputs: 3, outputs: 2);
        var last = problem.Model.Sites[^1].Node;
        var plan = problem.Compile(new PlanOptions(2) { Seeds = [new TangentSeed(last)] });
        Assert.True(plan.IsTangentZero(problem.Model.Sites[0].Node));
        Assert.True(plan.IsTangentZero(problem.Model.Sites[0].Weight()));
        Assert.False(plan.IsTangentZero(problem.Model.Loss));
        Assert.True(plan.Tangent(problem.Model.Sites[0].Output).IsEmpty);
    }
}
