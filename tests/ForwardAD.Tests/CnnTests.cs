using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Convolution, pooling and batch normalisation (issue 12): JVPs against central differences of the float64 reference
/// evaluator, the JVP/VJP adjoint identity for every op and geometry, and PyTorch's values (Golden/cnn_ops.py).
/// </summary>
public class CnnTests
{
    // ---- small models over one op -------------------------------------------------------------

    /// <summary>One op under test between a differentiable image input and a mean-squared-error loss.</summary>
    private sealed record OpModel(Model Model, Node X, Node Op, Node Target);

    private static OpModel Single(Shape input, Func<ModelBuilder, Node, Node> apply)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", input);
        var op = apply(b, x);
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        return new OpModel(b.Build(b.MeanSquaredError("loss", flat, target), flat), x, op, target);
    }

    /// <summary>The geometries every op is checked on: strides 1 and 2, padding 0 to 2, odd sizes, 1×1 to 3×3 kernels,
    /// groups 1, 2 and depthwise, with and without bias, an image whose im2col columns exceed one pass
    /// (<see cref="Backend.ConvolutionPassElements"/>: 64·64 rows of 36 floats, so every rule runs image by image); pooling with overlapping and padded windows; batch
    /// normalisation over images and flat features, with and without affine parameters, batch and frozen statistics.</summary>
    public static TheoryData<string> Ops => new()
    {
        "conv k3 s1 p1", "conv k3 s2 p0 nobias", "conv k1", "conv k3 s2 p2 odd", "conv groups2", "conv depthwise s2 p1", "conv passes",
        "conv direct k3 p1", "conv direct k5 s2 p2", "conv direct k2 s2 nobias",
        "maxpool k2", "maxpool k3 s2 p1 odd", "avgpool k2", "avgpool k3 s1 p1", "gap",
        "bn2d", "bn2d noaffine", "bn1d", "bn2d frozen",
    };

    private static OpModel Build(string name) => name switch
    {
        "conv k3 s1 p1" => Single(new Shape(5, 5, 3), (b, x) => b.Conv2d("op", x, 4, 3, padding: 1)),
        "conv k3 s2 p0 nobias" => Single(new Shape(7, 6, 2), (b, x) => b.Conv2d("op", x, 3, 3, stride: 2, bias: false)),
        "conv k1" => Single(new Shape(4, 3, 3), (b, x) => b.Conv2d("op", x, 5, 1)),
        "conv k3 s2 p2 odd" => Single(new Shape(7, 5, 2), (b, x) => b.Conv2d("op", x, 3, 3, stride: 2, padding: 2)),
        "conv groups2" => Single(new Shape(5, 4, 4), (b, x) => b.Conv2d("op", x, 6, 3, padding: 1, groups: 2)),
        "conv depthwise s2 p1" => Single(new Shape(6, 6, 3), (b, x) => b.Conv2d("op", x, 3, 3, stride: 2, padding: 1, groups: 3)),
        "conv passes" => Single(new Shape(64, 64, 4), (b, x) => b.Conv2d("op", x, 3, 3, padding: 1)),
        // Short patches and whole 16-channel panels: the CPU's direct convolution (35 and 20 positions: partial tiles).
        "conv direct k3 p1" => Single(new Shape(7, 5, 3), (b, x) => b.Conv2d("op", x, 16, 3, padding: 1)),
        "conv direct k5 s2 p2" => Single(new Shape(9, 8, 2), (b, x) => b.Conv2d("op", x, 32, 5, stride: 2, padding: 2)),
        "conv direct k2 s2 nobias" => Single(new Shape(6, 6, 4), (b, x) => b.Conv2d("op", x, 16, 2, stride: 2, bias: false)),
        "maxpool k2" => Single(new Shape(4, 6, 3), (b, x) => b.MaxPool2d("op", x, 2)),
        "maxpool k3 s2 p1 odd" => Single(new Shape(7, 5, 2), (b, x) => b.MaxPool2d("op", x, 3, 2, 1)),
        "avgpool k2" => Single(new Shape(4, 6, 3), (b, x) => b.AvgPool2d("op", x, 2)),
        "avgpool k3 s1 p1" => Single(new Shape(5, 4, 2), (b, x) => b.AvgPool2d("op", x, 3, 1, 1)),
        "gap" => Single(new Shape(3, 4, 5), (b, x) => b.GlobalAvgPool("op", x)),
        "bn2d" => Single(new Shape(3, 2, 4), (b, x) => b.BatchNorm("op", x)),
        "bn2d noaffine" => Single(new Shape(3, 2, 4), (b, x) => b.BatchNorm("op", x, affine: false)),
        "bn1d" => Single(new Shape(5), (b, x) => b.BatchNorm("op", x)),
        "bn2d frozen" => Single(new Shape(3, 2, 4), (b, x) => b.BatchNorm("op", x, frozenStatistics: true)),
        _ => throw new ArgumentException(name),
    };

    /// <summary>The cases about convolution passes run on the managed GEMM: passes are taken only with a one-thread GEMM
    /// (<see cref="CpuBackend.ConvolutionPassElements"/>), and OpenBLAS here runs two threads.</summary>
    private static Backend? OnePass(string name) => name.Contains("passes", StringComparison.Ordinal) ? new CpuBackend(new ManagedGemm()) : null;

    /// <summary>Parameters and state off their defaults (γ ≠ 1, running statistics ≠ (0, 1)) so every term is exercised.</summary>
    private static Problem Randomized(Model model, int seed, int batch, Backend? backend = null)
    {
        var problem = Problem.From(model, seed, batch, backend);
        foreach (var node in model.Parameters.Where(p => p.Name.EndsWith(".weight") && model.Nodes.Any(n => n.Op is BatchNormOp && n.Inputs.Contains(p.Id))))
            problem.Parameters.Set(node, Problem.Normal(seed + 7 * node.Id, node.Shape.ElementCount, 0.5f).Select(v => 1 + v).ToArray());
        foreach (var node in model.States)
            problem.Parameters.Set(node, Problem.Normal(seed + 11 * node.Id, node.Shape.ElementCount, 0.3f)
                .Select(v => node.Name.EndsWith("var") ? 0.5f + v * v : v).ToArray());
        return problem;
    }

    /// <summary>
    /// ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ for the op's input (J v: the plan's JVP with v seeded at x, K = 2 channels; Jᵀ w: a pull-back from
    /// the op to x, C = 3 channels) and ⟨∇_θ L, θ̇⟩ = L̇ for its parameters (backprop's gradient against the JVP of the mean
    /// loss with tangents on every parameter). Dot products in float64 over float32 values: agreement to ~1e-5 relative.
    /// </summary>
    [Theory]
    [MemberData(nameof(Ops))]
    public void Jvp_and_vjp_are_adjoint(string name)
    {
        var m = Build(name);
        const int batch = 3, K = 2, C = 3;
        var problem = Randomized(m.Model, name.Aggregate(17, (h, ch) => (h * 31 + ch) & 0xffff) /* a fixed seed per case: string.GetHashCode differs per process */, batch,
            OnePass(name));
        var parameters = m.Model.Parameters.ToList();
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = K, Gradients = true, UpdatesRunningStatistics = false,
            Seeds = [new TangentSeed(m.X), .. parameters.Select(p => new TangentSeed(p))] });
        var parameterTangents = parameters.ToDictionary(p => p, p => Problem.Normal(2 + p.Id, plan.Seed(p).Length, 1f));
        Adjoint.AssertInputAdjoint(plan, m.X, m.Op, parameters, K, C, name);

        if (parameters.Count == 0) return;
        // L = (1/B) Σ_b ℓ_b; along channel k, L̇ = (1/B) Σ_b ℓ̇_{k,b} with x's tangent zeroed (x has no gradient slot).
        plan.Backward();
        CpuBackend.Span(plan.Seed(m.X)).Clear();
        foreach (var (p, t) in parameterTangents) CpuBackend.Span(plan.Seed(p)).CopyFrom(t);
        plan.Jvp();
        var lossTangent = plan.Tangent(m.Model.Loss).ToArray();
        for (int k = 0; k < K; k++)
        {
            double expected = 0;
            for (int b = 0; b < batch; b++) expected += lossTangent[k * batch + b] / batch;
            double actual = 0;
            foreach (var p in parameters)
            {
                var gradient = plan.Gradient(p).ToArray();
                var tangent = parameterTangents[p];
                for (int i = 0; i < gradient.Length; i++) actual += (double)gradient[i] * tangent[k * gradient.Length + i];
            }
            JvpTests.AssertClose(expected, actual, $"{name}: L̇ vs ⟨∇θ L, θ̇⟩, channel {k}", 1e-4);
        }
    }

    /// <summary>A kernel or window that overhangs the padded image is refused even when it overhangs by less than a stride
    /// (where ⌊(H + 2p − k)/s⌋ + 1 rounds toward zero to 1: a 4×4 kernel at stride 2 on a 3×3 image), naming the node.</summary>
    [Theory]
    [InlineData("conv")]
    [InlineData("pool")]
    public void A_kernel_larger_than_the_padded_image_is_refused(string kind)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(3, 3, 2));
        var error = Assert.Throws<ShapeMismatchException>(() => kind == "conv" ? b.Conv2d("big", x, 16, 4, stride: 2) : b.MaxPool2d("big", x, 4, 2));
        Assert.Contains("'big'", error.Message);
        Assert.Contains("larger than the padded image", error.Message);
    }

    // ---- whole CNNs against finite differences ------------------------------------------------

    /// <summary>Small CNNs covering every new op in sequence (convolutions with stride, padding, groups and depthwise,
    /// batch normalisation with batch and frozen statistics, max, average and global pooling, flatten).</summary>
    private static Model Cnn(int variant)
    {
        var b = new ModelBuilder();
        Node x, h;
        switch (variant)
        {
            case 0 or 2:
                x = b.Input("x", new Shape(6, 5, 2));
                h = b.Conv2d("c1", x, 4, 3, padding: 1);
                h = b.Activation("t1", b.BatchNorm("bn1", h, frozenStatistics: variant == 2), ElementwiseFunction.Tanh);
                h = b.MaxPool2d("p1", h, 2);
                h = b.Activation("t2", b.Conv2d("c2", h, 6, 3, stride: 2, padding: 1, groups: 2), ElementwiseFunction.Tanh);
                h = b.GlobalAvgPool("gap", h);
                break;
            case 4: // two convolutions the CPU runs directly (patches 27 and 64, 16 channels), then one it does not (4 channels)
                x = b.Input("x", new Shape(8, 7, 3));
                h = b.Activation("t1", b.Conv2d("c1", x, 16, 3, padding: 1), ElementwiseFunction.Tanh);
                h = b.Activation("t2", b.Conv2d("c2", h, 16, 2, stride: 2), ElementwiseFunction.Tanh);
                h = b.GlobalAvgPool("gap", b.Conv2d("c3", h, 4, 3, padding: 1));
                break;
            case 3: // columns of two 64×64×3 images fill a CPU pass: the forward, JVP and VJP run in several passes
                x = b.Input("x", new Shape(64, 64, 3));
                h = b.Activation("t1", b.Conv2d("c1", x, 4, 3, padding: 1), ElementwiseFunction.Tanh);
                h = b.GlobalAvgPool("gap", b.AvgPool2d("p1", h, 4)); // average pooling: no max switching under ε
                break;
            default:
                x = b.Input("x", new Shape(7, 7, 3));
                h = b.Conv2d("dw", x, 3, 3, stride: 2, padding: 1, groups: 3);
                h = b.Activation("t1", b.AvgPool2d("p1", h, 3, 1, 1), ElementwiseFunction.Tanh);
                h = b.Activation("t2", b.BatchNorm("bn", b.Conv2d("pw", h, 5, 1), affine: false), ElementwiseFunction.Tanh);
                h = b.Flatten("flat", h);
                break;
        }
        var logits = b.Dense("head", h, 3, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 3)), logits);
    }

    /// <summary>
    /// The JVP of every example's loss and of the logits, with tangents on the input, every site and every parameter
    /// (K = 2), against central differences of the float64 reference evaluator (batch statistics recomputed for the
    /// perturbed batch, so the coupling of examples through batch normalisation is part of what is checked). ε = 1e-5 in
    /// double: truncation ~1e-10; the float32 plan is accurate to ~1e-6 relative, hence 2e-4 as in the MLP test.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Cnn_jvp_matches_central_differences_of_a_float64_reference(int variant)
    {
        var model = Cnn(variant);
        const int batch = 4, K = 2;
        var problem = Randomized(model, 40 + variant, batch, OnePass(variant == 3 ? "passes" : ""));
        var seeded = model.Nodes.Where(n => n.Op is InputOp { Differentiable: true } || n.IsParameter).Concat(model.Sites.Select(site => site.Node)).ToList();
        FiniteDifferences.AssertJvpMatchesReference(problem, seeded, K, $"variant {variant}", seedBase: 900, updatesRunningStatistics: false);
    }

    // ---- PyTorch golden values (Golden/cnn_ops.py, float64, channels-last layouts) -------------

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "cnn_ops.json"))).RootElement;

    private static float[] Data(JsonElement array) => [.. array.GetProperty("data").EnumerateArray().Select(v => v.GetSingle())];
    private static Shape ShapeOf(JsonElement array) => new([.. array.GetProperty("shape").EnumerateArray().Select(v => v.GetInt32())]);

    /// <summary>float32 against PyTorch's float64: ~1e-6 relative per value, accumulated over ≤ 100-term sums.</summary>
    private static void AssertAll(float[] expected, float[] actual, string what, double tolerance = 1e-4)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) JvpTests.AssertClose(expected[i], actual[i], $"{what}[{i}]", tolerance);
    }

    public static TheoryData<string, int> GoldenOps()
    {
        var data = new TheoryData<string, int>();
        foreach (var family in new[] { "conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool", "batch_norm" })
            for (int i = 0; i < Golden.GetProperty(family).GetArrayLength(); i++)
            {
                var config = Golden.GetProperty(family)[i].GetProperty("config");
                // Our ops take one stride and one padding for both axes; the case with unequal ones is PyTorch's only.
                bool square = !config.TryGetProperty("stride", out var stride) || stride[0].GetInt32() == stride[1].GetInt32();
                if (square && (!config.TryGetProperty("padding", out var padding) || padding[0].GetInt32() == padding[1].GetInt32())) data.Add(family, i);
            }
        return data;
    }

    /// <summary>Forward, JVP (tangents on x and every parameter) and VJP (x̄ by a pull-back, parameter cotangents by the
    /// site's parameter update) of one op against PyTorch; batch norm's running statistics after one training forward.</summary>
    [Theory]
    [MemberData(nameof(GoldenOps))]
    public void Ops_match_pytorch(string family, int index)
    {
        var golden = Golden.GetProperty(family)[index];
        var config = golden.GetProperty("config");
        var inputs = golden.GetProperty("inputs");
        var xShape = ShapeOf(inputs.GetProperty("x"));
        int batch = xShape[0];
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(xShape.Dimensions.AsSpan()[1..]));
        var parameters = new Dictionary<string, Node>();
        Node Parameter(string name) => parameters[name] = b.Parameter(name, ShapeOf(inputs.GetProperty(name)), Initializer.Zeros);
        bool training = true;
        Node op = family switch
        {
            "conv2d" => inputs.TryGetProperty("bias", out _)
                ? b.Apply("op", new Conv2dOp(config.GetProperty("stride")[0].GetInt32(), config.GetProperty("padding")[0].GetInt32(), config.GetProperty("groups").GetInt32()), x, Parameter("weight"), Parameter("bias"))
                : b.Apply("op", new Conv2dOp(config.GetProperty("stride")[0].GetInt32(), config.GetProperty("padding")[0].GetInt32(), config.GetProperty("groups").GetInt32()), x, Parameter("weight")),
            "max_pool2d" => b.MaxPool2d("op", x, config.GetProperty("kernel")[0].GetInt32(), config.GetProperty("stride")[0].GetInt32(), config.GetProperty("padding")[0].GetInt32()),
            "avg_pool2d" => b.AvgPool2d("op", x, config.GetProperty("kernel")[0].GetInt32(), config.GetProperty("stride")[0].GetInt32(), config.GetProperty("padding")[0].GetInt32()),
            "global_avg_pool" => b.GlobalAvgPool("op", x),
            _ => BatchNorm(),
        };
        Node BatchNorm()
        {
            training = config.GetProperty("training").GetBoolean();
            var channels = new Shape(x.Shape.Last);
            var mean = b.State("op.running_mean", channels, Initializer.Zeros);
            var variance = b.State("op.running_var", channels, Initializer.Zeros);
            var norm = new BatchNormOp(config.GetProperty("momentum").GetSingle(), config.GetProperty("eps").GetSingle());
            return inputs.TryGetProperty("gamma", out _) ? b.Apply("op", norm, x, mean, variance, Parameter("gamma"), Parameter("beta")) : b.Apply("op", norm, x, mean, variance);
        }
        var flat = b.Flatten("flat", op);
        var target = b.Input("target", flat.Shape, differentiable: false);
        var model = b.Build(b.MeanSquaredError("loss", flat, target), flat);
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        foreach (var (name, node) in parameters) store.Set(node, Data(inputs.GetProperty(name)));
        if (family == "batch_norm")
        {
            store.Set(model["op.running_mean"], Data(golden.GetProperty("running_mean_before")));
            store.Set(model["op.running_var"], Data(golden.GetProperty("running_var_before")));
        }
        var plan = Plan.Compile(store, new PlanOptions(batch)
        {
            Gradients = true,
            Mode = training ? PlanMode.Training : PlanMode.Evaluation,
            Seeds = [new TangentSeed(x), .. parameters.Values.Select(p => new TangentSeed(p))],
        });
        plan.SetInput(x, Data(inputs.GetProperty("x")));
        plan.SetInput(target, new float[target.ElementCount(batch)]);
        var tangents = golden.GetProperty("jvp").GetProperty("tangents");
        CpuBackend.Span(plan.Seed(x)).CopyFrom(Data(tangents.GetProperty("x")));
        foreach (var (name, node) in parameters) CpuBackend.Span(plan.Seed(node)).CopyFrom(Data(tangents.GetProperty(name)));
        plan.Forward();
        string what = $"{family} {golden.GetProperty("name").GetString()}";
        AssertAll(Data(golden.GetProperty("output")), plan.Value(op).ToArray(), $"{what} output");
        if (family == "batch_norm")
        {
            // One forward in training mode updates the running statistics (evaluation leaves them as they were).
            AssertAll(Data(golden.GetProperty("running_mean_after")), store.ToArray(model["op.running_mean"]), $"{what} running mean");
            AssertAll(Data(golden.GetProperty("running_var_after")), store.ToArray(model["op.running_var"]), $"{what} running variance");
        }
        plan.Jvp();
        AssertAll(Data(golden.GetProperty("jvp").GetProperty("output")), plan.Tangent(op).ToArray(), $"{what} JVP");

        var vjp = golden.GetProperty("vjp");
        var cotangent = Data(vjp.GetProperty("cotangent"));
        var pullBack = plan.CreatePullBack([op], x);
        CpuBackend.Span(pullBack.Cotangent(op)).CopyFrom(cotangent);
        pullBack.Run();
        AssertAll(Data(vjp.GetProperty("gradients").GetProperty("x")), pullBack.Cotangent(x).ToArray(), $"{what} x̄");
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

    /// <summary>The two small CNNs of the golden script, built with the builder: per-example losses, logits, the gradient of
    /// the mean loss for every parameter, the JVP of the losses along parameter tangents, and the running statistics
    /// after the forward pass (tiny_cnn: conv–BN–relu–maxpool–conv–relu–GAP–linear; flatten_cnn: conv–relu–maxpool–flatten–linear,
    /// which fixes the channels-last flatten order).</summary>
    [Theory]
    [InlineData("tiny_cnn")]
    [InlineData("flatten_cnn")]
    public void Small_cnns_match_pytorch(string name)
    {
        var golden = Golden.GetProperty(name);
        var xShape = ShapeOf(golden.GetProperty("x"));
        int batch = xShape[0];
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(xShape.Dimensions.AsSpan()[1..]), differentiable: false);
        Node h;
        if (name == "tiny_cnn")
        {
            h = b.Conv2d("conv1", x, 4, 3, padding: 1);
            h = b.Activation("relu1", b.BatchNorm("bn1", h), ElementwiseFunction.Relu);
            h = b.MaxPool2d("pool", h, 2);
            h = b.Activation("relu2", b.Conv2d("conv2", h, 8, 3, padding: 1), ElementwiseFunction.Relu);
            h = b.GlobalAvgPool("gap", h);
        }
        else
        {
            h = b.Activation("relu1", b.Conv2d("conv1", x, 3, 3, padding: 1), ElementwiseFunction.Relu);
            h = b.Flatten("flat", b.MaxPool2d("pool", h, 2));
        }
        var logits = b.Dense("linear", h, 3 + (name == "flatten_cnn" ? 1 : 0), ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", logits.Shape.Last)), logits);
        // Golden names → ours: batch norm's γ, β are its weight and bias (PyTorch's names too).
        static string Ours(string golden) => golden.Replace("gamma", "weight").Replace("beta", "bias");
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        foreach (var p in golden.GetProperty("parameters").EnumerateObject()) store.Set(model[Ours(p.Name)], Data(p.Value));
        var parameters = golden.GetProperty("parameters").EnumerateObject().Select(p => model[Ours(p.Name)]).ToList();
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true, Seeds = [.. parameters.Select(p => new TangentSeed(p))] });
        plan.SetInput(x, Data(golden.GetProperty("x")));
        plan.SetInput(model["y"], [.. golden.GetProperty("labels").EnumerateArray().Select(v => (float)v.GetInt32())]);
        var tangents = golden.GetProperty("jvp").GetProperty("tangents");
        foreach (var p in tangents.EnumerateObject()) CpuBackend.Span(plan.Seed(model[Ours(p.Name)])).CopyFrom(Data(p.Value));
        plan.Forward();
        AssertAll(Data(golden.GetProperty("per_example_loss")), plan.Value(model.Loss).ToArray(), $"{name} losses");
        AssertAll(Data(golden.GetProperty("logits")), plan.Value(logits).ToArray(), $"{name} logits");
        if (golden.TryGetProperty("running_mean_after", out var means))
        {
            AssertAll(Data(means.GetProperty("bn1")), store.ToArray(model["bn1.running_mean"]), $"{name} running mean");
            AssertAll(Data(golden.GetProperty("running_var_after").GetProperty("bn1")), store.ToArray(model["bn1.running_var"]), $"{name} running variance");
        }
        plan.Jvp();
        AssertAll(Data(golden.GetProperty("jvp").GetProperty("per_example_loss")), plan.Tangent(model.Loss).ToArray(), $"{name} loss JVP");
        plan.Backward();
        foreach (var p in golden.GetProperty("gradients").EnumerateObject())
        {
            var expected = Data(p.Value);
            var actual = plan.Gradient(model[Ours(p.Name)]).ToArray();
            // conv1.bias before training-mode batch norm has a zero gradient (the batch mean removes it): PyTorch's is
            // ~1e-17, ours float32 rounding of a sum that cancels; compare such entries on an absolute scale.
            double scale = expected.Max(v => Math.Abs(v));
            for (int i = 0; i < expected.Length; i++)
                JvpTests.AssertClose(expected[i], actual[i], $"{name} ∂L/∂{p.Name}[{i}]", scale < 1e-6 ? 1e-6 : 1e-4);
        }
    }
}

