using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Addends that ride in a product's C (β = 1): a linear layer's bias in its forward product and a seed injected at a linear
/// site in its tangent product. Up to the GEMM's <see cref="Gemm.SingleBlockDepth"/> this is the bits of adding them after a
/// β = 0 product; these tests hold the GEMMs to that depth and the layers to those bits.
/// </summary>
public class GemmAddendTests
{
    public static TheoryData<string> Implementations() => GemmTests.Implementations();

    private static Gemm Create(string name) => GemmTests.Create(name);

    /// <summary>The GEMM as it is, without a single-block depth: layers then add biases and seeds in passes of their own.</summary>
    private sealed class Unfolded(Gemm inner) : Gemm
    {
        public override string Name => inner.Name;
        public override int Threads => inner.Threads;
        public override bool AllowsConcurrentCalls => inner.AllowsConcurrentCalls;
        public override void Multiply(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha, ReadOnlySpan<float> a, int lda,
            ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc) =>
            inner.Multiply(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /// <summary>The managed kernel reports its depth block, and measuring it finds the same; OpenBLAS's measured depth is at
    /// least the 128 of a transformer's products (its K block on every x86 core it ships kernels for is larger).</summary>
    [Theory]
    [MemberData(nameof(Implementations))]
    public void The_reported_depth_is_the_one_measured(string implementation)
    {
        var gemm = Create(implementation);
        Assert.Equal(OpenBlasGemm.MeasureSingleBlockDepth(gemm), gemm.SingleBlockDepth);
        Assert.InRange(gemm.SingleBlockDepth, 128, 1024);
    }

    /// <summary>At the reported depth, on other shapes and transposes than the measurement's, an addend in C gives the bits of
    /// adding it after the product; a little more than twice as deep (three depth blocks) it does not, so the depth is where
    /// the GEMM's rounding changes, not a bound any depth would pass.</summary>
    [Theory]
    [MemberData(nameof(Implementations))]
    public void An_addend_in_C_keeps_the_bits_up_to_the_depth_and_not_past_it(string implementation)
    {
        var gemm = Create(implementation);
        int depth = gemm.SingleBlockDepth;
        foreach (var (ta, tb) in new[] { (Transpose.No, Transpose.Yes), (Transpose.Yes, Transpose.No), (Transpose.No, Transpose.No) })
        {
            Assert.True(Folded(gemm, ta, tb, 300, 70, depth, out int differ), $"{ta}/{tb} at k = {depth}: {differ} entries differ");
            Assert.True(Folded(gemm, ta, tb, 300, 70, depth / 3, out differ), $"{ta}/{tb} at k = {depth / 3}: {differ} entries differ");
            Assert.False(Folded(gemm, ta, tb, 300, 70, 2 * depth + 5, out _), $"{ta}/{tb} at k = {2 * depth + 5}: every entry the same");
        }
    }

    private static bool Folded(Gemm gemm, Transpose ta, Transpose tb, int m, int n, int k, out int differ)
    {
        var a = Problem.Normal(m + k, m * k, 1f);
        var b = Problem.Normal(n + k, k * n, 1f);
        var addend = Problem.Normal(m * n, m * n, 2f);
        var folded = (float[])addend.Clone();
        var added = new float[m * n];
        int lda = ta == Transpose.No ? k : m, ldb = tb == Transpose.No ? n : k;
        gemm.Multiply(ta, tb, m, n, k, 1f, a, lda, b, ldb, 1f, folded, n);
        gemm.Multiply(ta, tb, m, n, k, 1f, a, lda, b, ldb, 0f, added, n);
        for (int i = 0; i < added.Length; i++) added[i] += addend[i];
        differ = Enumerable.Range(0, added.Length).Count(i => BitConverter.SingleToInt32Bits(added[i]) != BitConverter.SingleToInt32Bits(folded[i]));
        return differ == 0;
    }

    /// <summary>
    /// A transformer (products of depth 96 and 384: on either side of OpenBLAS's 320 on Zen, of the managed kernel's 256) and an MLP with biases: every value and tangent of a forward + JVP with
    /// seeds drawn at every linear layer and layer norm is the same bits whether biases and seeds ride in the products or
    /// are added in passes of their own (the GEMM wrapped to report no single-block depth), at one and three threads.
    /// </summary>
    [Theory]
    [InlineData("transformer", 1)]
    [InlineData("transformer", 3)]
    [InlineData("mlp", 1)]
    public void Biases_and_seeds_in_the_products_keep_every_value_and_tangent(string model, int threads)
    {
        var gemm = Gemm.CreateDefault();
        Assert.True(gemm.SingleBlockDepth >= 128, $"{gemm.Name} reports depth {gemm.SingleBlockDepth}: nothing would be folded");
        var folded = Run(model, new CpuBackend(gemm) { Threads = threads });
        var separate = Run(model, new CpuBackend(new Unfolded(gemm)) { Threads = threads });
        Assert.Equal(separate.Count, folded.Count);
        for (int i = 0; i < folded.Count; i++)
            Assert.True(Bits.Same(separate[i].Values, folded[i].Values), $"{folded[i].Name} differs");
    }

    private static List<(string Name, float[] Values)> Run(string kind, CpuBackend backend)
    {
        var problem = kind == "transformer"
            ? TransformerTests.Randomized(new TransformerSpec(Layers: 2, Heads: 2, Width: 96, Context: 6, Vocabulary: 23), 5, 3, backend: backend)
            : Problem.RandomMlp(6, ElementwiseFunction.Gelu, 9, inputs: 40, widths: [64, 48], outputs: 7, backend: backend);
        var model = problem.Model;
        var seeded = model.Nodes.Where(n => n.Op is LinearOp || n.Op.Kind.Contains("norm")).ToArray();
        Assert.Contains(seeded, n => n.Op is LinearOp);
        var plan = problem.Compile(new PlanOptions(problem.BatchSize)
        {
            TangentCount = 2,
            Seeds = [.. seeded.Select(n => new TangentSeed(n, new RandomKey(9, (ulong)n.Id)))],
        });
        plan.ForwardJvp();
        var results = new List<(string, float[])>();
        foreach (var node in model.Nodes.Where(n => !n.Op.IsLeaf))
        {
            results.Add(($"{node} value", plan.Value(node).ToArray()));
            if (!plan.Tangent(node).IsEmpty) results.Add(($"{node} tangent", plan.Tangent(node).ToArray()));
        }
        return results;
    }
}
