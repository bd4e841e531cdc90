using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using ForwardAD.Tensors;

namespace ForwardAD.Backends;

/// <summary>The kernels a <see cref="CpuBackend"/> may run a convolution's VJPs with (<see cref="Backend.ConvolveTransposed"/>,
/// x̄ = col2im(s̄ W), and <see cref="Backend.ConvolutionWeightGradient"/>, W̄ = s̄ᵀ cols(x)).</summary>
public enum ConvolutionVjpKernels
{
    /// <summary>The kernel measured fastest for the geometry (<see cref="CpuBackend.ConvolutionVjps"/>): direct or im2col.</summary>
    Automatic,
    /// <summary>im2col/col2im + GEMM (the <see cref="Backend"/> default): every geometry.</summary>
    Im2Col,
    /// <summary>Implicit-GEMM kernels that read the image in place, wherever they apply: W̄ by <see cref="DirectWeightGradient"/>
    /// (stride 1, one group, outputs in whole 16-channel panels), x̄ as the transposed convolution by <see cref="DirectConvolution"/>
    /// (stride 1, one group, input channels in whole panels, a square kernel, p ≤ kh − 1); im2col otherwise.</summary>
    Direct,
}

public sealed partial class CpuBackend
{
    /// <summary>
    /// Which kernels run convolution VJPs. <see cref="ConvolutionVjpKernels.Automatic"/> (the default) takes, where they apply, the
    /// direct x̄ (the transposed convolution, patches kh·kw·O up to <see cref="DirectPatchLength"/> as the forward's) and the direct
    /// W̄ for up to <see cref="DirectWeightMaxOutputs"/> outputs; im2col elsewhere. Measured with `conv-gemm-rate` (batch 128, 3×3,
    /// padding 1, minima of 15 interleaved rounds, load average 6–7 on this 2-core machine; ms, im2col / direct / shifted GEMMs
    /// (kn2row, one GEMM per kernel tap over a padded row layout: built, measured and removed, as it never won), one thread:
    /// x̄: 16×16×32→64 (the benchmark CNN's conv2) 19.3 / 13.4 / 20.3; 16×16×32→40 14.2 / 8.5 / 13.3; 16×16×16→32 6.7 / 3.5 / 6.6;
    /// 16×16×64→64 36.7 / 26.0 / 35.4; 8×8×128→128 31.1 / 26.4 / 35.1; 32×32×3→32 (conv1; C = 3, no direct x̄) 9.1 / – / 18.3.
    /// W̄: conv1 8.1 / 3.9 / 21.9; conv2 16.3 / 14.5 / 19.3; 16×16×16→32 5.1 / 3.9 / 6.3; 16×16×64→64 31.8 / 30.8 / 35.0;
    /// 8×8×32→128 7.5 / 7.7 / 10.5; 8×8×64→128 14.6 / 16.3 / 19.1; 8×8×128→128 28.7 / 36.8 / 35.4.
    /// Two threads: conv2 x̄ 32.1 / 10.4 / 30.4, W̄ 20.8 / 16.7 / 33.9; conv1 W̄ 15.1 / 6.4 / 69 (with 128 outputs the direct W̄ is
    /// ahead by the minima and behind by the medians: the one-thread limit stands).
    /// <see cref="ConvolutionVjpKernels.Direct"/> selects the direct kernels wherever they apply, past the measured limits.
    /// Results do not depend on <see cref="Threads"/> for any choice.
    /// </summary>
    public ConvolutionVjpKernels ConvolutionVjps { get; init; } = ConvolutionVjpKernels.Automatic;

    /// <summary>The most outputs for which <see cref="ConvolutionVjpKernels.Automatic"/> takes the direct W̄: the im2col columns cost
    /// about as much as a GEMM over few outputs, but with 128 outputs OpenBLAS's GEMM outruns the direct kernel (see
    /// <see cref="ConvolutionVjps"/>).</summary>
    public const int DirectWeightMaxOutputs = 64;

