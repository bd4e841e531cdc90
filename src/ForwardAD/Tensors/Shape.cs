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

    public ImmutableArray<int> Dimensions => _dimensions.IsDefault ? [] : _dimensions;
    public int Rank => Dimensions.Length;
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

    public Shape WithLast(int last)
    {
        if (Rank == 0) return new Shape(last);
        var dims = Dimensions.ToArray();
        dims[^1] = last;
        return new Shape(dims);
    }

    public bool Equals(Shape other) => Dimensions.AsSpan().SequenceEqual(other.Dimensions.AsSpan());
    public override bool Equals(object? obj) => obj is Shape s && Equals(s);
    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (var d in Dimensions) hash.Add(d);
        return hash.ToHashCode();
    }
    public static bool operator ==(Shape a, Shape b) => a.Equals(b);
    public static bool operator !=(Shape a, Shape b) => !a.Equals(b);
    public override string ToString() => $"[{string.Join(", ", Dimensions)}]";
}
