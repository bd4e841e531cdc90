using System.Runtime.InteropServices;
using ForwardAD.Backends;
using ForwardAD.Cuda.Interop;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Cuda;

/// <summary>Device memory of the CUDA backend: a block from the backend's caching allocator.</summary>
public sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaBackend _backend;
    private readonly int _length;

    internal CudaBuffer(CudaBackend backend, ulong pointer, int length) => (_backend, Pointer, _length) = (backend, pointer, length);

    /// <summary>The device address of the block's first float (a CUdeviceptr), as the kernels and cuBLAS receive it.</summary>
    public ulong Pointer { get; }
    /// <summary>The number of floats the buffer was allocated for; its block may be larger (the allocator rounds sizes up).</summary>
    public override int Length => _length;
    /// <summary>The <see cref="CudaBackend"/> that allocated the buffer: only its kernels may read or write it.</summary>
    public override Backend Backend => _backend;
}

/// <summary>
/// The CUDA backend: the <see cref="Backend"/> kernel set on one device and one stream, GEMMs by cuBLAS, the rest
/// by the kernels of native/*.cu. Everything a plan runs stays on the device; the host only sees the scalars it
/// asks for (sums and norms) and the copies it makes explicitly. TF32 tensor-core GEMMs are off by default
/// (<see cref="UseTf32"/>): float32 results then match the CPU backend within float32 rounding.
/// </summary>
public sealed unsafe class CudaBackend : Backend, IDisposable
{
    private const int Threads = 256;

    private readonly PrimaryContextHandle _context;
    private readonly StreamHandle _stream = new();
    private readonly CublasHandle _cublas = new();
    private readonly KernelLibrary _kernels;
    private readonly ulong _scalar; // one double on the device for reductions
    private readonly uint _maxBlocks;
    private bool _tf32;

