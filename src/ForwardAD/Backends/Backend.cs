using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Backends;

/// <summary>Storage owned by a backend: host memory for the CPU, device memory for CUDA.</summary>
public abstract class DeviceBuffer
{
    /// <summary>Number of float32 elements the buffer holds.</summary>
    public abstract int Length { get; }
    /// <summary>The backend that allocated the buffer and whose kernels may read and write it.</summary>
    public abstract Backend Backend { get; }
}

/// <summary>A contiguous range of a <see cref="DeviceBuffer"/>. <see cref="IsEmpty"/> views stand for
/// symbolic zeros: a tangent that no seed reaches is never stored nor computed.</summary>
public readonly record struct View(DeviceBuffer? Buffer, int Offset, int Length)
{
    /// <summary>The empty view (no buffer, offset 0, length 0): a symbolic zero.</summary>
    public static View Empty => default;
    /// <summary>True when the view has no buffer, i.e. it stands for a symbolic zero that is never stored nor computed.</summary>
    public bool IsEmpty => Buffer is null;

    /// <summary>A view of the whole of <paramref name="buffer"/> (offset 0, its full length).</summary>
    public View(DeviceBuffer buffer) : this(buffer, 0, buffer.Length) { }

    /// <summary>The sub-range [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>) of this view, in
    /// elements relative to its <see cref="Offset"/>.</summary>
    /// <exception cref="InvalidOperationException">The view is empty (a symbolic zero).</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the view.</exception>
    public View Slice(int start, int length)
    {
        if (Buffer is null) throw new InvalidOperationException("Cannot slice an empty view (a symbolic zero).");
        if ((uint)start > (uint)Length || (uint)length > (uint)(Length - start))
            throw new ArgumentOutOfRangeException(nameof(start), $"Slice [{start}, {start + length}) is outside a view of {Length} elements.");
        return new View(Buffer, Offset + start, length);
    }

    /// <summary>Channel <paramref name="channel"/> of a view laid out as [channels, n].</summary>
    public View Channel(int channel, int elementsPerChannel) => Slice(channel * elementsPerChannel, elementsPerChannel);
}

/// <summary>
/// The kernels a plan runs. Every op's forward, JVP and VJP rule is written against this set, so a
/// backend (CPU, CUDA) implements kernels once and gets every rule. Inputs come first, the
/// destination last; <c>accumulate</c> means <c>destination += result</c> instead of <c>=</c>.
/// </summary>
public abstract class Backend
{
    /// <summary>A short human-readable name for logs and error messages (e.g. <c>cpu (openblas gemm)</c>).</summary>
    public abstract string Name { get; }

    /// <summary>Allocates a buffer of <paramref name="length"/> float32 elements on this backend. Contents are zero on the
    /// CPU; other backends may leave them undefined, so kernels that read a buffer must write it first.</summary>
    /// <exception cref="ArgumentException">The allocation would exceed <see cref="AvailableMemoryBytes"/> (backends that check it).</exception>
    public abstract DeviceBuffer Allocate(int length);

    /// <summary>Gives back a buffer of this backend that its owner will not use again (<see cref="Autodiff.Plan.Dispose"/>):
    /// device memory returns to the backend's allocator. The CPU backend does nothing (the garbage collector frees its
    /// arrays once nothing references them).</summary>
    /// <exception cref="ArgumentException">The buffer belongs to another backend.</exception>
    public virtual void Release(DeviceBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (buffer.Backend != this) throw new ArgumentException($"The buffer lives on {buffer.Backend.Name}, not on {Name}.", nameof(buffer));
    }

    /// <summary>Bytes this backend can still allocate, as far as it knows (long.MaxValue when it cannot tell).
    /// Compiling a plan or a parameter store checks its whole need against it before allocating anything.</summary>
    public virtual long AvailableMemoryBytes => long.MaxValue;

    /// <summary>Elements per tile when elementwise update rules run fused, tile by tile (one trip through memory
    /// for the whole chain). On a CPU 16K floats per buffer stay in L2; a GPU gains nothing from tiles and pays a
    /// kernel launch per tile and rule, so it takes the whole vector at once.</summary>
    public virtual int FusedTileElements => 16384;

    /// <summary>Floats of im2col columns a convolution builds per pass before its GEMM reads them. On a CPU 320K floats
    /// (1.25 MiB) stay in L2/L3 between the copy that writes them and the GEMM that reads them, so the GEMM runs at its
    /// in-cache rate instead of streaming a whole batch's columns from memory (`conv-gemm-rate`: the benchmark CNN's
    /// conv2 GEMMs at 75 % of the reference GEMM rate for the whole batch at once, 83–102 % in passes of 3–4 images). A
    /// GPU gains nothing from small passes and pays more, smaller GEMM launches, so it takes the whole batch.</summary>
    public virtual int ConvolutionPassElements => 5 << 16;

