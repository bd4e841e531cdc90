using FsCheck;
using FsCheck.Fluent;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

public class GemmTests
{
    /// <summary>Both implementations, always: where OpenBLAS is not installed its case is reported as skipped, not dropped.</summary>
    public static TheoryData<string> Implementations() => ["managed", "openblas"];

    internal static Gemm Create(string name)
    {
        if (name != "openblas") return new ManagedGemm();
        var openBlas = OpenBlasGemm.TryCreate();
        Assert.SkipWhen(openBlas is null, "OpenBLAS (libopenblas.so.0) is not installed: apt-get install libopenblas0-pthread, as .ci/run does");
        return openBlas!;
    }

    /// <summary>Loading OpenBLAS first sets OPENBLAS_THREAD_TIMEOUT=4 in the C environment, where OpenBLAS reads it (idle
    /// threads park at once instead of spinning ~0.1 s after each call), and keeps a value the process was started with.</summary>
    [Fact]
    public void Loading_openblas_parks_its_idle_threads_unless_the_user_chose()
    {
        _ = Create("openblas");
        string? given = Environment.GetEnvironmentVariable("OPENBLAS_THREAD_TIMEOUT"); // the managed copy of the start-up environment
        Assert.Equal(given ?? "4", CLibrary.GetVariable("OPENBLAS_THREAD_TIMEOUT"));
    }

    public sealed record Case(int M, int N, int K, bool TransposeA, bool TransposeB, int Pad, float Alpha, float Beta, int Seed);

    /// <summary>Random sizes (including edge tiles and blocks beyond one packing panel), transposes, padding,
    /// α and β, against a float64 triple loop. Error bound: float32 rounding grows like √K·ε·Σ|a||b|.</summary>
    [Theory]
    [MemberData(nameof(Implementations))]
    public void Matches_a_float64_reference(string implementation)
    {
        var gemm = Create(implementation);
        Prop.ForAll((from m in Gen.Choose(1, 40)
                     from n in Gen.Choose(1, 40)
                     from k in Gen.OneOf(Gen.Choose(1, 40), Gen.Choose(250, 300))
                     from ta in Gen.Elements(false, true)
                     from tb in Gen.Elements(false, true)
                     from pad in Gen.Choose(0, 3)
                     from alpha in Gen.Elements(1f, -0.5f, 2f)
                     from beta in Gen.Elements(0f, 1f, 0.25f)
                     from seed in Gen.Choose(0, 10000)
                     select new Case(m, n, k, ta, tb, pad, alpha, beta, seed)).ToArbitrary(), c =>
        {
            var (aRows, aCols) = c.TransposeA ? (c.K, c.M) : (c.M, c.K);
            var (bRows, bCols) = c.TransposeB ? (c.N, c.K) : (c.K, c.N);
            int lda = aCols + c.Pad, ldb = bCols + c.Pad, ldc = c.N + c.Pad;
            var a = Problem.Normal(c.Seed, aRows * lda, 1f);
            var b = Problem.Normal(c.Seed + 1, bRows * ldb, 1f);
            var cm = Problem.Normal(c.Seed + 2, c.M * ldc, 1f);
            if (c.Beta == 0) Array.Fill(cm, float.NaN); // β = 0 must not read C
            var original = (float[])cm.Clone();
            gemm.Multiply(c.TransposeA ? Transpose.Yes : Transpose.No, c.TransposeB ? Transpose.Yes : Transpose.No,
                c.M, c.N, c.K, c.Alpha, a, lda, b, ldb, c.Beta, cm, ldc);
            for (int i = 0; i < c.M; i++)
                for (int j = 0; j < c.N; j++)
                {
                    double sum = 0, magnitude = 0;
                    for (int p = 0; p < c.K; p++)
                    {
                        double x = c.TransposeA ? a[p * lda + i] : a[i * lda + p];
                        double y = c.TransposeB ? b[j * ldb + p] : b[p * ldb + j];
                        sum += x * y;
                        magnitude += Math.Abs(x * y);
                    }
                    double expected = c.Alpha * sum + (c.Beta == 0 ? 0 : c.Beta * original[i * ldc + j]);
                    double bound = 4 * Math.Sqrt(c.K) * 6e-8 * (Math.Abs(c.Alpha) * magnitude + 1) + 1e-6;
                    if (Math.Abs(cm[i * ldc + j] - expected) > bound)
                        throw new Xunit.Sdk.XunitException($"{c}: C[{i},{j}] = {cm[i * ldc + j]}, expected {expected} (bound {bound}).");
                }
            // Padding columns of C are untouched.
            for (int i = 0; i < c.M; i++)
                for (int j = c.N; j < ldc; j++)
                    if (!cm[i * ldc + j].Equals(original[i * ldc + j])) throw new Xunit.Sdk.XunitException($"{c}: padding C[{i},{j}] was written.");
            return true;
        }).CheckFixed();
    }

