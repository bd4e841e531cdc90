using System.Collections.Immutable;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// One value of a model: the op that makes it, the ids of its inputs (earlier nodes), and its
/// shape. Batched nodes (inputs, activations, per-example losses) have a per-example
/// <see cref="Shape"/>; a plan prepends the batch axis, and tangents add the channel axis in front:
/// <c>[K, B, ...shape]</c>. Parameters are not batched: values <c>shape</c>, tangents <c>[K, ...shape]</c>.
/// </summary>
public sealed record Node(int Id, string Name, Op Op, ImmutableArray<int> Inputs, Shape Shape, bool IsBatched)
{
    /// <summary>Elements of this node's value in a plan with the given batch size.</summary>
    public int ElementCount(int batchSize) => IsBatched ? batchSize * Shape.ElementCount : Shape.ElementCount;

    /// <summary>A trainable parameter (<see cref="ParameterOp"/>): the parameter store holds its value, update rules change it.</summary>
    public bool IsParameter => Op is ParameterOp;

    /// <summary>Untrained model state (running statistics), stored beside the parameters.</summary>
    public bool IsState => Op is StateOp;

    /// <summary>"'name' (kind, shape)", with "[B, …]" for a batched node's shape: how errors name a node.</summary>
    public override string ToString() => $"'{Name}' ({Op.Kind}, {(IsBatched ? "[B, " + Shape.ToString()[1..] : Shape.ToString())})";
}

/// <summary>Thrown when a model is built with inconsistent shapes: names the node, the expected and the actual shape.</summary>
public sealed class ShapeMismatchException(string node, string expected, string actual, string detail)
    : ArgumentException($"Shape mismatch at node '{node}': expected {expected}, got {actual}. {detail}")
{
    /// <summary>The name of the node whose shape rule failed.</summary>
    public string Node { get; } = node;
    /// <summary>The shape the rule expected, as text (it may describe a family, as "logits [B, 10]").</summary>
    public string Expected { get; } = expected;
    /// <summary>The shape it was given, as text.</summary>
    public string Actual { get; } = actual;
}
