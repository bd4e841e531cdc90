using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;

namespace ForwardAD.Training;

/// <summary>Loss and accuracy of a model on a data set.</summary>
public readonly record struct Evaluation(double Loss, double Accuracy);

/// <summary>
/// Evaluates a model on a whole data set in chunks: one forward-only plan for full chunks and one for
/// the remainder, compiled once and reused for every evaluation.
/// </summary>
public sealed class Evaluator
{
    private readonly Dataset _data;
    private readonly Plan _chunk;
    private readonly Plan? _tail;
    private readonly float[] _features, _labels, _logits;
    private readonly int[] _indices;

    /// <summary>Compiles evaluation-mode plans (batch norm by its running statistics, no tangents) for chunks of
    /// <paramref name="chunkSize"/> examples (at most the data set's size) and for the remainder.</summary>
    /// <param name="parameters">The parameters evaluated; later changes to them are seen by every <see cref="Evaluate"/>.</param>
    /// <param name="data">The examples, fed to the model's inputs "x" and "y".</param>
    /// <param name="chunkSize">Examples per forward pass: memory against the number of passes.</param>
    /// <exception cref="ArgumentException"><paramref name="data"/> is empty.</exception>
    public Evaluator(ParameterStore parameters, Dataset data, int chunkSize = 500)
    {
        if (data.Count == 0) throw new ArgumentException($"Data set '{data.Name}' is empty.", nameof(data));
        _data = data;
        int chunk = Math.Min(chunkSize, data.Count);
        _chunk = Plan.Compile(parameters, new PlanOptions(chunk) { Mode = PlanMode.Evaluation });
        int tail = data.Count % chunk;
        _tail = tail == 0 ? null : Plan.Compile(parameters, new PlanOptions(tail) { Mode = PlanMode.Evaluation });
        _features = new float[chunk * data.FeatureSize];
        _labels = new float[chunk];
        _logits = new float[chunk * parameters.Model.Output.Shape.ElementCount];
        _indices = new int[chunk];
    }

    /// <summary>The mean loss over every example and the accuracy (the fraction whose largest logit is at its label),
    /// with the parameters as they are now.</summary>
    public Evaluation Evaluate()
    {
        double loss = 0;
        int correct = 0;
        for (int start = 0; start < _data.Count; start += _chunk.BatchSize)
        {
            var plan = start + _chunk.BatchSize <= _data.Count ? _chunk : _tail!;
            int n = plan.BatchSize;
            for (int i = 0; i < n; i++) _indices[i] = start + i;
            _data.CopyBatch(_indices.AsSpan(0, n), _features.AsSpan(0, n * _data.FeatureSize), _labels.AsSpan(0, n));
            var model = plan.Model;
            plan.SetInput(model["x"], _features.AsSpan(0, n * _data.FeatureSize));
            plan.SetInput(model["y"], _labels.AsSpan(0, n));
            plan.Forward();
            loss += plan.MeanLoss() * n;
            int classes = model.Output.Shape.ElementCount;
            plan.Backend.CopyToHost(plan.Value(model.Output), _logits.AsSpan(0, n * classes));
            correct += CountCorrect(_logits.AsSpan(0, n * classes), _labels.AsSpan(0, n), classes);
        }
        return new Evaluation(loss / _data.Count, (double)correct / _data.Count);
    }

    /// <summary>Examples whose largest logit is at their label.</summary>
    public static int CountCorrect(ReadOnlySpan<float> logits, ReadOnlySpan<float> labels, int classes)
    {
        int correct = 0;
        for (int b = 0; b < labels.Length; b++)
            if (System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.Slice(b * classes, classes)) == (int)labels[b]) correct++;
        return correct;
    }
}
