using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Cuda.Tests;

/// <summary>
/// Attention on the CUDA backend (issue 13): cuBLAS strided-batched GEMMs against the base class's GEMM-by-GEMM loop on
/// the CPU, native/attention.cu's causal softmax and softmax-JVP rows against the CPU kernels, and a whole attention block
/// (projections, attention, output projection) planned on both backends. Row lengths 1, 5, 31, 32, 33 and 100 (a warp has
/// 32 lanes: fewer, exactly as many, and more columns than lanes). Skipped, with the reason, where there is no GPU.
///
/// The row kernels sum in another order than the CPU's SIMD sums, and expf is not TensorPrimitives.Exp, so they agree
/// within float32 rounding, not bit for bit: a softmax value p within (n + 8)·2⁻²⁴·p (n terms in the sum, a few ulp for
/// exp and the division); a softmax-JVP value within (n + 4)·2⁻²⁴·(p·|x| + p·Σ_j |p_j x_j|) (the dot product's n terms,
/// the subtraction and the product). Above the diagonal both must be exactly 0. Every destination starts as NaN, so an
/// element the kernel forgets to write shows up.
/// </summary>
public sealed class AttentionParityTests(CudaFixture fixture, ITestOutputHelper output) : IClassFixture<CudaFixture>
{
    private readonly CpuBackend _cpu = new();

    private static float[] NaNs(int n) => Enumerable.Repeat(float.NaN, n).ToArray();

    private static void Within(float[] cpu, float[] cuda, Func<int, double> bound, string what)
    {
        Assert.True(cpu.Length == cuda.Length, $"{what}: CUDA gave {cuda.Length} values, the CPU {cpu.Length}.");
        for (int i = 0; i < cpu.Length; i++)
            if (!(Math.Abs((double)cpu[i] - cuda[i]) <= bound(i))) // NaN fails too
                Assert.Fail($"{what}: at [{i}] CPU {cpu[i]:G9}, CUDA {cuda[i]:G9}, |difference| {Math.Abs((double)cpu[i] - cuda[i]):G3} > bound {bound(i):G3}.");
    }

    /// <summary>Without a GPU: the attention family is loaded with the others, defines the kernels the backend launches, sums
    /// without atomics (the same bits run to run) and indexes with 32 bits (see common.cuh).</summary>
    [Fact]
    public void The_attention_kernels_are_embedded_and_registered()
    {
        Assert.Contains("attention", KernelLibrary.Families);
        var source = KernelLibrary.Source("attention");
        Assert.Equal(["causal_softmax_rows", "softmax_jvp_rows"], KernelLibrary.KernelNames(source).Order().ToArray());
        Assert.DoesNotMatch(@"atomic\w*\s*\(", source);
        Assert.Contains("global_index32()", source);
        Assert.DoesNotContain("long long i", source);
    }

