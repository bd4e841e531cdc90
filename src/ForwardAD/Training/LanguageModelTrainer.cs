using System.Collections.Immutable;
using System.Diagnostics;
using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Training;

/// <summary>How to train a language model: batch size, the seed of every random choice, how often to measure the cosine
/// to backprop's gradient (every n-th step; 0 = never) and how many validation windows an evaluation reads.</summary>
public sealed record LanguageModelOptions(int BatchSize, ulong Seed)
{
    /// <summary>Measure the cosine of the estimate to backprop's gradient every n-th step (0, the default: never; a measured
    /// step also runs a backward pass).</summary>
    public int CosineEvery { get; init; }
    /// <summary>Windows per evaluation: the first N of the validation split, and of the test split when the corpus has one
    /// (null: all of them).</summary>
    public int? ValidationWindows { get; init; } = 256;

    /// <summary>The ranks of a data-parallel run: each trains on its share of every batch (docs/design.md §7). Default: one process.</summary>
    public Communicator Communicator { get; init; } = Communicator.SingleProcess;
}

/// <summary>Validation of a language model: mean cross-entropy per token (nats), the same in bits, next-byte accuracy.</summary>
public readonly record struct TextEvaluation(double Loss, double Accuracy, int Tokens)
{
    /// <summary>The loss in bits per token, Loss / ln 2: bits per character for the corpus's byte tokens.</summary>
    public double BitsPerCharacter => Loss / Math.Log(2);
}

/// <summary>What a stretch of training steps achieved: the mean batch loss over it, the validation, the mean cosines over
/// the measured steps (per site, then global; NaN when none was measured), speed and the total training wall time.</summary>
public sealed record LanguageModelReport(long Step, double TrainLoss, TextEvaluation Validation, ImmutableArray<double> SiteCosines,
    double GlobalCosine, double TokensPerSecond, TimeSpan TrainingTime)
{
    /// <summary>Data-parallel runs: mean bytes per step this rank handed to the communicator for the step (0 in one process).</summary>
    public double ExchangedBytesPerStep { get; init; }

    /// <summary>The evaluation on the test split, when the corpus has one (<see cref="TextCorpus.WithValidationFraction"/>); null otherwise.</summary>
    public TextEvaluation? Test { get; init; }
}

/// <summary>
/// Trains a <see cref="TransformerSpec"/> language model (any model with token inputs "x" and targets "y") on a
/// <see cref="TextCorpus"/> with any guesser and update rule: step s trains on the windows drawn from (seed, s), so a
/// run is reproducible from its seed, and a run resumed from its checkpoint (<see cref="SaveCheckpoint"/>, <see cref="Resume"/>:
/// parameters, model, optimizer and estimator state, progress; and the spec, what <see cref="TextSampler"/> needs) continues
/// bit for bit. <see cref="Validate"/> reads consecutive validation windows with an evaluation plan.
/// </summary>
public sealed class LanguageModelTrainer
{
    private readonly GradientEstimator _estimator;
    private readonly BackpropEstimator? _oracle;
    private readonly Optimizer _optimizer;
    private readonly ParameterStore _parameters;
    private readonly TextCorpus _corpus;
    private readonly LanguageModelOptions _options;
    private readonly Plan _validation;
    private readonly int _context;
    private readonly float[] _inputs, _targets, _validationInputs, _validationTargets, _logits;
    private readonly CosineMeter _cosines;
    private readonly Stopwatch _trainingTime = new();
    private readonly BatchShard _shard;
    private readonly DataParallelStep _dataParallel;
    private readonly TrainingCheckpoint _checkpoint;
    private bool _agreed;
    /// <summary>Training time of the run before this trainer's first step (restored by <see cref="Resume"/>).</summary>
    private TimeSpan _trainingTimeBefore;
    /// <summary>The stretch of steps the next report covers: it starts after the last report and outlives a cancelled
    /// <see cref="Train"/> (and, through the checkpoint, a resume), so that its report is the uninterrupted run's.</summary>
    private long _stretchStart;
    private double _stretchLossSum;
    private long _stretchExchanged;

