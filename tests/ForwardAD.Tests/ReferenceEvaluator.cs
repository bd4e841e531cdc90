using ForwardAD.Backends;
using ForwardAD.Graph;

namespace ForwardAD.Tests;

/// <summary>
/// An independent float64 interpreter of a model, used as the finite-difference reference: plain
/// loops, no shared kernels. Values of node n are f(inputs) + ε·perturbation[n] when a perturbation
/// is given (the additive tangent-injection semantics of seeds).
/// </summary>
internal sealed class ReferenceEvaluator(Model model, int batch)
{
    public Dictionary<int, double[]> Values { get; } = [];

    /// <summary>Runs the model; <paramref name="leaves"/> holds every input and parameter value.</summary>
    public double[] Run(IReadOnlyDictionary<int, double[]> leaves, IReadOnlyDictionary<int, double[]>? perturbation = null, double epsilon = 0)
    {
        Values.Clear();
        foreach (var node in model.Nodes)
        {
            double[] v = node.Op.IsLeaf ? (double[])leaves[node.Id].Clone() : Evaluate(node);
            if (perturbation is not null && perturbation.TryGetValue(node.Id, out var p))
                for (int i = 0; i < v.Length; i++) v[i] += epsilon * p[i];
            Values[node.Id] = v;
        }
        return Values[model.Loss.Id];
    }

    private double[] Evaluate(Node node)
    {
        double[] In(int i) => Values[node.Inputs[i]];
        switch (node.Op)
        {
            case LinearOp:
            {
                var (x, w) = (In(0), In(1));
                int outputs = node.Shape.Last, inputs = w.Length / outputs, rows = x.Length / inputs;
                var y = new double[rows * outputs];
                for (int r = 0; r < rows; r++)
                    for (int o = 0; o < outputs; o++)
                    {
                        double s = node.Inputs.Length == 3 ? In(2)[o] : 0;
                        for (int i = 0; i < inputs; i++) s += x[r * inputs + i] * w[o * inputs + i];
                        y[r * outputs + o] = s;
                    }
                return y;
            }
            case ElementwiseOp e:
                return In(0).Select(x => Apply(e.Function, x)).ToArray();
            case AddOp:
                return In(0).Zip(In(1), (a, b) => a + b).ToArray();
            case ReshapeOp or StopGradientOp:
                return (double[])In(0).Clone();
            case SoftmaxCrossEntropyOp:
            {
                var (z, labels) = (In(0), In(1));
                int classes = z.Length / batch;
                var loss = new double[batch];
                for (int b = 0; b < batch; b++)
                {
                    var row = z.Skip(b * classes).Take(classes).ToArray();
                    double max = row.Max();
                    loss[b] = Math.Log(row.Sum(v => Math.Exp(v - max))) + max - row[(int)labels[b]];
                }
                return loss;
            }
            case MeanSquaredErrorOp:
            {
                var (p, t) = (In(0), In(1));
                int width = p.Length / batch;
                var loss = new double[batch];
                for (int b = 0; b < batch; b++)
                    for (int j = 0; j < width; j++) loss[b] += Math.Pow(p[b * width + j] - t[b * width + j], 2) / width;
                return loss;
            }
            default:
                throw new NotSupportedException($"The reference evaluator has no rule for {node.Op.Kind}.");
        }
    }

    /// <summary>
    /// A float64 pull-back at the values of the last <see cref="Run"/>, written out op by op with plain loops: the
    /// cotangents at <paramref name="starts"/> ([C, B, ...] each) carried back to <paramref name="to"/> along every
    /// derivative path (no stop-gradient), summing where paths meet. The reference for "Wᵀ" on any graph.
    /// </summary>
    public double[] PullBack(IReadOnlyDictionary<int, double[]> starts, Node to, int channels)
    {
        var downstream = new bool[model.Nodes.Length];
        downstream[to.Id] = true;
        foreach (var node in model.Nodes)
            if (!node.Op.IsLeaf && node.Op is not StopGradientOp && node.Inputs.Any(i => downstream[i])) downstream[node.Id] = true;
        var cotangents = new Dictionary<int, double[]>();
        foreach (var (id, c) in starts) cotangents[id] = (double[])c.Clone();
        double[] Cotangent(int id) => cotangents.TryGetValue(id, out var c) ? c : cotangents[id] = new double[channels * Values[id].Length];
        for (int id = model.Nodes.Length - 1; id > to.Id; id--)
        {
            var node = model.Nodes[id];
            if (!downstream[id] || !cotangents.TryGetValue(id, out var dy) || node.Op is StopGradientOp) continue;
            switch (node.Op)
            {
                case LinearOp:
                {
                    if (!downstream[node.Inputs[0]]) break;
                    var w = Values[node.Inputs[1]];
                    var dx = Cotangent(node.Inputs[0]);
                    int outputs = node.Shape.Last, inputs = w.Length / outputs, rows = dy.Length / outputs;
                    for (int r = 0; r < rows; r++)
                        for (int i = 0; i < inputs; i++)
                            for (int o = 0; o < outputs; o++) dx[r * inputs + i] += dy[r * outputs + o] * w[o * inputs + i];
                    break;
                }
                case ElementwiseOp e:
                {
                    var x = Values[node.Inputs[0]];
                    var dx = Cotangent(node.Inputs[0]);
                    for (int j = 0; j < dy.Length; j++) dx[j] += Derivative(e.Function, x[j % x.Length]) * dy[j];
                    break;
                }
                case AddOp or ReshapeOp:
                    foreach (var input in node.Inputs.Distinct())
                        if (downstream[input])
                        {
                            var dx = Cotangent(input);
                            int uses = node.Inputs.Count(i => i == input);
                            for (int j = 0; j < dy.Length; j++) dx[j] += uses * dy[j];
                        }
                    break;
                default:
                    throw new NotSupportedException($"The reference pull-back has no rule for {node.Op.Kind}.");
            }
        }
        return Cotangent(to.Id);
    }

    /// <summary>f'(x) in float64: the Jacobian of an elementwise op (the guessing paper's mask).</summary>
    public static double Derivative(ElementwiseFunction f, double x) => f switch
    {
        ReluFunction => x > 0 ? 1 : 0,
        TanhFunction => 1 - Math.Tanh(x) * Math.Tanh(x),
        GeluFunction => 0.5 * (1 + ErfReference(x / Math.Sqrt(2))) + x * Math.Exp(-x * x / 2) / Math.Sqrt(2 * Math.PI),
        IdentityFunction => 1,
        _ => throw new NotSupportedException(f.Name),
    };

    public static double Apply(ElementwiseFunction f, double x) => f switch
    {
        ReluFunction => Math.Max(x, 0),
        TanhFunction => Math.Tanh(x),
        GeluFunction => x * 0.5 * (1 + ErfReference(x / Math.Sqrt(2))),
        IdentityFunction => x,
        _ => throw new NotSupportedException(f.Name),
    };

    /// <summary>erf by its Maclaurin series / continued fraction in double (independent of the library's fit).</summary>
    private static double ErfReference(double x)
    {
        if (Math.Abs(x) > 5) return Math.Sign(x);
        double sum = 0, term = x;
        for (int n = 0; n < 200; n++)
        {
            sum += term / (2 * n + 1);
            term *= -x * x / (n + 1);
        }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }
}
