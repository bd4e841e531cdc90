using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using ForwardAD.Tensors;

namespace ForwardAD.Distributed;

/// <summary>
/// The ranks of an <c>mpiexec</c> job (MPI_COMM_WORLD), through the MPI C library of the MPICH ABI (libmpi.so.12:
/// MPICH, Intel MPI, MVAPICH, Cray MPICH; Debian's <c>mpich</c> package installs it as libmpich.so.12).
/// </summary>
/// <remarks>
/// Why the MPICH ABI: its handles are fixed integers (MPI_COMM_WORLD = 0x44000000, MPI_FLOAT = 0x4c00040a, …) that
/// every MPICH-derived library has kept since the 2013 ABI compatibility initiative, so a handful of
/// <c>[LibraryImport]</c>s and constants bind them all. Open MPI's handles are addresses of its exported objects
/// (ompi_mpi_comm_world, …) and its libmpi.so.40 is not ABI-compatible; it is not loaded.
/// <para>Every collective is the non-blocking form (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) completed by polling
/// MPI_Test, so that a rank which stopped answering is noticed after <see cref="Communicator.Timeout"/>: the waiting
/// rank says so and calls MPI_Abort, which ends every rank of the job (a blocking MPI_Allreduce would wait forever).
/// A rank that dies is noticed by mpiexec, which ends the others.</para>
/// <para>Errors are returned, not fatal (MPI_ERRORS_RETURN on MPI_COMM_WORLD), and thrown as
/// <see cref="MpiException"/> with the function's name and MPI_Error_string's text.</para>
/// </remarks>
public sealed partial class MpiCommunicator : Communicator
{
    // MPICH ABI handles (mpi.h of MPICH 3.x/4.x).
    private const int CommWorld = 0x44000000, Float = 0x4c00040a, Double = 0x4c00080b, Byte = 0x4c00010d, Sum = 0x58000003;
    private const int ErrorsReturn = 0x54000001, ThreadSerialized = 2, Success = 0;
    private static readonly IntPtr InPlace = -1, StatusIgnore = 1;

    private readonly int _rank, _size;
    private readonly string _library;
    private bool _finalized;

    private MpiCommunicator(int rank, int size, string library) => (_rank, _size, _library) = (rank, size, library);

    /// <summary>This process's rank in MPI_COMM_WORLD.</summary>
    public override int Rank => _rank;
    /// <summary>The number of processes in MPI_COMM_WORLD.</summary>
    public override int Size => _size;
    /// <summary>The library's version from the first line of MPI_Get_library_version ("MPICH 4.0.2"), or "MPI".</summary>
    public override string Name => _library;

    /// <summary>True when this process was started by an MPI launcher (<c>mpiexec</c>, <c>mpirun</c>, Slurm's PMI):
    /// the launcher's environment (PMI_RANK/PMI_SIZE of MPICH's Hydra, PMIX_RANK, OMPI_COMM_WORLD_SIZE) is set.</summary>
    public static bool IsLaunchedByMpi =>
        Environment.GetEnvironmentVariable("PMI_SIZE") is not null || Environment.GetEnvironmentVariable("PMI_RANK") is not null
        || Environment.GetEnvironmentVariable("PMIX_RANK") is not null || Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null;

    /// <summary>Whether an MPI library of the MPICH ABI can be loaded, and if not, why and what to install.</summary>
    public static bool IsAvailable(out string reason)
    {
        if (NativeLibraries.TryLoad(NativeLibraries.Mpi)) { reason = ""; return true; }
        reason = "no MPI library of the MPICH ABI (libmpi.so.12 or libmpich.so.12) could be loaded. Install MPICH (apt-get install mpich) " +
            "or another MPICH-ABI MPI (Intel MPI, MVAPICH); Open MPI's libmpi.so.40 has another ABI and is not supported";
        return false;
    }

