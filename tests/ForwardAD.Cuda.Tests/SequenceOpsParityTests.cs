using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Cuda.Tests;

/// <summary>
/// The sequence kernels of the CUDA backend (native/sequence.cu, and both GELUs in native/elementwise.cu) against the CPU
/// backend: row normalisation and its derivative (LayerNorm and RMSNorm, odd widths, widths past one warp, several channels,
/// both accumulate modes), the embedding gather (several channels, padding ids) and its scatter-add (repeated ids: same bits
/// as the CPU, which adds in the same order, and the same bits on two runs), sequence cross-entropy with ignored and all-ignored
/// examples, and a whole small sequence model's forward, JVP and gradients. Skipped, with the reason, where there is no GPU.
/// Reductions over a row are warp trees on the GPU and SIMD lanes on the CPU: those agree to float32 rounding of sums of ≤ 100
/// terms (2e-5 relative with the (1 + |x|) scale of <see cref="Host.Close"/>).
/// </summary>
public sealed class SequenceOpsParityTests(CudaFixture fixture) : IClassFixture<CudaFixture>
{
    private readonly CpuBackend _cpu = new();

    private static float[] NaNs(int n) => Enumerable.Repeat(float.NaN, n).ToArray();

    [Theory]
    [InlineData(12, 5)]
    [InlineData(7, 1)]
    [InlineData(9, 33)]
    [InlineData(300, 96)] // more rows than one grid pass of warps at small grids; width past 2 warps' lanes
    public void Row_normalisation_matches_the_cpu(int rows, int width)
    {
        var cuda = fixture.Require();
        const int channels = 3;
        var x = Host.Normal(1, rows * width).Select(v => 2 * v + 0.5f).ToArray();
        var v = Host.Normal(2, channels * rows * width);
        var start = Host.Normal(3, channels * rows * width);
        foreach (bool centre in new[] { true, false })
        {
            string what = $"{(centre ? "LayerNorm" : "RMSNorm")} rows {rows} width {width}";
            (float[] Normalized, float[] Scale) Normalize(Backend backend, float[] initialNormalized)
            {
                var normalized = backend.Upload(initialNormalized);
                var scale = backend.Upload(NaNs(rows));
                backend.NormalizeLastAxis(backend.Upload(x), width, 1e-5f, centre, normalized, scale);
                return (normalized.ToArray(), scale.ToArray());
            }
            var (cpuNormalized, cpuScale) = Normalize(_cpu, new float[rows * width]);
            var (gpuNormalized, gpuScale) = Normalize(cuda, NaNs(rows * width));
            Host.Close(cpuNormalized, gpuNormalized, 2e-5, $"{what} x̂");
            Host.Close(cpuScale, gpuScale, 2e-5, $"{what} 1/σ");
            foreach (bool accumulate in new[] { false, true })
            {
                float[] Derivative(Backend backend, float[] initial)
                {
                    var destination = backend.Upload(initial);
                    backend.NormalizeLastAxisDerivative(backend.Upload(cpuNormalized), backend.Upload(cpuScale), backend.Upload(v), centre, destination, accumulate);
                    return destination.ToArray();
                }
                Host.Close(Derivative(_cpu, start), Derivative(cuda, accumulate ? start : NaNs(start.Length)), 2e-5, $"{what} derivative accumulate={accumulate}");
            }
        }
    }

    [Theory]
    [InlineData(6, 3, 8)]
    [InlineData(2, 5, 1)]
    [InlineData(96, 130, 2048)] // widths past one scatter tile, N past one id tile
    public void Embedding_gather_and_scatter_match_the_cpu(int vocabulary, int width, int count)
    {
        var cuda = fixture.Require();
        const int channels = 2;
        var ids = Enumerable.Range(0, count).Select(i => i % 5 == 3 ? -1f : (float)((i * 7 + i / 3) % vocabulary)).ToArray(); // repeats and padding
        var table = Host.Normal(4, channels * vocabulary * width);
        var gathered = new Func<Backend, float[]>(backend =>
        {
            var destination = backend.Upload(backend == _cpu ? new float[channels * count * width] : NaNs(channels * count * width));
            backend.GatherRows(backend.Upload(table), backend.Upload(ids), width, destination);
            return destination.ToArray();
        });
        Assert.Equal(gathered(_cpu), gathered(cuda));

        var source = Host.Normal(5, count * width);
        var start = Host.Normal(6, vocabulary * width);
        foreach (bool accumulate in new[] { false, true })
        {
            float[] Scatter(Backend backend)
            {
                var destination = backend.Upload(accumulate ? start : NaNs(start.Length));
                backend.ScatterAddRows(backend.Upload(source), backend.Upload(ids), width, destination, accumulate);
                return destination.ToArray();
            }
            var gpu = Scatter(cuda);
            Assert.Equal(gpu, Scatter(cuda)); // deterministic
            Assert.Equal(Scatter(_cpu), gpu); // same order of additions as the CPU: same bits
        }
    }

