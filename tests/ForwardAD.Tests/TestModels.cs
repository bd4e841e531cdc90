using System.Collections.Immutable;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>A small random problem: a model, its parameters and one batch of data.</summary>
internal sealed record Problem(Model Model, ParameterStore Parameters, int BatchSize, Dictionary<int, float[]> Inputs)
{
    public static ElementwiseFunction[] Activations { get; } =
        [ElementwiseFunction.Relu, ElementwiseFunction.Tanh, ElementwiseFunction.Gelu, ElementwiseFunction.Identity];

    /// <summary>An MLP with random sizes and data, drawn from <paramref name="seed"/>.</summary>
    public static Problem RandomMlp(int seed, ElementwiseFunction activation, int batch, LossKind loss = LossKind.SoftmaxCrossEntropy,
        int? inputs = null, ImmutableArray<int>? widths = null, int? outputs = null, Backend? backend = null)
    {
        var rng = new System.Random(seed);
        var spec = new MlpSpec(inputs ?? rng.Next(1, 7), widths ?? [.. Enumerable.Range(0, rng.Next(0, 3)).Select(_ => rng.Next(1, 7))],
            outputs ?? rng.Next(2, 5), activation, loss);
        return From(spec.Build(), seed, batch, backend, rng);
    }

    /// <summary>Parameters and one batch of random data for any model (labels uniform over the classes, inputs N(0, 1)).</summary>
    public static Problem From(Model model, int seed, int batch, Backend? backend = null, System.Random? rng = null)
    {
        rng ??= new System.Random(seed);
        var store = ParameterStore.Initialize(model, backend ?? new CpuBackend(), (ulong)seed);
        // Biases of N(0, 0.3²), whatever the initialisation scheme draws, so that their rules are exercised and these
        // problems stay the same when a default changes.
        foreach (var p in model.Parameters.Where(p => p.Name.EndsWith(".bias")))
            store.Set(p, Normal(seed + p.Id, p.Shape.ElementCount, 0.3f));
        var data = new Dictionary<int, float[]>();
        foreach (var node in model.Inputs)
        {
            int n = node.ElementCount(batch);
            data[node.Id] = node.Op is ClassLabelsOp labels
                ? Enumerable.Range(0, n).Select(_ => (float)rng.Next(labels.Classes)).ToArray()
                : Normal(seed * 31 + node.Id, n, 1f);
        }
        return new Problem(model, store, batch, data);
    }

    /// <summary>
    /// A residual network whose sites are consumed by more than the next dense layer (issue 9):
    /// e = tanh(W₀ x), a = relu(W₁ e), r = e + W₂ a, logits = W₃ r. Site "embed" feeds both "inner" and, through the
    /// residual add, "head"; site "outer" has no activation of its own (its consumer is the add).
    /// </summary>
    public static Model Residual(int inputs = 3, int width = 4, int inner = 5, int classes = 3)
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(inputs), differentiable: false);
        var e = builder.Dense("embed", x, width, ElementwiseFunction.Tanh).Output;
        var a = builder.Dense("inner", e, inner, ElementwiseFunction.Relu).Output;
        var outer = builder.Dense("outer", a, width, ElementwiseFunction.Identity).Output;
        var r = builder.Add("residual", e, outer);
        var logits = builder.Dense("head", r, classes, ElementwiseFunction.Identity).Output;
        return builder.Build(builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", classes)), logits);
    }

    /// <summary>
    /// Two losses and a stop-gradient (the model of Golden/two_losses.py): h = relu(W₁x + b₁); local loss CE(W_l h + b_l);
    /// g = stop_gradient(h); r = tanh(W₂ g + b₂) + h (the residual bypasses the stop-gradient); main loss CE(W₃ r + b₃).
    /// </summary>
    public static Model TwoLosses(int inputs = 4, int width = 6, int classes = 3)
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(inputs), differentiable: false);
        var y = builder.ClassLabels("y", classes);
        var h = builder.Dense("block1", x, width, ElementwiseFunction.Relu).Output;
        var localLogits = builder.Dense("local", h, classes, ElementwiseFunction.Identity).Output;
        var local = builder.SoftmaxCrossEntropy("local_loss", localLogits, y);
        var g = builder.StopGradient("stop", h);
        var a = builder.Dense("block2", g, width, ElementwiseFunction.Tanh).Output;
        var r = builder.Add("residual", a, h);
        var logits = builder.Dense("head", r, classes, ElementwiseFunction.Identity).Output;
        return builder.Build(builder.SoftmaxCrossEntropy("loss", logits, y), logits, [local]);
    }

    public static float[] Normal(long seed, int count, float scale)
    {
        var values = new float[count];
        RandomFill.Normal(new RandomKey((ulong)seed, 77), 0, 0f, scale, values);
        return values;
    }

    public Plan Compile(PlanOptions options)
    {
        var plan = Plan.Compile(Parameters, options);
        foreach (var (id, values) in Inputs) plan.SetInput(Model.Nodes[id], values);
        return plan;
    }

    /// <summary>Inputs and parameters as float64, for <see cref="ReferenceEvaluator"/>.</summary>
    public Dictionary<int, double[]> Leaves()
    {
        var leaves = Inputs.ToDictionary(kv => kv.Key, kv => kv.Value.Select(v => (double)v).ToArray());
        foreach (var p in Model.Parameters.Concat(Model.States)) leaves[p.Id] = Parameters.ToArray(p).Select(v => (double)v).ToArray();
        return leaves;
    }
}

internal static class ViewExtensions
{
    public static float[] ToArray(this View view) => CpuBackend.Span(view).ToArray();
}

internal static class SpanExtensions
{
    public static void CopyFrom(this Span<float> destination, ReadOnlySpan<float> source)
    {
        if (source.Length != destination.Length) throw new ArgumentException($"Length {source.Length} does not match {destination.Length}.");
        source.CopyTo(destination);
    }
}

/// <summary>Dense-site shorthands for the tests: a dense site's op is s = x Wᵀ + b.</summary>
internal static class SiteExtensions
{
    public static Node Weight(this Site site) => site.Parameters[0];
    public static Node? Bias(this Site site) => site.Parameters.Length > 1 ? site.Parameters[1] : null;
    /// <summary>The site op's data input x.</summary>
    public static Node Input(this Site site, Model model) => model.Nodes[site.Node.Inputs[0]];
}
