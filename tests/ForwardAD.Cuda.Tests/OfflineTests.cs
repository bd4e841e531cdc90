using ForwardAD.Cuda;

namespace ForwardAD.Cuda.Tests;

/// <summary>What can be checked without a GPU: the embedded kernel sources and their entry points.</summary>
public class OfflineTests
{
    [Fact]
    public void Every_kernel_the_backend_launches_is_defined_in_the_embedded_sources()
    {
        var defined = KernelLibrary.Families.SelectMany(f => KernelLibrary.KernelNames(KernelLibrary.Source(f))).ToHashSet();
        var launched = new[] { "fill", "copy", "scale", "add", "multiply_channels", "add_bias", "sum_rows", "row_dot", "scale_rows",
            "activation_forward", "activation_backward", "softmax_cross_entropy", "squared_error", "fill_normal", "fill_uniform",
            "reduce_sum", "normalize_rows", "row_cosines", "axpby", "moving_average_of_squares", "adam_direction",
            "scale_columns", "reciprocal_sqrt", "im2col", "col2im", "max_pool", "avg_pool", "avg_pool_backward", "gather_columns", "scatter_add_columns" };
        Assert.Empty(launched.Except(defined));
        Assert.Contains("philox_block", KernelLibrary.Source("common.cuh"));
    }

    [Fact]
    public void Kernels_are_compiled_without_fused_multiply_add_contraction()
    {
        // The CPU never contracts a*b + c; the GPU must not either, or its random numbers differ in the last bit.
        Assert.Contains("--fmad=false", KernelLibrary.CompileOptions(9, 0));
        Assert.Contains("--gpu-architecture=sm_90", KernelLibrary.CompileOptions(9, 0));
    }

    [Fact]
    public void The_sum_rows_launch_uses_the_kernels_tile()
    {
        // The kernel indexes shared memory and columns by SUM_ROWS_TILE; the launch shape comes from CudaBackend.SumRowsTile.
        Assert.Contains($"#define SUM_ROWS_TILE {CudaBackend.SumRowsTile}\n", KernelLibrary.Source("reduce").ReplaceLineEndings("\n"));
        Assert.True(CudaBackend.SumRowsTile * CudaBackend.SumRowsTile <= 1024, "a CUDA block has at most 1024 threads");
    }

    [Fact]
    public void The_scatter_add_launch_uses_the_kernels_tile()
    {
        // scatter_add_columns sizes its shared tile and walks its row by SCATTER_TILE; the launch's block is CudaBackend.ScatterTile.
        Assert.Contains($"#define SCATTER_TILE {CudaBackend.ScatterTile}\n", KernelLibrary.Source("conv").ReplaceLineEndings("\n"));
        Assert.True(CudaBackend.ScatterTile <= 1024, "a CUDA block has at most 1024 threads");
    }

    [Fact]
    public void The_convolution_kernels_sum_without_atomics()
    {
        // Deterministic, in the CPU's order: col2im, the pooling adjoints and the scatter gather their terms (conv.cu's header).
        Assert.DoesNotMatch(@"atomic\w*\s*\(", KernelLibrary.Source("conv"));
    }

    [Fact]
    public void Kernels_with_division_or_modulo_use_32_bit_indices()
    {
        // A 64-bit division or modulo is a long software routine on the GPU; these kernels index with u32 (sizes are ints).
        foreach (var (family, kernel) in new[] { ("elementwise", "multiply_channels"), ("elementwise", "add_bias"), ("reduce", "row_dot"), ("reduce", "scale_rows"),
            ("reduce", "scale_columns"), ("conv", "im2col"), ("conv", "col2im"), ("conv", "max_pool"), ("conv", "avg_pool"), ("conv", "avg_pool_backward"),
            ("conv", "gather_columns") })
        {
            var source = KernelLibrary.Source(family);
            int start = source.IndexOf($"void {kernel}(", StringComparison.Ordinal), end = source.IndexOf("\n}", start, StringComparison.Ordinal);
            var body = source[start..end];
            Assert.Contains("global_index32()", body);
            Assert.DoesNotContain("long long i", body);
        }
    }

    [Fact]
    public void Without_a_driver_the_backend_says_why()
    {
        var backend = CudaBackend.TryCreate(out var reason);
        if (backend is not null) { backend.Dispose(); return; }
        Assert.False(string.IsNullOrWhiteSpace(reason));
    }
}
