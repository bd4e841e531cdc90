// Runs the kernels of conv.cu (and scale_columns, reciprocal_sqrt) on the host, every CUDA thread a real thread
// (cuda_threads_shim.h: scatter_add_columns cooperates through shared memory and __syncthreads), with small grids so
// that the grid-stride loops wrap, and compares them bit for bit with a line-by-line port of CpuBackend's loops over
// many geometries: strides 1 and 2, padding 0–2, odd sizes, 1×1, 3×3, 2×3 and 3×2 kernels, groups 1, 2 and depthwise,
// several examples, channel copies R = 3N, both accumulate modes. Also checks that indices repeat within a row
// (overlapping windows) so that the scatter's tie handling is exercised. No CUDA needed:
//   g++ -std=c++20 -O1 -pthread -ffp-contract=off -include cuda_threads_shim.h conv_check.cpp -o conv_check && ./conv_check
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include "../conv.cu"
#include "../reduce.cu"
#include "../elementwise.cu"

struct Geometry { int h, w, c, kh, kw, s, p, g; int oh() const { return (h + 2 * p - kh) / s + 1; } int ow() const { return (w + 2 * p - kw) / s + 1; } };

static std::mt19937 random_engine(12345);
static std::vector<float> normal(size_t n)
{
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(random_engine);
    return v;
}
// Values with many ties (small integers), so that max pooling's "first maximum wins" rule decides.
static std::vector<float> ties(size_t n)
{
    std::uniform_int_distribution<int> d(-2, 2);
    std::vector<float> v(n);
    for (auto& x : v) x = (float)d(random_engine);
    return v;
}

static int failures = 0;
static void compare(const std::string& what, const std::vector<float>& expected, const std::vector<float>& actual)
{
    if (expected.size() != actual.size()) { std::printf("%s: length %zu, expected %zu\n", what.c_str(), actual.size(), expected.size()); failures++; return; }
    for (size_t i = 0; i < expected.size(); i++)
        if (std::memcmp(&expected[i], &actual[i], 4) != 0)
        {
            std::printf("%s: first difference at [%zu]: reference %.9g, kernel %.9g\n", what.c_str(), i, expected[i], actual[i]);
            failures++;
            return;
        }
}

static std::string name(const char* kernel, const Geometry& g, int n)
{
    char text[200];
    std::snprintf(text, sizeof text, "%s N=%d H=%d W=%d C=%d k=%dx%d s=%d p=%d G=%d", kernel, n, g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.g);
    return text;
}

// ---- reference: CpuBackend's loops, element by element ----
static void im2col_reference(const std::vector<float>& x, const Geometry& g, int examples, std::vector<float>& cols)
{
    int cg = g.c / g.g, patch = g.kh * g.kw * g.c, row = 0, image = g.h * g.w * g.c;
    for (int n = 0; n < examples; n++)
        for (int oy = 0; oy < g.oh(); oy++)
            for (int ox = 0; ox < g.ow(); ox++, row++)
            {
                int at = 0;
                for (int group = 0; group < g.g; group++)
                    for (int ky = 0; ky < g.kh; ky++)
                    {
                        int iy = oy * g.s - g.p + ky;
                        for (int kx = 0; kx < g.kw; kx++, at += cg)
                        {
                            int ix = ox * g.s - g.p + kx;
                            for (int c = 0; c < cg; c++)
                                cols[(size_t)row * patch + at + c] = iy < 0 || iy >= g.h || ix < 0 || ix >= g.w ? 0.0f
                                    : x[(size_t)n * image + (iy * g.w + ix) * g.c + group * cg + c];
                        }
                    }
            }
}

static void col2im_reference(const std::vector<float>& cols, const Geometry& g, int examples, std::vector<float>& x, bool accumulate)
{
    if (!accumulate) std::fill(x.begin(), x.end(), 0.0f);
    int cg = g.c / g.g, patch = g.kh * g.kw * g.c, row = 0, image = g.h * g.w * g.c;
    for (int n = 0; n < examples; n++)
        for (int oy = 0; oy < g.oh(); oy++)
            for (int ox = 0; ox < g.ow(); ox++, row++)
            {
                int at = 0;
                for (int group = 0; group < g.g; group++)
                    for (int ky = 0; ky < g.kh; ky++)
                    {
                        int iy = oy * g.s - g.p + ky;
                        for (int kx = 0; kx < g.kw; kx++, at += cg)
                        {
                            int ix = ox * g.s - g.p + kx;
                            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                            for (int c = 0; c < cg; c++)
                            {
                                float& to = x[(size_t)n * image + (iy * g.w + ix) * g.c + group * cg + c];
                                to = to + cols[(size_t)row * patch + at + c];
                            }
                        }
                    }
            }
}

