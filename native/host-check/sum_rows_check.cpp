// Runs the sum_rows kernel of reduce.cu on the host with its block's 32 × 32 threads as real concurrent threads
// (cuda_threads_shim.h) and checks, for several shapes and both accumulate modes:
//   - every column equals the kernel's documented order computed sequentially, bit for bit (lane y adds rows
//     y, y + 32, … in order, then the fixed tree over the 32 lanes): the sums are the same run to run;
//   - each is within float32 rounding of a double-precision sum;
//   - running it twice gives the same bits.
// No CUDA needed: g++ -std=c++20 -O1 -pthread -ffp-contract=off -include cuda_threads_shim.h sum_rows_check.cpp -o sum_rows_check && ./sum_rows_check
#include <cstdio>
#include <cstring>
#include <random>
#include "../reduce.cu"

static int check(unsigned rows, unsigned columns, int accumulate)
{
    std::mt19937 random(rows * 7919u + columns);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> source((size_t)rows * columns), start(columns);
    for (auto& v : source) v = normal(random);
    for (auto& v : start) v = normal(random);
    std::vector<float> first = start, second = start;
    dim3s grid{(columns + SUM_ROWS_TILE - 1) / SUM_ROWS_TILE, 1, 1}, block{SUM_ROWS_TILE, SUM_ROWS_TILE, 1};
    launch(grid, block, [&] { sum_rows(source.data(), first.data(), rows, columns, accumulate); });
    launch(grid, block, [&] { sum_rows(source.data(), second.data(), rows, columns, accumulate); });
    int failures = 0;
    for (unsigned j = 0; j < columns; j++)
    {
        float lane[SUM_ROWS_TILE] = {};
        for (unsigned y = 0; y < SUM_ROWS_TILE; y++)
            for (unsigned r = y; r < rows; r += SUM_ROWS_TILE) lane[y] += source[(size_t)r * columns + j];
        for (unsigned half = SUM_ROWS_TILE / 2; half > 0; half >>= 1)
            for (unsigned y = 0; y < half; y++) lane[y] += lane[y + half];
        float expected = accumulate ? start[j] + lane[0] : lane[0];
        double exact = accumulate ? start[j] : 0.0, magnitude = accumulate ? std::fabs(start[j]) : 0.0;
        for (unsigned r = 0; r < rows; r++) { exact += source[(size_t)r * columns + j]; magnitude += std::fabs(source[(size_t)r * columns + j]); }
        // Each float32 addition errs by at most 2^-24 of the running magnitude; a chain here is rows/32 + 5 additions long.
        double bound = (rows / SUM_ROWS_TILE + 7) * std::ldexp(1.0, -24) * magnitude;
        if (std::memcmp(&first[j], &expected, 4) != 0 || std::memcmp(&first[j], &second[j], 4) != 0 || std::fabs(first[j] - exact) > bound)
        {
            if (failures++ < 5)
                std::printf("rows %u columns %u accumulate %d: column %u = %.9g, second run %.9g, documented order %.9g, exact %.9g (bound %.3g)\n",
                            rows, columns, accumulate, j, first[j], second[j], expected, exact, bound);
        }
    }
    return failures;
}

int main()
{
    int failures = 0;
    const unsigned shapes[][2] = { {1, 1}, {12, 10}, {0, 5}, {31, 33}, {1000, 70}, {4097, 64}, {300, 1} };
    for (auto& shape : shapes)
        for (int accumulate = 0; accumulate < 2; accumulate++) failures += check(shape[0], shape[1], accumulate);
    std::printf(failures == 0 ? "sum_rows: all shapes match\n" : "sum_rows: %d columns wrong\n", failures);
    return failures == 0 ? 0 : 1;
}
