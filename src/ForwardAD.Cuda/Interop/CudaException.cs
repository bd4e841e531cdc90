namespace ForwardAD.Cuda.Interop;

/// <summary>A CUDA, cuBLAS or NVRTC call failed: carries the function, the status code and the library's own message.</summary>
public class CudaException(string function, int status, string message)
    : Exception($"{function} failed with {status}: {message}")
{
    public string Function { get; } = function;
    public int Status { get; } = status;
}

/// <summary>Device memory ran out even after the allocator released its cache.</summary>
public sealed class CudaOutOfMemoryException(long requested, long free, long total)
    : CudaException("cuMemAlloc_v2", 2, $"out of device memory: asked for {requested:N0} bytes, {free:N0} of {total:N0} free after releasing the allocator's cache")
{
    public long Requested { get; } = requested;
    public long Free { get; } = free;
}
