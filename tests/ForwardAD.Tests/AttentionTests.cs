using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Multi-head causal self-attention (issue 13, <see cref="CausalSelfAttentionOp"/>): the JVP/VJP adjoint identity for every
/// combination of seeded inputs, several heads (odd head widths), T = 1 and q = k = v; JVPs of a small attention block
/// against central differences of the float64 reference; backprop's gradient against the JVP; PyTorch's values
/// (Golden/attention.py); no allocation per forward + JVP, backward or pull-back.
/// </summary>
public class AttentionTests
{
    /// <summary>Attention over three differentiable inputs (or one, used as q, k and v) between them and a mean-squared-error loss.</summary>
    private sealed record Direct(Model Model, Node Q, Node K, Node V, Node Op)
    {
        public Node[] Inputs => Q == K ? [Q] : [Q, K, V];
    }

    private static Direct Build(int length, int width, int heads, bool shared = false)
    {
        var b = new ModelBuilder();
        var q = b.Input("q", new Shape(length, width));
        var k = shared ? q : b.Input("k", new Shape(length, width));
        var v = shared ? q : b.Input("v", new Shape(length, width));
        var op = b.CausalSelfAttention("attention", q, k, v, heads);
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return new Direct(b.Build(b.MeanSquaredError("loss", flat, target), flat), q, k, v, op);
    }

    /// <summary>Geometries (T, D, heads) and which of q, k, v carry a tangent (bits 1, 2, 4; the others are symbolic zeros):
    /// every subset on one geometry; all three on head widths 3, 3, 5 and 1, T = 1 and q = k = v (mask 0).</summary>
    public static TheoryData<int, int, int, int> AdjointCases()
    {
        var data = new TheoryData<int, int, int, int>();
        for (int mask = 1; mask <= 7; mask++) data.Add(5, 6, 2, mask);
        data.Add(5, 9, 3, 7);
        data.Add(4, 5, 1, 7);
        data.Add(3, 3, 3, 7);
        data.Add(1, 6, 2, 7);
        data.Add(1, 5, 1, 7);
        data.Add(5, 6, 2, 0);
        data.Add(1, 6, 3, 0);
        return data;
    }

