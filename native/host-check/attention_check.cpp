// Runs the kernels of attention.cu on the host, every CUDA thread a real thread (cuda_threads_shim.h) and the warp
// shuffles emulated with one barrier per warp, on small grids (2 blocks of 2 warps) so that the grid-stride row loops
// wrap. Checks, for row lengths below, at and above the 32 lanes of a warp: the causal softmax against a float64
// reference (within float32 rounding), exact zeros above each diagonal, every element written (outputs start as NaN),
// in place = out of place bit for bit; the softmax-JVP rows likewise, over several channel copies. No CUDA needed:
//   g++ -std=c++20 -O1 -pthread -ffp-contract=off -include cuda_threads_shim.h attention_check.cpp -o attention_check && ./attention_check
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>

inline float __fsub_rn(float a, float b) { return a - b; }
inline float __int_as_float(int i) { float f; __builtin_memcpy(&f, &i, 4); return f; }

// __shfl_xor_sync with real threads: each lane publishes its value, the warp meets, each reads its partner's, the warp
// meets again before the slots are reused. The row loops are uniform across a warp, so every lane arrives.
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static std::vector<float> lane_values;
inline float __shfl_xor_sync(unsigned, float value, int offset)
{
    const unsigned t = threadIdx.x, warp = t / 32;
    lane_values[t] = value;
    warp_barriers[warp]->arrive_and_wait();
    const float other = lane_values[t ^ (unsigned)offset];
    warp_barriers[warp]->arrive_and_wait();
    return other;
}

#include "../attention.cu"

static constexpr unsigned Blocks = 2, Threads = 64;
static void prepare()
{
    warp_barriers.clear();
    for (unsigned w = 0; w < Threads / 32; w++) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    lane_values.assign(Threads, 0.0f);
}

static std::mt19937 random_engine(13);
static std::vector<float> normal(size_t n, float scale)
{
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(random_engine);
    return v;
}

static int failures = 0;
static void fail(const std::string& what, size_t i, double expected, float actual)
{
    std::printf("%s: at [%zu] reference %.9g, kernel %.9g\n", what.c_str(), i, expected, actual);
    failures++;
}

static void check_softmax(int size, int matrices)
{
    const size_t n = (size_t)matrices * size * size;
    auto scores = normal(n, 3.0f);
    std::vector<float> p(n, NAN), in_place = scores;
    const long long rows = (long long)matrices * size;
    prepare();
    launch({Blocks, 1, 1}, {Threads, 1, 1}, [&] { causal_softmax_rows(scores.data(), p.data(), size, rows); });
    prepare();
    launch({Blocks, 1, 1}, {Threads, 1, 1}, [&] { causal_softmax_rows(in_place.data(), in_place.data(), size, rows); });
    const std::string what = "causal_softmax_rows size " + std::to_string(size);
    for (long long row = 0; row < rows; row++)
    {
        const int i = (int)(row % size);
        double max = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) max = std::fmax(max, (double)scores[row * size + j]);
        for (int j = 0; j <= i; j++) sum += std::exp((double)scores[row * size + j] - max);
        for (int j = 0; j < size; j++)
        {
            const size_t at = row * size + j;
            const double expected = j <= i ? std::exp((double)scores[at] - max) / sum : 0.0;
            // expf, the division and a sum of i + 1 terms: (i + 8) float32 roundings at most, relative to the value.
            if (!(std::fabs(expected - p[at]) <= (i + 8) * 0x1p-24 * expected) || (j > i && p[at] != 0.0f)) { fail(what, at, expected, p[at]); return; }
            if (std::memcmp(&p[at], &in_place[at], 4) != 0) { fail(what + " in place", at, p[at], in_place[at]); return; }
        }
    }
}

static void check_jvp(int columns, int channels)
{
    const int prob_rows = 2 * columns;
    const size_t n = (size_t)prob_rows * columns;
    std::vector<float> p(n);
    auto scores = normal(n, 1.0f);
    prepare();
    launch({Blocks, 1, 1}, {Threads, 1, 1}, [&] { causal_softmax_rows(scores.data(), p.data(), columns, prob_rows); });
    auto x = normal(channels * n, 1.0f);
    std::vector<float> d(channels * n, NAN), in_place = x;
    const long long rows = (long long)channels * prob_rows;
    prepare();
    launch({Blocks, 1, 1}, {Threads, 1, 1}, [&] { softmax_jvp_rows(p.data(), x.data(), d.data(), columns, prob_rows, rows); });
    prepare();
    launch({Blocks, 1, 1}, {Threads, 1, 1}, [&] { softmax_jvp_rows(p.data(), in_place.data(), in_place.data(), columns, prob_rows, rows); });
    const std::string what = "softmax_jvp_rows columns " + std::to_string(columns) + " channels " + std::to_string(channels);
    for (long long row = 0; row < rows; row++)
    {
        const float* pr = &p[(row % prob_rows) * columns];
        double dot = 0, magnitude = 0;
        for (int j = 0; j < columns; j++) { dot += (double)pr[j] * x[row * columns + j]; magnitude += std::fabs((double)pr[j] * x[row * columns + j]); }
        for (int j = 0; j < columns; j++)
        {
            const size_t at = row * columns + j;
            const double expected = pr[j] * ((double)x[at] - dot);
            const double bound = (columns + 4) * 0x1p-24 * pr[j] * (std::fabs(x[at]) + magnitude);
            if (!(std::fabs(expected - d[at]) <= bound) || (pr[j] == 0.0f && d[at] != 0.0f)) { fail(what, at, expected, d[at]); return; }
            if (std::memcmp(&d[at], &in_place[at], 4) != 0) { fail(what + " in place", at, d[at], in_place[at]); return; }
        }
    }
}

int main()
{
    for (int size : {1, 2, 5, 31, 32, 33, 70}) check_softmax(size, 3);
    for (int columns : {1, 7, 32, 33, 70}) for (int channels : {1, 3}) check_jvp(columns, channels);
    std::printf(failures == 0 ? "attention kernels: all checks passed\n" : "attention kernels: %d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
