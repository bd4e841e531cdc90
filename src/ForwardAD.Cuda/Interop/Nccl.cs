using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace ForwardAD.Cuda.Interop;

/// <summary>
/// The NCCL 2 entry points the NCCL communicator uses (nccl.h). Collectives return once they are queued on the stream;
/// their completion and NCCL's asynchronous errors are polled (<see cref="ncclCommGetAsyncError"/>, cuStreamQuery), so
/// a wait can end at the communicator's timeout. Every call's status goes through <see cref="Check"/>.
/// </summary>
internal static unsafe partial class Nccl
{
    // ncclResult_t.
    public const int Success = 0, UnhandledCudaError = 1, SystemError = 2, InternalError = 3, InvalidArgument = 4,
        InvalidUsage = 5, RemoteError = 6, InProgress = 7, Timeout = 8;

    // ncclDataType_t (nccl.h: ncclInt8 = 0 … ncclFloat64 = 8; ncclChar, ncclInt, ncclHalf, ncclFloat and ncclDouble alias them).
    public const int Int8 = 0, Uint8 = 1, Int32 = 2, Uint32 = 3, Int64 = 4, Uint64 = 5, Float16 = 6, Float32 = 7, Float64 = 8;

    // ncclRedOp_t.
    public const int Sum = 0;

    /// <summary>NCCL_UNIQUE_ID_BYTES: the size of <see cref="NcclUniqueId"/>.</summary>
    public const int UniqueIdBytes = 128;

    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclGetVersion(out int version);
    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclGetUniqueId(out NcclUniqueId uniqueId);
    // The id goes by value (a 128-byte struct), as nccl.h declares it; the marshaller copies the blittable struct onto the stack.
    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclCommInitRank(out IntPtr comm, int ranks, NcclUniqueId commId, int rank);
    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclCommDestroy(IntPtr comm);
    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclCommAbort(IntPtr comm);
    [LibraryImport(NativeLibraries.Nccl)] public static partial int ncclCommGetAsyncError(IntPtr comm, out int asyncError);
    // Device pointers travel as CUdeviceptr (ulong), as in the cuBLAS bindings; sendbuff == recvbuff is NCCL's in-place form.
    [LibraryImport(NativeLibraries.Nccl)]
    public static partial int ncclAllReduce(ulong sendBuffer, ulong receiveBuffer, nuint count, int dataType, int operation, IntPtr comm, IntPtr stream);
    [LibraryImport(NativeLibraries.Nccl)]
    public static partial int ncclBroadcast(ulong sendBuffer, ulong receiveBuffer, nuint count, int dataType, int root, IntPtr comm, IntPtr stream);
    [LibraryImport(NativeLibraries.Nccl)] public static partial byte* ncclGetErrorString(int result);
    // Since NCCL 2.13; older libraries lack the symbol, which LastError tolerates.
    [LibraryImport(NativeLibraries.Nccl)] public static partial byte* ncclGetLastError(IntPtr comm);

    /// <summary>Throws a <see cref="NcclException"/> with the function's name, the result's name, NCCL's string for it and
    /// NCCL's account of the last error (which names the cause: the peer, the socket, the CUDA call).</summary>
    public static void Check(int status, string function)
    {
        if (status != Success) throw new NcclException(function, status, Describe(status));
    }

    /// <summary>"ncclSystemError: unhandled system error (…) — last error: socket connect to 10.0.0.2 failed".</summary>
    public static string Describe(int status)
    {
        var text = ncclGetErrorString(status);
        var message = $"{ResultName(status)}: {(text == null ? "unknown NCCL result" : Marshal.PtrToStringUTF8((IntPtr)text))}";
        var last = LastError();
        return string.IsNullOrWhiteSpace(last) ? message : $"{message} (last error: {last.Trim()})";
    }

    /// <summary>ncclGetLastError's text, or empty on a library older than NCCL 2.13. Its argument is unused by NCCL (the
    /// text is the calling thread's), so null is passed: it also works once the communicator has been aborted.</summary>
    public static string LastError()
    {
        try
        {
            var text = ncclGetLastError(IntPtr.Zero);
            return text == null ? "" : Marshal.PtrToStringUTF8((IntPtr)text) ?? "";
        }
        catch (EntryPointNotFoundException) { return ""; }
    }

    /// <summary>The enumerator's name in nccl.h, for messages (NCCL's own string says what it means).</summary>
    public static string ResultName(int status) => status switch
    {
        Success => "ncclSuccess",
        UnhandledCudaError => "ncclUnhandledCudaError",
        SystemError => "ncclSystemError",
        InternalError => "ncclInternalError",
        InvalidArgument => "ncclInvalidArgument",
        InvalidUsage => "ncclInvalidUsage",
        RemoteError => "ncclRemoteError",
        InProgress => "ncclInProgress",
        Timeout => "ncclTimeout",
        _ => $"ncclResult {status}",
    };

    /// <summary>Splits NCCL_VERSION_CODE: X·10000 + Y·100 + Z from 2.9 on, X·1000 + Y·100 + Z before (nccl.h's NCCL_VERSION).</summary>
    public static (int Major, int Minor, int Patch) DecodeVersion(int code) =>
        code >= 10000 ? (code / 10000, code / 100 % 100, code % 100) : (code / 1000, code / 100 % 10, code % 100);
}

/// <summary>ncclUniqueId: 128 opaque bytes that rank 0 creates and every rank passes to ncclCommInitRank.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NcclUniqueId
{
    public fixed byte Internal[Nccl.UniqueIdBytes];

    /// <summary>The id's bytes, to send through the bootstrap communicator.</summary>
    public static Span<byte> Bytes(ref NcclUniqueId id) => MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(ref id, 1));
}

/// <summary>An NCCL call failed: the function, the ncclResult_t and NCCL's own message.</summary>
public sealed class NcclException(string function, int status, string message) : CudaException(function, status, message);

/// <summary>An ncclComm_t. Released with ncclCommDestroy, or ended at once with <see cref="Abort"/> when a collective
/// failed or timed out (ncclCommDestroy would wait for the operation that never finishes).</summary>
internal sealed class NcclCommHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr comm) => SetHandle(comm);

    /// <summary>Calls ncclCommAbort and marks the handle closed, so that the release does not destroy it a second time.
    /// Returns NCCL's status rather than throwing: it runs while an earlier failure is being reported, and must not hide it.</summary>
    public int Abort()
    {
        if (IsClosed || IsInvalid) return Nccl.Success;
        var comm = handle;
        SetHandleAsInvalid();
        return Nccl.ncclCommAbort(comm);
    }

    protected override bool ReleaseHandle() => Nccl.ncclCommDestroy(handle) == Nccl.Success;
}

// cuStreamQuery lets a collective's wait end at a timeout, where cuStreamSynchronize would block for good. It belongs with
// the driver's other entry points; it is declared here, as part of the same partial class, to keep this change to the
// NCCL files.
internal static partial class CudaDriver
{
    public const int ErrorNotReady = 600;

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamQuery(IntPtr stream);
}
