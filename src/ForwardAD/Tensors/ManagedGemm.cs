using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace ForwardAD.Tensors;

/// <summary>
/// A portable GEMM in the Goto/BLIS style: panels of op(B) (KC×NR) and op(A) (MC×KC) are packed
/// into contiguous scratch so the 6×16 register-blocked micro-kernel streams both with unit stride
/// and keeps twelve 8-wide accumulators in registers. Single-threaded; about half of OpenBLAS
/// on AVX2/AVX-512 machines (see the benchmark), used when OpenBLAS is not installed.
/// The instance owns its packing buffers (grown once, then reused), so one instance must not be
/// used by two threads at the same time.
/// </summary>
public sealed class ManagedGemm : Gemm
{
    private const int RowsPerTile = 6, ColumnsPerTile = 16;
    private const int DepthBlock = 256, RowBlock = 96, ColumnBlock = 4096;

    private readonly float[] _packedA = new float[RowBlock * DepthBlock];
    private readonly float[] _packedB = new float[DepthBlock * ColumnBlock];
    private readonly float[] _tile = new float[RowsPerTile * ColumnsPerTile];

    /// <summary><c>managed</c>.</summary>
    public override string Name => "managed";

    /// <summary>One depth block of <see cref="DepthBlock"/>: each tile's sum over it is added to C once (<see cref="MicroKernel"/>).</summary>
    public override int SingleBlockDepth => DepthBlock;

