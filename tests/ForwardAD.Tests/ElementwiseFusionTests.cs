using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>A forward pass that saves the derivative computes y = f(x) and f'(x) in one call (GELU shares Φ(x)); the result
/// is the same bits as the two separate calls, for every function, on the vector path and the scalar tail, and on the CPU
/// backend split over 1 and 3 threads.</summary>
public sealed class ElementwiseFusionTests
{
    public static TheoryData<string> Functions => ["relu", "tanh", "gelu", "gelu_tanh", "identity"];

    /// <summary>Every element gets the bits it gets alone (a one-element call takes the scalar path): the vector kernels
    /// run the scalar operations per lane, whatever the length, block boundary or tail (GELU's blocked passes included),
    /// for values, derivatives and both together, at specials (±0, ±∞, NaN, the |x| = 12 cut, subnormals) and normals. A NaN
    /// result only has to be a NaN (x86 passes on the payload of whichever operand comes first, which the vector and scalar
    /// forms order differently). Not tanh: it is TensorPrimitives', whose narrower vector forms differ from its scalar one by
    /// an ulp on spans shorter than eight.</summary>
    [Theory]
    [InlineData("relu")]
    [InlineData("gelu")]
    [InlineData("gelu_tanh")]
    [InlineData("identity")]
    public void Every_element_gets_the_bits_it_gets_alone(string name)
    {
        var function = ElementwiseFunction.Parse(name);
        float[] specials = [0f, -0f, 12f, -12f, 12.000001f, -12.000001f, float.NaN, float.PositiveInfinity, float.NegativeInfinity,
            float.Epsilon, -float.Epsilon, 1e-40f, float.MaxValue, float.MinValue, 9.5f, -9.5f, 1e-8f];
        foreach (int length in new[] { 7, 8, 9, 16, 24, 255, 256, 257, 263, 512 + 24 + 5, 3000 })
        {
            var x = Problem.Normal(length, length, 3f);
            for (int i = 0; i < specials.Length && i < length; i++) x[(i * 37) % length] = specials[i];
            var (y, derivative, together, togetherDerivative) = (new float[length], new float[length], new float[length], new float[length]);
            function.Apply(x, y);
            function.Differentiate(x, y, derivative);
            function.ApplyWithDerivative(x, together, togetherDerivative);
            for (int i = 0; i < length; i++)
            {
                float[] one = [0f], oneDerivative = [0f];
                function.Apply(x.AsSpan(i, 1), one);
                function.Differentiate(x.AsSpan(i, 1), one, oneDerivative);
                Assert.True(Same(one[0], y[i]) && Same(one[0], together[i]), $"{name}, length {length}: f({x[i]}) at {i} is {y[i]} / {together[i]}, alone {one[0]}");
                Assert.True(Same(oneDerivative[0], derivative[i]) && Same(oneDerivative[0], togetherDerivative[i]),
                    $"{name}, length {length}: f'({x[i]}) at {i} is {derivative[i]} / {togetherDerivative[i]}, alone {oneDerivative[0]}");
            }
        }

        static bool Same(float expected, float actual) => float.IsNaN(expected) ? float.IsNaN(actual) : Bits.Same([expected], [actual]);
    }

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
