using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Backends;

/// <summary>Host memory: a plain float array.</summary>
public sealed class CpuBuffer(CpuBackend backend, int length) : DeviceBuffer
{
    internal readonly float[] Data = new float[length];
    /// <inheritdoc/>
    public override int Length => Data.Length;
    /// <inheritdoc/>
    public override Backend Backend => backend;
}

/// <summary>
/// The CPU backend: elementwise work and reductions through <see cref="TensorPrimitives"/>
/// (SIMD), matrix products through a <see cref="Tensors.Gemm"/> (OpenBLAS when installed).
/// One instance per plan: the managed GEMM keeps packing scratch, so it is not shared between threads.
/// </summary>
public sealed partial class CpuBackend(Gemm gemm) : Backend
{
    /// <summary>A CPU backend with the default GEMM: OpenBLAS when the library can be loaded, the managed GEMM otherwise
    /// (<see cref="Tensors.Gemm.CreateDefault"/>).</summary>
    public CpuBackend() : this(Tensors.Gemm.CreateDefault()) { }

    /// <summary>The GEMM that <see cref="Gemm"/> and the im2col convolution paths run on (OpenBLAS or managed).</summary>
    public Gemm MatrixMultiply { get; } = gemm;

    /// <summary>Threads the backend's own parallel kernels use (the calling thread and up to Threads − 1 .NET thread-pool
    /// threads): by default as many as the GEMM uses (OpenBLAS: OPENBLAS_NUM_THREADS or the cores), so that
    /// OPENBLAS_NUM_THREADS=1 means one thread for everything. Results do not depend on it.</summary>
    public int Threads
    {
        get => _threads;
        init => _threads = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(Threads), value, "CpuBackend.Threads must be at least 1 (1 = the calling thread only).");
    }

    private readonly int _threads = Math.Max(1, gemm.Threads);

    /// <summary>Parts per thread in a parallel kernel: more than one, so that a thread that starts late still finds work.</summary>
    private const int PartsPerThread = 2;

    /// <summary>Kernels over fewer floats run on the calling thread alone: 64K floats take ~10–30 µs, about what waking a
    /// parked pool thread costs on an idle machine (6–20 µs measured; far more when the cores are busy).</summary>
    private const int ParallelElements = 1 << 16;

    /// <inheritdoc/>
    public override string Name => $"cpu ({MatrixMultiply.Name} gemm)";

    /// <summary>For the im2col path (VJPs, and convolutions the direct kernel does not cover): cache-sized convolution passes
    /// pay off when one thread runs the GEMM (`profile cnn-forward`, the benchmark
    /// CNN: 54.6 ms in passes against 61.2 for the whole batch); with a multi-threaded GEMM each small pass pays the pool's
    /// start-up twice over (2 OpenBLAS threads: 60 ms in passes against 47.3 whole), so the whole batch goes at once.</summary>
    public override int ConvolutionPassElements => MatrixMultiply.Threads > 1 ? int.MaxValue : base.ConvolutionPassElements;

    /// <summary>Allocates a zeroed host array of <paramref name="length"/> floats.</summary>
    /// <exception cref="ArgumentException">The buffer would exceed <see cref="AvailableMemoryBytes"/>.</exception>
    public override DeviceBuffer Allocate(int length)
    {
        RequireMemory(length * (long)sizeof(float), $"A buffer of {length:N0} floats");
        return new CpuBuffer(this, length);
    }

    /// <summary>The memory the GC may still use: its limit (physical memory or the container's) minus what the process's
    /// managed heap holds now. Other processes are not counted: a guard against hopeless sizes, not a precise budget.</summary>
    public override long AvailableMemoryBytes
    {
        get
        {
            // GetTotalMemory counts what is allocated now (GCMemoryInfo's heap size dates from the last collection),
            // so allocations made one after another add up.
            return Math.Max(0, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes - GC.GetTotalMemory(forceFullCollection: false));
        }
    }

    /// <summary>The host memory behind a view of this backend.</summary>
    public static Span<float> Span(View view)
    {
        if (view.Buffer is not CpuBuffer buffer)
            throw new InvalidOperationException(view.IsEmpty
                ? "This view is a symbolic zero: no tangent or cotangent reaches this node in the compiled plan."
                : $"This view lives on the {view.Buffer!.Backend.Name} backend; copy it to the host with CopyToHost.");
        return buffer.Data.AsSpan(view.Offset, view.Length);
    }

    private static ReadOnlySpan<float> Read(View view) => Span(view);

    /// <summary>
    /// Sets subnormal values (|v| below 2⁻¹²⁶ ≈ 1.2e-38) to zero. Softmax probabilities of very unlikely classes underflow
    /// into them as training sharpens a model, and x86 computes products with subnormal operands through microcode assists
    /// that can be ~100× slower (the step benchmarks met this with Adam's moments). A safeguard, not a measured fix:
    /// dropping less than 1.2e-38 from a probability changes no result that float32 can show.
    /// </summary>
    internal static void FlushSubnormals(Span<float> values)
    {
        const float SmallestNormal = 1.17549435e-38f; // 2⁻¹²⁶
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i <= values.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var v = Vector256.Create((ReadOnlySpan<float>)values.Slice(i, Vector256<float>.Count));
                Vector256.ConditionalSelect(Vector256.LessThan(Vector256.Abs(v), Vector256.Create(SmallestNormal)), Vector256<float>.Zero, v)
                    .CopyTo(values.Slice(i, Vector256<float>.Count));
            }
        for (; i < values.Length; i++)
            if (MathF.Abs(values[i]) < SmallestNormal) values[i] = 0f;
    }

    /// <inheritdoc/>
    public override void CopyFromHost(ReadOnlySpan<float> source, View destination) => source.CopyTo(Span(destination));
    /// <inheritdoc/>
    public override void CopyToHost(View source, Span<float> destination) => Read(source).CopyTo(destination);

    /// <inheritdoc/>
    public override void Gemm(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha,
        View a, int lda, View b, int ldb, float beta, View c, int ldc)
    {
        // OpenBLAS brings its own threads: our lingering helpers step aside rather than spin beside them.
        if (MatrixMultiply.Threads > 1) _workers?.Park();
        MatrixMultiply.Multiply(transposeA, transposeB, m, n, k, alpha, Read(a), lda, Read(b), ldb, beta, Span(c), ldc);
    }

    /// <inheritdoc/>
    public override void Fill(float value, View destination) => Span(destination).Fill(value);

    /// <inheritdoc/>
    public override void Copy(View source, View destination, bool accumulate = false) =>
        Pointwise(accumulate ? PointwiseKind.Add : PointwiseKind.Copy, source, destination, 0f, destination);

    /// <inheritdoc/>
    public override void Scale(View source, float factor, View destination) => Pointwise(PointwiseKind.Scale, source, default, factor, destination);

    /// <inheritdoc/>
    public override void Add(View a, View b, View destination) => Pointwise(PointwiseKind.Add, a, b, 0f, destination);

    private enum PointwiseKind { Copy, Scale, Add }

    private readonly record struct PointwiseArguments(PointwiseKind Kind, View A, View B, float Factor, View Destination);

    private PartWork<PointwiseArguments>? _pointwise;

    /// <summary>destination = a, a·factor or a + b over a's elements: in chunks of whole vectors across the threads for a
    /// large view (the same bits as one thread: no element depends on another), except a copy between overlapping,
    /// shifted ranges of one buffer, which only a single move gets right.</summary>
    private void Pointwise(PointwiseKind kind, View a, View b, float factor, View destination)
    {
        bool shiftedOverlap = a.Buffer == destination.Buffer && a.Offset != destination.Offset
            && a.Offset < destination.Offset + destination.Length && destination.Offset < a.Offset + a.Length;
        RunParts(ref _pointwise, static (in PointwiseArguments p, int part, int parts) =>
        {
            var (first, count) = VectorChunk(p.A.Length, part, parts);
            var x = Read(p.A.Slice(first, count));
            var y = Span(p.Destination.Slice(first, count));
            switch (p.Kind)
            {
                case PointwiseKind.Copy: x.CopyTo(y); break;
                case PointwiseKind.Scale: TensorPrimitives.Multiply(x, p.Factor, y); break;
                default: TensorPrimitives.Add(x, Read(p.B.Slice(first, count)), y); break;
            }
        }, new PointwiseArguments(kind, a, b, factor, destination), shiftedOverlap ? 1 : Parts(a.Length, a.Length / Vector<float>.Count));
    }

    /// <inheritdoc/>
    /// <remarks>Elementwise, so split across the threads without changing a bit: a factor as long as the destination (a
    /// mask: an activation's JVP and VJP) in chunks of whole vectors, a shorter one (one per channel group) by its
    /// repetitions.</remarks>
    public override void MultiplyChannels(View a, View b, View destination, bool accumulate)
    {
        int repetitions = destination.Length / Math.Max(1, a.Length);
        int parts = repetitions == 1 ? Parts(destination.Length, destination.Length / Vector<float>.Count) : Parts(destination.Length, repetitions);
        RunParts(ref _multiplyChannels, static (in ProductArguments p, int part, int parts) =>
        {
            int length = p.Factor.Length, repetitions = p.Destination.Length / Math.Max(1, length);
            if (repetitions == 1)
            {
                var (first, count) = VectorChunk(length, part, parts);
                Multiply(Read(p.Factor.Slice(first, count)), Read(p.Source.Slice(first, count)), Span(p.Destination.Slice(first, count)), p.Accumulate);
                return;
            }
            var share = PartRange.Of(repetitions, part, parts);
            var factor = Read(p.Factor);
            var source = Read(share.Of(p.Source, length));
            var target = Span(share.Of(p.Destination, length));
            for (int offset = 0; offset < target.Length; offset += length)
                Multiply(factor, source.Slice(offset, length), target.Slice(offset, length), p.Accumulate);
        }, new ProductArguments(a, b, destination, accumulate), parts);

        static void Multiply(ReadOnlySpan<float> factor, ReadOnlySpan<float> from, Span<float> to, bool accumulate)
        {
            if (accumulate) TensorPrimitives.FusedMultiplyAdd(factor, from, to, to);
            else TensorPrimitives.Multiply(factor, from, to);
        }
    }

    private readonly record struct ProductArguments(View Factor, View Source, View Destination, bool Accumulate);

    /// <summary>One pass: the mask (y &gt; 0 as 1 or 0) in registers, multiplied (and added, with a fused multiply-add) as
    /// <see cref="MultiplyChannels"/> does with a saved mask.</summary>
    public override void MultiplyByPositiveMask(View y, View v, View destination, bool accumulate) =>
        RunParts(ref _positiveMask, static (in ProductArguments p, int part, int parts) =>
        {
            var (first, count) = VectorChunk(p.Factor.Length, part, parts);
            ReadOnlySpan<float> output = Read(p.Factor.Slice(first, count)), from = Read(p.Source.Slice(first, count));
            var to = Span(p.Destination.Slice(first, count));
            int i = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var one = Vector256<float>.One;
                for (; i <= count - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    var mask = Vector256.GreaterThan(Vector256.Create(output.Slice(i, Vector256<float>.Count)), Vector256<float>.Zero) & one;
                    var source = Vector256.Create(from.Slice(i, Vector256<float>.Count));
                    var result = p.Accumulate
                        ? Vector256.FusedMultiplyAdd(mask, source, Vector256.Create((ReadOnlySpan<float>)to.Slice(i, Vector256<float>.Count)))
                        : mask * source;
                    result.CopyTo(to.Slice(i, Vector256<float>.Count));
                }
            }
            for (; i < count; i++)
            {
                float mask = output[i] > 0f ? 1f : 0f;
                to[i] = p.Accumulate ? MathF.FusedMultiplyAdd(mask, from[i], to[i]) : mask * from[i];
            }
        }, new ProductArguments(y, v, destination, accumulate), Parts(destination.Length, destination.Length / Vector<float>.Count));

    private PartWork<ProductArguments>? _positiveMask;

    private PartWork<ProductArguments>? _multiplyChannels;

    /// <inheritdoc/>
    public override void AddBias(View bias, View destination) => InParallelRows<AddColumns>(ref _addBias, destination, bias, bias, destination);

    /// <inheritdoc/>
    public override int GemmSingleBlockDepth => MatrixMultiply.SingleBlockDepth;

    /// <summary>Copies the row into every row of the destination (the bits of the row, −0 included), rows split over the threads.</summary>
    public override void RepeatRow(View row, View destination) =>
        RunParts(ref _repeatRow, static (in ColumnArguments c, int part, int parts) =>
        {
            var source = Read(c.A);
            var rows = PartRange.Of(c.Target.Length / source.Length, part, parts);
            var target = Span(rows.Of(c.Target, source.Length));
            for (int offset = 0; offset < target.Length; offset += source.Length) source.CopyTo(target[offset..]);
        }, new ColumnArguments(destination, row, row, destination), Parts(destination.Length, destination.Length / row.Length));

    private PartWork<ColumnArguments>? _repeatRow;

    /// <inheritdoc/>
    public override void ScaleColumns(View a, View scale, View destination, bool accumulate)
    {
        var factor = Read(scale);
        var source = Read(a);
        var target = Span(destination);
        if (!accumulate)
        {
            InParallelRows<ScaleOnly>(ref _scaleOnly, a, scale, scale, destination);
            return;
        }
        // y += x ⊙ factor per row, fused as before; vector loops for the same reason as ForEachRow's.
        int columns = factor.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < target.Length; offset += columns)
        {
            var x = source.Slice(offset, columns);
            var y = target.Slice(offset, columns);
            int j = 0;
            for (; j < vectorEnd; j += width)
                Vector.FusedMultiplyAdd(new Vector<float>(x[j..]), new Vector<float>(factor[j..]), new Vector<float>(y[j..])).CopyTo(y[j..]);
            for (; j < columns; j++) y[j] = MathF.FusedMultiplyAdd(x[j], factor[j], y[j]);
        }
    }

    /// <inheritdoc/>
    public override void ColumnMoments(View x, View negativeMean, View variance, View scratch)
    {
        // Rows in fixed blocks (by size only, never by thread count, so results do not depend on the threads): pass 1 sums
        // each block's columns into the scratch and adds the block sums in block order; pass 2 does the same for the
        // squared deviations Σ_r (x_rc − μ_c)² (centred first, so no E[x²] − μ² cancellation).
        int columns = negativeMean.Length, rows = x.Length / columns;
        int blocks = x.Length < ParallelElements ? 1 : Math.Min(MomentBlocks, rows);
        // Each block's partial sums start on their own cache line, one line apart: a part rewrites its sums on every row,
        // and sums sharing a line with another core's would bounce that line between the cores on every row.
        int stride = (columns + 15) / 16 * 16 + 16;
        if (blocks * stride > scratch.Length) stride = columns;
        var arguments = new MomentArguments(x, negativeMean, scratch.Slice(0, blocks * stride), stride, Squares: false);
        var partials = Span(arguments.Partials);
        var shift = Span(negativeMean);
        var spread = Span(variance);
        RunParts(ref _columnMoments, static (in MomentArguments a, int part, int parts) =>
        {
            int columns = a.Shift.Length;
            var sum = Span(a.Partials.Slice(part * a.Stride, columns));
            sum.Clear();
            var block = Read(PartRange.Of(a.X.Length / columns, part, parts).Of(a.X, columns));
            if (a.Squares) AccumulateSquaredDeviations(block, Read(a.Shift), sum);
            else AccumulateRows(block, sum);
        }, arguments, blocks);
        AddBlocks(partials, stride, shift);
        TensorPrimitives.Multiply(shift, -1f / rows, shift);
        RunParts(ref _columnMoments, _columnMoments!.Action, arguments with { Squares = true }, blocks);
        AddBlocks(partials, stride, spread);
        TensorPrimitives.Multiply(spread, 1f / rows, spread);

        static void AddBlocks(ReadOnlySpan<float> partials, int stride, Span<float> total)
        {
            partials[..total.Length].CopyTo(total);
            for (int at = stride; at < partials.Length; at += stride) TensorPrimitives.Add(total, partials.Slice(at, total.Length), total);
        }
    }

    /// <summary>Row blocks of the batch statistics of a large activation (fixed, so results do not depend on the threads).</summary>
    private const int MomentBlocks = 16;

    private readonly record struct MomentArguments(View X, View Shift, View Partials, int Stride, bool Squares);

    private PartWork<MomentArguments>? _columnMoments;

    /// <summary>sum[c] += Σ_r (rows[r, c] + shift[c])², row by row in order, vector loops over a row's columns.</summary>
    private static void AccumulateSquaredDeviations(ReadOnlySpan<float> rows, ReadOnlySpan<float> shift, Span<float> sum)
    {
        int columns = sum.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < rows.Length; offset += columns)
        {
            var row = rows.Slice(offset, columns);
            int j = 0;
            for (; j < vectorEnd; j += width)
            {
                var deviation = new Vector<float>(row[j..]) + new Vector<float>(shift[j..]);
                (new Vector<float>(sum[j..]) + deviation * deviation).CopyTo(sum[j..]);
            }
            for (; j < columns; j++) sum[j] += (row[j] + shift[j]) * (row[j] + shift[j]);
        }
    }

    /// <summary>
    /// The normalisation tangent in two passes instead of nine, with the default's arithmetic, so the same bits: pass 1 sums
    /// v and the rounded products x̂ v per column, row by row in order (as <see cref="SumRows"/> does, on one thread); pass 2
    /// computes, per element and in parallel rows, t = v + (−mean v), t = fma(x̂, −mean(x̂ v), t), t = t·scale (+ destination).
    /// </summary>
    public override void NormalizationTangent(View normalized, View v, View scale, View destination, bool accumulate,
        View negativeMeanProduct, View negativeMean, View product, View partial, View productSums = default, View sums = default, View addend = default)
    {
        if (accumulate && !addend.IsEmpty) throw new ArgumentException("NormalizationTangent: accumulate into the destination or add an addend, not both.", nameof(addend));
        int columns = scale.Length, rows = v.Length / columns;
        var meanProduct = Span(negativeMeanProduct);
        var mean = Span(negativeMean);
        meanProduct.Clear();
        mean.Clear();
        AccumulateRowsAndProducts(Read(v), Read(normalized), mean, meanProduct);
        if (!productSums.IsEmpty) meanProduct.CopyTo(Span(productSums));
        if (!sums.IsEmpty) mean.CopyTo(Span(sums));
        TensorPrimitives.Multiply(meanProduct, -1f / rows, meanProduct);
        TensorPrimitives.Multiply(mean, -1f / rows, mean);
        RunParts(ref _normalizationTangent, static (in TangentArguments a, int part, int parts) =>
        {
            int columns = a.Scale.Length;
            var share = PartRange.Of(a.V.Length / columns, part, parts);
            ReadOnlySpan<float> v = Read(share.Of(a.V, columns)), x = Read(share.Of(a.Normalized, columns));
            ReadOnlySpan<float> shift = Read(a.NegativeMean), slope = Read(a.NegativeMeanProduct), scale = Read(a.Scale);
            var y = Span(share.Of(a.Destination, columns));
            // The addend: the destination itself when accumulating, else the caller's (none: nothing added).
            bool adds = a.Accumulate || !a.Addend.IsEmpty;
            ReadOnlySpan<float> addend = a.Accumulate ? y : a.Addend.IsEmpty ? default : Read(share.Of(a.Addend, columns));
            int width = Vector<float>.Count, vectorEnd = columns - columns % width;
            for (int offset = 0; offset < y.Length; offset += columns)
            {
                int j = 0;
                for (; j < vectorEnd; j += width)
                {
                    var t = new Vector<float>(v[(offset + j)..]) + new Vector<float>(shift[j..]);
                    t = Vector.FusedMultiplyAdd(new Vector<float>(x[(offset + j)..]), new Vector<float>(slope[j..]), t) * new Vector<float>(scale[j..]);
                    (adds ? t + new Vector<float>(addend[(offset + j)..]) : t).CopyTo(y[(offset + j)..]);
                }
                for (; j < columns; j++)
                {
                    float t = MathF.FusedMultiplyAdd(x[offset + j], slope[j], v[offset + j] + shift[j]) * scale[j];
                    y[offset + j] = adds ? t + addend[offset + j] : t;
                }
            }
        }, new TangentArguments(normalized, v, scale, negativeMeanProduct, negativeMean, destination, accumulate, addend), Parts(v.Length, rows));
    }

    private readonly record struct TangentArguments(View Normalized, View V, View Scale, View NegativeMeanProduct, View NegativeMean, View Destination,
        bool Accumulate, View Addend);

    private PartWork<TangentArguments>? _normalizationTangent;

    /// <summary>sum[c] += Σ_r v[r, c] and products[c] += Σ_r (x[r, c]·v[r, c]), each product rounded before it is added,
    /// row by row in order (the arithmetic of <see cref="MultiplyChannels"/> then <see cref="SumRows"/>).</summary>
    private static void AccumulateRowsAndProducts(ReadOnlySpan<float> v, ReadOnlySpan<float> x, Span<float> sum, Span<float> products)
    {
        int columns = sum.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < v.Length; offset += columns)
        {
            int j = 0;
            for (; j < vectorEnd; j += width)
            {
                var row = new Vector<float>(v[(offset + j)..]);
                var rounded = new Vector<float>(x[(offset + j)..]) * row;
                (new Vector<float>(sum[j..]) + row).CopyTo(sum[j..]);
                (new Vector<float>(products[j..]) + rounded).CopyTo(products[j..]);
            }
            for (; j < columns; j++)
            {
                float rounded = x[offset + j] * v[offset + j];
                sum[j] += v[offset + j];
                products[j] += rounded;
            }
        }
    }

    /// <inheritdoc/>
    public override void ShiftScaleColumns(View x, View shift, View scale, View destination) =>
        InParallelRows<ShiftThenScale>(ref _shiftScale, x, shift, scale, destination);

    /// <inheritdoc/>
    public override void ScaleShiftColumns(View x, View scale, View shift, View destination) =>
        InParallelRows<ScaleThenShift>(ref _scaleShift, x, scale, shift, destination);

    /// <inheritdoc/>
    public override void NormalizeScaleShiftColumns(View x, View shift, View scale, View gamma, View beta, View normalized, View destination)
    {
        int rows = x.Length / shift.Length;
        RunParts(ref _normalizeScaleShift, static (in NormalizeArguments n, int part, int parts) =>
        {
            int columns = n.Shift.Length;
            var rows = PartRange.Of(n.X.Length / columns, part, parts);
            NormalizeScaleShiftRows(Read(rows.Of(n.X, columns)), Read(n.Shift), Read(n.Scale), Read(n.Gamma), Read(n.Beta),
                Span(rows.Of(n.Normalized, columns)), Span(rows.Of(n.Destination, columns)));
        }, new NormalizeArguments(x, shift, scale, gamma, beta, normalized, destination), Parts(x.Length, rows));
    }

    /// <summary>x̂ = <see cref="ShiftThenScale"/>(x) and y = <see cref="ScaleThenShift"/>(x̂) per row, both written from the one
    /// read of x (the loops of <see cref="ForEachRow"/>).</summary>
    private static void NormalizeScaleShiftRows(ReadOnlySpan<float> x, ReadOnlySpan<float> shift, ReadOnlySpan<float> scale, ReadOnlySpan<float> gamma,
        ReadOnlySpan<float> beta, Span<float> normalized, Span<float> y)
    {
        int columns = shift.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < x.Length; offset += columns)
        {
            int j = 0;
            for (; j < vectorEnd; j += width)
            {
                var value = ShiftThenScale.Apply(new Vector<float>(x[(offset + j)..]), new Vector<float>(shift[j..]), new Vector<float>(scale[j..]));
                value.CopyTo(normalized[(offset + j)..]);
                ScaleThenShift.Apply(value, new Vector<float>(gamma[j..]), new Vector<float>(beta[j..])).CopyTo(y[(offset + j)..]);
            }
            for (; j < columns; j++)
            {
                float value = ShiftThenScale.Apply(x[offset + j], shift[j], scale[j]);
                normalized[offset + j] = value;
                y[offset + j] = ScaleThenShift.Apply(value, gamma[j], beta[j]);
            }
        }
    }

    private readonly record struct NormalizeArguments(View X, View Shift, View Scale, View Gamma, View Beta, View Normalized, View Destination);

    private PartWork<NormalizeArguments>? _normalizeScaleShift;

    /// <summary><see cref="ForEachRow"/> over row blocks in parallel (each row computed by one part, as one thread would).</summary>
    private void InParallelRows<TOperation>(ref PartWork<ColumnArguments>? job, View source, View a, View b, View target)
        where TOperation : struct, IColumnOperation
    {
        int rows = target.Length / a.Length;
        RunParts(ref job, static (in ColumnArguments c, int part, int parts) =>
        {
            var rows = PartRange.Of(c.Target.Length / c.A.Length, part, parts);
            ForEachRow<TOperation>(Read(rows.Of(c.Source, c.A.Length)), Read(c.A), Read(c.B), Span(rows.Of(c.Target, c.A.Length)));
        }, new ColumnArguments(source, a, b, target), Parts(target.Length, rows));
    }

    private readonly record struct ColumnArguments(View Source, View A, View B, View Target);

    private PartWork<ColumnArguments>? _addBias, _scaleOnly, _shiftScale, _scaleShift;

    /// <summary>Runs a kernel's parts on <see cref="Threads"/> threads (its work item made once, its arguments set per call).</summary>
    private void RunParts<TArguments>(ref PartWork<TArguments>? work, PartAction<TArguments> action, in TArguments arguments, int parts)
        where TArguments : struct
    {
        work ??= new PartWork<TArguments>(action);
        work.Arguments = arguments;
        try
        {
            (_workers ??= new CpuWorkers(Threads - 1)).Run(work, parts);
        }
        finally
        {
            work.Arguments = default; // drops the views' buffers
        }
    }

    private CpuWorkers? _workers;

    /// <summary>Parts for a kernel over <paramref name="elements"/> floats in <paramref name="units"/> independent units
    /// (rows, images): one below <see cref="ParallelElements"/> (waking a thread costs more), else a few per thread.</summary>
    private int Parts(int elements, int units) =>
        Threads == 1 || elements < ParallelElements ? 1 : Math.Max(1, Math.Min(units, PartsPerThread * Threads));

    /// <summary>One part's share of units (rows, images, vectors) split into contiguous runs: units First..End.</summary>
    private readonly record struct PartRange(int First, int End)
    {
        /// <summary>Part <paramref name="part"/>'s run when <paramref name="units"/> are split in <paramref name="parts"/>.</summary>
        public static PartRange Of(int units, int part, int parts) =>
            new((int)((long)units * part / parts), (int)((long)units * (part + 1) / parts));

        public int Count => End - First;

        /// <summary>The units' slice of a view holding <paramref name="unitLength"/> floats per unit.</summary>
        public View Of(View view, int unitLength) => view.Slice(First * unitLength, Count * unitLength);
    }

    /// <summary>Per-column arithmetic on rows: y[r, c] = f(x[r, c], a[c], b[c]).</summary>
    private interface IColumnOperation
    {
        static abstract Vector<float> Apply(Vector<float> x, Vector<float> a, Vector<float> b);
        static abstract float Apply(float x, float a, float b);
    }

    /// <summary>y = x + a (a bias per column).</summary>
    private readonly struct AddColumns : IColumnOperation
    {
        public static Vector<float> Apply(Vector<float> x, Vector<float> a, Vector<float> b) => x + a;
        public static float Apply(float x, float a, float b) => x + a;
    }

    /// <summary>y = x a (a scale per column).</summary>
    private readonly struct ScaleOnly : IColumnOperation
    {
        public static Vector<float> Apply(Vector<float> x, Vector<float> a, Vector<float> b) => x * a;
        public static float Apply(float x, float a, float b) => x * a;
    }

    /// <summary>y = (x + a) b: batch norm's normalisation, a = −μ, b = 1/√(σ² + ε).</summary>
    private readonly struct ShiftThenScale : IColumnOperation
    {
        public static Vector<float> Apply(Vector<float> x, Vector<float> a, Vector<float> b) => (x + a) * b;
        public static float Apply(float x, float a, float b) => (x + a) * b;
    }

    /// <summary>y = x a + b: batch norm's affine step, a = γ, b = β.</summary>
    private readonly struct ScaleThenShift : IColumnOperation
    {
        public static Vector<float> Apply(Vector<float> x, Vector<float> a, Vector<float> b) => x * a + b;
        public static float Apply(float x, float a, float b) => x * a + b;
    }

    /// <summary>
    /// Applies <typeparamref name="TOperation"/> to every row of <paramref name="source"/> (rows of a.Length columns) into
    /// <paramref name="target"/> (which may be the source). Rows are short (a convolution's channels): vector loops here
    /// instead of one TensorPrimitives call per row, whose argument and overlap checks cost more than a 32-float row.
    /// </summary>
    private static void ForEachRow<TOperation>(ReadOnlySpan<float> source, ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> target)
        where TOperation : struct, IColumnOperation
    {
        int columns = a.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < target.Length; offset += columns)
        {
            var x = source.Slice(offset, columns);
            var y = target.Slice(offset, columns);
            int j = 0;
            for (; j < vectorEnd; j += width)
                TOperation.Apply(new Vector<float>(x[j..]), new Vector<float>(a[j..]), new Vector<float>(b[j..])).CopyTo(y[j..]);
            for (; j < columns; j++) y[j] = TOperation.Apply(x[j], a[j], b[j]);
        }
    }

    /// <inheritdoc/>
    public override void ReciprocalSqrt(View x, float epsilon, View destination)
    {
        var source = Read(x);
        var target = Span(destination);
        for (int i = 0; i < target.Length; i++) target[i] = 1f / MathF.Sqrt(source[i] + epsilon);
    }

    /// <summary>Convolutions whose patches are at most this long (kh·kw·C floats) run as a direct (implicit-GEMM)
    /// convolution (<see cref="DirectConvolution"/>) rather than im2col + GEMM. Measured with `conv-gemm-rate` (one thread,
    /// share of OpenBLAS's 512×1024×1024 rate, direct vs the best im2col + OpenBLAS pass size, im2col included;
    /// benchmarks/results/conv-gemm-rate-2026-11-26-direct.md, quiet run): patch 27 75 % vs 33 %, 288 102 % vs 82 %,
    /// 1152 101 % vs 96 %, 2304 96 % vs 98 %; so up to 1152. 0 sends every convolution through im2col.</summary>
    public int DirectPatchLength { get; init; } = 1152;

    /// <inheritdoc/>
    /// <remarks>Convolutions with patches of at most <see cref="DirectPatchLength"/> floats that the direct kernel supports,
    /// and whose packed weight and padded images fit in <paramref name="scratch"/>, run through the direct (implicit-GEMM) kernel
    /// (one weight channel at a time); the others take the im2col + GEMM path of the base class.</remarks>
    public override void Convolve(View images, in ConvGeometry geometry, View weights, int outputs, float beta, View y, View scratch, int channels = 1)
    {
        var g = geometry;
        int count = images.Length / g.InputElements, packed = DirectConvolution.PackedElements(g, outputs), padded = DirectConvolution.PaddedElements(g);
        if (g.PatchLength > DirectPatchLength || !DirectConvolution.Supports(g, outputs) || packed + padded > scratch.Length)
        {
            base.Convolve(images, geometry, weights, outputs, beta, y, scratch, channels);
            return;
        }
        // One weight tensor (channel) at a time.
        int weightLength = weights.Length / channels, outputLength = count * g.OutputPositions * outputs;
        for (int k = 0; k < channels; k++)
        {
            DirectConvolution.PackWeight(Read(weights.Channel(k, weightLength)), outputs, g.PatchLength, Span(scratch.Slice(0, packed)));
            RunDirect(images, g, outputs, beta, y.Channel(k, outputLength), scratch, packed);
        }
    }

    /// <summary>y = β·y + conv(images, W) by the direct kernel, W already packed in the first <paramref name="packed"/> floats
    /// of the scratch. Images split into parts (each with its own padded copy in the scratch after the packed weight); a few
    /// parts per thread so that a thread that starts late still finds work.</summary>
    private void RunDirect(View images, in ConvGeometry g, int outputs, float beta, View y, View scratch, int packed)
    {
        int count = images.Length / g.InputElements, padded = DirectConvolution.PaddedElements(g);
        int parts = Math.Min(Parts(y.Length, count), padded == 0 ? int.MaxValue : (scratch.Length - packed) / padded);
        RunParts(ref _convolve, static (in ConvolveArguments a, int part, int parts) =>
        {
            int inputs = a.Geometry.InputElements;
            var images = PartRange.Of(a.Images.Length / inputs, part, parts);
            DirectConvolution.Run(a.Geometry, Read(images.Of(a.Images, inputs)), Read(a.Packed), a.Outputs, a.Beta,
                Span(images.Of(a.Y, a.Geometry.OutputPositions * a.Outputs)), Span(a.Padded.Slice(part * a.PaddedLength, a.PaddedLength)));
        }, new ConvolveArguments(images, g, scratch.Slice(0, packed), outputs, beta, y, scratch.Slice(packed, scratch.Length - packed), padded), parts);
    }

    private readonly record struct ConvolveArguments(View Images, ConvGeometry Geometry, View Packed, int Outputs, float Beta, View Y, View Padded, int PaddedLength);

    private PartWork<ConvolveArguments>? _convolve;

    /// <inheritdoc/>
    public override void Im2Col(View images, in ConvGeometry geometry, View columns) => PatchesByImages(images, geometry, columns, toColumns: true);

    /// <inheritdoc/>
    public override void Col2Im(View columns, in ConvGeometry geometry, View images, bool accumulate)
    {
        if (!accumulate) Span(images).Clear();
        PatchesByImages(images, geometry, columns, toColumns: false);
    }

    /// <summary><see cref="Patches"/> split by images: image n's columns are rows n·Ho·Wo.. and col2im adds them back into
    /// image n only, so every output is written by one part.</summary>
    private void PatchesByImages(View images, in ConvGeometry geometry, View columns, bool toColumns)
    {
        int count = images.Length / geometry.InputElements;
        RunParts(ref _patches, static (in PatchArguments a, int part, int parts) =>
        {
            var g = a.Geometry;
            var images = PartRange.Of(a.Images.Length / g.InputElements, part, parts);
            Patches(g, Span(images.Of(a.Images, g.InputElements)), Span(images.Of(a.Columns, g.OutputPositions * g.PatchLength)), a.ToColumns);
        }, new PatchArguments(images, geometry, columns, toColumns), Parts(columns.Length, count));
    }

    private readonly record struct PatchArguments(View Images, ConvGeometry Geometry, View Columns, bool ToColumns);

    private PartWork<PatchArguments>? _patches;

    /// <summary>Walks every im2col entry block (example, output position, group, kernel row, kernel column: C/G contiguous
    /// channels) and copies the pixel's channels into the columns (im2col; zeros outside the image) or adds the columns'
    /// block back to the pixel (col2im, its adjoint).</summary>
    private static void Patches(in ConvGeometry g, Span<float> images, Span<float> columns, bool toColumns)
    {
        int examples = images.Length / g.InputElements, groupChannels = g.GroupChannels, row = 0;
        for (int n = 0; n < examples; n++)
        {
            var image = images.Slice(n * g.InputElements, g.InputElements);
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++, row++)
                {
                    var patch = columns.Slice(row * g.PatchLength, g.PatchLength);
                    int at = 0, left = ox * g.Stride - g.Padding;
                    for (int group = 0; group < g.Groups; group++)
                        for (int ky = 0; ky < g.KernelHeight; ky++)
                        {
                            int iy = oy * g.Stride - g.Padding + ky;
                            if (g.Groups == 1 && iy >= 0 && iy < g.Height && left >= 0 && left + g.KernelWidth <= g.Width)
                            {
                                // One group and the whole kernel row inside the image: its kw pixels' channels are one
                                // contiguous run in both layouts (kw·C floats), copied (or added) at once.
                                int length = g.KernelWidth * g.Channels;
                                var run = image.Slice((iy * g.Width + left) * g.Channels, length);
                                var block = patch.Slice(at, length);
                                if (toColumns) run.CopyTo(block);
                                else TensorPrimitives.Add(run, block, run);
                                at += length;
                                continue;
                            }
                            for (int kx = 0; kx < g.KernelWidth; kx++, at += groupChannels)
                            {
                                int ix = ox * g.Stride - g.Padding + kx;
                                var block = patch.Slice(at, groupChannels);
                                bool inside = iy >= 0 && iy < g.Height && ix >= 0 && ix < g.Width;
                                var pixel = inside ? image.Slice((iy * g.Width + ix) * g.Channels + group * groupChannels, groupChannels) : default;
                                if (toColumns)
                                {
                                    if (inside) pixel.CopyTo(block);
                                    else block.Clear();
                                }
                                else if (inside) TensorPrimitives.Add(pixel, block, pixel);
                            }
                        }
                }
        }
    }

    /// <inheritdoc/>
    public override void MaxPool(View images, in PoolGeometry geometry, View output, View argmax)
    {
        int examples = images.Length / geometry.InputElements;
        RunParts(ref _maxPool, static (in PoolArguments a, int part, int parts) =>
        {
            var g = a.Geometry;
            var images = PartRange.Of(a.Images.Length / g.InputElements, part, parts);
            MaxPool(g, Read(images.Of(a.Images, g.InputElements)), Span(images.Of(a.Output, g.OutputElements)), Span(images.Of(a.Argmax, g.OutputElements)));
        }, new PoolArguments(images, geometry, output, argmax), Parts(images.Length, examples));
    }

    private readonly record struct PoolArguments(View Images, PoolGeometry Geometry, View Output, View Argmax, bool ToOutput = false);

    private PartWork<PoolArguments>? _maxPool;

    /// <summary>Max pooling of whole images; argmax indices are within each image, so any run of images can go alone.</summary>
    private static void MaxPool(in PoolGeometry g, ReadOnlySpan<float> x, Span<float> y, Span<float> index)
    {
        int examples = x.Length / g.InputElements, c = g.Channels;
        // Window offsets on the stack up to 32×32 pixels; a larger window (a global pool of a big map) takes an array.
        int windowPixels = g.KernelHeight * g.KernelWidth;
        Span<int> window = windowPixels <= 1024 ? stackalloc int[windowPixels] : new int[windowPixels];
        for (int n = 0; n < examples; n++)
        {
            var image = x.Slice(n * g.InputElements, g.InputElements);
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++)
                {
                    // The window's in-image pixels, in window order (row by row).
                    int pixels = 0;
                    for (int ky = 0; ky < g.KernelHeight; ky++)
                    {
                        int iy = oy * g.Stride - g.Padding + ky;
                        if (iy < 0 || iy >= g.Height) continue;
                        for (int kx = 0; kx < g.KernelWidth; kx++)
                        {
                            int ix = ox * g.Stride - g.Padding + kx;
                            if (ix >= 0 && ix < g.Width) window[pixels++] = (iy * g.Width + ix) * c;
                        }
                    }
                    if (pixels == 0) continue; // a window in the padding alone (pooling ops refuse padding > kernel/2)
                    int at = n * g.OutputElements + (oy * g.OutputWidth + ox) * c;
                    MaxOfWindow(image, window[..pixels], y.Slice(at, c), index.Slice(at, c));
                }
        }
    }

    /// <summary>Per channel, the maximum over the window's pixels and its index (pixel offset + channel), strictly greater
    /// replacing (the first maximum in window order wins, on every backend). Eight channels at a time (channels are
    /// contiguous in channels-last images), each group's running maximum kept in registers over the whole window and
    /// stored once.</summary>
    private static void MaxOfWindow(ReadOnlySpan<float> image, ReadOnlySpan<int> window, Span<float> best, Span<float> bestIndex)
    {
        int j = 0, channels = best.Length;
        if (Vector256.IsHardwareAccelerated)
        {
            var lane = Vector256.Create(0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f);
            for (; j + 8 <= channels; j += 8)
            {
                var maximum = Vector256.Create(image.Slice(window[0] + j, 8));
                var winner = Vector256.Create((float)(window[0] + j)) + lane; // exact: indices stay below 2²⁴
                for (int p = 1; p < window.Length; p++)
                {
                    var v = Vector256.Create(image.Slice(window[p] + j, 8));
                    var greater = Vector256.GreaterThan(v, maximum);
                    maximum = FloatMath.Select(greater, v, maximum);
                    winner = FloatMath.Select(greater, Vector256.Create((float)(window[p] + j)) + lane, winner);
                }
                maximum.CopyTo(best.Slice(j, 8));
                winner.CopyTo(bestIndex.Slice(j, 8));
            }
        }
        for (; j < channels; j++)
        {
            float maximum = image[window[0] + j];
            int winner = window[0] + j;
            for (int p = 1; p < window.Length; p++)
                if (image[window[p] + j] > maximum) (maximum, winner) = (image[window[p] + j], window[p] + j);
            best[j] = maximum;
            bestIndex[j] = winner;
        }
    }

    /// <inheritdoc/>
    public override void AvgPool(View images, in PoolGeometry geometry, View output)
    {
        Span(output).Clear();
        AverageWindowsByImages(images, geometry, output, toOutput: true);
    }

    /// <inheritdoc/>
    public override void AvgPoolBackward(View output, in PoolGeometry geometry, View images, bool accumulate)
    {
        if (!accumulate) Span(images).Clear();
        AverageWindowsByImages(images, geometry, output, toOutput: false);
    }

    /// <summary><see cref="AverageWindows"/> split by images (each image's windows read and write that image only).</summary>
    private void AverageWindowsByImages(View images, in PoolGeometry geometry, View output, bool toOutput)
    {
        int count = images.Length / geometry.InputElements;
        RunParts(ref _averageWindows, static (in PoolArguments a, int part, int parts) =>
        {
            var g = a.Geometry;
            var images = PartRange.Of(a.Images.Length / g.InputElements, part, parts);
            AverageWindows(g, Span(images.Of(a.Images, g.InputElements)), Span(images.Of(a.Output, g.OutputElements)), a.ToOutput);
        }, new PoolArguments(images, geometry, output, default, toOutput), Parts(images.Length, count));
    }

    private PartWork<PoolArguments>? _averageWindows;

    /// <summary>Walks every (output position, in-image window pixel) pair: y += x/(kh·kw) (average pooling, padding
    /// counted as zeros) or, its adjoint, x̄ += ȳ/(kh·kw).</summary>
    private static void AverageWindows(in PoolGeometry g, Span<float> images, Span<float> outputs, bool toOutput)
    {
        int examples = images.Length / g.InputElements, c = g.Channels;
        float scale = 1f / (g.KernelHeight * g.KernelWidth);
        for (int n = 0; n < examples; n++)
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++)
                {
                    var output = outputs.Slice(n * g.OutputElements + (oy * g.OutputWidth + ox) * c, c);
                    for (int ky = 0; ky < g.KernelHeight; ky++)
                    {
                        int iy = oy * g.Stride - g.Padding + ky;
                        if (iy < 0 || iy >= g.Height) continue;
                        for (int kx = 0; kx < g.KernelWidth; kx++)
                        {
                            int ix = ox * g.Stride - g.Padding + kx;
                            if (ix < 0 || ix >= g.Width) continue;
                            var pixel = images.Slice(n * g.InputElements + (iy * g.Width + ix) * c, c);
                            if (toOutput) TensorPrimitives.Add(output, pixel, output);
                            else TensorPrimitives.MultiplyAdd(output, scale, pixel, pixel);
                        }
                    }
                    if (toOutput) TensorPrimitives.Multiply(output, scale, output);
                }
    }

    /// <inheritdoc/>
    public override void GatherColumns(View source, int sourceColumns, View indices, View destination) =>
        Gather(source, default, sourceColumns, indices, destination);

    /// <summary>One pass: each winner's factor and source read together, multiplied as <see cref="MultiplyChannels"/> does.</summary>
    public override void GatherColumnsOfProduct(View source, View factor, int sourceColumns, View indices, View destination, View scratch) =>
        Gather(source, factor, sourceColumns, indices, destination);

    /// <summary>destination[r, j] = (factor[r mod N, i]·)source[r, i] at i = indices[r mod N, j]; no factor: the plain gather.</summary>
    private void Gather(View source, View factor, int sourceColumns, View indices, View destination)
    {
        int rows = source.Length / sourceColumns;
        RunParts(ref _gatherColumns, static (in RowArguments a, int part, int parts) =>
        {
            ReadOnlySpan<float> from = Read(a.A), index = Read(a.B), factor = a.C.IsEmpty ? default : Read(a.C);
            var to = Span(a.Destination);
            int sourceColumns = a.Width, rows = from.Length / sourceColumns, columns = to.Length / rows, examples = index.Length / columns;
            var share = PartRange.Of(rows, part, parts);
            for (int r = share.First; r < share.End; r++)
            {
                var row = from.Slice(r * sourceColumns, sourceColumns);
                var rowIndex = index.Slice(r % examples * columns, columns);
                var target = to.Slice(r * columns, columns);
                if (factor.IsEmpty)
                    for (int j = 0; j < columns; j++) target[j] = row[(int)rowIndex[j]];
                else
                {
                    var factorRow = factor.Slice(r % examples * sourceColumns, sourceColumns);
                    for (int j = 0; j < columns; j++)
                    {
                        int i = (int)rowIndex[j];
                        target[j] = factorRow[i] * row[i];
                    }
                }
            }
        }, new RowArguments(source, indices, factor, destination, sourceColumns), Parts(source.Length, rows));
    }

    /// <summary>One pass: each winner's factor read as its product is added, multiplied as <see cref="MultiplyChannels"/> does.</summary>
    public override void ScatterAddColumnsOfProduct(View source, View factor, View indices, int destinationColumns, View destination, bool accumulate, View scratch) =>
        ScatterAdd(source, factor, indices, destinationColumns, destination, accumulate);

    /// <inheritdoc/>
    public override void ScatterAddColumns(View source, View indices, int destinationColumns, View destination, bool accumulate) =>
        ScatterAdd(source, default, indices, destinationColumns, destination, accumulate);

    /// <summary>destination[r, indices[r mod N, j]] += (factor[r mod N, that index]·)source[r, j]; no factor: the plain scatter.
    /// Without <paramref name="accumulate"/> each row is cleared just before its scatter, in the same part: the row (one
    /// example's feature map) is then still in the core's cache for the scattered adds, where a clear of the whole
    /// destination first would leave it to be fetched again from memory (and ran on one thread).</summary>
    private void ScatterAdd(View source, View factor, View indices, int destinationColumns, View destination, bool accumulate)
    {
        int rows = destination.Length / destinationColumns;
        // Row r adds into destination row r only: rows split across threads, each row in one thread's order.
        RunParts(ref _scatterAddColumns, static (in RowArguments a, int part, int parts) =>
        {
            ReadOnlySpan<float> from = Read(a.A), index = Read(a.B), factor = a.C.IsEmpty ? default : Read(a.C);
            var to = Span(a.Destination);
            int destinationColumns = a.Width, rows = to.Length / destinationColumns, columns = from.Length / rows, examples = index.Length / columns;
            var share = PartRange.Of(rows, part, parts);
            for (int r = share.First; r < share.End; r++)
            {
                var row = to.Slice(r * destinationColumns, destinationColumns);
                if (!a.Accumulate) row.Clear();
                var rowIndex = index.Slice(r % examples * columns, columns);
                var values = from.Slice(r * columns, columns);
                if (factor.IsEmpty)
                    for (int j = 0; j < columns; j++) row[(int)rowIndex[j]] += values[j];
                else
                {
                    var factorRow = factor.Slice(r % examples * destinationColumns, destinationColumns);
                    for (int j = 0; j < columns; j++)
                    {
                        int i = (int)rowIndex[j];
                        row[i] += factorRow[i] * values[j];
                    }
                }
            }
        }, new RowArguments(source, indices, factor, destination, destinationColumns, Accumulate: accumulate), Parts(destination.Length, rows));
    }

    /// <inheritdoc/>
    public override void SumRows(View source, View destination, bool accumulate)
    {
        var target = Span(destination);
        var rows = Read(source);
        if (!accumulate) target.Clear();
        AccumulateRows(rows, target);
    }

    /// <summary>One pass reading x and v: the sums row by row in order, as <see cref="SumRows"/> (one thread).</summary>
    public override void ColumnSumsWithProducts(View x, View v, View sums, View productSums, View product)
    {
        Span<float> sum = Span(sums), products = Span(productSums);
        sum.Clear();
        products.Clear();
        AccumulateRowsAndProducts(Read(v), Read(x), sum, products);
    }

    /// <summary>sum[c] += Σ_r rows[r, c], row by row in order (rows of sum.Length columns; vector loops over a row's
    /// columns, as <see cref="ForEachRow"/>: rows are often a layer's few channels).</summary>
    private static void AccumulateRows(ReadOnlySpan<float> rows, Span<float> sum)
    {
        int columns = sum.Length, width = Vector<float>.Count, vectorEnd = columns - columns % width;
        for (int offset = 0; offset < rows.Length; offset += columns)
        {
            var row = rows.Slice(offset, columns);
            int j = 0;
            for (; j < vectorEnd; j += width) (new Vector<float>(sum[j..]) + new Vector<float>(row[j..])).CopyTo(sum[j..]);
            for (; j < columns; j++) sum[j] += row[j];
        }
    }

    /// <inheritdoc/>
    public override void RowDot(View a, View b, int columns, View destination)
    {
        var left = Read(a);
        var right = Read(b);
        var target = Span(destination);
        int rowsPerChannel = left.Length / columns;
        for (int i = 0; i < target.Length; i++)
            target[i] = TensorPrimitives.Dot(left.Slice(i % rowsPerChannel * columns, columns), right.Slice(i * columns, columns));
    }

    /// <inheritdoc/>
    public override void ScaleRows(View a, View scale, View destination, bool accumulate)
    {
        var source = Read(a);
        var factors = Read(scale);
        var target = Span(destination);
        int columns = source.Length / factors.Length;
        for (int r = 0; r < factors.Length; r++)
        {
            var from = source.Slice(r * columns, columns);
            var to = target.Slice(r * columns, columns);
            if (accumulate) TensorPrimitives.FusedMultiplyAdd(from, factors[r], to, to);
            else TensorPrimitives.Multiply(from, factors[r], to);
        }
    }

    /// <inheritdoc/>
    public override void Elementwise(ElementwiseFunction function, View x, View y)
    {
        // Elementwise: contiguous chunks of whole vectors, each computed as one thread would.
        RunParts(ref _elementwise, static (in ElementwiseArguments a, int part, int parts) =>
        {
            int vectors = (a.X.Length + Vector<float>.Count - 1) / Vector<float>.Count;
            var share = PartRange.Of(vectors, part, parts);
            int first = Math.Min(a.X.Length, share.First * Vector<float>.Count), end = Math.Min(a.X.Length, share.End * Vector<float>.Count);
            a.Function.Apply(Read(a.X.Slice(first, end - first)), Span(a.Y.Slice(first, end - first)));
        }, new ElementwiseArguments(function, x, y), Parts(x.Length, x.Length / Vector<float>.Count));
    }

    private readonly record struct ElementwiseArguments(ElementwiseFunction Function, View X, View Y);

    private PartWork<ElementwiseArguments>? _elementwise;

    /// <summary>Split like <see cref="Elementwise"/>: contiguous chunks of whole vectors (it ran on one thread, and GELU's
    /// derivative, two exponentials an element, was the slowest elementwise pass of a transformer at two threads).</summary>
    public override void ElementwiseDerivative(ElementwiseFunction function, View x, View y, View derivative) =>
        RunParts(ref _elementwiseDerivative, static (in ElementwiseDerivativeArguments a, int part, int parts) =>
        {
            var (first, length) = VectorChunk(a.X.Length, part, parts);
            a.Function.Differentiate(Read(a.X.Slice(first, length)), Read(a.Y.Slice(first, length)), Span(a.Derivative.Slice(first, length)));
        }, new ElementwiseDerivativeArguments(function, x, y, derivative), Parts(x.Length, x.Length / Vector<float>.Count));

    /// <inheritdoc/>
    public override void ElementwiseWithDerivative(ElementwiseFunction function, View x, View y, View derivative) =>
        RunParts(ref _elementwiseWithDerivative, static (in ElementwiseDerivativeArguments a, int part, int parts) =>
        {
            var (first, length) = VectorChunk(a.X.Length, part, parts);
            a.Function.ApplyWithDerivative(Read(a.X.Slice(first, length)), Span(a.Y.Slice(first, length)), Span(a.Derivative.Slice(first, length)));
        }, new ElementwiseDerivativeArguments(function, x, y, derivative), Parts(x.Length, x.Length / Vector<float>.Count));

    /// <summary>Part <paramref name="part"/>'s chunk of whole vectors of <paramref name="length"/> elements.</summary>
    private static (int First, int Length) VectorChunk(int length, int part, int parts)
    {
        var share = PartRange.Of((length + Vector<float>.Count - 1) / Vector<float>.Count, part, parts);
        int first = Math.Min(length, share.First * Vector<float>.Count), end = Math.Min(length, share.End * Vector<float>.Count);
        return (first, end - first);
    }

    private readonly record struct ElementwiseDerivativeArguments(ElementwiseFunction Function, View X, View Y, View Derivative);
    private PartWork<ElementwiseDerivativeArguments>? _elementwiseDerivative, _elementwiseWithDerivative;

    /// <inheritdoc/>
    public override void SoftmaxCrossEntropy(View logits, View labels, int classes, View loss, View error)
    {
        var z = Read(logits);
        var y = Read(labels);
        var losses = Span(loss);
        var errors = Span(error);
        for (int r = 0; r < losses.Length; r++)
        {
            var row = z.Slice(r * classes, classes);
            var e = errors.Slice(r * classes, classes);
            // Softmax shifted by the row maximum, so exp never overflows: p = exp(z − m) / Σ exp(z − m).
            float max = TensorPrimitives.Max(row);
            FloatMath.ExpShifted(row, max, e);
            float sum = TensorPrimitives.Sum(e);
            TensorPrimitives.Divide(e, sum, e);
            FlushSubnormals(e);
            int label = (int)y[r];
            losses[r] = MathF.Log(sum) + max - row[label];
            e[label] -= 1f;
        }
    }

    /// <inheritdoc/>
    public override void SquaredError(View prediction, View target, int width, View loss, View error)
    {
        var p = Read(prediction);
        var t = Read(target);
        var losses = Span(loss);
        var errors = Span(error);
        TensorPrimitives.Subtract(p, t, errors);
        for (int r = 0; r < losses.Length; r++)
        {
            var e = errors.Slice(r * width, width);
            losses[r] = TensorPrimitives.SumOfSquares(e) / width;
            TensorPrimitives.Multiply(e, 2f / width, e);
        }
    }

    /// <summary>Normal numbers split over <see cref="Threads"/>: every position's value depends on the position alone
    /// (counter-based Philox), so the parts give the same bits as one thread. Activation guesses draw millions a step
    /// (a CNN's feature maps), a fifth of an activation-perturbation step on one thread.</summary>
    public override void FillNormal(RandomKey key, long first, float mean, float standardDeviation, View destination) =>
        RunParts(ref _fillNormal, static (in RandomArguments a, int part, int parts) =>
        {
            var share = RandomShare(a, part, parts);
            RandomFill.Normal(a.Key, a.First + share.First, a.A, a.B, Span(a.Destination.Slice(share.First, share.Count)));
        }, new RandomArguments(key, first, mean, standardDeviation, destination), Parts(destination.Length, (destination.Length + RandomChunk - 1) / RandomChunk));

    /// <inheritdoc/>
    public override void FillUniform(RandomKey key, long first, float low, float high, View destination) =>
        RunParts(ref _fillUniform, static (in RandomArguments a, int part, int parts) =>
        {
            var share = RandomShare(a, part, parts);
            RandomFill.Uniform(a.Key, a.First + share.First, a.A, a.B, Span(a.Destination.Slice(share.First, share.Count)));
        }, new RandomArguments(key, first, low, high, destination), Parts(destination.Length, (destination.Length + RandomChunk - 1) / RandomChunk));

    /// <summary>Parts of a fill start at multiples of 16 elements after the first (the vectorised fills' unit).</summary>
    private const int RandomChunk = 16;

    private static PartRange RandomShare(in RandomArguments a, int part, int parts)
    {
        var chunks = PartRange.Of((a.Destination.Length + RandomChunk - 1) / RandomChunk, part, parts);
        int start = chunks.First * RandomChunk, end = Math.Min(a.Destination.Length, chunks.End * RandomChunk);
        return new PartRange(start, Math.Max(start, end));
    }

    private readonly record struct RandomArguments(RandomKey Key, long First, float A, float B, View Destination);
    private PartWork<RandomArguments>? _fillNormal, _fillUniform;

    /// <inheritdoc/>
    public override double Sum(View x)
    {
        double total = 0;
        foreach (var v in Read(x)) total += v;
        return total;
    }

    /// <inheritdoc/>
    public override void NormalizeRows(View x, int columns, float norm)
    {
        var values = Span(x);
        for (int offset = 0; offset < values.Length; offset += columns)
        {
            var row = values.Slice(offset, columns);
            float length = TensorPrimitives.Norm(row);
            if (length > 0) TensorPrimitives.Multiply(row, norm / length, row);
        }
    }

    /// <inheritdoc/>
    public override void RowCosines(View a, View b, int columns, View destination)
    {
        var left = Read(a);
        var right = Read(b);
        var target = Span(destination);
        for (int r = 0; r < target.Length; r++)
        {
            var x = left.Slice(r * columns, columns);
            var y = right.Slice(r * columns, columns);
            float norms = TensorPrimitives.Norm(x) * TensorPrimitives.Norm(y);
            target[r] = norms == 0 ? 0f : TensorPrimitives.Dot(x, y) / norms;
        }
    }

    /// <inheritdoc/>
    public override double SumOfSquares(View x)
    {
        // Chunks of 4096 summed in float by TensorPrimitives, accumulated in double: fast and accurate enough
        // for norms of millions of elements.
        var values = Read(x);
        double total = 0;
        for (int i = 0; i < values.Length; i += 4096)
            total += TensorPrimitives.SumOfSquares(values.Slice(i, Math.Min(4096, values.Length - i)));
        return total;
    }

    /// <inheritdoc/>
    public override double Dot(View a, View b)
    {
        var left = Read(a);
        var right = Read(b);
        double total = 0;
        for (int i = 0; i < left.Length; i += 4096)
        {
            int n = Math.Min(4096, left.Length - i);
            total += TensorPrimitives.Dot(left.Slice(i, n), right.Slice(i, n));
        }
        return total;
    }

    /// <inheritdoc/>
    public override void Axpby(float alpha, View x, float beta, View y)
    {
        var source = Read(x);
        var target = Span(y);
        if (beta == 1f) TensorPrimitives.MultiplyAdd(source, alpha, target, target);
        else if (beta == 0f) TensorPrimitives.Multiply(source, alpha, target);
        else
        {
            TensorPrimitives.Multiply(target, beta, target);
            TensorPrimitives.MultiplyAdd(source, alpha, target, target);
        }
    }

    /// <inheritdoc/>
    public override void MovingAverageOfSquares(View g, float beta, View v)
    {
        var gradient = Read(g);
        var average = Span(v);
        float complement = 1f - beta;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i <= average.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var x = Vector256.Create(gradient.Slice(i, Vector256<float>.Count));
                var a = Vector256.Create(average.Slice(i, Vector256<float>.Count));
                (beta * a + complement * x * x).CopyTo(average.Slice(i, Vector256<float>.Count));
            }
        for (; i < average.Length; i++) average[i] = beta * average[i] + complement * gradient[i] * gradient[i];
    }

    /// <inheritdoc/>
    public override void AdamDirection(View m, View v, float mScale, float vScale, float epsilon, View destination)
    {
        var first = Read(m);
        var second = Read(v);
        var target = Span(destination);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i <= target.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                var a = Vector256.Create(first.Slice(i, Vector256<float>.Count));
                var b = Vector256.Create(second.Slice(i, Vector256<float>.Count));
                (a * mScale / (Vector256.Sqrt(b * vScale) + Vector256.Create(epsilon))).CopyTo(target.Slice(i, Vector256<float>.Count));
            }
        for (; i < target.Length; i++) target[i] = first[i] * mScale / (MathF.Sqrt(second[i] * vScale) + epsilon);
    }

    /// <inheritdoc/>
    public override double MeanRatioOfSquares(View g, View v, float vScale, float floor)
    {
        var gradient = Read(g);
        var second = Read(v);
        double total = 0;
        for (int i = 0; i < gradient.Length; i++) total += gradient[i] * gradient[i] / Math.Max(second[i] * vScale, floor);
        return gradient.Length == 0 ? 0 : total / gradient.Length;
    }

    // ---- attention (issue 13) ----------------------------------------------------------------------------------
    /// <summary>
    /// Products of at most 64³ multiply-adds (attention's per-head products: 64×64×32 in the benchmark transformer) are
    /// spread over the backend's threads, a run of consecutive products per part; OpenBLAS runs a call that small on the
    /// calling thread (its threading threshold, m·n·k ≤ 65536·4 in interface/gemm.c), so one call at a time would leave the
    /// other cores idle. Larger products, one thread, or a GEMM that must not be called concurrently take the base class's
    /// loop. Each product is the same call on the same slices either way, so the results do not depend on the threads.
    /// </summary>
    public override void GemmStridedBatched(Transpose transposeA, Transpose transposeB, int m, int n, int k, float alpha, View a, int lda, long strideA,
        View b, int ldb, long strideB, float beta, View c, int ldc, long strideC, int count)
    {
        long outputs = (long)m * n * count;
        int parts = !MatrixMultiply.AllowsConcurrentCalls || (long)m * n * k > SmallProduct ? 1 : Parts((int)Math.Min(outputs, int.MaxValue), count);
        if (parts <= 1)
        {
            base.GemmStridedBatched(transposeA, transposeB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, count);
            return;
        }
        RunParts(ref _batchedGemm, static (in BatchedGemmArguments g, int part, int parts) =>
        {
            var share = PartRange.Of(g.Count, part, parts);
            var (aExtent, bExtent, cExtent) = BatchExtents(g.TransposeA, g.TransposeB, g.M, g.N, g.K, g.Lda, g.Ldb, g.Ldc);
            for (int i = share.First; i < share.End; i++)
                g.Gemm.Multiply(g.TransposeA, g.TransposeB, g.M, g.N, g.K, g.Alpha, Read(g.A.Slice((int)(i * g.StrideA), aExtent)), g.Lda,
                    Read(g.B.Slice((int)(i * g.StrideB), bExtent)), g.Ldb, g.Beta, Span(g.C.Slice((int)(i * g.StrideC), cExtent)), g.Ldc);
        }, new BatchedGemmArguments(MatrixMultiply, transposeA, transposeB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, count), parts);
    }

    /// <summary>The multiply-adds of one product up to which <see cref="GemmStridedBatched"/> spreads a batch over threads (64³).</summary>
    private const long SmallProduct = 64L * 64 * 64;

    private readonly record struct BatchedGemmArguments(Gemm Gemm, Transpose TransposeA, Transpose TransposeB, int M, int N, int K, float Alpha,
        View A, int Lda, long StrideA, View B, int Ldb, long StrideB, float Beta, View C, int Ldc, long StrideC, int Count);

    private PartWork<BatchedGemmArguments>? _batchedGemm;

    /// <inheritdoc/>
    public override void CausalSoftmaxRows(View scores, int size, View probabilities)
    {
        long square = (long)size * size;
        if (size <= 0 || scores.Length != probabilities.Length || scores.Length % square != 0)
            throw new ArgumentException($"CausalSoftmaxRows: scores ({scores.Length} floats) and probabilities ({probabilities.Length}) must both hold whole [{size}, {size}] matrices.");
        int rows = scores.Length / size;
        RunParts(ref _causalSoftmax, static (in RowArguments a, int part, int parts) =>
        {
            int rows = a.A.Length / a.Width;
            var share = PartRange.Of(rows, part, parts);
            CausalSoftmaxRows(Read(a.A), a.Width, share.First, share.End, Span(a.Destination));
        }, new RowArguments(scores, default, default, probabilities, size), Parts(scores.Length, rows));
    }

    /// <summary>Rows first..end of the causal softmax: row r (position i = r mod size) over its visible 0..i.</summary>
    private static void CausalSoftmaxRows(ReadOnlySpan<float> source, int size, int first, int end, Span<float> target)
    {
        for (int row = first; row < end; row++)
        {
            int i = row % size, start = row * size; // position i attends to 0..i
            var visible = target.Slice(start, i + 1);
            float max = TensorPrimitives.Max(source.Slice(start, i + 1));
            FloatMath.ExpShifted(source.Slice(start, i + 1), max, visible);
            TensorPrimitives.Divide(visible, TensorPrimitives.Sum(visible), visible);
            FlushSubnormals(visible);
            target.Slice(start + i + 1, size - i - 1).Clear();
        }
    }

    /// <summary>The views and sizes of a row kernel (unused views default).</summary>
    private readonly record struct RowArguments(View A, View B, View C, View Destination, int Width, float Epsilon = 0, bool Centre = false, bool Accumulate = false);

    private PartWork<RowArguments>? _causalSoftmax, _softmaxJvp, _normalize, _normalizeDerivative, _gatherColumns, _scatterAddColumns;

    /// <inheritdoc/>
    public override void SoftmaxJvpRows(View probabilities, View x, int columns, View destination)
    {
        if (columns <= 0 || probabilities.Length % columns != 0 || probabilities.Length == 0 || x.Length != destination.Length || x.Length % probabilities.Length != 0)
            throw new ArgumentException($"SoftmaxJvpRows: probabilities ({probabilities.Length} floats) must be whole rows of {columns}, and x ({x.Length}) and " +
                $"the destination ({destination.Length}) the same whole number of copies of them.");
        int rows = x.Length / columns;
        RunParts(ref _softmaxJvp, static (in RowArguments a, int part, int parts) =>
        {
            ReadOnlySpan<float> p = Read(a.A), source = Read(a.B);
            var target = Span(a.Destination);
            int columns = a.Width, rows = source.Length / columns;
            var share = PartRange.Of(rows, part, parts);
            for (int row = share.First; row < share.End; row++)
            {
                int at = row * columns;
                var pRow = p.Slice(at % p.Length, columns);
                var to = target.Slice(at, columns);
                float mean = TensorPrimitives.Dot(pRow, source.Slice(at, columns)); // ⟨p, x⟩ before x is overwritten
                TensorPrimitives.Subtract(source.Slice(at, columns), mean, to);
                TensorPrimitives.Multiply(to, pRow, to);
            }
        }, new RowArguments(probabilities, x, default, destination, columns), Parts(x.Length, rows));
    }
    // ---- Sequence ops (issue 13) ----------------------------------------------------------------------------------------

    /// <inheritdoc/>
    public override void NormalizeLastAxis(View x, int width, float epsilon, bool centre, View normalized, View inverseStd)
    {
        RunParts(ref _normalize, static (in RowArguments a, int part, int parts) =>
        {
            var source = Read(a.A);
            Span<float> target = Span(a.Destination), scale = Span(a.B);
            int width = a.Width;
            var share = PartRange.Of(scale.Length, part, parts);
            for (int r = share.First; r < share.End; r++)
            {
                var row = source.Slice(r * width, width);
                var to = target.Slice(r * width, width);
                float s;
                if (a.Centre)
                {
                    // Two passes (centre, then the mean square of the centred row): no cancellation of E[x²] − μ².
                    TensorPrimitives.Subtract(row, TensorPrimitives.Sum(row) / width, to);
                    s = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(to) / width + a.Epsilon);
                    TensorPrimitives.Multiply(to, s, to);
                }
                else
                {
                    s = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(row) / width + a.Epsilon);
                    TensorPrimitives.Multiply(row, s, to);
                }
                scale[r] = s;
            }
        }, new RowArguments(x, inverseStd, default, normalized, width, epsilon, centre), Parts(x.Length, inverseStd.Length));
    }

    /// <inheritdoc/>
    public override void NormalizeLastAxisDerivative(View normalized, View inverseStd, View v, bool centre, View destination, bool accumulate)
    {
        int rows = inverseStd.Length, width = normalized.Length / rows;
        RunParts(ref _normalizeDerivative, static (in RowArguments a, int part, int parts) =>
        {
            ReadOnlySpan<float> xHat = Read(a.A), scale = Read(a.B), source = Read(a.C);
            var target = Span(a.Destination);
            int rows = scale.Length, width = a.Width, total = source.Length / width;
            var share = PartRange.Of(total, part, parts);
            for (int i = share.First; i < share.End; i++)
            {
                int r = i % rows;
                var row = source.Slice(i * width, width);
                var xRow = xHat.Slice(r * width, width);
                var to = target.Slice(i * width, width);
                float s = scale[r], projection = TensorPrimitives.Dot(row, xRow) / width;
                // to (+)= s·v − s·mean(v) − s·mean(v ⊙ x̂)·x̂, in place (no temporary).
                if (a.Accumulate) TensorPrimitives.MultiplyAdd(row, s, to, to);
                else TensorPrimitives.Multiply(row, s, to);
                if (a.Centre) TensorPrimitives.Add(to, -s * (TensorPrimitives.Sum(row) / width), to);
                TensorPrimitives.MultiplyAdd(xRow, -s * projection, to, to);
            }
        }, new RowArguments(normalized, inverseStd, v, destination, width, Centre: centre, Accumulate: accumulate), Parts(v.Length, v.Length / width));
    }

    /// <inheritdoc/>
    public override void GatherRows(View table, View indices, int width, View destination)
    {
        var from = Read(table);
        var ids = Read(indices);
        var to = Span(destination);
        int count = ids.Length, channels = to.Length / (count * width), vocabulary = from.Length / (channels * width);
        for (int c = 0; c < channels; c++)
            for (int n = 0; n < count; n++)
            {
                int id = (int)ids[n];
                var row = to.Slice((c * count + n) * width, width);
                if (id < 0) row.Clear();
                else from.Slice((c * vocabulary + id) * width, width).CopyTo(row);
            }
    }

    /// <inheritdoc/>
    public override void ScatterAddRows(View source, View indices, int width, View destination, bool accumulate)
    {
        var from = Read(source);
        var ids = Read(indices);
        var to = Span(destination);
        if (!accumulate) to.Clear();
        for (int n = 0; n < ids.Length; n++)
        {
            int id = (int)ids[n];
            if (id < 0) continue;
            var row = to.Slice(id * width, width);
            TensorPrimitives.Add(row, from.Slice(n * width, width), row);
        }
    }

    /// <inheritdoc/>
    public override void SequenceCrossEntropy(View logits, View targets, int length, int classes, float ignoreIndex, View loss, View error)
    {
        var z = Read(logits);
        var y = Read(targets);
        var losses = Span(loss);
        var errors = Span(error);
        for (int b = 0; b < losses.Length; b++)
        {
            float total = 0f;
            int kept = 0;
            for (int t = 0; t < length; t++)
            {
                int r = b * length + t;
                var row = z.Slice(r * classes, classes);
                var e = errors.Slice(r * classes, classes);
                if (y[r] == ignoreIndex || y[r] < 0f) // negative: the tokens' padding, never a class
                {
                    e.Clear();
                    continue;
                }
                // As SoftmaxCrossEntropy: softmax shifted by the row maximum.
                float max = TensorPrimitives.Max(row);
                FloatMath.ExpShifted(row, max, e);
                float sum = TensorPrimitives.Sum(e);
                TensorPrimitives.Divide(e, sum, e);
                FlushSubnormals(e);
                int label = (int)y[r];
                total += MathF.Log(sum) + max - row[label];
                e[label] -= 1f;
                kept++;
            }
            losses[b] = kept == 0 ? 0f : total / kept;
            if (kept > 0)
            {
                var example = errors.Slice(b * length * classes, length * classes);
                TensorPrimitives.Multiply(example, 1f / kept, example);
                FlushSubnormals(example);
            }
        }
    }
}
