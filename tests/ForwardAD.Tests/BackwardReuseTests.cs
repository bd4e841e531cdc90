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
    public static TheoryData<string> Models => ["mlp", "residual", "cnn", "transformer", "mixer"];

    private static Problem Problem(string name, int batch) => name switch
    {
        "mlp" => Tests.Problem.From(MlpSpec.Uniform(12, 5, 16, 4, ElementwiseFunction.Relu).Build(), 3, batch),
        "residual" => Tests.Problem.From(Tests.Problem.Residual(), 3, batch),
        "cnn" => Tests.Problem.From(CnnSpec.Parse("c8k3-bn-relu-p2,c8k3s2-bn-tanh,flat,fc16-gelu", new Shape(12, 12, 3), 5).Build(), 3, batch),
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
        Assert.True(kept.ParameterGradients.ToArray().AsSpan().SequenceEqual(reused.ParameterGradients.ToArray()), $"{name}: gradients differ");
        Assert.Equal(kept.MeanLoss(), reused.MeanLoss());
        // Twice more, to catch a buffer that a later pass finds overwritten.
        for (int i = 0; i < 2; i++) { reused.Forward(); reused.Backward(); }
        Assert.True(kept.ParameterGradients.ToArray().AsSpan().SequenceEqual(reused.ParameterGradients.ToArray()), $"{name}: gradients differ on a later pass");
        output.WriteLine($"{name}: {kept.AllocatedBytes:N0} bytes kept, {reused.AllocatedBytes:N0} reused");
        Assert.True(reused.AllocatedBytes < kept.AllocatedBytes, $"{name}: {reused.AllocatedBytes} ≥ {kept.AllocatedBytes}");
    }

    /// <summary>A deep MLP keeps, per layer, its input and its activation's derivative, not its pre-activation nor a
    /// cotangent: the plan's buffers beyond the parameter gradients grow by two activations per layer, not five.</summary>
    [Fact]
    public void A_deep_mlp_keeps_two_activations_per_layer()
    {
        const int batch = 64, width = 128;
        long Beyond(int depth, bool reuse)
        {
            var problem = Tests.Problem.From(MlpSpec.Uniform(width, depth, width, 10, ElementwiseFunction.Relu).Build(), 1, batch);
            var plan = problem.Compile(new PlanOptions(batch) { Gradients = true, ReuseBuffers = reuse });
            return plan.AllocatedBytes - problem.Parameters.All.Length * sizeof(float);
        }
        double perLayer(bool reuse) => (Beyond(16, reuse) - Beyond(8, reuse)) / 8.0 / (batch * width * sizeof(float));
        output.WriteLine($"activations per layer: {perLayer(false):F2} kept, {perLayer(true):F2} reused");
        Assert.Equal(2.0, perLayer(true), 2);
        Assert.True(perLayer(false) >= 4.0);
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