    /// <inheritdoc/>
    public override void Multiply(Transpose transposeA, Transpose transposeB, int m, int n, int k,
        float alpha, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
    {
        CheckOperands(transposeA, transposeB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0) return;
        // C ← β·C first (β = 0 must overwrite, never read, so stale NaNs cannot leak in).
        for (int i = 0; i < m; i++)
        {
            var row = c.Slice(i * ldc, n);
            if (beta == 0) row.Clear();
            else if (beta != 1) System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
        }
        if (k == 0 || alpha == 0) return;

        for (int jc = 0; jc < n; jc += ColumnBlock)
        {
            int nc = Math.Min(ColumnBlock, n - jc);
            for (int pc = 0; pc < k; pc += DepthBlock)
            {
                int kc = Math.Min(DepthBlock, k - pc);
                PackB(transposeB, b, ldb, pc, jc, kc, nc, _packedB);
                for (int ic = 0; ic < m; ic += RowBlock)
                {
                    int mc = Math.Min(RowBlock, m - ic);
                    PackA(transposeA, a, lda, ic, pc, mc, kc, alpha, _packedA);
                    for (int jr = 0; jr < nc; jr += ColumnsPerTile)
                        for (int ir = 0; ir < mc; ir += RowsPerTile)
                            MicroKernel(kc, _packedA.AsSpan(ir * kc), _packedB.AsSpan(jr * kc),
                                c.Slice((ic + ir) * ldc + jc + jr), ldc,
                                Math.Min(RowsPerTile, mc - ir), Math.Min(ColumnsPerTile, nc - jr));
                }
            }
        }
    }

    /// <summary>Packs α·op(A)[ic.., pc..] as row panels of 6: panel r holds, for each depth p, 6 consecutive rows.</summary>
    private static void PackA(Transpose transpose, ReadOnlySpan<float> a, int lda, int ic, int pc, int mc, int kc, float alpha, Span<float> packed)
    {
        for (int ir = 0; ir < mc; ir += RowsPerTile)
        {
            int rows = Math.Min(RowsPerTile, mc - ir);
            var panel = packed.Slice(ir * kc, kc * RowsPerTile);
            for (int p = 0; p < kc; p++)
                for (int i = 0; i < RowsPerTile; i++)
                    panel[p * RowsPerTile + i] = i < rows
                        ? alpha * (transpose == Transpose.No ? a[(ic + ir + i) * lda + pc + p] : a[(pc + p) * lda + ic + ir + i])
                        : 0f;
        }
    }

    /// <summary>Packs op(B)[pc.., jc..] as column panels of 16: panel j holds, for each depth p, 16 consecutive columns.</summary>
    private static void PackB(Transpose transpose, ReadOnlySpan<float> b, int ldb, int pc, int jc, int kc, int nc, Span<float> packed)
    {
        for (int jr = 0; jr < nc; jr += ColumnsPerTile)
        {
            int cols = Math.Min(ColumnsPerTile, nc - jr);
            var panel = packed.Slice(jr * kc, kc * ColumnsPerTile);
            for (int p = 0; p < kc; p++)
            {
                var dst = panel.Slice(p * ColumnsPerTile, ColumnsPerTile);
                if (transpose == Transpose.No)
                {
                    b.Slice((pc + p) * ldb + jc + jr, cols).CopyTo(dst);
                    if (cols < ColumnsPerTile) dst[cols..].Clear();
                }
                else
                {
                    for (int j = 0; j < ColumnsPerTile; j++)
                        dst[j] = j < cols ? b[(jc + jr + j) * ldb + pc + p] : 0f;
                }
            }
        }
    }

    /// <summary>C[0..rows, 0..cols] += Apanel·Bpanel over depth kc, with 6×16 accumulators in registers.</summary>
    private void MicroKernel(int kc, ReadOnlySpan<float> packedA, ReadOnlySpan<float> packedB, Span<float> c, int ldc, int rows, int cols)
    {
        var tile = _tile.AsSpan();
        Accumulate(kc, packedA, packedB, tile);
        for (int i = 0; i < rows; i++)
        {
            var row = c.Slice(i * ldc, cols);
            System.Numerics.Tensors.TensorPrimitives.Add(row, tile.Slice(i * ColumnsPerTile, cols), row);
        }
    }

    /// <summary>The register-blocked inner loop: tile = Apanel·Bpanel. Kept free of stackalloc and
    /// pinning so that the JIT keeps the twelve accumulators in registers instead of spilling them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Accumulate(int kc, ReadOnlySpan<float> packedA, ReadOnlySpan<float> packedB, Span<float> tile)
    {
        ref float pa = ref MemoryMarshal.GetReference(packedA);
        ref float pb = ref MemoryMarshal.GetReference(packedB);
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            var b0 = Vector256.LoadUnsafe(ref pb, (nuint)(p * ColumnsPerTile));
            var b1 = Vector256.LoadUnsafe(ref pb, (nuint)(p * ColumnsPerTile + 8));
            ref float a = ref Unsafe.Add(ref pa, p * RowsPerTile);
            var a0 = Vector256.Create(a); c00 = Vector256.FusedMultiplyAdd(a0, b0, c00); c01 = Vector256.FusedMultiplyAdd(a0, b1, c01);
            var a1 = Vector256.Create(Unsafe.Add(ref a, 1)); c10 = Vector256.FusedMultiplyAdd(a1, b0, c10); c11 = Vector256.FusedMultiplyAdd(a1, b1, c11);
            var a2 = Vector256.Create(Unsafe.Add(ref a, 2)); c20 = Vector256.FusedMultiplyAdd(a2, b0, c20); c21 = Vector256.FusedMultiplyAdd(a2, b1, c21);
            var a3 = Vector256.Create(Unsafe.Add(ref a, 3)); c30 = Vector256.FusedMultiplyAdd(a3, b0, c30); c31 = Vector256.FusedMultiplyAdd(a3, b1, c31);
            var a4 = Vector256.Create(Unsafe.Add(ref a, 4)); c40 = Vector256.FusedMultiplyAdd(a4, b0, c40); c41 = Vector256.FusedMultiplyAdd(a4, b1, c41);
            var a5 = Vector256.Create(Unsafe.Add(ref a, 5)); c50 = Vector256.FusedMultiplyAdd(a5, b0, c50); c51 = Vector256.FusedMultiplyAdd(a5, b1, c51);
        }
        ref float t = ref MemoryMarshal.GetReference(tile);
        c00.StoreUnsafe(ref t, 0); c01.StoreUnsafe(ref t, 8); c10.StoreUnsafe(ref t, 16); c11.StoreUnsafe(ref t, 24);
        c20.StoreUnsafe(ref t, 32); c21.StoreUnsafe(ref t, 40); c30.StoreUnsafe(ref t, 48); c31.StoreUnsafe(ref t, 56);
        c40.StoreUnsafe(ref t, 64); c41.StoreUnsafe(ref t, 72); c50.StoreUnsafe(ref t, 80); c51.StoreUnsafe(ref t, 88);
    }
}
