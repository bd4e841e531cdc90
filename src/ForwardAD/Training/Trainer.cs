using System.Collections.Immutable;
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

/// <summary>What one epoch achieved. Cosines are means over the measured steps of the epoch of
/// cos(estimate, backprop gradient), per site (its op's parameters together: a dense layer's weight and bias) in
/// <see cref="Model.Sites"/> order, and over all parameters; NaN only when measuring is off
/// (<see cref="TrainingOptions.CosineEvery"/> = 0).</summary>
public sealed record EpochReport(int Epoch, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy,
    ImmutableArray<double> SiteCosines, double GlobalCosine, double ExamplesPerSecond, TimeSpan WallTime)
{
    /// <summary>For feedback-alignment guessers: per hidden site, the mean row-cosine of B_l to the exact J_lᵀ
    /// on the epoch's last batch (empty otherwise).</summary>
    public ImmutableArray<double> FeedbackAlignment { get; init; } = [];

    /// <summary>Mean wall time of one training step (batch copy, estimate, update), without the cosine measurement
    /// (a backprop pass of its own) and the evaluation: the cost of the method itself. Zero when unknown (rows read
    /// back from a metrics file).</summary>
    public TimeSpan StepTime { get; init; }

    /// <summary>Data-parallel runs: the mean bytes per step this rank handed to the communicator for the step itself (the
    /// exchange of the update or of the JVP scalars, the loss, running statistics; not the cosine measurement). Zero in
    /// one process.</summary>
    public double ExchangedBytesPerStep { get; init; }

    /// <summary>Loss and accuracy on <see cref="TrainingOptions.Validation"/>, evaluated after the epoch like the test set;
    /// NaN without a validation set. Hyperparameters are chosen on these, never on the test set.</summary>
    public double ValidationLoss { get; init; } = double.NaN;

    /// <inheritdoc cref="ValidationLoss"/>
    public double ValidationAccuracy { get; init; } = double.NaN;
}

/// <summary>
/// Progress of a run, reported through <see cref="IProgress{T}"/> on the training thread (a struct, so a report allocates
/// nothing): after each optimizer step (<see cref="Completed"/> null), and after each epoch's evaluations with its report.
/// </summary>
/// <param name="Epoch">The epoch, from 0 (0 for a language model, which counts steps only).</param>
/// <param name="Step">The step within the epoch (or within the call, for a language model), from 0; after an epoch, the
/// steps per epoch.</param>
/// <param name="StepsPerEpoch">Steps in an epoch (full batches only), or the steps of the call for a language model.</param>
/// <param name="BatchLoss">The mean loss of the step's global batch, before the update; NaN in an epoch's report.</param>
/// <param name="Completed">The epoch's report once its evaluations are done; null after a step.</param>
public readonly record struct TrainingProgress(int Epoch, int Step, int StepsPerEpoch, double BatchLoss, EpochReport? Completed = null);

/// <summary>How to train: batch size, the seed every random choice derives from, and how often to
/// measure the estimate's cosine to the backprop gradient (every n-th step, and at least once per epoch: its last
/// step when no other step was due; 0 = never).</summary>
public sealed record TrainingOptions(int BatchSize, ulong Seed)
{
    /// <summary>Measure the cosine of the estimate to backprop's gradient every n-th step, and at least at an epoch's last
    /// step when no other step of it was due (default 1: every step; 0: never). A measured step also runs a backward pass.</summary>
    public int CosineEvery { get; init; } = 1;

    /// <summary>Random crop and flip of every training batch (images only), keyed by (seed, step); null: none.</summary>
    public Data.ImageAugmentation? Augmentation { get; init; }

    /// <summary>The ranks of a data-parallel run (docs/design.md §7): each trains on its share of every batch of
    /// <see cref="BatchSize"/> examples, split by global example index, and the ranks together compute what one process
    /// with the whole batch computes. Default: one process.</summary>
    public Communicator Communicator { get; init; } = Communicator.SingleProcess;

