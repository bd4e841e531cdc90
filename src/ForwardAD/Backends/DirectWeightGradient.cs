using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ForwardAD.Backends;

/// <summary>
/// The weight VJP of a stride-1 convolution as an implicit GEMM on the CPU: W̄[o, j] (+)= Σ_q A[q, j]·s̄[q, o], summed over the
/// output positions q = (n, oy, ox), with A = cols(x) never written out. Patch entry j = (ky, kx, c) of position q is read straight
/// from the zero-padded channels-last image at base(q) + offset(j), base(q) = (oy·Wp + ox)·C, offset(j) = (ky·Wp + kx)·C + c
/// (the same addressing as <see cref="DirectConvolution"/>'s forward). The register tile is 6 patch entries × 16 output channels
/// in twelve 8-wide accumulators: per position two vector loads of s̄'s row and six broadcasts from the image, twelve FMAs.
/// Positions run in blocks of a few output rows (<see cref="BlockPositions"/>) through every tile before the next block, so the
/// block's s̄ rows and the image rows they meet are read from L1 by all tiles; between blocks a tile's accumulators rest in a
/// buffer [outputs/16, patch rounded up to 6, 16] (73 KiB, in L2, for the benchmark CNN's conv2).
/// Why not im2col + GEMM: the columns (kh·kw times the image) are written and read again, which costs most where the patch or the
/// outputs are few (conv1: 27-float patches); with 128 outputs OpenBLAS's GEMM outruns this kernel and im2col wins. Why not shifted
/// GEMMs over a padded row layout (kn2row): they multiply padding rows too and OpenBLAS runs their thin products (O × C × rows)
/// below its large-GEMM rate. Measured: see <see cref="CpuBackend.ConvolutionVjps"/>.
/// Parts split the tiles, never the positions: every W̄ entry is summed by one part, over the positions in order, so the result
/// has the same bits at any thread count.
/// </summary>
internal static class DirectWeightGradient
{
    /// <summary>Patch entries and output channels per register tile.</summary>
    public const int TileRows = 6, TileColumns = 16;

    /// <summary>Output positions per block (whole output rows, at least one): with 16 channels of s̄ (4 KiB) and the image rows they
    /// meet, well inside L1. Measured on the benchmark CNN's conv2 W̄ (interleaved runs, minima): 32, 64 and 128 positions 15.7, 15.5
    /// and 16.1 ms; conv1 3.9–4.2 ms for any. (Keeping the accumulators of a very large W̄ in L2 by summing it in groups of tiles, one
    /// pass over the positions per group, was slower: 3×3, 128 → 128 channels 37 ms in groups of 128 KiB against 34 in one.)</summary>
    private const int BlockPositions = 64;

    /// <summary>Whether the kernel covers this weight VJP: hardware 8-wide vectors with FMA, stride 1, one group, whole
    /// 16-channel panels of outputs, and a kernel inside the padded image.</summary>
    public static bool Supports(in ConvGeometry g, int outputs) =>
        Vector256.IsHardwareAccelerated && Fma.IsSupported && g.Groups == 1 && g.Stride == 1 && outputs % TileColumns == 0
        && g.KernelHeight <= g.Height + 2 * g.Padding && g.KernelWidth <= g.Width + 2 * g.Padding;

    /// <summary>The patch length rounded up to whole tiles (the entries past the patch are computed, never written out).</summary>
    public static int PaddedPatch(in ConvGeometry g) => (g.PatchLength + TileRows - 1) / TileRows * TileRows;

    /// <summary>Register tiles of the whole W̄: 16-channel panels × 6-entry runs of the patch.</summary>
    public static int Tiles(in ConvGeometry g, int outputs) => outputs / TileColumns * (PaddedPatch(g) / TileRows);

    /// <summary>Floats of the accumulator buffer, [outputs/16, <see cref="PaddedPatch"/>, 16].</summary>
    public static int AccumulatorElements(in ConvGeometry g, int outputs) => outputs * PaddedPatch(g);