    /// <summary>Initialises MPI (once per process) and returns MPI_COMM_WORLD. Call it in every rank of an <c>mpiexec</c>
    /// job; dispose it at the end of the program (MPI_Finalize).</summary>
    public static unsafe MpiCommunicator Initialize()
    {
        if (!IsAvailable(out var reason)) throw new CommunicationException($"MPI: {reason}.");
        int initialized;
        Check(MPI_Initialized(&initialized), "MPI_Initialized");
        if (initialized == 0)
        {
            int provided;
            Check(MPI_Init_thread(IntPtr.Zero, IntPtr.Zero, ThreadSerialized, &provided), "MPI_Init_thread");
            // One thread at a time calls MPI, not always the one that initialised it (a library user's thread pool).
            if (provided < ThreadSerialized)
                throw new CommunicationException($"MPI_Init_thread: the MPI library provides thread level {provided}; ForwardAD needs MPI_THREAD_SERIALIZED ({ThreadSerialized}) or more. Use an MPI built with thread support (Debian's mpich is).");
        }
        Check(MPI_Comm_set_errhandler(CommWorld, ErrorsReturn), "MPI_Comm_set_errhandler");
        int rank, size;
        Check(MPI_Comm_rank(CommWorld, &rank), "MPI_Comm_rank");
        Check(MPI_Comm_size(CommWorld, &size), "MPI_Comm_size");
        // A launcher of another MPI (Open MPI's mpirun) starting processes linked to this one: each would come up as its
        // own job of one rank and train alone, all writing the same files.
        foreach (var variable in new[] { "PMI_SIZE", "OMPI_COMM_WORLD_SIZE" })
            if (int.TryParse(Environment.GetEnvironmentVariable(variable), out int launched) && launched != size)
                throw new CommunicationException($"The launcher started {launched} processes ({variable}) but MPI sees {size}: the job was started by another MPI's launcher than the library loaded ({LibraryVersion()}). Start it with that library's mpiexec (MPICH: mpiexec.hydra).");
        return new MpiCommunicator(rank, size, LibraryVersion());
    }