static void pool_reference(const std::vector<float>& x, const Geometry& g, int examples, std::vector<float>& max, std::vector<float>& argmax, std::vector<float>& avg)
{
    int c = g.c, image = g.h * g.w * c, out = g.oh() * g.ow() * c;
    float scale = 1.0f / (g.kh * g.kw);
    for (int n = 0; n < examples; n++)
        for (int oy = 0; oy < g.oh(); oy++)
            for (int ox = 0; ox < g.ow(); ox++)
                for (int j = 0; j < c; j++)
                {
                    size_t at = (size_t)n * out + (oy * g.ow() + ox) * c + j;
                    float best = -INFINITY, best_index = -1.0f, sum = 0.0f;
                    for (int ky = 0; ky < g.kh; ky++)
                    {
                        int iy = oy * g.s - g.p + ky;
                        if (iy < 0 || iy >= g.h) continue;
                        for (int kx = 0; kx < g.kw; kx++)
                        {
                            int ix = ox * g.s - g.p + kx;
                            if (ix < 0 || ix >= g.w) continue;
                            int pixel = (iy * g.w + ix) * c;
                            float v = x[(size_t)n * image + pixel + j];
                            if (v > best || best_index < 0) { best = v; best_index = (float)(pixel + j); }
                            sum = sum + v;
                        }
                    }
                    max[at] = best; argmax[at] = best_index; avg[at] = sum * scale;
                }
}

static void avg_pool_backward_reference(const std::vector<float>& dy, const Geometry& g, int examples, std::vector<float>& dx, bool accumulate)
{
    if (!accumulate) std::fill(dx.begin(), dx.end(), 0.0f);
    int c = g.c, image = g.h * g.w * c, out = g.oh() * g.ow() * c;
    float scale = 1.0f / (g.kh * g.kw);
    for (int n = 0; n < examples; n++)
        for (int oy = 0; oy < g.oh(); oy++)
            for (int ox = 0; ox < g.ow(); ox++)
                for (int ky = 0; ky < g.kh; ky++)
                {
                    int iy = oy * g.s - g.p + ky;
                    if (iy < 0 || iy >= g.h) continue;
                    for (int kx = 0; kx < g.kw; kx++)
                    {
                        int ix = ox * g.s - g.p + kx;
                        if (ix < 0 || ix >= g.w) continue;
                        for (int j = 0; j < c; j++)
                        {
                            float& to = dx[(size_t)n * image + (iy * g.w + ix) * c + j];
                            float product = dy[(size_t)n * out + (oy * g.ow() + ox) * c + j] * scale;
                            to = product + to;
                        }
                    }
                }
}

template <typename Kernel> static void run(unsigned blocks, unsigned threads, Kernel kernel) { launch(dim3s{blocks, 1, 1}, dim3s{threads, 1, 1}, kernel); }

static void check_conv(const Geometry& g, int examples)
{
    int patch = g.kh * g.kw * g.c, rows = examples * g.oh() * g.ow();
    auto x = normal((size_t)examples * g.h * g.w * g.c);
    std::vector<float> expected((size_t)rows * patch, 7.0f), actual(expected.size(), 7.0f);
    im2col_reference(x, g, examples, expected);
    run(3, 64, [&] { im2col(x.data(), actual.data(), g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.g, g.oh(), g.ow(), (long long)actual.size()); });
    compare(name("im2col", g, examples), expected, actual);

    auto cols = normal((size_t)rows * patch);
    for (int accumulate = 0; accumulate < 2; accumulate++)
    {
        auto start = normal(x.size());
        std::vector<float> image_expected = start, image_actual = start;
        col2im_reference(cols, g, examples, image_expected, accumulate);
        run(3, 64, [&] { col2im(cols.data(), image_actual.data(), g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.g, g.oh(), g.ow(), (long long)image_actual.size(), accumulate); });
        compare(name(accumulate ? "col2im (accumulate)" : "col2im", g, examples), image_expected, image_actual);
    }
}