/// <summary>The CPU's direct convolution (patches up to CpuBackend.DirectPatchLength) against im2col + GEMM
/// (the path the PyTorch golden values check) on the same data: strides, padding, partial tiles, several images,
/// overwrite (β = 0, stale NaNs in y) and accumulate (β = 1).</summary>
public class DirectConvolutionTests
{
    [Theory]
    [InlineData(7, 5, 3, 3, 1, 1, 16, 2)]
    [InlineData(9, 8, 2, 5, 2, 2, 32, 3)]
    [InlineData(6, 6, 4, 2, 2, 0, 16, 1)]
    [InlineData(32, 32, 3, 3, 1, 1, 32, 2)]
    [InlineData(5, 7, 7, 1, 1, 0, 48, 2)]
    [InlineData(6, 5, 32, 3, 1, 1, 16, 2)]
    public void Direct_convolution_matches_im2col_and_gemm(int height, int width, int channels, int kernel, int stride, int padding, int outputs, int images)
    {
        var backend = new CpuBackend();
        var g = new ConvGeometry(height, width, channels, kernel, kernel, stride, padding, 1);
        Assert.True(g.PatchLength <= backend.DirectPatchLength, "the case must take the direct path");
        View Upload(float[] values)
        {
            var view = new View(backend.Allocate(values.Length));
            values.CopyTo(CpuBackend.Span(view));
            return view;
        }
        View Filled(int length, int seed) => Upload(Problem.Normal(seed, length, 1f));
        const int weightChannels = 2; // K weight tensors through one call (the JVP's cols(x) Ẇ_kᵀ)
        var x = Filled(images * g.InputElements, 1);
        var w = Filled(weightChannels * outputs * g.PatchLength, 2);
        int length = images * g.OutputPositions * outputs;
        var scratch = new View(backend.Allocate(images * g.OutputPositions * g.PatchLength + outputs * g.PatchLength));
        // Both of the backend's paths: the direct kernel and im2col + GEMM in passes (DirectPatchLength = 0).
        foreach (var path in new[] { backend, new CpuBackend { DirectPatchLength = 0 } })
            foreach (float beta in new[] { 0f, 1f })
            {
                var start = beta == 0 ? Enumerable.Repeat(float.NaN, weightChannels * length).ToArray() : Problem.Normal(3, weightChannels * length, 1f);
                var actual = Upload(start);
                path.Convolve(x, g, w, outputs, beta, actual, scratch, weightChannels);
                var a = CpuBackend.Span(actual).ToArray();
                for (int k = 0; k < weightChannels; k++)
                {
                    var reference = Upload(beta == 0 ? new float[length] : start[(k * length)..((k + 1) * length)]);
                    var columns = scratch.Slice(0, images * g.OutputPositions * g.PatchLength);
                    backend.Im2Col(x, g, columns);
                    backend.MultiplyColumns(g, images * g.OutputPositions, columns, w.Channel(k, outputs * g.PatchLength), outputs, beta, reference);
                    var r = CpuBackend.Span(reference).ToArray();
                    for (int i = 0; i < length; i++)
                        JvpTests.AssertClose(r[i], a[k * length + i],
                            $"{(path.DirectPatchLength == 0 ? "im2col" : "direct")}, β = {beta}, weight {k}, y[{i}] (position {i / outputs % g.OutputPositions}, channel {i % outputs})", 1e-5);
                }
            }
    }
}
