using System.Diagnostics;
using ForwardAD.Backends;
using ForwardAD.Cuda.Interop;
using ForwardAD.Distributed;

namespace ForwardAD.Cuda.Distributed;

/// <summary>
/// A <see cref="Communicator"/> whose sums of CUDA buffers run on the GPUs through NCCL, without a trip through the host:
/// one rank per GPU, each with its own <see cref="CudaBackend"/>. Rank and size come from a bootstrap communicator (MPI
/// across processes, or threads of one process), which carries the NCCL id at creation and every host-memory operation after.
/// </summary>
/// <remarks>
/// <para>Host buffers (<see cref="Communicator.AllReduceSum(Span{float})"/>, <see cref="Communicator.Broadcast"/>,
/// <see cref="Communicator.Barrier"/>) go through the bootstrap rather than through a device staging buffer. They are small
/// (losses, flags, text, the K JVP scalars of directional descent, docs/design.md §7), where MPI's or the threads' few
/// microseconds beat a copy to the device, a kernel and a copy back, and they need not wait behind the step's work queued
/// on the backend's stream. They wait under the bootstrap's own timeout.</para>
/// <para>Device sums wait under <see cref="Communicator.Timeout"/> (initially the bootstrap's): the wait polls the stream
/// and NCCL's asynchronous error, and on an error or at the timeout aborts the NCCL communicator and throws
/// <see cref="CommunicationException"/>. ncclCommInitRank, in <see cref="Create"/>, cannot be bounded that way (NCCL's
/// blocking initialisation); every check that can fail before it is agreed on by all ranks first, so that one rank's
/// missing library does not leave the others waiting there.</para>
/// <para>Dispose it before its backend (NCCL's memory lives in the backend's context) and before the bootstrap, which stays
/// the caller's.</para>
/// </remarks>
public sealed class NcclCommunicator : Communicator
{
    private readonly NcclCommHandle _comm;
    private readonly int _rank, _size;
    private string? _abortedBecause;
    private bool _disposed;

    private NcclCommunicator(CudaBackend backend, Communicator bootstrap, NcclCommHandle comm, (int, int, int) version)
    {
        Backend = backend;
        Bootstrap = bootstrap;
        _comm = comm;
        (_rank, _size) = (bootstrap.Rank, bootstrap.Size);
        Version = version;
        Timeout = bootstrap.Timeout;
    }

    /// <inheritdoc/>
    public override int Rank => _rank;

    /// <inheritdoc/>
    public override int Size => _size;

    /// <summary>"NCCL 2.27.3": the version of the library loaded, as NCCL reports it.</summary>
    public override string Name => $"NCCL {Version.Major}.{Version.Minor}.{Version.Patch}";

    /// <summary>The loaded library's version (ncclGetVersion).</summary>
    public (int Major, int Minor, int Patch) Version { get; }

    /// <summary>The GPU of this rank: device buffers summed here must live on it, and the sums run on its stream.</summary>
    public CudaBackend Backend { get; }

    /// <summary>The communicator that gave the ranks and carries host-memory operations. It stays the caller's to dispose.</summary>
    public Communicator Bootstrap { get; }

    /// <summary>True when NCCL 2 loads (libnccl.so.2 from the loader's paths, CUDA's folders or PyTorch's nvidia wheels) and
    /// answers ncclGetVersion; otherwise false, with the names and folders tried.</summary>
    public static bool IsAvailable(out string reason)
    {
        if (!NativeLibraries.TryLoad(NativeLibraries.Nccl, out var why)) { reason = $"no NCCL: {why}"; return false; }
        try
        {
            Nccl.Check(Nccl.ncclGetVersion(out _), "ncclGetVersion");
        }
        catch (Exception e) when (e is NcclException or EntryPointNotFoundException)
        {
            reason = $"a libnccl was found but is not a working NCCL 2: {e.Message}";
            return false;
        }
        reason = "";
        return true;
    }

