using ForwardAD.Backends;
using ForwardAD.Cuda;

namespace ForwardAD.Cuda.Tests;

/// <summary>
/// One CUDA backend for the whole test run, or the reason there is none. Without a device every test skips with that
/// reason (CI has no GPU); with <c>FORWARDAD_REQUIRE_CUDA=1</c> every test fails with it instead, so that a GPU run
/// whose initialisation broke (driver, cuBLAS, NVRTC compilation of the kernels) cannot look green.
/// </summary>
public sealed class CudaFixture : IDisposable
{
    public const string RequireVariable = "FORWARDAD_REQUIRE_CUDA";

    public CudaFixture() : this(CudaBackend.TryCreate(out var reason), reason, Environment.GetEnvironmentVariable(RequireVariable)) { }

    /// <summary>The decision without the machine: the backend (or null), why it is missing, and the variable's value.</summary>
    internal CudaFixture(CudaBackend? backend, string reason, string? requireCuda)
    {
        Backend = backend;
        Reason = reason;
        WhenMissing = MissingDevice.Decide(reason, requireCuda);
    }

    public CudaBackend? Backend { get; }
    public string Reason { get; }
    /// <summary>What a test does when <see cref="Backend"/> is null: skip, or fail, and with which message.</summary>
    internal MissingDevice WhenMissing { get; }

    /// <summary>The backend; without one, skips the calling test with the reason, or fails it when CUDA is required.</summary>
    public CudaBackend Require()
    {
        if (Backend is not null) return Backend;
        if (WhenMissing.Fails) Assert.Fail(WhenMissing.Message);
        Assert.Skip(WhenMissing.Message);
        return null!; // not reached: Assert.Skip throws
    }

    public void Dispose() => Backend?.Dispose();
}

/// <summary>Skip or fail when no CUDA backend could be opened, and the message that says why.</summary>
internal readonly record struct MissingDevice(bool Fails, string Message)
{
    /// <summary>Unset, empty, 0 or false: skip. 1 or true: fail. Anything else fails too (a typo must not hide a
    /// broken GPU run), naming the value.</summary>
    public static MissingDevice Decide(string reason, string? requireCuda) => requireCuda?.Trim().ToLowerInvariant() switch
    {
        null or "" or "0" or "false" => new(false, $"No usable CUDA device, so the CUDA tests skip: {reason} (set {CudaFixture.RequireVariable}=1 to make this a failure)"),
        "1" or "true" => new(true, $"{CudaFixture.RequireVariable}=1, but the CUDA backend could not be opened: {reason}"),
        _ => new(true, $"{CudaFixture.RequireVariable} must be 1 (fail without a usable GPU) or 0/unset (skip), not '{requireCuda}'; the CUDA backend could not be opened: {reason}"),
    };
}

internal static class Host
{
    public static float[] ToArray(this View view)
    {
        var result = new float[view.Length];
        view.Buffer!.Backend.CopyToHost(view, result);
        return result;
    }

    public static View Upload(this Backend backend, float[] values)
    {
        var view = new View(backend.Allocate(values.Length));
        backend.CopyFromHost(values, view);
        return view;
    }

    public static float[] Normal(int seed, int n)
    {
        var values = new float[n];
        ForwardAD.Random.RandomFill.Normal(new ForwardAD.Random.RandomKey((ulong)seed, 3), 0, 0f, 1f, values);
        return values;
    }

    public static void Close(float[] expected, float[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (Math.Abs(expected[i] - actual[i]) > tolerance * (1 + Math.Abs(expected[i])))
                Assert.Fail($"{what}[{i}]: CPU {expected[i]:G9}, CUDA {actual[i]:G9} (tolerance {tolerance} relative)");
    }
}