    /// <summary>Scratch floats the CPU's non-im2col VJP kernels need for a convolution over <paramref name="batch"/> images (the
    /// op sizes the plan's scratch for the larger of this and im2col's need); 0 where only im2col applies.</summary>
    public static long ConvolutionVjpScratch(in ConvGeometry g, int outputs, int batch)
    {
        if (g.Stride != 1 || g.Groups != 1) return 0;
        long weight = DirectWeightScratch(g, outputs, batch);
        long transposed = TransposedGeometry(g, outputs) is { } t ? DirectConvolution.PackedElements(t, g.Channels) + Math.Max(DirectConvolution.PaddedElements(t), 1) : 0;
        return Math.Max(weight, transposed);
    }

    /// <summary>The geometry of x̄ = col2im(s̄ W) as a convolution of s̄ [Ho, Wo, outputs] (<see cref="DirectConvolution.PackTransposedWeight"/>):
    /// padding kh − 1 − p on both axes, so a square kernel and p ≤ kh − 1; null otherwise (or for stride ≠ 1, groups ≠ 1).</summary>
    private static ConvGeometry? TransposedGeometry(in ConvGeometry g, int outputs) =>
        g.Stride == 1 && g.Groups == 1 && g.KernelHeight == g.KernelWidth && g.Padding <= g.KernelHeight - 1
            ? new ConvGeometry(g.OutputHeight, g.OutputWidth, outputs, g.KernelHeight, g.KernelWidth, 1, g.KernelHeight - 1 - g.Padding, 1)
            : null;

    /// <summary>The kernel this backend runs a VJP with, W̄ (<paramref name="weightGradient"/>) or x̄, for the geometry, the number of
    /// images and the scratch length: <see cref="ConvolutionVjpKernels.Direct"/> where <see cref="ConvolutionVjps"/> selects it and
    /// it applies, <see cref="ConvolutionVjpKernels.Im2Col"/> otherwise.</summary>
    public ConvolutionVjpKernels ConvolutionVjpKernel(in ConvGeometry geometry, int outputs, int images, int scratchLength, bool weightGradient)
    {
        var g = geometry;
        if (ConvolutionVjps is ConvolutionVjpKernels.Automatic or ConvolutionVjpKernels.Direct)
        {
            bool measured = ConvolutionVjps == ConvolutionVjpKernels.Automatic;
            if (weightGradient && DirectWeightGradient.Supports(g, outputs) && (!measured || outputs <= DirectWeightMaxOutputs)
                && DirectWeightScratch(g, outputs, images) <= scratchLength)
                return ConvolutionVjpKernels.Direct;
            if (!weightGradient && TransposedGeometry(g, outputs) is { } t && (!measured || t.PatchLength <= DirectPatchLength)
                && DirectConvolution.Supports(t, g.Channels) && DirectConvolution.PackedElements(t, g.Channels) + DirectConvolution.PaddedElements(t) <= scratchLength)
                return ConvolutionVjpKernels.Direct;
        }
        return ConvolutionVjpKernels.Im2Col;
    }

    /// <inheritdoc/>
    /// <remarks>Runs as a direct convolution of the zero-padded cotangent with the 180°-turned weight where
    /// <see cref="ConvolutionVjpKernel"/> selects <see cref="ConvolutionVjpKernels.Direct"/>; im2col + GEMM otherwise.</remarks>
    public override void ConvolveTransposed(View cotangent, in ConvGeometry geometry, View weights, int outputs, View images, bool accumulate, View scratch)
    {
        var g = geometry;
        int count = images.Length / g.InputElements;
        switch (ConvolutionVjpKernel(g, outputs, count, scratch.Length, weightGradient: false))
        {
            case ConvolutionVjpKernels.Direct:
                // x̄ = conv(s̄ zero-padded by kh − 1 − p, W turned by 180° with its channel axes swapped): each image's x̄ from its
                // own s̄, written once (β = 0 never reads x̄, so stale values cannot leak) or added (β = 1).
                var t = TransposedGeometry(g, outputs)!.Value;
                int packed = DirectConvolution.PackedElements(t, g.Channels);
                DirectConvolution.PackTransposedWeight(Read(weights), g, outputs, Span(scratch.Slice(0, packed)));
                RunDirect(cotangent, t, g.Channels, accumulate ? 1f : 0f, images, scratch, packed);
                break;
            default:
                base.ConvolveTransposed(cotangent, geometry, weights, outputs, images, accumulate, scratch);
                break;
        }
    }

