using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

public class PlanTests
{
    /// <summary>A disposed plan refuses to run (forward, JVP, backward, its pull-backs and parameter updates) instead of
    /// touching buffers it gave back; a second Dispose does nothing; a backend refuses to release another's buffer. (That
    /// device memory returns to the CUDA allocator is checked in the CUDA tests.)</summary>
    [Fact]
    public void A_disposed_plan_refuses_to_run()
    {
        var problem = Problem.RandomMlp(3, ElementwiseFunction.Relu, 4, widths: [8], inputs: 5, outputs: 3);
        var layers = problem.Model.Sites;
        var plan = problem.Compile(new PlanOptions(4) { Gradients = true, Seeds = [new TangentSeed(layers[0].Node, new RandomKey(1, 2))] });
        var pullBack = plan.CreatePullBack([layers[1].Node], layers[0].Node);
        var update = plan.CreateParameterUpdate([layers[0].Node], new View(problem.Parameters.Backend.Allocate(problem.Parameters.All.Length)));
        plan.ForwardJvp();
        plan.Backward();
        pullBack.Run();
        plan.Dispose();
        plan.Dispose();
        Assert.Throws<ObjectDisposedException>(plan.Forward);
        Assert.Throws<ObjectDisposedException>(plan.ForwardJvp);
        Assert.Throws<ObjectDisposedException>(plan.Jvp);
        Assert.Throws<ObjectDisposedException>(plan.Backward);
        Assert.Throws<ObjectDisposedException>(pullBack.Run);
        Assert.Throws<ObjectDisposedException>(() => update.Write(0, new View(problem.Parameters.Backend.Allocate(layers[0].Node.ElementCount(4)))));
        Assert.Throws<ObjectDisposedException>(() => plan.CreatePullBack([layers[1].Node], layers[0].Node));
        var other = new CpuBackend().Allocate(3);
        Assert.Contains("not on", Assert.Throws<ArgumentException>(() => problem.Parameters.Backend.Release(other)).Message);
    }

