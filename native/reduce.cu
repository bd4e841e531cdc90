// Reductions: row sums (bias gradients), per-row dots (loss JVPs), row scalings (loss VJPs), row norms and
// cosines, and whole-vector sums into a double accumulator read back by the host.
#include "common.cuh"

// destination[j] (+)= Σ_r source[r, j] (bias gradients: rows = K·B examples, columns = width).
// A block of SUM_ROWS_TILE × SUM_ROWS_TILE threads sums a tile of SUM_ROWS_TILE columns; grid = one block per tile.
// Thread (x, y) adds rows y, y + T, y + 2T, … of column tile·T + x in order (a warp reads T consecutive floats of a
// row: coalesced), then the T partial sums of each column are added by a fixed tree in shared memory. The order of
// every addition depends only on rows, never on the launch or on timing: the same bits run to run. (One thread per
// column walking all rows left most of the GPU idle and read the matrix column by column.)
#define SUM_ROWS_TILE 32
extern "C" __global__ void sum_rows(const float* source, float* destination, long long rows, long long columns, int accumulate)
{
    __shared__ float partial[SUM_ROWS_TILE][SUM_ROWS_TILE + 1]; // + 1: no bank conflicts
    const u32 count = (u32)rows, width = (u32)columns;
    const u32 x = threadIdx.x, y = threadIdx.y;
    const u32 j = blockIdx.x * SUM_ROWS_TILE + x;
    float sum = 0.0f;
    if (j < width)
        for (u32 r = y; r < count; r += SUM_ROWS_TILE) sum += source[(u64)r * width + j];
    partial[y][x] = sum;
    __syncthreads();
    for (u32 half = SUM_ROWS_TILE / 2; half > 0; half >>= 1)
    {
        if (y < half) partial[y][x] += partial[y + half][x];
        __syncthreads();
    }
    if (y == 0 && j < width) destination[j] = accumulate ? destination[j] + partial[0][x] : partial[0][x];
}

// destination[c, r] = Σ_j a[r, j]·b[c, r, j], total = channels·rows outputs. 32-bit indices (see common.cuh).
extern "C" __global__ void row_dot(const float* a, const float* b, float* destination, long long rows, long long columns, long long total)
{
    const u32 height = (u32)rows, width = (u32)columns, count = (u32)total;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const float* x = a + (u64)(i % height) * width;
        const float* y = b + (u64)i * width;
        float sum = 0.0f;
        for (u32 j = 0; j < width; j++) sum = fmaf(x[j], y[j], sum);
        destination[i] = sum;
    }
}

// destination[r, j] (+)= a[r, j]·scale[r]. 32-bit indices (see common.cuh).
extern "C" __global__ void scale_rows(const float* a, const float* scale, float* destination, long long columns, long long n, int accumulate)
{
    const u32 width = (u32)columns, count = (u32)n;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        float s = scale[i / width];
        destination[i] = accumulate ? fmaf(a[i], s, destination[i]) : a[i] * s;
    }
}

// destination[r, j] (+)= a[r, j]·scale[j]: a per-column (per-channel: batch normalisation) scale over rows of
// `columns`. Accumulating is one fused multiply-add, as the CPU's TensorPrimitives.FusedMultiplyAdd. 32-bit indices.
extern "C" __global__ void scale_columns(const float* a, const float* scale, float* destination, long long columns, long long n, int accumulate)
{
    const u32 width = (u32)columns, count = (u32)n;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        float s = scale[i % width];
        destination[i] = accumulate ? fmaf(a[i], s, destination[i]) : a[i] * s;
    }
}

extern "C" __global__ void normalize_rows(float* x, long long rows, long long columns, float norm)
{
    for (long long r = global_index(); r < rows; r += grid_stride())
    {
        float* row = x + r * columns;
        float sum = 0.0f;
        for (long long j = 0; j < columns; j++) sum = fmaf(row[j], row[j], sum);
        float length = sqrtf(sum);
        if (length > 0.0f) for (long long j = 0; j < columns; j++) row[j] *= norm / length;
    }
}

extern "C" __global__ void row_cosines(const float* a, const float* b, float* destination, long long rows, long long columns)
{
    for (long long r = global_index(); r < rows; r += grid_stride())
    {
        float dot = 0.0f, aa = 0.0f, bb = 0.0f;
        for (long long j = 0; j < columns; j++)
        {
            float x = a[r * columns + j], y = b[r * columns + j];
            dot = fmaf(x, y, dot); aa = fmaf(x, x, aa); bb = fmaf(y, y, bb);
        }
        float norms = sqrtf(aa) * sqrtf(bb);
        destination[r] = norms == 0.0f ? 0.0f : dot / norms;
    }
}

// *result += Σ_i f(i), f chosen by mode: 0 x, 1 x², 2 x·y, 3 g²/max(v·v_scale, floor) (StableAdamW's RMS).
extern "C" __global__ void reduce_sum(const float* x, const float* y, int mode, float v_scale, float floor_value, double* result, long long n)
{
    __shared__ double partial[256];
    double sum = 0.0;
    for (long long i = global_index(); i < n; i += grid_stride())
    {
        double a = x[i];
        switch (mode)
        {
            case 0: sum += a; break;
            case 1: sum += a * a; break;
            case 2: sum += a * (double)y[i]; break;
            default: sum += a * a / fmax((double)y[i] * v_scale, (double)floor_value); break;
        }
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1)
    {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(result, partial[0]);
}
