namespace ForwardAD.Backends;

/// <summary>
/// The sizes of a 2-D convolution over channels-last images [N, H, W, C] (one example: H·W·C floats, C fastest).
/// Channels are split into <see cref="Groups"/> groups of C/G; group g's outputs see only its inputs (depthwise: G = C).
/// Output size per axis: ⌊(H + 2·padding − kernel) / stride⌋ + 1, as in PyTorch.
/// </summary>
public readonly record struct ConvGeometry(int Height, int Width, int Channels, int KernelHeight, int KernelWidth, int Stride, int Padding, int Groups)
{
    /// <summary>Output height Ho = ⌊(H + 2·padding − kh) / stride⌋ + 1.</summary>
    public int OutputHeight => (Height + 2 * Padding - KernelHeight) / Stride + 1;
    /// <summary>Output width Wo = ⌊(W + 2·padding − kw) / stride⌋ + 1.</summary>
    public int OutputWidth => (Width + 2 * Padding - KernelWidth) / Stride + 1;
    /// <summary>Input channels per group, C/G.</summary>
    public int GroupChannels => Channels / Groups;
    /// <summary>Length of one im2col row: G blocks of kh·kw·C/G (group, then kernel row, kernel column, channel).</summary>
    public int PatchLength => KernelHeight * KernelWidth * Channels;
    /// <summary>One group's block of an im2col row: kh·kw·C/G.</summary>
    public int GroupPatchLength => KernelHeight * KernelWidth * GroupChannels;
    /// <summary>Floats of one input example, H·W·C.</summary>
    public int InputElements => Height * Width * Channels;
    /// <summary>Output positions per example, Ho·Wo (rows of the im2col matrix per example).</summary>
    public int OutputPositions => OutputHeight * OutputWidth;
}

/// <summary>The sizes of a 2-D pooling window over channels-last images [N, H, W, C]; padding as in PyTorch
/// (max pooling ignores padded positions, average pooling counts them as zeros: count_include_pad = true).</summary>
public readonly record struct PoolGeometry(int Height, int Width, int Channels, int KernelHeight, int KernelWidth, int Stride, int Padding)
{
    /// <summary>Output height Ho = ⌊(H + 2·padding − kh) / stride⌋ + 1.</summary>
    public int OutputHeight => (Height + 2 * Padding - KernelHeight) / Stride + 1;
    /// <summary>Output width Wo = ⌊(W + 2·padding − kw) / stride⌋ + 1.</summary>
    public int OutputWidth => (Width + 2 * Padding - KernelWidth) / Stride + 1;
    /// <summary>Floats of one input example, H·W·C.</summary>
    public int InputElements => Height * Width * Channels;
    /// <summary>Floats of one output example, Ho·Wo·C (pooling keeps the channels).</summary>
    public int OutputElements => OutputHeight * OutputWidth * Channels;
}