static void check_pool(const Geometry& g, int examples)
{
    int out = g.oh() * g.ow() * g.c, image = g.h * g.w * g.c;
    for (int tied = 0; tied < 2; tied++)
    {
        auto x = tied ? ties((size_t)examples * image) : normal((size_t)examples * image);
        std::vector<float> max_e((size_t)examples * out), arg_e(max_e.size()), avg_e(max_e.size());
        std::vector<float> max_a(max_e.size(), 7.0f), arg_a(max_e.size(), 7.0f), avg_a(max_e.size(), 7.0f);
        pool_reference(x, g, examples, max_e, arg_e, avg_e);
        run(2, 64, [&] { max_pool(x.data(), max_a.data(), arg_a.data(), g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.oh(), g.ow(), (long long)max_a.size()); });
        float scale = 1.0f / (g.kh * g.kw);
        run(2, 64, [&] { avg_pool(x.data(), avg_a.data(), g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.oh(), g.ow(), scale, (long long)avg_a.size()); });
        compare(name(tied ? "max_pool values (ties)" : "max_pool values", g, examples), max_e, max_a);
        compare(name(tied ? "max_pool argmax (ties)" : "max_pool argmax", g, examples), arg_e, arg_a);
        compare(name("avg_pool", g, examples), avg_e, avg_a);

        // Gather and scatter-add with max pooling's indices over R = 3N channel copies.
        int copies = 3 * examples;
        auto source = normal((size_t)copies * image);
        std::vector<float> gathered_e((size_t)copies * out), gathered_a(gathered_e.size(), 7.0f);
        for (int r = 0; r < copies; r++)
            for (int j = 0; j < out; j++) gathered_e[(size_t)r * out + j] = source[(size_t)r * image + (int)arg_e[(size_t)(r % examples) * out + j]];
        run(2, 64, [&] { gather_columns(source.data(), arg_a.data(), gathered_a.data(), image, out, examples, (long long)gathered_a.size()); });
        compare(name("gather_columns", g, examples), gathered_e, gathered_a);

        auto values = normal((size_t)copies * out);
        for (int accumulate = 0; accumulate < 2; accumulate++)
        {
            auto start = normal((size_t)copies * image);
            std::vector<float> scattered_e = start, scattered_a = start;
            if (!accumulate) std::fill(scattered_e.begin(), scattered_e.end(), 0.0f);
            for (int r = 0; r < copies; r++)
                for (int j = 0; j < out; j++)
                {
                    float& to = scattered_e[(size_t)r * image + (int)arg_e[(size_t)(r % examples) * out + j]];
                    to = to + values[(size_t)r * out + j];
                }
            launch(dim3s{2, 1, 1}, dim3s{SCATTER_TILE, 1, 1}, [&] { scatter_add_columns(values.data(), arg_a.data(), scattered_a.data(), copies, out, image, examples, accumulate); });
            compare(name(accumulate ? "scatter_add_columns (accumulate)" : "scatter_add_columns", g, examples), scattered_e, scattered_a);
        }

        auto dy = normal((size_t)examples * out);
        for (int accumulate = 0; accumulate < 2; accumulate++)
        {
            auto start = normal((size_t)examples * image);
            std::vector<float> dx_e = start, dx_a = start;
            avg_pool_backward_reference(dy, g, examples, dx_e, accumulate);
            run(2, 64, [&] { avg_pool_backward(dy.data(), dx_a.data(), g.h, g.w, g.c, g.kh, g.kw, g.s, g.p, g.oh(), g.ow(), scale, (long long)dx_a.size(), accumulate); });
            compare(name(accumulate ? "avg_pool_backward (accumulate)" : "avg_pool_backward", g, examples), dx_e, dx_a);
        }
    }
}

