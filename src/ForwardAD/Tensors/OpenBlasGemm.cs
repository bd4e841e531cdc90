using System.Reflection;
using System.Runtime.InteropServices;

namespace ForwardAD.Tensors;

/// <summary>
/// The system's OpenBLAS <c>cblas_sgemm</c>, found at run time. Debian: <c>apt-get install
/// libopenblas0-pthread</c>. Without it the library uses <see cref="ManagedGemm"/>.
/// </summary>
public sealed class OpenBlasGemm : Gemm
{
    private OpenBlasGemm() { }

    /// <summary><c>openblas</c>.</summary>
    public override string Name => "openblas";

    /// <summary>Null when no OpenBLAS library can be loaded.</summary>
    /// <remarks>Before the library first loads on Linux, sets OPENBLAS_THREAD_TIMEOUT=4 unless the process already has a value
    /// (see <see cref="NativeLibraries.ParkIdleOpenBlasThreads"/>).</remarks>
    public static OpenBlasGemm? TryCreate() => NativeLibraries.TryLoad(NativeLibraries.OpenBlas) ? new OpenBlasGemm() : null;

    /// <summary>Threads OpenBLAS uses for each call (its own pool).</summary>
    public static void SetThreadCount(int threads) => OpenBlas.openblas_set_num_threads(threads);

    /// <summary>OpenBLAS's thread count (<c>openblas_get_num_threads</c>): OPENBLAS_NUM_THREADS, the cores, or what
    /// <see cref="SetThreadCount"/> set.</summary>
    public override int Threads => OpenBlas.openblas_get_num_threads();

    /// <summary>True for OpenBLAS's threaded builds (<c>openblas_get_parallel</c>: 1 pthreads, as Debian's
    /// libopenblas0-pthread; 2 OpenMP), whose calls from several threads are safe; false for a serial build, which is
    /// only if built with USE_LOCKING, which the library cannot tell.</summary>
    public override bool AllowsConcurrentCalls { get; } = OpenBlas.openblas_get_parallel() != 0;

    /// <summary>OpenBLAS sums the depth in blocks of its GEMM_Q, a constant of the build and the core that it does not report
    /// (sgemm on AMD Zen: 320), and adds each block's sum to C; with β = 1 it skips its pass over C. Measured once per process:
    /// the largest of a few depths at which a β = 1 product onto an addend gives the bits of the β = 0 product plus the addend
    /// (128×128 products: past the small-matrix paths, a few milliseconds).</summary>
    public override int SingleBlockDepth => MeasuredSingleBlockDepth.Value;

    private static readonly Lazy<int> MeasuredSingleBlockDepth = new(() => MeasureSingleBlockDepth(new OpenBlasGemm()));

    /// <summary>The largest of 1024, 768, 512, 384, 320, 256, 192, 128 (0 if none) at which <paramref name="gemm"/> adds an
    /// m × n product to C in one rounding per entry, with B as stored and transposed, on deterministic data of mixed signs and magnitudes. At a depth split into
    /// blocks a large fraction of the entries round differently, so a split depth does not pass by chance.</summary>
    internal static int MeasureSingleBlockDepth(Gemm gemm, int m = 128, int n = 128)
    {
        const int deepest = 1024;
        var a = new float[m * deepest];
        var b = new float[deepest * n];
        var addend = new float[m * n];
        uint state = 0x9E3779B9;
        foreach (var values in new[] { a, b, addend })
            for (int i = 0; i < values.Length; i++)
            {
                state = state * 1664525 + 1013904223; // a linear congruential sequence: fixed data, no random stream needed
                values[i] = ((int)(state >> 8) - (1 << 23)) * (1f / (1 << 20)) * (1 + (state & 3));
            }
        var folded = new float[m * n];
        var added = new float[m * n];
        foreach (int k in new[] { 1024, 768, 512, 384, 320, 256, 192, 128 })
            if (Folds(Transpose.No, k) && Folds(Transpose.Yes, k)) return k; // B as stored and as a linear layer's weight
        return 0;

        bool Folds(Transpose transposeB, int k)
        {
            int ldb = transposeB == Transpose.No ? n : k;
            addend.CopyTo(folded, 0);
            gemm.Multiply(Transpose.No, transposeB, m, n, k, 1f, a, k, b, ldb, 1f, folded, n);
            gemm.Multiply(Transpose.No, transposeB, m, n, k, 1f, a, k, b, ldb, 0f, added, n);
            for (int i = 0; i < added.Length; i++) added[i] += addend[i];
            return MemoryMarshal.Cast<float, int>(folded.AsSpan()).SequenceEqual(MemoryMarshal.Cast<float, int>(added.AsSpan()));
        }
    }

