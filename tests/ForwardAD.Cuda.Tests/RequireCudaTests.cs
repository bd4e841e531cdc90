using Xunit.Sdk;

namespace ForwardAD.Cuda.Tests;

/// <summary>FORWARDAD_REQUIRE_CUDA=1 turns "no usable CUDA device" from a skip into a failure, so that a broken GPU run
/// cannot look green. The fixture is given the backend, the reason and the variable's value, so the decision is
/// checked here, on a machine without a driver, exactly as it is taken on the GPU machine. (The skip itself is not
/// asserted through Require: xunit marks a test skipped as soon as Assert.Skip runs, even inside Assert.Throws.)</summary>
public class RequireCudaTests
{
    private const string Reason = "no CUDA driver: none of libcuda.so.1 could be loaded";

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("0")]
    public void Without_the_variable_a_missing_device_skips_with_the_reason(string? requireCuda)
    {
        using var fixture = new CudaFixture(null, Reason, requireCuda);
        Assert.False(fixture.WhenMissing.Fails);
        Assert.Contains(Reason, fixture.WhenMissing.Message);
    }

    [Theory]
    [InlineData("1")]
    [InlineData("true")]
    public void With_FORWARDAD_REQUIRE_CUDA_a_missing_device_fails_with_the_initialisation_error(string requireCuda)
    {
        using var fixture = new CudaFixture(null, Reason, requireCuda);
        Assert.True(fixture.WhenMissing.Fails);
        var failure = Assert.Throws<FailException>(() => fixture.Require());
        Assert.Contains(Reason, failure.Message);
        Assert.Contains("FORWARDAD_REQUIRE_CUDA", failure.Message);
    }

    [Fact]
    public void An_unrecognised_value_fails_rather_than_silently_skipping()
    {
        using var fixture = new CudaFixture(null, Reason, "yes");
        Assert.True(fixture.WhenMissing.Fails);
        var failure = Assert.Throws<FailException>(() => fixture.Require());
        Assert.Contains("'yes'", failure.Message);
        Assert.Contains(Reason, failure.Message);
    }
}
