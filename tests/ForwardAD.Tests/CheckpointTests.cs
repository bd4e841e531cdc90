using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Tests;

public sealed class CheckpointTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("forwardad-ckpt-").FullName;
    private static readonly Dictionary<string, string> Description = new() { ["model"] = "mlp 64-16-10 relu", ["guesser"] = "ap" };

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static (Trainer Trainer, ParameterStore Store) NewTrainer(Guesser guesser, ulong seed = 3)
    {
        var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 300).ToArray(), "digits-300").Split(0.2, seed);
        var store = ParameterStore.Initialize(new MlpSpec(64, [16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), seed);
        var rule = new ClipByGlobalNorm(5f).Then(Optimizers.AdamW(Schedule.CosineWithWarmup(3e-3f, 5, 60)));
        return (new Trainer(guesser, rule, store, train, test, new TrainingOptions(16, seed) { CosineEvery = 2 }), store);
    }

    /// <summary>Four epochs straight equal two epochs, a checkpoint, a fresh trainer resumed from it, and two more:
    /// parameters, optimizer moments and metrics bit for bit.</summary>
    [Theory]
    [InlineData("ap")]
    [InlineData("directional")]
    [InlineData("grape")]
    public void Resume_continues_bit_for_bit(string name)
    {
        Guesser guesser = name switch
        {
            "ap" => Guessers.ActivationPerturbation(TangentMode.PerLayer, 2),
            "directional" => Guessers.DirectionalDescent(3),
            _ => Guessers.Grape(new GrapeOptions { Rule = FeedbackRules.Original(Schedule.Exponential(0.05f, 0.99f), 1e-3f) }, seed: 4),
        };
        var (straight, straightStore) = NewTrainer(guesser);
        var reports = Enumerable.Range(0, 4).Select(e => straight.RunEpoch(e)).ToList();

        var (first, _) = NewTrainer(guesser);
        first.RunEpoch(0);
        first.RunEpoch(1);
        var path = Path.Combine(_folder, "run.safetensors");
        first.SaveCheckpoint(path, Description);
        var (resumed, resumedStore) = NewTrainer(guesser);
        resumed.Resume(path, Description);
        Assert.Equal(2, resumed.NextEpoch);
        var tail = new[] { resumed.RunEpoch(2), resumed.RunEpoch(3) };
        Assert.Equal(straightStore.All.ToArray(), resumedStore.All.ToArray());
        Assert.Equal(reports[3].TestLoss, tail[1].TestLoss);
        Assert.Equal(reports[3].GlobalCosine, tail[1].GlobalCosine);
        Assert.Equal(straight.Step, resumed.Step);
    }

    [Fact]
    public void A_failed_write_leaves_the_previous_checkpoint_intact()
    {
        var path = Path.Combine(_folder, "ckpt.safetensors");
        SafeTensors.Write(path, [new NamedTensor("w", [2], [1f, 2f])], new Dictionary<string, string> { ["k"] = "v" });
        var before = File.ReadAllBytes(path);
        var failing = new List<(string, int[], Func<float[]>)> { ("w", [2], () => [3f, 4f]), ("boom", [1], () => throw new IOException("disk full")) };
        Assert.Throws<IOException>(() => SafeTensors.Write(path, failing, new Dictionary<string, string>()));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(_folder));
        var (tensors, metadata) = SafeTensors.Read(path);
        Assert.Equal(new[] { 1f, 2f }, tensors["w"].Data);
        Assert.Equal("v", metadata["k"]);
    }

    [Fact]
    public void The_file_is_valid_safetensors()
    {
        var path = Path.Combine(_folder, "layout.safetensors");
        SafeTensors.Write(path, [new NamedTensor("a", [2, 3], [1, 2, 3, 4, 5, 6]), new NamedTensor("b", [1], [7])], new Dictionary<string, string>());
        var bytes = File.ReadAllBytes(path);
        long headerLength = BitConverter.ToInt64(bytes, 0);
        Assert.Equal(0, (8 + headerLength) % 8);
        var json = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)headerLength).TrimEnd();
        Assert.Contains("\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}", json);
        Assert.Contains("\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[24,28]}", json);
        Assert.Equal(8 + headerLength + 28, bytes.Length);
        Assert.Equal(7f, BitConverter.ToSingle(bytes, (int)(8 + headerLength + 24)));
    }

    [Fact]
    public void A_checkpoint_of_another_model_is_rejected_without_touching_the_run()
    {
        var (trainer, store) = NewTrainer(Guessers.Backprop);
        trainer.RunEpoch(0);
        var path = Path.Combine(_folder, "other.safetensors");
        var otherStore = ParameterStore.Initialize(new MlpSpec(64, [8], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        var (train, test) = Digits.Load().Split(0.2, 1);
        var other = new Trainer(Guessers.Backprop, Optimizers.AdamW(1e-3f), otherStore, train, test, new TrainingOptions(16, 3));
        other.SaveCheckpoint(path, Description);
        var before = store.All.ToArray();
        var error = Assert.Throws<InvalidDataException>(() => trainer.Resume(path, Description));
        Assert.Contains("tensor 'layer1.weight' has shape [8, 64]; the model expects [16, 64]", error.Message);
        Assert.Equal(before, store.All.ToArray());

        var changed = new Dictionary<string, string>(Description) { ["guesser"] = "wt" };
        trainer.SaveCheckpoint(path, Description);
        Assert.Contains("guesser is 'ap' but this run's is 'wt'", Assert.Throws<InvalidDataException>(() => trainer.Resume(path, changed)).Message);

        File.WriteAllBytes(path, File.ReadAllBytes(path)[..100]);
        Assert.Contains("Truncated", Assert.Throws<InvalidDataException>(() => trainer.Resume(path, Description)).Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Training_steps_allocate_nothing()
    {
        foreach (var guesser in new[] { Guessers.Backprop, Guessers.ActivationPerturbation(), Guessers.WeightTranspose(TangentMode.PerLayer), Guessers.ActivationMixing(), Guessers.SelfSharpening(), Guessers.Downstream(2), Guessers.DirectionalDescent(2) })
        {
            var store = ParameterStore.Initialize(new MlpSpec(64, [16, 16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
            var estimator = guesser.Compile(store, 8);
            var optimizer = new Optimizer(Optimizers.AdamW(1e-3f), store);
            var digits = Digits.Load();
            var features = digits.Features.AsSpan(0, 8 * 64).ToArray();
            var labels = digits.Labels.AsSpan(0, 8).ToArray();
            void Step(int i)
            {
                estimator.SetBatch(features, labels);
                var (gradient, loss) = estimator.Estimate(new Random.RandomKey(1, (ulong)i));
                optimizer.Step(new UpdateInputs(i, loss, default), gradient);
            }
            Step(0);
            Step(1);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 2; i < 6; i++) Step(i);
            Assert.True(GC.GetAllocatedBytesForCurrentThread() - before == 0, $"{guesser.Name} allocated {GC.GetAllocatedBytesForCurrentThread() - before} bytes");
        }
    }
}
