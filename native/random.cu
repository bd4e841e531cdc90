// Counter-based random numbers: element i of stream (seed, stream) comes from Philox block i/4, lane i%4.
#include "common.cuh"

// destination[j] = mean + sd·z_(first+j), normals by Box–Muller: lanes 0,1 from words (x, y), lanes 2,3 from (z, w).
extern "C" __global__ void fill_normal(float* destination, long long n, long long first, u32 seed_lo, u32 seed_hi,
                                       u64 stream, float mean, float sd)
{
    long long first_block = first >> 2, last_block = (first + n - 1) >> 2;
    for (long long b = first_block + global_index(); b <= last_block; b += grid_stride())
    {
        Philox4 r = philox_block((u64)b, stream, seed_lo, seed_hi);
        float z[4];
        box_muller(r.x, r.y, &z[0], &z[1]);
        box_muller(r.z, r.w, &z[2], &z[3]);
        #pragma unroll
        for (int lane = 0; lane < 4; lane++)
        {
            long long j = b * 4 + lane - first;
            if (j >= 0 && j < n) destination[j] = fmaf(sd, z[lane], mean);
        }
    }
}

// destination[j] = low + width·U(bits of element first + j), U in (0, 1).
extern "C" __global__ void fill_uniform(float* destination, long long n, long long first, u32 seed_lo, u32 seed_hi,
                                        u64 stream, float low, float width)
{
    long long first_block = first >> 2, last_block = (first + n - 1) >> 2;
    for (long long b = first_block + global_index(); b <= last_block; b += grid_stride())
    {
        Philox4 r = philox_block((u64)b, stream, seed_lo, seed_hi);
        u32 words[4] = { r.x, r.y, r.z, r.w };
        #pragma unroll
        for (int lane = 0; lane < 4; lane++)
        {
            long long j = b * 4 + lane - first;
            if (j >= 0 && j < n) destination[j] = low + width * unit_open(words[lane]);
        }
    }
}