    /// <summary>Throws, before anything is allocated, when <paramref name="bytes"/> exceed <see cref="AvailableMemoryBytes"/>:
    /// a clear error instead of an out-of-memory crash or a machine that swaps for minutes.</summary>
    public void RequireMemory(long bytes, string what)
    {
        long available = AvailableMemoryBytes;
        if (bytes > available)
            throw new ArgumentException($"{what} needs {Gibibytes(bytes)} of memory, but {Name} has about {Gibibytes(available)} available. " +
                "Use a smaller model, batch size or number of tangent channels.");
    }

    private static string Gibibytes(long bytes) => $"{bytes / (1024.0 * 1024 * 1024):0.##} GiB";
    /// <summary>Copies <paramref name="source"/> from host memory into <paramref name="destination"/> (same length).</summary>
    public abstract void CopyFromHost(ReadOnlySpan<float> source, View destination);
    /// <summary>Copies <paramref name="source"/> into host memory <paramref name="destination"/> (same length).</summary>
    public abstract void CopyToHost(View source, Span<float> destination);

    /// <summary>C = α·op(A)·op(B) + β·C on row-major matrices (see <see cref="Gemm"/>).</summary>
    public abstract void Gemm(Transpose transposeA, Transpose transposeB, int m, int n, int k,
        float alpha, View a, int lda, View b, int ldb, float beta, View c, int ldc);

    /// <summary>The depth up to which <see cref="Gemm"/> with β = 1 adds the whole product to C in one rounding
    /// (<see cref="Tensors.Gemm.SingleBlockDepth"/>): an addend can then ride in C with the bits of adding it afterwards.
    /// 0 (the default): never fold an addend into a product.</summary>
    public virtual int GemmSingleBlockDepth => 0;

    /// <summary>destination[r, j] = row[j] for rows = destination.Length / row.Length (a bias written before a β = 1 product).
    /// The default fills zeros and adds the row, so a −0 in the row comes out +0.</summary>
    public virtual void RepeatRow(View row, View destination)
    {
        Fill(0f, destination);
        AddBias(row, destination);
    }

    /// <summary>destination[i] = <paramref name="value"/> for every element.</summary>
    public abstract void Fill(float value, View destination);
    /// <summary>destination (+)= source, element by element (same length).</summary>
    public abstract void Copy(View source, View destination, bool accumulate = false);
    /// <summary>destination = factor·source, element by element; in place (destination = source) is allowed.</summary>
    public abstract void Scale(View source, float factor, View destination);
    /// <summary>destination = a + b.</summary>
    public abstract void Add(View a, View b, View destination);

    /// <summary>destination[c, i] (+)= a[i]·b[c, i] for every channel c: b and destination hold
    /// a whole number of copies of a's length (the K tangent channels).</summary>
    public abstract void MultiplyChannels(View a, View b, View destination, bool accumulate);

    /// <summary>destination[r, j] += bias[j] for rows = destination.Length / bias.Length.</summary>
    public abstract void AddBias(View bias, View destination);

    /// <summary>destination[j] (+)= Σ_r source[r, j] with columns = destination.Length.</summary>
    public abstract void SumRows(View source, View destination, bool accumulate);

    /// <summary>sums[j] = Σ_r v[r, j] and productSums[j] = Σ_r x[r, j]·v[r, j] (each product rounded first), with
    /// <see cref="SumRows"/>' bits: batch normalisation's β̄ and γ̄ = Σ x̂ ȳ for a cotangent ȳ. The default multiplies into
    /// <paramref name="product"/> (v.Length floats) and sums twice (five passes over the activation); a backend may read x
    /// and v once.</summary>
    public virtual void ColumnSumsWithProducts(View x, View v, View sums, View productSums, View product)
    {
        MultiplyChannels(x, v, product, accumulate: false);
        SumRows(product, productSums, accumulate: false);
        SumRows(v, sums, accumulate: false);
    }

    /// <summary>destination[c, r] = Σ_j a[r, j]·b[c, r, j]: one dot product per row and channel.</summary>
    public abstract void RowDot(View a, View b, int columns, View destination);

    /// <summary>destination[r, j] (+)= a[r, j]·scale[r].</summary>
    public abstract void ScaleRows(View a, View scale, View destination, bool accumulate);

    /// <summary>destination[r, j] (+)= a[r, j]·scale[j] for rows = a.Length / scale.Length: a per-column (per-channel) scale.</summary>
    public abstract void ScaleColumns(View a, View scale, View destination, bool accumulate);

