using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Distributed;

namespace ForwardAD.Training;

/// <summary>
/// The resumable checkpoint of a training run, one format for <see cref="Trainer"/> and <see cref="LanguageModelTrainer"/>:
/// parameters and model state under their node names, optimizer and estimator state ("optimizer.*", "estimator.*"), and
/// as safetensors metadata the run's configuration (the trainer's own settings and the caller's description) and its
/// progress (step counters and whatever else a trainer needs to continue bit for bit). Written atomically with a checksum
/// (<see cref="SafeTensors"/>). Reading validates everything before anything changes: <see cref="Read"/> checks the file
/// and the configuration, the trainer then parses its progress through <see cref="PendingRestore"/>, and
/// <see cref="PendingRestore.Apply"/> checks every tensor, throws one exception naming every difference, and only then
/// copies.
/// </summary>
internal sealed class TrainingCheckpoint
{
    public const string FormatKey = "forwardad.format", FormatVersion = "1";

    /// <summary>The command whose runs a checkpoint continues; absent in <see cref="Trainer"/>'s checkpoints, which
    /// predate the key and keep their format.</summary>
    public const string TrainerKey = "forwardad.trainer";

    /// <summary>The metadata keys of a checkpoint's notes: text kept with it and never compared on resume (the tool
    /// stores there the run's configuration as it can be replayed).</summary>
    public const string NotePrefix = "forwardad.note.";

    /// <summary>The trainers, by the command that runs them (what the messages tell a user to type).</summary>
    public const string Train = "train", LanguageModel = "lm";

    private readonly string _trainer;
    private readonly ParameterStore _parameters;
    private readonly Func<IEnumerable<(string Name, View Buffer)>> _stateBuffers;
    private readonly HashSet<string> _progressKeys;

    /// <param name="trainer"><see cref="Train"/> or <see cref="LanguageModel"/>.</param>
    /// <param name="parameters">The parameters and model state the checkpoint holds.</param>
    /// <param name="stateBuffers">Optimizer and estimator state, named as in the file; asked for at every write and read,
    /// since an optimizer may replace its state.</param>
    /// <param name="progressKeys">The metadata keys of the trainer's progress: recorded by the trainer, not compared
    /// with the run's configuration, and refused in a description.</param>
    public TrainingCheckpoint(string trainer, ParameterStore parameters, Func<IEnumerable<(string Name, View Buffer)>> stateBuffers, params string[] progressKeys)
    {
        _trainer = trainer;
        _parameters = parameters;
        _stateBuffers = stateBuffers;
        _progressKeys = [.. progressKeys];
    }

    /// <summary>A trainer's own settings and the caller's description as one map. The progress keys and the forwardad.*
    /// namespace are the trainer's; a description may repeat a setting (seed, batch size) only with the same value.</summary>
    public Dictionary<string, string> Configuration(IReadOnlyDictionary<string, string> own, IReadOnlyDictionary<string, string> description)
    {
        var configuration = new Dictionary<string, string>(own);
        foreach (var (key, value) in description)
        {
            if (key.StartsWith("forwardad.", StringComparison.Ordinal) || _progressKeys.Contains(key))
                throw new ArgumentException($"The description key '{key}' is reserved: the trainer records it itself. Use another name.", nameof(description));
            if (own.TryGetValue(key, out var mine) && mine != value)
                throw new ArgumentException($"The description says {key} is '{value}' but this trainer's is '{mine}'.", nameof(description));
            configuration[key] = value;
        }
        return configuration;
    }

    /// <summary>Writes the checkpoint (rank 0 of a data-parallel run; the others wait for it); <paramref name="notes"/>
    /// go under <see cref="NotePrefix"/>.</summary>
    public void Write(string path, Communicator communicator, IReadOnlyDictionary<string, string> configuration, IReadOnlyDictionary<string, string> progress,
        IReadOnlyDictionary<string, string>? notes = null)
    {
        var metadata = new Dictionary<string, string>(configuration) { [FormatKey] = FormatVersion };
        foreach (var (key, value) in notes ?? new Dictionary<string, string>()) metadata[NotePrefix + key] = value;
        if (_trainer != Train) metadata[TrainerKey] = _trainer;
        foreach (var (key, value) in progress) metadata[key] = value;
        var backend = _parameters.Backend;
        var tensors = new List<(string, int[], Func<float[]>)>();
        // Parameters, then model state (batch normalisation's running statistics), under their node names.
        foreach (var p in _parameters.Model.Parameters.Concat(_parameters.Model.States))
            tensors.Add((p.Name, [.. p.Shape.Dimensions], () => _parameters.ToArray(p)));
        foreach (var (name, buffer) in _stateBuffers())
            tensors.Add((name, [buffer.Length], () => { var host = new float[buffer.Length]; backend.CopyToHost(buffer, host); return host; }));
        communicator.WriteOnRankZero(path, () => SafeTensors.Write(path, tensors, metadata));
    }

