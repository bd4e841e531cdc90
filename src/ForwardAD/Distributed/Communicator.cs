using System.Runtime.InteropServices;
using ForwardAD.Backends;

namespace ForwardAD.Distributed;

/// <summary>
/// A group of ranks that run the same program on their own shares of the data (docs/design.md §7): rank, size, in-place sums,
/// broadcast and barrier. Backends: <see cref="SingleProcess"/> (size 1, every operation a no-op),
/// <see cref="InProcessCommunicator"/> (threads of one process), <see cref="MpiCommunicator"/> (processes started by
/// <c>mpiexec</c>) and, on GPU hosts, NCCL (ForwardAD.Cuda). Every operation counts the bytes it was handed
/// (<see cref="Traffic"/>), so a run reports what each method exchanges, measured rather than computed.
/// </summary>
/// <remarks>Every rank must call the same operations in the same order with the same lengths (as in MPI). A rank that
/// stops answering is noticed after <see cref="Timeout"/>: the operation throws <see cref="CommunicationException"/>
/// (MPI ends the whole job), so no rank waits forever.</remarks>
public abstract class Communicator : IDisposable
{
    private long _reducedBytes, _broadcastBytes, _operations;
    private float[] _staging = []; // host copy of another backend's buffers, reused (no allocation per step)

    /// <summary>This process's (or thread's) rank, 0 ≤ Rank &lt; Size.</summary>
    public abstract int Rank { get; }

    /// <summary>The number of ranks.</summary>
    public abstract int Size { get; }

    /// <summary>What carries the messages, for banners and reports ("MPICH 4.0.2", "threads").</summary>
    public abstract string Name { get; }

    /// <summary>How long one operation may wait for the other ranks before the job is ended (default 60 s; a step, a
    /// checkpoint or an evaluation on one rank must fit in it).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>A communicator of one rank: sums and broadcasts leave the data as it is.</summary>
    public static Communicator SingleProcess { get; } = new SingleProcessCommunicator();

    /// <summary>Bytes handed to all-reduce and broadcast, and the number of operations, since the start. One rank sends
    /// nothing: its operations are not counted.</summary>
    public CommunicationTraffic Traffic => new(Interlocked.Read(ref _reducedBytes), Interlocked.Read(ref _broadcastBytes), Interlocked.Read(ref _operations));

    /// <summary>Replaces <paramref name="buffer"/> on every rank by the element-wise sum over all ranks. Every rank gets
    /// the same bits.</summary>
    public void AllReduceSum(Span<float> buffer)
    {
        Count(ref _reducedBytes, (long)buffer.Length * sizeof(float));
        if (Size > 1 && !buffer.IsEmpty) AllReduceSumCore(buffer);
    }

    /// <inheritdoc cref="AllReduceSum(Span{float})"/>
    public void AllReduceSum(Span<double> buffer)
    {
        Count(ref _reducedBytes, (long)buffer.Length * sizeof(double));
        if (Size > 1 && !buffer.IsEmpty) AllReduceSumCore(buffer);
    }

    /// <summary>Sums a buffer of <paramref name="backend"/> over the ranks, in place. The CPU backend's buffers are summed
    /// where they lie; other backends' go through the host unless the communicator reaches their memory (NCCL).</summary>
    public void AllReduceSum(Backend backend, View buffer)
    {
        if (Size == 1 || buffer.Length == 0) return;
        if (TryAllReduceOnDevice(backend, buffer)) { Count(ref _reducedBytes, (long)buffer.Length * sizeof(float)); return; }
        if (backend is CpuBackend) { AllReduceSum(CpuBackend.Span(buffer)); return; }
        if (_staging.Length < buffer.Length) _staging = new float[buffer.Length];
        var host = _staging.AsSpan(0, buffer.Length);
        backend.CopyToHost(buffer, host);
        AllReduceSum(host);
        backend.CopyFromHost(host, buffer);
    }

    /// <summary>Copies <paramref name="buffer"/> of rank <paramref name="root"/> to every other rank.</summary>
    public void Broadcast(Span<byte> buffer, int root = 0)
    {
        if ((uint)root >= (uint)Size) throw new ArgumentOutOfRangeException(nameof(root), $"The root must be a rank from 0 to {Size - 1}; got {root}.");
        Count(ref _broadcastBytes, buffer.Length);
        if (Size > 1 && !buffer.IsEmpty) BroadcastCore(buffer, root);
    }

    /// <summary>Returns when every rank has called it.</summary>
    public void Barrier()
    {
        if (Size == 1) return;
        Interlocked.Increment(ref _operations);
        BarrierCore();
    }

