using System.Runtime.InteropServices;

namespace ForwardAD.Tests;

/// <summary>Bit-for-bit comparison of float spans: <c>SequenceEqual</c> on floats uses <see cref="float.Equals(float)"/>,
/// which calls −0 and +0 equal, and any two NaNs.</summary>
internal static class Bits
{
    public static bool Same(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual) =>
        MemoryMarshal.Cast<float, int>(expected).SequenceEqual(MemoryMarshal.Cast<float, int>(actual));
}
