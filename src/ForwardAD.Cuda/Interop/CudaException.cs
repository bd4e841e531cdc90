namespace ForwardAD.Cuda.Interop;

/// <summary>A CUDA, cuBLAS or NVRTC call failed: carries the function, the status code and the library's own message.</summary>
public class CudaException(string function, int status, string message)
    : Exception($"{function} failed with {status}: {message}")
{
    /// <summary>The native function that failed, with the kernel or module in parentheses where that helps (for example
    /// "cublasGemmEx" or "cuLaunchKernel (im2col)").</summary>
    public string Function { get; } = function;
    /// <summary>The status code it returned (CUresult, cublasStatus_t, nvrtcResult or ncclResult_t, depending on the library).</summary>
    public int Status { get; } = status;
}

/// <summary>Device memory ran out even after the allocator released its cache.</summary>
public sealed class CudaOutOfMemoryException(long requested, long free, long total)
    : CudaException("cuMemAlloc_v2", 2, $"out of device memory: asked for {requested:N0} bytes, {free:N0} of {total:N0} free after releasing the allocator's cache")
{
    /// <summary>Bytes the failed allocation asked for, before rounding.</summary>
    public long Requested { get; } = requested;
    /// <summary>Bytes the driver reported free on the device after the allocator released its cache.</summary>
    public long Free { get; } = free;
}
