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
        var model = spec.Build();
        var store = ParameterStore.Initialize(model, backend ?? new CpuBackend(), (ulong)seed);
        // Biases start at zero; give them values so that their rules are exercised.
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
        foreach (var p in Model.Parameters) leaves[p.Id] = Parameters.ToArray(p).Select(v => (double)v).ToArray();
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