    [Theory]
    [InlineData(1, 4)]
    [InlineData(5, 3)]
    [InlineData(31, 2)]
    [InlineData(32, 2)]
    [InlineData(33, 2)]
    [InlineData(100, 3)]
    public void Causal_softmax_rows_match_the_cpu(int size, int matrices)
    {
        var cuda = fixture.Require();
        int n = matrices * size * size;
        var scores = Host.Normal(size, n).Select(v => 3 * v).ToArray(); // peaked rows: exp over a wide range
        var cpu = _cpu.Upload(new float[n]);
        _cpu.CausalSoftmaxRows(_cpu.Upload(scores), size, cpu);
        var expected = cpu.ToArray();
        var gpu = cuda.Upload(NaNs(n));
        cuda.CausalSoftmaxRows(cuda.Upload(scores), size, gpu);
        double ulp = Math.ScaleB(1.0, -24);
        Within(expected, gpu.ToArray(), i => (i % size) > (i / size % size) ? 0 : (size + 8) * ulp * expected[i], $"CausalSoftmaxRows size {size}");
        var inPlace = cuda.Upload(scores);
        cuda.CausalSoftmaxRows(inPlace, size, inPlace);
        Within(expected, inPlace.ToArray(), i => (i % size) > (i / size % size) ? 0 : (size + 8) * ulp * expected[i], $"CausalSoftmaxRows in place, size {size}");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 3)]
    [InlineData(32, 1)]
    [InlineData(33, 3)]
    [InlineData(100, 2)]
    public void Softmax_jvp_rows_match_the_cpu(int columns, int channels)
    {
        var cuda = fixture.Require();
        int rows = 2 * columns, n = rows * columns;
        var p = _cpu.Upload(new float[rows * columns]); // causal probabilities: zeros above each diagonal
        _cpu.CausalSoftmaxRows(_cpu.Upload(Host.Normal(3 + columns, n)), columns, p);
        var probabilities = p.ToArray();
        var x = Host.Normal(7 + columns, channels * n);
        var cpu = _cpu.Upload(new float[channels * n]);
        _cpu.SoftmaxJvpRows(p, _cpu.Upload(x), columns, cpu);
        var expected = cpu.ToArray();
        var magnitude = new double[channels * rows];
        for (int r = 0; r < channels * rows; r++)
            for (int j = 0; j < columns; j++) magnitude[r] += Math.Abs((double)probabilities[r % rows * columns + j] * x[r * columns + j]);
        double ulp = Math.ScaleB(1.0, -24);
        double Bound(int i) => (columns + 4) * ulp * probabilities[i % n] * (Math.Abs(x[i]) + magnitude[i / columns]);
        var gpu = cuda.Upload(NaNs(channels * n));
        cuda.SoftmaxJvpRows(cuda.Upload(probabilities), cuda.Upload(x), columns, gpu);
        Within(expected, gpu.ToArray(), Bound, $"SoftmaxJvpRows columns {columns} channels {channels}");
        var inPlace = cuda.Upload(x);
        cuda.SoftmaxJvpRows(cuda.Upload(probabilities), inPlace, columns, inPlace);
        Within(expected, inPlace.ToArray(), Bound, $"SoftmaxJvpRows in place, columns {columns} channels {channels}");
    }

    /// <summary>Attention's own shapes: per-head slices of [B, T, D] sequences (leading dimension D, stride T·D) against
    /// [B, H, T, T] blocks (stride H·T²), every transpose, β = 0 and 1. Within (k + 2)·2⁻²⁴·Σ|a||b| + |β c|·2⁻²⁴ (Higham).</summary>
    [Theory]
    [InlineData(Transpose.No, Transpose.Yes)]
    [InlineData(Transpose.No, Transpose.No)]
    [InlineData(Transpose.Yes, Transpose.No)]
    public void Strided_batched_gemm_matches_the_cpu(Transpose ta, Transpose tb)
    {
        var cuda = fixture.Require();
        const int batch = 3, length = 33, width = 12, heads = 3, dh = width / heads, h = 1;
        // S-shaped product (T×T from T×dh by dh×T) for (No, Yes); O-shaped (T×dh from T×T by T×dh) otherwise.
        bool square = tb == Transpose.Yes;
        int m = length, n = square ? length : dh, k = square ? dh : length;
        int sequence = batch * length * width, block = heads * length * length, squares = batch * block;
        var (aLength, lda, strideA, aOffset) = square ? (sequence, width, (long)length * width, h * dh) : (squares, length, (long)block, h * length * length);
        var (bLength, ldb, strideB, bOffset) = (sequence, width, (long)length * width, h * dh);
        var (cLength, ldc, strideC, cOffset) = square ? (squares, length, (long)block, h * length * length) : (sequence, width, (long)length * width, h * dh);
        var a = Host.Normal(1, aLength);
        var b = Host.Normal(2, bLength);
        var c = Host.Normal(3, cLength);
        foreach (float beta in new[] { 0f, 1f })
        {
            // The CPU runs Backend's default (GEMM by GEMM on slices), CUDA one cublasSgemmStridedBatched.
            float[] Run(Backend backend, float[] left, float[] right, float[] start)
            {
                var (av, bv, cv) = (backend.Upload(left), backend.Upload(right), backend.Upload(start));
                backend.GemmStridedBatched(ta, tb, m, n, k, 0.5f, av.Slice(aOffset, aLength - aOffset), lda, strideA,
                    bv.Slice(bOffset, bLength - bOffset), ldb, strideB, beta, cv.Slice(cOffset, cLength - cOffset), ldc, strideC, batch);
                return cv.ToArray();
            }
            var expected = Run(_cpu, a, b, c);
            var magnitude = Run(_cpu, [.. a.Select(MathF.Abs)], [.. b.Select(MathF.Abs)], [.. c.Select(MathF.Abs)]);
            var actual = Run(cuda, a, b, c);
            Within(expected, actual, i => (k + 2) * Math.ScaleB(1.0, -24) * (magnitude[i] + 1e-30), $"GemmStridedBatched {ta}{tb} β={beta}");
        }
    }

    /// <summary>A block x → q, k, v projections → attention (3 heads) → output projection → MSE, on both backends with the
    /// same parameters (the initialisation draws the same numbers): forward, K = 3 JVP with generated tangents on the sites,
    /// the backprop gradient, and a 2-channel pull-back from the attention to the q projection. Relative 1e-4, as the other
    /// plan-level parity tests (sums of ≤ a few hundred float32 terms in another order).</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(17)]
    [InlineData(40)]
    public void An_attention_block_agrees_with_the_cpu(int length)
    {
        var cuda = fixture.Require();
        const int batch = 3, inputs = 8, width = 12, heads = 3;
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(length, inputs));
        var q = b.Dense("q", x, width, ElementwiseFunction.Identity).Output;
        var k = b.Dense("k", x, width, ElementwiseFunction.Identity).Output;
        var v = b.Dense("v", x, width, ElementwiseFunction.Identity).Output;
        var attention = b.CausalSelfAttention("attention", q, k, v, heads);
        var y = b.Flatten("flat", b.Dense("out", attention, inputs, ElementwiseFunction.Identity).Output);
        var target = b.Input("target", y.Shape, differentiable: false);
        var model = b.Build(b.MeanSquaredError("loss", y, target), y);
        var xs = Host.Normal(5, batch * length * inputs);
        var targets = Host.Normal(6, batch * y.Shape.ElementCount);
        var cotangent = Host.Normal(7, 2 * batch * length * width);
        float[][] Run(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var plan = Plan.Compile(store, new PlanOptions(batch)
            {
                Gradients = true, TangentCount = 3,
                Seeds = [.. model.Sites.Select(s => new TangentSeed(s.Node, new RandomKey(3, (ulong)s.Node.Id)))],
            });
            plan.SetInput(model["x"], xs);
            plan.SetInput(model["target"], targets);
            plan.ForwardJvp();
            plan.Backward();
            var pullBack = plan.CreatePullBack([model["attention"]], model["q"], 2);
            backend.CopyFromHost(cotangent, pullBack.Cotangent(model["attention"]));
            pullBack.Run();
            return [plan.Value(model["attention"]).ToArray(), plan.Tangent(model["attention"]).ToArray(), plan.Tangent(model.Loss).ToArray(),
                plan.ParameterGradients.ToArray(), pullBack.Cotangent(model["q"]).ToArray()];
        }
        var (onCpu, onGpu) = (Run(_cpu), Run(cuda));
        string[] names = ["attention output", "attention tangent", "loss tangent", "gradient", "pull-back to q"];
        for (int i = 0; i < names.Length; i++) Host.Close(onCpu[i], onGpu[i], 1e-4, $"T={length}: {names[i]}");
        output.WriteLine($"T={length}: CPU and CUDA agree on {string.Join(", ", names)}");
    }
}
