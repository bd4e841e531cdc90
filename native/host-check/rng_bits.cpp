// Compiles the CUDA random kernels as plain C++ (cuda_shim.h maps the CUDA keywords and intrinsics to
// their IEEE host equivalents; -ffp-contract=off mirrors nvcc's --fmad=false) and prints the bits they
// draw. tests/ForwardAD.Tests/Golden/cuda_rng_bits.txt holds this output; the C# tests check that the CPU
// backend draws exactly these bits. Build and run (needs g++ or clang++ only, no CUDA):
//   g++ -std=c++17 -O2 -ffp-contract=off -include cuda_shim.h rng_bits.cpp -o rng_bits && ./rng_bits > ../../tests/ForwardAD.Tests/Golden/cuda_rng_bits.txt
#include <cstdio>
dim3s blockIdx{0, 0, 0}, blockDim{1, 1, 1}, threadIdx{0, 0, 0}, gridDim{1, 1, 1};
#include "../random.cu"

int main()
{
    static float normal[4099], uniform[1000];
    unsigned long long seed = 0xDEADBEEF12345678ull, stream = 0x0123456789ABCDEFull;
    fill_normal(normal, 4099, 12, (u32)seed, (u32)(seed >> 32), stream, 0.0f, 1.0f);
    fill_uniform(uniform, 1000, 5, (u32)seed, (u32)(seed >> 32), stream, -1.0f, 2.0f);
    for (float v : normal) { unsigned u; __builtin_memcpy(&u, &v, 4); printf("%08x\n", u); }
    for (float v : uniform) { unsigned u; __builtin_memcpy(&u, &v, 4); printf("%08x\n", u); }
}
