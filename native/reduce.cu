// Reductions: row sums (bias gradients), per-row dots (loss JVPs), row scalings (loss VJPs), row norms and
// cosines, and whole-vector sums into a double accumulator read back by the host.
#include "common.cuh"

// destination[j] (+)= Σ_r source[r, j]; one thread per column, rows walked in order (deterministic).
extern "C" __global__ void sum_rows(const float* source, float* destination, long long rows, long long columns, int accumulate)
{
    for (long long j = global_index(); j < columns; j += grid_stride())
    {
        float sum = 0.0f;
        for (long long r = 0; r < rows; r++) sum += source[r * columns + j];
        destination[j] = accumulate ? destination[j] + sum : sum;
    }
}

// destination[c, r] = Σ_j a[r, j]·b[c, r, j], total = channels·rows outputs.
extern "C" __global__ void row_dot(const float* a, const float* b, float* destination, long long rows, long long columns, long long total)
{
    for (long long i = global_index(); i < total; i += grid_stride())
    {
        const float* x = a + (i % rows) * columns;
        const float* y = b + i * columns;
        float sum = 0.0f;
        for (long long j = 0; j < columns; j++) sum = fmaf(x[j], y[j], sum);
        destination[i] = sum;
    }
}

// destination[r, j] (+)= a[r, j]·scale[r]
extern "C" __global__ void scale_rows(const float* a, const float* scale, float* destination, long long columns, long long n, int accumulate)
{
    for (long long i = global_index(); i < n; i += grid_stride())
    {
        float s = scale[i / columns];
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
