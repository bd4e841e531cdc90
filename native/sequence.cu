// Sequence ops (issue 13): LayerNorm/RMSNorm over the last axis (one warp per row), embedding gather and its deterministic
// scatter-add, and the per-example sequence cross-entropy. The formulas are CpuBackend's, operation for operation where the
// order is fixed; row reductions are warp trees (the CPU's TensorPrimitives sums in SIMD lanes), so those agree to rounding.
#include "common.cuh"

// The sum of v over the 32 lanes of a warp, in every lane (a fixed butterfly: the same bits run to run).
__device__ __forceinline__ float warp_sum(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Per row r of x [rows, width]: centre (LayerNorm) μ = mean(x_r), s = 1/√(mean((x_r − μ)²) + ε); otherwise (RMSNorm) μ = 0,
// s = 1/√(mean(x_r²) + ε). normalized[r, :] = (x_r − μ)·s, inverse_std[r] = s. One warp per row (grid-stride over rows);
// two passes over the row, as the CPU (no E[x²] − μ² cancellation).
extern "C" __global__ void normalize_last_axis(const float* x, float* normalized, float* inverse_std, long long rows, long long width,
    float epsilon, int centre)
{
    const u32 lane = threadIdx.x & 31u, n = (u32)width;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 r = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < (u64)rows; r += warps)
    {
        const float* row = x + r * n;
        float* out = normalized + r * n;
        float mean = 0.0f;
        if (centre)
        {
            float sum = 0.0f;
            for (u32 j = lane; j < n; j += 32u) sum += row[j];
            mean = warp_sum(sum) / (float)n;
        }
        float squares = 0.0f;
        for (u32 j = lane; j < n; j += 32u) { float d = row[j] - mean; squares += d * d; }
        float s = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(warp_sum(squares) / (float)n, epsilon)));
        for (u32 j = lane; j < n; j += 32u) out[j] = (row[j] - mean) * s;
        if (lane == 0) inverse_std[r] = s;
    }
}

// destination[c, r, :] (+)= s_r (v[c, r, :] − mean(v[c, r, :]) − x̂_r mean(v[c, r, :] ⊙ x̂_r)) (the mean of v only when centre),
// for total = C·rows rows of v; the JVP and the VJP of normalize_last_axis. One warp per row. The update is written as the
// CPU writes it: d = s·v (+ d), d += −s·mean(v), d = x̂·(−s·mean(v ⊙ x̂)) + d.
extern "C" __global__ void normalize_last_axis_derivative(const float* normalized, const float* inverse_std, const float* v, float* destination,
    long long rows, long long width, long long total, int centre, int accumulate)
{
    const u32 lane = threadIdx.x & 31u, n = (u32)width, height = (u32)rows;
    const u64 warps = ((u64)gridDim.x * blockDim.x) >> 5;
    for (u64 i = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < (u64)total; i += warps)
    {
        const u32 r = (u32)(i % height);
        const float* row = v + i * n;
        const float* x_hat = normalized + (u64)r * n;
        float* out = destination + i * n;
        float sum = 0.0f, dot = 0.0f;
        for (u32 j = lane; j < n; j += 32u) { sum += row[j]; dot += row[j] * x_hat[j]; }
        const float s = inverse_std[r], mean_term = -s * (warp_sum(sum) / (float)n), projection = -s * (warp_sum(dot) / (float)n);
        for (u32 j = lane; j < n; j += 32u)
        {
            float d = accumulate ? row[j] * s + out[j] : row[j] * s;
            if (centre) d = d + mean_term;
            out[j] = x_hat[j] * projection + d;
        }
    }
}

// destination[c, n, :] = table[c, ids[n], :] (zeros for a negative id: padding); total = C·N·width. 32-bit indices within
// the destination (a View's length), 64-bit offsets into the table.
extern "C" __global__ void gather_rows(const float* table, const float* indices, float* destination, long long count, long long width,
    long long vocabulary, long long total)
{
    const u32 w = (u32)width, N = (u32)count, end = (u32)total;
    for (u32 i = global_index32(); i < end; i += grid_stride32())
    {
        const u32 row = i / w, j = i % w, c = row / N, position = row % N;
        const int id = (int)indices[position];
        destination[i] = id < 0 ? 0.0f : table[((u64)c * (u64)vocabulary + (u64)id) * w + j];
    }
}

