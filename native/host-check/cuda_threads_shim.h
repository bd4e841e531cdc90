// Host stand-ins for running a kernel whose threads cooperate within a block (shared memory, __syncthreads) as real
// concurrent threads: every CUDA thread of a block is a std::thread, __syncthreads is a std::barrier, __shared__
// arrays are function statics (one block runs at a time). With -include, like cuda_shim.h; C++20, -pthread.
#include <barrier>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3s { unsigned x, y, z; };
inline thread_local dim3s threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline dim3s blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline std::barrier<>* block_barrier = nullptr;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned __float_as_uint(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
inline double atomicAdd(double* a, double b) { double o = *a; *a += b; return o; } // compiled, not run concurrently here
// The round-to-nearest arithmetic intrinsics: plain IEEE operations on the host (compiled with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
using std::fmax;

// kernel<<<grid, block>>>(): blocks one after another, the threads of a block concurrently.
inline void launch(dim3s grid, dim3s block, const std::function<void()>& kernel)
{
    gridDim = grid;
    blockDim = block;
    for (unsigned bx = 0; bx < grid.x; bx++)
    {
        std::barrier<> barrier((std::ptrdiff_t)(block.x * block.y * block.z));
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned tz = 0; tz < block.z; tz++)
            for (unsigned ty = 0; ty < block.y; ty++)
                for (unsigned tx = 0; tx < block.x; tx++)
                    threads.emplace_back([=, &kernel] { threadIdx = {tx, ty, tz}; blockIdx = {bx, 0, 0}; kernel(); });
        for (auto& thread : threads) thread.join();
    }
}
