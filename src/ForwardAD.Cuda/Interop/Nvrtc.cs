using System.Runtime.InteropServices;

namespace ForwardAD.Cuda.Interop;

/// <summary>The NVRTC entry points used to compile the embedded kernel sources at run time (nvrtc.h).</summary>
internal static unsafe partial class Nvrtc
{
    public const int Success = 0, ErrorCompilation = 6;

    [LibraryImport(NativeLibraries.Nvrtc)]
    public static partial int nvrtcCreateProgram(out IntPtr program, byte* source, byte* name, int headerCount, byte** headers, byte** includeNames);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcDestroyProgram(ref IntPtr program);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcCompileProgram(IntPtr program, int optionCount, byte** options);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetProgramLogSize(IntPtr program, out nuint size);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetProgramLog(IntPtr program, byte* log);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetCUBINSize(IntPtr program, out nuint size);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetCUBIN(IntPtr program, byte* cubin);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetPTXSize(IntPtr program, out nuint size);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial int nvrtcGetPTX(IntPtr program, byte* ptx);
    [LibraryImport(NativeLibraries.Nvrtc)] public static partial byte* nvrtcGetErrorString(int status);

    public static void Check(int status, string function, string? log = null)
    {
        if (status == Success) return;
        var message = nvrtcGetErrorString(status);
        var text = message == null ? "unknown NVRTC status" : Marshal.PtrToStringUTF8((IntPtr)message) ?? "";
        throw new CudaException(function, status, log is null ? text : $"{text}\n{log}");
    }
}