// Scatter-add with indices that repeat inside one tile and across tiles, with a row longer than two tiles.
static void check_scatter_repeats()
{
    const int examples = 2, copies = 6, columns = 2 * SCATTER_TILE + 37, destination_columns = 50;
    std::uniform_int_distribution<int> d(0, destination_columns - 1);
    std::vector<float> indices((size_t)examples * columns);
    for (auto& v : indices) v = (float)d(random_engine);
    auto values = normal((size_t)copies * columns);
    auto start = normal((size_t)copies * destination_columns);
    for (int accumulate = 0; accumulate < 2; accumulate++)
    {
        std::vector<float> expected = start, actual = start;
        if (!accumulate) std::fill(expected.begin(), expected.end(), 0.0f);
        for (int r = 0; r < copies; r++)
            for (int j = 0; j < columns; j++)
            {
                float& to = expected[(size_t)r * destination_columns + (int)indices[(size_t)(r % examples) * columns + j]];
                to = to + values[(size_t)r * columns + j];
            }
        launch(dim3s{4, 1, 1}, dim3s{SCATTER_TILE, 1, 1}, [&] { scatter_add_columns(values.data(), indices.data(), actual.data(), copies, columns, destination_columns, examples, accumulate); });
        compare(accumulate ? "scatter_add_columns, many repeats (accumulate)" : "scatter_add_columns, many repeats", expected, actual);
    }
}

static void check_normalisation()
{
    const int rows = 7, columns = 5;
    auto a = normal(rows * columns), scale = normal(columns), start = normal(rows * columns);
    for (int accumulate = 0; accumulate < 2; accumulate++)
    {
        std::vector<float> expected = start, actual = start;
        for (int i = 0; i < rows * columns; i++) expected[i] = accumulate ? std::fma(a[i], scale[i % columns], start[i]) : a[i] * scale[i % columns];
        run(1, 8, [&] { scale_columns(a.data(), scale.data(), actual.data(), columns, rows * columns, accumulate); });
        compare(accumulate ? "scale_columns (accumulate)" : "scale_columns", expected, actual);
    }
    auto variance = normal(100);
    for (auto& v : variance) v = v * v;
    std::vector<float> expected(100), actual(100);
    for (int i = 0; i < 100; i++) expected[i] = 1.0f / std::sqrt(variance[i] + 1e-5f);
    run(1, 8, [&] { reciprocal_sqrt(variance.data(), 1e-5f, actual.data(), 100); });
    compare("reciprocal_sqrt", expected, actual);
}

int main()
{
    const Geometry convolutions[] = {
        {7, 5, 4, 3, 3, 1, 1, 1}, {7, 5, 4, 3, 3, 2, 1, 2}, {7, 5, 4, 3, 3, 1, 2, 4}, {7, 5, 4, 1, 1, 1, 0, 1},
        {7, 5, 4, 1, 1, 2, 2, 2}, {7, 5, 4, 2, 3, 2, 0, 4}, {6, 6, 6, 2, 3, 1, 1, 3}, {5, 7, 2, 3, 2, 2, 2, 1},
        {8, 8, 3, 3, 3, 2, 0, 3}, {1, 1, 2, 1, 1, 1, 0, 1}, {4, 9, 4, 3, 3, 3, 1, 2},
    };
    for (auto& g : convolutions)
        for (int examples : {1, 3}) check_conv(g, examples);
    // Pooling: padding at most half the kernel (PyTorch's rule), overlapping (stride < kernel) and tiling windows.
    const Geometry pools[] = {
        {7, 5, 3, 3, 3, 1, 1, 1}, {7, 5, 3, 3, 3, 2, 1, 1}, {7, 5, 3, 2, 2, 2, 0, 1}, {7, 5, 3, 2, 3, 1, 1, 1},
        {6, 6, 4, 3, 2, 2, 1, 1}, {7, 5, 3, 1, 1, 1, 0, 1}, {8, 8, 2, 5, 5, 2, 2, 1},
    };
    for (auto& g : pools)
        for (int examples : {1, 2}) check_pool(g, examples);
    check_scatter_repeats();
    check_normalisation();
    std::printf(failures == 0 ? "conv kernels: every geometry matches the CPU loops bit for bit\n" : "conv kernels: %d checks differ\n", failures);
    return failures == 0 ? 0 : 1;
}
