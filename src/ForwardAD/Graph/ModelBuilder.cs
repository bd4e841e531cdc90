using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Builds a <see cref="Model"/> node by node, inferring and checking shapes as it goes: a mismatch
/// throws <see cref="ShapeMismatchException"/> at build time naming the node and both shapes.
/// </summary>
public sealed class ModelBuilder
{
    private readonly List<Node> _nodes = [];
    private readonly List<DenseLayer> _layers = [];
    private readonly HashSet<string> _names = [];

    public IReadOnlyList<Node> Nodes => _nodes;

    /// <summary>Per-example real-valued input of the given shape, e.g. [64], [3, 32, 32], [T, D].</summary>
    public Node Input(string name, Shape shape, bool differentiable = true) => Add(name, new InputOp(differentiable), [], shape, batched: true);

    /// <summary>Per-example class index in [0, classes).</summary>
    public Node ClassLabels(string name, int classes)
    {
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), $"Labels '{name}' need at least 2 classes; got {classes}.");
        return Add(name, new ClassLabelsOp(classes), [], Shape.Scalar, batched: true);
    }

    public Node Parameter(string name, Shape shape, Initializer initializer) => Add(name, new ParameterOp(initializer), [], shape, batched: false);

    /// <summary>s = x Wᵀ + b over x's last axis. W must be [out, in] with in = x's last dimension, b [out].</summary>
    public Node Linear(string name, Node x, Node weight, Node? bias)
    {
        CheckOwn(x); CheckOwn(weight);
        if (!x.IsBatched) throw new ShapeMismatchException(name, "a batched input", $"parameter {x}", "A linear layer's input must be data or an activation.");
        if (weight.Shape.Rank != 2 || weight.Shape[1] != x.Shape.Last)
            throw new ShapeMismatchException(name, $"weight [out, {x.Shape.Last}]", $"{weight.Shape} for {weight}",
                $"The weight's second dimension must equal the input's last dimension ({x} has {x.Shape.Last}).");
        var output = x.Shape.WithLast(weight.Shape[0]);
        if (bias is null) return Add(name, new LinearOp(), [x.Id, weight.Id], output, batched: true);
        CheckOwn(bias);
        if (bias.Shape != new Shape(weight.Shape[0]))
            throw new ShapeMismatchException(name, $"bias [{weight.Shape[0]}]", $"{bias.Shape} for {bias}", "The bias must have one element per output.");
        return Add(name, new LinearOp(), [x.Id, weight.Id, bias.Id], output, batched: true);
    }

    /// <summary>
    /// A dense layer with its own parameters: weight [width, in] drawn by <paramref name="weightInit"/>
    /// (PyTorch's nn.Linear default when null), zero bias, then the activation. Registers it in
    /// <see cref="Model.Layers"/>.
    /// </summary>
    public DenseLayer Dense(string name, Node x, int width, ElementwiseFunction activation, Initializer? weightInit = null, bool bias = true)
    {
        if (width <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"Layer '{name}' needs a positive width; got {width}.");
        int fanIn = x.Shape.Last;
        var w = Parameter($"{name}.weight", new Shape(width, fanIn), weightInit ?? Initializer.LinearDefault(fanIn));
        var b = bias ? Parameter($"{name}.bias", new Shape(width), Initializer.Zeros) : null;
        var s = Linear(name, x, w, b);
        var output = activation is IdentityFunction ? s : Activation($"{name}.{activation.Name}", s, activation);
        var layer = new DenseLayer(x, w, b, s, output, activation);
        _layers.Add(layer);
        return layer;
    }

    public Node Activation(string name, Node x, ElementwiseFunction function)
    {
        CheckOwn(x);
        return Add(name, new ElementwiseOp(function), [x.Id], x.Shape, x.IsBatched);
    }

    public Node Add(string name, Node a, Node b)
    {
        CheckOwn(a); CheckOwn(b);
        if (a.Shape != b.Shape || a.IsBatched != b.IsBatched)
            throw new ShapeMismatchException(name, a.Shape.ToString(), b.Shape.ToString(), $"Both operands of add must have the same shape ({a} and {b}).");
        return Add(name, new AddOp(), [a.Id, b.Id], a.Shape, a.IsBatched);
    }

    public Node Reshape(string name, Node x, Shape target)
    {
        CheckOwn(x);
        if (target.ElementCount != x.Shape.ElementCount)
            throw new ShapeMismatchException(name, $"a shape of {x.Shape.ElementCount} elements", $"{target} ({target.ElementCount} elements)", $"Reshape keeps the element count of {x}.");
        return Add(name, new ReshapeOp(target), [x.Id], target, x.IsBatched);
    }

    /// <summary>Per-example softmax cross-entropy of logits [C] against class labels with C classes.</summary>
    public Node SoftmaxCrossEntropy(string name, Node logits, Node labels)
    {
        CheckOwn(logits); CheckOwn(labels);
        if (labels.Op is not ClassLabelsOp classLabels)
            throw new ArgumentException($"Node '{name}': softmax cross-entropy needs class labels from ClassLabels(); got {labels}.");
        if (logits.Shape.Rank != 1 || logits.Shape[0] != classLabels.Classes || !logits.IsBatched)
            throw new ShapeMismatchException(name, $"logits [B, {classLabels.Classes}]", logits.ToString(),
                $"One logit per class of {labels}; flatten multi-axis outputs first.");
        return Add(name, new SoftmaxCrossEntropyOp(), [logits.Id, labels.Id], Shape.Scalar, batched: true);
    }

    /// <summary>Per-example mean squared error between a prediction and a target of the same shape.</summary>
    public Node MeanSquaredError(string name, Node prediction, Node target)
    {
        CheckOwn(prediction); CheckOwn(target);
        if (target.Op is not InputOp) throw new ArgumentException($"Node '{name}': the target must be an input node; got {target}.");
        if (prediction.Shape != target.Shape || !prediction.IsBatched)
            throw new ShapeMismatchException(name, $"prediction of the target's shape {target.Shape}", prediction.Shape.ToString(), $"Compare {prediction} with {target}.");
        return Add(name, new MeanSquaredErrorOp(), [prediction.Id, target.Id], Shape.Scalar, batched: true);
    }

    /// <summary>Freezes the model. The loss must be a per-example scalar node.</summary>
    public Model Build(Node loss, Node output)
    {
        CheckOwn(loss); CheckOwn(output);
        if (loss.Op is not PerExampleLossOp)
            throw new ArgumentException($"The loss must be a loss node (softmax cross-entropy or mean squared error); got {loss}.");
        return new Model([.. _nodes], loss, output, [.. _layers]);
    }

    private Node Add(string name, Op op, ImmutableArray<int> inputs, Shape shape, bool batched)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("Every node needs a non-empty name.", nameof(name));
        if (!_names.Add(name)) throw new ArgumentException($"A node named '{name}' already exists; names must be unique.", nameof(name));
        var node = new Node(_nodes.Count, name, op, inputs, shape, batched);
        _nodes.Add(node);
        return node;
    }

    private void CheckOwn(Node node)
    {
        if (node.Id < 0 || node.Id >= _nodes.Count || !ReferenceEquals(_nodes[node.Id], node))
            throw new ArgumentException($"Node {node} does not belong to this builder.");
    }
}
