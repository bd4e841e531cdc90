using System.Runtime.InteropServices;

namespace ForwardAD.Cuda.Interop;

/// <summary>The CUDA driver API entry points the backend uses (cuda.h). Every call's status goes through <see cref="Check"/>.</summary>
internal static unsafe partial class CudaDriver
{
    public const int Success = 0, ErrorOutOfMemory = 2;
    public const int AttributeMultiprocessorCount = 16, AttributeComputeCapabilityMajor = 75, AttributeComputeCapabilityMinor = 76;
    public const uint StreamNonBlocking = 1;
    public const int StreamCaptureModeThreadLocal = 1;

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxSetCurrent(IntPtr context);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxGetCurrent(out IntPtr context);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(out ulong pointer, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong pointer);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemGetInfo_v2")] public static partial int cuMemGetInfo(out nuint free, out nuint total);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial int cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial int cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoDAsync_v2")] public static partial int cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuMemsetD32Async(ulong destination, uint value, nuint count, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamSynchronize(IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventCreate(out IntPtr evt, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(IntPtr evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventRecord(IntPtr evt, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventSynchronize(IntPtr evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleLoadData(out IntPtr module, void* image);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleUnload(IntPtr module);
    [LibraryImport(NativeLibraries.Driver, StringMarshalling = StringMarshalling.Utf8)] public static partial int cuModuleGetFunction(out IntPtr function, IntPtr module, string name);
    [LibraryImport(NativeLibraries.Driver)]
    public static partial int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** parameters, void** extra);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuStreamBeginCapture_v2")] public static partial int cuStreamBeginCapture(IntPtr stream, int mode);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamEndCapture(IntPtr stream, out IntPtr graph);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphInstantiateWithFlags(out IntPtr executable, IntPtr graph, ulong flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphLaunch(IntPtr executable, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphDestroy(IntPtr graph);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphExecDestroy(IntPtr executable);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGetErrorName(int status, out byte* name);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGetErrorString(int status, out byte* message);

    /// <summary>Throws a <see cref="CudaException"/> with the function's name and the driver's own name and message for the status.</summary>
    public static void Check(int status, string function)
    {
        if (status != Success) throw new CudaException(function, status, Describe(status));
    }

    /// <summary>
    /// Makes <paramref name="context"/> current on the calling thread unless it already is. The driver keeps the current
    /// context per thread, so a backend created on one thread and used on another (a thread-pool continuation, a second
    /// trainer thread, a finalizer) would otherwise fail with CUDA_ERROR_INVALID_CONTEXT, or run in another device's
    /// context. Asking the driver (a thread-local read) rather than caching in a [ThreadStatic] keeps no state of our own
    /// and stays right when other code on the thread switches contexts.
    /// </summary>
    public static void MakeCurrent(IntPtr context)
    {
        Check(cuCtxGetCurrent(out var current), "cuCtxGetCurrent");
        if (current != context) Check(cuCtxSetCurrent(context), "cuCtxSetCurrent");
    }

    public static string Describe(int status)
    {
        string name = cuGetErrorName(status, out var namePointer) == Success && namePointer != null ? Marshal.PtrToStringUTF8((IntPtr)namePointer) ?? "" : "unknown status";
        string message = cuGetErrorString(status, out var messagePointer) == Success && messagePointer != null ? Marshal.PtrToStringUTF8((IntPtr)messagePointer) ?? "" : "";
        return $"{name}: {message}";
    }
}
