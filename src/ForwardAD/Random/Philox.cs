using System.Runtime.CompilerServices;

namespace ForwardAD.Random;

/// <summary>
/// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC'11):
/// a counter-based generator, a pure function of a 128-bit counter and a 64-bit key. Any number
/// can be regenerated from its coordinates without storing it, and every backend that runs the
/// same ten rounds draws the same bits.
/// </summary>
public static class Philox
{
    private const uint MultiplierA = 0xD2511F53, MultiplierB = 0xCD9E8D57;
    private const uint WeylA = 0x9E3779B9, WeylB = 0xBB67AE85;

    /// <summary>The ten-round block function: four output words from counter (c0..c3) and key (k0, k1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (uint, uint, uint, uint) Block(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
    {
        for (int round = 0; round < 10; round++)
        {
            if (round > 0) { k0 += WeylA; k1 += WeylB; }
            ulong productA = (ulong)MultiplierA * c0;
            ulong productB = (ulong)MultiplierB * c2;
            uint hiA = (uint)(productA >> 32), loA = (uint)productA;
            uint hiB = (uint)(productB >> 32), loB = (uint)productB;
            (c0, c1, c2, c3) = (hiB ^ c1 ^ k0, loB, hiA ^ c3 ^ k1, loA);
        }
        return (c0, c1, c2, c3);
    }
}