    /// <summary>Tangents injected at nodes: a node no other tangent reaches takes its seed as its tangent (the same values,
    /// the seed unchanged by the pass, a second pass the same bits); a batch norm that folds its seed into its last pass
    /// gives the bits of the plan's separate add (the same network seeded there or not), with batch statistics, frozen
    /// statistics and a tangent on γ (where it adds the seed after γ̇'s term, as the plan did).</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Injected_tangents_keep_the_plans_bits(bool frozen, bool scaleTangent)
    {
        const int batch = 6;
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(6, 6, 3), differentiable: false);
        var conv = b.Conv2d("conv", x, 4, 3, padding: 1);
        var norm = b.BatchNorm("bn", conv, frozenStatistics: frozen);
        var flat = b.Flatten("flat", b.Activation("relu", norm, ElementwiseFunction.Relu));
        var target = b.Input("target", flat.Shape, differentiable: false);
        var model = b.Build(b.MeanSquaredError("loss", flat, target), flat);
        var gamma = model.Nodes.Single(n => n.IsParameter && n.Name == "bn.weight");
        var inputs = Problem.Normal(7, batch * x.Shape.ElementCount, 1f);
        var targets = Problem.Normal(8, batch * flat.Shape.ElementCount, 1f);
        (Plan Plan, ParameterStore Store) Compile(bool seedNorm)
        {
            var store = ParameterStore.Initialize(model, new CpuBackend(), 3);
            TangentSeed[] seeds = [new(conv), .. seedNorm ? [new TangentSeed(norm)] : Array.Empty<TangentSeed>(), .. scaleTangent ? [new TangentSeed(gamma)] : Array.Empty<TangentSeed>()];
            var plan = Plan.Compile(store, new PlanOptions(batch) { Seeds = [.. seeds] });
            plan.SetInput(x, inputs);
            plan.SetInput(target, targets);
            CpuBackend.Span(plan.Seed(conv)).CopyFrom(Problem.Normal(9, conv.ElementCount(batch), 1f));
            if (scaleTangent) CpuBackend.Span(plan.Seed(gamma)).CopyFrom(Problem.Normal(10, gamma.Shape.ElementCount, 1f));
            return (plan, store);
        }
        var (seeded, _) = Compile(seedNorm: true);
        var injected = Problem.Normal(11, norm.ElementCount(batch), 1f);
        CpuBackend.Span(seeded.Seed(norm)).CopyFrom(injected);
        var (reference, _) = Compile(seedNorm: false);
        var convSeed = Problem.Normal(9, conv.ElementCount(batch), 1f);
        // Twice: the second pass reads the seeds the first left (frozen statistics also move between passes, on both plans).
        for (int pass = 0; pass < 2; pass++)
        {
            seeded.ForwardJvp();
            reference.ForwardJvp();
            Assert.Equal(convSeed, seeded.Tangent(conv).ToArray());
            Assert.Equal(convSeed, seeded.Seed(conv).ToArray());
            Assert.Equal(injected, seeded.Seed(norm).ToArray());
            var expected = reference.Tangent(norm).ToArray();
            for (int i = 0; i < expected.Length; i++) expected[i] += injected[i];
            Assert.True(expected.AsSpan().SequenceEqual(seeded.Tangent(norm).ToArray()), $"pass {pass + 1}: the batch norm's tangent with its seed differs from tangent + seed");
        }
    }

    /// <summary>A plan that keeps no intermediate tangent (ReuseBuffers) folds an elementwise op into the max pool after it:
    /// the pool gathers f'(x)·ẋ at the winners, and the output's and loss's tangents are the bits of the plan that writes
    /// the elementwise tangent, for ReLU and tanh, one and three tangent channels, ẋ from a weight tangent (a buffer the
    /// plan recycles, which must live until the pool) or from a seed on the convolution's output.</summary>
    [Theory]
    [InlineData("relu", 1, true)]
    [InlineData("tanh", 3, false)]
    public void A_max_pool_folds_the_elementwise_tangent_before_it(string function, int channels, bool weightTangent)
    {
        const int batch = 5;
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(8, 8, 3), differentiable: false);
        var conv = b.Conv2d("conv", x, 16, 3, padding: 1);
        var activation = b.Activation("act", conv, ElementwiseFunction.Parse(function));
        var pooled = b.MaxPool2d("pool", activation, 2);
        var logits = b.Dense("head", b.Flatten("flat", pooled), 4, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 4)), logits);
        var seeded = weightTangent ? model.Nodes.Single(n => n.Name == "conv.weight") : conv;
        var inputs = Problem.Normal(1, batch * x.Shape.ElementCount, 1f);
        var labels = new float[] { 0, 1, 2, 3, 1 };
        var seed = Problem.Normal(2, channels * (seeded.IsBatched ? seeded.ElementCount(batch) : seeded.Shape.ElementCount), 1f);
        (float[] Logits, float[] Loss, bool Folded) Run(bool reuse)
        {
            var plan = Plan.Compile(ParameterStore.Initialize(model, new CpuBackend(), 3),
                new PlanOptions(batch) { TangentCount = channels, ReuseBuffers = reuse, Seeds = [new TangentSeed(seeded)] });
            plan.SetInput(x, inputs);
            plan.SetInput(model["y"], labels);
            CpuBackend.Span(plan.Seed(seeded)).CopyFrom(seed);
            plan.ForwardJvp();
            return (plan.Tangent(logits).ToArray(), plan.Tangent(model.Loss).ToArray(), plan.FoldedIntoPool(activation).Forward);
        }
        var folded = Run(reuse: true);
        var written = Run(reuse: false);
        Assert.True(folded.Folded, "the reuse plan did not fold the activation");
        Assert.False(written.Folded);
        Assert.True(written.Logits.AsSpan().SequenceEqual(folded.Logits), "the logits' tangents differ");
        Assert.True(written.Loss.AsSpan().SequenceEqual(folded.Loss), "the loss's tangents differ");
        Assert.Contains(folded.Logits, v => v != 0f);
    }

    /// <summary>In the backward pass of a plan that keeps only what it reads (ReuseBuffers), a max pool with windows that do
    /// not overlap scatters f'(x)·ȳ straight into x̄ of the elementwise op before it: the parameter gradients and the input's
    /// gradient equal those of the plan that runs the elementwise VJP. Folded: ReLU after batch norm, tanh with a padded pool;
    /// not folded: GELU with an overlapping pool, a tanh and a ReLU whose common input gets two terms in x̄.</summary>
    [Fact]
    public void A_max_pool_folds_the_elementwise_cotangent_before_it()
    {
        const int batch = 4;
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(12, 12, 3));
        var relu = b.Activation("relu", b.BatchNorm("bn", b.Conv2d("conv1", x, 16, 3, padding: 1)), ElementwiseFunction.Relu);
        var h = b.MaxPool2d("pool1", relu, 2);
        var tanh = b.Activation("tanh", b.Conv2d("conv2", h, 16, 3, padding: 1), ElementwiseFunction.Tanh);
        h = b.MaxPool2d("pool2", tanh, 2, padding: 1);
        // 4×4 maps from here: an overlapping pool (3, stride 2) and two pools (3, stride 3) on a shared input, each to 1×1.
        var gelu = b.Activation("gelu", b.Conv2d("conv3", h, 16, 1), ElementwiseFunction.Gelu);
        var conv4 = b.Conv2d("conv4", h, 16, 1);
        var tanh4 = b.Activation("tanh4", conv4, ElementwiseFunction.Tanh);
        var relu4 = b.Activation("relu4", conv4, ElementwiseFunction.Relu);
        h = b.Add("sum", b.Add("both", b.MaxPool2d("pool3", gelu, 3, stride: 2), b.MaxPool2d("pool4", tanh4, 3, stride: 3)),
            b.MaxPool2d("pool5", relu4, 3, stride: 3));
        var logits = b.Dense("head", b.Flatten("flat", h), 4, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 4)), logits);
        var inputs = Problem.Normal(1, batch * x.Shape.ElementCount, 1f);
        (float[] Gradients, float[] Input, bool[] Folded) Run(bool reuse)
        {
            var plan = Plan.Compile(ParameterStore.Initialize(model, new CpuBackend(), 3), new PlanOptions(batch) { Gradients = true, ReuseBuffers = reuse });
            plan.SetInput(x, inputs);
            plan.SetInput(model["y"], [0, 1, 2, 3]);
            plan.Forward();
            plan.Backward();
            return (plan.ParameterGradients.ToArray(), plan.Cotangent(x).ToArray(), [.. new[] { relu, tanh, gelu, tanh4, relu4 }.Select(n => plan.FoldedIntoPool(n).Backward)]);
        }
        var folded = Run(reuse: true);
        var written = Run(reuse: false);
        Assert.Equal([true, true, false, false, false], folded.Folded);
        Assert.Equal([false, false, false, false, false], written.Folded);
        Assert.Equal(written.Gradients, folded.Gradients);
        Assert.Equal(written.Input, folded.Input);
        Assert.Contains(folded.Input, v => v != 0f);
    }

    /// <summary>
    /// After warm-up, running a plan allocates no managed memory: forward, JVP, fused pass, backward,
    /// pull-back, and a loss read, on the library's default GEMM and on the managed one.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Running_a_plan_allocates_nothing(bool managedGemm)
    {
        var backend = managedGemm ? new CpuBackend(new ManagedGemm()) : new CpuBackend();
        var problem = Problem.RandomMlp(3, ElementwiseFunction.Gelu, 16, widths: [32, 32], inputs: 20, outputs: 5, backend: backend);
        var layers = problem.Model.Sites;
        var seeds = layers.Select(l => new TangentSeed(l.Node, new RandomKey(1, (ulong)l.Node.Id)))
            .Append(new TangentSeed(layers[0].Weight()));
        var plan = problem.Compile(new PlanOptions(16) { TangentCount = 4, Gradients = true, Seeds = [.. seeds] });
        var lean = problem.Compile(new PlanOptions(16) { TangentCount = 4, ReuseBuffers = true, Seeds = [.. seeds] });
        var pullBack = plan.CreatePullBack([layers[2].Node], layers[0].Node, channels: 3);
        var input = problem.Model["x"];
        var x = problem.Inputs[input.Id];
        double loss = 0;
        void Step(int _)
        {
            plan.SetInput(input, x);
            plan.SetSeedGenerator(layers[0].Node, new RandomKey(2, 5));
            plan.Forward();
            plan.Jvp();
            plan.ForwardJvp();
            plan.Backward();
            pullBack.Run();
            lean.ForwardJvp();
            loss += plan.MeanLoss() + lean.MeanLoss();
        }
        Allocations.AssertNone(Step, warmUp: 2, steps: 5, "the plan's passes");
        Assert.True(double.IsFinite(loss));
    }

    /// <summary>
    /// With buffer reuse and generated seeds (regenerated, never stored), JVP memory does not grow with
    /// depth: a layer's value and tangent die once the next layer has used them. A backprop plan keeps every
    /// activation, so its memory grows linearly.
    /// </summary>
    [Fact]
    public void Jvp_memory_is_flat_in_depth_while_backprop_memory_grows()
    {
        long Bytes(int depth, bool gradients)
        {
            var model = MlpSpec.Uniform(64, depth, 128, 10, ElementwiseFunction.Relu).Build();
            var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
            var seeds = model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(1, (ulong)l.Node.Id)));
            return Plan.Compile(store, gradients
                ? new PlanOptions(32) { Gradients = true }
                : new PlanOptions(32) { TangentCount = 4, ReuseBuffers = true, Seeds = [.. seeds] }).AllocatedBytes;
        }
        Assert.Equal(Bytes(6, false), Bytes(24, false));
        Assert.True(Bytes(24, true) > 3 * Bytes(6, true));
    }

    [Fact]
    public void Buffer_reuse_gives_the_same_results()
    {
        var problem = Problem.RandomMlp(12, ElementwiseFunction.Tanh, 8, widths: [16, 16, 16], inputs: 10, outputs: 4);
        var seeds = problem.Model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(9, (ulong)l.Node.Id))).ToArray();
        var full = problem.Compile(new PlanOptions(8) { TangentCount = 3, Seeds = [.. seeds] });
        var lean = problem.Compile(new PlanOptions(8) { TangentCount = 3, Seeds = [.. seeds], ReuseBuffers = true });
        full.ForwardJvp();
        lean.ForwardJvp();
        Assert.Equal(full.Tangent(problem.Model.Loss).ToArray(), lean.Tangent(problem.Model.Loss).ToArray());
        Assert.Equal(full.Value(problem.Model.Output).ToArray(), lean.Value(problem.Model.Output).ToArray());
        Assert.True(lean.AllocatedBytes < full.AllocatedBytes);
        var hidden = problem.Model.Sites[1].Output;
        Assert.Contains("Retain", Assert.Throws<InvalidOperationException>(() => lean.Value(hidden)).Message);
        Assert.Contains("ForwardJvp", Assert.Throws<InvalidOperationException>(() => lean.Jvp()).Message);
    }

    [Fact]
    public void Wrong_input_sizes_are_rejected_before_anything_is_written()
    {
        var problem = Problem.RandomMlp(2, ElementwiseFunction.Relu, 4, widths: [3], inputs: 5, outputs: 3);
        var plan = problem.Compile(new PlanOptions(4));
        var x = problem.Model["x"];
        var before = plan.Value(x).ToArray();
        var error = Assert.Throws<ArgumentException>(() => plan.SetInput(x, new float[19]));
        Assert.Contains("'x'", error.Message);
        Assert.Contains("expects 20 values (batch 4 × 5 per example); got 19", error.Message);
        Assert.Equal(before, plan.Value(x).ToArray());

        var y = problem.Model["y"];
        var labelsBefore = plan.Value(y).ToArray();
        var labelError = Assert.Throws<ArgumentException>(() => plan.SetInput(y, [0, 1, 3, 2]));
        Assert.Contains("example 2 has label 3", labelError.Message);
        Assert.Contains("[0, 3)", labelError.Message);
        Assert.Throws<ArgumentException>(() => plan.SetInput(y, [0, 1.5f, 1, 2]));
        Assert.Equal(labelsBefore, plan.Value(y).ToArray());
    }

    [Fact]
    public void Misuse_gives_errors_that_say_what_to_do()
    {
        var problem = Problem.RandomMlp(2, ElementwiseFunction.Relu, 2, widths: [3], inputs: 2, outputs: 2);
        var plan = Plan.Compile(problem.Parameters, new PlanOptions(2));
        Assert.Contains("Forward()", Assert.Throws<InvalidOperationException>(() => plan.MeanLoss()).Message);
        plan.Forward();
        Assert.Contains("Gradients = true", Assert.Throws<InvalidOperationException>(() => plan.Backward()).Message);
        Assert.Contains("PlanOptions.Seeds", Assert.Throws<ArgumentException>(() => plan.Seed(problem.Model.Sites[0].Node)).Message);
        Assert.Throws<ArgumentException>(() => Plan.Compile(problem.Parameters, new PlanOptions(2) { Seeds = [new TangentSeed(problem.Model["y"])] }));
        Assert.Throws<ArgumentOutOfRangeException>(() => Plan.Compile(problem.Parameters, new PlanOptions(0)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Plan.Compile(problem.Parameters, new PlanOptions(2) { TangentCount = 0 }));
        var other = MlpSpec.Uniform(2, 2, 3, 2, ElementwiseFunction.Relu).Build();
        Assert.Contains("not a node of this plan's model", Assert.Throws<ArgumentException>(() => plan.Value(other.Loss)).Message);
    }
}