    [Theory]
    [MemberData(nameof(Implementations))]
    public void Too_short_operands_are_rejected_with_their_sizes(string implementation)
    {
        var gemm = Create(implementation);
        var error = Assert.Throws<ArgumentException>(() =>
            gemm.Multiply(Transpose.No, Transpose.No, 3, 3, 3, 1f, new float[8], 3, new float[9], 3, 0f, new float[9], 3));
        Assert.Contains("A is 3×3", error.Message);
        Assert.Contains("has 8", error.Message);
    }
    /// <summary>A strided batch of small products (attention's per-head shape) spread over three threads gives the bits of
    /// the one-at-a-time loop, for every transpose, α ≠ 1 and β = 1 (accumulating), with the head-column strides attention
    /// uses (views that start inside a row and overlap from one product to the next); so does a product too large to spread,
    /// and a GEMM that may not be called concurrently (the managed one) at three threads.</summary>
    [Theory]
    [MemberData(nameof(Implementations))]
    public void A_strided_batch_spread_over_threads_gives_the_one_thread_bits(string implementation)
    {
        var gemm = Create(implementation);
        // The spread needs a GEMM that may be called concurrently: .ci/run installs OpenBLAS's pthread build.
        Assert.Equal(implementation == "openblas", gemm.AllowsConcurrentCalls);
        var serial = new ForwardAD.Backends.CpuBackend(gemm) { Threads = 1 };
        var spread = new ForwardAD.Backends.CpuBackend(gemm) { Threads = 3 };
        const int count = 128, length = 32, width = 64, head = 16; // 32×32×16 products, 128 of them: 6.6–13·10⁴ outputs, spread at three threads
        foreach (var (m, n, k, ta, tb) in new[] { (length, length, head, Transpose.No, Transpose.Yes), (length, head, length, Transpose.No, Transpose.No),
                     (length, head, length, Transpose.Yes, Transpose.No), (70, 70, 70, Transpose.No, Transpose.Yes) })
            foreach (float beta in new[] { 0f, 1f })
            {
                bool square = m == n; // S = Q Kᵀ: sequences [count, T, D] in, [count, T, T] out; O = P V: the other way round
                int lda = ta == Transpose.No && !square ? m : width, ldb = tb == Transpose.Yes || n == head ? width : n;
                var (aRows, aColumns) = ta == Transpose.No ? (m, k) : (k, m);
                var (bRows, bColumns) = tb == Transpose.No ? (k, n) : (n, k);
                lda = Math.Max(lda, aColumns); ldb = Math.Max(ldb, bColumns);
                int ldc = square ? n : width;
                long strideA = aRows * (long)lda, strideB = bRows * (long)ldb, strideC = m * (long)ldc;
                float[] Run(ForwardAD.Backends.CpuBackend backend)
                {
                    ForwardAD.Backends.View Of(float[] values) { var view = new ForwardAD.Backends.View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
                    var (a, b, c) = (Of(Problem.Normal(1, (int)(strideA * count) + head, 1f)), Of(Problem.Normal(2, (int)(strideB * count) + head, 1f)),
                        Of(Problem.Normal(3, (int)(strideC * count), 1f)));
                    // From column `head` on, as attention's second head reads its columns of [T, D] sequences.
                    backend.GemmStridedBatched(ta, tb, m, n, k, 0.25f, a.Slice(head, a.Length - head), lda, strideA, b.Slice(head, b.Length - head), ldb, strideB,
                        beta, c, ldc, strideC, count);
                    var result = new float[c.Length];
                    backend.CopyToHost(c, result);
                    return result;
                }
                var expected = Run(serial);
                var actual = Run(spread);
                Assert.True(Bits.Same(expected, actual), $"{m}×{n}×{k} {ta}/{tb} β = {beta}: the spread batch differs from the loop.");
                Assert.Contains(expected, value => value != 0f); // the products were written
            }
    }
}