    private const string StepKey = "step", TrainingSecondsKey = "training_seconds", StretchStartKey = "stretch_start", StretchLossSumKey = "stretch_loss_sum",
        StretchCosineSumsKey = "stretch_cosine_sums", StretchCosinesMeasuredKey = "stretch_cosines_measured", StretchExchangedKey = "stretch_exchanged_bytes";

    /// <summary>Compiles <paramref name="guesser"/> for this rank's share of the batch, the optimizer, a backprop oracle when
    /// cosines are measured, and an evaluation plan for the held-out windows.</summary>
    /// <param name="guesser">How each step's gradient is estimated.</param>
    /// <param name="rule">How the estimate updates the parameters.</param>
    /// <param name="parameters">The model's parameters: a model with token inputs "x" [T] and targets "y" [T] whose
    /// vocabulary holds the corpus's 256 byte tokens.</param>
    /// <param name="corpus">The text; its splits must each hold at least one window of T + 1 bytes.</param>
    /// <param name="options">Batch size, seed, cosine interval, evaluation size and communicator.</param>
    /// <exception cref="ArgumentException">The model lacks token inputs "x" and "y", its vocabulary is below 256, or a split
    /// of the corpus holds no window of the model's context.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The batch size is below 1.</exception>
    public LanguageModelTrainer(Guesser guesser, UpdateRule rule, ParameterStore parameters, TextCorpus corpus, LanguageModelOptions options)
    {
        var model = parameters.Model;
        if (model.Nodes.FirstOrDefault(n => n.Name == "x")?.Op is not TokensOp tokens || model.Nodes.FirstOrDefault(n => n.Name == "y")?.Op is not TokensOp)
            throw new ArgumentException("A language model needs token inputs named 'x' and targets named 'y' (TransformerSpec builds them).", nameof(parameters));
        if (tokens.Vocabulary < TextCorpus.Vocabulary)
            throw new ArgumentException($"The model's vocabulary ({tokens.Vocabulary}) is smaller than the corpus's byte tokens ({TextCorpus.Vocabulary}).", nameof(parameters));
        if (options.BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(options), $"The batch size must be at least 1; got {options.BatchSize}.");
        _context = tokens.Length;
        corpus.RequireContext(_context);
        (Guesser, Rule, _parameters, _corpus, _options) = (guesser, rule, parameters, corpus, options);
        _shard = BatchShard.Split(options.BatchSize, options.Communicator);
        _estimator = guesser.Compile(parameters, _shard);
        _dataParallel = new DataParallelStep(_estimator, _shard, parameters);
        _oracle = guesser is BackpropGuesser || options.CosineEvery <= 0 ? null : new BackpropEstimator(parameters, _shard, updatesRunningStatistics: false);
        _optimizer = new Optimizer(rule, parameters);
        int windows = WindowCount(HeldOutSplit.Validation);
        if (windows < 1) throw new ArgumentException($"{corpus.Name}: the validation split holds no window of {_context} + 1 bytes.", nameof(corpus));
        // One plan evaluates both held-out splits: its batch must fit the smaller one.
        if (corpus.HasTest) windows = Math.Min(windows, WindowCount(HeldOutSplit.Test));
        if (windows < 1) throw new ArgumentException($"{corpus.Name}: the test split holds no window of {_context} + 1 bytes.", nameof(corpus));
        int validationBatch = Math.Min(32, windows);
        _validation = Plan.Compile(parameters, new PlanOptions(validationBatch) { Mode = PlanMode.Evaluation });
        _inputs = new float[_shard.Count * _context];
        _targets = new float[_shard.Count * _context];
        _validationInputs = new float[validationBatch * _context];
        _validationTargets = new float[validationBatch * _context];
        _logits = new float[validationBatch * model.Output.Shape.ElementCount];
        _cosines = new CosineMeter(parameters);
        _checkpoint = new TrainingCheckpoint(TrainingCheckpoint.LanguageModel, parameters, () => StateBuffers,
            StepKey, TrainingSecondsKey, StretchStartKey, StretchLossSumKey, StretchCosineSumsKey, StretchCosinesMeasuredKey, StretchExchangedKey);
    }