    /// <summary>
    /// Creates this rank's NCCL communicator on <paramref name="backend"/>'s GPU, with the rank and size of
    /// <paramref name="bootstrap"/>. Every rank of the bootstrap must call it, each with its own GPU: rank 0 makes the NCCL
    /// id, the bootstrap broadcasts it, and every rank joins with ncclCommInitRank.
    /// </summary>
    /// <exception cref="DllNotFoundException">NCCL does not load on this rank (the message says what was tried and what to install).</exception>
    /// <exception cref="CommunicationException">NCCL could not be set up on another rank; that rank's own error says why.</exception>
    /// <exception cref="NcclException">An NCCL call failed, with the function and NCCL's message.</exception>
    public static NcclCommunicator Create(CudaBackend backend, Communicator bootstrap)
    {
        ArgumentNullException.ThrowIfNull(bootstrap);
        // The local checks are folded into one agreement before anything else: a rank that stopped here on its own would
        // leave the others in ncclCommInitRank, which waits for every rank and has no timeout. The library comes first:
        // without it nothing else can be used, and its message says what to install.
        bool available = IsAvailable(out var reason);
        if (!bootstrap.AllAgree(available && backend is not null))
        {
            if (!available)
                throw new DllNotFoundException($"NCCL cannot be used on rank {bootstrap.Rank} of {bootstrap.Size}: {reason}. Install NCCL 2 (the libnccl2 " +
                    "package, or PyTorch's nvidia-nccl wheel, found under site-packages/nvidia/nccl/lib), or use the bootstrap communicator alone " +
                    "(device buffers then go through the host).");
            if (backend is null) throw new ArgumentNullException(nameof(backend), "An NCCL communicator needs this rank's CUDA backend.");
            throw new CommunicationException($"Rank {bootstrap.Rank} of {bootstrap.Size}: another rank could not set up NCCL (its own error says why), so no rank creates an NCCL communicator.");
        }
        ArgumentNullException.ThrowIfNull(backend); // for the compiler: every rank agreed there was one

        Nccl.Check(Nccl.ncclGetVersion(out var code), "ncclGetVersion");
        var id = new NcclUniqueId();
        // Rank 0's id, with a flag in front: a failing ncclGetUniqueId (no usable network interface, say) then stops every
        // rank here instead of sending them into ncclCommInitRank with an id that nobody listens on.
        Span<byte> message = stackalloc byte[1 + Nccl.UniqueIdBytes];
        NcclException? rootFailure = null;
        if (bootstrap.Rank == 0)
        {
            try
            {
                Nccl.Check(Nccl.ncclGetUniqueId(out id), "ncclGetUniqueId");
                message[0] = 1;
                NcclUniqueId.Bytes(ref id).CopyTo(message[1..]);
            }
            catch (NcclException e) { rootFailure = e; }
        }
        bootstrap.Broadcast(message, root: 0);
        if (message[0] == 0)
            throw rootFailure ?? (Exception)new CommunicationException($"Rank {bootstrap.Rank} of {bootstrap.Size}: rank 0 could not create the NCCL id (ncclGetUniqueId failed there; its error says why).");
        message[1..].CopyTo(NcclUniqueId.Bytes(ref id));

        // NCCL binds the communicator to the current device, which it takes from the calling thread's context.
        backend.MakeCurrent();
        Nccl.Check(Nccl.ncclCommInitRank(out var handle, bootstrap.Size, id, bootstrap.Rank), "ncclCommInitRank");
        var comm = new NcclCommHandle();
        comm.Attach(handle);
        return new NcclCommunicator(backend, bootstrap, comm, Nccl.DecodeVersion(code));
    }

    /// <summary>Sums a device buffer of <see cref="Backend"/> in place with ncclAllReduce; other backends' buffers (the CPU's)
    /// are left to the base class, which sums them through the host. It waits for the stream, as the host path does, so a
    /// step that sums cannot be captured in a <see cref="CudaGraph"/>.</summary>
    protected override bool TryAllReduceOnDevice(ForwardAD.Backends.Backend backend, View buffer)
    {
        if (backend is not CudaBackend cuda) return false;
        if (cuda != Backend)
            throw new ArgumentException($"The buffer lives on {cuda.Name}, but this NCCL communicator was created for {Backend.Name}: one rank, one GPU, one backend.", nameof(backend));
        AllReduceSumOnDevice(buffer, buffer);
        return true;
    }

    /// <summary>
    /// <paramref name="destination"/> ← the element-wise sum over the ranks of <paramref name="source"/>, by ncclAllReduce on
    /// the backend's stream; waits until it is done. The same view for both is NCCL's in-place form, which the public
    /// <see cref="Communicator.AllReduceSum(ForwardAD.Backends.Backend, View)"/> uses. Called directly, it runs on one rank
    /// too (the public path skips a sum over one rank), which lets a single GPU check the call and its wait.
    /// </summary>
    internal void AllReduceSumOnDevice(View source, View destination)
    {
        var comm = Enter();
        ulong from = DevicePointer(source, nameof(source)), to = DevicePointer(destination, nameof(destination));
        if (source.Length != destination.Length)
            throw new ArgumentException($"An all-reduce of {source.Length} values into a view of {destination.Length}.", nameof(destination));
        Nccl.Check(Nccl.ncclAllReduce(from, to, (nuint)source.Length, Nccl.Float32, Nccl.Sum, comm, Backend.Stream), "ncclAllReduce");
        Await(new CollectiveCall("all-reduce", source.Length, Rank, Size));
    }

