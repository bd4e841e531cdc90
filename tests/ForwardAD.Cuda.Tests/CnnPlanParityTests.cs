using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Cuda.Tests;

/// <summary>Whole convolutional plans on the GPU against the CPU: convolution (groups, stride), batch norm with batch and
/// frozen statistics (the backends' default compositions on CUDA, fused loops on the CPU), max, average and global
/// pooling; forward, K-channel JVP, gradient and running statistics, then guessers' training steps.</summary>
public sealed class CnnPlanParityTests(CudaFixture fixture) : IClassFixture<CudaFixture>
{
    private readonly CpuBackend _cpu = new();
    private const int Batch = 8;

    /// <summary>The first convolution has no bias: before batch statistics a bias has an exactly zero gradient, which the
    /// backends round to different tiny values that Adam then scales to full-size steps of arbitrary sign.</summary>
    private static Model Cnn() => CnnSpec.Parse("c4k3b0-bn-relu-p2,c6k3s2g2-bnf-tanh,a2,gap", new Shape(8, 8, 1), 5).Build();

    private static (float[] X, float[] Y) Data() =>
        (Host.Normal(4, Batch * 64), Enumerable.Range(0, Batch).Select(i => (float)(i % 5)).ToArray());

    [Fact]
    public void A_cnn_plan_agrees_with_the_cpu()
    {
        var cuda = fixture.Require();
        var model = Cnn();
        var (x, y) = Data();
        (float[] Loss, float[] Tangent, float[] Gradient, float[] State) Run(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var plan = Plan.Compile(store, new PlanOptions(Batch)
            {
                Gradients = true, TangentCount = 3,
                Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node, new RandomKey(3, (ulong)s.Node.Id)))],
            });
            plan.SetInput(model["x"], x);
            plan.SetInput(model["y"], y);
            plan.ForwardJvp();
            plan.Backward();
            return (plan.Value(model.Loss).ToArray(), plan.Tangent(model.Loss).ToArray(), plan.ParameterGradients.ToArray(), store.State.ToArray());
        }
        var cpu = Run(_cpu);
        var gpu = Run(cuda);
        Host.Close(cpu.Loss, gpu.Loss, 1e-4, "losses");
        Host.Close(cpu.Tangent, gpu.Tangent, 1e-4, "loss tangents");
        Host.Close(cpu.Gradient, gpu.Gradient, 1e-4, "gradient");
        Host.Close(cpu.State, gpu.State, 1e-5, "running statistics");
    }

    /// <summary>A backprop plan that reuses buffers and reads its input from a bound device buffer gives the CPU's gradients:
    /// binding works on device memory, and each ReLU's VJP reads its mask from its output (the default composition of
    /// MultiplyByPositiveMask on CUDA), on this CNN and on a ReLU MLP.</summary>
    [Theory]
    [InlineData("cnn")]
    [InlineData("mlp")]
    public void A_reusing_backprop_plan_with_a_bound_input_agrees_with_the_cpu(string name)
    {
        var cuda = fixture.Require();
        var model = name == "cnn" ? Cnn() : MlpSpec.Uniform(64, 3, 16, 5, ElementwiseFunction.Relu).Build();
        var (x, y) = Data();
        (float[] Gradient, double Loss) Run(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var plan = Plan.Compile(store, new PlanOptions(Batch) { Gradients = true, ReuseBuffers = true, BoundInputs = [model["x"]] });
            var input = new View(backend.Allocate(x.Length));
            backend.CopyFromHost(x, input);
            plan.BindInput(model["x"], input);
            plan.SetInput(model["y"], y);
            plan.Forward();
            plan.Backward();
            return (plan.ParameterGradients.ToArray(), plan.MeanLoss());
        }
        var (cpu, gpu) = (Run(_cpu), Run(cuda));
        Assert.Equal(cpu.Loss, gpu.Loss, 1e-5);
        Host.Close(cpu.Gradient, gpu.Gradient, 1e-4, $"{name} gradient");
    }

    public static TheoryData<string> GuesserNames() => ["backprop", "ap", "wt", "dfa", "grape"];

    [Theory]
    [MemberData(nameof(GuesserNames))]
    public void Cnn_training_steps_agree_with_the_cpu(string name)
    {
        var cuda = fixture.Require();
        var model = Cnn();
        var (x, y) = Data();
        Guesser guesser = name switch
        {
            "backprop" => Guessers.Backprop,
            "ap" => Guessers.ActivationPerturbation(),
            "wt" => Guessers.WeightTranspose(),
            "dfa" => Guessers.Dfa(),
            _ => Guessers.Grape(new GrapeOptions()),
        };
        float[] Train(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var estimator = guesser.Compile(store, Batch);
            var optimizer = new Optimizer(Optimizers.AdamW(1e-3f), store);
            for (int step = 0; step < 3; step++)
            {
                estimator.SetBatch(x, y);
                var (gradient, loss) = estimator.Estimate(new RandomKey(8, (ulong)step), step);
                optimizer.Step(new UpdateInputs(step, loss, default), gradient);
            }
            return [.. store.All.ToArray(), .. store.State.ToArray()];
        }
        Host.Close(Train(_cpu), Train(cuda), 5e-4, name);
    }
}
