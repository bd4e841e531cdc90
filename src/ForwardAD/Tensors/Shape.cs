using System.Collections.Immutable;

namespace ForwardAD.Tensors;

/// <summary>
/// An immutable N-dimensional shape. Activation shapes in a graph are per example (the batch
/// axis is added when a plan is compiled), so a dense layer's output is <c>[Out]</c>, an image
/// is <c>[C, H, W]</c> and a sequence is <c>[T, D]</c>; parameter shapes are complete.
/// </summary>
public readonly struct Shape : IEquatable<Shape>
{
    private readonly ImmutableArray<int> _dimensions;

    /// <summary>A shape with the given dimensions, outermost first.</summary>
    /// <exception cref="ArgumentException">A dimension is not positive, or the shape has more than int.MaxValue elements.</exception>
    public Shape(params ReadOnlySpan<int> dimensions)
    {
        long count = 1;
        foreach (var d in dimensions)
        {
            if (d <= 0)
                throw new ArgumentException($"Every dimension must be positive; got [{string.Join(", ", dimensions.ToArray())}].", nameof(dimensions));
            count *= d; // ≤ 2^31 · 2^31 before the check below stops it: no long overflow
            if (count > int.MaxValue)
                throw new ArgumentException($"The shape [{string.Join(", ", dimensions.ToArray())}] has more than {int.MaxValue:N0} elements, the most one tensor holds. Use smaller layers.", nameof(dimensions));
        }
        _dimensions = [.. dimensions];
    }

    /// <summary>The shape of a scalar (rank 0, one element).</summary>
    public static Shape Scalar => new([]);

    /// <summary>The dimensions, outermost first (row-major: the last varies fastest); empty for a scalar and for
    /// <c>default(Shape)</c>.</summary>
    public ImmutableArray<int> Dimensions => _dimensions.IsDefault ? [] : _dimensions;
    /// <summary>Number of dimensions (0 for a scalar).</summary>
    public int Rank => Dimensions.Length;
    /// <summary>The dimension at <paramref name="axis"/>; a negative axis counts from the end (−1 is the last).</summary>
    public int this[int axis] => Dimensions[axis < 0 ? Rank + axis : axis];

    /// <summary>Number of elements: the product of the dimensions (1 for a scalar).</summary>
    public int ElementCount
    {
        get
        {
            long count = 1;
            foreach (var d in Dimensions) count *= d;
            return checked((int)count);
        }
    }

    /// <summary>The last dimension (the feature axis of dense layers), 1 for a scalar.</summary>
    public int Last => Rank == 0 ? 1 : Dimensions[^1];

    /// <summary>Elements before the last axis: the number of rows a dense layer sees per example.</summary>
    public int LeadingCount => ElementCount / Last;

    /// <summary>This shape with its last dimension replaced by <paramref name="last"/> (a scalar becomes <c>[last]</c>):
    /// the output shape of a dense layer with <paramref name="last"/> outputs.</summary>
    public Shape WithLast(int last)
    {
        if (Rank == 0) return new Shape(last);
        var dims = Dimensions.ToArray();
        dims[^1] = last;
        return new Shape(dims);
    }

    /// <summary>True when both shapes have the same dimensions in the same order.</summary>
    public bool Equals(Shape other) => Dimensions.AsSpan().SequenceEqual(other.Dimensions.AsSpan());
    /// <summary>True when <paramref name="obj"/> is a <see cref="Shape"/> with the same dimensions.</summary>
    public override bool Equals(object? obj) => obj is Shape s && Equals(s);
    /// <summary>A hash of the dimensions, consistent with <see cref="Equals(Shape)"/>.</summary>
    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (var d in Dimensions) hash.Add(d);
        return hash.ToHashCode();
    }
    /// <summary>True when both shapes have the same dimensions in the same order.</summary>
    public static bool operator ==(Shape a, Shape b) => a.Equals(b);
    /// <summary>True when the shapes differ in rank or in some dimension.</summary>
    public static bool operator !=(Shape a, Shape b) => !a.Equals(b);
    /// <summary>The dimensions in brackets, e.g. <c>[28, 28, 1]</c>.</summary>
    public override string ToString() => $"[{string.Join(", ", Dimensions)}]";
}