    /// <summary>
    /// <paramref name="destination"/> on every rank ← <paramref name="source"/> of rank <paramref name="root"/>, by
    /// ncclBroadcast on the backend's stream; waits until it is done (the same view for both broadcasts in place). It is the
    /// device half of a broadcast of parameters from one rank. Kept internal because <see cref="Communicator"/> has no device
    /// broadcast yet through which its bytes would be counted in <see cref="Communicator.Traffic"/>.
    /// </summary>
    internal void BroadcastOnDevice(View source, View destination, int root)
    {
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), $"The root must be a rank from 0 to {Size - 1}; got {root}.");
        var comm = Enter();
        ulong from = DevicePointer(source, nameof(source)), to = DevicePointer(destination, nameof(destination));
        if (source.Length != destination.Length)
            throw new ArgumentException($"A broadcast of {source.Length} values into a view of {destination.Length}.", nameof(destination));
        Nccl.Check(Nccl.ncclBroadcast(from, to, (nuint)source.Length, Nccl.Float32, root, comm, Backend.Stream), "ncclBroadcast");
        Await(new CollectiveCall("broadcast", source.Length, Rank, Size));
    }

    /// <summary>False once <see cref="Communicator.Dispose()"/> or an abort has released the NCCL communicator.</summary>
    internal bool IsOpen => !_comm.IsClosed;

    /// <summary>Host memory: summed through <see cref="Bootstrap"/> (small buffers; see the remarks on the class).
    /// Throws <see cref="ObjectDisposedException"/> after disposal.</summary>
    protected override void AllReduceSumCore(Span<float> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Bootstrap.AllReduceSum(buffer);
    }

    /// <inheritdoc cref="AllReduceSumCore(Span{float})"/>
    protected override void AllReduceSumCore(Span<double> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Bootstrap.AllReduceSum(buffer);
    }

    /// <summary>Host memory: broadcast through <see cref="Bootstrap"/>. Throws <see cref="ObjectDisposedException"/> after disposal.</summary>
    protected override void BroadcastCore(Span<byte> buffer, int root)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Bootstrap.Broadcast(buffer, root);
    }

    /// <summary>A barrier of <see cref="Bootstrap"/>. Throws <see cref="ObjectDisposedException"/> after disposal.</summary>
    protected override void BarrierCore()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Bootstrap.Barrier();
    }

    /// <summary>The communicator's handle for one collective, with the backend's context current on this thread (NCCL
    /// queues on the backend's stream, and the driver's current context is per thread).</summary>
    private IntPtr Enter()
    {
        if (_abortedBecause is not null)
            throw new CommunicationException($"This NCCL communicator was aborted after an earlier failure, so it can take no further part: {_abortedBecause}");
        ObjectDisposedException.ThrowIf(_disposed, this);
        Backend.MakeCurrent();
        return _comm.DangerousGetHandle();
    }

    private void Await(in CollectiveCall call)
    {
        try
        {
            CollectiveWait.Await(new NcclProgress(_comm, Backend.Stream), Timeout, call);
        }
        catch (CommunicationException e)
        {
            _abortedBecause = e.Message;
            throw;
        }
    }

    private ulong DevicePointer(View view, string name)
    {
        if (view.Buffer is not CudaBuffer buffer || buffer.Backend != Backend)
            throw new ArgumentException(view.IsEmpty
                ? "A symbolic zero (empty view) cannot be sent through NCCL."
                : $"The view lives on {view.Buffer!.Backend.Name}, not on the CUDA backend of this NCCL communicator ({Backend.Name}).", name);
        return buffer.Pointer + (ulong)view.Offset * sizeof(float);
    }

    /// <summary>Destroys the NCCL communicator (ncclCommDestroy), once; the backend and <see cref="Bootstrap"/> stay open.</summary>
    protected override void Dispose(bool disposing)
    {
        // ncclCommDestroy selects the communicator's device itself, so no context is made current here (the backend may be
        // gone already when a finalizer runs; on Dispose it should not be, see the remarks).
        if (disposing && !_disposed)
        {
            _disposed = true;
            _comm.Dispose();
        }
        base.Dispose(disposing);
    }

    /// <summary>The real probes of a collective's progress: the backend's stream and the NCCL communicator.</summary>
    private readonly struct NcclProgress(NcclCommHandle comm, IntPtr stream) : ICollectiveProgress
    {
        public int QueryStream() => CudaDriver.cuStreamQuery(stream);
        public int GetAsyncError(out int asyncError) => Nccl.ncclCommGetAsyncError(comm.DangerousGetHandle(), out asyncError);
        public int Abort() => comm.Abort();
        public string DescribeCuda(int status) => CudaDriver.Describe(status);
        public string DescribeNccl(int status) => Nccl.Describe(status);
    }
}