// destination[v, :] (+)= Σ_{n: ids[n] = v} source[n, :], the sum taken in the order n = 0, 1, …: for each destination element
// the same sequence of additions as CpuBackend.ScatterAddRows, so the same bits, and no atomics. Grid (column tiles of
// blockDim.x, vocabulary rows, grid-stride); the block stages the ids through shared memory in tiles of blockDim.x and every
// thread adds the values of its column whose id is its row. Work O(V·N) id comparisons per column tile: meant for byte- and
// character-level vocabularies (a sort by id would serve large ones).
#define SCATTER_ROWS_TILE 128
extern "C" __global__ void scatter_add_rows(const float* source, const float* indices, float* destination, long long count, long long width,
    long long vocabulary, int accumulate)
{
    __shared__ int ids[SCATTER_ROWS_TILE];
    const u32 w = (u32)width, N = (u32)count, V = (u32)vocabulary;
    const u32 j = blockIdx.x * SCATTER_ROWS_TILE + threadIdx.x;
    for (u32 v = blockIdx.y; v < V; v += gridDim.y)
    {
        float sum = (j < w && accumulate) ? destination[(u64)v * w + j] : 0.0f;
        for (u32 tile = 0; tile < N; tile += SCATTER_ROWS_TILE)
        {
            __syncthreads();
            if (tile + threadIdx.x < N) ids[threadIdx.x] = (int)indices[tile + threadIdx.x];
            __syncthreads();
            const u32 end = N - tile < SCATTER_ROWS_TILE ? N - tile : SCATTER_ROWS_TILE;
            if (j < w)
                for (u32 k = 0; k < end; k++)
                    if (ids[k] == (int)v) sum += source[(u64)(tile + k) * w + j];
        }
        if (j < w) destination[(u64)v * w + j] = sum;
    }
}

// Per example b of logits [B, T, V] and targets [B, T]: loss[b] = mean over kept positions (target ≠ ignore and ≥ 0) of
// logsumexp(z) − z[y]; error = (softmax − onehot)/n_b on kept rows, 0 on ignored ones; n_b = 0 gives loss 0. One block per
// example (grid-stride), a thread per row; dynamic shared memory holds each row's loss and whether it was kept (2·T floats),
// summed by thread 0 in position order, as the CPU.
extern "C" __global__ void sequence_cross_entropy(const float* logits, const float* targets, float* loss, float* error, long long examples,
    long long length, long long classes, float ignore)
{
    extern __shared__ float shared[];
    float* row_loss = shared;
    float* kept = shared + length;
    __shared__ float inverse;
    const u32 T = (u32)length, V = (u32)classes;
    for (u64 b = blockIdx.x; b < (u64)examples; b += gridDim.x)
    {
        for (u32 t = threadIdx.x; t < T; t += blockDim.x)
        {
            const u64 r = b * T + t;
            const float* z = logits + r * V;
            float* e = error + r * V;
            const float y = targets[r];
            if (y == ignore || y < 0.0f)
            {
                for (u32 k = 0; k < V; k++) e[k] = 0.0f;
                row_loss[t] = 0.0f;
                kept[t] = 0.0f;
                continue;
            }
            float max = z[0];
            for (u32 k = 1; k < V; k++) max = fmaxf(max, z[k]);
            float sum = 0.0f;
            for (u32 k = 0; k < V; k++) { e[k] = expf(z[k] - max); sum += e[k]; }
            for (u32 k = 0; k < V; k++) e[k] /= sum;
            const int label = (int)y;
            row_loss[t] = logf(sum) + max - z[label];
            e[label] -= 1.0f;
            kept[t] = 1.0f;
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            float total = 0.0f;
            int n = 0;
            for (u32 t = 0; t < T; t++)
                if (kept[t] != 0.0f) { total += row_loss[t]; n++; }
            loss[b] = n == 0 ? 0.0f : total / (float)n;
            inverse = n == 0 ? 0.0f : 1.0f / (float)n;
        }
        __syncthreads();
        const float scale = inverse;
        for (u64 i = threadIdx.x; i < (u64)T * V; i += blockDim.x) error[b * T * V + i] *= scale;
        __syncthreads();
    }
}
