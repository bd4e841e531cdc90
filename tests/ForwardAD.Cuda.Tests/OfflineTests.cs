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
            "reduce_sum", "normalize_rows", "row_cosines", "axpby", "moving_average_of_squares", "adam_direction" };
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
    public void Without_a_driver_the_backend_says_why()
    {
        var backend = CudaBackend.TryCreate(out var reason);
        if (backend is not null) { backend.Dispose(); return; }
        Assert.False(string.IsNullOrWhiteSpace(reason));
    }
}
