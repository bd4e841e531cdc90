using ForwardAD.Cuda.Interop;

namespace ForwardAD.Cuda;

/// <summary>
/// A caching device allocator: freed blocks are kept by size and handed out again to requests of the same
/// (rounded) size, so plans and workspaces compiled repeatedly do not pay cuMemAlloc each time. On
/// out-of-memory it releases the whole cache and retries once, then throws <see cref="CudaOutOfMemoryException"/>
/// with the bytes asked for and the bytes free. Not thread-safe (one per backend, like the stream), but usable from any
/// thread: every call that reaches the driver first makes the backend's context current there.
/// </summary>
public sealed class DeviceAllocator : IDisposable
{
    private const long Granularity = 512;
    private readonly IntPtr _context;

    internal DeviceAllocator(IntPtr context) => _context = context;
    private readonly Dictionary<long, Stack<ulong>> _cache = [];
    private readonly Dictionary<ulong, long> _live = [];

    /// <summary>Bytes in blocks handed out and not returned.</summary>
    public long LiveBytes { get; private set; }
    /// <summary>Bytes held in the cache for reuse.</summary>
    public long CachedBytes { get; private set; }

    /// <summary>The block size a request of <paramref name="bytes"/> gets: rounded up to a multiple of 512 bytes, at least 512.
    /// Blocks are cached and reused by this size.</summary>
    public static long RoundUp(long bytes) => Math.Max(Granularity, (bytes + Granularity - 1) / Granularity * Granularity);

    /// <summary>A device block of at least <paramref name="bytes"/> (<see cref="RoundUp"/>), reused from the cache when one of
    /// that size is free, otherwise from cuMemAlloc. Its contents are undefined.</summary>
    /// <returns>The block's device address; give it back with <see cref="Return"/>.</returns>
    /// <exception cref="CudaOutOfMemoryException">The device has no room even after <see cref="ReleaseCache"/>.</exception>
    /// <exception cref="CudaException">cuMemAlloc failed for another reason.</exception>
    public ulong Allocate(long bytes)
    {
        long size = RoundUp(bytes);
        if (_cache.TryGetValue(size, out var free) && free.Count > 0)
        {
            var reused = free.Pop();
            CachedBytes -= size;
            return Track(reused, size);
        }
        CudaDriver.MakeCurrent(_context);
        int status = CudaDriver.cuMemAlloc(out var pointer, (nuint)size);
        if (status == CudaDriver.ErrorOutOfMemory)
        {
            ReleaseCache();
            status = CudaDriver.cuMemAlloc(out pointer, (nuint)size);
            if (status == CudaDriver.ErrorOutOfMemory)
            {
                CudaDriver.cuMemGetInfo(out var freeBytes, out var total);
                throw new CudaOutOfMemoryException(bytes, (long)freeBytes, (long)total);
            }
        }
        CudaDriver.Check(status, "cuMemAlloc_v2");
        return Track(pointer, size);
    }

    /// <summary>Gives a block back to the cache (not to the driver).</summary>
    public void Return(ulong pointer)
    {
        if (!_live.Remove(pointer, out var size)) throw new ArgumentException($"0x{pointer:X} was not allocated by this allocator or was returned twice.");
        LiveBytes -= size;
        if (!_cache.TryGetValue(size, out var free)) _cache[size] = free = new Stack<ulong>();
        free.Push(pointer);
        CachedBytes += size;
    }

    /// <summary>Frees every cached block back to the driver.</summary>
    public void ReleaseCache()
    {
        if (CachedBytes > 0) CudaDriver.MakeCurrent(_context);
        foreach (var (_, blocks) in _cache)
            while (blocks.Count > 0) CudaDriver.cuMemFree(blocks.Pop());
        CachedBytes = 0;
    }

    private ulong Track(ulong pointer, long size)
    {
        _live[pointer] = size;
        LiveBytes += size;
        return pointer;
    }

    /// <summary>Frees every block, cached or still handed out, back to the driver: addresses from this allocator are invalid afterwards.</summary>
    public void Dispose()
    {
        if (_live.Count > 0 || CachedBytes > 0) CudaDriver.MakeCurrent(_context);
        ReleaseCache();
        foreach (var pointer in _live.Keys) CudaDriver.cuMemFree(pointer);
        _live.Clear();
        LiveBytes = 0;
    }
}
