using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ForwardAD.Backends;

/// <summary>
/// A convolution as an implicit GEMM on the CPU: s[q, n] = β·s[q, n] + Σ_k A[q, k]·W[n, k] with A = cols(x) never
/// written out. In channels-last layout (zero-padded first when the geometry pads) the patch of output position
/// q = (oy, ox) is kh runs of kw·C contiguous floats, run ky starting at base(q) + ky·Wp·C with
/// base(q) = (oy·s·Wp + ox·s)·C, so the register tile reads A straight from the image.
/// Why not im2col + OpenBLAS: writing the columns costs as much again as a short patch's GEMM, and OpenBLAS runs the
/// [B·H·W, 27] × [27, Cout] product of a first layer at about half its large-GEMM rate; this kernel keeps 6 output
/// positions × 16 channels in twelve 8-wide accumulators, reads the 16-channel weight panel (packed depth-major) from L1/L2
/// and reaches 75–102 % of OpenBLAS's one-thread large-GEMM rate for patches of 27 to 1152 floats (`conv-gemm-rate`).
/// Longer patches stay with im2col + GEMM (<see cref="CpuBackend.DirectPatchLength"/>).
/// </summary>
internal static class DirectConvolution
{
    /// <summary>Output positions and output channels per register tile.</summary>
    public const int TileRows = 6, TileColumns = 16;

    /// <summary>Floats of packed weight (<see cref="PackWeight"/>).</summary>
    public static int PackedElements(in ConvGeometry g, int outputs) => outputs * g.PatchLength;

    /// <summary>Scratch floats one run of images needs for a zero-padded copy of its current image (0 without padding).</summary>
    public static int PaddedElements(in ConvGeometry g) => g.Padding == 0 ? 0 : PaddedWidth(g) * (g.Height + 2 * g.Padding) * g.Channels;

    /// <summary>Whether the kernel covers this convolution: hardware 8-wide vectors with FMA (otherwise the vector code
    /// runs in software, ~100× slower than im2col), one group, whole 16-channel panels, and a kernel inside the padded image.</summary>
    public static bool Supports(in ConvGeometry g, int outputs) =>
        Vector256.IsHardwareAccelerated && Fma.IsSupported && g.Groups == 1 && outputs % TileColumns == 0
        && g.KernelHeight <= g.Height + 2 * g.Padding && g.KernelWidth <= g.Width + 2 * g.Padding;

    private static int PaddedWidth(in ConvGeometry g) => g.Width + 2 * g.Padding;

    /// <summary>y[images·Ho·Wo, outputs] = β·y + conv(x, W), W packed by <see cref="PackWeight"/>; <paramref name="padded"/>
    /// holds <see cref="PaddedElements"/> floats. Images are independent: runs over disjoint images may go in parallel.</summary>
    public static void Run(in ConvGeometry g, ReadOnlySpan<float> images, ReadOnlySpan<float> packed, int outputs, float beta, Span<float> y, Span<float> padded)
    {
        int patch = g.PatchLength, count = images.Length / g.InputElements, positions = g.OutputPositions;
        int width = PaddedWidth(g);
        Span<int> bases = stackalloc int[TileRows];
        for (int n = 0; n < count; n++)
        {
            var image = images.Slice(n * g.InputElements, g.InputElements);
            if (g.Padding > 0)
            {
                Pad(g, image, padded);
                image = padded;
            }
            var output = y.Slice(n * positions * outputs, positions * outputs);
            int oy = 0, ox = 0; // the output position of the tile's first row
            for (int first = 0; first < positions; first += TileRows)
            {
                int rows = Math.Min(TileRows, positions - first);
                // base(q) for the tile's rows, stepping (oy, ox) along the output; rows past the end repeat the last real one.
                for (int r = 0, y0 = oy, x0 = ox; r < TileRows; r++)
                {
                    bases[r] = (y0 * g.Stride * width + x0 * g.Stride) * g.Channels;
                    if (r < rows - 1 && ++x0 == g.OutputWidth) (x0, y0) = (0, y0 + 1);
                }
                for (int r = 0; r < rows; r++)
                    if (++ox == g.OutputWidth) (ox, oy) = (0, oy + 1);
                for (int panel = 0; panel < outputs; panel += TileColumns)
                    Tile(g, width, image, bases, rows, packed.Slice(panel * patch, patch * TileColumns), beta, output.Slice(first * outputs + panel), outputs);
            }
        }
    }

    /// <summary>packed[p][k][j] = W[16p + j, k]: panel p holds 16 output channels, depth-major, so each depth step loads two vectors.</summary>
    public static void PackWeight(ReadOnlySpan<float> weight, int outputs, int patch, Span<float> packed)
    {
        for (int n = 0; n < outputs; n++)
        {
            var target = packed.Slice(n / TileColumns * patch * TileColumns + n % TileColumns);
            var row = weight.Slice(n * patch, patch);
            for (int k = 0; k < patch; k++) target[k * TileColumns] = row[k];
        }
    }