    /// <summary>
    /// Batch statistics of the columns of x [rows, C]: negativeMean[c] = −(1/n) Σ_r x[r, c] and
    /// variance[c] = (1/n) Σ_r (x[r, c] − mean[c])² (biased; centred first, so no E[x²] − μ² cancellation).
    /// <paramref name="scratch"/> holds at least x.Length floats. The default composes the general kernels; a backend
    /// may fuse it (the CPU reads x twice instead of about eight passes).
    /// </summary>
    public virtual void ColumnMoments(View x, View negativeMean, View variance, View scratch)
    {
        int rows = x.Length / negativeMean.Length;
        var centred = scratch.Slice(0, x.Length);
        SumRows(x, negativeMean, accumulate: false);
        Scale(negativeMean, -1f / rows, negativeMean);
        Copy(x, centred);
        AddBias(negativeMean, centred);
        MultiplyChannels(centred, centred, centred, accumulate: false);
        SumRows(centred, variance, accumulate: false);
        Scale(variance, 1f / rows, variance);
    }

    /// <summary>
    /// destination (+)= scale ⊙ (v − mean_r(v) − x̂ ⊙ mean_r(v ⊙ x̂)) on [rows, C] views (per column c: scale[c], the means
    /// over the rows): batch normalisation's JVP of one tangent channel v with batch statistics, x̂ = <paramref name="normalized"/>,
    /// and, the map being symmetric, its VJP of one cotangent channel. <paramref name="negativeMeanProduct"/> and
    /// <paramref name="negativeMean"/> [C] receive −mean(v ⊙ x̂) and −mean(v); <paramref name="product"/> and
    /// <paramref name="partial"/> hold v.Length floats each. <paramref name="productSums"/> and <paramref name="sums"/>, when
    /// given, receive the column sums Σ_r x̂ v and Σ_r v themselves (a VJP's γ̄ and β̄, as <see cref="SumRows"/> computes
    /// them). <paramref name="addend"/>, when given (and not accumulating), is added last, destination = t + addend in one
    /// rounding: the tangent injected at the node, folded into the pass instead of a separate add. The default composes
    /// the general kernels (about nine passes over the activation); a backend may fuse them with the same arithmetic.
    /// </summary>
    public virtual void NormalizationTangent(View normalized, View v, View scale, View destination, bool accumulate,
        View negativeMeanProduct, View negativeMean, View product, View partial, View productSums = default, View sums = default, View addend = default)
    {
        if (accumulate && !addend.IsEmpty) throw new ArgumentException("NormalizationTangent: accumulate into the destination or add an addend, not both.", nameof(addend));
        int rows = v.Length / scale.Length;
        var target = accumulate ? partial : destination;
        MultiplyChannels(normalized, v, product, accumulate: false);
        SumRows(product, negativeMeanProduct, accumulate: false);
        if (!productSums.IsEmpty) Copy(negativeMeanProduct, productSums);
        Scale(negativeMeanProduct, -1f / rows, negativeMeanProduct);
        SumRows(v, negativeMean, accumulate: false);
        if (!sums.IsEmpty) Copy(negativeMean, sums);
        Scale(negativeMean, -1f / rows, negativeMean);
        Copy(v, target);
        AddBias(negativeMean, target);
        ScaleColumns(normalized, negativeMeanProduct, target, accumulate: true);
        ScaleColumns(target, scale, target, accumulate: false);
        if (accumulate) Copy(target, destination, accumulate: true);
        if (!addend.IsEmpty) Add(destination, addend, destination);
    }

    /// <summary>destination[r, c] = (x[r, c] + shift[c])·scale[c]: normalisation with −mean and 1/σ. Default composed;
    /// the CPU fuses it into one pass.</summary>
    public virtual void ShiftScaleColumns(View x, View shift, View scale, View destination)
    {
        Copy(x, destination);
        AddBias(shift, destination);
        ScaleColumns(destination, scale, destination, accumulate: false);
    }

    /// <summary>destination[r, c] = x[r, c]·scale[c] + shift[c]: the affine γ, β of a normalisation. Default composed;
    /// the CPU fuses it into one pass.</summary>
    public virtual void ScaleShiftColumns(View x, View scale, View shift, View destination)
    {
        ScaleColumns(x, scale, destination, accumulate: false);
        AddBias(shift, destination);
    }

    /// <summary>Batch norm's forward with γ, β: normalized[r, c] = (x[r, c] + shift[c])·scale[c] (kept for the derivatives),
    /// then destination[r, c] = normalized[r, c]·gamma[c] + beta[c]. By default <see cref="ShiftScaleColumns"/> then
    /// <see cref="ScaleShiftColumns"/>; the CPU writes both in one pass over x (the same operations, so the same bits), where
    /// the two passes read x̂ back from memory.</summary>
    public virtual void NormalizeScaleShiftColumns(View x, View shift, View scale, View gamma, View beta, View normalized, View destination)
    {
        ShiftScaleColumns(x, shift, scale, normalized);
        ScaleShiftColumns(normalized, gamma, beta, destination);
    }