    /// <summary>Examples held out of the training set (disjoint from it; the caller carves them), evaluated after every
    /// epoch into <see cref="EpochReport.ValidationLoss"/> and <see cref="EpochReport.ValidationAccuracy"/>; null: none.</summary>
    public Dataset? Validation { get; init; }
}

/// <summary>
/// Mini-batch training with any guesser and update rule: every epoch a Philox permutation of the training
/// set (seed, epoch), full batches only, one estimate and one optimizer step per batch, then an evaluation
/// on the train and test sets. Every random number derives from (seed, step) or (seed, epoch), so a run
/// resumed from a checkpoint continues bit for bit.
/// </summary>
public sealed class Trainer
{
    private const string StepKey = "step", EpochsKey = "epochs_completed", StepsPerEpochKey = "steps_per_epoch";
    /// <summary>Progress within an unfinished epoch (checkpoints written after a cancellation only).</summary>
    private const string EpochCosineSumsKey = "epoch_cosine_sums", EpochCosinesMeasuredKey = "epoch_cosines_measured", EpochExchangedKey = "epoch_exchanged_bytes";

    private readonly GradientEstimator _estimator;
    private readonly BackpropEstimator? _oracle;
    private readonly Optimizer _optimizer;
    private readonly ParameterStore _parameters;
    private readonly Dataset _train;
    private readonly Evaluator _trainEvaluator, _testEvaluator;
    private readonly Evaluator? _validationEvaluator;
    private readonly TrainingOptions _options;
    private readonly float[] _features, _labels;
    private readonly int[] _order;
    private readonly float[] _augmentationScratch;
    private readonly CosineMeter _cosines;
    private readonly BatchShard _shard;
    private readonly DataParallelStep _dataParallel;
    private readonly string _dataFingerprint;
    private readonly TrainingCheckpoint _checkpoint;
    private bool _agreed;
    private long _step;
    /// <summary>The epoch a cancellation (or a resume of its checkpoint) left with steps still to take; its cosine sums
    /// and exchanged bytes so far are kept for its report.</summary>
    private int? _unfinishedEpoch;
    private long _epochExchanged;