    /// <inheritdoc/>
    /// <remarks>Calls <c>cblas_sgemm</c> with <c>CblasRowMajor</c> after checking the operands' lengths.</remarks>
    public override unsafe void Multiply(Transpose transposeA, Transpose transposeB, int m, int n, int k,
        float alpha, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
    {
        CheckOperands(transposeA, transposeB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0) return;
        fixed (float* pa = a, pb = b, pc = c)
            OpenBlas.cblas_sgemm(OpenBlas.RowMajor, ToCblas(transposeA), ToCblas(transposeB), m, n, k,
                alpha, pa, Math.Max(lda, 1), pb, Math.Max(ldb, 1), beta, pc, Math.Max(ldc, 1));
    }

    private static int ToCblas(Transpose t) => t == Transpose.No ? OpenBlas.NoTrans : OpenBlas.Trans;
}

/// <summary>The OpenBLAS entry points the library calls (CBLAS interface).</summary>
internal static unsafe partial class OpenBlas
{
    public const int RowMajor = 101, NoTrans = 111, Trans = 112;

    [LibraryImport(NativeLibraries.OpenBlas)]
    public static partial void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(NativeLibraries.OpenBlas)]
    public static partial void openblas_set_num_threads(int threads);

    [LibraryImport(NativeLibraries.OpenBlas)]
    public static partial int openblas_get_num_threads();

    /// <summary>0 for a serial build, 1 for pthreads, 2 for OpenMP.</summary>
    [LibraryImport(NativeLibraries.OpenBlas)]
    public static partial int openblas_get_parallel();
}

/// <summary>
/// The assembly's one native-library resolver: maps the logical names used in
/// <c>[LibraryImport]</c> to the versioned file names found on Linux systems.
/// </summary>
internal static class NativeLibraries
{
    public const string OpenBlas = "openblas", Mpi = "mpi", Libc = "c";

    private static readonly Dictionary<string, string[]> Candidates = new()
    {
        [OpenBlas] = ["libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0", "libopenblaso.so.0", "libopenblas.dylib", "openblas.dll", "libopenblas.dll"],
        // The MPICH ABI (libmpi.so.12: MPICH, Intel MPI, MVAPICH, Cray MPICH; Debian names MPICH's libmpich.so.12). Open MPI's
        // libmpi.so.40 has another ABI (handles are pointers to its symbols) and is deliberately not in the list.
        [Mpi] = ["libmpi.so.12", "libmpich.so.12"],
        [Libc] = ["libc.so.6"],
    };

    /// <summary>
    /// OpenBLAS's idle threads otherwise spin (<c>sched_yield</c>) for 2²⁸ cycles, ~0.1 s, after every multi-threaded call,
    /// taking the cores the backend's own kernels need between GEMMs: at two threads the spinning OpenBLAS thread held ~20–24 %
    /// of a CNN pass's samples, and OPENBLAS_THREAD_TIMEOUT=4 (2⁴ cycles: park at once) took CNN backprop from 143–155 to
    /// 117–135 ms (benchmarks/results/openblas-thread-timeout-2026-11-26.md). OpenBLAS reads the variable once, when it
    /// loads, from the C environment (which <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not
    /// reach on Unix), so it is set with libc's setenv, without overwriting a value the user gave. Linux only (the
    /// platform this is measured on); done once, before the first load. (setenv is not safe against a getenv running at the
    /// same moment on another thread: it runs once, when the first CPU backend is made, before any kernel of ours runs.)
    /// </summary>
    private static readonly Lazy<bool> ParkIdleOpenBlasThreads = new(() =>
    {
        if (OperatingSystem.IsLinux() && TryLoadHandle(Libc, out _)) _ = CLibrary.setenv("OPENBLAS_THREAD_TIMEOUT", "4", overwrite: 0);
        return true;
    });

    private static readonly Lazy<bool> Registered = new(() =>
    {
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
        return true;
    });

    /// <summary>True when the library can be loaded; registers the resolver on first use.</summary>
    public static bool TryLoad(string name)
    {
        _ = Registered.Value;
        if (name == OpenBlas) _ = ParkIdleOpenBlasThreads.Value;
        return TryLoadHandle(name, out _);
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name == OpenBlas) _ = ParkIdleOpenBlasThreads.Value; // also when OpenBLAS is first reached through an entry point
        return TryLoadHandle(name, out var handle) ? handle : IntPtr.Zero;
    }

    private static bool TryLoadHandle(string name, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        if (!Candidates.TryGetValue(name, out var files)) return false;
        foreach (var file in files)
            if (NativeLibrary.TryLoad(file, out handle)) return true;
        return false;
    }
}

/// <summary>The C library's environment (read by native libraries such as OpenBLAS when they load).</summary>
internal static partial class CLibrary
{
    /// <summary>setenv(3): 0 on success; <paramref name="overwrite"/> 0 keeps an existing value.</summary>
    [LibraryImport(NativeLibraries.Libc, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int setenv(string name, string value, int overwrite);

    /// <summary>getenv(3): the C environment's value, or null (the string belongs to the C library: read, never freed).</summary>
    public static string? GetVariable(string name) => Marshal.PtrToStringUTF8(getenv(name));

    [LibraryImport(NativeLibraries.Libc, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint getenv(string name);
}
