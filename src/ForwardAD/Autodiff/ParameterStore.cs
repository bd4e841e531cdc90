using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Autodiff;

/// <summary>
/// The values of a model's parameters on one backend, shared by every plan compiled against it
/// (a training plan and an evaluation plan with another batch size see the same weights).
/// Initialised deterministically: parameter p draws from the Philox stream (seed, p's node id).
/// All parameters live in one contiguous buffer (<see cref="All"/>), in the model's parameter order,
/// so update rules run one kernel over every parameter and global norms are one reduction.
/// </summary>
public sealed class ParameterStore
{
    private readonly View[] _values;

    private ParameterStore(Model model, Backend backend, View all, View state, View[] values)
    {
        Model = model;
        Backend = backend;
        All = all;
        State = state;
        _values = values;
    }

    /// <summary>The model whose parameters (and state tensors) this store holds.</summary>
    public Model Model { get; }
    /// <summary>The backend that holds the values; plans compiled against this store run on it.</summary>
    public Backend Backend { get; }

    /// <summary>Every parameter, concatenated in model order (see <see cref="ParameterLayout"/>).</summary>
    public View All { get; }

    /// <summary>Every state tensor (running statistics), concatenated in model order (<see cref="ParameterLayout.OfState"/>);
    /// kept apart from <see cref="All"/> so that update rules and gradients never touch it.</summary>
    public View State { get; }

    /// <summary>Allocates the parameters and state tensors of <paramref name="model"/> on <paramref name="backend"/> and fills
    /// each with its initializer from the Philox stream (<paramref name="seed"/>, node id): the same values on every backend.</summary>
    /// <exception cref="ArgumentException">The parameters exceed the backend's available memory, or the model has more than
    /// int.MaxValue parameters.</exception>
    public static ParameterStore Initialize(Model model, Backend backend, ulong seed)
    {
        var layout = ParameterLayout.Of(model);
        backend.RequireMemory(layout.TotalCount * (long)sizeof(float), $"The model's {layout.TotalCount:N0} parameters");
        var all = new View(backend.Allocate(Math.Max(1, layout.TotalCount)), 0, layout.TotalCount);
        var values = layout.Slices(model, all);
        foreach (var node in model.Parameters)
            ((ParameterOp)node.Op).Initializer.Fill(backend, new RandomKey(seed, (ulong)node.Id), values[node.Id]);
        var stateLayout = ParameterLayout.OfState(model);
        var state = new View(backend.Allocate(Math.Max(1, stateLayout.TotalCount)), 0, stateLayout.TotalCount);
        var stateValues = stateLayout.Slices(model, state);
        foreach (var node in model.States)
        {
            ((StateOp)node.Op).Initializer.Fill(backend, new RandomKey(seed, (ulong)node.Id), stateValues[node.Id]);
            values[node.Id] = stateValues[node.Id];
        }
        return new ParameterStore(model, backend, all, state, values);
    }

    /// <summary>Copies every parameter value from another store of a model with the same parameters (names and shapes,
    /// in order; any backend).</summary>
    public void CopyFrom(ParameterStore other)
    {
        var (mine, theirs) = (Model.Parameters.ToList(), other.Model.Parameters.ToList());
        int differs = Enumerable.Range(0, Math.Max(mine.Count, theirs.Count))
            .FirstOrDefault(i => i >= mine.Count || i >= theirs.Count || mine[i].Name != theirs[i].Name || mine[i].Shape != theirs[i].Shape, -1);
        if (differs >= 0)
            throw new ArgumentException($"The other store belongs to a different model: parameter {differs + 1} is " +
                $"{(differs < theirs.Count ? $"'{theirs[differs].Name}' {theirs[differs].Shape}" : "missing")} there and " +
                $"{(differs < mine.Count ? $"'{mine[differs].Name}' {mine[differs].Shape}" : "missing")} here.", nameof(other));
        var host = new float[All.Length];
        other.Backend.CopyToHost(other.All, host);
        Backend.CopyFromHost(host, All);
        if (State.Length != other.State.Length)
            throw new ArgumentException($"The other store belongs to a different model: {other.State.Length} state values there, {State.Length} here.", nameof(other));
        host = new float[State.Length];
        other.Backend.CopyToHost(other.State, host);
        Backend.CopyFromHost(host, State);
    }

    /// <summary>The value of parameter <paramref name="parameter"/> on the backend.</summary>
    public View this[Node parameter]
    {
        get
        {
            if (!Model.Contains(parameter) || !(parameter.IsParameter || parameter.IsState))
                throw new ArgumentException($"{parameter} is not a parameter or state of this model.", nameof(parameter));
            return _values[parameter.Id];
        }
    }

    /// <summary>A host copy of the value of <paramref name="parameter"/> (row-major in its shape).</summary>
    /// <exception cref="ArgumentException"><paramref name="parameter"/> is not a parameter or state of this model.</exception>
    public float[] ToArray(Node parameter)
    {
        var view = this[parameter];
        var result = new float[view.Length];
        Backend.CopyToHost(view, result);
        return result;
    }

    /// <summary>Overwrites the value of <paramref name="parameter"/> with <paramref name="values"/> (row-major in its shape).</summary>
    /// <exception cref="ArgumentException"><paramref name="parameter"/> is not a parameter or state of this model, or the
    /// lengths differ.</exception>
    public void Set(Node parameter, ReadOnlySpan<float> values)
    {
        var view = this[parameter];
        if (values.Length != view.Length)
            throw new ArgumentException($"Parameter {parameter} has {view.Length} elements; got {values.Length}.", nameof(values));
        Backend.CopyFromHost(values, view);
    }
}

/// <summary>Where each parameter sits in the flat parameter (and gradient) vector: model order, contiguous.</summary>
public sealed record ParameterLayout(System.Collections.Immutable.ImmutableArray<(Node Parameter, int Offset)> Entries, int TotalCount)
{
    /// <summary>The layout of the model's parameters in <see cref="ParameterStore.All"/> (model order, contiguous).</summary>
    /// <exception cref="ArgumentException">The model has more than int.MaxValue parameters.</exception>
    public static ParameterLayout Of(Model model) => Of(model.Parameters);

    /// <summary>The layout of the model's state (running statistics) in <see cref="ParameterStore.State"/>.</summary>
    public static ParameterLayout OfState(Model model) => Of(model.States);

    private static ParameterLayout Of(IEnumerable<Node> tensors)
    {
        var entries = System.Collections.Immutable.ImmutableArray.CreateBuilder<(Node, int)>();
        long offset = 0;
        foreach (var p in tensors)
        {
            entries.Add((p, (int)offset));
            offset += p.Shape.ElementCount;
            if (offset > int.MaxValue)
                throw new ArgumentException($"The model has more than {int.MaxValue:N0} parameters (at '{p.Name}'), the most one parameter store holds. Use smaller layers.");
        }
        return new ParameterLayout(entries.ToImmutable(), (int)offset);
    }

    /// <summary>Per-node views into a flat vector laid out by this layout (indexed by node id).</summary>
    public View[] Slices(Model model, View flat)
    {
        var views = new View[model.Nodes.Length];
        foreach (var (p, offset) in Entries) views[p.Id] = flat.Slice(offset, p.Shape.ElementCount);
        return views;
    }
}