    /// <summary>destination[i] = 1/√(x[i] + ε): batch normalisation's inverse standard deviation.</summary>
    public abstract void ReciprocalSqrt(View x, float epsilon, View destination);

    /// <summary>
    /// <paramref name="y"/> [N·Ho·Wo, outputs] = β·y + conv(images, W) for channels-last <paramref name="images"/> [N, H, W, C]
    /// and <paramref name="weights"/> [outputs, kh, kw, C/G]: s = cols(x) Wᵀ. With <paramref name="channels"/> K > 1 the
    /// same images are convolved with K weight tensors stored one after another, into K outputs stored one after another
    /// (the JVP's cols(x) Ẇ_kᵀ). This default runs im2col + GEMM in passes of <see cref="ConvolutionPassElements"/> column
    /// floats (at least one image, at most what <paramref name="scratch"/> holds), each pass's columns built once in
    /// <paramref name="scratch"/> for all K weights.
    /// </summary>
    public virtual void Convolve(View images, in ConvGeometry geometry, View weights, int outputs, float beta, View y, View scratch, int channels = 1)
    {
        var g = geometry;
        int count = images.Length / g.InputElements, outputPerImage = g.OutputPositions * outputs;
        int weightLength = weights.Length / channels, outputLength = count * outputPerImage;
        int step = ImagesPerPass(g, scratch, nameof(Convolve));
        for (int first = 0; first < count; first += step)
        {
            int inPass = Math.Min(step, count - first), rows = inPass * g.OutputPositions;
            var columns = scratch.Slice(0, rows * g.PatchLength);
            Im2Col(images.Slice(first * g.InputElements, inPass * g.InputElements), g, columns);
            for (int k = 0; k < channels; k++)
                MultiplyColumns(g, rows, columns, weights.Channel(k, weightLength), outputs, beta,
                    y.Channel(k, outputLength).Slice(first * outputPerImage, inPass * outputPerImage));
        }
    }

    /// <summary>
    /// The input VJP of <see cref="Convolve"/>, the transposed convolution: <paramref name="images"/> [N, H, W, C] (+)= col2im(s̄ W)
    /// for <paramref name="cotangent"/> s̄ [N·Ho·Wo, outputs] and <paramref name="weights"/> [outputs, kh, kw, C/G]; overwritten
    /// unless <paramref name="accumulate"/>. This default runs, per pass of images (as <see cref="Convolve"/>'s), one GEMM per
    /// group into im2col columns in <paramref name="scratch"/> (cols̄[:, group block] = s̄[:, group outputs] W_group), then col2im.
    /// </summary>
    public virtual void ConvolveTransposed(View cotangent, in ConvGeometry geometry, View weights, int outputs, View images, bool accumulate, View scratch)
    {
        var g = geometry;
        int count = images.Length / g.InputElements, perGroup = outputs / g.Groups, outputPerImage = g.OutputPositions * outputs;
        int step = ImagesPerPass(g, scratch, nameof(ConvolveTransposed));
        for (int first = 0; first < count; first += step)
        {
            int inPass = Math.Min(step, count - first), rows = inPass * g.OutputPositions;
            var columns = scratch.Slice(0, rows * g.PatchLength);
            var passCotangent = cotangent.Slice(first * outputPerImage, inPass * outputPerImage);
            for (int group = 0; group < g.Groups; group++)
            {
                int a = group * perGroup, b = group * perGroup * g.GroupPatchLength, o = group * g.GroupPatchLength;
                Gemm(Transpose.No, Transpose.No, rows, g.GroupPatchLength, perGroup, 1f,
                    passCotangent.Slice(a, passCotangent.Length - a), outputs, weights.Slice(b, weights.Length - b), g.GroupPatchLength,
                    0f, columns.Slice(o, columns.Length - o), g.PatchLength);
            }
            Col2Im(columns, g, images.Slice(first * g.InputElements, inPass * g.InputElements), accumulate);
        }
    }

