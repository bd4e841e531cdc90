// Elementwise rules: activations and their derivatives (the JVP/VJP of the elementwise op is a multiply by
// the saved derivative), broadcasts over the K tangent channels, and the small vector updates of optimizers.
#include "common.cuh"

// Activation codes, as CudaBackend passes them: 0 relu, 1 tanh, 2 gelu (exact), 3 identity, 4 gelu_tanh.
// Both GELUs in float32 with ForwardAD.Backends.Gaussian's formulas: the exact one takes Φ from erfc (Numerical Recipes'
// erfcc Chebyshev fit, fractional error < 1.2e-7), Φ(x) = erfc(|x|/√2)/2 for x < 0 and 1 − erfc(|x|/√2)/2 otherwise; the
// tanh one is x·σ(2u), u = √(2/π)(x + 0.044715x³).
__device__ __forceinline__ void normal_cdf_density(float x, float* cdf, float* density)
{
    float z = fabsf(x) * 0.70710678118654752440f;
    float t = 1.0f / (1.0f + z * 0.5f);
    float p = 0.17087277f;
    p = p * t + -0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t + -1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t + -0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    float square = z * z;
    float half = t * expf(t * p + -1.26551223f - square) * 0.5f;
    *cdf = x < 0.0f ? half : 1.0f - half;
    *density = expf(-square) * 0.39894228040143267794f;
}

__device__ __forceinline__ float gelu_tanh_sigma(float x)
{
    float u = x * (1.0f + x * x * 0.044715f) * 0.79788456080286535588f;
    return 1.0f / (1.0f + expf(u * -2.0f));
}

__device__ __forceinline__ float activation(int code, float x)
{
    switch (code)
    {
        case 0: return x > 0.0f ? x : 0.0f;
        case 1: return tanhf(x);
        case 2: { float cdf, density; normal_cdf_density(x, &cdf, &density); return x * cdf; }
        case 4: return x * gelu_tanh_sigma(x);
        default: return x;
    }
}

__device__ __forceinline__ float activation_derivative(int code, float x, float y)
{
    switch (code)
    {
        case 0: return x > 0.0f ? 1.0f : 0.0f;
        case 1: return 1.0f - y * y;
        case 2: { float cdf, density; normal_cdf_density(x, &cdf, &density); return cdf + x * density; }
        case 4:
        {
            float sigma = gelu_tanh_sigma(x);
            return sigma + x * sigma * (1.0f - sigma) * (1.0f + x * x * (3.0f * 0.044715f)) * (2.0f * 0.79788456080286535588f);
        }
        default: return 1.0f;
    }
}

extern "C" __global__ void activation_forward(int code, const float* x, float* y, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) y[i] = activation(code, x[i]);
}

extern "C" __global__ void activation_backward(int code, const float* x, const float* y, float* derivative, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) derivative[i] = activation_derivative(code, x[i], y[i]);
}

extern "C" __global__ void fill(float* destination, float value, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = value;
}

// destination (+)= source
extern "C" __global__ void copy(const float* source, float* destination, long long n, int accumulate)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = accumulate ? destination[i] + source[i] : source[i];
}

extern "C" __global__ void scale(const float* source, float factor, float* destination, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = source[i] * factor;
}

extern "C" __global__ void add(const float* a, const float* b, float* destination, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = a[i] + b[i];
}

// destination[c, i] (+)= a[i]·b[c, i] over channels c: n = channels·period. 32-bit indices (see common.cuh).
extern "C" __global__ void multiply_channels(const float* a, const float* b, float* destination, long long period, long long n, int accumulate)
{
    const u32 p = (u32)period, count = (u32)n;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        float x = a[i % p];
        destination[i] = accumulate ? fmaf(x, b[i], destination[i]) : x * b[i];
    }
}

// destination[r, j] += bias[j]. 32-bit indices (see common.cuh).
extern "C" __global__ void add_bias(const float* bias, float* destination, long long columns, long long n)
{
    const u32 width = (u32)columns, count = (u32)n;
    for (u32 i = global_index32(); i < count; i += grid_stride32()) destination[i] += bias[i % width];
}

// destination = 1/√(x + ε): batch normalisation's inverse standard deviation. The correctly rounded intrinsics, as
// the CPU's 1f / MathF.Sqrt(x + ε), whatever the compiler's flags (no rsqrtf approximation).
extern "C" __global__ void reciprocal_sqrt(const float* x, float epsilon, float* destination, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(x[i], epsilon)));
}

// y = alpha·x + beta·y
extern "C" __global__ void axpby(float alpha, const float* x, float beta, float* y, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride())
        y[i] = beta == 1.0f ? x[i] * alpha + y[i] : (beta == 0.0f ? x[i] * alpha : x[i] * alpha + y[i] * beta);
}

// v = beta·v + (1 − beta)·g²
extern "C" __global__ void moving_average_of_squares(const float* g, float beta, float* v, long long n)
{
    float complement = 1.0f - beta;
    for (long long i = global_index(); i < n; i += grid_stride()) v[i] = beta * v[i] + complement * g[i] * g[i];
}

// destination = (m·m_scale) / (√(v·v_scale) + ε)
extern "C" __global__ void adam_direction(const float* m, const float* v, float m_scale, float v_scale, float epsilon, float* destination, long long n)
{
    for (long long i = global_index(); i < n; i += grid_stride()) destination[i] = m[i] * m_scale / (sqrtf(v[i] * v_scale) + epsilon);
}
