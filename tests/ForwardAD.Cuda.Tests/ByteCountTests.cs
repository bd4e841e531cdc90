namespace ForwardAD.Cuda.Tests;

/// <summary>Copies of 2 GiB and more: the byte count of a view is computed in 64 bits (length × 4 overflows an int
/// from 2^29 floats on).</summary>
public class ByteCountTests
{
    [Theory]
    [InlineData(0, 0UL)]
    [InlineData(1000, 4000UL)]
    [InlineData((1 << 29) - 1, (1UL << 31) - 4)]
    [InlineData(1 << 29, 1UL << 31)]
    [InlineData(int.MaxValue, 4UL * int.MaxValue)]
    public void Byte_counts_do_not_overflow(int elements, ulong bytes) => Assert.Equal(bytes, (ulong)CudaBackend.ByteCount(elements));
}