    /// <summary>
    /// The weight VJP of <see cref="Convolve"/>: <paramref name="weightGradient"/> [outputs, kh, kw, C/G] (+)= s̄ᵀ cols(x) for
    /// <paramref name="images"/> x [N, H, W, C] and <paramref name="cotangent"/> s̄ [N·Ho·Wo, outputs]; overwritten unless
    /// <paramref name="accumulate"/>. This default builds im2col columns in <paramref name="scratch"/> pass by pass (as
    /// <see cref="Convolve"/>'s) and adds each pass's W̄_group = s̄[:, group outputs]ᵀ cols(x)[:, group block] by GEMM.
    /// </summary>
    public virtual void ConvolutionWeightGradient(View images, in ConvGeometry geometry, View cotangent, int outputs, View weightGradient, bool accumulate, View scratch)
    {
        var g = geometry;
        int count = images.Length / g.InputElements, perGroup = outputs / g.Groups, outputPerImage = g.OutputPositions * outputs;
        int step = ImagesPerPass(g, scratch, nameof(ConvolutionWeightGradient));
        for (int first = 0; first < count; first += step)
        {
            int inPass = Math.Min(step, count - first), rows = inPass * g.OutputPositions;
            var columns = scratch.Slice(0, rows * g.PatchLength);
            var passCotangent = cotangent.Slice(first * outputPerImage, inPass * outputPerImage);
            Im2Col(images.Slice(first * g.InputElements, inPass * g.InputElements), g, columns);
            float beta = first > 0 || accumulate ? 1f : 0f;
            for (int group = 0; group < g.Groups; group++)
            {
                int a = group * perGroup, b = group * g.GroupPatchLength, o = group * perGroup * g.GroupPatchLength;
                Gemm(Transpose.Yes, Transpose.No, perGroup, g.GroupPatchLength, rows, 1f,
                    passCotangent.Slice(a, passCotangent.Length - a), outputs, columns.Slice(b, columns.Length - b), g.PatchLength,
                    beta, weightGradient.Slice(o, perGroup * g.GroupPatchLength), g.GroupPatchLength);
            }
        }
    }

    /// <summary>Images per im2col pass: <see cref="ConvolutionPassElements"/> column floats, at least one image, at most what
    /// <paramref name="scratch"/> holds.</summary>
    private int ImagesPerPass(in ConvGeometry g, View scratch, string caller)
    {
        long perImage = Math.Max(1L, (long)g.OutputPositions * g.PatchLength);
        if (scratch.Length < perImage)
            throw new ArgumentException($"{caller}: the scratch holds {scratch.Length} floats, fewer than one image's {perImage} im2col columns.", nameof(scratch));
        return (int)Math.Clamp(ConvolutionPassElements / perImage, 1, scratch.Length / perImage);
    }

    /// <summary>y[rows, outputs] = β·y + cols[rows, kh·kw·C] · Wᵀ, group by group (group g: its column block, its
    /// outputs/G rows of W).</summary>
    public void MultiplyColumns(in ConvGeometry geometry, int rows, View columns, View weight, int outputs, float beta, View y)
    {
        var g = geometry;
        int perGroup = outputs / g.Groups;
        for (int group = 0; group < g.Groups; group++)
        {
            int a = group * g.GroupPatchLength, b = group * perGroup * g.GroupPatchLength, o = group * perGroup;
            Gemm(Transpose.No, Transpose.Yes, rows, perGroup, g.GroupPatchLength, 1f,
                columns.Slice(a, columns.Length - a), g.PatchLength, weight.Slice(b, weight.Length - b), g.GroupPatchLength,
                beta, y.Slice(o, y.Length - o), outputs);
        }
    }

    /// <summary>im2col over channels-last images: <paramref name="images"/> [N, H, W, C] → <paramref name="columns"/>
    /// [N·Ho·Wo, kh·kw·C], row (n, oy, ox) holding, for each group g, kernel row ky, kernel column kx and channel c of the
    /// group, x[n, oy·s − p + ky, ox·s − p + kx, g·C/G + c] (0 outside the image). N = images.Length / (H·W·C).</summary>
    public abstract void Im2Col(View images, in ConvGeometry geometry, View columns);

    /// <summary>The adjoint of <see cref="Im2Col"/> (col2im): every column entry is added back to the pixel it was read
    /// from; <paramref name="images"/> is overwritten first unless <paramref name="accumulate"/>.</summary>
    public abstract void Col2Im(View columns, in ConvGeometry geometry, View images, bool accumulate);

    /// <summary>Max pooling of [N, H, W, C] into [N, Ho, Wo, C]; <paramref name="argmax"/> [N, Ho, Wo, C] receives the
    /// index within the example (y·W·C + x·C + c, as a float) of the first maximum of each window.</summary>
    public abstract void MaxPool(View images, in PoolGeometry geometry, View output, View argmax);

    /// <summary>Average pooling of [N, H, W, C] into [N, Ho, Wo, C], padding counted as zeros (divides by kh·kw).</summary>
    public abstract void AvgPool(View images, in PoolGeometry geometry, View output);

    /// <summary>The adjoint of <see cref="AvgPool"/>: each output cotangent / (kh·kw) added to every pixel of its window;
    /// <paramref name="images"/> is overwritten first unless <paramref name="accumulate"/>.</summary>
    public abstract void AvgPoolBackward(View output, in PoolGeometry geometry, View images, bool accumulate);

