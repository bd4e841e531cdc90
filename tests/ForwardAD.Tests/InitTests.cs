using System.Collections.Immutable;
using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// PyTorch-compatible initialisation (issue 15): the default <see cref="InitScheme.Torch"/> draws dense and convolution
/// weights and biases from U(±1/√fan_in) as nn.Linear and nn.Conv2d do, with PyTorch's fan_in; torch-zero-bias is the
/// previous default, parameter for parameter. Golden/init.py gives torch's own bounds and draws for the same layers.
/// </summary>
public sealed class InitTests() : TemporaryFolderTests("forwardad-init-")
{
    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "init.json"))).RootElement;

    /// <summary>One dense layer in → out (the golden "linear" entry i), or one convolution (the golden "conv" entry i) on a
    /// 9 × 9 image; returns the model and its weight and bias nodes.</summary>
    private static (Model Model, Node Weight, Node Bias) GoldenLayer(string kind, int index, InitScheme? init = null)
    {
        var entry = Golden.GetProperty(kind)[index];
        var builder = new ModelBuilder(init);
        Node output;
        if (kind == "linear")
        {
            var x = builder.Input("x", new Shape(entry.GetProperty("in").GetInt32()));
            output = builder.Dense("layer", x, entry.GetProperty("out").GetInt32(), ElementwiseFunction.Identity).Output;
        }
        else
        {
            var x = builder.Input("x", new Shape(9, 9, entry.GetProperty("in_channels").GetInt32()));
            output = builder.Flatten("flat", builder.Conv2d("layer", x, entry.GetProperty("out_channels").GetInt32(), entry.GetProperty("kernel").GetInt32(),
                groups: entry.GetProperty("groups").GetInt32()));
        }
        var loss = builder.MeanSquaredError("loss", output, builder.Input("target", output.Shape, differentiable: false));
        var model = builder.Build(loss, output);
        return (model, model["layer.weight"], model["layer.bias"]);
    }

    public static TheoryData<string, int> GoldenLayers()
    {
        var data = new TheoryData<string, int>();
        foreach (var kind in new[] { "linear", "conv" })
            for (int i = 0; i < Golden.GetProperty(kind).GetArrayLength(); i++) data.Add(kind, i);
        return data;
    }

    private static float Bound(Node parameter) => Assert.IsType<UniformInitializer>(((ParameterOp)parameter.Op).Initializer).Bound;

    /// <summary>fan_in = in_features for nn.Linear and in_channels/groups · k² for nn.Conv2d (our layout [Cout, k, k, C/G] has
    /// the same C/G · k² elements per output channel): the bounds of weight and bias are torch's to float rounding.</summary>
    [Theory]
    [MemberData(nameof(GoldenLayers))]
    public void Fan_in_and_bounds_are_pytorchs(string kind, int index)
    {
        var entry = Golden.GetProperty(kind)[index];
        var (_, weight, bias) = GoldenLayer(kind, index);
        int fanIn = entry.GetProperty("fan_in").GetInt32();
        // Our weight's elements per output channel are its fan-in, whatever the axis order.
        Assert.Equal(fanIn, weight.Shape.ElementCount / weight.Shape[0]);
        Assert.Equal(entry.GetProperty("torch_weight_shape").EnumerateArray().Aggregate(1, (p, d) => p * d.GetInt32()), weight.Shape.ElementCount);
        // kaiming_uniform_(a = √5): gain √(2/(1 + 5)) = √(1/3), bound = √3 · gain/√fan_in = 1/√fan_in.
        Assert.Equal(Math.Sqrt(1.0 / 3), entry.GetProperty("gain").GetDouble(), 12);
        Assert.Equal(entry.GetProperty("weight_bound").GetDouble(), Bound(weight), 1e-6 * entry.GetProperty("weight_bound").GetDouble());
        Assert.Equal(entry.GetProperty("bias_bound").GetDouble(), Bound(bias), 1e-6 * entry.GetProperty("bias_bound").GetDouble());
    }

    /// <summary>
    /// The numbers drawn: every one within ±bound; the largest magnitude near the bound (P(max|w| &lt; b(1 − t)) = (1 − t)ⁿ
    /// ≤ e^(−nt) = 1e-6 at t = 13.8/n); the mean 0 and the root mean square b/√3 (as torch's own draws, Golden/init.json)
    /// within 5 standard errors: w² has variance b⁴(1/5 − 1/9) = 4b⁴/45, so rms = √mean(w²) has standard error
    /// ≈ b/√(15n); between our draws and torch's, √(b²/15 · (1/n + 1/n_torch)).
    /// </summary>
    [Theory]
    [MemberData(nameof(GoldenLayers))]
    public void Drawn_weights_and_biases_have_pytorchs_distribution(string kind, int index)
    {
        var entry = Golden.GetProperty(kind)[index];
        var (model, weight, bias) = GoldenLayer(kind, index);
        var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed: 15);
        foreach (var (node, name) in new[] { (weight, "weight"), (bias, "bias") })
        {
            double b = entry.GetProperty(name + "_bound").GetDouble();
            var values = parameters.ToArray(node);
            int n = values.Length;
            var torch = entry.GetProperty(name);
            Assert.Equal(torch.GetProperty("count").GetInt32(), n);
            Assert.All(values, v => Assert.InRange(v, -(float)b, (float)b));
            double maxAbs = values.Max(v => Math.Abs((double)v));
            Assert.InRange(maxAbs, b * (1 - 13.8 / n), b);
            Assert.InRange(torch.GetProperty("max_abs").GetDouble(), b * (1 - 13.8 / torch.GetProperty("count").GetInt32()), b);
            double mean = values.Average(v => (double)v), rms = Math.Sqrt(values.Average(v => (double)v * v));
            Assert.InRange(mean, -5 * b / Math.Sqrt(3.0 * n), 5 * b / Math.Sqrt(3.0 * n));
            double standardError = b / Math.Sqrt(15.0 * n);
            Assert.InRange(rms, b / Math.Sqrt(3) - 5 * standardError, b / Math.Sqrt(3) + 5 * standardError);
            double torchRms = torch.GetProperty("rms").GetDouble(), torchCount = torch.GetProperty("count").GetInt32();
            double difference = 5 * Math.Sqrt(b * b / 15 * (1.0 / n + 1.0 / torchCount));
            Assert.True(Math.Abs(rms - torchRms) <= difference, $"{kind} {index} {name}: rms {rms:G5}, torch's {torchRms:G5} (5 standard errors {difference:G3})");
        }
    }

    /// <summary>Embeddings N(0, 1) as nn.Embedding (rms 1; w² has variance 2, so rms has standard error ≈ 1/√(2n)), LayerNorm γ = 1,
    /// β = 0 as nn.LayerNorm, and the transformer's projections and head on the Linear default of their own fan-in.</summary>
    [Fact]
    public void Transformer_embeddings_and_norms_start_as_pytorchs()
    {
        var golden = Golden.GetProperty("embedding");
        int vocabulary = golden.GetProperty("vocabulary").GetInt32(), width = golden.GetProperty("width").GetInt32();
        var spec = new TransformerSpec(Layers: 1, Heads: 2, Width: width, Context: 4, Vocabulary: vocabulary, MlpRatio: 2);
        var model = spec.Build();
        var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed: 3);
        var embedding = parameters.ToArray(model["embed.weight"]);
        int n = embedding.Length;
        Assert.Equal(golden.GetProperty("count").GetInt32(), n);
        double rms = Math.Sqrt(embedding.Average(v => (double)v * v)), torchRms = golden.GetProperty("rms").GetDouble();
        Assert.InRange(rms, 1 - 5 / Math.Sqrt(2.0 * n), 1 + 5 / Math.Sqrt(2.0 * n));
        Assert.InRange(torchRms - rms, -5 / Math.Sqrt(n), 5 / Math.Sqrt(n)); // two independent estimates: √2 · 1/√(2n)
        var norm = Golden.GetProperty("layernorm");
        Assert.Equal(new[] { 1.0 }, norm.GetProperty("weight").EnumerateArray().Select(e => e.GetDouble()));
        Assert.Equal(new[] { 0.0 }, norm.GetProperty("bias").EnumerateArray().Select(e => e.GetDouble()));
        foreach (var name in new[] { "block1.ln1", "block1.ln2", "ln_f" })
        {
            Assert.All(parameters.ToArray(model[name + ".weight"]), v => Assert.Equal(1f, v));
            Assert.All(parameters.ToArray(model[name + ".bias"]), v => Assert.Equal(0f, v));
        }
        foreach (var (name, fanIn) in new[] { ("block1.q", width), ("block1.fc1", width), ("block1.fc2", 2 * width), ("head", width) })
        {
            Assert.Equal(1f / MathF.Sqrt(fanIn), Bound(model[name + ".weight"]));
            Assert.Equal(1f / MathF.Sqrt(fanIn), Bound(model[name + ".bias"]));
        }
    }

    /// <summary>The learned positions start N(0, 0.02²) as GPT-2 by default and N(0, 1) as an nn.Embedding on request: the rms
    /// of n draws is σ within 5 standard errors σ/√(2n); the token table and every other parameter are the same draws either way.</summary>
    [Fact]
    public void Transformer_positions_start_as_the_chosen_initialisation_says()
    {
        var spec = new TransformerSpec(Layers: 1, Heads: 2, Width: 32, Context: 64, Vocabulary: 20);
        var gpt2 = ParameterStore.Initialize(spec.Build(), new CpuBackend(), seed: 4);
        var embedding = ParameterStore.Initialize(spec.Build(positions: PositionInit.Embedding), new CpuBackend(), seed: 4);
        foreach (var (store, sd) in new[] { (gpt2, 0.02), (embedding, 1.0) })
        {
            var table = store.ToArray(store.Model["pos.weight"]);
            int n = table.Length;
            double rms = Math.Sqrt(table.Average(v => (double)v * v));
            Assert.InRange(rms, sd * (1 - 5 / Math.Sqrt(2.0 * n)), sd * (1 + 5 / Math.Sqrt(2.0 * n)));
        }
        Assert.Equal(gpt2.ToArray(gpt2.Model["embed.weight"]), embedding.ToArray(embedding.Model["embed.weight"]));
        Assert.Equal(PositionInit.Embedding, PositionInits.Parse(PositionInit.Embedding.Name()));
        Assert.Contains("gpt2", Assert.Throws<ArgumentException>(() => PositionInits.Parse("sinusoidal")).Message);
    }

    /// <summary>torch-zero-bias draws the same weights (the same Philox streams: one per parameter node) and zero biases,
    /// for MLPs and CNNs: exactly what every model got before biases were drawn.</summary>
    [Fact]
    public void Torch_zero_bias_keeps_the_weights_and_zeroes_every_bias()
    {
        var mlp = MlpSpec.Uniform(10, 3, 16, 4, ElementwiseFunction.Relu);
        var cnn = CnnSpec.Parse("c8k3-bn-relu-p2,c8k3g2-relu,gap", new Shape(8, 8, 2), 3);
        foreach (var (torch, zero) in new[] { (mlp.Build(), mlp.Build(InitScheme.TorchZeroBias)), (cnn.Build(), cnn.Build(InitScheme.TorchZeroBias)) })
        {
            var a = ParameterStore.Initialize(torch, new CpuBackend(), seed: 9);
            var b = ParameterStore.Initialize(zero, new CpuBackend(), seed: 9);
            int biases = 0;
            foreach (var p in torch.Parameters)
            {
                var pZero = zero[p.Name];
                bool layerBias = p.Name.EndsWith(".bias", StringComparison.Ordinal) && !p.Name.StartsWith("bn", StringComparison.Ordinal);
                if (!layerBias) Assert.Equal(a.ToArray(p), b.ToArray(pZero));
                else
                {
                    biases++;
                    Assert.All(b.ToArray(pZero), v => Assert.Equal(0f, v));
                    Assert.Contains(a.ToArray(p), v => v != 0f);
                }
            }
            Assert.True(biases >= 2);
        }
        // Batch norm's shift is zero under both (nn.BatchNorm2d).
        Assert.All(ParameterStore.Initialize(cnn.Build(), new CpuBackend(), 9).ToArray(cnn.Build()["bn1.bias"]), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Schemes_are_found_by_name_and_an_unknown_name_lists_them()
    {
        Assert.Same(InitScheme.Torch, InitScheme.Named("torch"));
        Assert.Same(InitScheme.TorchZeroBias, InitScheme.Named("torch-zero-bias"));
        Assert.Same(InitScheme.Torch, new ModelBuilder().Init);
        var e = Assert.Throws<ArgumentException>(() => InitScheme.Named("xavier"));
        Assert.Contains("torch, torch-zero-bias", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Initializer.LinearDefault(0));
    }

    // ---- the command line: --init, and runs from before it existed -------------------------------------------------

    private static string RunHash(string metrics) => File.ReadAllLines(metrics)[^1].Split(',')[^1];

    /// <summary>
    /// Golden/pre_init_checkpoint.safetensors and pre_init_metrics.csv were written by the tool before --init existed
    /// (commit 0be1420, when backprop was train's default guesser: <c>forwardad train --hidden 8 --epochs 1 --quiet --metrics … --checkpoint …</c>). The same run with
    /// --init torch-zero-bias is the same run: the same hash, and it resumes that checkpoint into that CSV. With the new
    /// default the checkpoint is refused, naming init; a torch run records init = torch.
    /// </summary>
    [Fact]
    public void Runs_from_before_init_keep_their_hash_and_resume_with_torch_zero_bias()
    {
        string golden = Path.Combine(AppContext.BaseDirectory, "Golden");
        string checkpoint = PathOf("old.safetensors"), metrics = PathOf("old.csv");
        File.Copy(Path.Combine(golden, "pre_init_checkpoint.safetensors"), checkpoint);
        File.Copy(Path.Combine(golden, "pre_init_metrics.csv"), metrics);
        string oldHash = RunHash(metrics);

        var before = File.ReadAllText(metrics);
        var (code, _, error) = CliTests.Run("--guesser", "backprop", "--hidden", "8", "--epochs", "2", "--quiet", "--metrics", metrics, "--resume", checkpoint);
        Assert.Equal(1, code);
        Assert.Contains("init is missing from the checkpoint but this run's is 'torch'", error);
        Assert.Equal(before, File.ReadAllText(metrics));

        (code, _, error) = CliTests.Run("--guesser", "backprop", "--hidden", "8", "--epochs", "2", "--quiet", "--init", "torch-zero-bias", "--metrics", metrics, "--resume", checkpoint);
        Assert.True(code == 0, error);
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(3, lines.Length);
        Assert.All(lines.Skip(1), l => Assert.Equal(oldHash, l.Split(',')[^1]));
        Assert.False(SafeTensors.Read(checkpoint).Metadata.ContainsKey("init"));

        // Fresh runs: torch-zero-bias has the old hash; torch records itself and is another run.
        Assert.Equal(0, CliTests.Run("--guesser", "backprop", "--hidden", "8", "--epochs", "1", "--quiet", "--init", "torch-zero-bias", "--metrics", PathOf("zero.csv")).Code);
        Assert.Equal(oldHash, RunHash(PathOf("zero.csv")));
        Assert.Equal(0, CliTests.Run("--guesser", "backprop", "--hidden", "8", "--epochs", "1", "--quiet", "--metrics", PathOf("torch.csv"), "--checkpoint", PathOf("torch.safetensors")).Code);
        Assert.NotEqual(oldHash, RunHash(PathOf("torch.csv")));
        Assert.Equal("torch", SafeTensors.Read(PathOf("torch.safetensors")).Metadata["init"]);
        var refused = CliTests.Run("--guesser", "backprop", "--hidden", "8", "--epochs", "2", "--quiet", "--init", "torch-zero-bias", "--metrics", PathOf("torch.csv"), "--resume", PathOf("torch.safetensors"));
        Assert.Equal(1, refused.Code);
        Assert.Contains("init is 'torch' but this run does not set it", refused.Err);

        var unknown = CliTests.Run("--hidden", "8", "--init", "xavier");
        Assert.NotEqual(0, unknown.Code);
        Assert.Contains("Unknown initialisation 'xavier' for --init. Use torch or torch-zero-bias", unknown.Err);
    }
}
