using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Optim;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// Sizes that cannot work fail early with a clear error (issue 10, item 4): before anything is allocated, never as an
/// OverflowException, a negative length or a machine that swaps. Also item 8 and the clipping norm.
/// </summary>
public class MemoryTests
{
    [Fact]
    public void A_shape_over_int_max_elements_is_refused_when_it_is_made()
    {
        var error = Assert.Throws<ArgumentException>(() => new Shape(1 << 20, 1 << 12));
        Assert.Contains("more than 2,147,483,647 elements", error.Message);
        // Through the builder: a layer of 10⁶ × 10⁶ weights.
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(1_000_000), differentiable: false);
        Assert.Throws<ArgumentException>(() => builder.Dense("huge", x, 1_000_000, ElementwiseFunction.Relu));
    }

    [Fact]
    public void A_model_over_int_max_parameters_is_refused_by_the_store()
    {
        // Four 40000 × 40000 weight matrices: each fits a tensor, together 6.4·10⁹ floats do not fit one store.
        var model = MlpSpec.Uniform(64, 5, 40_000, 10, ElementwiseFunction.Relu).Build();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = Assert.Throws<ArgumentException>(() => ParameterStore.Initialize(model, new CpuBackend(), 1));
        Assert.Contains("parameters", error.Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20, "nothing large was allocated before the error");
    }

    [Fact]
    public void A_buffer_over_int_max_floats_is_refused_naming_the_node()
    {
        var store = ParameterStore.Initialize(new MlpSpec(64, [30_000], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        var error = Assert.Throws<ArgumentException>(() => Plan.Compile(store, new PlanOptions(100_000)));
        Assert.Contains("'layer1'", error.Message);
        Assert.Contains("smaller batch size", error.Message);
    }

    [Fact]
    public void A_plan_larger_than_the_memory_is_refused_before_allocating()
    {
        // Batch 60000 × width 30000: 1.8·10⁹ floats (7.2 GB) per activation; values, saved derivatives and cotangents
        // of the hidden layer need about 36 GB (the parameters are only 2.2 million floats).
        var store = ParameterStore.Initialize(new MlpSpec(64, [30_000], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = Assert.Throws<ArgumentException>(() => Plan.Compile(store, new PlanOptions(60_000) { Gradients = true }));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20, "nothing large was allocated before the error");
        Assert.Contains("GiB", error.Message);
        Assert.Contains("batch 60000", error.Message);
    }

    [Fact]
    public void Copying_parameters_between_different_models_of_equal_size_is_refused()
    {
        // 3→[4]→2 and 5→[3]→2 both have 26 parameters.
        var a = ParameterStore.Initialize(new MlpSpec(3, [4], 2, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        var b = ParameterStore.Initialize(new MlpSpec(5, [3], 2, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
        Assert.Equal(a.All.Length, b.All.Length);
        Assert.Contains("different model", Assert.Throws<ArgumentException>(() => a.CopyFrom(b)).Message);
        // The same architecture built twice is the same model for copying.
        var c = ParameterStore.Initialize(new MlpSpec(3, [4], 2, ElementwiseFunction.Tanh).Build(), new CpuBackend(), 2);
        a.CopyFrom(c);
        Assert.Equal(c.All.ToArray(), a.All.ToArray());
    }

    [Theory]
    [InlineData(-1f)]
    [InlineData(0f)]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void The_clipping_norm_must_be_positive_and_finite(float norm) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new ClipByGlobalNorm(norm));
}
