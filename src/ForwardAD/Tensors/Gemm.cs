namespace ForwardAD.Tensors;

/// <summary>Whether a GEMM operand is used as stored or transposed.</summary>
public enum Transpose
{
    /// <summary>The operand is used as stored.</summary>
    No,
    /// <summary>The operand's transpose is used: a stored k×m A gives the m×k op(A).</summary>
    Yes,
}

/// <summary>
/// Single-precision matrix multiply on row-major storage:
/// <c>C = α·op(A)·op(B) + β·C</c> with op(A) of size m×k and op(B) of size k×n.
/// Leading dimensions are the row strides of the matrices as stored.
/// </summary>
public abstract class Gemm
{
    /// <summary>Short name for reports ("openblas", "managed").</summary>
    public abstract string Name { get; }

    /// <summary>Threads one call uses (1 for the managed kernel; OpenBLAS's own pool size).</summary>
    public virtual int Threads => 1;

    /// <summary>Whether two threads may call <see cref="Multiply"/> at the same time (OpenBLAS: yes; the managed kernel keeps
    /// packing scratch per instance: no).</summary>
    public virtual bool AllowsConcurrentCalls => false;

    /// <summary>
    /// The largest depth k up to which C ← op(A)·op(B) + C (α = 1, β = 1) sums the whole product before adding it to C, one
    /// rounding per entry: RN((Σ_p a·b) + c). Up to it, an addend placed in C before the product (a bias, an injected
    /// tangent) gives the bits of adding it after a β = 0 product, since addition commutes; deeper products add their depth
    /// blocks to C one by one, and the addend would enter the first block's rounding. 0 when unknown (never fold).
    /// </summary>
    public virtual int SingleBlockDepth => 0;

    /// <summary>C = α·op(A)·op(B) + β·C on row-major float32 matrices, op(A) m×k and op(B) k×n; β = 0 overwrites C
    /// without reading it (stale NaNs do not leak in).</summary>
    /// <param name="transposeA">Whether A is stored as op(A) (<see cref="Transpose.No"/>, m×k) or as its transpose (k×m).</param>
    /// <param name="transposeB">Whether B is stored as op(B) (k×n) or as its transpose (n×k).</param>
    /// <param name="m">Rows of op(A) and C.</param>
    /// <param name="n">Columns of op(B) and C.</param>
    /// <param name="k">Columns of op(A), rows of op(B).</param>
    /// <param name="alpha">α.</param>
    /// <param name="a">A as stored.</param>
    /// <param name="lda">Row stride of A as stored (at least its column count).</param>
    /// <param name="b">B as stored.</param>
    /// <param name="ldb">Row stride of B as stored.</param>
    /// <param name="beta">β.</param>
    /// <param name="c">C, m×n, updated in place.</param>
    /// <param name="ldc">Row stride of C (at least n).</param>
    /// <exception cref="ArgumentOutOfRangeException">A size is negative.</exception>
    /// <exception cref="ArgumentException">A leading dimension is smaller than the matrix's columns, or a span is too short
    /// for the matrix it should hold.</exception>
    public abstract void Multiply(Transpose transposeA, Transpose transposeB, int m, int n, int k,
        float alpha, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc);

    /// <summary>OpenBLAS when the system has it (much faster), the managed kernel otherwise.</summary>
    public static Gemm CreateDefault() => (Gemm?)OpenBlasGemm.TryCreate() ?? new ManagedGemm();

    /// <summary>Checks that the spans hold the matrices the dimensions describe, so that a wrong call
    /// fails here with the sizes instead of reading out of bounds in native code.</summary>
    protected static void CheckOperands(Transpose transposeA, Transpose transposeB, int m, int n, int k,
        int aLength, int lda, int bLength, int ldb, int cLength, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentOutOfRangeException(nameof(m), $"GEMM sizes must be non-negative: m={m}, n={n}, k={k}.");
        var (aRows, aCols) = transposeA == Transpose.No ? (m, k) : (k, m);
        var (bRows, bCols) = transposeB == Transpose.No ? (k, n) : (n, k);
        Check("A", aRows, aCols, aLength, lda);
        Check("B", bRows, bCols, bLength, ldb);
        Check("C", m, n, cLength, ldc);

        static void Check(string name, int rows, int cols, int length, int ld)
        {
            if (rows == 0 || cols == 0) return;
            if (ld < cols) throw new ArgumentException($"GEMM: leading dimension of {name} is {ld}, smaller than its {cols} columns.");
            long needed = (long)(rows - 1) * ld + cols;
            if (length < needed) throw new ArgumentException($"GEMM: {name} is {rows}×{cols} with leading dimension {ld}, which needs {needed} elements; the span has {length}.");
        }
    }
}