    private static unsafe string LibraryVersion()
    {
        const int Capacity = 8192; // MPI_MAX_LIBRARY_VERSION_STRING
        byte* text = stackalloc byte[Capacity];
        int length;
        if (MPI_Get_library_version(text, &length) != Success) return "MPI";
        var version = System.Text.Encoding.UTF8.GetString(text, Math.Clamp(length, 0, Capacity)).Trim('\0', ' ', '\n');
        int line = version.IndexOfAny(['\n', '\r']);
        // MPICH's first line is "MPICH Version:\t4.0.2": "MPICH 4.0.2".
        var first = line > 0 ? version[..line] : version;
        return string.Join(' ', first.Replace("Version:", "", StringComparison.Ordinal).Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries));
    }

    /// <inheritdoc/>
    /// <remarks>MPI_Iallreduce in place, in pieces of at most 2³¹ − 1 elements, polled until done or until
    /// <see cref="Communicator.Timeout"/>, which aborts the job. Throws <see cref="MpiException"/> when MPI returns an error.</remarks>
    protected override void AllReduceSumCore(Span<float> buffer) => AllReduceSum(buffer, Float);
    /// <inheritdoc cref="AllReduceSumCore(Span{float})"/>
    protected override void AllReduceSumCore(Span<double> buffer) => AllReduceSum(buffer, Double);

    /// <summary>MPI_Iallreduce(MPI_IN_PLACE, …, MPI_SUM) in pieces of at most 2³¹ − 1 elements (MPI counts are ints).</summary>
    private unsafe void AllReduceSum<T>(Span<T> buffer, int type) where T : unmanaged
    {
        fixed (T* data = buffer)
            for (long done = 0; done < buffer.Length;)
            {
                int count = (int)Math.Min(int.MaxValue, buffer.Length - done);
                int request;
                Check(MPI_Iallreduce(InPlace, data + done, count, type, Sum, CommWorld, &request), "MPI_Iallreduce");
                Wait(ref request, "MPI_Iallreduce");
                done += count;
            }
    }

    /// <inheritdoc/>
    /// <remarks>MPI_Ibcast in pieces of at most 2³¹ − 1 bytes, polled under <see cref="Communicator.Timeout"/> like the sums.</remarks>
    protected override unsafe void BroadcastCore(Span<byte> buffer, int root)
    {
        fixed (byte* data = buffer)
            for (long done = 0; done < buffer.Length;)
            {
                int count = (int)Math.Min(int.MaxValue, buffer.Length - done);
                int request;
                Check(MPI_Ibcast(data + done, count, Byte, root, CommWorld, &request), "MPI_Ibcast");
                Wait(ref request, "MPI_Ibcast");
                done += count;
            }
    }

    /// <inheritdoc/>
    /// <remarks>MPI_Ibarrier, polled under <see cref="Communicator.Timeout"/>.</remarks>
    protected override unsafe void BarrierCore()
    {
        int request;
        Check(MPI_Ibarrier(CommWorld, &request), "MPI_Ibarrier");
        Wait(ref request, "MPI_Ibarrier");
    }

    /// <summary>Polls MPI_Test (which also drives MPI's progress) until the operation completes: spinning for the first
    /// 50 µs (small messages finish there), then yielding the core, and after <see cref="Communicator.Timeout"/> ends the
    /// job: the other ranks would otherwise wait for this one forever.</summary>
    private unsafe void Wait(ref int request, string function)
    {
        long start = Stopwatch.GetTimestamp();
        long spinUntil = start + Stopwatch.Frequency / 20_000;
        // A negative (infinite) or very long timeout waits without a deadline.
        double ticks = Timeout.TotalSeconds * Stopwatch.Frequency;
        long deadline = Timeout < TimeSpan.Zero || ticks >= long.MaxValue - start ? long.MaxValue : start + (long)ticks;
        int done = 0;
        fixed (int* handle = &request)
            while (true)
            {
                // The operation still writes into the pinned buffer: a failure here cannot unwind past it, it ends the job.
                int status = MPI_Test(handle, &done, StatusIgnore);
                if (status != Success) Abort($"{function} on rank {_rank} of {_size}: {new MpiException("MPI_Test", status, ErrorText(status)).Message}. Ending the job");
                if (done != 0) return;
                long now = Stopwatch.GetTimestamp();
                if (now > deadline) Abort($"{function} on rank {_rank} of {_size} waited {Timeout.TotalSeconds:0.#} s for the other ranks: a rank stopped answering " +
                    "(hung, stopped, on a lost host, or it ended early or takes other steps because it was started with other options or data). Ending the job");
                if (now > spinUntil) Thread.Sleep(now - start > Stopwatch.Frequency / 100 ? 1 : 0);
            }
    }

    /// <summary>Says why on standard error, then ends every rank of the job (MPI_Abort does not return).</summary>
    [DoesNotReturn]
    public void Abort(string message, int exitCode = 70)
    {
        Console.Error.WriteLine($"forwardad: {message}{(message.EndsWith('.') ? "" : ".")}");
        Console.Error.Flush();
        _ = MPI_Abort(CommWorld, exitCode);
        Environment.Exit(exitCode); // not reached: MPI_Abort ends the process
        throw new UnreachableException();
    }

    private static void Check(int status, string function)
    {
        if (status != Success) throw new MpiException(function, status, ErrorText(status));
    }

    private static unsafe string ErrorText(int status)
    {
        const int Capacity = 512; // MPI_MAX_ERROR_STRING
        byte* text = stackalloc byte[Capacity + 1];
        int length = 0;
        return MPI_Error_string(status, text, &length) == Success ? System.Text.Encoding.UTF8.GetString(text, Math.Clamp(length, 0, Capacity)) : "no description";
    }

    /// <summary>Calls MPI_Finalize unless MPI is finalised already; MPI cannot be initialised again in this process.</summary>
    protected override void Dispose(bool disposing)
    {
        if (_finalized) return;
        _finalized = true;
        unsafe
        {
            int finalized;
            if (MPI_Finalized(&finalized) == Success && finalized == 0) _ = MPI_Finalize();
        }
    }

    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Initialized(int* flag);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Finalized(int* flag);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Init_thread(IntPtr argc, IntPtr argv, int required, int* provided);
    [LibraryImport(NativeLibraries.Mpi)] private static partial int MPI_Finalize();
    [LibraryImport(NativeLibraries.Mpi)] private static partial int MPI_Comm_set_errhandler(int communicator, int handler);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Comm_rank(int communicator, int* rank);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Comm_size(int communicator, int* size);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Iallreduce(IntPtr send, void* receive, int count, int type, int operation, int communicator, int* request);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Ibcast(void* buffer, int count, int type, int root, int communicator, int* request);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Ibarrier(int communicator, int* request);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Test(int* request, int* flag, IntPtr status);
    [LibraryImport(NativeLibraries.Mpi)] private static partial int MPI_Abort(int communicator, int errorCode);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Error_string(int error, byte* text, int* length);
    [LibraryImport(NativeLibraries.Mpi)] private static unsafe partial int MPI_Get_library_version(byte* text, int* length);
}

/// <summary>An MPI call returned an error: the function, its error code and MPI_Error_string's text.</summary>
public sealed class MpiException(string function, int status, string message)
    : CommunicationException($"{function} failed with error {status}: {message}")
{
    /// <summary>The MPI function that failed ("MPI_Iallreduce").</summary>
    public string Function { get; } = function;
    /// <summary>The error code it returned (the MPI library's own numbering; see <see cref="Exception.Message"/> for its text).</summary>
    public int Status { get; } = status;
}