    [Fact]
    public void Sequence_cross_entropy_matches_the_cpu()
    {
        var cuda = fixture.Require();
        const int examples = 5, length = 7, classes = 11;
        var logits = Host.Normal(7, examples * length * classes).Select(v => 3 * v).ToArray();
        var targets = Enumerable.Range(0, examples * length).Select(i => i / length == 4 || i % 4 == 1 ? -1f : (float)(i * 5 % classes)).ToArray();
        targets[2] = 10; // the ignore index below, a vocabulary id
        float[] Run(Backend backend)
        {
            var loss = backend.Upload(backend == _cpu ? new float[examples] : NaNs(examples));
            var error = backend.Upload(backend == _cpu ? new float[logits.Length] : NaNs(logits.Length));
            backend.SequenceCrossEntropy(backend.Upload(logits), backend.Upload(targets), length, classes, 10f, loss, error);
            return [.. loss.ToArray(), .. error.ToArray()];
        }
        var gpu = Run(cuda);
        Host.Close(Run(_cpu), gpu, 2e-5, "sequence cross-entropy (loss, then error)");
        Assert.Equal(0f, gpu[4]); // every position of example 4 ignored
    }

    [Fact]
    public void Both_gelus_match_the_cpu()
    {
        var cuda = fixture.Require();
        var x = Enumerable.Range(-1000, 2001).Select(i => i / 80f).ToArray();
        foreach (var f in new[] { ElementwiseFunction.Gelu, ElementwiseFunction.GeluTanh })
        {
            float[] Run(Backend backend, bool derivative)
            {
                var input = backend.Upload(x);
                var y = backend.Upload(new float[x.Length]);
                backend.Elementwise(f, input, y);
                if (!derivative) return y.ToArray();
                var d = backend.Upload(NaNs(x.Length));
                backend.ElementwiseDerivative(f, input, y, d);
                return d.ToArray();
            }
            // The same formulas in float32; expf and the CPU's vector exp differ by an ulp or so: 1e-6 relative.
            Host.Close(Run(_cpu, false), Run(cuda, false), 1e-6, $"{f.Name}");
            Host.Close(Run(_cpu, true), Run(cuda, true), 1e-6, $"{f.Name} derivative");
        }
    }

    /// <summary>tokens → embedding → positions → LayerNorm → dense GELU(tanh) → RMSNorm → head → sequence cross-entropy with
    /// padding: losses, the loss JVP (K = 2 channels on every site and parameter) and every parameter gradient on both backends.</summary>
    [Fact]
    public void A_sequence_model_matches_the_cpu()
    {
        var cuda = fixture.Require();
        const int batch = 4, length = 6, vocabulary = 9;
        var b = new ModelBuilder();
        var ids = b.Tokens("ids", length, vocabulary);
        var targets = b.Tokens("targets", length, vocabulary);
        var h = b.LayerNorm("ln", b.PositionalEmbedding("pos", b.Embedding("embed", ids, 8), length));
        h = b.RmsNorm("rms", b.Dense("mlp", h, 12, ElementwiseFunction.GeluTanh).Output);
        var logits = b.Dense("head", h, vocabulary, ElementwiseFunction.Identity).Output;
        var model = b.Build(b.SequenceCrossEntropy("loss", logits, targets), logits);
        var idValues = Enumerable.Range(0, batch * length).Select(i => (float)(i * 5 % vocabulary)).ToArray();
        var targetValues = Enumerable.Range(0, batch * length).Select(i => i % 7 == 2 ? -1f : (float)((i + 1) % vocabulary)).ToArray();
        (float[] Loss, float[] Tangent, float[] Gradients) Run(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 42);
            var seeds = model.Parameters.Concat(model.Sites.Select(s => s.Node)).Select(n => new TangentSeed(n, new Random.RandomKey(7, (ulong)n.Id))).ToArray();
            var plan = Plan.Compile(store, new PlanOptions(batch) { TangentCount = 2, Gradients = true, Seeds = [.. seeds] });
            plan.SetInput(ids, idValues);
            plan.SetInput(targets, targetValues);
            plan.ForwardJvp();
            plan.Backward();
            return (plan.Value(model.Loss).ToArray(), plan.Tangent(model.Loss).ToArray(), plan.ParameterGradients.ToArray());
        }
        var (cpuLoss, cpuTangent, cpuGradients) = Run(_cpu);
        var (gpuLoss, gpuTangent, gpuGradients) = Run(cuda);
        Host.Close(cpuLoss, gpuLoss, 1e-5, "losses");
        Host.Close(cpuTangent, gpuTangent, 1e-4, "loss JVP");
        Host.Close(cpuGradients, gpuGradients, 1e-4, "gradients");
    }
}