    /// <inheritdoc/>
    /// <remarks>Runs the direct weight-gradient kernel where <see cref="ConvolutionVjpKernel"/> selects
    /// <see cref="ConvolutionVjpKernels.Direct"/>; im2col + GEMM otherwise.</remarks>
    public override void ConvolutionWeightGradient(View images, in ConvGeometry geometry, View cotangent, int outputs, View weightGradient, bool accumulate, View scratch)
    {
        var g = geometry;
        int count = images.Length / g.InputElements;
        switch (ConvolutionVjpKernel(g, outputs, count, scratch.Length, weightGradient: true))
        {
            case ConvolutionVjpKernels.Direct:
                DirectWeight(images, g, cotangent, outputs, weightGradient, accumulate, scratch);
                break;
            default:
                base.ConvolutionWeightGradient(images, geometry, cotangent, outputs, weightGradient, accumulate, scratch);
                break;
        }
    }

    /// <summary>Scratch floats of <see cref="DirectWeight"/> for <paramref name="images"/> images.</summary>
    private static long DirectWeightScratch(in ConvGeometry g, int outputs, int images) =>
        (long)images * DirectConvolution.PaddedElements(g) + DirectWeightGradient.AccumulatorElements(g, outputs) + DirectWeightGradient.PaddedPatch(g);

    // ---- direct W̄ ---------------------------------------------------------------------------------------------------

    /// <summary>W̄ (+)= s̄ᵀ cols(x) by <see cref="DirectWeightGradient"/>. Scratch: the accumulators, the patch offsets (ints in float
    /// slots), then, with padding, every image zero-padded (padded once, in parallel by images, for all tiles to read).</summary>
    private void DirectWeight(View images, in ConvGeometry g, View cotangent, int outputs, View weightGradient, bool accumulate, View scratch)
    {
        int count = images.Length / g.InputElements, paddedPatch = DirectWeightGradient.PaddedPatch(g);
        int sums = DirectWeightGradient.AccumulatorElements(g, outputs), paddedImage = DirectConvolution.PaddedElements(g);
        var offsets = scratch.Slice(sums, paddedPatch);
        DirectWeightGradient.Offsets(g, MemoryMarshal.Cast<float, int>(Span(offsets)));
        var padded = images;
        if (paddedImage > 0)
        {
            padded = scratch.Slice(sums + paddedPatch, count * paddedImage);
            RunParts(ref _padImages, static (in PadArguments a, int part, int parts) =>
            {
                var g = a.Geometry;
                int paddedImage = a.Padded.Length / (a.Images.Length / g.InputElements);
                var share = PartRange.Of(a.Images.Length / g.InputElements, part, parts);
                for (int n = share.First; n < share.End; n++)
                    DirectConvolution.Pad(g, Read(a.Images.Slice(n * g.InputElements, g.InputElements)), Span(a.Padded.Slice(n * paddedImage, paddedImage)));
            }, new PadArguments(images, g, padded), Parts(padded.Length, count));
        }
        int tiles = DirectWeightGradient.Tiles(g, outputs);
        RunParts(ref _directWeight, static (in DirectWeightArguments a, int part, int parts) =>
        {
            var tiles = PartRange.Of(DirectWeightGradient.Tiles(a.Geometry, a.Outputs), part, parts);
            DirectWeightGradient.Run(a.Geometry, Read(a.Images), a.ImageStride, Read(a.Cotangent), a.Outputs, MemoryMarshal.Cast<float, int>(Read(a.Offsets)),
                tiles.First, tiles.End, Span(a.Sums), Span(a.WeightGradient), a.Accumulate);
        }, new DirectWeightArguments(padded, paddedImage > 0 ? paddedImage : g.InputElements, g, cotangent, outputs, offsets, scratch.Slice(0, sums), weightGradient, accumulate),
            Parts(images.Length + cotangent.Length, tiles));
    }

    private readonly record struct PadArguments(View Images, ConvGeometry Geometry, View Padded);

    private readonly record struct DirectWeightArguments(View Images, int ImageStride, ConvGeometry Geometry, View Cotangent, int Outputs, View Offsets,
        View Sums, View WeightGradient, bool Accumulate);

    private PartWork<PadArguments>? _padImages;
    private PartWork<DirectWeightArguments>? _directWeight;
}
