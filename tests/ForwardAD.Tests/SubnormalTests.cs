using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>Values that x86 would multiply through slow microcode assists (subnormals) never leave the softmax kernels or
/// GELU: they are flushed to 0 (their magnitude is below 1.2e-38, invisible next to any other probability).</summary>
public class SubnormalTests
{
    private static bool Subnormal(float v) => v != 0 && MathF.Abs(v) < 1.17549435e-38f;

    [Fact]
    public void Softmax_cross_entropy_errors_hold_no_subnormals()
    {
        var backend = new CpuBackend();
        // exp(−100) ≈ 3.7e-44 and exp(−90) ≈ 8.2e-40 are subnormal in float32; exp(−50) is not.
        var logits = new[] { 0f, -100f, -90f, -50f };
        var (z, y, loss, error) = (View(backend, logits), View(backend, [0f]), View(backend, new float[1]), View(backend, new float[4]));
        backend.SoftmaxCrossEntropy(z, y, 4, loss, error);
        var e = error.ToArray();
        Assert.DoesNotContain(e, Subnormal);
        Assert.Equal(0f, e[1]);
        Assert.Equal(0f, e[2]);
        Assert.True(e[3] > 0f); // a small but normal probability survives
    }

    [Fact]
    public void Gelu_tails_are_exact_zeros_and_ones()
    {
        var x = new[] { -40f, -13.5f, -12.5f, -11.9f, 11.9f, 12.5f, 40f };
        var y = new float[x.Length];
        var d = new float[x.Length];
        ElementwiseFunction.Gelu.Apply(x, y);
        ElementwiseFunction.Gelu.Differentiate(x, y, d);
        Assert.DoesNotContain(y, Subnormal);
        Assert.DoesNotContain(d, Subnormal);
        Assert.Equal([0f, 0f, 0f], y[..3].Select(v => v + 0f)); // −0 and 0 alike
        Assert.Equal([12.5f, 40f], y[^2..]);
        Assert.Equal([0f, 0f, 1f, 1f], new[] { d[0], d[1], d[^2], d[^1] });
    }

    private static View View(Backend backend, float[] values)
    {
        var view = new View(backend.Allocate(values.Length), 0, values.Length);
        backend.CopyFromHost(values, view);
        return view;
    }
}
