// Convolution and pooling over channels-last images [N, H, W, C] (issue 12): im2col and its adjoint col2im, max and
// average pooling and the adjoint of the average, and the gather / scatter-add by index that carry max pooling's JVP
// and VJP. The contracts are Backend.Im2Col … Backend.ScatterAddColumns; the reference is CpuBackend.
//
// Bits: every kernel here gives the CPU backend's bits. Where an output is a sum (col2im, average pooling and its
// adjoint, scatter-add), one thread owns the output and adds its terms in the order the CPU loops reach them, starting
// from the same value (0, or the destination when accumulating): no atomics, so the sums are also the same run to run.
// __fadd_rn / __fmul_rn are never contracted into a fused multiply-add, whatever the compiler's flags: the CPU's
// TensorPrimitives.Add and .MultiplyAdd round the product and the sum separately.
//
// Indices are 32-bit (see common.cuh): every size is a View's length, an int. Geometry arrives as ints, the output
// sizes computed by the host (ConvGeometry/PoolGeometry.OutputHeight/Width), so both backends use the same ones.
#include "common.cuh"

// columns[row, at] for row = (n, oy, ox) and at = (g, ky, kx, c): x[n, oy·s − p + ky, ox·s − p + kx, g·C/G + c], or 0
// outside the image. One thread per element of the columns matrix: consecutive threads read consecutive channels of
// one pixel (coalesced) and write consecutive floats of a row.
extern "C" __global__ void im2col(const float* images, float* columns, int height, int width, int channels,
                                  int kernel_height, int kernel_width, int stride, int padding, int groups,
                                  int output_height, int output_width, long long total)
{
    const u32 count = (u32)total, group_channels = (u32)(channels / groups), kw = (u32)kernel_width;
    const u32 group_patch = (u32)kernel_height * kw * group_channels, patch = group_patch * (u32)groups;
    const u32 positions = (u32)output_height * (u32)output_width, image_size = (u32)height * (u32)width * (u32)channels;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 row = i / patch, at = i - row * patch;
        const u32 group = at / group_patch, within = at - group * group_patch;
        const u32 tap = within / group_channels, c = within - tap * group_channels;
        const u32 ky = tap / kw, kx = tap - ky * kw;
        const u32 n = row / positions, position = row - n * positions;
        const u32 oy = position / (u32)output_width, ox = position - oy * (u32)output_width;
        const int iy = (int)(oy * (u32)stride) - padding + (int)ky, ix = (int)(ox * (u32)stride) - padding + (int)kx;
        columns[i] = iy < 0 || iy >= height || ix < 0 || ix >= width ? 0.0f
            : images[n * image_size + ((u32)iy * (u32)width + (u32)ix) * (u32)channels + group * group_channels + c];
    }
}

// The output positions o whose window covers input coordinate i along one axis: o·s − p + k = i for a tap
// 0 ≤ k < kernel, i.e. (i + p − kernel + 1)/s ≤ o ≤ (i + p)/s, clipped to [0, outputs). Empty when first > last.
__device__ __forceinline__ void covering_outputs(int i, int padding, int kernel, int stride, int outputs, int* first, int* last)
{
    const int lowest = i + padding - kernel + 1; // o·s ≥ lowest
    *first = lowest <= 0 ? 0 : (lowest + stride - 1) / stride;
    const int highest = (i + padding) / stride; // i + padding ≥ 0
    *last = highest < outputs - 1 ? highest : outputs - 1;
}