    /// <summary>The gradient estimator's description.</summary>
    public Guesser Guesser { get; }
    /// <summary>The update rule the optimizer applies to each estimate.</summary>
    public UpdateRule Rule { get; }
    /// <summary>Optimizer steps taken so far (including those before a resume).</summary>
    public long Step { get; private set; }

    /// <summary>Wall time spent in training steps so far (including that before a resume; evaluations left out).</summary>
    public TimeSpan TrainingTime => _trainingTimeBefore + _trainingTime.Elapsed;

    /// <summary>Data-parallel runs: checks that every rank runs this configuration (<paramref name="description"/>, seed, batch),
    /// on the same text, from the same parameters and step; throws <see cref="RunMismatchException"/> on every rank otherwise.
    /// <see cref="Train"/> checks the trainer's own part before its first step.</summary>
    public void RequireSameRun(IReadOnlyDictionary<string, string> description)
    {
        var communicator = _options.Communicator;
        if (communicator.Size == 1) return;
        var host = new float[_parameters.All.Length];
        _parameters.Backend.CopyToHost(_parameters.All, host);
        var facts = new Dictionary<string, string>(description)
        {
            ["seed"] = _options.Seed.ToString(CultureInfo.InvariantCulture),
            ["batch_size"] = _options.BatchSize.ToString(CultureInfo.InvariantCulture),
            ["step"] = Step.ToString(CultureInfo.InvariantCulture),
            ["guesser"] = Guesser.Name,
            ["text_fingerprint"] = $"{_corpus.Name}:{_corpus.Bytes.Length}:{RunAgreement.Hash(_corpus.Bytes):x16}",
            ["parameters"] = RunAgreement.Fingerprint(host),
        };
        RunAgreement.Require(communicator, facts);
        _agreed = true;
    }

    private int WindowCount(HeldOutSplit split) => Math.Min(_options.ValidationWindows ?? int.MaxValue, _corpus.Windows(split, _context));

