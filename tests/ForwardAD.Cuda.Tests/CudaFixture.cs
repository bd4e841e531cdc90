using ForwardAD.Backends;
using ForwardAD.Cuda;

namespace ForwardAD.Cuda.Tests;

/// <summary>One CUDA backend for the whole test run, or the reason there is none (every test then skips with it).</summary>
public sealed class CudaFixture : IDisposable
{
    public CudaFixture()
    {
        Backend = CudaBackend.TryCreate(out var reason);
        Reason = reason;
    }

    public CudaBackend? Backend { get; }
    public string Reason { get; }

    /// <summary>The backend; skips the calling test with the reason when no CUDA driver or device is usable.</summary>
    public CudaBackend Require()
    {
        if (Backend is null) Assert.Skip($"No usable CUDA device, so the CUDA tests skip: {Reason}");
        return Backend!;
    }

    public void Dispose() => Backend?.Dispose();
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
