using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>The loss an MLP is trained with.</summary>
public enum LossKind
{
    /// <summary>Classification: ℓ_b = logsumexp(z_b) − z_b[y_b] against class labels "y" (<see cref="SoftmaxCrossEntropyOp"/>).</summary>
    SoftmaxCrossEntropy,
    /// <summary>Regression: ℓ_b = (1/D) Σ_j (p_bj − t_bj)² against real targets "target" (<see cref="MeanSquaredErrorOp"/>).</summary>
    MeanSquaredError,
}

/// <summary>
/// A multilayer perceptron: <see cref="HiddenWidths"/>.Length hidden dense layers with the
/// activation, then a linear output layer of <see cref="Outputs"/> units. "depth 6, width 1024"
/// means six weight matrices: five hidden layers and the output layer.
/// </summary>
public sealed record MlpSpec(int Inputs, ImmutableArray<int> HiddenWidths, int Outputs, ElementwiseFunction Activation, LossKind Loss = LossKind.SoftmaxCrossEntropy)
{
    /// <summary>An MLP with <paramref name="depth"/> weight matrices, all hidden layers of the same width.</summary>
    public static MlpSpec Uniform(int inputs, int depth, int width, int outputs, ElementwiseFunction activation, LossKind loss = LossKind.SoftmaxCrossEntropy)
    {
        if (depth < 1) throw new ArgumentOutOfRangeException(nameof(depth), $"An MLP needs at least one layer; got depth {depth}.");
        return new MlpSpec(inputs, [.. Enumerable.Repeat(width, depth - 1)], outputs, activation, loss);
    }

    /// <summary>Number of weight matrices (hidden layers + output layer).</summary>
    public int Depth => HiddenWidths.Length + 1;

    /// <summary>The model; dense layers start as <paramref name="init"/> says (<see cref="InitScheme.Torch"/> when null).</summary>
    public Model Build(InitScheme? init = null)
    {
        if (Inputs <= 0 || Outputs <= 0) throw new ArgumentOutOfRangeException(nameof(Inputs), $"MLP sizes must be positive: inputs {Inputs}, outputs {Outputs}.");
        var builder = new ModelBuilder(init);
        var x = builder.Input("x", new Shape(Inputs), differentiable: false);
        Node h = x;
        for (int i = 0; i < HiddenWidths.Length; i++)
            h = builder.Dense($"layer{i + 1}", h, HiddenWidths[i], Activation).Output;
        var logits = builder.Dense($"layer{HiddenWidths.Length + 1}", h, Outputs, ElementwiseFunction.Identity).Output;
        var loss = Loss switch
        {
            LossKind.SoftmaxCrossEntropy => builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", Outputs)),
            _ => builder.MeanSquaredError("loss", logits, builder.Input("target", new Shape(Outputs), differentiable: false)),
        };
        return builder.Build(loss, logits);
    }
}