    /// <summary>
    /// ⟨w, J ẋ⟩ = Σ_x ⟨J_xᵀ w, ẋ⟩ over the seeded inputs x: J ẋ is the plan's JVP (K = 2 channels, unseeded inputs symbolic
    /// zeros), J_xᵀ w a pull-back from the attention output to x alone (C = 3 channels), so each VJP runs with one input's
    /// cotangent asked for; with q = k = v the three cotangents land in one buffer (overwrite, then add). Dot products in
    /// float64 over float32 values of ~100–300 terms: agreement to ~1e-5 relative, checked at 1e-4.
    /// </summary>
    [Theory]
    [MemberData(nameof(AdjointCases))]
    public void Jvp_and_vjp_are_adjoint(int length, int width, int heads, int mask)
    {
        var m = Build(length, width, heads, shared: mask == 0);
        const int batch = 3, K = 2, C = 3;
        var seeded = mask == 0 ? m.Inputs : m.Inputs.Where((_, i) => (mask & (1 << i)) != 0).ToArray();
        var problem = Problem.From(m.Model, 100 * length + 10 * width + heads + mask, batch);
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Seeds = [.. seeded.Select(n => new TangentSeed(n))] });
        var tangents = seeded.ToDictionary(n => n, n => Problem.Normal(5 + n.Id, plan.Seed(n).Length, 1f));
        foreach (var (n, t) in tangents) CpuBackend.Span(plan.Seed(n)).CopyFrom(t);
        plan.Forward();
        plan.Jvp();
        var jv = plan.Tangent(m.Op).ToArray();
        int perChannel = jv.Length / K;
        var w = Problem.Normal(3, C * perChannel, 1f);
        var pulled = new Dictionary<Node, float[]>();
        foreach (var x in seeded)
        {
            var pullBack = plan.CreatePullBack([m.Op], x, C);
            CpuBackend.Span(pullBack.Cotangent(m.Op)).CopyFrom(w);
            pullBack.Run();
            pulled[x] = pullBack.Cotangent(x).ToArray();
        }
        for (int c = 0; c < C; c++)
            for (int k = 0; k < K; k++)
            {
                double left = 0, right = 0;
                for (int i = 0; i < perChannel; i++) left += (double)w[c * perChannel + i] * jv[k * perChannel + i];
                foreach (var x in seeded)
                    for (int i = 0; i < perChannel; i++) right += (double)pulled[x][c * perChannel + i] * tangents[x][k * perChannel + i];
                JvpTests.AssertClose(left, right, $"T={length} D={width} H={heads} mask={mask}: ⟨w_{c}, J v_{k}⟩ vs Σ ⟨Jᵀ w_{c}, v_{k}⟩", 1e-4);
            }
    }

    // ---- a small attention block: projections (sites), attention, output projection -------------------------------

    /// <summary>x [T, Dm] → q, k, v = x W_{q,k,v}ᵀ + b (sites) → attention (H heads) → y = a W_oᵀ + b_o → MSE against a target.</summary>
    private static Model Block(int length, int inputWidth, int width, int heads)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(length, inputWidth));
        var q = b.Dense("q", x, width, ElementwiseFunction.Identity).Output;
        var k = b.Dense("k", x, width, ElementwiseFunction.Identity).Output;
        var v = b.Dense("v", x, width, ElementwiseFunction.Identity).Output;
        var attention = b.CausalSelfAttention("attention", q, k, v, heads);
        var y = b.Dense("out", attention, inputWidth, ElementwiseFunction.Identity).Output;
        var flat = b.Flatten("flat", y);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return b.Build(b.MeanSquaredError("loss", flat, target), flat);
    }

    /// <summary>
    /// The JVP of the per-example losses and of the outputs, with tangents on x, every parameter and every site (the three
    /// projections and the output projection: injected tangents), against central differences of the float64 reference
    /// evaluator along the same direction. ε = 1e-5 in double: truncation ~1e-10; the float32 plan is accurate to ~1e-6
    /// relative, hence the 2e-4 of the MLP and CNN tests.
    /// </summary>
    [Theory]
    [InlineData(5, 4, 6, 2)]
    [InlineData(1, 3, 6, 3)]
    [InlineData(6, 5, 9, 3)]
    [InlineData(4, 3, 5, 1)]
    public void Block_jvp_matches_central_differences_of_a_float64_reference(int length, int inputWidth, int width, int heads)
    {
        var model = Block(length, inputWidth, width, heads);
        const int batch = 3, K = 2;
        var problem = Problem.From(model, 60 + length + width, batch);
        var seeded = model.Nodes.Where(n => n.Op is InputOp { Differentiable: true } || n.IsParameter).Concat(model.Sites.Select(site => site.Node)).Distinct().ToList();
        Assert.Equal(4, model.Sites.Length);
        FiniteDifferences.AssertJvpMatchesReference(problem, seeded, K, "attention block", seedBase: 700);
    }

    /// <summary>
    /// Backprop through attention (the plan's backward pass, one cotangent channel, every input of the op asked for) against
    /// forward mode: L̇ = (1/B) Σ_b ℓ̇_b along parameter tangents equals ⟨∇θ L, θ̇⟩. Float64 sums of float32 values: 1e-4.
    /// </summary>
    [Theory]
    [InlineData(5, 4, 6, 2)]
    [InlineData(1, 3, 6, 3)]
    [InlineData(7, 5, 9, 3)]
    public void Backprop_gradient_matches_the_jvp(int length, int inputWidth, int width, int heads)
    {
        var model = Block(length, inputWidth, width, heads);
        const int batch = 2, K = 3;
        var problem = Problem.From(model, 80 + length, batch);
        var parameters = model.Parameters.ToList();
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Gradients = true, Seeds = [.. parameters.Select(p => new TangentSeed(p))] });
        var tangents = parameters.ToDictionary(p => p, p => Problem.Normal(300 + p.Id, plan.Seed(p).Length, 1f));
        foreach (var (p, t) in tangents) CpuBackend.Span(plan.Seed(p)).CopyFrom(t);
        plan.ForwardJvp();
        plan.Backward();
        var lossTangent = plan.Tangent(model.Loss).ToArray();
        for (int k = 0; k < K; k++)
        {
            double expected = 0, actual = 0;
            for (int b = 0; b < batch; b++) expected += lossTangent[k * batch + b] / batch;
            foreach (var p in parameters)
            {
                var gradient = plan.Gradient(p).ToArray();
                for (int i = 0; i < gradient.Length; i++) actual += (double)gradient[i] * tangents[p][k * gradient.Length + i];
            }
            JvpTests.AssertClose(expected, actual, $"T={length} H={heads}: L̇ vs ⟨∇θ L, θ̇⟩, channel {k}", 1e-4);
        }
    }

    /// <summary>Warmed-up plans allocate nothing: forward + JVP (K = 2, tangents on every parameter), the backward pass,
    /// and a 3-channel pull-back from the attention output to the q projection's site.</summary>
    [Fact]
    public void Forward_jvp_backward_and_pull_back_allocate_nothing()
    {
        var model = Block(8, 6, 8, 2);
        const int batch = 4;
        var problem = Problem.From(model, 5, batch);
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = 2, Gradients = true, Seeds = [.. model.Parameters.Select(p => new TangentSeed(p))] });
        foreach (var p in model.Parameters) CpuBackend.Span(plan.Seed(p)).CopyFrom(Problem.Normal(p.Id, plan.Seed(p).Length, 1f));
        var pullBack = plan.CreatePullBack([model["attention"]], model["q"], 3);
        CpuBackend.Span(pullBack.Cotangent(model["attention"])).CopyFrom(Problem.Normal(9, pullBack.Cotangent(model["attention"]).Length, 1f));
        for (int i = 0; i < 2; i++)
        {
            plan.ForwardJvp();
            plan.Backward();
            pullBack.Run();
        }
        Allocations.AssertNone(_ => plan.ForwardJvp(), warmUp: 2, steps: 3, "attention's forward + JVP");
        Allocations.AssertNone(_ => plan.Backward(), warmUp: 2, steps: 3, "attention's backward");
        Allocations.AssertNone(_ => pullBack.Run(), warmUp: 2, steps: 3, "attention's pull-back");
        Assert.All(plan.Gradient(model["q.weight"]).ToArray(), g => Assert.True(float.IsFinite(g)));
    }

    [Fact]
    public void Shape_errors_name_the_node_and_the_fix()
    {
        var b = new ModelBuilder();
        var q = b.Input("q", new Shape(4, 6));
        var k = b.Input("k", new Shape(4, 6));
        var v = b.Input("v", new Shape(5, 6));
        var error = Assert.Throws<ShapeMismatchException>(() => b.CausalSelfAttention("a", q, k, v, 2));
        Assert.Contains("'a'", error.Message);
        var heads = Assert.Throws<ShapeMismatchException>(() => b.CausalSelfAttention("b", q, k, k, 4));
        Assert.Contains("multiple of 4", heads.Message);
        Assert.Throws<ArgumentException>(() => b.CausalSelfAttention("c", q, k, k, 0));
    }

    // ---- PyTorch golden values (Golden/attention.py, float64) --------------------------------------------------------

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "attention.json"))).RootElement;

    private static float[] Data(JsonElement array) => [.. array.GetProperty("data").EnumerateArray().Select(v => v.GetSingle())];
    private static double[] Doubles(JsonElement array) => [.. array.GetProperty("data").EnumerateArray().Select(v => v.GetDouble())];

    public static TheoryData<int> GoldenCases()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Golden.GetProperty("attention").GetArrayLength(); i++) data.Add(i);
        return data;
    }

    /// <summary>
    /// Forward, JVP (tangents on q, k and v) and VJP (q̄, k̄, v̄ by pull-backs) against PyTorch in float64 from the same float32
    /// inputs. Outputs are convex combinations of v rows; gradients sums of ≤ T·dh + T terms of size ≲ 10: float32 rounding
    /// gives ≲ 1e-5 relative, checked at 1e-4 (as the CNN golden tests).
    /// </summary>
    [Theory]
    [MemberData(nameof(GoldenCases))]
    public void Matches_pytorch(int index)
    {
        var golden = Golden.GetProperty("attention")[index];
        string name = golden.GetProperty("name").GetString()!;
        var inputs = golden.GetProperty("inputs");
        var shape = inputs.GetProperty("q").GetProperty("shape").EnumerateArray().Select(v => v.GetInt32()).ToArray();
        int batch = shape[0];
        var m = Build(shape[1], shape[2], golden.GetProperty("config").GetProperty("heads").GetInt32());
        var store = ParameterStore.Initialize(m.Model, new CpuBackend(), 1);
        var plan = Plan.Compile(store, new PlanOptions(batch) { Seeds = [.. m.Inputs.Select(n => new TangentSeed(n))] });
        var tangents = golden.GetProperty("jvp").GetProperty("tangents");
        foreach (var (node, key) in new[] { (m.Q, "q"), (m.K, "k"), (m.V, "v") })
        {
            plan.SetInput(node, Data(inputs.GetProperty(key)));
            CpuBackend.Span(plan.Seed(node)).CopyFrom(Data(tangents.GetProperty(key)));
        }
        plan.SetInput(m.Model["target"], new float[m.Model["target"].ElementCount(batch)]);
        plan.Forward();
        AssertAll(Doubles(golden.GetProperty("output")), plan.Value(m.Op).ToArray(), $"{name} output");
        plan.Jvp();
        AssertAll(Doubles(golden.GetProperty("jvp").GetProperty("output")), plan.Tangent(m.Op).ToArray(), $"{name} JVP");
        var vjp = golden.GetProperty("vjp");
        foreach (var (node, key) in new[] { (m.Q, "q"), (m.K, "k"), (m.V, "v") })
        {
            var pullBack = plan.CreatePullBack([m.Op], node);
            CpuBackend.Span(pullBack.Cotangent(m.Op)).CopyFrom(Data(vjp.GetProperty("cotangent")));
            pullBack.Run();
            AssertAll(Doubles(vjp.GetProperty("gradients").GetProperty(key)), pullBack.Cotangent(node).ToArray(), $"{name} {key}̄");
        }
    }

    private static void AssertAll(double[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) JvpTests.AssertClose(expected[i], actual[i], $"{what}[{i}]", 1e-4);
    }
}
