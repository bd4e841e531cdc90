// Attention's row kernels (issue 13): the causal softmax over the rows of [T, T] score matrices and the softmax Jacobian
// applied row by row, p ⊙ (x − ⟨p, x⟩), which is both the JVP and (being symmetric) the VJP of a row softmax. The contracts
// are Backend.CausalSoftmaxRows and Backend.SoftmaxJvpRows; the reference is CpuBackend. The GEMMs around them are cuBLAS
// (CudaBackend.GemmStridedBatched).
//
// One warp per row: lanes stride over the row's columns, the row's max, sum and dot product are reduced by butterfly
// shuffles (every lane ends with the same value; no shared memory, no atomics, the same bits run to run). The sums are
// in another order than the CPU's SIMD sums and expf is not TensorPrimitives.Exp, so the results agree with the CPU
// within float32 rounding, not bit for bit (tests/ForwardAD.Cuda.Tests/AttentionParityTests.cs).
//
// Indices are 32-bit (see common.cuh): every size is a View's length, an int. The row loop is uniform across a warp
// (all its lanes share the row), so the full-mask shuffles are well defined.
#include "common.cuh"

__device__ __forceinline__ float warp_max(float value)
{
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

__device__ __forceinline__ float warp_sum(float value)
{
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value = __fadd_rn(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

// probabilities[row, j] = exp(s[row, j] − m) / Σ_{j' ≤ i} exp(s[row, j'] − m) for j ≤ i = row mod size, 0 for j > i;
// m = max_{j ≤ i} s[row, j]. Entries above the diagonal of scores are never read; in place is allowed (a lane reads
// s[j] before it writes p[j], and no other lane touches column j).
extern "C" __global__ void causal_softmax_rows(const float* scores, float* probabilities, int size, long long rows)
{
    const u32 lane = threadIdx.x & 31u, warps = grid_stride32() >> 5, count = (u32)rows, n = (u32)size;
    for (u32 row = global_index32() >> 5; row < count; row += warps)
    {
        const u32 i = row % n;
        const float* s = scores + row * n;
        float* p = probabilities + row * n;
        float m = __int_as_float(0xff800000); // −∞ (NVRTC has no INFINITY macro without headers)
        for (u32 j = lane; j <= i; j += 32u) m = fmaxf(m, s[j]);
        m = warp_max(m);
        float sum = 0.0f;
        for (u32 j = lane; j <= i; j += 32u)
        {
            const float e = expf(__fsub_rn(s[j], m));
            p[j] = e;
            sum = __fadd_rn(sum, e);
        }
        sum = warp_sum(sum);
        for (u32 j = lane; j < n; j += 32u) p[j] = j <= i ? __fdiv_rn(p[j], sum) : 0.0f;
    }
}

// destination[r, j] = p[r mod P, j]·(x[r, j] − Σ_j' p[r mod P, j']·x[r, j']) for rows of `columns`, P = probability rows:
// x and destination hold whole copies (channels) of p. In place is allowed: the dot product is reduced (a warp-wide
// shuffle, which every lane reaches) before any lane writes.
extern "C" __global__ void softmax_jvp_rows(const float* probabilities, const float* x, float* destination, int columns,
                                            long long probability_rows, long long rows)
{
    const u32 lane = threadIdx.x & 31u, warps = grid_stride32() >> 5, count = (u32)rows, n = (u32)columns, prows = (u32)probability_rows;
    for (u32 row = global_index32() >> 5; row < count; row += warps)
    {
        const float* p = probabilities + (row % prows) * n;
        const float* from = x + row * n;
        float* to = destination + row * n;
        float dot = 0.0f;
        for (u32 j = lane; j < n; j += 32u) dot = __fadd_rn(dot, __fmul_rn(p[j], from[j]));
        dot = warp_sum(dot);
        for (u32 j = lane; j < n; j += 32u) to[j] = __fmul_rn(__fsub_rn(from[j], dot), p[j]);
    }
}
