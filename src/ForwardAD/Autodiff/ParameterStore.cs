using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Autodiff;

/// <summary>
/// The values of a model's parameters on one backend, shared by every plan compiled against it
/// (a training plan and an evaluation plan with another batch size see the same weights).
/// Initialised deterministically: parameter p draws from the Philox stream (seed, p's node id).
/// </summary>
public sealed class ParameterStore
{
    private readonly View[] _values;

    private ParameterStore(Model model, Backend backend, View[] values)
    {
        Model = model;
        Backend = backend;
        _values = values;
    }

    public Model Model { get; }
    public Backend Backend { get; }

    public static ParameterStore Initialize(Model model, Backend backend, ulong seed)
    {
        var values = new View[model.Nodes.Length];
        foreach (var node in model.Parameters)
        {
            values[node.Id] = new View(backend.Allocate(node.Shape.ElementCount));
            ((ParameterOp)node.Op).Initializer.Fill(backend, new RandomKey(seed, (ulong)node.Id), values[node.Id]);
        }
        return new ParameterStore(model, backend, values);
    }

    /// <summary>The value of parameter <paramref name="parameter"/> on the backend.</summary>
    public View this[Node parameter]
    {
        get
        {
            if (!Model.Contains(parameter) || !parameter.IsParameter)
                throw new ArgumentException($"{parameter} is not a parameter of this model.", nameof(parameter));
            return _values[parameter.Id];
        }
    }

    public float[] ToArray(Node parameter)
    {
        var view = this[parameter];
        var result = new float[view.Length];
        Backend.CopyToHost(view, result);
        return result;
    }

    public void Set(Node parameter, ReadOnlySpan<float> values)
    {
        var view = this[parameter];
        if (values.Length != view.Length)
            throw new ArgumentException($"Parameter {parameter} has {view.Length} elements; got {values.Length}.", nameof(values));
        Backend.CopyFromHost(values, view);
    }
}
