using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

public class VjpTests
{
    private static ElementwiseFunction[] Activations => Problem.Activations;

    /// <summary>
    /// A model with every op: reshape of a differentiable input, dense layers, a residual add,
    /// each activation, and either loss. Gradients of the mean loss (parameters and the input) are
    /// compared elementwise with central differences of the float64 reference.
    /// </summary>
    [Theory]
    [InlineData(0, false)]
    [InlineData(1, true)]
    [InlineData(2, false)]
    [InlineData(3, true)]
    public void Gradient_of_every_op_matches_central_differences(int activation, bool squaredError)
    {
        const int batch = 3;
        var f = Activations[activation];
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(2, 3));
        var flat = builder.Reshape("flat", x, new Shape(6));
        var h = builder.Dense("h", flat, 5, f).Output;
        var h2 = builder.Dense("h2", h, 5, ElementwiseFunction.Tanh).Output;
        var residual = builder.Add("residual", h, h2);
        var output = builder.Dense("out", residual, 3, ElementwiseFunction.Identity).Output;
        var loss = squaredError
            ? builder.MeanSquaredError("loss", output, builder.Input("t", new Shape(3), differentiable: false))
            : builder.SoftmaxCrossEntropy("loss", output, builder.ClassLabels("y", 3));
        var model = builder.Build(loss, output);
        var store = ParameterStore.Initialize(model, new CpuBackend(), 17);
        foreach (var p in model.Parameters) store.Set(p, Problem.Normal(p.Id + 5, p.Shape.ElementCount, 0.7f));
        var data = new Dictionary<int, float[]>
        {
            [x.Id] = Problem.Normal(1, batch * 6, 1f),
            [model.Nodes[^2].Id] = squaredError ? Problem.Normal(2, batch * 3, 1f) : [0, 2, 1],
        };
        var problem = new Problem(model, store, batch, data);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();

        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        // Fixed data: a kink within reach would make this case untestable by finite differences every time; say so.
        Assert.SkipWhen(JvpTests.NearReluKink(problem, reference, leaves), "a ReLU input lies within 1e-3 of the kink: finite differences are invalid there");
        foreach (var node in model.Parameters.Append(x))
        {
            var gradient = plan.Cotangent(node).ToArray();
            for (int i = 0; i < gradient.Length; i++)
            {
                const double epsilon = 1e-5;
                var original = leaves[node.Id][i];
                leaves[node.Id][i] = original + epsilon;
                double plus = reference.Run(leaves).Average();
                leaves[node.Id][i] = original - epsilon;
                double minus = reference.Run(leaves).Average();
                leaves[node.Id][i] = original;
                JvpTests.AssertClose((plus - minus) / (2 * epsilon), gradient[i], $"∂L/∂{node.Name}[{i}]");
            }
        }
    }

    public sealed record Case(int Seed, int Activation, bool SquaredError, int Batch);

    /// <summary>The cases of <see cref="Jvp_along_v_equals_gradient_dot_v"/> (FsCheck finds this Arbitrary by its parameter's type).</summary>
    public static Arbitrary<Case> Cases() =>
        (from seed in Gen.Choose(0, 1_000_000)
         from activation in Gen.Choose(0, 3)
         from mse in Gen.Elements(false, true)
         from batch in Gen.Choose(1, 5)
         select new Case(seed, activation, mse, batch)).ToArbitrary();

    /// <summary>
    /// The JVP of the mean loss along a random parameter direction v equals ⟨∇L, v⟩ from the VJP:
    /// (1/B) Σ_b ℓ̇_b = Σ_p ⟨∇_p L, v_p⟩, over random shapes, activations and losses.
    /// </summary>
    [Property(Replay = PropertyConfig.Replay, Arbitrary = new[] { typeof(VjpTests) })]
    public void Jvp_along_v_equals_gradient_dot_v(Case c)
    {
        var problem = Problem.RandomMlp(c.Seed, Activations[c.Activation], c.Batch, c.SquaredError ? LossKind.MeanSquaredError : LossKind.SoftmaxCrossEntropy);
        var parameters = problem.Model.Parameters.ToList();
        var plan = problem.Compile(new PlanOptions(c.Batch) { Gradients = true, Seeds = [.. parameters.Select(p => new TangentSeed(p))] });
        double expected = 0;
        plan.Forward();
        plan.Backward();
        foreach (var p in parameters)
        {
            var v = Problem.Normal(c.Seed + p.Id, p.Shape.ElementCount, 1f);
            CpuBackend.Span(plan.Seed(p)).CopyFrom(v);
            var g = plan.Gradient(p).ToArray();
            for (int i = 0; i < v.Length; i++) expected += (double)g[i] * v[i];
        }
        plan.Jvp();
        double directional = plan.Tangent(problem.Model.Loss).ToArray().Sum(t => (double)t) / c.Batch;
        JvpTests.AssertClose(expected, directional, $"{c}", 1e-4);
    }

    /// <summary>
    /// A pull-back from s_{i+1} to s_i applies only the local Jacobians: s̄_i = 1[s_i > 0] ⊙ (W_{i+1}ᵀ ε) per
    /// example (the Wᵀ guess of docs/design.md §2), and leaves the parameter gradients alone.
    /// </summary>
    [Fact]
    public void Pull_back_applies_local_jacobians_only()
    {
        const int batch = 4;
        var problem = Problem.RandomMlp(21, ElementwiseFunction.Relu, batch, widths: [6, 5], inputs: 3, outputs: 4);
        var (layer, next) = (problem.Model.Sites[0], problem.Model.Sites[1]);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var gradientBefore = plan.Gradient(next.Weight()).ToArray();
        var pullBack = plan.CreatePullBack([next.Node], layer.Node);
        var epsilon = Problem.Normal(99, batch * 5, 1f);
        CpuBackend.Span(pullBack.Cotangent(next.Node)).CopyFrom(epsilon);
        pullBack.Run();
        var pulled = pullBack.Cotangent(layer.Node).ToArray();
        var s = plan.Value(layer.Node).ToArray();
        var w = problem.Parameters.ToArray(next.Weight());
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < 6; j++)
            {
                double expected = 0;
                for (int o = 0; o < 5; o++) expected += w[o * 6 + j] * epsilon[b * 5 + o];
                if (s[b * 6 + j] <= 0) expected = 0;
                JvpTests.AssertClose(expected, pulled[b * 6 + j], $"example {b} unit {j}", 1e-5);
            }
        Assert.Equal(gradientBefore, plan.Gradient(next.Weight()).ToArray());
    }

    /// <summary>Repeated backward passes give identical gradients (cotangents are cleared, not accumulated across calls).</summary>
    [Fact]
    public void Backward_is_repeatable()
    {
        var problem = Problem.RandomMlp(4, ElementwiseFunction.Tanh, 3, widths: [4], inputs: 3, outputs: 3);
        var plan = problem.Compile(new PlanOptions(3) { Gradients = true });
        plan.Forward();
        plan.Backward();
        var first = plan.Gradient(problem.Model.Sites[0].Weight()).ToArray();
        plan.Backward();
        Assert.Equal(first, plan.Gradient(problem.Model.Sites[0].Weight()).ToArray());
    }
}