    /// <summary>
    /// Reads a checkpoint and compares its configuration with <paramref name="expected"/> in both directions
    /// (<paramref name="optionalKeys"/>: settings that older checkpoints may lack). A file that is not a checkpoint, or
    /// is another trainer's, throws <see cref="InvalidDataException"/> naming the cause; differences are collected in
    /// the returned <see cref="PendingRestore"/>, which the trainer adds its progress to before it applies it.
    /// </summary>
    public PendingRestore Read(string path, IReadOnlyDictionary<string, string> expected, params string[] optionalKeys)
    {
        var (tensors, metadata) = SafeTensors.Read(path);
        RequireThisTrainers(path, metadata);
        var restore = new PendingRestore(path, tensors, metadata, _parameters, _stateBuffers);
        foreach (var (key, mine) in expected)
        {
            if (!metadata.TryGetValue(key, out var theirs))
            {
                if (!optionalKeys.Contains(key)) restore.Problem($"{key} is missing from the checkpoint but this run's is '{mine}'");
            }
            else if (theirs != mine) restore.Problem($"{key} is '{theirs}' but this run's is '{mine}'");
        }
        foreach (var (key, theirs) in metadata.OrderBy(m => m.Key, StringComparer.Ordinal))
            if (!expected.ContainsKey(key) && !key.StartsWith("forwardad.", StringComparison.Ordinal) && !_progressKeys.Contains(key))
                restore.Problem($"{key} is '{theirs}' but this run does not set it");
        return restore;
    }

    /// <summary>Refuses a file that is not a checkpoint of this trainer, saying what it is: a user who gives a language
    /// model's checkpoint to train (or the reverse) is told which command resumes it, not that it is no checkpoint.</summary>
    private void RequireThisTrainers(string path, IReadOnlyDictionary<string, string> metadata)
    {
        if (!metadata.TryGetValue(FormatKey, out var format) || format != FormatVersion)
        {
            // lm checkpoints used to hold the parameters and the spec only: `forwardad sample` reads them, nothing resumes them.
            if (format is null && metadata.ContainsKey(TextSampler.SpecKey))
                throw new InvalidDataException(_trainer == LanguageModel
                    ? $"{path}: an lm checkpoint of an earlier forwardad, which saved the parameters only (no optimizer state or progress): it cannot be resumed. " +
                      "`forwardad sample` still reads it; to train on, start a new run."
                    : $"{path}: this is an lm checkpoint (of an earlier forwardad, which saved the parameters only); `forwardad train --resume` continues train checkpoints only.");
            throw new InvalidDataException($"{path}: not a ForwardAD checkpoint (metadata '{FormatKey}' is {(format is null ? "missing" : $"'{format}'")}; expected '{FormatVersion}').");
        }
        var writer = metadata.GetValueOrDefault(TrainerKey, Train);
        if (writer != _trainer)
            throw new InvalidDataException($"{path}: this is {(writer == LanguageModel ? "an" : "a")} {writer} checkpoint; resume it with `forwardad {writer} --resume`. Nothing was changed.");
    }
}

/// <summary>
/// A checkpoint read and compared with the run, not yet applied: the trainer parses its progress here (each bad value
/// becomes one more difference), then <see cref="Apply"/> checks the tensors and either throws one
/// <see cref="CheckpointMismatchException"/> listing every difference, changing nothing, or copies every tensor in.
/// </summary>
internal sealed class PendingRestore
{
    private readonly string _path;
    private readonly IReadOnlyDictionary<string, NamedTensor> _tensors;
    private readonly ParameterStore _parameters;
    private readonly Func<IEnumerable<(string Name, View Buffer)>> _stateBuffers;
    private readonly List<string> _problems = [];

    internal PendingRestore(string path, IReadOnlyDictionary<string, NamedTensor> tensors, IReadOnlyDictionary<string, string> metadata,
        ParameterStore parameters, Func<IEnumerable<(string Name, View Buffer)>> stateBuffers)
    {
        (_path, _tensors, Metadata, _parameters, _stateBuffers) = (path, tensors, metadata, parameters, stateBuffers);
    }

