using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Benchmarks;

/// <summary>
/// The benchmark CNN of the three-way comparison (issues 11 and 12), the same network on every side
/// (benchmarks/peers/torch_cnn.py, ForwardAD.TorchSharpPeer): input 32×32×3 (channels last), batch 128 (issue 12), float32;
/// conv 32 3×3 pad 1 → batch norm (affine, training mode) → relu → max pool 2 → conv 64 3×3 pad 1 → batch norm → relu →
/// max pool 2 → flatten (4096) → linear 10 → softmax cross-entropy. Sites: conv1, bn1, conv2, bn2, head (the conv
/// outputs and, through their affine parameters, the batch-norm outputs). Every row trains: batch statistics, running
/// averages updated on each pass, as the peers do.
/// Rows: forward; JVP K=1 with per-example tangents on every site, drawn once outside the timing (as the MLP's and the
/// peers'); backprop (forward + backward); whole AdamW steps by backprop and by activation perturbation. The steps cycle
/// through eight random batches with random labels (see <see cref="StepBenchmarks"/>: one repeated batch is memorised
/// and drives Adam's moments into denormals).
/// </summary>
public sealed class CnnBenchmarks : ModelRowBenchmarks
{
    public const int Image = 32, InChannels = 3, Classes = 10, Batch = 128;


    /// <summary>The benchmark CNN, built once here (each side defines it once).</summary>
    public static Model Build()
    {
        var b = new ModelBuilder();
        var h = b.Input("x", new Shape(Image, Image, InChannels), differentiable: false);
        foreach (var (name, channels) in new[] { ("1", 32), ("2", 64) })
        {
            h = b.BatchNorm($"bn{name}", b.Conv2d($"conv{name}", h, channels, 3, padding: 1));
            h = b.MaxPool2d($"pool{name}", b.Activation($"relu{name}", h, ElementwiseFunction.Relu), 2);
        }
        var logits = b.Dense("head", b.Flatten("flat", h), Classes, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", Classes)), logits);
    }

    protected override (float[] X, float[] Y) MakeBatch(int index)
    {
        var x = new float[Batch * Image * Image * InChannels];
        RandomFill.Normal(new RandomKey(11, (ulong)index), 0, 0f, 1f, x);
        var labels = new float[Batch];
        RandomFill.Uniform(new RandomKey(12, (ulong)index), 0, 0f, Classes, labels);
        for (int i = 0; i < labels.Length; i++) labels[i] = MathF.Floor(labels[i]);
        return (x, labels);
    }

    protected override Model BuildModel() => Build();

    protected override int BatchSize => Batch;

    protected override (ulong Tangents, ulong Guesses) Keys => (13, 17);
}