// col2im as a gather: one thread per input element x[n, iy, ix, g·C/G + c] adds, for the output positions (oy, ox)
// whose windows cover it in increasing oy then ox (the order CpuBackend.Col2Im's row loop reaches them), the one
// column entry of each that was read from it, tap ky = iy + p − oy·s, kx = ix + p − ox·s.
extern "C" __global__ void col2im(const float* columns, float* images, int height, int width, int channels,
                                  int kernel_height, int kernel_width, int stride, int padding, int groups,
                                  int output_height, int output_width, long long total, int accumulate)
{
    const u32 count = (u32)total, group_channels = (u32)(channels / groups), kw = (u32)kernel_width;
    const u32 group_patch = (u32)kernel_height * kw * group_channels, patch = group_patch * (u32)groups;
    const u32 positions = (u32)output_height * (u32)output_width, image_size = (u32)height * (u32)width * (u32)channels;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 n = i / image_size, within = i - n * image_size;
        const u32 pixel = within / (u32)channels, channel = within - pixel * (u32)channels;
        const u32 iy = pixel / (u32)width, ix = pixel - iy * (u32)width;
        const u32 group = channel / group_channels, c = channel - group * group_channels;
        int oy_first, oy_last, ox_first, ox_last;
        covering_outputs((int)iy, padding, kernel_height, stride, output_height, &oy_first, &oy_last);
        covering_outputs((int)ix, padding, kernel_width, stride, output_width, &ox_first, &ox_last);
        float sum = accumulate ? images[i] : 0.0f;
        for (int oy = oy_first; oy <= oy_last; oy++)
        {
            const u32 ky = (u32)((int)iy + padding - oy * stride);
            for (int ox = ox_first; ox <= ox_last; ox++)
            {
                const u32 kx = (u32)((int)ix + padding - ox * stride);
                const u32 row = n * positions + (u32)oy * (u32)output_width + (u32)ox;
                sum = __fadd_rn(sum, columns[row * patch + group * group_patch + (ky * kw + kx) * group_channels + c]);
            }
        }
        images[i] = sum;
    }
}

// Max pooling, one thread per output element: the window's taps in order (ky, then kx), padded taps skipped; a tap
// replaces the best so far when strictly greater (or when none was taken yet), so the first maximum in window order
// wins, as on the CPU. argmax = that tap's index within the example, y·W·C + x·C + c, as a float (exact below 2^24).
extern "C" __global__ void max_pool(const float* images, float* output, float* argmax, int height, int width, int channels,
                                    int kernel_height, int kernel_width, int stride, int padding,
                                    int output_height, int output_width, long long total)
{
    const u32 count = (u32)total, c = (u32)channels;
    const u32 output_size = (u32)output_height * (u32)output_width * c, image_size = (u32)height * (u32)width * c;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 n = i / output_size, within = i - n * output_size;
        const u32 position = within / c, channel = within - position * c;
        const u32 oy = position / (u32)output_width, ox = position - oy * (u32)output_width;
        const float* image = images + n * image_size;
        float best = __uint_as_float(0xFF800000u); // −∞
        int best_index = -1;
        for (int ky = 0; ky < kernel_height; ky++)
        {
            const int iy = (int)oy * stride - padding + ky;
            if (iy < 0 || iy >= height) continue;
            for (int kx = 0; kx < kernel_width; kx++)
            {
                const int ix = (int)ox * stride - padding + kx;
                if (ix < 0 || ix >= width) continue;
                const int at = (iy * width + ix) * channels + (int)channel;
                const float value = image[at];
                if (value > best || best_index < 0) { best = value; best_index = at; }
            }
        }
        output[i] = best;
        argmax[i] = (float)best_index;
    }
}

// Average pooling (padding counted as zeros), one thread per output element: 0 + the window's in-image taps in order
// (ky, then kx), then × scale = 1/(kh·kw) computed by the host as the CPU computes it.
extern "C" __global__ void avg_pool(const float* images, float* output, int height, int width, int channels,
                                    int kernel_height, int kernel_width, int stride, int padding,
                                    int output_height, int output_width, float scale, long long total)
{
    const u32 count = (u32)total, c = (u32)channels;
    const u32 output_size = (u32)output_height * (u32)output_width * c, image_size = (u32)height * (u32)width * c;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 n = i / output_size, within = i - n * output_size;
        const u32 position = within / c, channel = within - position * c;
        const u32 oy = position / (u32)output_width, ox = position - oy * (u32)output_width;
        const float* image = images + n * image_size;
        float sum = 0.0f;
        for (int ky = 0; ky < kernel_height; ky++)
        {
            const int iy = (int)oy * stride - padding + ky;
            if (iy < 0 || iy >= height) continue;
            for (int kx = 0; kx < kernel_width; kx++)
            {
                const int ix = (int)ox * stride - padding + kx;
                if (ix >= 0 && ix < width) sum = __fadd_rn(sum, image[(iy * width + ix) * channels + (int)channel]);
            }
        }
        output[i] = __fmul_rn(sum, scale);
    }
}