    public IReadOnlyDictionary<string, string> Metadata { get; }

    public void Problem(string problem) => _problems.Add(problem);

    /// <summary>A whole number from 0 to <paramref name="max"/> under <paramref name="key"/>; 0 and a difference when it is not.</summary>
    public long Count(string key, long max)
    {
        if (!Metadata.TryGetValue(key, out var text)) Problem($"{key} is missing; expected a whole number from 0 to {max}");
        else if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long value) || value > max)
            Problem($"{key} is '{text}'; expected a whole number from 0 to {max}");
        else return value;
        return 0;
    }

    /// <summary><paramref name="length"/> numbers under <paramref name="key"/>, as <see cref="Numbers(IEnumerable{double})"/>
    /// wrote them (round-trip precision, so a resumed sum continues exactly); zeros and a difference when they are not.</summary>
    public double[] Numbers(string key, int length)
    {
        var values = new double[length];
        if (!Metadata.TryGetValue(key, out var text)) { Problem($"{key} is missing; expected {length} numbers"); return values; }
        var cells = text.Split(',');
        bool parsed = cells.Length == length;
        for (int i = 0; parsed && i < length; i++)
            parsed = double.TryParse(cells[i], NumberStyles.Float, CultureInfo.InvariantCulture, out values[i]);
        if (!parsed)
        {
            Problem($"{key} is '{text}'; expected {length} comma-separated numbers");
            Array.Clear(values);
        }
        return values;
    }

    /// <summary>Numbers as <see cref="Numbers(string, int)"/> reads them: comma-separated, each exactly (round trip).</summary>
    public static string Numbers(IEnumerable<double> values) => string.Join(',', values.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));

    /// <summary>Checks every parameter, model state and optimizer/estimator state tensor; throws
    /// <see cref="CheckpointMismatchException"/> naming every difference found (nothing changed), or copies them all in.</summary>
    public void Apply()
    {
        // Tensor differences usually share one cause (another model, rule or guesser): after the configuration's
        // differences, list the first few tensors and count the rest, so the cause is not buried under every tensor.
        int configurationProblems = _problems.Count;
        var loads = new List<(float[] Data, View Target)>();
        var known = new HashSet<string>();
        foreach (var p in _parameters.Model.Parameters.Concat(_parameters.Model.States))
        {
            known.Add(p.Name);
            if (!_tensors.TryGetValue(p.Name, out var t))
                Problem($"tensor '{p.Name}' is missing; the model has it with shape {p.Shape}");
            else if (!t.Shape.SequenceEqual(p.Shape.Dimensions))
                Problem($"tensor '{p.Name}' has shape [{string.Join(", ", t.Shape)}]; the model expects {p.Shape}");
            else loads.Add((t.Data, _parameters[p]));
        }
        foreach (var (name, buffer) in _stateBuffers())
        {
            known.Add(name);
            if (!_tensors.TryGetValue(name, out var t))
                Problem($"state '{name}' is missing (the checkpoint was written with another update rule or guesser)");
            else if (t.Shape is not [var length] || length != buffer.Length)
                Problem($"state '{name}' has shape [{string.Join(", ", t.Shape)}]; this run's has [{buffer.Length}]");
            else loads.Add((t.Data, buffer));
        }
        foreach (var name in _tensors.Keys.Where(n => !known.Contains(n)).Order(StringComparer.Ordinal))
            Problem($"tensor '{name}' is in the checkpoint but not in this run's model, update rule or guesser");

        const int ListedTensors = 3;
        int tensorProblems = _problems.Count - configurationProblems;
        if (tensorProblems > ListedTensors + 1)
        {
            _problems.RemoveRange(configurationProblems + ListedTensors, tensorProblems - ListedTensors);
            _problems.Add($"{tensorProblems - ListedTensors} more tensor differences");
        }
        if (_problems.Count > 0)
        {
            const int Listed = 25;
            var listed = string.Join("; ", _problems.Take(Listed)) + (_problems.Count > Listed ? $"; and {_problems.Count - Listed} more" : "");
            throw new CheckpointMismatchException($"{_path}: the checkpoint differs from this run: {listed}. Resume with the model, data and options " +
                "the run was started with, or start a new run; nothing was changed.");
        }
        foreach (var (data, target) in loads) _parameters.Backend.CopyFromHost(data, target);
    }
}