    /// <summary>destination[r, j] = source[r, indices[r mod N, j]] with source rows of <paramref name="sourceColumns"/>
    /// elements, indices [N, m] (whole numbers stored as floats) and destination [R, m], R a multiple of N: one index
    /// set (one batch) applied to every tangent or cotangent channel. The JVP of max pooling.</summary>
    public abstract void GatherColumns(View source, int sourceColumns, View indices, View destination);

    /// <summary>destination[r, j] = factor[r mod N, i]·source[r, i] at i = indices[r mod N, j], factor [N, sourceColumns]:
    /// <see cref="GatherColumns"/> of factor ⊙ source (<see cref="MultiplyChannels"/>) without writing the product, the same
    /// rounded products. A max pool's JVP through the elementwise op before it (factor f'(x)). The default gathers the factor
    /// into <paramref name="scratch"/> (N·m floats), the source into the destination, and multiplies; a backend may read
    /// both at the winners in one pass.</summary>
    public virtual void GatherColumnsOfProduct(View source, View factor, int sourceColumns, View indices, View destination, View scratch)
    {
        var gathered = scratch.Slice(0, indices.Length);
        GatherColumns(factor, sourceColumns, indices, gathered);
        GatherColumns(source, sourceColumns, indices, destination);
        MultiplyChannels(gathered, destination, destination, accumulate: false);
    }

    /// <summary>destination[r, i] (+)= factor[r mod N, i]·source[r, j] at i = indices[r mod N, j] (destination zeroed first
    /// unless <paramref name="accumulate"/>), for indices that never repeat within a row (windows that do not overlap): the
    /// max pool's VJP through the elementwise op before it, f'(x) ⊙ <see cref="ScatterAddColumns"/> without writing the
    /// scattered cotangent. The default gathers the factor and forms the products in <paramref name="scratch"/> (2·R·m floats);
    /// a backend may multiply as it scatters.</summary>
    public virtual void ScatterAddColumnsOfProduct(View source, View factor, View indices, int destinationColumns, View destination, bool accumulate, View scratch)
    {
        var (gathered, products) = (scratch.Slice(0, indices.Length), scratch.Slice(indices.Length, source.Length));
        GatherColumns(factor, destinationColumns, indices, gathered);
        MultiplyChannels(gathered, source, products, accumulate: false);
        ScatterAddColumns(products, indices, destinationColumns, destination, accumulate);
    }

    /// <summary>The adjoint of <see cref="GatherColumns"/>: destination[r, indices[r mod N, j]] += source[r, j];
    /// <paramref name="destination"/> [R, destinationColumns] is zeroed first unless <paramref name="accumulate"/>.</summary>
    public abstract void ScatterAddColumns(View source, View indices, int destinationColumns, View destination, bool accumulate);

    /// <summary>y = f(x) element by element for the pointwise <paramref name="function"/> (x and y of the same length).</summary>
    public abstract void Elementwise(ElementwiseFunction function, View x, View y);
    /// <summary>derivative = f'(x) element by element, given x and y = f(x) (whichever the function needs).</summary>
    public abstract void ElementwiseDerivative(ElementwiseFunction function, View x, View y, View derivative);

    /// <summary>y = f(x) and f'(x) in one call (a forward pass that saves the derivative); by default the two calls.</summary>
    public virtual void ElementwiseWithDerivative(ElementwiseFunction function, View x, View y, View derivative)
    {
        Elementwise(function, x, y);
        ElementwiseDerivative(function, x, y, derivative);
    }

    /// <summary>destination (+)= 1[y &gt; 0] ⊙ v: a ReLU's VJP read from its output y = max(x, 0), which is positive exactly where x
    /// is (a NaN x gives a NaN y, neither positive), with the product <see cref="MultiplyChannels"/> forms from a saved mask, so
    /// its bits: a plan that keeps y anyway then saves no mask. One channel: y, v and the destination have the same length.
    /// The default writes the mask into the destination and multiplies in place, so it only overwrites; a backend may fuse
    /// both and add.</summary>
    public virtual void MultiplyByPositiveMask(View y, View v, View destination, bool accumulate)
    {
        if (accumulate) throw new NotSupportedException($"{GetType().Name}.{nameof(MultiplyByPositiveMask)} overwrites its destination only.");
        ElementwiseDerivative(ElementwiseFunction.Relu, y, y, destination);
        MultiplyChannels(destination, v, destination, accumulate: false);
    }

    /// <summary>Per-row softmax cross-entropy: loss[r] = logsumexp(z_r) − z_r[label_r] and
    /// error[r, :] = softmax(z_r) − onehot(label_r) = ∂loss[r]/∂z_r. Labels are class indices stored as floats.</summary>
    public abstract void SoftmaxCrossEntropy(View logits, View labels, int classes, View loss, View error);

