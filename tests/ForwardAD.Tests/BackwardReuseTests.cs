using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// Backprop plans that reuse buffers (<see cref="PlanOptions.ReuseBuffers"/> with gradients): a value lives until the last
/// VJP rule that reads it, a cotangent only while the backward pass needs it. The gradients are the same bits as a plan
/// that keeps everything, on every model family (so every op's declaration of what its VJP reads is exercised), and the
/// plan holds less memory.
/// </summary>
public sealed class BackwardReuseTests(ITestOutputHelper output)
{
    /// <summary>Every model family, and a local loss that feeds further ops (through a tanh or a ReLU, then tanhs, to a second
    /// loss): that loss's cotangent is seeded at the start of the backward pass, so no buffer or gradient slice may share its
    /// memory before its consumers add to it, and the ReLU after it adds its term.</summary>
    public static TheoryData<string> Models => ["mlp", "residual", "cnn", "transformer", "mixer", "loss-feeds-tanh", "loss-feeds-relu"];

    /// <summary>loss1 = MSE(tanh(x W₀ᵀ + b), t) and loss2 = MSE(tanh³(f(loss1)), t₂), both in the objective.</summary>
    private static Model LossFeedingOps(ElementwiseFunction first)
    {
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(8), differentiable: false);
        var prediction = b.Dense("l0", x, 4, ElementwiseFunction.Tanh).Output;
        var loss1 = b.MeanSquaredError("loss1", prediction, b.Input("t", new Shape(4), differentiable: false));
        var chain = b.Activation("a0", loss1, first);
        for (int i = 1; i < 4; i++) chain = b.Activation($"a{i}", chain, ElementwiseFunction.Tanh);
        var loss2 = b.MeanSquaredError("loss2", chain, b.Input("t2", loss1.Shape, differentiable: false));
        return b.Build(loss2, prediction, [loss1]);
    }

    private static Problem Problem(string name, int batch) => name switch
    {
        "mlp" => Tests.Problem.From(MlpSpec.Uniform(12, 5, 16, 4, ElementwiseFunction.Relu).Build(), 3, batch),
        "residual" => Tests.Problem.From(Tests.Problem.Residual(), 3, batch),
        "cnn" => Tests.Problem.From(CnnSpec.Parse("c8k3-bn-relu-p2,c8k3s2-bn-tanh,flat,fc16-gelu", new Shape(12, 12, 3), 5).Build(), 3, batch),
        "loss-feeds-tanh" => Tests.Problem.From(LossFeedingOps(ElementwiseFunction.Tanh), 3, batch),
        "loss-feeds-relu" => Tests.Problem.From(LossFeedingOps(ElementwiseFunction.Relu), 3, batch),
        "transformer" => TransformerTests.Randomized(new TransformerSpec(Layers: 2, Heads: 2, Width: 16, Context: 8, Vocabulary: 24), 3, batch),
        _ => Tests.Problem.From(new LocalMixerSpec(new Shape(8, 8, 3), Patch: 4, Width: 16, Blocks: 2, Groups: 2, Classes: 4).Build(), 3, batch),
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void Gradients_are_the_same_bits_as_a_plan_that_keeps_every_buffer(string name)
    {
        const int batch = 6;
        var problem = Problem(name, batch);
        var kept = problem.Compile(new PlanOptions(batch) { Gradients = true });
        var reused = problem.Compile(new PlanOptions(batch) { Gradients = true, ReuseBuffers = true });
        kept.Forward();
        kept.Backward();
        reused.Forward();
        reused.Backward();
        Assert.True(Bits.Same(kept.ParameterGradients.ToArray(), reused.ParameterGradients.ToArray()), $"{name}: gradients differ");
        Assert.Equal(kept.MeanLoss(), reused.MeanLoss());
        // Twice more, to catch a buffer that a later pass finds overwritten.
        for (int i = 0; i < 2; i++) { reused.Forward(); reused.Backward(); }
        Assert.True(Bits.Same(kept.ParameterGradients.ToArray(), reused.ParameterGradients.ToArray()), $"{name}: gradients differ on a later pass");
        output.WriteLine($"{name}: {kept.AllocatedBytes:N0} bytes kept, {reused.AllocatedBytes:N0} reused");
        Assert.True(reused.AllocatedBytes < kept.AllocatedBytes, $"{name}: {reused.AllocatedBytes} ≥ {kept.AllocatedBytes}");
    }

    /// <summary>A deep MLP keeps, per layer, what autograd keeps, and in the gradients' memory as far as it fits. With ReLU the
    /// backward pass needs only each layer's input, the previous ReLU's output (its VJP reads its mask from it); GELU also
    /// saves its derivative, which its output does not give: one activation per layer, or two. They live in the gradient
    /// slices of earlier layers, which the backward pass writes only after it has read them, several to a slice where they
    /// fit: at batch 64 a 128 × 128 weight gradient holds two 64 × 128 activations, so the plan's buffers beyond the
    /// gradients do not grow with depth at all; at batch 256 it holds half of one, so every activation is a buffer of its
    /// own. Never the pre-activation nor a cotangent, as the five per layer of a plan that keeps everything.</summary>
    [Theory]
    [InlineData("relu", 64, 0.0)]
    [InlineData("gelu", 64, 0.0)]
    [InlineData("relu", 256, 1.0)]
    [InlineData("gelu", 256, 2.0)]
    public void A_deep_mlp_keeps_what_autograd_keeps_per_layer(string activation, int batch, double expected)
    {
        const int width = 128;
        var function = ElementwiseFunction.Parse(activation);
        long Beyond(int depth, bool reuse)
        {
            var problem = Tests.Problem.From(MlpSpec.Uniform(width, depth, width, 10, function).Build(), 1, batch);
            var plan = problem.Compile(new PlanOptions(batch) { Gradients = true, ReuseBuffers = reuse });
            return plan.AllocatedBytes - problem.Parameters.All.Length * sizeof(float);
        }
        double perLayer(bool reuse) => (Beyond(16, reuse) - Beyond(8, reuse)) / 8.0 / (batch * width * sizeof(float));
        output.WriteLine($"{activation}: activations per layer: {perLayer(false):F2} kept, {perLayer(true):F2} reused");
        Assert.Equal(expected, perLayer(true), 2);
        Assert.True(perLayer(false) >= 4.0);
    }

    /// <summary>The ReLU VJP read from the output: the bits of the saved mask's product, overwriting and adding (the fused
    /// multiply-add MultiplyChannels uses), at one thread and three, with zeros, negative zeros, NaNs and a tail.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void The_mask_read_from_the_output_gives_the_saved_masks_bits(int threads)
    {
        var backend = new CpuBackend { Threads = threads };
        const int n = (1 << 17) + 5;
        var x = Tests.Problem.Normal(1, n, 1f);
        x[3] = 0f; x[4] = -0f; x[5] = float.NaN; x[6] = float.PositiveInfinity; x[7] = float.NegativeInfinity;
        var v = Tests.Problem.Normal(2, n, 1f);
        v[8] = float.NaN; v[9] = -0f;
        var start = Tests.Problem.Normal(3, n, 1f);
        View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
        var (input, cotangent) = (Of(x), Of(v));
        var (y, mask) = (Of(new float[n]), Of(new float[n]));
        backend.ElementwiseWithDerivative(ElementwiseFunction.Relu, input, y, mask);
        foreach (bool accumulate in new[] { false, true })
        {
            var (expected, actual) = (Of(start), Of(start));
            backend.MultiplyChannels(mask, cotangent, expected, accumulate);
            backend.MultiplyByPositiveMask(y, cotangent, actual, accumulate);
            Assert.True(Bits.Same(expected.ToArray(), actual.ToArray()), $"accumulate {accumulate}: differs");
        }
    }

    [Fact]
    public void An_intermediate_cotangent_or_a_second_backward_pass_is_refused_with_the_reason()
    {
        const int batch = 4;
        var problem = Problem("mlp", batch);
        var plan = problem.Compile(new PlanOptions(batch) { Gradients = true, ReuseBuffers = true });
        plan.Forward();
        plan.Backward();
        var site = problem.Model.Sites[1].Node;
        Assert.Contains("not kept: this plan reuses buffers in the backward pass", Assert.Throws<InvalidOperationException>(() => plan.Cotangent(site)).Message);
        Assert.Contains("run Forward() again before another Backward()", Assert.Throws<InvalidOperationException>(plan.Backward).Message);
        Assert.Contains("reuses buffers", Assert.Throws<InvalidOperationException>(() => plan.CreatePullBack([problem.Model.Output], site)).Message);
    }
}