    /// <summary>offsets[j] = (ky·Wp + kx)·C + c for patch entry j = (ky·kw + kx)·C + c, <see cref="PaddedPatch"/> long; the
    /// entries past the patch repeat the last one (a valid read whose sums are dropped).</summary>
    public static void Offsets(in ConvGeometry g, Span<int> offsets)
    {
        int width = g.Width + 2 * g.Padding, patch = g.PatchLength;
        for (int j = 0; j < offsets.Length; j++)
        {
            int e = Math.Min(j, patch - 1), c = e % g.Channels, kx = e / g.Channels % g.KernelWidth, ky = e / (g.Channels * g.KernelWidth);
            offsets[j] = (ky * width + kx) * g.Channels + c;
        }
    }

    /// <summary>
    /// Tiles firstTile..endTile of W̄ (tile t: panel t / (padded patch / 6), entries 6·(t mod that) onwards): their accumulators
    /// cleared, summed over every position of <paramref name="images"/> (zero-padded by the geometry's padding, one after the other
    /// every <paramref name="imageStride"/> floats) against <paramref name="cotangent"/> [N·Ho·Wo, outputs], then written to
    /// <paramref name="weightGradient"/> [outputs, patch], added to what it holds when <paramref name="accumulate"/>.
    /// </summary>
    public static void Run(in ConvGeometry g, ReadOnlySpan<float> images, int imageStride, ReadOnlySpan<float> cotangent, int outputs,
        ReadOnlySpan<int> offsets, int firstTile, int endTile, Span<float> accumulators, Span<float> weightGradient, bool accumulate)
    {
        int patch = g.PatchLength, paddedPatch = offsets.Length, runs = paddedPatch / TileRows;
        int positions = g.OutputPositions, count = cotangent.Length / (positions * outputs);
        int rowsPerBlock = Math.Clamp(BlockPositions / g.OutputWidth, 1, g.OutputHeight);
        int rowStride = (g.Width + 2 * g.Padding) * g.Channels;
        for (int t = firstTile; t < endTile; t++)
            accumulators.Slice((t / runs * paddedPatch + t % runs * TileRows) * TileColumns, TileRows * TileColumns).Clear();
        for (int n = 0; n < count; n++)
        {
            var image = images.Slice(n * imageStride, imageStride);
            var imageCotangent = cotangent.Slice(n * positions * outputs, positions * outputs);
            for (int oy = 0; oy < g.OutputHeight; oy += rowsPerBlock)
            {
                int rows = Math.Min(rowsPerBlock, g.OutputHeight - oy);
                var blockImage = image[(oy * rowStride)..];
                var blockCotangent = imageCotangent[(oy * g.OutputWidth * outputs)..];
                for (int t = firstTile; t < endTile; t++)
                {
                    int panel = t / runs, run = t % runs;
                    Tile(blockImage, offsets.Slice(run * TileRows, TileRows), blockCotangent[(panel * TileColumns)..], outputs, rows, g.OutputWidth,
                        rowStride, g.Channels, accumulators.Slice((panel * paddedPatch + run * TileRows) * TileColumns, TileRows * TileColumns));
                }
            }
        }
        for (int t = firstTile; t < endTile; t++)
        {
            int panel = t / runs, run = t % runs;
            for (int r = 0; r < TileRows && run * TileRows + r < patch; r++)
            {
                int j = run * TileRows + r;
                var sums = accumulators.Slice((panel * paddedPatch + j) * TileColumns, TileColumns);
                for (int l = 0; l < TileColumns; l++)
                {
                    ref float target = ref weightGradient[(panel * TileColumns + l) * patch + j];
                    target = accumulate ? target + sums[l] : sums[l];
                }
            }
        }
    }