    /// <summary>Per-row mean squared error: loss[r] = (1/D)Σ_j (p − t)² and error = ∂loss/∂p = 2(p − t)/D.</summary>
    public abstract void SquaredError(View prediction, View target, int width, View loss, View error);

    /// <summary>Standard normal numbers at positions [first, first + n) of the key's stream (same on every backend).</summary>
    public abstract void FillNormal(RandomKey key, long first, float mean, float standardDeviation, View destination);
    /// <summary>Uniform numbers in (low, high) at positions [first, first + n) of the key's stream.</summary>
    public abstract void FillUniform(RandomKey key, long first, float low, float high, View destination);

    /// <summary>Σ_i x[i], read back to the host.</summary>
    public abstract double Sum(View x);

    /// <summary>Rescales every row of x (rows of <paramref name="columns"/> elements) to Euclidean norm
    /// <paramref name="norm"/>; all-zero rows stay zero.</summary>
    public abstract void NormalizeRows(View x, int columns, float norm);

    /// <summary>destination[r] = cos(a[r, :], b[r, :]) for rows of <paramref name="columns"/> elements (0 when a row is zero).</summary>
    public abstract void RowCosines(View a, View b, int columns, View destination);

    /// <summary>Σ_i x[i]², read back to the host.</summary>
    public abstract double SumOfSquares(View x);

    /// <summary>Σ_i a[i]·b[i], read back to the host.</summary>
    public abstract double Dot(View a, View b);

    /// <summary>y = α·x + β·y (the BLAS axpby): momentum, moving averages, weight decay, applying updates.</summary>
    public abstract void Axpby(float alpha, View x, float beta, View y);

    /// <summary>v = β·v + (1 − β)·g²: Adam's second-moment moving average.</summary>
    public abstract void MovingAverageOfSquares(View g, float beta, View v);

    /// <summary>destination = (m·mScale) / (√(v·vScale) + ε): Adam's direction with bias corrections folded into the scales.</summary>
    public abstract void AdamDirection(View m, View v, float mScale, float vScale, float epsilon, View destination);

    /// <summary>(1/n) Σ_i g[i]² / max(v[i]·vScale, floor): the update RMS of StableAdamW (Adafactor-style clipping).</summary>
    public abstract double MeanRatioOfSquares(View g, View v, float vScale, float floor);

    // ---- attention (issue 13): batched GEMM, causal softmax and the softmax JVP over rows -------------------------

    /// <summary>
    /// <paramref name="count"/> GEMMs with fixed strides: C_i = α·op(A_i)·op(B_i) + β·C_i for i in [0, count), where A_i starts
    /// <paramref name="strideA"/> elements after A_{i−1} (likewise B, C), each row-major with its leading dimension as in
    /// <see cref="Gemm"/>. Attention's per-head products are such batches: a head's Q slice is a [T, dh] matrix with leading
    /// dimension D (the model width), one example after the other every T·D elements. The default runs the GEMMs one by
    /// one on slices of the views (allocation-free); CUDA makes one cuBLAS strided-batched call, and the CPU may run the
    /// products on several threads: the C_i must not overlap.
    /// </summary>
    public virtual void GemmStridedBatched(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha, View a, int lda, long strideA,
        View b, int ldb, long strideB, float beta, View c, int ldc, long strideC, int count)
    {
        if (m == 0 || n == 0 || count == 0) return;
        var (aExtent, bExtent, cExtent) = BatchExtents(transposeA, transposeB, m, n, k, lda, ldb, ldc);
        for (int i = 0; i < count; i++)
            Gemm(transposeA, transposeB, m, n, k, alpha, a.Slice((int)(i * strideA), aExtent), lda, b.Slice((int)(i * strideB), bExtent), ldb,
                beta, c.Slice((int)(i * strideC), cExtent), ldc);
    }

    /// <summary>The elements that A, B and C of one product of <see cref="GemmStridedBatched"/> span, as stored (0 for an
    /// empty matrix).</summary>
    protected static (int A, int B, int C) BatchExtents(Transpose transposeA, Transpose transposeB, int m, int n, int k, int lda, int ldb, int ldc)
    {
        var (aRows, aColumns) = transposeA == Transpose.No ? (m, k) : (k, m);
        var (bRows, bColumns) = transposeB == Transpose.No ? (k, n) : (n, k);
        return (Extent(aRows, aColumns, lda), Extent(bRows, bColumns, ldb), Extent(m, n, ldc));

        static int Extent(int rows, int columns, int ld) => rows == 0 || columns == 0 ? 0 : (rows - 1) * ld + columns;
    }

