namespace ForwardAD.Backends;

/// <summary>
/// The row layout of the shifted-GEMM (kn2row) VJPs of a stride-1, one-group convolution: images and output cotangents as
/// matrices of rows (one pixel or output position a row: C or O floats), laid out so that every kernel tap (ky, kx) is one
/// fixed row shift s = ky·Ws + kx. Then, with X the image rows and S̄ the cotangent rows,
///   W̄[:, ky, kx, :] (+)= S̄ᵀ X[s ..]          (one GEMM per tap: O × C, summed over all rows), and
///   X̄[s ..] += S̄ W[:, ky, kx, :]             (one GEMM per tap: rows × O × C),
/// because output (n, oy, ox) sits at row r = (n·Hs + oy)·Ws + ox and its patch entry (ky, kx) at row r + s.
/// Rows that are no output carry zero cotangent, so they add nothing to W̄ (and the image rows they meet, padding or pixels, are
/// finite numbers of the same batch); X̄ rows that are no pixel receive sums that are never read.
/// Layout: row stride Ws = W + p + max(0, p − kw + 1) and Hs = H + p + max(0, p − kh + 1) rows per image, pixel (n, iy, ix) at
/// row (n·Hs + p + iy)·Ws + p + ix, zero everywhere else. One padding column and row serve two neighbours: a tap that reads
/// past the right edge (ox + kx ≥ Ws) wraps to the next row's first p columns, all zero (ox + kx − Ws ≤ W + 2p − 1 − Ws &lt; p),
/// and one that reads past the bottom (oy + ky ≥ Hs) lands in the next image's top p rows, all zero. The padding a wider
/// layout (Ws = W + 2p) would multiply, zero rows in every GEMM, is halved: 289 rows per 16×16 image instead of 324 (256 useful).
/// </summary>
internal readonly record struct ShiftedGemmLayout(ConvGeometry Geometry)
{
    /// <summary>Floats of cotangent the tap GEMMs of one chunk should touch on a one-thread GEMM (image, cotangent and X̄ rows
    /// together): 320K floats, 1.25 MiB, as <see cref="Backend.ConvolutionPassElements"/>.</summary>
    public const long ChunkFloats = 5 << 16;

    private int Padding => Geometry.Padding;

    /// <summary>Ws: pixels per row of the layout.</summary>
    public int RowStride => Geometry.Width + Padding + Math.Max(0, Padding - Geometry.KernelWidth + 1);

    /// <summary>Hs: rows of the layout per image.</summary>
    public int ImageRows => Geometry.Height + Padding + Math.Max(0, Padding - Geometry.KernelHeight + 1);

    /// <summary>Layout rows per image, Hs·Ws.</summary>
    public int ImageStride => ImageRows * RowStride;

    /// <summary>The row shift of tap (ky, kx).</summary>
    public int Shift(int ky, int kx) => ky * RowStride + kx;

    /// <summary>The largest shift, (kh − 1)·Ws + kw − 1.</summary>
    public int MaxShift => Shift(Geometry.KernelHeight - 1, Geometry.KernelWidth - 1);

    /// <summary>Rows of the image matrix for <paramref name="images"/> images: up to the last row a tap reads, the last
    /// output's patch corner ((n − 1)·Hs + H + 2p − 1)·Ws + W + 2p − 1.</summary>
    public int InputRows(int images) => ((images - 1) * ImageRows + Geometry.Height + 2 * Padding - 1) * RowStride + Geometry.Width + 2 * Padding;

    /// <summary>Rows of the cotangent matrix that hold outputs: up to the last output, ((n − 1)·Hs + Ho − 1)·Ws + Wo − 1.</summary>
    public int OutputRows(int images) => ((images - 1) * ImageRows + Geometry.OutputHeight - 1) * RowStride + Geometry.OutputWidth;

    /// <summary>The first pixel's row, p·Ws + p: X̄ is computed from here (<see cref="PixelRows"/> rows).</summary>
    public int FirstPixelRow => Padding * RowStride + Padding;

    /// <summary>Rows of X̄ from the first pixel to the last, ((n − 1)·Hs + p + H − 1)·Ws + p + W − 1.</summary>
    public int PixelRows(int images) => ((images - 1) * ImageRows + Padding + Geometry.Height - 1) * RowStride + Padding + Geometry.Width - FirstPixelRow;

    /// <summary>Zero rows in front of the cotangent matrix, so that X̄'s GEMMs read rows r − s ≥ 0 for every pixel row r:
    /// max(0, (kh − 1 − p)·Ws + kw − 1 − p).</summary>
    public int HeadRows => Math.Max(0, MaxShift - FirstPixelRow);

    /// <summary>Rows of the cotangent matrix, head included: enough for both GEMMs' reads.</summary>
    public int CotangentRows(int images) => HeadRows + Math.Max(OutputRows(images), FirstPixelRow + PixelRows(images));

    /// <summary>Scratch floats one chunk of <paramref name="images"/> images needs: the image matrix (for W̄) or X̄ (for x̄),
    /// and the cotangent matrix.</summary>
    public long ChunkElements(int images, int outputs) =>
        (long)Math.Max(InputRows(images), PixelRows(images)) * Geometry.Channels + (long)CotangentRows(images) * outputs;

    /// <summary>Copies <paramref name="count"/> examples' rows (per example <paramref name="rows"/> rows of <paramref name="rowLength"/>
    /// floats, <paramref name="source"/> holding examples first..first + count) into the layout <paramref name="target"/>, whose
    /// example n's row y starts at (n·Hs + y + <paramref name="rowOffset"/>)·Ws·width + columnOffset·width floats after
    /// <paramref name="origin"/>; clears every float of the part's range [start of example first, start of example first + count) that
    /// is not copied (and, for the last examples, the rest of <paramref name="target"/>). One pass, one writer per float.</summary>
    public void Scatter(ReadOnlySpan<float> source, int rows, int rowLength, int width, int rowOffset, int columnOffset, int origin,
        int first, int count, bool last, Span<float> target)
    {
        int stride = ImageStride * width;
        int cursor = first == 0 ? 0 : origin + first * stride;
        for (int n = first; n < first + count; n++)
            for (int y = 0; y < rows; y++)
            {
                int at = origin + n * stride + ((y + rowOffset) * RowStride + columnOffset) * width;
                target[cursor..at].Clear();
                source.Slice(((n - first) * rows + y) * rowLength, rowLength).CopyTo(target[at..]);
                cursor = at + rowLength;
            }
        int end = last ? target.Length : origin + (first + count) * stride;
        target[cursor..end].Clear();
    }
}