    /// <summary>sums[r][0..16] += Σ over <paramref name="rows"/> output rows of <paramref name="width"/> positions of
    /// x[base(q) + offsets[r]]·s̄[q, 0..16]; the block's first position is at the start of <paramref name="image"/> and
    /// <paramref name="cotangent"/> (whose rows are <paramref name="ldy"/> floats apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(ReadOnlySpan<float> image, ReadOnlySpan<int> offsets, ReadOnlySpan<float> cotangent, int ldy, int rows, int width,
        int rowStride, int channels, Span<float> sums)
    {
        // One shared position reference and six native-sized offsets, as DirectConvolution's tile: each broadcast one load.
        ref float x = ref MemoryMarshal.GetReference(image);
        ref float d = ref MemoryMarshal.GetReference(cotangent);
        ref float s = ref MemoryMarshal.GetReference(sums);
        nint o0 = offsets[0], o1 = offsets[1], o2 = offsets[2], o3 = offsets[3], o4 = offsets[4], o5 = offsets[5];
        nint step = channels, stride = ldy;
        var c00 = Vector256.LoadUnsafe(ref s, 0); var c01 = Vector256.LoadUnsafe(ref s, 8);
        var c10 = Vector256.LoadUnsafe(ref s, 16); var c11 = Vector256.LoadUnsafe(ref s, 24);
        var c20 = Vector256.LoadUnsafe(ref s, 32); var c21 = Vector256.LoadUnsafe(ref s, 40);
        var c30 = Vector256.LoadUnsafe(ref s, 48); var c31 = Vector256.LoadUnsafe(ref s, 56);
        var c40 = Vector256.LoadUnsafe(ref s, 64); var c41 = Vector256.LoadUnsafe(ref s, 72);
        var c50 = Vector256.LoadUnsafe(ref s, 80); var c51 = Vector256.LoadUnsafe(ref s, 88);
        for (int oy = 0; oy < rows; oy++)
        {
            ref float q = ref Unsafe.Add(ref x, oy * rowStride);
            for (int ox = 0; ox < width; ox++)
            {
                var w0 = Vector256.LoadUnsafe(ref d);
                var w1 = Vector256.LoadUnsafe(ref d, 8);
                d = ref Unsafe.Add(ref d, stride);
                var a = Vector256.Create(Unsafe.Add(ref q, o0)); c00 = Vector256.FusedMultiplyAdd(a, w0, c00); c01 = Vector256.FusedMultiplyAdd(a, w1, c01);
                a = Vector256.Create(Unsafe.Add(ref q, o1)); c10 = Vector256.FusedMultiplyAdd(a, w0, c10); c11 = Vector256.FusedMultiplyAdd(a, w1, c11);
                a = Vector256.Create(Unsafe.Add(ref q, o2)); c20 = Vector256.FusedMultiplyAdd(a, w0, c20); c21 = Vector256.FusedMultiplyAdd(a, w1, c21);
                a = Vector256.Create(Unsafe.Add(ref q, o3)); c30 = Vector256.FusedMultiplyAdd(a, w0, c30); c31 = Vector256.FusedMultiplyAdd(a, w1, c31);
                a = Vector256.Create(Unsafe.Add(ref q, o4)); c40 = Vector256.FusedMultiplyAdd(a, w0, c40); c41 = Vector256.FusedMultiplyAdd(a, w1, c41);
                a = Vector256.Create(Unsafe.Add(ref q, o5)); c50 = Vector256.FusedMultiplyAdd(a, w0, c50); c51 = Vector256.FusedMultiplyAdd(a, w1, c51);
                q = ref Unsafe.Add(ref q, step);
            }
        }
        c00.StoreUnsafe(ref s, 0); c01.StoreUnsafe(ref s, 8);
        c10.StoreUnsafe(ref s, 16); c11.StoreUnsafe(ref s, 24);
        c20.StoreUnsafe(ref s, 32); c21.StoreUnsafe(ref s, 40);
        c30.StoreUnsafe(ref s, 48); c31.StoreUnsafe(ref s, 56);
        c40.StoreUnsafe(ref s, 64); c41.StoreUnsafe(ref s, 72);
        c50.StoreUnsafe(ref s, 80); c51.StoreUnsafe(ref s, 88);
    }
}
