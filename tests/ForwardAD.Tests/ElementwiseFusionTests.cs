using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>A forward pass that saves the derivative computes y = f(x) and f'(x) in one call (GELU shares Φ(x)); the result
/// is the same bits as the two separate calls, for every function, on the vector path and the scalar tail, and on the CPU
/// backend split over 1 and 3 threads.</summary>
public sealed class ElementwiseFusionTests
{
    public static TheoryData<string> Functions => ["relu", "tanh", "gelu", "gelu_tanh", "identity"];

    [Theory]
    [MemberData(nameof(Functions))]
    public void Value_and_derivative_together_are_the_bits_of_the_separate_calls(string name)
    {
        var function = ElementwiseFunction.Parse(name);
        // Normal values, the tails beyond |x| = 12 and zeros; a length with a scalar tail and above the parallel threshold.
        var x = Problem.Normal(9, 200_003, 4f);
        x[0] = 0f; x[1] = -13f; x[2] = 13f; x[3] = -0f; x[4] = float.NaN; x[5] = float.NegativeInfinity; x[6] = float.PositiveInfinity;
        x[7] = BitConverter.Int32BitsToSingle(unchecked((int)0xFFC00001)); // a NaN with another payload and the sign set
        var y = new float[x.Length];
        var derivative = new float[x.Length];
        function.Apply(x, y);
        function.Differentiate(x, y, derivative);
        foreach (int threads in new[] { 1, 3 })
        {
            var backend = new CpuBackend { Threads = threads };
            View Make(float[] values) { var v = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, v); return v; }
            var (input, output, saved) = (Make(x), Make(new float[x.Length]), Make(new float[x.Length]));
            backend.ElementwiseWithDerivative(function, input, output, saved);
            Assert.True(Bits.Same(y, CpuBackend.Span(output)), $"{name}: values differ at {threads} threads");
            Assert.True(Bits.Same(derivative, CpuBackend.Span(saved)), $"{name}: derivatives differ at {threads} threads");
            backend.ElementwiseDerivative(function, input, output, saved);
            Assert.True(Bits.Same(derivative, CpuBackend.Span(saved)), $"{name}: the split derivative differs at {threads} threads");
        }
    }
}
