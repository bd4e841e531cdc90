using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace ForwardAD.Backends;

/// <summary>One part of a parallel kernel: runs part <paramref name="part"/> of <paramref name="parts"/> with the
/// kernel's arguments (views and sizes, never spans: a part may run on another thread).</summary>
internal delegate void PartAction<TArguments>(in TArguments arguments, int part, int parts) where TArguments : struct;

/// <summary>A kernel that <see cref="CpuWorkers"/> can split: its arguments are set before each call.</summary>
internal abstract class PartWork
{
    public abstract void RunPart(int part, int parts);
}

/// <summary>A kernel's action and the arguments of its current call; one per kernel and backend, reused every call.</summary>
internal sealed class PartWork<TArguments>(PartAction<TArguments> action) : PartWork where TArguments : struct
{
    public TArguments Arguments;

    public PartAction<TArguments> Action => action;

    public override void RunPart(int part, int parts) => action(Arguments, part, parts);
}

/// <summary>
/// The CPU backend's parallel loop over the parts of one kernel call, without allocating per call (Parallel.For
/// allocates its closure and loop state each time, which the training loop's zero-allocation rule forbids).
/// The calling thread works too: it publishes the call, queues helpers on the .NET thread pool if none is active, and
/// claims parts itself until none are left, so a call finishes even when no pool thread is free (the caller then runs
/// every part). Parts are claimed with one compare-and-swap on a word holding (call number, parts, next part), so a
/// helper can never claim a part of a call that has ended. A helper that runs out of parts waits a short while
/// (<see cref="HelperLingerMicroseconds"/>, yielding the core) for the next call before it returns to the pool: waking a
/// parked pool thread took 0.7–1.7 ms on this machine's virtual CPUs, as long as a whole kernel, while the kernels of one
/// forward pass follow each other within microseconds.
/// Results do not depend on which thread ran which part: every kernel splits so that each output is computed by one
/// part, in the order one thread would use. A backend serves one plan on one thread, so calls do not overlap; if one
/// does anyway (the backend shared between threads, or a part that calls back in), it runs its parts on its own thread.
/// </summary>
internal sealed class CpuWorkers(int helpers) : IThreadPoolWorkItem
{
    /// <summary>How long an idle helper keeps looking for the next call before it returns to the pool.</summary>
    public const int HelperLingerMicroseconds = 500;

    private const int PartBits = 20;
    private const long PartMask = (1L << PartBits) - 1;
    private static readonly long LingerTicks = Stopwatch.Frequency * HelperLingerMicroseconds / 1_000_000;

    private readonly object _gate = new(); // the caller waits on it for the last part (Monitor: nothing allocated lazily)
    private PartWork? _work;
    private int _parts;
    private long _state;     // (call number << 2·PartBits) | (parts << PartBits) | next part
    private int _pending;    // parts not yet finished in this call
    private int _active;     // helpers queued, working or lingering
    private int _busy;       // 1 while a call is in progress
    private int _parks;      // counts Park() calls: a lingering helper leaves when it changes
    private Exception? _error;

    /// <summary>Threads that may run parts: the caller and the helpers.</summary>
    public int Threads => helpers + 1;

    /// <summary>Runs parts 0..parts−1 of <paramref name="work"/> on the caller and the helpers; returns when every part
    /// has finished and rethrows the first exception a part threw.</summary>
    public void Run(PartWork work, int parts)
    {
        if (parts > (int)PartMask) throw new ArgumentOutOfRangeException(nameof(parts), parts, $"At most {PartMask} parts per call.");
        if (parts <= 0) return;
        if (parts == 1 || helpers == 0 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            for (int part = 0; part < parts; part++) work.RunPart(part, parts);
            return;
        }
        try
        {
            RunShared(work, parts);
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
    }

    private void RunShared(PartWork work, int parts)
    {
        _work = work;
        _parts = parts;
        _error = null;
        _pending = parts;
        long call = (Volatile.Read(ref _state) >> (2 * PartBits)) + 1;
        Interlocked.Exchange(ref _state, (call << (2 * PartBits)) | ((long)parts << PartBits)); // publishes the call: parts from 0
        for (int i = Math.Min(helpers, parts - 1) - Volatile.Read(ref _active); i > 0; i--)
        {
            Interlocked.Increment(ref _active);
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
        Work();
        // The helpers' last parts: spin briefly, then sleep until the part that brings _pending to 0 pulses the gate.
        var spinner = new SpinWait();
        while (Volatile.Read(ref _pending) > 0 && !spinner.NextSpinWillYield) spinner.SpinOnce();
        if (Volatile.Read(ref _pending) > 0)
            lock (_gate)
                while (Volatile.Read(ref _pending) > 0) Monitor.Wait(_gate);
        _work = null;
        if (_error is { } error) ExceptionDispatchInfo.Capture(error).Throw(); // the part's own exception, as on one thread
    }

    void IThreadPoolWorkItem.Execute()
    {
        while (true)
        {
            Work();
            long idleSince = Stopwatch.GetTimestamp();
            int parks = Volatile.Read(ref _parks);
            while (!HasParts() && Stopwatch.GetTimestamp() - idleSince < LingerTicks && Volatile.Read(ref _parks) == parks) Thread.Yield();
            if (HasParts()) continue;
            // Leaving: announce it, then look once more, so that a call published meanwhile either sees this helper gone
            // (and queues another) or is seen here.
            Interlocked.Decrement(ref _active);
            if (!HasParts()) return;
            Interlocked.Increment(ref _active);
        }
    }

    /// <summary>Sends lingering helpers back to the pool now: called before work that brings its own threads (a
    /// multi-threaded GEMM), whose threads the lingering helpers would otherwise compete with for the cores.</summary>
    public void Park() => Interlocked.Increment(ref _parks);

    private bool HasParts()
    {
        long state = Volatile.Read(ref _state);
        return (state & PartMask) < ((state >> PartBits) & PartMask);
    }

    /// <summary>Claims and runs parts of the current call until none is left.</summary>
    private void Work()
    {
        while (true)
        {
            long state = Volatile.Read(ref _state);
            long next = state & PartMask, parts = (state >> PartBits) & PartMask;
            if (next >= parts) return;
            if (Interlocked.CompareExchange(ref _state, state + 1, state) != state) continue;
            // Claimed part `next` of this call; the call cannot end (nor its work change) before _pending reaches 0.
            try
            {
                _work!.RunPart((int)next, _parts);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            if (Interlocked.Decrement(ref _pending) == 0)
                lock (_gate) Monitor.PulseAll(_gate);
        }
    }
}
