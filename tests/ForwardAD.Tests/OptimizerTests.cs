using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Tests;

/// <summary>
/// Update rules against PyTorch's own optimizers on the same gradients: golden values in
/// Golden/optimizers.json, made by Golden/optimizers.py (torch 1.13) and kept beside it.
/// </summary>
public class OptimizerTests
{
    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "optimizers.json"))).RootElement;

    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(v => v.GetSingle()).ToArray();

    public static TheoryData<string> Cases() => ["sgd", "momentum", "nesterov", "adam", "adamw", "clipped_sgd", "step_sgd", "exponential_sgd", "cosine_sgd", "stable_adamw"];

    private static UpdateRule Rule(string name) => name switch
    {
        "sgd" => Optimizers.Sgd(0.1f),
        "momentum" => Optimizers.Momentum(0.1f, 0.9f),
        "nesterov" => Optimizers.Momentum(0.1f, 0.9f, nesterov: true),
        "adam" => Optimizers.Adam(0.01f),
        "adamw" => Optimizers.AdamW(0.01f, weightDecay: 0.1f),
        "clipped_sgd" => new ClipByGlobalNorm(1f).Then(Optimizers.Sgd(0.1f)),
        "step_sgd" => Optimizers.Sgd(Schedule.Step(0.1f, 0.5f, 2, 4)),
        "exponential_sgd" => Optimizers.Sgd(Schedule.Exponential(0.1f, 0.8f)),
        "cosine_sgd" => Optimizers.Sgd(Schedule.CosineWithWarmup(0.1f, warmupSteps: 2, totalSteps: 6)),
        "stable_adamw" => Optimizers.StableAdamW(0.01f, weightDecay: 0.1f),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Matches_pytorch_on_the_same_gradients(string name)
    {
        var model = new MlpSpec(4, [], 2, ElementwiseFunction.Identity).Build(); // W [2, 4] + b [2]: 10 parameters
        var backend = new CpuBackend();
        var store = ParameterStore.Initialize(model, backend, 0);
        Assert.Equal(10, store.All.Length);
        backend.CopyFromHost(Floats(Golden.GetProperty("theta0")), store.All);
        var optimizer = new Optimizer(Rule(name), store);
        var gradient = new View(backend.Allocate(10));
        var gradients = Golden.GetProperty("grads").EnumerateArray().Select(Floats).ToArray();
        var expected = Golden.GetProperty(name).EnumerateArray().Select(Floats).ToArray();
        for (int step = 0; step < gradients.Length; step++)
        {
            backend.CopyFromHost(gradients[step], gradient);
            optimizer.Step(new UpdateInputs(step, 0, new RandomKey(0, 0)), gradient);
            var actual = store.All.ToArray();
            for (int j = 0; j < 10; j++)
                JvpTests.AssertClose(expected[step][j], actual[j], $"{name} step {step + 1} parameter {j}", 2e-5);
        }
    }

    [Fact]
    public void Optimizer_steps_allocate_nothing()
    {
        var model = MlpSpec.Uniform(8, 3, 16, 4, ElementwiseFunction.Relu).Build();
        var backend = new CpuBackend();
        var store = ParameterStore.Initialize(model, backend, 0);
        var gradient = new View(backend.Allocate(store.All.Length));
        backend.FillNormal(new RandomKey(1, 1), 0, 0, 1, gradient);
        var rule = new ClipByGlobalNorm(1f).Then(Optimizers.StableAdamW(Schedule.CosineWithWarmup(1e-3f, 10, 100))).Then(new Momentum(0.5f, Nesterov: true));
        var optimizer = new Optimizer(rule, store);
        Allocations.AssertNone(i => optimizer.Step(new UpdateInputs(i, 0, default), gradient), warmUp: 3, steps: 17, "the composed optimizer");
    }

    [Fact]
    public void Schedules_give_the_documented_rates()
    {
        Assert.Equal(0.1f, Schedule.Constant(0.1f).At(1000));
        Assert.Equal(0.025f, Schedule.Step(0.1f, 0.5f, 10, 20).At(20), 6);
        Assert.Equal(0.1 * Math.Pow(0.9, 5), Schedule.Exponential(0.1f, 0.9f).At(5), 6);
        var cosine = Schedule.CosineWithWarmup(1f, warmupSteps: 10, totalSteps: 110, finalRate: 0.1f);
        Assert.Equal(0.1f, cosine.At(0), 6);
        Assert.Equal(1f, cosine.At(10), 6);
        Assert.Equal(0.55f, cosine.At(60), 5);
        Assert.Equal(0.1f, cosine.At(500), 6);
    }

    [Fact]
    public void A_rule_given_another_rules_state_says_so()
    {
        var model = new MlpSpec(2, [], 2, ElementwiseFunction.Identity).Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 0);
        var adamState = new ScaleByAdam().Init(store);
        var error = Assert.Throws<ArgumentException>(() => new Momentum(0.9f).Update(adamState, default, store.All, store.All));
        Assert.Contains("AdamState", error.Message);
    }
}