public class GraphTests
{
    [Fact]
    public void Shape_mismatch_names_the_node_and_both_shapes()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(3, 4));
        var w = builder.Parameter("w", new Shape(5, 6), Initializer.Zeros);
        var error = Assert.Throws<ShapeMismatchException>(() => builder.Linear("dense", x, w, null));
        Assert.Equal("dense", error.Node);
        Assert.Contains("[out, 4]", error.Expected);
        Assert.Contains("[5, 6]", error.Actual);
        Assert.Contains("Shape mismatch at node 'dense'", error.Message);
    }

    [Fact]
    public void Shapes_are_inferred_over_n_dimensional_inputs()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(7, 16));          // [T, D] per example
        var layer = builder.Dense("proj", x, 8, ElementwiseFunction.Gelu);
        Assert.Equal(new Shape(7, 8), layer.Output.Shape);
        var flat = builder.Reshape("flat", layer.Output, new Shape(56));
        Assert.Equal(56, flat.Shape.ElementCount);
        Assert.Throws<ShapeMismatchException>(() => builder.Reshape("bad", layer.Output, new Shape(55)));
        Assert.Throws<ShapeMismatchException>(() => builder.Add("sum", x, layer.Output));
        var labels = builder.ClassLabels("y", 10);
        Assert.Contains("logits [B, 10]", Assert.Throws<ShapeMismatchException>(() => builder.SoftmaxCrossEntropy("loss", layer.Output, labels)).Message);
    }

    /// <summary>A dense layer over [T, D] inputs treats the T positions as rows: the JVP/VJP rules work unchanged.</summary>
    [Fact]
    public void Dense_layers_on_sequences_differentiate_correctly()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(3, 4));
        var h = builder.Dense("proj", x, 5, ElementwiseFunction.Tanh).Output;
        var flat = builder.Reshape("flat", h, new Shape(15));
        var logits = builder.Dense("head", flat, 3, ElementwiseFunction.Identity).Output;
        var model = builder.Build(builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", 3)), logits);
        var store = ParameterStore.Initialize(model, new CpuBackend(), 3);
        var problem = new Problem(model, store, 2, new() { [x.Id] = Problem.Normal(4, 24, 1f), [model["y"].Id] = [2, 0] });
        var weight = model["proj.weight"];
        var plan = problem.Compile(new PlanOptions(2) { Seeds = [new TangentSeed(weight)], Gradients = true });
        var v = Problem.Normal(5, 20, 1f);
        CpuBackend.Span(plan.Seed(weight)).CopyFrom(v);
        plan.Forward();
        plan.Jvp();
        plan.Backward();
        var g = plan.Gradient(weight).ToArray();
        double expected = g.Zip(v, (a, b) => (double)a * b).Sum();
        JvpTests.AssertClose(expected, plan.Tangent(model.Loss).ToArray().Sum() / 2, "sequence model", 1e-4);
    }

    [Fact]
    public void Duplicate_names_and_foreign_nodes_are_rejected()
    {
        var builder = new ModelBuilder();
        builder.Input("x", new Shape(2));
        Assert.Contains("already exists", Assert.Throws<ArgumentException>(() => builder.Input("x", new Shape(2))).Message);
        var foreign = new ModelBuilder().Input("z", new Shape(2));
        Assert.Contains("does not belong", Assert.Throws<ArgumentException>(() => builder.Activation("a", foreign, ElementwiseFunction.Relu)).Message);
        Assert.Throws<ArgumentException>(() => new Shape(3, 0));
    }

    [Fact]
    public void Models_are_immutable_values()
    {
        var a = MlpSpec.Uniform(4, 3, 8, 2, ElementwiseFunction.Relu).Build();
        var b = MlpSpec.Uniform(4, 3, 8, 2, ElementwiseFunction.Relu).Build();
        Assert.Equal(a.Nodes.Length, b.Nodes.Length);
        Assert.Equal(3, a.Sites.Length);
        Assert.Equal(4 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2, a.ParameterCount);
        Assert.True(a.Nodes.Zip(b.Nodes).All(p => p.First == p.Second || p.First.Inputs.SequenceEqual(p.Second.Inputs)));
    }
}
