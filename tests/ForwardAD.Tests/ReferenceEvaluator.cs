using ForwardAD.Backends;
using ForwardAD.Graph;

namespace ForwardAD.Tests;

/// <summary>
/// An independent float64 interpreter of a model, used as the finite-difference reference: plain
/// loops, no shared kernels. Values of node n are f(inputs) + ε·perturbation[n] when a perturbation
/// is given (the additive tangent-injection semantics of seeds).
/// Batch normalisation uses the batch statistics when <paramref name="training"/> (and its op's statistics are not
/// frozen), the running statistics (leaves) otherwise; the reference never updates them.
/// </summary>
internal sealed class ReferenceEvaluator(Model model, int batch, bool training = true)
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
            case Conv2dOp conv:
            {
                var (x, w) = (In(0), In(1));
                var g = conv.Geometry(model.Nodes[node.Inputs[0]].Shape, model.Nodes[node.Inputs[1]].Shape);
                int outputs = node.Shape[2], perGroup = outputs / g.Groups, examples = x.Length / g.InputElements;
                var y = new double[examples * g.OutputPositions * outputs];
                for (int n = 0; n < examples; n++)
                    for (int oy = 0; oy < g.OutputHeight; oy++)
                        for (int ox = 0; ox < g.OutputWidth; ox++)
                            for (int o = 0; o < outputs; o++)
                            {
                                double s = node.Inputs.Length == 3 ? In(2)[o] : 0;
                                int group = o / perGroup;
                                for (int ky = 0; ky < g.KernelHeight; ky++)
                                    for (int kx = 0; kx < g.KernelWidth; kx++)
                                    {
                                        int iy = oy * g.Stride - g.Padding + ky, ix = ox * g.Stride - g.Padding + kx;
                                        if (iy < 0 || iy >= g.Height || ix < 0 || ix >= g.Width) continue;
                                        for (int c = 0; c < g.GroupChannels; c++)
                                            s += x[n * g.InputElements + (iy * g.Width + ix) * g.Channels + group * g.GroupChannels + c]
                                                * w[((o * g.KernelHeight + ky) * g.KernelWidth + kx) * g.GroupChannels + c];
                                    }
                                y[((n * g.OutputHeight + oy) * g.OutputWidth + ox) * outputs + o] = s;
                            }
                return y;
            }
            case PoolOp pool:
                return Pool(In(0), pool.Geometry(model.Nodes[node.Inputs[0]].Shape), pool is MaxPool2dOp);
            case GlobalAvgPoolOp:
            {
                var shape = model.Nodes[node.Inputs[0]].Shape;
                return Pool(In(0), new PoolGeometry(shape[0], shape[1], shape[2], shape[0], shape[1], 1, 0), max: false);
            }
            case BatchNormOp norm:
            {
                var x = In(0);
                int channels = node.Shape.Last, rows = x.Length / channels;
                var (mean, variance) = ((double[])In(1).Clone(), (double[])In(2).Clone());
                if (training && !norm.FrozenStatistics)
                {
                    Array.Clear(mean);
                    Array.Clear(variance);
                    for (int r = 0; r < rows; r++)
                        for (int c = 0; c < channels; c++) mean[c] += x[r * channels + c] / rows;
                    for (int r = 0; r < rows; r++)
                        for (int c = 0; c < channels; c++) variance[c] += Math.Pow(x[r * channels + c] - mean[c], 2) / rows;
                }
                var y = new double[x.Length];
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < channels; c++)
                    {
                        double normalized = (x[r * channels + c] - mean[c]) / Math.Sqrt(variance[c] + norm.Epsilon);
                        y[r * channels + c] = node.Inputs.Length == 5 ? normalized * In(3)[c] + In(4)[c] : normalized;
                    }
                return y;
            }
            case CausalSelfAttentionOp attention:
            {
                // Per example, head and query position i: s_j = ⟨q_i, k_j⟩/√dh for j ≤ i, p = softmax(s), y_i = Σ_j p_j v_j.
                var (q, k, v) = (In(0), In(1), In(2));
                int length = node.Shape[0], width = node.Shape[1], headWidth = width / attention.Heads, examples = q.Length / (length * width);
                var y = new double[q.Length];
                var weights = new double[length];
                for (int b = 0; b < examples; b++)
                    for (int h = 0; h < attention.Heads; h++)
                        for (int i = 0; i < length; i++)
                        {
                            int query = (b * length + i) * width + h * headWidth;
                            double max = double.NegativeInfinity, total = 0;
                            for (int j = 0; j <= i; j++)
                            {
                                int key = (b * length + j) * width + h * headWidth;
                                double score = 0;
                                for (int c = 0; c < headWidth; c++) score += q[query + c] * k[key + c];
                                weights[j] = score / Math.Sqrt(headWidth);
                                max = Math.Max(max, weights[j]);
                            }
                            for (int j = 0; j <= i; j++) total += weights[j] = Math.Exp(weights[j] - max);
                            for (int j = 0; j <= i; j++)
                                for (int c = 0; c < headWidth; c++) y[query + c] += weights[j] / total * v[(b * length + j) * width + h * headWidth + c];
                        }
                return y;
            }
            // ---- sequence ops (issue 13) ----
            case RowNormalizationOp norm:
            {
                // LayerNorm: (x − μ)/√(σ² + ε) per row (biased σ²); RMSNorm: x/√(mean(x²) + ε); then γ, β.
                var x = In(0);
                int width = node.Shape.Last, rows = x.Length / width;
                bool centre = norm is LayerNormOp;
                var y = new double[x.Length];
                for (int r = 0; r < rows; r++)
                {
                    double mean = 0, squares = 0;
                    if (centre) for (int j = 0; j < width; j++) mean += x[r * width + j] / width;
                    for (int j = 0; j < width; j++) squares += Math.Pow(x[r * width + j] - mean, 2) / width;
                    double scale = 1 / Math.Sqrt(squares + norm.Epsilon);
                    for (int j = 0; j < width; j++)
                    {
                        double v = (x[r * width + j] - mean) * scale;
                        if (node.Inputs.Length > 1) v *= In(1)[j];
                        if (node.Inputs.Length > 2) v += In(2)[j];
                        y[r * width + j] = v;
                    }
                }
                return y;
            }
            case EmbeddingOp:
            {
                var (ids, table) = (In(0), In(1));
                int width = node.Shape.Last;
                var y = new double[ids.Length * width];
                for (int n = 0; n < ids.Length; n++)
                    for (int j = 0; j < width; j++) y[n * width + j] = ids[n] < 0 ? 0 : table[(int)ids[n] * width + j];
                return y;
            }
            case AddPositionOp:
            {
                var (x, positions) = (In(0), In(1));
                int perExample = node.Shape.ElementCount;
                return [.. x.Select((v, i) => v + positions[i % perExample])];
            }
            case SequenceCrossEntropyOp ce:
            {
                var (z, targets) = (In(0), In(1));
                var shape = model.Nodes[node.Inputs[0]].Shape;
                int length = shape[0], classes = shape[1];
                var loss = new double[batch];
                for (int b = 0; b < batch; b++)
                {
                    int kept = 0;
                    for (int t = 0; t < length; t++)
                    {
                        double label = targets[b * length + t];
                        if (label == ce.IgnoreIndex || label < 0) continue;
                        var row = z.Skip((b * length + t) * classes).Take(classes).ToArray();
                        double max = row.Max();
                        loss[b] += Math.Log(row.Sum(v => Math.Exp(v - max))) + max - row[(int)label];
                        kept++;
                    }
                    loss[b] = kept == 0 ? 0 : loss[b] / kept;
                }
                return loss;
            }
            case PatchesOp patches:
            {
                // y_b[(i, j), (r, c, ch)] = x_b[i·k + r, j·k + c, ch]: token (i, j) holds its patch's pixels row by row.
                var x = In(0);
                var shape = model.Nodes[node.Inputs[0]].Shape;
                int k = patches.Patch, width = shape[1], channels = shape[2], across = width / k, tokens = shape[0] / k * across, length = k * k * channels;
                var y = new double[batch * tokens * length];
                for (int e = 0; e < batch; e++)
                    for (int t = 0; t < tokens; t++)
                        for (int r = 0; r < k; r++)
                            for (int c = 0; c < k; c++)
                                for (int ch = 0; ch < channels; ch++)
                                    y[(e * tokens + t) * length + (r * k + c) * channels + ch] =
                                        x[e * shape.ElementCount + ((t / across * k + r) * width + t % across * k + c) * channels + ch];
                return y;
            }
            case TokenMixingOp:
            {
                // y_b[q, c] = Σ_p W[q, p] x_b[p, c] + b[q]
                var (x, w) = (In(0), In(1));
                int outputs = node.Shape[0], channels = node.Shape[1], tokens = w.Length / outputs;
                var y = new double[batch * outputs * channels];
                for (int e = 0; e < batch; e++)
                    for (int q = 0; q < outputs; q++)
                        for (int c = 0; c < channels; c++)
                        {
                            double s = node.Inputs.Length == 3 ? In(2)[q] : 0;
                            for (int p = 0; p < tokens; p++) s += w[q * tokens + p] * x[(e * tokens + p) * channels + c];
                            y[(e * outputs + q) * channels + c] = s;
                        }
                return y;
            }
            case GroupedSoftmaxCrossEntropyOp:
            {
                var (z, labels) = (In(0), In(1));
                var shape = model.Nodes[node.Inputs[0]].Shape;
                int groups = shape[0], classes = shape[1];
                var loss = new double[batch];
                for (int e = 0; e < batch; e++)
                {
                    for (int g = 0; g < groups; g++)
                    {
                        var row = z.Skip((e * groups + g) * classes).Take(classes).ToArray();
                        double max = row.Max();
                        loss[e] += Math.Log(row.Sum(v => Math.Exp(v - max))) + max - row[(int)labels[e]];
                    }
                    loss[e] /= groups;
                }
                return loss;
            }
            default:
                throw new NotSupportedException($"The reference evaluator has no rule for {node.Op.Kind}.");
        }
    }

    /// <summary>Max (padded positions never win) or average (padding counted as zeros) pooling of [N, H, W, C].</summary>
    private static double[] Pool(double[] x, PoolGeometry g, bool max)
    {
        int examples = x.Length / g.InputElements;
        var y = new double[examples * g.OutputElements];
        for (int n = 0; n < examples; n++)
            for (int oy = 0; oy < g.OutputHeight; oy++)
                for (int ox = 0; ox < g.OutputWidth; ox++)
                    for (int c = 0; c < g.Channels; c++)
                    {
                        double result = max ? double.NegativeInfinity : 0;
                        for (int ky = 0; ky < g.KernelHeight; ky++)
                            for (int kx = 0; kx < g.KernelWidth; kx++)
                            {
                                int iy = oy * g.Stride - g.Padding + ky, ix = ox * g.Stride - g.Padding + kx;
                                if (iy < 0 || iy >= g.Height || ix < 0 || ix >= g.Width) continue;
                                double v = x[n * g.InputElements + (iy * g.Width + ix) * g.Channels + c];
                                result = max ? Math.Max(result, v) : result + v;
                            }
                        y[n * g.OutputElements + (oy * g.OutputWidth + ox) * g.Channels + c] = max ? result : result / (g.KernelHeight * g.KernelWidth);
                    }
        return y;
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
        GeluTanhFunction => GeluTanhDerivative(x),
        _ => throw new NotSupportedException(f.Name),
    };

    public static double Apply(ElementwiseFunction f, double x) => f switch
    {
        ReluFunction => Math.Max(x, 0),
        TanhFunction => Math.Tanh(x),
        GeluFunction => x * 0.5 * (1 + ErfReference(x / Math.Sqrt(2))),
        IdentityFunction => x,
        // ½x(1 + tanh u) written as x·σ(2u): the same function without double's cancellation of 1 + tanh u in the far negative tail.
        GeluTanhFunction => x / (1 + Math.Exp(-2 * Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
        _ => throw new NotSupportedException(f.Name),
    };

    /// <summary>d/dx ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³): ½(1 + tanh u) + ½x(1 − tanh²u)·u'(x), written with
    /// σ = σ(2u) = ½(1 + tanh u) (1 − tanh²u = 4σ(1 − σ)) so that double does not cancel 1 + tanh u in the negative tail.</summary>
    private static double GeluTanhDerivative(double x)
    {
        double sigma = 1 / (1 + Math.Exp(-2 * Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
        return sigma + 2 * x * sigma * (1 - sigma) * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * x * x);
    }

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
