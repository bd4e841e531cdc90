// Shared device code: Philox4x32-10 and the float32 Box–Muller of ForwardAD.Random.BoxMuller, operation for
// operation (explicit fmaf, fixed polynomials, exact octant reduction), so that the GPU draws the same bits as
// the CPU. Compile with --fmad=false: the CPU never contracts a*b + c into a fused multiply-add, so neither may we.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;

struct Philox4 { u32 x, y, z, w; };

__device__ __forceinline__ Philox4 philox_block(u64 block, u64 stream, u32 k0, u32 k1)
{
    u32 c0 = (u32)block, c1 = (u32)(block >> 32), c2 = (u32)stream, c3 = (u32)(stream >> 32);
    #pragma unroll
    for (int round = 0; round < 10; round++)
    {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        u32 hiA = __umulhi(0xD2511F53u, c0), loA = 0xD2511F53u * c0;
        u32 hiB = __umulhi(0xCD9E8D57u, c2), loB = 0xCD9E8D57u * c2;
        u32 n0 = hiB ^ c1 ^ k0, n2 = hiA ^ c3 ^ k1;
        c0 = n0; c1 = loB; c2 = n2; c3 = loA;
    }
    Philox4 r = { c0, c1, c2, c3 };
    return r;
}

__device__ __forceinline__ float unit_open(u32 bits) { return ((float)(bits >> 8) + 0.5f) * (1.0f / 16777216.0f); }

// Cephes logf on positive normal floats, as BoxMuller.Log.
__device__ __forceinline__ float fad_log(float x)
{
    u32 bits = __float_as_uint(x);
    float e = (float)((int)(bits >> 23) - 127);
    float m = __uint_as_float((bits & 0x007FFFFFu) | 0x3F800000u);
    if (m > 1.41421356f) { m = m * 0.5f; e = e + 1.0f; }
    float f = m - 1.0f;
    float z = f * f;
    float p = 7.0376836292E-2f;
    p = fmaf(p, f, -1.1514610310E-1f);
    p = fmaf(p, f, 1.1676998740E-1f);
    p = fmaf(p, f, -1.2420140846E-1f);
    p = fmaf(p, f, 1.4249322787E-1f);
    p = fmaf(p, f, -1.6668057665E-1f);
    p = fmaf(p, f, 2.0000714765E-1f);
    p = fmaf(p, f, -2.4999993993E-1f);
    p = fmaf(p, f, 3.3333331174E-1f);
    float y = fmaf(e, -2.12194440e-4f, f * z * p);
    y = fmaf(-0.5f, z, y);
    return fmaf(e, 0.693359375f, f + y);
}

// (√(−2 ln u)·cos 2πv, √(−2 ln u)·sin 2πv), as BoxMuller.Pair.
__device__ __forceinline__ void box_muller(u32 a, u32 b, float* cosine_out, float* sine_out)
{
    float radius = sqrtf(-2.0f * fad_log(unit_open(a)));
    float v8 = unit_open(b) * 8.0f;
    float octant = floorf(v8);
    int n = (int)octant;
    float f = v8 - octant;
    float t = ((n & 1) == 0 ? f : 1.0f - f) * 0.785398163397448f;
    float z = t * t;
    float sine = fmaf(t * z, fmaf(fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f), z, -1.6666654611E-1f), t);
    float cosine = fmaf(z * z, fmaf(fmaf(2.443315711809948E-5f, z, -1.388731625493765E-3f), z, 4.166664568298827E-2f), fmaf(-0.5f, z, 1.0f));
    if (((n + 1) & 2) != 0) { float s = sine; sine = cosine; cosine = s; }
    if (n >= 4) sine = -sine;
    if (((n + 2) & 4) != 0) cosine = -cosine;
    *cosine_out = radius * cosine;
    *sine_out = radius * sine;
}

__device__ __forceinline__ long long global_index() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

// 32-bit indices for kernels that divide or take a modulo: a 64-bit division is a software routine of dozens of
// instructions on the GPU, a 32-bit one a handful. Every size is a View's length (a C# int, < 2^31), so an index
// fits; unsigned, so i + stride (both < 2^31) cannot overflow before the i < n test ends the loop.
__device__ __forceinline__ u32 global_index32() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ u32 grid_stride32() { return gridDim.x * blockDim.x; }