    /// <summary>Compiles <paramref name="guesser"/> for this rank's share of the batch, the optimizer, a backprop oracle when
    /// cosines are measured, and evaluators for the train, test and validation sets.</summary>
    /// <param name="guesser">How each step's gradient is estimated.</param>
    /// <param name="rule">How the estimate updates the parameters.</param>
    /// <param name="parameters">The model's parameters: a classifier with input "x" of the data's feature size and labels "y".</param>
    /// <param name="train">The training set: shuffled every epoch, full batches only.</param>
    /// <param name="test">The test set, evaluated after every epoch.</param>
    /// <param name="options">Batch size, seed, cosine interval, augmentation, validation set and communicator.</param>
    /// <exception cref="ArgumentOutOfRangeException">The batch size is below 1.</exception>
    /// <exception cref="ArgumentException">The training set holds fewer examples than one batch, its feature size is not the
    /// model's input size, it has more classes than the model, or the validation set's feature size differs.</exception>
    public Trainer(Guesser guesser, UpdateRule rule, ParameterStore parameters, Dataset train, Dataset test, TrainingOptions options)
    {
        int batch = options.BatchSize;
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(options), $"The batch size must be at least 1; got {batch}.");
        if (train.Count < batch)
            throw new ArgumentException($"The training set '{train.Name}' has {train.Count} examples, fewer than one batch of {batch}. Use a smaller batch size.");
        var model = parameters.Model;
        var x = model["x"];
        if (x.Shape.ElementCount != train.FeatureSize)
            throw new ArgumentException($"The model's input {x} takes {x.Shape.ElementCount} values per example; '{train.Name}' has {train.FeatureSize}.");
        if (model.Nodes.Any(n => n.Op is ClassLabelsOp labels && labels.Classes < train.Classes))
            throw new ArgumentException($"'{train.Name}' has {train.Classes} classes; the model has fewer outputs.");
        Guesser = guesser;
        Rule = rule;
        _parameters = parameters;
        _options = options;
        _shard = BatchShard.Split(batch, options.Communicator);
        _estimator = guesser.Compile(parameters, _shard);
        _dataParallel = new DataParallelStep(_estimator, _shard, parameters);
        _oracle = guesser is BackpropGuesser || options.CosineEvery <= 0 ? null : new BackpropEstimator(parameters, _shard, updatesRunningStatistics: false);
        _optimizer = new Optimizer(rule, parameters);
        _train = train;
        _trainEvaluator = new Evaluator(parameters, train);
        _testEvaluator = new Evaluator(parameters, test);
        if (options.Validation is { } validation)
        {
            if (validation.FeatureSize != train.FeatureSize)
                throw new ArgumentException($"The validation set '{validation.Name}' has {validation.FeatureSize} values per example; the training set '{train.Name}' has {train.FeatureSize}.", nameof(options));
            _validationEvaluator = new Evaluator(parameters, validation);
        }
        _features = new float[_shard.Count * train.FeatureSize];
        _labels = new float[_shard.Count];
        _order = new int[train.Count];
        options.Augmentation?.Validate(train.FeatureShape);
        _augmentationScratch = options.Augmentation is null ? [] : new float[train.FeatureSize];
        _cosines = new CosineMeter(parameters);
        _dataFingerprint = options.Communicator.Size > 1 ? Fingerprint(train) + "/" + Fingerprint(test) : "";
        _checkpoint = new TrainingCheckpoint(TrainingCheckpoint.Train, parameters, () => StateBuffers,
            StepKey, EpochsKey, EpochCosineSumsKey, EpochCosinesMeasuredKey, EpochExchangedKey);
    }

    /// <summary>The name, size and a fingerprint of every example of a data set: ranks that read different files differ.</summary>
    private static string Fingerprint(Dataset data)
    {
        const int Chunk = 512;
        var indices = new int[Chunk];
        var features = new float[Chunk * data.FeatureSize];
        var labels = new float[Chunk];
        ulong hash = RunAgreement.EmptyHash;
        for (int start = 0; start < data.Count; start += Chunk)
        {
            int n = Math.Min(Chunk, data.Count - start);
            for (int i = 0; i < n; i++) indices[i] = start + i;
            data.CopyBatch(indices.AsSpan(0, n), features.AsSpan(0, n * data.FeatureSize), labels.AsSpan(0, n));
            hash = RunAgreement.Hash(labels.AsSpan(0, n), RunAgreement.Hash(features.AsSpan(0, n * data.FeatureSize), hash));
        }
        return $"{data.Name}:{data.Count}x{data.FeatureSize}:{hash:x16}";
    }

    /// <summary>This rank's share of every batch and the communicator of the run.</summary>
    public BatchShard Shard => _shard;

    /// <summary>
    /// Data-parallel runs: checks that every rank runs this configuration (the trainer's settings and
    /// <paramref name="description"/>), on the same data, from the same parameters and step, and throws
    /// <see cref="RunMismatchException"/> on every rank otherwise. <see cref="RunEpoch"/> checks the trainer's own part
    /// before its first step; call this first to include the caller's description (model, guesser, rule …). One
    /// process: nothing to check.
    /// </summary>
    public void RequireSameRun(IReadOnlyDictionary<string, string> description)
    {
        var communicator = _options.Communicator;
        if (communicator.Size == 1) return;
        var facts = Configuration(description);
        facts["data"] = _dataFingerprint;
        facts["parameters"] = ParameterFingerprint();
        facts[StepKey] = _step.ToString(CultureInfo.InvariantCulture);
        facts["guesser"] = Guesser.Name;
        RunAgreement.Require(communicator, facts);
        _agreed = true;
    }

    private string ParameterFingerprint()
    {
        var host = new float[_parameters.All.Length];
        _parameters.Backend.CopyToHost(_parameters.All, host);
        return RunAgreement.Fingerprint(host);
    }

    /// <summary>The gradient estimator's description.</summary>
    public Guesser Guesser { get; }
    /// <summary>The update rule the optimizer applies to each estimate.</summary>
    public UpdateRule Rule { get; }
    /// <summary>⌊N/B⌋: full batches per epoch; the remainder of the permutation is left out of that epoch.</summary>
    public int StepsPerEpoch => _train.Count / _options.BatchSize;
    /// <summary>Optimizer steps taken so far (over all epochs, including those before a resume).</summary>
    public long Step => _step;
    /// <summary>The epoch the next <see cref="RunEpoch"/> should run (after a resume, the first unfinished one).</summary>
    public int NextEpoch { get; private set; }

    /// <summary>Runs one epoch (0-based) and evaluates. <paramref name="cancellationToken"/> is looked at before every
    /// step: once it is cancelled the epoch stops at that step boundary with <see cref="OperationCanceledException"/>,
    /// the trainer consistent (<see cref="Step"/> counts the steps taken; <see cref="SaveCheckpoint"/> then writes a
    /// checkpoint that continues this epoch), and the next call for the same epoch takes its remaining steps. In a
    /// data-parallel run every rank must be cancelled before the same step.</summary>
    public EpochReport RunEpoch(int epoch, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        long measuring = 0; // Stopwatch ticks spent in the oracle, left out of StepTime
        int batch = _options.BatchSize;
        if (!_agreed) RequireSameRun(new Dictionary<string, string>());
        var communicator = _options.Communicator;
        // A cancelled epoch goes on where it stopped, with what it had measured; any other epoch starts afresh.
        int first = 0;
        if (_unfinishedEpoch == epoch) first = (int)(_step - (long)epoch * StepsPerEpoch);
        else
        {
            _cosines.Clear();
            _epochExchanged = 0;
        }
        _unfinishedEpoch = null;
        // Every rank permutes the whole training set alike and takes its share of each batch (by global index).
        Dataset.Permute(new RandomKey(_options.Seed, 0xE90C).Derive((ulong)epoch), _order);
        for (int s = first; s < StepsPerEpoch; s++)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                // Nothing of step s has happened yet: the epoch is unfinished only when some of its steps are done.
                NextEpoch = epoch;
                if (s > 0) _unfinishedEpoch = epoch;
                cancellationToken.ThrowIfCancellationRequested();
            }
            _train.CopyBatch(_order.AsSpan(s * batch + _shard.First, _shard.Count), _features, _labels);
            _options.Augmentation?.Apply(_features, _train.FeatureShape, new RandomKey(_options.Seed, 0xA06E).Derive((ulong)_step), _augmentationScratch, _shard.First);
            _estimator.SetBatch(_features, _labels);
            var (gradient, loss) = _dataParallel.Run(new RandomKey(_options.Seed, 0x6E55).Derive((ulong)_step), _step);
            _epochExchanged += _dataParallel.LastTraffic.TotalBytes;
            if (!double.IsFinite(loss))
                throw new TrainingDivergedException($"The batch loss became {loss} at epoch {epoch + 1}, step {_step} ({Guesser.Name}): training diverged. " +
                    "Lower the learning rate or clip the estimate (--lr, --clip); the last checkpoint, if any, is intact.");
            // Every CosineEvery-th step, and the epoch's last step when no other was due (CosineEvery beyond the
            // epoch's length would leave whole epochs unmeasured). Both depend on the step count only, so a resumed
            // run measures the same steps.
            if (_oracle is not null && (_step % _options.CosineEvery == 0 || (_cosines.Measured == 0 && s == StepsPerEpoch - 1)))
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                _oracle.SetBatch(_features, _labels);
                var (exact, _) = _oracle.Estimate(default);
                communicator.AllReduceSum(_parameters.Backend, exact); // the shares of the batch's gradient
                _cosines.Add(gradient, exact);
                measuring += System.Diagnostics.Stopwatch.GetTimestamp() - start;
            }
            _optimizer.Step(new UpdateInputs(_step, loss, new RandomKey(_options.Seed, 0x0971).Derive((ulong)_step)), gradient);
            _step++;
            progress?.Report(new TrainingProgress(epoch, s, StepsPerEpoch, loss));
        }
        double seconds = watch.Elapsed.TotalSeconds;
        int taken = StepsPerEpoch - first; // this call's steps: the speed of a continued epoch is that of its remaining steps
        var stepTime = TimeSpan.FromSeconds(Math.Max(0, seconds - (double)measuring / System.Diagnostics.Stopwatch.Frequency) / taken);
        var train = _trainEvaluator.Evaluate();
        var test = _testEvaluator.Evaluate();
        var validation = _validationEvaluator?.Evaluate() ?? new Evaluation(double.NaN, double.NaN);
        var cosines = _cosines.Means(exactGradient: Guesser is BackpropGuesser);
        var alignment = ImmutableArray<double>.Empty;
        if (_estimator is IFeedbackAlignment feedback && _oracle is not null)
        {
            _oracle.SetBatch(_features, _labels);
            alignment = [.. feedback.MeasureAlignment(_oracle)];
        }
        // The ranks apply the same updates to the same parameters; a difference now would mean they drifted apart.
        if (communicator.Size > 1)
            RunAgreement.Require(communicator, new Dictionary<string, string> { ["parameters"] = ParameterFingerprint() }, "set of parameters at the end of the epoch");
        var report = new EpochReport(epoch, train.Loss, train.Accuracy, test.Loss, test.Accuracy,
            [.. cosines[..^1]], cosines[^1], taken * batch / seconds, watch.Elapsed)
        {
            FeedbackAlignment = alignment, StepTime = stepTime, ExchangedBytesPerStep = (double)_epochExchanged / StepsPerEpoch,
            ValidationLoss = validation.Loss, ValidationAccuracy = validation.Accuracy,
        };
        NextEpoch = epoch + 1;
        progress?.Report(new TrainingProgress(epoch, StepsPerEpoch, StepsPerEpoch, double.NaN, report));
        return report;
    }

    /// <summary>Optimizer and estimator state, named as in checkpoints.</summary>
    private IEnumerable<(string Name, View Buffer)> StateBuffers =>
        _optimizer.State.Buffers.Select(b => ($"optimizer.{b.Name}", b.Buffer))
            .Concat(_estimator.StateBuffers.Select(b => ($"estimator.{b.Name}", b.Buffer)));

    /// <summary>What the trainer itself records in a checkpoint besides the caller's description, and checks on resume.</summary>
    private Dictionary<string, string> OwnSettings
    {
        get
        {
            var settings = new Dictionary<string, string>
            {
                ["seed"] = _options.Seed.ToString(CultureInfo.InvariantCulture),
                ["batch_size"] = _options.BatchSize.ToString(CultureInfo.InvariantCulture),
                [StepsPerEpochKey] = StepsPerEpoch.ToString(CultureInfo.InvariantCulture),
            };
            // Only when on, so that checkpoints of runs without augmentation read as before.
            if (_options.Augmentation is { } augmentation) settings["augmentation"] = augmentation.ToString();
            return settings;
        }
    }

    /// <summary>The description and the trainer's own settings as one map (see <see cref="TrainingCheckpoint.Configuration"/>).</summary>
    private Dictionary<string, string> Configuration(IReadOnlyDictionary<string, string> description) => _checkpoint.Configuration(OwnSettings, description);

    /// <summary>The prefix of a checkpoint's notes in its safetensors metadata: note KEY is stored as NotePrefix + KEY.</summary>
    public const string NotePrefix = TrainingCheckpoint.NotePrefix;

    /// <summary>
    /// Writes parameters, optimizer state and progress as safetensors (readable by PyTorch), atomically, with a
    /// checksum of the tensor bytes. <paramref name="description"/> (model, guesser, rule, data, every option of the
    /// run) is stored as metadata and checked on resume. Between epochs the progress is the step and the epochs completed;
    /// after a cancelled <see cref="RunEpoch"/>, also what the unfinished epoch has measured so far, so that a resumed run
    /// finishes that epoch with the report the uninterrupted run gives. <paramref name="notes"/>: text kept with the
    /// checkpoint and not compared on resume, stored in the metadata as forwardad.note.KEY (<see cref="Data.SafeTensors.Read"/>
    /// reads it back).
    /// </summary>
    public void SaveCheckpoint(string path, IReadOnlyDictionary<string, string> description, IReadOnlyDictionary<string, string>? notes = null)
    {
        var progress = new Dictionary<string, string>
        {
            [EpochsKey] = NextEpoch.ToString(CultureInfo.InvariantCulture),
            [StepKey] = _step.ToString(CultureInfo.InvariantCulture),
        };
        if (_unfinishedEpoch is not null)
        {
            progress[EpochCosineSumsKey] = PendingRestore.Numbers(_cosines.Sums);
            progress[EpochCosinesMeasuredKey] = _cosines.Measured.ToString(CultureInfo.InvariantCulture);
            progress[EpochExchangedKey] = _epochExchanged.ToString(CultureInfo.InvariantCulture);
        }
        _checkpoint.Write(path, _options.Communicator, Configuration(description), progress, notes);
    }

    /// <summary>
    /// Restores a checkpoint written by <see cref="SaveCheckpoint"/> for the same description (model, guesser, rule,
    /// options), seed and batch size. Everything is validated before anything is changed: the file (format,
    /// checksum), every description key in both directions, the progress counters, every parameter and state
    /// tensor with its shape. One <see cref="InvalidDataException"/> names the file and every difference found, and
    /// leaves this trainer (parameters, optimizer and estimator state, progress) exactly as it was. A checkpoint written
    /// within an epoch (after a cancellation) continues that epoch: the next <see cref="RunEpoch"/> of
    /// <see cref="NextEpoch"/> takes its remaining steps.
    /// </summary>
    public void Resume(string path, IReadOnlyDictionary<string, string> description)
    {
        // Checkpoints written before the trainer recorded its steps per epoch still resume.
        var restore = _checkpoint.Read(path, Configuration(description), optionalKeys: StepsPerEpochKey);
        long step = restore.Count(StepKey, long.MaxValue);
        int epochs = (int)restore.Count(EpochsKey, int.MaxValue - 1);
        // Within an epoch: the step lies inside epoch `epochs` and the epoch's measurements so far come along.
        bool within = restore.Metadata.ContainsKey(EpochCosinesMeasuredKey);
        long stepInEpoch = step - (long)epochs * StepsPerEpoch;
        double[] sums = [];
        long measured = 0, exchanged = 0;
        if (within)
        {
            if (stepInEpoch <= 0 || stepInEpoch >= StepsPerEpoch)
                restore.Problem($"{StepKey} {step} is not within epoch {epochs + 1} of {StepsPerEpoch} steps, which the checkpoint says was unfinished");
            sums = restore.Numbers(EpochCosineSumsKey, _cosines.Sums.Count);
            measured = restore.Count(EpochCosinesMeasuredKey, int.MaxValue);
            exchanged = restore.Count(EpochExchangedKey, long.MaxValue);
        }
        restore.Apply();
        _step = step;
        NextEpoch = epochs;
        _unfinishedEpoch = within ? epochs : null;
        if (within) _cosines.Restore(sums, (int)measured);
        _epochExchanged = exchanged;
    }
}

/// <summary>Thrown by <see cref="Trainer.Resume"/> and <see cref="LanguageModelTrainer.Resume"/> when a readable checkpoint belongs to another run (configuration,
/// progress or tensors differ), as opposed to a damaged or foreign file: the caller can then say how to resume.</summary>
public sealed class CheckpointMismatchException(string message) : ArgumentException(message);

/// <summary>Thrown when the loss stops being finite: the run cannot continue meaningfully.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);