/// <summary>A collective in flight, named in the messages of its failures; kept as values so that a wait that succeeds
/// formats (and allocates) nothing.</summary>
internal readonly record struct CollectiveCall(string Operation, long Elements, int Rank, int Size)
{
    public override string ToString() => $"NCCL {Operation} of {Elements:N0} float32 values on rank {Rank} of {Size}";
}

/// <summary>What a wait for a queued collective asks, and the abort it may need: the driver and NCCL on a GPU, a stand-in in
/// the tests that check the waiting without one.</summary>
internal interface ICollectiveProgress
{
    /// <summary>cuStreamQuery's status: success when everything queued has finished, not-ready while it runs, else a CUDA error.</summary>
    int QueryStream();

    /// <summary>ncclCommGetAsyncError's status, and the communicator's asynchronous error (success or in-progress while healthy).</summary>
    int GetAsyncError(out int asyncError);

    /// <summary>ncclCommAbort's status.</summary>
    int Abort();

    string DescribeCuda(int status);
    string DescribeNccl(int status);
}

/// <summary>Waits for a collective queued on a stream, up to a timeout, without blocking in the driver: a rank that stopped
/// answering would otherwise keep cuStreamSynchronize waiting for good.</summary>
internal static class CollectiveWait
{
    /// <summary>How long to poll with yields before sleeping a millisecond between polls. Yielding answers within
    /// microseconds, which the latency-bound sums below ~1 MB need (§7), but keeps a core busy, as CUDA's own default
    /// spin-wait does; after this long a millisecond more is under 1% of the wait, and the core is given back.</summary>
    internal static readonly TimeSpan YieldingPhase = TimeSpan.FromMilliseconds(100);

    /// <summary>Returns when the stream has finished. Throws <see cref="CommunicationException"/> naming the operation, after
    /// aborting the communicator, when the stream reports an error, NCCL reports an asynchronous error (a peer failed, a
    /// connection dropped) or <paramref name="timeout"/> passes (a negative timeout, such as
    /// <see cref="System.Threading.Timeout.InfiniteTimeSpan"/>, waits for good). The abort is needed for the other ranks'
    /// sake too: it ends this rank's NCCL kernels, which would otherwise keep spinning on the GPU.</summary>
    public static void Await<TProgress>(TProgress progress, TimeSpan timeout, in CollectiveCall call) where TProgress : ICollectiveProgress
    {
        long start = Stopwatch.GetTimestamp();
        var spinner = new SpinWait();
        while (true)
        {
            int stream = progress.QueryStream();
            if (stream == CudaDriver.Success) return;
            if (stream != CudaDriver.ErrorNotReady)
            {
                var cuda = new CudaException("cuStreamQuery", stream, progress.DescribeCuda(stream));
                throw Fail(progress, call, $"the stream failed: {cuda.Message}", cuda);
            }
            int query = progress.GetAsyncError(out int asyncError);
            if (query != Nccl.Success)
            {
                var nccl = new NcclException("ncclCommGetAsyncError", query, progress.DescribeNccl(query));
                throw Fail(progress, call, $"its state could not be read: {nccl.Message}", nccl);
            }
            if (asyncError is not (Nccl.Success or Nccl.InProgress))
            {
                var nccl = new NcclException("ncclCommGetAsyncError", asyncError, progress.DescribeNccl(asyncError));
                throw Fail(progress, call, $"NCCL reported an asynchronous error (a rank or a connection failed): {progress.DescribeNccl(asyncError)}", nccl);
            }
            var elapsed = Stopwatch.GetElapsedTime(start);
            if (timeout >= TimeSpan.Zero && elapsed > timeout)
                throw Fail(progress, call, $"it did not finish within {timeout.TotalSeconds:0.###} s: a rank stopped answering, or is still busy with " +
                    "earlier work (raise Timeout if one step, checkpoint or evaluation takes longer)", null);
            if (elapsed < YieldingPhase) spinner.SpinOnce(sleep1Threshold: -1);
            else Thread.Sleep(1);
        }
    }

    private static CommunicationException Fail<TProgress>(TProgress progress, in CollectiveCall call, string why, Exception? inner) where TProgress : ICollectiveProgress
    {
        int aborted = progress.Abort();
        var outcome = aborted == Nccl.Success
            ? "the NCCL communicator was aborted"
            : $"aborting the NCCL communicator failed too ({progress.DescribeNccl(aborted)})";
        return new CommunicationException($"{call}: {why}. {outcome}; create a new one on every rank to go on (NCCL_DEBUG=WARN prints NCCL's own account).", inner);
    }
}