    /// <summary>
    /// Packs, in <see cref="PackWeight"/>'s layout for C output channels, the weight of the transposed convolution
    /// x̄ = col2im(s̄ W) of a stride-1 convolution with a square kh×kh kernel and padding p: x̄[iy, ix, c] =
    /// Σ_{ky', kx', o} s̄_pad[iy + ky', ix + kx', o]·W'[c, ky', kx', o], s̄ zero-padded by kh − 1 − p, with
    /// W'[c, ky', kx', o] = W[o, kh − 1 − ky', kw − 1 − kx', c]: the kernel turned by 180° and its channel axes swapped (output
    /// position iy + p − ky of the forward reads pixel iy through tap ky, and iy + p − ky = (iy + ky') − (kh − 1 − p) for ky' = kh − 1 − ky).
    /// <paramref name="outputs"/> is the forward's output channels (the transposed convolution's input channels).
    /// </summary>
    public static void PackTransposedWeight(ReadOnlySpan<float> weight, in ConvGeometry g, int outputs, Span<float> packed)
    {
        int kh = g.KernelHeight, kw = g.KernelWidth, channels = g.Channels, patch = kh * kw * outputs;
        for (int o = 0; o < outputs; o++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++)
                {
                    var source = weight.Slice(((o * kh + ky) * kw + kx) * channels, channels);
                    int k = ((kh - 1 - ky) * kw + (kw - 1 - kx)) * outputs + o; // depth index in W'[c]'s patch
                    for (int c = 0; c < channels; c++)
                        packed[c / TileColumns * patch * TileColumns + k * TileColumns + c % TileColumns] = source[c];
                }
    }

    /// <summary>Copies one image into a zero border of <see cref="ConvGeometry.Padding"/> pixels.</summary>
    public static void Pad(in ConvGeometry g, ReadOnlySpan<float> image, Span<float> padded)
    {
        int width = PaddedWidth(g), rowLength = g.Width * g.Channels, border = g.Padding * g.Channels, paddedRow = width * g.Channels;
        padded[..(g.Padding * paddedRow)].Clear(); // top rows
        padded[((g.Height + g.Padding) * paddedRow)..].Clear(); // bottom rows
        for (int iy = 0; iy < g.Height; iy++)
        {
            var row = padded.Slice((iy + g.Padding) * paddedRow, paddedRow);
            row[..border].Clear();
            image.Slice(iy * rowLength, rowLength).CopyTo(row[border..]);
            row[(border + rowLength)..].Clear();
        }
    }

    /// <summary>Output rows 0..rows (rows ≤ 6; patches at <paramref name="bases"/>), 16 channels from <paramref name="y"/>'s
    /// start: rows past the real ones repeat the last real base and are computed but not stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(in ConvGeometry g, int width, ReadOnlySpan<float> image, ReadOnlySpan<int> bases, int rows, ReadOnlySpan<float> panel, float beta, Span<float> y, int ldy)
    {
        nint run = g.KernelWidth * g.Channels, rowStride = width * g.Channels;
        // One reference per tile row and one shared offset (native-sized, so the loop needs no sign extensions and each
        // broadcast is a single load).
        ref float x = ref MemoryMarshal.GetReference(image);
        ref float x0 = ref Unsafe.Add(ref x, bases[0]), x1 = ref Unsafe.Add(ref x, bases[1]), x2 = ref Unsafe.Add(ref x, bases[2]);
        ref float x3 = ref Unsafe.Add(ref x, bases[3]), x4 = ref Unsafe.Add(ref x, bases[4]), x5 = ref Unsafe.Add(ref x, bases[5]);
        ref float w = ref MemoryMarshal.GetReference(panel);
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (nint ky = 0, offset = 0; ky < g.KernelHeight; ky++, offset += rowStride)
        {
            for (nint o = offset, end = offset + run; o < end; o++)
            {
                var w0 = Vector256.LoadUnsafe(ref w);
                var w1 = Vector256.LoadUnsafe(ref w, 8);
                w = ref Unsafe.Add(ref w, TileColumns);
                var a = Vector256.Create(Unsafe.Add(ref x0, o)); c00 = Vector256.FusedMultiplyAdd(a, w0, c00); c01 = Vector256.FusedMultiplyAdd(a, w1, c01);
                a = Vector256.Create(Unsafe.Add(ref x1, o)); c10 = Vector256.FusedMultiplyAdd(a, w0, c10); c11 = Vector256.FusedMultiplyAdd(a, w1, c11);
                a = Vector256.Create(Unsafe.Add(ref x2, o)); c20 = Vector256.FusedMultiplyAdd(a, w0, c20); c21 = Vector256.FusedMultiplyAdd(a, w1, c21);
                a = Vector256.Create(Unsafe.Add(ref x3, o)); c30 = Vector256.FusedMultiplyAdd(a, w0, c30); c31 = Vector256.FusedMultiplyAdd(a, w1, c31);
                a = Vector256.Create(Unsafe.Add(ref x4, o)); c40 = Vector256.FusedMultiplyAdd(a, w0, c40); c41 = Vector256.FusedMultiplyAdd(a, w1, c41);
                a = Vector256.Create(Unsafe.Add(ref x5, o)); c50 = Vector256.FusedMultiplyAdd(a, w0, c50); c51 = Vector256.FusedMultiplyAdd(a, w1, c51);
            }
        }
        Store(y, 0, beta, c00, c01);
        if (rows > 1) Store(y, ldy, beta, c10, c11);
        if (rows > 2) Store(y, 2 * ldy, beta, c20, c21);
        if (rows > 3) Store(y, 3 * ldy, beta, c30, c31);
        if (rows > 4) Store(y, 4 * ldy, beta, c40, c41);
        if (rows > 5) Store(y, 5 * ldy, beta, c50, c51);
    }

    private static void Store(Span<float> y, int at, float beta, Vector256<float> low, Vector256<float> high)
    {
        var row = y.Slice(at, TileColumns);
        if (beta != 0)
        {
            low += beta * Vector256.Create<float>(row);
            high += beta * Vector256.Create<float>(row[8..]);
        }
        low.CopyTo(row);
        high.CopyTo(row[8..]);
    }
}
