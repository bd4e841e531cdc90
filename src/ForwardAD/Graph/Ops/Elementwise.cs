using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>y = f(x) pointwise. The forward pass saves f'(x), so the JVP (ẏ = f'(x) ⊙ ẋ, all K
/// channels) and the VJP (x̄ = f'(x) ⊙ ȳ, all C pull-back channels) are one multiply each. f'(x) is the
/// "mask" of the guessing paper: the Jacobian of the elementwise op between two sites.</summary>
public sealed record ElementwiseOp(ElementwiseFunction Function) : Op
{
    /// <summary>The function's name ("relu", "tanh", "gelu", …).</summary>
    public override string Kind => Function.Name;

    /// <summary>x̄ = f'(x) ⊙ ȳ reads the derivative the forward pass saved, neither x nor y.</summary>
    internal override bool VjpReadsInput(int input) => false;
    internal override bool VjpReadsOutput => false;

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 1, 1);
        return (inputs[0].Shape, inputs[0].IsBatched);
    }

    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => node.ElementCount(batchSize);

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        if (saveAuxiliary) c.Backend.ElementwiseWithDerivative(Function, c.Input(0).Value, c.Output.Value, c.Output.Auxiliary);
        else c.Backend.Elementwise(Function, c.Input(0).Value, c.Output.Value);
    }

    internal override void Jvp(in RuleContext c) =>
        c.Backend.MultiplyChannels(c.Output.Auxiliary, c.Input(0).Tangent, c.Output.Tangent, accumulate: false);

    /// <summary>Whether f'(x) can be read from y instead of a saved derivative: ReLU's 1[x &gt; 0] is 1[y &gt; 0]
    /// (<see cref="Backend.MultiplyByPositiveMask"/>). A backprop plan that keeps y for the next layer then saves no mask.</summary>
    internal bool DerivativeFromOutput => Function is ReluFunction;

    internal override void Vjp(in RuleContext c)
    {
        if (c.Input(0).Cotangent.IsEmpty) return;
        if (c.DerivativeFromOutput) c.Backend.MultiplyByPositiveMask(c.Output.Value, c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
        else c.Backend.MultiplyChannels(c.Output.Auxiliary, c.Output.Cotangent, c.Input(0).Cotangent, c.Accumulate(0));
    }
}