    private CudaBackend(int ordinal)
    {
        CudaDriver.Check(CudaDriver.cuInit(0), "cuInit");
        CudaDriver.Check(CudaDriver.cuDeviceGetCount(out var count), "cuDeviceGetCount");
        if (ordinal < 0 || ordinal >= count) throw new ArgumentOutOfRangeException(nameof(ordinal), $"CUDA device {ordinal} does not exist; this machine has {count}.");
        CudaDriver.Check(CudaDriver.cuDeviceGet(out var device, ordinal), "cuDeviceGet");
        var name = stackalloc byte[256];
        CudaDriver.Check(CudaDriver.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        DeviceName = Marshal.PtrToStringUTF8((IntPtr)name) ?? $"device {ordinal}";
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out var major, CudaDriver.AttributeComputeCapabilityMajor, device), "cuDeviceGetAttribute");
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out var minor, CudaDriver.AttributeComputeCapabilityMinor, device), "cuDeviceGetAttribute");
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out var multiprocessors, CudaDriver.AttributeMultiprocessorCount, device), "cuDeviceGetAttribute");
        ComputeCapability = (major, minor);
        _maxBlocks = (uint)Math.Max(1, multiprocessors * 16);
        _context = new PrimaryContextHandle(device);
        CudaDriver.Check(CudaDriver.cuDevicePrimaryCtxRetain(out var context, device), "cuDevicePrimaryCtxRetain");
        _context.Attach(context);
        CudaDriver.Check(CudaDriver.cuCtxSetCurrent(context), "cuCtxSetCurrent");
        Allocator = new DeviceAllocator(context);
        CudaDriver.Check(CudaDriver.cuStreamCreate(out var stream, CudaDriver.StreamNonBlocking), "cuStreamCreate");
        _stream.Attach(stream);
        CuBlas.Check(CuBlas.cublasCreate(out var cublas), "cublasCreate_v2");
        _cublas.Attach(cublas);
        CuBlas.Check(CuBlas.cublasSetStream(cublas, stream), "cublasSetStream_v2");
        CuBlas.Check(CuBlas.cublasSetMathMode(cublas, CuBlas.DefaultMath), "cublasSetMathMode");
        _kernels = new KernelLibrary(major, minor);
        _scalar = Allocator.Allocate(sizeof(double));
    }

    /// <summary>Opens a device (0 by default). Throws <see cref="CudaException"/> or <see cref="DllNotFoundException"/>
    /// with the reason when there is no usable GPU; <see cref="TryCreate"/> returns the reason instead.</summary>
    public static CudaBackend Create(int ordinal = 0) => new(ordinal);

    /// <summary>The backend, or null and the reason (no driver, no device, no cuBLAS) — for tests and tools that fall back to the CPU.</summary>
    public static CudaBackend? TryCreate(out string reason, int ordinal = 0)
    {
        foreach (var library in new[] { NativeLibraries.Driver, NativeLibraries.CuBlas })
            if (!NativeLibraries.TryLoad(library, out var why)) { reason = $"no CUDA {(library == NativeLibraries.Driver ? "driver" : "cuBLAS")}: {why}"; return null; }
        try
        {
            reason = "";
            return new CudaBackend(ordinal);
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException or ArgumentOutOfRangeException or InvalidOperationException)
        {
            reason = e.Message;
            return null;
        }
    }

    /// <summary>The device's name as the driver reports it (cuDeviceGetName), for example "NVIDIA H100 80GB HBM3".</summary>
    public string DeviceName { get; }
    /// <summary>The device's compute capability (9.0 for an H100): the architecture NVRTC compiles the kernels for.</summary>
    public (int Major, int Minor) ComputeCapability { get; }
    /// <summary>The caching allocator every buffer of this backend comes from; its counters show the device memory in use.</summary>
    public DeviceAllocator Allocator { get; }
    /// <summary>One line per kernel family (native/*.cu) saying where its module came from: a fatbin built by CMake, or the
    /// embedded sources compiled by NVRTC (or taken from its on-disk cache). For diagnostics.</summary>
    public IReadOnlyList<string> KernelOrigins => _kernels.Origins;
    internal IntPtr Stream => _stream.DangerousGetHandle();
    /// <summary>"cuda (device name, sm_XY)", with ", tf32" appended while <see cref="UseTf32"/> is on.</summary>
    public override string Name => $"cuda ({DeviceName}, sm_{ComputeCapability.Major}{ComputeCapability.Minor}{(_tf32 ? ", tf32" : "")})";

    /// <summary>TF32 tensor-core GEMMs (10-bit mantissa inputs): faster on Ampere and later, less exact. Off by default.</summary>
    public bool UseTf32
    {
        get => _tf32;
        set
        {
            CuBlas.Check(CuBlas.cublasSetMathMode(_cublas.DangerousGetHandle(), value ? CuBlas.Tf32TensorOpMath : CuBlas.DefaultMath), "cublasSetMathMode");
            _tf32 = value;
        }
    }

    /// <summary>Waits until every queued kernel and copy has finished.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuStreamSynchronize(Stream), "cuStreamSynchronize");
    }

    /// <summary>Every operation that reaches the driver or cuBLAS starts here: the backend may be used from any thread
    /// (one at a time), and the driver's current context is per thread. See <see cref="CudaDriver.MakeCurrent"/>.</summary>
    internal void MakeCurrent() => CudaDriver.MakeCurrent(_context.DangerousGetHandle());

    /// <summary>One launch per rule over the whole vector: 16K-element tiles (the CPU's L2 size) cost an 8M-parameter
    /// AdamW step about 1,000 launches, measured at 10 ms on an H200 where the work itself takes well under one.</summary>
    public override int FusedTileElements => int.MaxValue;

    /// <summary>Unbounded: a convolution builds the im2col columns of the whole batch and runs one GEMM over them.</summary>
    public override int ConvolutionPassElements => int.MaxValue;

    /// <summary>A <see cref="CudaBuffer"/> of <paramref name="length"/> floats (at least one) from <see cref="Allocator"/>;
    /// its contents are undefined. Throws <see cref="CudaOutOfMemoryException"/> when the device is full.</summary>
    public override DeviceBuffer Allocate(int length) => new CudaBuffer(this, Allocator.Allocate(Math.Max(1, length) * (long)sizeof(float)), length);

    /// <summary>Returns the buffer's block to the caching allocator (<see cref="DeviceAllocator.Return"/>), where the next
    /// allocation of its size reuses it.</summary>
    public override void Release(DeviceBuffer buffer)
    {
        base.Release(buffer);
        Allocator.Return(((CudaBuffer)buffer).Pointer);
    }

    /// <summary>Bytes of <paramref name="elements"/> floats, in 64 bits: the int product overflows from 2^29 floats (2 GiB) on.</summary>
    internal static nuint ByteCount(int elements) => (nuint)(elements * (long)sizeof(float));

    private ulong Pointer(View view)
    {
        if (view.Buffer is not CudaBuffer buffer || buffer.Backend != this)
            throw new ArgumentException(view.IsEmpty ? "A symbolic zero (empty view) reached a CUDA kernel." : $"The view lives on {view.Buffer!.Backend.Name}, not on this CUDA backend.");
        return buffer.Pointer + (ulong)view.Offset * sizeof(float);
    }

    /// <inheritdoc/>
    /// <remarks>Synchronises the stream before returning, so <paramref name="source"/> may be reused at once. Throws
    /// <see cref="ArgumentException"/> when the lengths differ or the view is not on this backend.</remarks>
    public override void CopyFromHost(ReadOnlySpan<float> source, View destination)
    {
        if (source.Length != destination.Length) throw new ArgumentException($"Copy of {source.Length} values into a view of {destination.Length}.");
        MakeCurrent();
        fixed (float* pointer = source)
            CudaDriver.Check(CudaDriver.cuMemcpyHtoDAsync(Pointer(destination), pointer, ByteCount(source.Length), Stream), "cuMemcpyHtoDAsync_v2");
        Synchronize(); // the host memory is pageable and may be reused as soon as we return
    }

    /// <inheritdoc/>
    /// <remarks>Waits for every queued kernel, then copies: the values are final when it returns. Throws
    /// <see cref="ArgumentException"/> when the lengths differ or the view is not on this backend.</remarks>
    public override void CopyToHost(View source, Span<float> destination)
    {
        if (source.Length != destination.Length) throw new ArgumentException($"Copy of a view of {source.Length} values into {destination.Length}.");
        MakeCurrent();
        fixed (float* pointer = destination)
            CudaDriver.Check(CudaDriver.cuMemcpyDtoHAsync(pointer, Pointer(source), ByteCount(source.Length), Stream), "cuMemcpyDtoHAsync_v2");
        Synchronize();
    }

    /// <summary>Row-major C = α op(A) op(B) + β C through column-major cuBLAS: Cᵀ = op(B)ᵀ op(A)ᵀ, i.e. the operands swapped
    /// with the same transpose flags and m, n exchanged.</summary>
    public override void Gemm(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha, View a, int lda, View b, int ldb, float beta, View c, int ldc)
    {
        if (m == 0 || n == 0) return;
        MakeCurrent();
        int opA = transposeA == Transpose.No ? CuBlas.OperationNone : CuBlas.OperationTranspose;
        int opB = transposeB == Transpose.No ? CuBlas.OperationNone : CuBlas.OperationTranspose;
        CuBlas.Check(CuBlas.cublasGemmEx(_cublas.DangerousGetHandle(), opB, opA, n, m, k, &alpha,
            Pointer(b), CuBlas.DataTypeFloat32, Math.Max(1, ldb), Pointer(a), CuBlas.DataTypeFloat32, Math.Max(1, lda), &beta,
            Pointer(c), CuBlas.DataTypeFloat32, Math.Max(1, ldc), _tf32 ? CuBlas.Compute32FFastTf32 : CuBlas.Compute32F, CuBlas.GemmDefault), "cublasGemmEx");
    }

    /// <summary>K independent GEMMs with fixed strides in one call (C_i = α op(A_i) op(B_i) + β C_i), row-major like <see cref="Gemm"/>:
    /// one cublasSgemmStridedBatched (operands swapped as in <see cref="Gemm"/>; the math mode, TF32 or not, applies).</summary>
    public override void GemmStridedBatched(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha, View a, int lda, long strideA,
        View b, int ldb, long strideB, float beta, View c, int ldc, long strideC, int count)
    {
        if (m == 0 || n == 0 || count == 0) return;
        MakeCurrent();
        int opA = transposeA == Transpose.No ? CuBlas.OperationNone : CuBlas.OperationTranspose;
        int opB = transposeB == Transpose.No ? CuBlas.OperationNone : CuBlas.OperationTranspose;
        CuBlas.Check(CuBlas.cublasSgemmStridedBatched(_cublas.DangerousGetHandle(), opB, opA, n, m, k, &alpha, Pointer(b), ldb, strideB,
            Pointer(a), lda, strideA, &beta, Pointer(c), ldc, strideC, count), "cublasSgemmStridedBatched");
    }

    private void Launch(string kernel, long work, void** arguments, int argumentCount)
    {
        uint blocks = (uint)Math.Clamp((work + Threads - 1) / Threads, 1, _maxBlocks);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels[kernel], blocks, 1, 1, Threads, 1, 1, 0, Stream, arguments, null), $"cuLaunchKernel ({kernel})");
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>fill</c> (native/elementwise.cu).</remarks>
    public override void Fill(float value, View destination)
    {
        ulong d = Pointer(destination); long n = destination.Length;
        void** args = stackalloc void*[] { &d, &value, &n };
        Launch("fill", n, args, 3);
    }

    /// <inheritdoc/>
    /// <remarks>A device-to-device memcpy, or kernel <c>copy</c> (native/elementwise.cu) when accumulating.</remarks>
    public override void Copy(View source, View destination, bool accumulate = false)
    {
        if (!accumulate)
        {
            MakeCurrent();
            CudaDriver.Check(CudaDriver.cuMemcpyDtoDAsync(Pointer(destination), Pointer(source), ByteCount(source.Length), Stream), "cuMemcpyDtoDAsync_v2");
            return;
        }
        ulong s = Pointer(source), d = Pointer(destination); long n = source.Length; int add = 1;
        void** args = stackalloc void*[] { &s, &d, &n, &add };
        Launch("copy", n, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>scale</c> (native/elementwise.cu).</remarks>
    public override void Scale(View source, float factor, View destination)
    {
        ulong s = Pointer(source), d = Pointer(destination); long n = source.Length;
        void** args = stackalloc void*[] { &s, &factor, &d, &n };
        Launch("scale", n, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>add</c> (native/elementwise.cu).</remarks>
    public override void Add(View a, View b, View destination)
    {
        ulong x = Pointer(a), y = Pointer(b), d = Pointer(destination); long n = destination.Length;
        void** args = stackalloc void*[] { &x, &y, &d, &n };
        Launch("add", n, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>multiply_channels</c> (native/elementwise.cu).</remarks>
    public override void MultiplyChannels(View a, View b, View destination, bool accumulate)
    {
        ulong x = Pointer(a), y = Pointer(b), d = Pointer(destination); long period = a.Length, n = destination.Length; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &x, &y, &d, &period, &n, &add };
        Launch("multiply_channels", n, args, 6);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>add_bias</c> (native/elementwise.cu).</remarks>
    public override void AddBias(View bias, View destination)
    {
        ulong x = Pointer(bias), d = Pointer(destination); long columns = bias.Length, n = destination.Length;
        void** args = stackalloc void*[] { &x, &d, &columns, &n };
        Launch("add_bias", n, args, 4);
    }

    /// <summary>Columns per block of the sum_rows kernel, and rows summed side by side: SUM_ROWS_TILE in native/reduce.cu.</summary>
    internal const int SumRowsTile = 32;

    /// <inheritdoc/>
    /// <remarks>Kernel <c>sum_rows</c> (native/reduce.cu): a tree reduction in a fixed order, so the same bits run to run.
    /// A single row is a copy (or an add) instead.</remarks>
    public override void SumRows(View source, View destination, bool accumulate)
    {
        if (destination.Length == 0) return;
        if (source.Length == destination.Length)
        {
            // One row: a copy (or an add). The reduction kernel would launch SumRowsTile² threads per 32 columns with one
            // row of them working: measured at ≈ 1 ms per 8M-element site on an H200, a third of a batch-8192 AP step.
            if (accumulate) Axpby(1f, source, 1f, destination);
            else Copy(source, destination);
            return;
        }
        ulong s = Pointer(source), d = Pointer(destination); long columns = destination.Length, rows = source.Length / destination.Length; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &s, &d, &rows, &columns, &add };
        // One block of SumRowsTile × SumRowsTile threads per tile of columns: a parallel reduction in a fixed order.
        uint tiles = (uint)((columns + SumRowsTile - 1) / SumRowsTile);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels["sum_rows"], tiles, 1, 1, SumRowsTile, SumRowsTile, 1, 0, Stream, args, null), "cuLaunchKernel (sum_rows)");
    }

    /// <summary>destination[r, j] (+)= a[r, j]·scale[j] (scale_columns in native/reduce.cu: one fused multiply-add when
    /// accumulating, as the CPU's TensorPrimitives.FusedMultiplyAdd).</summary>
    public override void ScaleColumns(View a, View scale, View destination, bool accumulate)
    {
        if (destination.Length == 0) return;
        ulong x = Pointer(a), s = Pointer(scale), d = Pointer(destination); long columns = scale.Length, n = destination.Length; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &x, &s, &d, &columns, &n, &add };
        Launch("scale_columns", n, args, 6);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>reciprocal_sqrt</c> (native/elementwise.cu).</remarks>
    public override void ReciprocalSqrt(View x, float epsilon, View destination)
    {
        if (destination.Length == 0) return;
        ulong s = Pointer(x), d = Pointer(destination); long n = destination.Length;
        void** args = stackalloc void*[] { &s, &epsilon, &d, &n };
        Launch("reciprocal_sqrt", n, args, 4);
    }

    // Convolution and pooling (native/conv.cu). Every kernel gives the CPU backend's bits: sums are gathers by one thread
    // per output element in the CPU's order (no atomics), so they are also the same run to run. The kernels trust the
    // view lengths, so the host checks them against the geometry first (a wrong length would read out of bounds).

    /// <summary>The number of examples N in <paramref name="images"/> [N, H, W, C], checked to be whole.</summary>
    private static int Examples(string kernel, string what, View images, int elementsPerExample, string shape)
    {
        if (elementsPerExample <= 0 || images.Length % elementsPerExample != 0)
            throw new ArgumentException($"{kernel}: {what} holds {images.Length} floats, not a whole number of {shape} examples of {elementsPerExample}.");
        return images.Length / elementsPerExample;
    }

    private static void RequireLength(string kernel, string what, View view, long expected, string formula)
    {
        if (view.Length != expected)
            throw new ArgumentException($"{kernel}: {what} holds {view.Length} floats, but {formula} = {expected}; allocate it from the same geometry.");
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>im2col</c> (native/conv.cu), channels-last images [N, H, W, C]. Throws <see cref="ArgumentException"/>
    /// when the view lengths do not match the geometry (checked on the host: the kernel trusts them).</remarks>
    public override void Im2Col(View images, in ConvGeometry geometry, View columns)
    {
        int examples = Examples(nameof(Im2Col), "images", images, geometry.InputElements, "H·W·C");
        RequireLength(nameof(Im2Col), "columns", columns, (long)examples * geometry.OutputPositions * geometry.PatchLength, $"N·Ho·Wo·kh·kw·C for N = {examples}");
        if (columns.Length == 0) return;
        ulong x = Pointer(images), c = Pointer(columns); long total = columns.Length;
        int h = geometry.Height, w = geometry.Width, channels = geometry.Channels, kh = geometry.KernelHeight, kw = geometry.KernelWidth,
            stride = geometry.Stride, padding = geometry.Padding, groups = geometry.Groups, oh = geometry.OutputHeight, ow = geometry.OutputWidth;
        void** args = stackalloc void*[] { &x, &c, &h, &w, &channels, &kh, &kw, &stride, &padding, &groups, &oh, &ow, &total };
        Launch("im2col", total, args, 13);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>col2im</c> (native/conv.cu): one thread per image element gathers its patches in the CPU's order
    /// (no atomics), so the result is the CPU backend's bits. Throws <see cref="ArgumentException"/> when the view lengths
    /// do not match the geometry.</remarks>
    public override void Col2Im(View columns, in ConvGeometry geometry, View images, bool accumulate)
    {
        int examples = Examples(nameof(Col2Im), "images", images, geometry.InputElements, "H·W·C");
        RequireLength(nameof(Col2Im), "columns", columns, (long)examples * geometry.OutputPositions * geometry.PatchLength, $"N·Ho·Wo·kh·kw·C for N = {examples}");
        if (images.Length == 0) return;
        ulong c = Pointer(columns), x = Pointer(images); long total = images.Length; int add = accumulate ? 1 : 0;
        int h = geometry.Height, w = geometry.Width, channels = geometry.Channels, kh = geometry.KernelHeight, kw = geometry.KernelWidth,
            stride = geometry.Stride, padding = geometry.Padding, groups = geometry.Groups, oh = geometry.OutputHeight, ow = geometry.OutputWidth;
        void** args = stackalloc void*[] { &c, &x, &h, &w, &channels, &kh, &kw, &stride, &padding, &groups, &oh, &ow, &total, &add };
        Launch("col2im", total, args, 14);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>max_pool</c> (native/conv.cu). Throws <see cref="ArgumentException"/> when the view lengths do not
    /// match the geometry.</remarks>
    public override void MaxPool(View images, in PoolGeometry geometry, View output, View argmax)
    {
        int examples = Examples(nameof(MaxPool), "images", images, geometry.InputElements, "H·W·C");
        RequireLength(nameof(MaxPool), "output", output, (long)examples * geometry.OutputElements, $"N·Ho·Wo·C for N = {examples}");
        RequireLength(nameof(MaxPool), "argmax", argmax, output.Length, "the output's length");
        if (output.Length == 0) return;
        ulong x = Pointer(images), y = Pointer(output), index = Pointer(argmax); long total = output.Length;
        int h = geometry.Height, w = geometry.Width, channels = geometry.Channels, kh = geometry.KernelHeight, kw = geometry.KernelWidth,
            stride = geometry.Stride, padding = geometry.Padding, oh = geometry.OutputHeight, ow = geometry.OutputWidth;
        void** args = stackalloc void*[] { &x, &y, &index, &h, &w, &channels, &kh, &kw, &stride, &padding, &oh, &ow, &total };
        Launch("max_pool", total, args, 13);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>avg_pool</c> (native/conv.cu); divides by kh·kw, padding included, as the CPU backend does.
    /// Throws <see cref="ArgumentException"/> when the view lengths do not match the geometry.</remarks>
    public override void AvgPool(View images, in PoolGeometry geometry, View output)
    {
        int examples = Examples(nameof(AvgPool), "images", images, geometry.InputElements, "H·W·C");
        RequireLength(nameof(AvgPool), "output", output, (long)examples * geometry.OutputElements, $"N·Ho·Wo·C for N = {examples}");
        if (output.Length == 0) return;
        ulong x = Pointer(images), y = Pointer(output); long total = output.Length;
        int h = geometry.Height, w = geometry.Width, channels = geometry.Channels, kh = geometry.KernelHeight, kw = geometry.KernelWidth,
            stride = geometry.Stride, padding = geometry.Padding, oh = geometry.OutputHeight, ow = geometry.OutputWidth;
        float scale = 1f / (geometry.KernelHeight * geometry.KernelWidth); // as CpuBackend.AvgPool computes it
        void** args = stackalloc void*[] { &x, &y, &h, &w, &channels, &kh, &kw, &stride, &padding, &oh, &ow, &scale, &total };
        Launch("avg_pool", total, args, 13);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>avg_pool_backward</c> (native/conv.cu): one thread per input element, no atomics. Throws
    /// <see cref="ArgumentException"/> when the view lengths do not match the geometry.</remarks>
    public override void AvgPoolBackward(View output, in PoolGeometry geometry, View images, bool accumulate)
    {
        int examples = Examples(nameof(AvgPoolBackward), "images", images, geometry.InputElements, "H·W·C");
        RequireLength(nameof(AvgPoolBackward), "output", output, (long)examples * geometry.OutputElements, $"N·Ho·Wo·C for N = {examples}");
        if (images.Length == 0) return;
        ulong dy = Pointer(output), dx = Pointer(images); long total = images.Length; int add = accumulate ? 1 : 0;
        int h = geometry.Height, w = geometry.Width, channels = geometry.Channels, kh = geometry.KernelHeight, kw = geometry.KernelWidth,
            stride = geometry.Stride, padding = geometry.Padding, oh = geometry.OutputHeight, ow = geometry.OutputWidth;
        float scale = 1f / (geometry.KernelHeight * geometry.KernelWidth); // as CpuBackend.AvgPoolBackward computes it
        void** args = stackalloc void*[] { &dy, &dx, &h, &w, &channels, &kh, &kw, &stride, &padding, &oh, &ow, &scale, &total, &add };
        Launch("avg_pool_backward", total, args, 14);
    }

    /// <summary>The sizes of a gather or scatter by index, as CpuBackend derives them: R rows of <paramref name="wide"/>
    /// and of m = narrow.Length / R columns, indices [N, m] with R a multiple of N.</summary>
    private static (int Rows, int Columns, int Examples) IndexedRows(string kernel, View wide, int wideColumns, View narrow, View indices)
    {
        if (wideColumns <= 0 || wide.Length % wideColumns != 0)
            throw new ArgumentException($"{kernel}: a view of {wide.Length} floats is not a whole number of rows of {wideColumns}.");
        int rows = wide.Length / wideColumns;
        if (rows == 0 || narrow.Length % rows != 0)
            throw new ArgumentException($"{kernel}: {narrow.Length} gathered values do not split into the {rows} rows of the other view.");
        int columns = narrow.Length / rows;
        if (columns == 0) return (rows, 0, 0);
        if (indices.Length % columns != 0 || indices.Length == 0 || rows % (indices.Length / columns) != 0)
            throw new ArgumentException($"{kernel}: indices of {indices.Length} floats are not [N, {columns}] with N dividing the {rows} rows.");
        return (rows, columns, indices.Length / columns);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>gather_columns</c> (native/conv.cu). Throws <see cref="ArgumentException"/> when the lengths do not
    /// form R rows of <paramref name="sourceColumns"/> and indices [N, m] with N dividing R.</remarks>
    public override void GatherColumns(View source, int sourceColumns, View indices, View destination)
    {
        if (destination.Length == 0) return;
        var (_, columns, examples) = IndexedRows(nameof(GatherColumns), source, sourceColumns, destination, indices);
        ulong s = Pointer(source), index = Pointer(indices), d = Pointer(destination);
        long width = sourceColumns, m = columns, n = examples, total = destination.Length;
        void** args = stackalloc void*[] { &s, &index, &d, &width, &m, &n, &total };
        Launch("gather_columns", total, args, 7);
    }

    /// <summary>Threads per block of scatter_add_columns, and columns per tile: SCATTER_TILE in native/conv.cu.</summary>
    internal const int ScatterTile = 128;

    /// <summary>One block per destination row (grid-stride over rows): the block walks its row's source values in tiles
    /// of <see cref="ScatterTile"/>, and within a tile the first thread holding an index adds all of that index's values
    /// in column order. Deterministic and in CpuBackend's order, so bit for bit equal to it, where atomics would add
    /// repeated indices (overlapping pooling windows) in a timing-dependent order.</summary>
    public override void ScatterAddColumns(View source, View indices, int destinationColumns, View destination, bool accumulate)
    {
        if (destination.Length == 0) return;
        var (rows, columns, examples) = IndexedRows(nameof(ScatterAddColumns), destination, destinationColumns, source, indices);
        if (columns == 0)
        {
            if (!accumulate) Fill(0f, destination);
            return;
        }
        ulong s = Pointer(source), index = Pointer(indices), d = Pointer(destination);
        long height = rows, m = columns, width = destinationColumns, n = examples; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &s, &index, &d, &height, &m, &width, &n, &add };
        uint blocks = (uint)Math.Min(rows, _maxBlocks);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels["scatter_add_columns"], blocks, 1, 1, ScatterTile, 1, 1, 0, Stream, args, null), "cuLaunchKernel (scatter_add_columns)");
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>row_dot</c> (native/reduce.cu).</remarks>
    public override void RowDot(View a, View b, int columns, View destination)
    {
        ulong x = Pointer(a), y = Pointer(b), d = Pointer(destination); long cols = columns, rows = a.Length / columns, total = destination.Length;
        void** args = stackalloc void*[] { &x, &y, &d, &rows, &cols, &total };
        Launch("row_dot", total, args, 6);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>scale_rows</c> (native/reduce.cu).</remarks>
    public override void ScaleRows(View a, View scale, View destination, bool accumulate)
    {
        ulong x = Pointer(a), s = Pointer(scale), d = Pointer(destination); long columns = a.Length / scale.Length, n = a.Length; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &x, &s, &d, &columns, &n, &add };
        Launch("scale_rows", n, args, 6);
    }

    // ---- Sequence ops (issue 13, native/sequence.cu) --------------------------------------------------------------------

    /// <summary>Rows handled per block by the one-warp-per-row kernels (256 threads).</summary>
    private const int RowsPerBlock = Threads / 32;

    private void LaunchRows(string kernel, long rows, void** arguments)
    {
        uint blocks = (uint)Math.Clamp((rows + RowsPerBlock - 1) / RowsPerBlock, 1, _maxBlocks);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels[kernel], blocks, 1, 1, Threads, 1, 1, 0, Stream, arguments, null), $"cuLaunchKernel ({kernel})");
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>normalize_last_axis</c> (native/sequence.cu), one warp per row. Throws <see cref="ArgumentException"/>
    /// when <paramref name="x"/> or <paramref name="normalized"/> is not rows × <paramref name="width"/>.</remarks>
    public override void NormalizeLastAxis(View x, int width, float epsilon, bool centre, View normalized, View inverseStd)
    {
        if (inverseStd.Length == 0) return;
        RequireLength(nameof(NormalizeLastAxis), "normalized", normalized, (long)inverseStd.Length * width, "rows·width");
        RequireLength(nameof(NormalizeLastAxis), "x", x, normalized.Length, "the normalized view's length");
        ulong s = Pointer(x), d = Pointer(normalized), inv = Pointer(inverseStd); long rows = inverseStd.Length, w = width; int c = centre ? 1 : 0;
        void** args = stackalloc void*[] { &s, &d, &inv, &rows, &w, &epsilon, &c };
        LaunchRows("normalize_last_axis", rows, args);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>normalize_last_axis_derivative</c> (native/sequence.cu), one warp per row and channel. Throws
    /// <see cref="ArgumentException"/> unless the views are x̂ [R, D], s [R], v and destination [C, R, D].</remarks>
    public override void NormalizeLastAxisDerivative(View normalized, View inverseStd, View v, bool centre, View destination, bool accumulate)
    {
        if (destination.Length == 0) return;
        if (inverseStd.Length == 0 || normalized.Length % inverseStd.Length != 0 || v.Length % normalized.Length != 0 || destination.Length != v.Length)
            throw new ArgumentException($"{nameof(NormalizeLastAxisDerivative)}: x̂ of {normalized.Length}, s of {inverseStd.Length}, v of {v.Length} and a destination of " +
                $"{destination.Length} floats are not [R, D], [R], [C, R, D], [C, R, D].");
        ulong x = Pointer(normalized), inv = Pointer(inverseStd), source = Pointer(v), d = Pointer(destination);
        long rows = inverseStd.Length, w = normalized.Length / inverseStd.Length, total = v.Length / w; int c = centre ? 1 : 0, add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &x, &inv, &source, &d, &rows, &w, &total, &c, &add };
        LaunchRows("normalize_last_axis_derivative", total, args);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>gather_rows</c> (native/sequence.cu). Throws <see cref="ArgumentException"/> when the destination is
    /// not [C, ids, <paramref name="width"/>] for a whole number of tables.</remarks>
    public override void GatherRows(View table, View indices, int width, View destination)
    {
        if (destination.Length == 0) return;
        long perChannel = (long)indices.Length * width;
        if (perChannel == 0 || destination.Length % perChannel != 0 || table.Length % (destination.Length / perChannel * width) != 0)
            throw new ArgumentException($"{nameof(GatherRows)}: a destination of {destination.Length} floats is not [C, {indices.Length}, {width}] for a table of {table.Length}.");
        ulong t = Pointer(table), index = Pointer(indices), d = Pointer(destination);
        long count = indices.Length, w = width, vocabulary = table.Length / (destination.Length / perChannel * width), total = destination.Length;
        void** args = stackalloc void*[] { &t, &index, &d, &count, &w, &vocabulary, &total };
        Launch("gather_rows", total, args, 7);
    }

    /// <summary>Columns per block of scatter_add_rows: SCATTER_ROWS_TILE in native/sequence.cu.</summary>
    internal const int ScatterRowsTile = 128;

    /// <inheritdoc/>
    /// <remarks>Kernel <c>scatter_add_rows</c> (native/sequence.cu): each block owns destination rows and adds their source
    /// rows in index order (no atomics), so repeated ids sum in the CPU's order. Throws <see cref="ArgumentException"/> when
    /// the source is not ids × <paramref name="width"/> or the destination not [V, width].</remarks>
    public override void ScatterAddRows(View source, View indices, int width, View destination, bool accumulate)
    {
        if (destination.Length == 0) return;
        RequireLength(nameof(ScatterAddRows), "source", source, (long)indices.Length * width, "ids·width");
        if (destination.Length % width != 0) throw new ArgumentException($"{nameof(ScatterAddRows)}: a destination of {destination.Length} floats is not [V, {width}].");
        ulong s = Pointer(source), index = Pointer(indices), d = Pointer(destination);
        long count = indices.Length, w = width, vocabulary = destination.Length / width; int add = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &s, &index, &d, &count, &w, &vocabulary, &add };
        uint tiles = (uint)((width + ScatterRowsTile - 1) / ScatterRowsTile), rows = (uint)Math.Min(vocabulary, 65535);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels["scatter_add_rows"], tiles, rows, 1, ScatterRowsTile, 1, 1, 0, Stream, args, null), "cuLaunchKernel (scatter_add_rows)");
    }

    /// <summary>The longest sequence sequence_cross_entropy takes: its 2·T floats of dynamic shared memory stay within 48 KiB.</summary>
    internal const int SequenceCrossEntropyMaxLength = 6144;

    /// <inheritdoc/>
    /// <remarks>Kernel <c>sequence_cross_entropy</c> (native/sequence.cu), one block per example. Throws
    /// <see cref="NotSupportedException"/> for sequences longer than 6144 positions (its shared memory holds 2·T floats)
    /// and <see cref="ArgumentException"/> when the views are not logits [B, T, V], targets [B, T], error like the logits.</remarks>
    public override void SequenceCrossEntropy(View logits, View targets, int length, int classes, float ignoreIndex, View loss, View error)
    {
        if (loss.Length == 0) return;
        if (length > SequenceCrossEntropyMaxLength)
            throw new NotSupportedException($"{nameof(SequenceCrossEntropy)} on CUDA takes sequences up to {SequenceCrossEntropyMaxLength} positions; got {length}.");
        RequireLength(nameof(SequenceCrossEntropy), "targets", targets, (long)loss.Length * length, "B·T");
        RequireLength(nameof(SequenceCrossEntropy), "logits", logits, (long)loss.Length * length * classes, "B·T·V");
        RequireLength(nameof(SequenceCrossEntropy), "error", error, logits.Length, "the logits' length");
        ulong z = Pointer(logits), y = Pointer(targets), l = Pointer(loss), e = Pointer(error);
        long examples = loss.Length, t = length, v = classes;
        void** args = stackalloc void*[] { &z, &y, &l, &e, &examples, &t, &v, &ignoreIndex };
        uint blocks = (uint)Math.Min(examples, _maxBlocks);
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuLaunchKernel(_kernels["sequence_cross_entropy"], blocks, 1, 1, 128, 1, 1, (uint)(2 * length * sizeof(float)), Stream, args, null),
            "cuLaunchKernel (sequence_cross_entropy)");
    }

    private static int Code(ElementwiseFunction function) => function switch
    {
        ReluFunction => 0,
        TanhFunction => 1,
        GeluFunction => 2,
        IdentityFunction => 3,
        GeluTanhFunction => 4,
        _ => throw new NotSupportedException($"No CUDA kernel for activation {function.Name}."),
    };

    /// <inheritdoc/>
    /// <remarks>Kernel <c>activation_forward</c> (native/elementwise.cu). Throws <see cref="NotSupportedException"/> for a
    /// function other than ReLU, tanh, GELU (erf or tanh form) and the identity.</remarks>
    public override void Elementwise(ElementwiseFunction function, View x, View y)
    {
        int code = Code(function); ulong input = Pointer(x), output = Pointer(y); long n = x.Length;
        void** args = stackalloc void*[] { &code, &input, &output, &n };
        Launch("activation_forward", n, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>activation_backward</c> (native/elementwise.cu). Throws <see cref="NotSupportedException"/> for a
    /// function other than ReLU, tanh, GELU (erf or tanh form) and the identity.</remarks>
    public override void ElementwiseDerivative(ElementwiseFunction function, View x, View y, View derivative)
    {
        int code = Code(function); ulong input = Pointer(x), output = Pointer(y), d = Pointer(derivative); long n = x.Length;
        void** args = stackalloc void*[] { &code, &input, &output, &d, &n };
        Launch("activation_backward", n, args, 5);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>softmax_cross_entropy</c> (native/loss.cu), one thread per row.</remarks>
    public override void SoftmaxCrossEntropy(View logits, View labels, int classes, View loss, View error)
    {
        ulong z = Pointer(logits), y = Pointer(labels), l = Pointer(loss), e = Pointer(error); long rows = loss.Length, c = classes;
        void** args = stackalloc void*[] { &z, &y, &l, &e, &rows, &c };
        Launch("softmax_cross_entropy", rows, args, 6);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>squared_error</c> (native/loss.cu), one thread per row.</remarks>
    public override void SquaredError(View prediction, View target, int width, View loss, View error)
    {
        ulong p = Pointer(prediction), t = Pointer(target), l = Pointer(loss), e = Pointer(error); long rows = loss.Length, w = width;
        void** args = stackalloc void*[] { &p, &t, &l, &e, &rows, &w };
        Launch("squared_error", rows, args, 6);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>fill_normal</c> (native/random.cu): the same Philox4x32-10 stream as the CPU backend, so the same
    /// numbers for the same key and offset.</remarks>
    public override void FillNormal(RandomKey key, long first, float mean, float standardDeviation, View destination)
    {
        ulong d = Pointer(destination); long n = destination.Length; uint lo = (uint)key.Seed, hi = (uint)(key.Seed >> 32); ulong stream = key.Stream;
        void** args = stackalloc void*[] { &d, &n, &first, &lo, &hi, &stream, &mean, &standardDeviation };
        Launch("fill_normal", (n + 7) / 4, args, 8);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>fill_uniform</c> (native/random.cu): the same Philox4x32-10 stream as the CPU backend.</remarks>
    public override void FillUniform(RandomKey key, long first, float low, float high, View destination)
    {
        ulong d = Pointer(destination); long n = destination.Length; uint lo = (uint)key.Seed, hi = (uint)(key.Seed >> 32); ulong stream = key.Stream;
        float width = high - low;
        void** args = stackalloc void*[] { &d, &n, &first, &lo, &hi, &stream, &low, &width };
        Launch("fill_uniform", (n + 7) / 4, args, 8);
    }

    /// <summary>Σ f(x_i, y_i) on the device into one double, read back (the only device-to-host traffic of a step).</summary>
    private double Reduce(View x, View y, int mode, float vScale = 0, float floor = 0)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemsetD32Async(_scalar, 0, 2, Stream), "cuMemsetD32Async");
        ulong a = Pointer(x), b = y.IsEmpty ? a : Pointer(y), result = _scalar; long n = x.Length;
        void** args = stackalloc void*[] { &a, &b, &mode, &vScale, &floor, &result, &n };
        Launch("reduce_sum", n, args, 7);
        double value;
        CudaDriver.Check(CudaDriver.cuMemcpyDtoHAsync(&value, _scalar, sizeof(double), Stream), "cuMemcpyDtoHAsync_v2");
        Synchronize();
        return value;
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>reduce_sum</c> in double; synchronises the stream to read the result back.</remarks>
    public override double Sum(View x) => Reduce(x, View.Empty, 0);
    /// <inheritdoc/>
    /// <remarks>Kernel <c>reduce_sum</c> in double; synchronises the stream to read the result back.</remarks>
    public override double SumOfSquares(View x) => Reduce(x, View.Empty, 1);
    /// <inheritdoc/>
    /// <remarks>Kernel <c>reduce_sum</c> in double; synchronises the stream to read the result back.</remarks>
    public override double Dot(View a, View b) => Reduce(a, b, 2);
    /// <inheritdoc/>
    /// <remarks>Kernel <c>reduce_sum</c> in double, divided by g.Length (0 for an empty view); synchronises the stream.</remarks>
    public override double MeanRatioOfSquares(View g, View v, float vScale, float floor) => g.Length == 0 ? 0 : Reduce(g, v, 3, vScale, floor) / g.Length;

    /// <inheritdoc/>
    /// <remarks>Kernel <c>normalize_rows</c> (native/reduce.cu).</remarks>
    public override void NormalizeRows(View x, int columns, float norm)
    {
        ulong d = Pointer(x); long rows = x.Length / columns, cols = columns;
        void** args = stackalloc void*[] { &d, &rows, &cols, &norm };
        Launch("normalize_rows", rows, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>row_cosines</c> (native/reduce.cu).</remarks>
    public override void RowCosines(View a, View b, int columns, View destination)
    {
        ulong x = Pointer(a), y = Pointer(b), d = Pointer(destination); long rows = destination.Length, cols = columns;
        void** args = stackalloc void*[] { &x, &y, &d, &rows, &cols };
        Launch("row_cosines", rows, args, 5);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>axpby</c> (native/elementwise.cu).</remarks>
    public override void Axpby(float alpha, View x, float beta, View y)
    {
        ulong s = Pointer(x), d = Pointer(y); long n = y.Length;
        void** args = stackalloc void*[] { &alpha, &s, &beta, &d, &n };
        Launch("axpby", n, args, 5);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>moving_average_of_squares</c> (native/elementwise.cu).</remarks>
    public override void MovingAverageOfSquares(View g, float beta, View v)
    {
        ulong s = Pointer(g), d = Pointer(v); long n = v.Length;
        void** args = stackalloc void*[] { &s, &beta, &d, &n };
        Launch("moving_average_of_squares", n, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>adam_direction</c> (native/elementwise.cu).</remarks>
    public override void AdamDirection(View m, View v, float mScale, float vScale, float epsilon, View destination)
    {
        ulong first = Pointer(m), second = Pointer(v), d = Pointer(destination); long n = destination.Length;
        void** args = stackalloc void*[] { &first, &second, &mScale, &vScale, &epsilon, &d, &n };
        Launch("adam_direction", n, args, 7);
    }

    // ---- attention (issue 13): native/attention.cu, one warp per row -------------------------------------------

    private const int WarpSize = 32;

    /// <inheritdoc/>
    /// <remarks>Kernel <c>causal_softmax_rows</c> (native/attention.cu), one warp per row. Throws <see cref="ArgumentException"/>
    /// unless both views hold the same whole number of [size, size] matrices.</remarks>
    public override void CausalSoftmaxRows(View scores, int size, View probabilities)
    {
        long square = (long)size * size;
        if (size <= 0 || scores.Length != probabilities.Length || scores.Length % square != 0)
            throw new ArgumentException($"CausalSoftmaxRows: scores ({scores.Length} floats) and probabilities ({probabilities.Length}) must both hold whole [{size}, {size}] matrices.");
        if (scores.Length == 0) return;
        ulong s = Pointer(scores), p = Pointer(probabilities); long rows = scores.Length / size;
        void** args = stackalloc void*[] { &s, &p, &size, &rows };
        Launch("causal_softmax_rows", rows * WarpSize, args, 4);
    }

    /// <inheritdoc/>
    /// <remarks>Kernel <c>softmax_jvp_rows</c> (native/attention.cu), one warp per row. Throws <see cref="ArgumentException"/>
    /// unless the probabilities are whole rows of <paramref name="columns"/> and x and the destination the same whole number
    /// of copies of them.</remarks>
    public override void SoftmaxJvpRows(View probabilities, View x, int columns, View destination)
    {
        if (columns <= 0 || probabilities.Length % columns != 0 || probabilities.Length == 0 || x.Length != destination.Length || x.Length % probabilities.Length != 0)
            throw new ArgumentException($"SoftmaxJvpRows: probabilities ({probabilities.Length} floats) must be whole rows of {columns}, and x ({x.Length}) and " +
                $"the destination ({destination.Length}) the same whole number of copies of them.");
        if (x.Length == 0) return;
        ulong p = Pointer(probabilities), from = Pointer(x), to = Pointer(destination);
        long probabilityRows = probabilities.Length / columns, rows = x.Length / columns;
        void** args = stackalloc void*[] { &p, &from, &to, &columns, &probabilityRows, &rows };
        Launch("softmax_jvp_rows", rows * WarpSize, args, 6);
    }

    /// <summary>Releases the kernel modules, the cuBLAS handle, every block of <see cref="Allocator"/>, the stream and the
    /// primary context reference. Buffers of this backend are invalid afterwards.</summary>
    public void Dispose()
    {
        MakeCurrent(); // modules, cuBLAS, memory and the stream are released in this context
        _kernels.Dispose();
        _cublas.Dispose();
        Allocator.Dispose();
        _stream.Dispose();
        _context.Dispose();
    }
}

/// <summary>
/// A captured sequence of GPU work replayed with one launch (CUDA graphs): capture a whole training step once,
/// then <see cref="Launch"/> it every step. Only device work can be captured: steps that read scalars back
/// (the mean loss, norms for clipping, StableAdamW's RMS) synchronise the stream and cannot be captured.
/// </summary>
public sealed class CudaGraph : IDisposable
{
    private readonly CudaBackend _backend;
    private readonly GraphExecHandle _executable = new();

    private CudaGraph(CudaBackend backend) => _backend = backend;

    /// <summary>Runs <paramref name="work"/> once in stream-capture mode (nothing executes) and instantiates what it queued
    /// on <paramref name="backend"/>'s stream as an executable graph.</summary>
    /// <param name="backend">The backend whose stream <paramref name="work"/> queues on.</param>
    /// <param name="work">The device work to record: it must not synchronise or read values back.</param>
    /// <returns>The graph, ready to <see cref="Launch"/>.</returns>
    /// <exception cref="CudaException">The capture or instantiation failed (for example, the work synchronised).
    /// An exception thrown by <paramref name="work"/> itself ends the capture and is rethrown unchanged.</exception>
    public static CudaGraph Capture(CudaBackend backend, Action work)
    {
        backend.MakeCurrent();
        var graph = new CudaGraph(backend);
        var captured = Record(new DriverCapture(), backend.Stream, work);
        try
        {
            CudaDriver.Check(CudaDriver.cuGraphInstantiateWithFlags(out var executable, captured, 0), "cuGraphInstantiateWithFlags");
            graph._executable.Attach(executable);
        }
        finally { CudaDriver.cuGraphDestroy(captured); }
        return graph;
    }

    /// <summary>Records the work queued on the stream by <paramref name="work"/> into a graph.</summary>
    internal static IntPtr Record<TCapture>(TCapture capture, IntPtr stream, Action work) where TCapture : IStreamCapture
    {
        CudaDriver.Check(capture.Begin(stream), "cuStreamBeginCapture_v2");
        try { work(); }
        catch
        {
            // End the capture, or the stream stays in capture mode and fails every later call; drop what was recorded.
            // Its status (typically CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, caused by the work's own failure) would hide
            // the error that says what went wrong, so the work's exception is the one rethrown.
            if (capture.End(stream, out var partial) == CudaDriver.Success && partial != IntPtr.Zero) capture.DestroyGraph(partial);
            throw;
        }
        CudaDriver.Check(capture.End(stream, out var captured), "cuStreamEndCapture");
        return captured;
    }

    /// <summary>Queues the whole captured work on the backend's stream with one launch; asynchronous like any kernel.</summary>
    public void Launch()
    {
        _backend.MakeCurrent();
        CudaDriver.Check(CudaDriver.cuGraphLaunch(_executable.DangerousGetHandle(), _backend.Stream), "cuGraphLaunch");
    }

    /// <summary>Destroys the executable graph (in the backend's context). Work already launched still completes.</summary>
    public void Dispose()
    {
        if (!_executable.IsInvalid && !_executable.IsClosed) _backend.MakeCurrent();
        _executable.Dispose();
    }
}

/// <summary>The three driver calls of a stream capture, behind an interface so that the failure path can be tested without a GPU.</summary>
internal interface IStreamCapture
{
    int Begin(IntPtr stream);
    int End(IntPtr stream, out IntPtr graph);
    void DestroyGraph(IntPtr graph);
}

internal readonly struct DriverCapture : IStreamCapture
{
    public int Begin(IntPtr stream) => CudaDriver.cuStreamBeginCapture(stream, CudaDriver.StreamCaptureModeThreadLocal);
    public int End(IntPtr stream, out IntPtr graph) => CudaDriver.cuStreamEndCapture(stream, out graph);
    public void DestroyGraph(IntPtr graph) => CudaDriver.cuGraphDestroy(graph);
}