// The adjoint of avg_pool as a gather: one thread per input element adds dy·scale of every output whose window covers
// it, in increasing oy then ox (CpuBackend.AvgPoolBackward's order), each product rounded before the sum as
// TensorPrimitives.MultiplyAdd does.
extern "C" __global__ void avg_pool_backward(const float* output, float* images, int height, int width, int channels,
                                             int kernel_height, int kernel_width, int stride, int padding,
                                             int output_height, int output_width, float scale, long long total, int accumulate)
{
    const u32 count = (u32)total, c = (u32)channels;
    const u32 output_size = (u32)output_height * (u32)output_width * c, image_size = (u32)height * (u32)width * c;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 n = i / image_size, within = i - n * image_size;
        const u32 pixel = within / c, channel = within - pixel * c;
        const u32 iy = pixel / (u32)width, ix = pixel - iy * (u32)width;
        int oy_first, oy_last, ox_first, ox_last;
        covering_outputs((int)iy, padding, kernel_height, stride, output_height, &oy_first, &oy_last);
        covering_outputs((int)ix, padding, kernel_width, stride, output_width, &ox_first, &ox_last);
        const float* dy = output + n * output_size + channel;
        float sum = accumulate ? images[i] : 0.0f;
        for (int oy = oy_first; oy <= oy_last; oy++)
            for (int ox = ox_first; ox <= ox_last; ox++)
                sum = __fadd_rn(__fmul_rn(dy[((u32)oy * (u32)output_width + (u32)ox) * c], scale), sum);
        images[i] = sum;
    }
}

// destination[r, j] = source[r, indices[r mod N, j]]: the JVP of max pooling, one thread per destination element.
extern "C" __global__ void gather_columns(const float* source, const float* indices, float* destination,
                                          long long source_columns, long long columns, long long examples, long long total)
{
    const u32 count = (u32)total, width = (u32)columns, source_width = (u32)source_columns, index_rows = (u32)examples;
    for (u32 i = global_index32(); i < count; i += grid_stride32())
    {
        const u32 r = i / width, j = i - r * width;
        destination[i] = source[r * source_width + (u32)(int)indices[(r % index_rows) * width + j]];
    }
}

// destination[r, indices[r mod N, j]] += source[r, j] (the VJP of max pooling), deterministically and in the CPU's
// order. Indices may repeat within a row (overlapping windows share a maximum), so a thread per source element with
// atomics would add in a timing-dependent order. Instead one block of SCATTER_TILE threads owns a destination row
// (grid-stride over rows) and walks its source row in tiles of SCATTER_TILE columns, one tile after another: in a
// tile, the thread holding the first occurrence of an index (the leader) adds every value of the tile with that index,
// in column order, to the destination element — the order CpuBackend.ScatterAddColumns adds them (j increasing).
// Cost per tile: O(SCATTER_TILE) comparisons in shared memory per thread; the rows run in parallel.
#define SCATTER_TILE 128
extern "C" __global__ void scatter_add_columns(const float* source, const float* indices, float* destination,
                                               long long rows, long long columns, long long destination_columns,
                                               long long examples, int accumulate)
{
    __shared__ int tile_index[SCATTER_TILE];
    __shared__ float tile_value[SCATTER_TILE];
    const u32 height = (u32)rows, width = (u32)columns, target_width = (u32)destination_columns, index_rows = (u32)examples;
    const u32 t = threadIdx.x;
    for (u32 r = blockIdx.x; r < height; r += gridDim.x)
    {
        float* target = destination + r * target_width;
        const float* values = source + r * width;
        const float* row_indices = indices + (r % index_rows) * width;
        if (!accumulate)
            for (u32 d = t; d < target_width; d += SCATTER_TILE) target[d] = 0.0f;
        for (u32 start = 0; start < width; start += SCATTER_TILE)
        {
            __syncthreads(); // the zeroing, or the previous tile's adds and reads of the shared tile, are done
            const u32 j = start + t, in_tile = width - start < SCATTER_TILE ? width - start : SCATTER_TILE;
            tile_index[t] = j < width ? (int)row_indices[j] : -1;
            tile_value[t] = j < width ? values[j] : 0.0f;
            __syncthreads();
            if (t < in_tile)
            {
                const int mine = tile_index[t];
                bool leader = true;
                for (u32 u = 0; u < t; u++) leader = leader && tile_index[u] != mine;
                if (leader)
                {
                    float sum = target[mine];
                    for (u32 u = t; u < in_tile; u++)
                        if (tile_index[u] == mine) sum = __fadd_rn(sum, tile_value[u]);
                    target[mine] = sum;
                }
            }
        }
        __syncthreads(); // this row's adds are done before the block moves on (and reuses the shared tile)
    }
}
