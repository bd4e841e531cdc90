using Microsoft.Win32.SafeHandles;

namespace ForwardAD.Cuda.Interop;

/// <summary>A retained primary context of one device; released with the device's ordinal.</summary>
internal sealed class PrimaryContextHandle(int device) : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public int Device { get; } = device;
    public void Attach(IntPtr context) => SetHandle(context);
    protected override bool ReleaseHandle() => CudaDriver.cuDevicePrimaryCtxRelease(Device) == CudaDriver.Success;
}

internal sealed class StreamHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr stream) => SetHandle(stream);
    protected override bool ReleaseHandle() => CudaDriver.cuStreamDestroy(handle) == CudaDriver.Success;
}

internal sealed class EventHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr evt) => SetHandle(evt);
    protected override bool ReleaseHandle() => CudaDriver.cuEventDestroy(handle) == CudaDriver.Success;
}

internal sealed class CudaModuleHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr module) => SetHandle(module);
    protected override bool ReleaseHandle() => CudaDriver.cuModuleUnload(handle) == CudaDriver.Success;
}

internal sealed class GraphExecHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr executable) => SetHandle(executable);
    protected override bool ReleaseHandle() => CudaDriver.cuGraphExecDestroy(handle) == CudaDriver.Success;
}

internal sealed class CublasHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr cublas) => SetHandle(cublas);
    protected override bool ReleaseHandle() => CuBlas.cublasDestroy(handle) == CuBlas.StatusSuccess;
}

internal sealed class NvrtcProgramHandle() : SafeHandleZeroOrMinusOneIsInvalid(ownsHandle: true)
{
    public void Attach(IntPtr program) => SetHandle(program);
    protected override bool ReleaseHandle()
    {
        var program = handle;
        return Nvrtc.nvrtcDestroyProgram(ref program) == Nvrtc.Success;
    }
}
