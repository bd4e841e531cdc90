using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Benchmarks;

/// <summary>
/// The benchmark transformer of the three-way comparison (issue 11), the same model on every side
/// (benchmarks/peers/torch_transformer.py, ForwardAD.TorchSharpPeer's tf_* rows): <see cref="TransformerSpec"/>
/// l2-h4-d128-t64 (2 pre-LN GPT-2 blocks, 4 heads, width 128, context 64, vocabulary 256, MLP ratio 4, exact GELU,
/// LayerNorm ε 1e-5), batch 32 sequences, float32; the loss is the batch mean of each sequence's mean next-token
/// cross-entropy. Initialisation as <see cref="ModelBuilder"/>'s defaults (PyTorch's): U(±1/√fan_in) weights and
/// biases, token table N(0, 1), positions N(0, 0.02²), LayerNorm γ = 1, β = 0. Sites (where the JVP's tangents enter):
/// the embedding and position outputs, every LayerNorm output, q, k, v, proj, fc1 (before GELU), fc2 and the head: 20.
/// Rows: forward; JVP K=1 with per-example tangents on every site, drawn once outside the timing; backprop (forward +
/// backward); whole AdamW steps by backprop, activation perturbation, DFA and GrAPE. Tokens are uniform in [0, 256)
/// with targets the inputs shifted by one (a window of 65 random bytes), eight batches that the steps cycle through
/// (as <see cref="StepBenchmarks"/>: a repeated batch is memorised and Adam's moments underflow into denormals).
/// </summary>
public sealed class TransformerBenchmarks : ModelRowBenchmarks
{
    public static readonly TransformerSpec Spec = new(Layers: 2, Heads: 4, Width: 128, Context: 64, Vocabulary: 256);
    public const int Batch = 32;


    /// <summary>Batch <paramref name="index"/>: each sequence a window of T + 1 uniform random bytes, x its first T, y its last T.</summary>
    protected override (float[] X, float[] Y) MakeBatch(int index)
    {
        int T = Spec.Context;
        var window = new float[Batch * (T + 1)];
        RandomFill.Uniform(new RandomKey(21, (ulong)index), 0, 0f, Spec.Vocabulary, window);
        var (x, y) = (new float[Batch * T], new float[Batch * T]);
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < T; t++)
            {
                // Floor, clamped: a uniform float can round up to the bound itself.
                x[b * T + t] = Math.Min(MathF.Floor(window[b * (T + 1) + t]), Spec.Vocabulary - 1);
                y[b * T + t] = Math.Min(MathF.Floor(window[b * (T + 1) + t + 1]), Spec.Vocabulary - 1);
            }
        return (x, y);
    }

    protected override Model BuildModel() => Spec.Build();

    protected override int BatchSize => Batch;

    protected override (ulong Tangents, ulong Guesses) Keys => (23, 27);
}
