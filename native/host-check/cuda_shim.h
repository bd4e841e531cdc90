// Host stand-ins for the CUDA keywords and intrinsics the kernels use, for a syntax and bit check with g++.
#include <cmath>
#include <math.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3s { unsigned x, y, z; };
extern dim3s blockIdx, blockDim, threadIdx, gridDim;
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned __float_as_uint(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
inline void __syncthreads() {}
inline double atomicAdd(double* a, double b) { double o = *a; *a += b; return o; }
// The round-to-nearest arithmetic intrinsics: plain IEEE operations on the host (compiled with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
using std::fmax;
