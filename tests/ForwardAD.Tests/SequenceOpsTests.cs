using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// The non-attention ops of a decoder-only transformer (issue 13): LayerNorm and RMSNorm per row, token and positional
/// embeddings, sequence cross-entropy with ignored positions, and both GELUs in float32. The JVP/VJP adjoint identity for every
/// op, JVPs of small sequence models against central differences of the float64 reference, PyTorch's values
/// (Golden/sequence_ops.py), the GELUs against double-precision references over a dense grid, and the checks on token ids.
/// </summary>
public class SequenceOpsTests
{
    // ---- one op between an input and a loss ----------------------------------------------------------------------------

    private sealed record OpModel(Model Model, Node? X, Node Op);

    private static OpModel Single(Shape input, Func<ModelBuilder, Node, Node> apply)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", input);
        var op = apply(b, x);
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return new OpModel(b.Build(b.MeanSquaredError("loss", flat, target), flat), x, op);
    }

    private static OpModel EmbeddingModel(int length, int vocabulary, int width)
    {
        var b = new ModelBuilder();
        var ids = b.Tokens("ids", length, vocabulary);
        var op = b.Embedding("op", ids, width);
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return new OpModel(b.Build(b.MeanSquaredError("loss", flat, target), flat), null, op);
    }

    /// <summary>Odd widths, T = 1, with and without affine parameters; the positional table longer than the sequence.</summary>
    public static TheoryData<string> Ops => new()
    {
        "layernorm t3 d5", "layernorm noaffine t1 d7", "rmsnorm t3 d5", "rmsnorm noaffine t1 d7", "position t3 max5 d4", "position t1 max1 d3",
        "gelu t2 d9", "gelu_tanh t2 d9", "embedding t4 v6 d3", "embedding t1 v2 d5",
    };

    private static OpModel Build(string name) => name switch
    {
        "layernorm t3 d5" => Single(new Shape(3, 5), (b, x) => b.LayerNorm("op", x)),
        "layernorm noaffine t1 d7" => Single(new Shape(1, 7), (b, x) => b.LayerNorm("op", x, affine: false)),
        "rmsnorm t3 d5" => Single(new Shape(3, 5), (b, x) => b.RmsNorm("op", x)),
        "rmsnorm noaffine t1 d7" => Single(new Shape(1, 7), (b, x) => b.RmsNorm("op", x, affine: false)),
        "position t3 max5 d4" => Single(new Shape(3, 4), (b, x) => b.PositionalEmbedding("op", x, 5)),
        "position t1 max1 d3" => Single(new Shape(1, 3), (b, x) => b.PositionalEmbedding("op", x, 1)),
        "gelu t2 d9" => Single(new Shape(2, 9), (b, x) => b.Activation("op", x, ElementwiseFunction.Gelu)),
        "gelu_tanh t2 d9" => Single(new Shape(2, 9), (b, x) => b.Activation("op", x, ElementwiseFunction.GeluTanh)),
        "embedding t4 v6 d3" => EmbeddingModel(4, 6, 3),
        "embedding t1 v2 d5" => EmbeddingModel(1, 2, 5),
        _ => throw new ArgumentException(name),
    };

    /// <summary>Random data with valid token ids (a repeated id in every example, so the scatter-add sums), parameters off
    /// their defaults (γ ≠ 1, β ≠ 0, tables N(0, 1)).</summary>
    private static Problem Randomized(Model model, int seed, int batch)
    {
        var problem = Problem.From(model, seed, batch);
        var rng = new System.Random(seed);
        foreach (var node in model.Nodes.Where(n => n.Op is TokensOp))
        {
            var tokens = (TokensOp)node.Op;
            var ids = Enumerable.Range(0, node.ElementCount(batch)).Select(_ => (float)rng.Next(tokens.Vocabulary)).ToArray();
            if (tokens.Length > 1) for (int b = 0; b < batch; b++) ids[b * tokens.Length + 1] = ids[b * tokens.Length];
            problem.Inputs[node.Id] = ids;
        }
        foreach (var p in model.Parameters)
            problem.Parameters.Set(p, Problem.Normal(seed + 13 * p.Id, p.Shape.ElementCount, 0.5f).Select(v => p.Name.EndsWith(".weight") && p.Shape.Rank == 1 ? 1 + v : 2 * v).ToArray());
        return problem;
    }

    /// <summary>
    /// ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ for the op's input (J v: the plan's JVP, K = 2; Jᵀ w: a pull-back, C = 3) and ⟨∇_θ L, θ̇⟩ = L̇ for its
    /// parameters (backprop against the JVP of the mean loss). Float64 dot products of float32 values: 1e-4 relative, as CnnTests.
    /// </summary>
    [Theory]
    [MemberData(nameof(Ops))]
    public void Jvp_and_vjp_are_adjoint(string name)
    {
        var m = Build(name);
        const int batch = 3, K = 2, C = 3;
        var problem = Randomized(m.Model, name.Length * 97 + name[0], batch);
        var parameters = m.Model.Parameters.ToList();
        var seeds = parameters.Select(p => new TangentSeed(p)).ToList();
        if (m.X is not null) seeds.Insert(0, new TangentSeed(m.X));
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Gradients = true, Seeds = [.. seeds] });
        var parameterTangents = parameters.ToDictionary(p => p, p => Problem.Normal(2 + p.Id, plan.Seed(p).Length, 1f));
        if (m.X is not null)
        {
            Adjoint.AssertInputAdjoint(plan, m.X, m.Op, parameters, K, C, name);
        }
        else plan.Forward();
        if (parameters.Count == 0) return;
        plan.Backward();
        foreach (var (p, t) in parameterTangents) CpuBackend.Span(plan.Seed(p)).CopyFrom(t);
        plan.Jvp();
        var lossTangent = plan.Tangent(m.Model.Loss).ToArray();
        for (int k = 0; k < K; k++)
        {
            double expected = 0, actual = 0;
            for (int b = 0; b < batch; b++) expected += lossTangent[k * batch + b] / batch;
            foreach (var p in parameters)
            {
                var gradient = plan.Gradient(p).ToArray();
                var tangent = parameterTangents[p];
                for (int i = 0; i < gradient.Length; i++) actual += (double)gradient[i] * tangent[k * gradient.Length + i];
            }
            JvpTests.AssertClose(expected, actual, $"{name}: L̇ vs ⟨∇θ L, θ̇⟩, channel {k}", 1e-4);
        }
    }

    // ---- small sequence models against central differences --------------------------------------------------------------

    /// <summary>tokens → embedding → + positions → LayerNorm → dense (GELU) → RMSNorm → dense head [T, V] → sequence
    /// cross-entropy with padding targets; variant 1 with the exact GELU, non-affine norms, T = 1.</summary>
    internal static Model SequenceModel(int variant, int length = 5, int vocabulary = 7, int width = 6)
    {
        if (variant == 1) length = 1;
        var b = new ModelBuilder();
        var ids = b.Tokens("ids", length, vocabulary);
        var targets = b.Tokens("targets", length, vocabulary);
        var h = b.PositionalEmbedding("pos", b.Embedding("embed", ids, width), length + 2);
        h = b.LayerNorm("ln", h, affine: variant == 0);
        h = b.Dense("mlp", h, 9, variant == 0 ? ElementwiseFunction.GeluTanh : ElementwiseFunction.Gelu).Output;
        h = b.RmsNorm("rms", h, affine: variant == 0);
        var logits = b.Dense("head", h, vocabulary, ElementwiseFunction.Identity).Output;
        return b.Build(b.SequenceCrossEntropy("loss", logits, targets), logits);
    }

    /// <summary>Targets with padding: example 1 has one padded position, the last example is all padding (loss 0, no gradient).</summary>
    private static Problem SequenceProblem(Model model, int seed, int batch)
    {
        var problem = Randomized(model, seed, batch);
        var targets = model["targets"];
        int length = targets.Shape[0];
        var values = problem.Inputs[targets.Id];
        values[1 * length + length / 2] = -1;
        for (int t = 0; t < length; t++) values[(batch - 1) * length + t] = -1;
        return problem;
    }

    /// <summary>
    /// The JVP of every example's loss and of the logits, with tangents on every parameter and every site (K = 2), against
    /// central differences of the float64 reference (ε = 1e-5: truncation ~1e-10; the float32 plan is accurate to ~1e-6
    /// relative, hence 2e-4 as in the MLP and CNN tests). Also the forward losses to 1e-5.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void Sequence_model_jvp_matches_central_differences_of_a_float64_reference(int variant)
    {
        var model = SequenceModel(variant);
        const int batch = 4, K = 2;
        var problem = SequenceProblem(model, 60 + variant, batch);
        var seeded = model.Parameters.Concat(model.Sites.Select(site => site.Node)).ToList();
        var losses = FiniteDifferences.AssertJvpMatchesReference(problem, seeded, K, $"variant {variant}", seedBase: 900);
        Assert.Equal(0f, losses[batch - 1]); // every target padding
    }

    /// <summary>Sequence cross-entropy's own adjoint identity: ⟨w, J ż⟩ over the per-example losses against ⟨Jᵀ w, ż⟩ from a
    /// pull-back from the loss to the logits (C = 2), with ignored and all-ignored examples.</summary>
    [Fact]
    public void Sequence_cross_entropy_jvp_and_vjp_are_adjoint()
    {
        var b = new ModelBuilder();
        var z = b.Input("z", new Shape(3, 5));
        var targets = b.Tokens("targets", 3, 5);
        var model = b.Build(b.SequenceCrossEntropy("loss", z, targets), z);
        const int batch = 3, K = 2, C = 2;
        var problem = Problem.From(model, 5, batch);
        problem.Inputs[targets.Id] = [0, 4, 2, 1, -1, 3, -1, -1, -1];
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Seeds = [new TangentSeed(z)] });
        var v = Problem.Normal(8, plan.Seed(z).Length, 1f);
        CpuBackend.Span(plan.Seed(z)).CopyFrom(v);
        plan.ForwardJvp();
        var jv = plan.Tangent(model.Loss).ToArray();
        var pullBack = plan.CreatePullBack([model.Loss], z, C);
        var w = Problem.Normal(9, pullBack.Cotangent(model.Loss).Length, 1f);
        CpuBackend.Span(pullBack.Cotangent(model.Loss)).CopyFrom(w);
        pullBack.Run();
        var jtw = pullBack.Cotangent(z).ToArray();
        int n = v.Length / K;
        for (int c = 0; c < C; c++)
            for (int k = 0; k < K; k++)
            {
                double left = 0, right = 0;
                for (int i = 0; i < batch; i++) left += (double)w[c * batch + i] * jv[k * batch + i];
                for (int i = 0; i < n; i++) right += (double)jtw[c * n + i] * v[k * n + i];
                JvpTests.AssertClose(left, right, $"⟨w_{c}, J v_{k}⟩ vs ⟨Jᵀ w_{c}, v_{k}⟩", 1e-4);
            }
        Assert.All(jtw.Skip(2 * 5 * 3).Take(15), value => Assert.Equal(0f, value)); // the all-ignored example, channel 0
    }

    // ---- PyTorch golden values --------------------------------------------------------------------------------------------

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "sequence_ops.json"))).RootElement;

    private static float[] Data(JsonElement array) => [.. array.GetProperty("data").EnumerateArray().Select(v => v.GetSingle())];
    private static int[] ShapeOf(JsonElement array) => [.. array.GetProperty("shape").EnumerateArray().Select(v => v.GetInt32())];

    /// <summary>float32 against PyTorch's float64: ~1e-6 relative per value, through row sums of ≤ 20 terms.</summary>
    private static void AssertAll(float[] expected, float[] actual, string what, double tolerance = 1e-4)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) JvpTests.AssertClose(expected[i], actual[i], $"{what}[{i}]", tolerance);
    }

    public static TheoryData<string, int> GoldenOps()
    {
        var data = new TheoryData<string, int>();
        foreach (var family in new[] { "layer_norm", "rms_norm", "embedding", "position", "sequence_ce" })
            for (int i = 0; i < Golden.GetProperty(family).GetArrayLength(); i++) data.Add(family, i);
        return data;
    }

    /// <summary>Forward, JVP (tangents on the input and every parameter) and VJP (the input's cotangent by a pull-back, the
    /// parameters' by the site's parameter update; for the loss, the logits' by a pull-back from the per-example losses).</summary>
    [Theory]
    [MemberData(nameof(GoldenOps))]
    public void Ops_match_pytorch(string family, int index)
    {
        var golden = Golden.GetProperty(family)[index];
        var inputs = golden.GetProperty("inputs");
        string what = $"{family} {golden.GetProperty("name").GetString()}";
        var b = new ModelBuilder();
        var parameters = new Dictionary<string, Node>();
        Node Parameter(string name) => parameters[name] = b.Parameter(name, new Shape(ShapeOf(inputs.GetProperty(name))), Initializer.Zeros);
        Node? x = null, tokens = null;
        Node Sequence(string name)
        {
            var shape = ShapeOf(inputs.GetProperty(name));
            return x = b.Input(name, new Shape(shape[1..]));
        }
        int batch;
        Node op;
        float[]? tokenValues = null;
        switch (family)
        {
            case "layer_norm":
            case "rms_norm":
            {
                batch = ShapeOf(inputs.GetProperty("x"))[0];
                var input = Sequence("x");
                var norm = family == "layer_norm" ? new LayerNormOp() : (Op)new RmsNormOp();
                op = !inputs.TryGetProperty("gamma", out _) ? b.Apply("op", norm, input)
                    : family == "layer_norm" ? b.Apply("op", norm, input, Parameter("gamma"), Parameter("beta")) : b.Apply("op", norm, input, Parameter("gamma"));
                break;
            }
            case "embedding":
            {
                var idShape = ShapeOf(golden.GetProperty("ids"));
                batch = idShape[0];
                var table = ShapeOf(inputs.GetProperty("table"));
                tokens = b.Tokens("ids", idShape[1], table[0]);
                tokenValues = Data(golden.GetProperty("ids"));
                op = b.Apply("op", new EmbeddingOp(), tokens, Parameter("table"));
                break;
            }
            case "position":
                batch = ShapeOf(inputs.GetProperty("x"))[0];
                op = b.Apply("op", new AddPositionOp(), Sequence("x"), Parameter("table"));
                break;
            default:
            {
                var shape = ShapeOf(inputs.GetProperty("logits"));
                batch = shape[0];
                var logits = Sequence("logits");
                tokens = b.Tokens("targets", shape[1], shape[2]);
                tokenValues = Data(golden.GetProperty("targets"));
                op = b.SequenceCrossEntropy("op", logits, tokens, golden.GetProperty("ignore_index").GetInt32());
                break;
            }
        }
        Model model;
        Node? target = null;
        if (op.Op is PerExampleLossOp) model = b.Build(op, op);
        else
        {
            var flat = b.Flatten("flat", op);
            target = b.Input("target", flat.Shape, differentiable: false);
            model = b.Build(b.MeanSquaredError("loss", flat, target), flat);
        }
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        foreach (var (name, node) in parameters) store.Set(node, Data(inputs.GetProperty(name)));
        var seeds = parameters.Values.Select(p => new TangentSeed(p)).ToList();
        if (x is not null) seeds.Add(new TangentSeed(x));
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true, Seeds = [.. seeds] });
        if (x is not null) plan.SetInput(x, Data(inputs.GetProperty(x.Name)));
        if (tokens is not null) plan.SetInput(tokens, tokenValues!);
        if (target is not null) plan.SetInput(target, new float[target.ElementCount(batch)]);
        var tangents = golden.GetProperty("jvp").GetProperty("tangents");
        if (x is not null) CpuBackend.Span(plan.Seed(x)).CopyFrom(Data(tangents.GetProperty(x.Name)));
        foreach (var (name, node) in parameters) CpuBackend.Span(plan.Seed(node)).CopyFrom(Data(tangents.GetProperty(name)));
        plan.Forward();
        AssertAll(Data(golden.GetProperty("output")), plan.Value(op).ToArray(), $"{what} output");
        plan.Jvp();
        AssertAll(Data(golden.GetProperty("jvp").GetProperty("output")), plan.Tangent(op).ToArray(), $"{what} JVP");

        var vjp = golden.GetProperty("vjp");
        var cotangent = Data(vjp.GetProperty("cotangent"));
        if (x is not null)
        {
            var pullBack = plan.CreatePullBack([op], x);
            CpuBackend.Span(pullBack.Cotangent(op)).CopyFrom(cotangent);
            pullBack.Run();
            AssertAll(Data(vjp.GetProperty("gradients").GetProperty(x.Name)), pullBack.Cotangent(x).ToArray(), $"{what} {x.Name}̄");
        }
        if (parameters.Count == 0) return;
        var gradient = new View(store.Backend.Allocate(store.All.Length), 0, store.All.Length);
        var update = plan.CreateParameterUpdate([op], gradient);
        var siteCotangent = new View(store.Backend.Allocate(cotangent.Length), 0, cotangent.Length);
        store.Backend.CopyFromHost(cotangent, siteCotangent);
        update.Write(0, siteCotangent);
        var slices = ParameterLayout.Of(model).Slices(model, gradient);
        foreach (var (name, node) in parameters)
            AssertAll(Data(vjp.GetProperty("gradients").GetProperty(name)), slices[node.Id].ToArray(), $"{what} {name} cotangent");
    }

    /// <summary>Both GELUs at PyTorch's values (float64 from the same float32 grid) on [−6, 6]: 1e-5 relative (1 + |y|), well
    /// above the float32 kernels' error bounded by <see cref="Gelu_matches_double_precision_over_a_dense_grid"/>.</summary>
    [Theory]
    [InlineData("none")]
    [InlineData("tanh")]
    public void Gelu_matches_pytorch(string approximate)
    {
        var golden = Golden.GetProperty("gelu").GetProperty(approximate);
        var x = Data(golden.GetProperty("x"));
        var function = approximate == "none" ? ElementwiseFunction.Gelu : ElementwiseFunction.GeluTanh;
        var y = new float[x.Length];
        var d = new float[x.Length];
        function.Apply(x, y);
        function.Differentiate(x, y, d);
        AssertAll(Data(golden.GetProperty("y")), y, $"gelu {approximate}", 1e-5);
        AssertAll(Data(golden.GetProperty("derivative")), d, $"gelu {approximate} derivative", 1e-5);
    }

    // ---- GELU in float32 against double precision -----------------------------------------------------------------------

    /// <summary>erfc in double: 1 − erf by its Maclaurin series below z = 3 (terms up to e^(z²) ≈ 8e3 times the result: ~1e-12
    /// absolute), the Laplace continued fraction at and above 3 (60 levels: converged far below 1e-16 relative there).
    /// Independent of the library's Chebyshev fit.</summary>
    internal static double Erfc(double z)
    {
        if (z < 0) return 2 - Erfc(-z);
        if (z < 3)
        {
            double sum = 0, term = z;
            for (int n = 0; n < 100; n++)
            {
                sum += term / (2 * n + 1);
                term *= -z * z / (n + 1);
            }
            return 1 - 2 / Math.Sqrt(Math.PI) * sum;
        }
        double fraction = z;
        for (int n = 60; n >= 1; n--) fraction = z + n / 2.0 / fraction;
        return Math.Exp(-z * z) / Math.Sqrt(Math.PI) / fraction;
    }

    /// <summary>
    /// Both GELUs and their derivatives over x ∈ [−12, 12] in steps of 1/64 (1,537 points: the 8-lane loop and its scalar tail)
    /// against double precision. Bounds, from the formulas: the exact GELU takes Φ = r/2 (x &lt; 0) or 1 − r/2 with r = erfc(|x|/√2)
    /// from a fit of fractional error 1.2e-7, evaluated in float32 where the exponent −z² + … carries a rounding of ≈ 2⁻²⁴ of
    /// max(1, z²) per operation: r's relative error ≤ 4e-7 + 1.2e-7·z² (three roundings and exp's ulp besides the fit).
    /// So |ΔΦ| ≤ min(Φ, 1 − Φ)·(4e-7 + 1.2e-7 z²) + 6e-8 (the rounding of 1 − r/2), and y = xΦ, f' = Φ + xφ add their own
    /// roundings (≤ 2⁻²³ relative) and, for f', φ's relative error ≤ 2e-7 + 1.2e-7·z². The tanh GELU: x·σ(2u) with u carrying
    /// ≈ 3 roundings: Δσ ≤ σ(1 − σ)·2|u|·2e-7 + 2e-7·σ.
    /// The exact GELU's Φ (read back as y/x for |x| ≥ 0.5) is within 1e-7 of the true one (measured 8.9e-8, y/x's rounding
    /// included): erf = 2Φ − 1 to 2e-7 absolute.
    /// </summary>
    [Fact]
    public void Gelu_matches_double_precision_over_a_dense_grid()
    {
        var x = Enumerable.Range(-768, 1537).Select(i => i / 64f).ToArray();
        var (y, d, yTanh, dTanh) = (new float[x.Length], new float[x.Length], new float[x.Length], new float[x.Length]);
        ElementwiseFunction.Gelu.Apply(x, y);
        ElementwiseFunction.Gelu.Differentiate(x, y, d);
        ElementwiseFunction.GeluTanh.Apply(x, yTanh);
        ElementwiseFunction.GeluTanh.Differentiate(x, yTanh, dTanh);
        const double Rounding = 1.2e-7; // 2⁻²³
        double worstCdf = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double v = x[i], z = Math.Abs(v) / Math.Sqrt(2);
            double cdf = v < 0 ? Erfc(z) / 2 : 1 - Erfc(z) / 2, density = Math.Exp(-v * v / 2) / Math.Sqrt(2 * Math.PI);
            double cdfError = Math.Min(cdf, 1 - cdf) * (4e-7 + 1.2e-7 * z * z) + 6e-8;
            double value = v * cdf, slope = cdf + v * density;
            Within(value, y[i], Math.Abs(v) * cdfError + Rounding * Math.Abs(value), $"gelu({v})", Math.Abs(v));
            Within(slope, d[i], cdfError + Math.Abs(v) * density * (2e-7 + 1.2e-7 * z * z) + Rounding * (Math.Abs(cdf) + Math.Abs(v * density)), $"gelu'({v})", 1 + Math.Abs(v));
            if (Math.Abs(v) >= 0.5) worstCdf = Math.Max(worstCdf, Math.Abs(y[i] / v - cdf));

            double u = Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v);
            double sigma = 1 / (1 + Math.Exp(-2 * u));
            double sigmaError = sigma * (1 - sigma) * 2 * Math.Abs(u) * 2e-7 + 2e-7 * sigma;
            double tanhValue = ReferenceEvaluator.Apply(ElementwiseFunction.GeluTanh, v), tanhSlope = ReferenceEvaluator.Derivative(ElementwiseFunction.GeluTanh, v);
            double uSlope = 2 * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * v * v);
            Within(tanhValue, yTanh[i], Math.Abs(v) * sigmaError + Rounding * Math.Abs(tanhValue), $"gelu_tanh({v})", Math.Abs(v));
            Within(tanhSlope, dTanh[i], sigmaError * (1 + 3 * Math.Abs(v) * uSlope) + 4 * Rounding * (sigma + Math.Abs(v) * sigma * (1 - sigma) * uSlope), $"gelu_tanh'({v})", 1 + Math.Abs(v) * uSlope);
        }
        Assert.True(worstCdf <= 1e-7, $"Φ (erf/2) is off by {worstCdf:G3}");
    }

    private static void Within(double expected, float actual, double bound, string what, double scale)
    {
        // Plus 2⁻¹²⁵(1 + scale), scale = |∂result/∂Φ| or |∂result/∂σ|: a Φ or σ below float32's smallest normal number (2⁻¹²⁶ ≈ 1.2e-38: far in the negative tail)
        // is subnormal or flushed to 0 on the way (σ's e^(−2u) overflows), so there only the absolute size is meaningful.
        if (!(Math.Abs(expected - actual) <= bound + 2.4e-38 * (1 + scale)))
            throw new Xunit.Sdk.XunitException($"{what}: expected {expected:G12}, got {actual:G9}: error {Math.Abs(expected - actual):G3} over the bound {bound:G3}.");
    }

    // ---- token ids, shapes and allocation ---------------------------------------------------------------------------------

    [Fact]
    public void Token_ids_are_checked_when_set()
    {
        var b = new ModelBuilder();
        var ids = b.Tokens("ids", 3, 4);
        var e = b.Embedding("embed", ids, 2);
        var logits = b.Dense("head", e, 4, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SequenceCrossEntropy("loss", logits, b.Tokens("targets", 3, 4)), logits);
        var plan = Plan.Compile(ParameterStore.Initialize(model, new CpuBackend(), 1), new PlanOptions(2));
        plan.SetInput(ids, [0, 3, -1, 2, 2, 1]); // −1: padding
        foreach (var bad in new[] { 4f, 1.5f, -2f, float.NaN })
        {
            var error = Assert.Throws<ArgumentException>(() => plan.SetInput(ids, [0, 1, 2, 3, bad, 0]));
            Assert.Contains("example 1, position 1", error.Message);
            Assert.Contains("[0, 4)", error.Message);
        }
        Assert.Contains(model["ids"], model.Inputs);
    }

    [Fact]
    public void Shape_rules_name_the_node_and_the_fix()
    {
        var b = new ModelBuilder();
        var ids = b.Tokens("ids", 3, 5);
        var x = b.Input("x", new Shape(3, 4));
        Assert.Contains("ignore index 7", Assert.Throws<ArgumentException>(() => b.SequenceCrossEntropy("ce", b.Input("z", new Shape(3, 5)), ids, 7)).Message);
        Assert.Contains("logits [B, 3, 5]", Assert.Throws<ShapeMismatchException>(() => b.SequenceCrossEntropy("ce2", x, ids)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => b.PositionalEmbedding("pos", x, 2));
        Assert.Throws<ArgumentException>(() => b.Embedding("embed", x, 4));
        Assert.Contains("parameter [4]", Assert.Throws<ShapeMismatchException>(() => b.Apply("ln", new LayerNormOp(), x, b.Parameter("g", new Shape(3), Initializer.Zeros), b.Parameter("bb", new Shape(4), Initializer.Zeros))).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Tokens("pad", 3, 5, padding: 2));
        // Every op with parameters makes a site: embedding, positions, affine norms.
        var h = b.RmsNorm("rms", b.LayerNorm("ln2", b.PositionalEmbedding("pos2", b.Embedding("embed2", ids, 4), 3)));
        var logits = b.Dense("head", b.LayerNorm("plain", h, affine: false), 5, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SequenceCrossEntropy("loss", logits, b.Tokens("targets", 3, 5)), logits);
        Assert.Equal(["embed2", "pos2", "ln2", "rms", "head"], model.Sites.Select(s => s.Node.Name));
    }

    /// <summary>A forward + JVP (K = 2, tangents on every site) and a backward pass of the sequence model allocate nothing once warm.</summary>
    [Fact]
    public void A_sequence_model_runs_without_allocating()
    {
        var model = SequenceModel(0, length: 8, vocabulary: 11, width: 12);
        var problem = SequenceProblem(model, 3, 4);
        var plan = problem.Compile(new PlanOptions(4) { TangentCount = 2, Gradients = true, Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node, new Random.RandomKey(1, 2)))] });
        void Step(int _)
        {
            plan.ForwardJvp();
            plan.Backward();
        }
        Allocations.AssertNone(Step, warmUp: 1, steps: 3, "the sequence model's forward + JVP + backward");
    }
}