    /// <summary>
    /// Causal softmax over the rows of square matrices: <paramref name="scores"/> and <paramref name="probabilities"/> hold
    /// N matrices [size, size] (N = length / size²); for row i of each, p[i, j] = exp(s[i, j] − m_i) / Σ_{j' ≤ i} exp(s[i, j'] − m_i)
    /// for j ≤ i, with m_i = max_{j ≤ i} s[i, j], and p[i, j] = 0 for j &gt; i (the mask −∞ of a decoder: position i attends to
    /// positions 0..i only). Entries above the diagonal of <paramref name="scores"/> are never read. In place is allowed.
    /// </summary>
    public abstract void CausalSoftmaxRows(View scores, int size, View probabilities);

    /// <summary>
    /// The softmax Jacobian applied row by row: destination[c, r, j] = p[r, j]·(x[c, r, j] − Σ_{j'} p[r, j']·x[c, r, j']) for rows of
    /// <paramref name="columns"/> elements, where <paramref name="x"/> and <paramref name="destination"/> hold a whole number of
    /// copies (channels c) of <paramref name="probabilities"/>' length. The JVP ṗ = p ⊙ (ż − ⟨p, ż⟩) of p = softmax(z), and, the
    /// Jacobian diag(p) − p pᵀ being symmetric, also its VJP z̄ = p ⊙ (p̄ − ⟨p, p̄⟩). Masked entries (p = 0) come out 0 for any
    /// finite x. In place (destination = x) is allowed.
    /// </summary>
    public abstract void SoftmaxJvpRows(View probabilities, View x, int columns, View destination);
    // ---- Sequence ops (issue 13): LayerNorm/RMSNorm over the last axis, embeddings, sequence cross-entropy ----------

    /// <summary>Row-wise normalisation of x [R, D] (D = <paramref name="width"/>), each row on its own:
    /// with <paramref name="centre"/> (LayerNorm) s_r = 1/√(σ²_r + ε), σ²_r = (1/D) Σ_j (x_rj − μ_r)² (biased, as PyTorch),
    /// normalized[r, j] = (x_rj − μ_r)·s_r; without (RMSNorm) s_r = 1/√((1/D) Σ_j x_rj² + ε), normalized[r, j] = x_rj·s_r.
    /// <paramref name="inverseStd"/> [R] receives s_r.</summary>
    public abstract void NormalizeLastAxis(View x, int width, float epsilon, bool centre, View normalized, View inverseStd);

    /// <summary>The JVP (and, the projection being symmetric, the VJP) of <see cref="NormalizeLastAxis"/> for C channels:
    /// destination[c, r, :] (+)= s_r (v[c, r, :] − mean_j v[c, r, j] − x̂[r, :]·mean_j(v[c, r, j] x̂[r, j])), the mean of v
    /// subtracted only with <paramref name="centre"/>; x̂ = <paramref name="normalized"/> [R, D], s = <paramref name="inverseStd"/>
    /// [R], v and destination [C, R, D] with C = v.Length / x̂.Length.</summary>
    public abstract void NormalizeLastAxisDerivative(View normalized, View inverseStd, View v, bool centre, View destination, bool accumulate);

    /// <summary>destination[c, n, :] = table[c, ids[n], :]: an embedding lookup for every channel c of the table. ids =
    /// <paramref name="indices"/> [N] (whole numbers stored as floats); a negative id (padding) gives a row of zeros. Rows are
    /// <paramref name="width"/> wide, C = destination.Length / (N·width), table [C, V, width].</summary>
    public abstract void GatherRows(View table, View indices, int width, View destination);

    /// <summary>The adjoint of <see cref="GatherRows"/> for one channel: destination[ids[n], :] += source[n, :] for n = 0, 1, …, N − 1
    /// in that order (deterministic; negative ids skipped); destination [V, width] is zeroed first unless <paramref name="accumulate"/>.</summary>
    public abstract void ScatterAddRows(View source, View indices, int width, View destination, bool accumulate);

    /// <summary>Per-example sequence cross-entropy over logits [B, T, V] (T = <paramref name="length"/>, V = <paramref name="classes"/>)
    /// and targets [B, T] (ids stored as floats): with n_b the number of positions whose target is not <paramref name="ignoreIndex"/>,
    /// loss[b] = (1/n_b) Σ_{t kept} (logsumexp(z_bt) − z_bt[y_bt]) and error[b, t, :] = (softmax(z_bt) − onehot(y_bt)) / n_b on kept
    /// positions, 0 on ignored ones (a negative target, the tokens' padding, is ignored too); an example with n_b = 0 has loss 0 and error 0. error = ∂loss[b]/∂z_b.</summary>
    public abstract void SequenceCrossEntropy(View logits, View targets, int length, int classes, float ignoreIndex, View loss, View error);
}