    /// <summary>Runs <paramref name="steps"/> training steps, then validates. The report covers the steps since the last
    /// report (these, and those of a cancelled call or of the run before a resume). <paramref name="cancellationToken"/> is
    /// looked at before every step: once it is cancelled, training stops at that step boundary with
    /// <see cref="OperationCanceledException"/>, the trainer consistent (<see cref="Step"/> counts the steps taken;
    /// <see cref="SaveCheckpoint"/> then writes a checkpoint that resumes there). In a data-parallel run every rank must be
    /// cancelled before the same step.</summary>
    public LanguageModelReport Train(int steps, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), $"Train at least one step; got {steps}.");
        if (!_agreed) RequireSameRun(new Dictionary<string, string>());
        long start = Step;
        var watch = Stopwatch.StartNew();
        _trainingTime.Start();
        try
        {
            for (int s = 0; s < steps; s++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                _corpus.TrainingBatch(_options.Seed, Step, _shard.Count, _context, _inputs, _targets, _shard.First);
                _estimator.SetBatch(_inputs, _targets);
                var (gradient, loss) = _dataParallel.Run(new RandomKey(_options.Seed, 0x6E55).Derive((ulong)Step), Step);
                _stretchExchanged += _dataParallel.LastTraffic.TotalBytes;
                if (!double.IsFinite(loss))
                    throw new TrainingDivergedException($"The batch loss became {loss} at step {Step} ({Guesser.Name}): training diverged. Lower the learning rate or clip the estimate (--lr, --clip).");
                if (_oracle is not null && Step % _options.CosineEvery == 0)
                {
                    _oracle.SetBatch(_inputs, _targets);
                    var exact = _oracle.Estimate(default).Gradient;
                    _options.Communicator.AllReduceSum(_parameters.Backend, exact); // the shares of the batch's gradient
                    _cosines.Add(gradient, exact);
                }
                _optimizer.Step(new UpdateInputs(Step, loss, new RandomKey(_options.Seed, 0x0971).Derive((ulong)Step)), gradient);
                _stretchLossSum += loss;
                Step++;
                progress?.Report(new TrainingProgress(0, (int)(Step - start - 1), steps, loss));
            }
        }
        finally { _trainingTime.Stop(); }
        double seconds = watch.Elapsed.TotalSeconds;
        long stretch = Step - _stretchStart;
        var cosines = _cosines.Means(exactGradient: Guesser is BackpropGuesser);
        var report = new LanguageModelReport(Step, _stretchLossSum / stretch, Validate(), [.. cosines[..^1]], cosines[^1],
            steps * (double)_options.BatchSize * _context / seconds, TrainingTime)
        {
            ExchangedBytesPerStep = (double)_stretchExchanged / stretch,
            Test = _corpus.HasTest ? Evaluate(HeldOutSplit.Test) : null,
        };
        (_stretchStart, _stretchLossSum, _stretchExchanged) = (Step, 0, 0);
        _cosines.Clear();
        return report;
    }

    /// <summary>Mean loss per token and next-byte accuracy over the first <see cref="LanguageModelOptions.ValidationWindows"/>
    /// consecutive validation windows (every window full, so each example's mean is a mean over T tokens).</summary>
    public TextEvaluation Validate() => Evaluate(HeldOutSplit.Validation);

    /// <summary>As <see cref="Validate"/>, on either held-out split (the test split only when the corpus has one).</summary>
    public TextEvaluation Evaluate(HeldOutSplit split)
    {
        if (split == HeldOutSplit.Test && !_corpus.HasTest)
            throw new InvalidOperationException($"{_corpus.Name} has no test split: carve a validation split first (TextCorpus.WithValidationFraction).");
        int windows = WindowCount(split), batch = _validation.BatchSize, vocabulary = _parameters.Model.Output.Shape.Last;
        double loss = 0;
        long correct = 0;
        int counted = 0;
        for (int first = 0; first + batch <= windows; first += batch)
        {
            for (int b = 0; b < batch; b++)
                _corpus.Window(split, first + b, _context, _validationInputs.AsSpan(b * _context, _context), _validationTargets.AsSpan(b * _context, _context));
            _validation.SetInput(_parameters.Model["x"], _validationInputs);
            _validation.SetInput(_parameters.Model["y"], _validationTargets);
            _validation.Forward();
            loss += _validation.MeanLoss() * batch;
            _validation.Backend.CopyToHost(_validation.Value(_parameters.Model.Output), _logits);
            correct += Evaluator.CountCorrect(_logits, _validationTargets, vocabulary);
            counted += batch;
        }
        return new TextEvaluation(loss / counted, (double)correct / (counted * _context), counted * _context);
    }

    /// <summary>Optimizer and estimator state, named as in checkpoints.</summary>
    private IEnumerable<(string Name, View Buffer)> StateBuffers =>
        _optimizer.State.Buffers.Select(b => ($"optimizer.{b.Name}", b.Buffer))
            .Concat(_estimator.StateBuffers.Select(b => ($"estimator.{b.Name}", b.Buffer)));

    /// <summary>What the trainer itself records besides the caller's description, and checks on resume: the spec is
    /// what <see cref="TextSampler.Load"/> builds the model from.</summary>
    private Dictionary<string, string> Configuration(TransformerSpec spec, IReadOnlyDictionary<string, string> description) => _checkpoint.Configuration(
        new Dictionary<string, string>
        {
            [TextSampler.SpecKey] = spec.ToString(),
            ["seed"] = _options.Seed.ToString(CultureInfo.InvariantCulture),
            ["batch_size"] = _options.BatchSize.ToString(CultureInfo.InvariantCulture),
        }, description);

    /// <summary>Parameters, model state, optimizer and estimator state under their names, with the model spec, the
    /// description (model, guesser, rule, text, every option of the run) and the progress as metadata (safetensors,
    /// atomic, checksummed): what <see cref="Resume"/> continues from and <see cref="TextSampler.Load"/> samples from.
    /// The progress holds the step, the training time so far and the unreported stretch (its loss sum, cosine sums and
    /// exchanged bytes), so a checkpoint written after a cancelled <see cref="Train"/> resumes to the same reports.
    /// <paramref name="notes"/>: text kept with the checkpoint, not compared on resume (as forwardad.note.KEY).</summary>
    public void SaveCheckpoint(string path, TransformerSpec spec, IReadOnlyDictionary<string, string> description, IReadOnlyDictionary<string, string>? notes = null)
    {
        var progress = new Dictionary<string, string>
        {
            [StepKey] = Step.ToString(CultureInfo.InvariantCulture),
            [TrainingSecondsKey] = PendingRestore.Numbers([TrainingTime.TotalSeconds]),
            [StretchStartKey] = _stretchStart.ToString(CultureInfo.InvariantCulture),
            [StretchLossSumKey] = PendingRestore.Numbers([_stretchLossSum]),
            [StretchCosineSumsKey] = PendingRestore.Numbers(_cosines.Sums),
            [StretchCosinesMeasuredKey] = _cosines.Measured.ToString(CultureInfo.InvariantCulture),
            [StretchExchangedKey] = _stretchExchanged.ToString(CultureInfo.InvariantCulture),
        };
        _checkpoint.Write(path, _options.Communicator, Configuration(spec, description), progress, notes);
    }

    /// <summary>
    /// Restores a checkpoint written by <see cref="SaveCheckpoint"/> for the same spec, description, seed and batch size,
    /// with the guarantees of <see cref="Trainer.Resume"/>: the file, every description key in both directions, the
    /// progress and every tensor are validated before anything changes; one <see cref="CheckpointMismatchException"/>
    /// names every difference and leaves this trainer as it was; a checkpoint of <see cref="Trainer"/> (or of an earlier
    /// version, which saved the parameters only) is refused with an <see cref="InvalidDataException"/> saying so.
    /// </summary>
    public void Resume(string path, TransformerSpec spec, IReadOnlyDictionary<string, string> description)
    {
        var restore = _checkpoint.Read(path, Configuration(spec, description));
        long step = restore.Count(StepKey, long.MaxValue);
        double seconds = restore.Numbers(TrainingSecondsKey, 1)[0];
        if (!(seconds >= 0 && seconds < TimeSpan.MaxValue.TotalSeconds / 2)) restore.Problem($"{TrainingSecondsKey} is {seconds}; expected seconds ≥ 0");
        long stretchStart = restore.Count(StretchStartKey, long.MaxValue);
        if (stretchStart > step) restore.Problem($"{StretchStartKey} {stretchStart} is after {StepKey} {step}");
        double lossSum = restore.Numbers(StretchLossSumKey, 1)[0];
        var cosineSums = restore.Numbers(StretchCosineSumsKey, _cosines.Sums.Count);
        long measured = restore.Count(StretchCosinesMeasuredKey, int.MaxValue);
        long exchanged = restore.Count(StretchExchangedKey, long.MaxValue);
        restore.Apply();
        Step = step;
        _trainingTime.Reset();
        _trainingTimeBefore = TimeSpan.FromSeconds(seconds);
        (_stretchStart, _stretchLossSum, _stretchExchanged) = (stretchStart, lossSum, exchanged);
        _cosines.Restore(cosineSums, (int)measured);
    }
}