    /// <summary>Rank <paramref name="root"/>'s text on every rank (its length first, then its UTF-8 bytes).</summary>
    public string BroadcastText(string text, int root = 0)
    {
        var bytes = Rank == root ? System.Text.Encoding.UTF8.GetBytes(text) : [];
        Span<byte> length = stackalloc byte[sizeof(int)];
        MemoryMarshal.Write(length, bytes.Length);
        Broadcast(length, root);
        int count = MemoryMarshal.Read<int>(length);
        if (Rank != root) bytes = new byte[count];
        Broadcast(bytes, root);
        return Rank == root ? text : System.Text.Encoding.UTF8.GetString(bytes);
    }

    /// <summary>Rank 0 alone writes <paramref name="path"/> (every rank holds the same state); then every rank learns whether it
    /// succeeded, so that a failed write stops the whole job, not rank 0 alone while the others wait for it.</summary>
    public void WriteOnRankZero(string path, Action write)
    {
        if (Size == 1) { write(); return; }
        Exception? failure = null;
        if (Rank == 0)
            try { write(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { failure = e; }
        bool written = AllAgree(failure is null);
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        if (!written) throw new CommunicationException($"Rank 0 could not write {path} (it says why); the previous file, if any, is intact.");
    }

    /// <summary>True on every rank when <paramref name="value"/> is true on every rank.</summary>
    public bool AllAgree(bool value)
    {
        Span<double> flag = [value ? 0 : 1];
        AllReduceSum(flag);
        return flag[0] == 0;
    }

    private void Count(ref long bytes, long added)
    {
        if (Size == 1) return;
        Interlocked.Add(ref bytes, added);
        Interlocked.Increment(ref _operations);
    }

    /// <summary>The transport's in-place sum over the ranks, called by <see cref="AllReduceSum(Span{float})"/> only when
    /// <see cref="Size"/> &gt; 1 and the buffer is not empty (the bytes are already counted). Every rank must get the same bits.
    /// A rank that does not answer within <see cref="Timeout"/> makes it throw <see cref="CommunicationException"/> (MPI
    /// ends the whole job instead).</summary>
    protected abstract void AllReduceSumCore(Span<float> buffer);
    /// <inheritdoc cref="AllReduceSumCore(Span{float})"/>
    protected abstract void AllReduceSumCore(Span<double> buffer);
    /// <summary>The transport's copy of rank <paramref name="root"/>'s <paramref name="buffer"/> into every other rank's,
    /// called by <see cref="Broadcast"/> only when <see cref="Size"/> &gt; 1, the buffer is not empty and the root is valid.</summary>
    protected abstract void BroadcastCore(Span<byte> buffer, int root);
    /// <summary>The transport's barrier, called by <see cref="Barrier"/> only when <see cref="Size"/> &gt; 1: returns when
    /// every rank has entered it, or throws <see cref="CommunicationException"/> after <see cref="Timeout"/> (MPI ends the job).</summary>
    protected abstract void BarrierCore();

    /// <summary>Sums a device buffer without going through the host, when this communicator can (NCCL on CUDA memory).</summary>
    protected virtual bool TryAllReduceOnDevice(Backend backend, View buffer) => false;

    /// <summary>Releases the transport: MPI is finalised (MPI_Finalize, so once per process), NCCL's communicator destroyed;
    /// threads and a single process hold nothing. No operation may follow.</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the transport's resources; <paramref name="disposing"/> is false when called from a finalizer, where
    /// only unmanaged handles may be touched. Overrides call the base.</summary>
    protected virtual void Dispose(bool disposing) { }

    /// <summary>"rank R of N (Name)", for logs.</summary>
    public override string ToString() => $"rank {Rank} of {Size} ({Name})";

    private sealed class SingleProcessCommunicator : Communicator
    {
        public override int Rank => 0;
        public override int Size => 1;
        public override string Name => "one process";
        protected override void AllReduceSumCore(Span<float> buffer) { }
        protected override void AllReduceSumCore(Span<double> buffer) { }
        protected override void BroadcastCore(Span<byte> buffer, int root) { }
        protected override void BarrierCore() { }
    }
}

/// <summary>Bytes a communicator was handed since it started: the payload of its sums and broadcasts (what a rank
/// contributes, not what the transport moves: a ring all-reduce moves 2(N−1)/N of it each way).</summary>
public readonly record struct CommunicationTraffic(long ReducedBytes, long BroadcastBytes, long Operations)
{
    /// <summary>Bytes of all-reduce and broadcast payload together.</summary>
    public long TotalBytes => ReducedBytes + BroadcastBytes;
    /// <summary>The traffic between two readings, component by component: what happened after <paramref name="b"/> was read.</summary>
    public static CommunicationTraffic operator -(CommunicationTraffic a, CommunicationTraffic b) =>
        new(a.ReducedBytes - b.ReducedBytes, a.BroadcastBytes - b.BroadcastBytes, a.Operations - b.Operations);
}

/// <summary>A collective operation failed or a rank stopped answering.</summary>
public class CommunicationException(string message, Exception? inner = null) : Exception(message, inner);
