using System.CommandLine;
using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class TrainCommand
{
    private sealed class Options
    {
        public readonly DataOptions Data = new();
        public readonly ModelOptions Model = new();
        public readonly GuesserOptions Guesser = new();
        public readonly RuleOptions Rule = new();
        public readonly DeviceOptions Device = new();
        public readonly Option<string> GuesserName = GuesserOptions.GuesserOption(DefaultGuesser);
        public readonly Option<int> Epochs = Opt.Int("epochs", 20, min: 1, max: 1_000_000).Describe("N", "passes over the training set");
        public readonly Option<int> BatchSize = Opt.Int("batch-size", 32, min: 1).Describe("B",
            "examples per step (default: per model, in the table below; at most the number of training examples)");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "seed of initialisation, split, shuffling and every guess");
        public readonly Option<int> CosineEvery = Opt.Int("cosine-every", 1, min: 0).Describe("N",
            "measure cos(estimate, backprop gradient) every N steps (default: per model, in the table below: each is a backprop pass; 0 = never)");
        public readonly Option<string?> Metrics = Opt.OptionalString("metrics").Describe("PATH",
            "per-epoch CSV (default runs/train-<guesser>-seed<S>-<config>.csv, where <config> is a hash of the run's configuration); " +
            "its 'run' column holds that hash. Beside it, at the end, its plot: the same path with .png and .svg (loss, accuracy, " +
            "cosine per site over the epochs; `forwardad plot CSV` redraws it)");
        public readonly Option<string?> Checkpoint = Opt.OptionalString("checkpoint").Describe("PATH", "write a safetensors checkpoint after every epoch (atomically)");
        public readonly Option<string?> Resume = Opt.OptionalString("resume").Describe("PATH",
            "continue a run from its checkpoint, bit for bit. The checkpoint records the run's configuration (data, split, " +
            "standardisation, model, guesser and its options, optimizer, rate, clipping, schedule, seed, batch size; --epochs too " +
            "when the schedule is step or cosine, whose length it sets), and any difference is refused. May differ: --epochs " +
            "(other schedules: train longer), --metrics, --checkpoint, --cosine-every, --quiet, --device and --tf32 (another device " +
            "continues the run to float rounding, not bit for bit). Rows of the metrics CSV from before the checkpoint are kept; " +
            "an empty CSV starts afresh; a CSV of another run or not written by this tool is an error (pass another --metrics).");
        public readonly Option<bool> Quiet = Opt.Flag("quiet").Describe("", "no live progress, only the final table");
        public readonly Option<bool> NoPlot = Opt.Flag("no-plot").Describe("", "write no plot");
        public readonly Option<bool> Augment = Opt.Flag("augment").Describe("",
            "random crop (padding --crop-padding) and horizontal flip of every training image, keyed by (seed, step): a resumed run augments identically");
        public readonly Option<int?> CropPadding = Opt.OptionalInt("crop-padding", 0).Describe("P",
            $"zeros added on each side before the random crop (with --augment; default {DefaultCropPadding})");
    }

    /// <summary>Without --guesser: GrAPE, a method without backprop. On digits (3×128, 20 epochs, SGD lr 0.1, seeds 1–3) it
    /// trains as well as DFA (test accuracy within 0.6 points, equal on two seeds) and, unlike DFA, it uses forward
    /// gradients (JVPs align its feedback); activation perturbation diverges and joint Wᵀ stays at chance at this rate.</summary>
    public const string DefaultGuesser = "grape";

    /// <summary>--augment's crop padding when --crop-padding is absent: 4 pixels, as in the usual CIFAR recipe.</summary>
    private const int DefaultCropPadding = 4;

    public static DocumentedCommand Create(CliContext context)
    {
        var o = new Options();
        var command = new DocumentedCommand("train", "Train an MLP or a CNN with a gradient guesser and report accuracies per epoch.", "forwardad train [options]")
        {
            Summary =
                "With no options it trains a 3×128 ReLU MLP (hidden 128,128) without backpropagation, with GrAPE (DFA whose " +
                "feedback matrices are aligned with forward-mode Jacobian estimates) and SGD, on the embedded digits data set " +
                "(1,797 8×8 images, no download) for 20 epochs, in a few seconds. --guesser backprop is the reference; " +
                "`forwardad compare` trains backprop and four methods without it side by side.",
            Footer =
                "Ctrl-C stops the run after the current step: with --checkpoint it writes the checkpoint there (within an epoch too) " +
                "and prints the command that resumes it; a second Ctrl-C ends at once. Exit code 130.",
        };
        o.Data.AddTo(command, validation: true);
        o.Model.AddTo(command);
        o.Guesser.AddTo(command, o.GuesserName, perModel: "per model and method, in the table under Training");
        o.Rule.AddTo(command, defaults: "per model and method, in the table under Training");
        o.Device.AddTo(command);
        command.Section("Training", [o.Epochs, o.BatchSize, o.Seed, o.CosineEvery, o.Augment, o.CropPadding],
            "Defaults per model and method (for the options not given; the run's first lines list those it took):\n" + TrainDefaults.Table());
        command.Section("Output and checkpoints", [o.Metrics, o.NoPlot, o.Checkpoint, o.Resume, o.Quiet]);
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        var console = context.Console;
        ulong seed = (ulong)p.GetValue(o.Seed);
        var guesserName = GuesserOptions.Canonical(p.GetValue(o.GuesserName)!);
        // Options not given take the defaults of this model family and method, which the banner lists.
        var defaults = TrainDefaults.For(p.GetValue(o.Model.Model)!, guesserName);
        int epochs = p.GetValue(o.Epochs);
        int batch = p.Given(o.BatchSize) ? p.GetValue(o.BatchSize) : defaults.BatchSize;
        int cosineEvery = p.Given(o.CosineEvery) ? p.GetValue(o.CosineEvery) : defaults.CosineEvery;
        o.Guesser.RejectUnused(p, [guesserName]);
        // Everything is checked and loaded before the first step: a bad option or file costs no epoch.
        var configuration = new RunConfiguration();
        RequireBatchForRanks(context.Communicator, batch);
        var (train, validation, test) = o.Data.LoadWithValidation(p, seed, configuration);
        if (batch > train.Count)
            throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples): no full batch to train on.");
        var model = o.Model.Build(p, train, configuration);
        if (guesserName == "ren" && model.LocalLossBlocks.IsEmpty)
            throw new UsageException($"--guesser ren is Ren et al.'s estimator for a LocalMixer (its blocks, local losses and LayerNorm outputs); this run's model is {configuration["model"]}. Use --model localmixer:SPEC, or another guesser.");
        var guesser = WithLocalLosses(o.Guesser.Build(p, guesserName, seed, configuration, defaults), model, configuration);
        var augmentation = Augmentation(p, o.Augment, o.CropPadding, train, configuration);
        var (rule, ruleDescription) = o.Rule.Build(p, train.Count / batch, epochs, configuration, defaults);
        var runHash = configuration.Hash(("seed", seed.ToString(CultureInfo.InvariantCulture)), ("batch_size", batch.ToString(CultureInfo.InvariantCulture)));
        var metricsPath = p.GetValue(o.Metrics) ?? Path.Combine("runs", $"train-{guesserName}-seed{seed}-{runHash}.csv"); // the option's name: ASCII, as typed
        var checkpoint = p.GetValue(o.Checkpoint);
        var resume = p.GetValue(o.Resume);
        bool quiet = p.GetValue(o.Quiet);
        foreach (var (option, path) in new[] { ("--metrics", metricsPath), ("--checkpoint", checkpoint), ("--resume", resume) })
            if (path is not null && Directory.Exists(path)) throw new IOException($"{option} {path}: is a directory; give a file path.");
        // Claimed before anything is read for a resume or written: a second run on these outputs is refused, not interleaved.
        using var outputs = context.WritesFiles ? OutputLock.Acquire($"train (metrics {metricsPath})", ("--metrics", metricsPath), ("--checkpoint", checkpoint ?? resume)) : null;
        var backend = o.Device.Create(p);

        var parameters = ParameterStore.Initialize(model, backend, seed);
        var communicator = context.Communicator;
        var trainer = new Trainer(guesser, rule, parameters, train, test,
            new TrainingOptions(batch, seed) { CosineEvery = cosineEvery, Augmentation = augmentation, Communicator = communicator, Validation = validation });
        var description = configuration.ToDictionary();
        List<EpochReport> reports = [];
        if (resume is not null)
        {
            try { trainer.Resume(resume, description); }
            catch (CheckpointMismatchException e)
            {
                // Only a changed configuration gets the hint; a damaged file's own message says what to do.
                throw new InvalidDataException($"{e.Message} --resume continues a run only with the options it was started with " +
                    "(the checkpoint's metadata lists them; see 'forwardad train --help' for those that may differ). To train with these options instead, " +
                    "start a new run: drop --resume and give a new --checkpoint path.", e);
            }
            // After the checkpoint's check, so that a changed option is reported as such, not as a foreign metrics file.
            if (context.WritesFiles)
                reports = MetricsFile.ReadForResume(metricsPath, runHash, context.Error).Where(r => r.Epoch < trainer.NextEpoch).ToList();
        }
        checkpoint ??= resume;
        // Data parallel: every rank runs this configuration on the same data from the same parameters, or none starts.
        trainer.RequireSameRun(description);

        var sizes = validation is null ? $"{train.Count} train / {test.Count} test" : $"{train.Count} train / {validation.Count} validation / {test.Count} test";
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] train: {train.Name} ({sizes}), {configuration["model"]}, {guesser.Name}, {ruleDescription}, batch {batch}, seed {seed}, {backend.Name}");
        var taken = defaults.Describe(guesserName, optimizer: !p.Given(o.Rule.Optimizer), rate: !p.Given(o.Rule.Optimizer) && !p.Given(o.Rule.Lr),
            batch: !p.Given(o.BatchSize), mode: GuesserOptions.UsesMode(guesserName) && !p.Given(o.Guesser.Mode),
            normalized: TrainDefaults.PulledBack.Contains(guesserName) && !p.Given(o.Guesser.Normalize), cosine: !p.Given(o.CosineEvery));
        if (taken.Length > 0) console.MarkupLineInterpolated($"{taken}");
        if (communicator.Size > 1) console.MarkupLineInterpolated($"data parallel: {DataParallelBanner(communicator, batch)}");
        foreach (var note in DataParallelNotes(communicator, model, guesser)) console.MarkupLineInterpolated($"{note}");
        if (ReadyMadeInputNote(p.GetValue(o.Model.Model)!, model) is { } inputNote) console.MarkupLineInterpolated($"{inputNote}");
        if (resume is not null) console.MarkupLineInterpolated($"resumed from {resume} at epoch {trainer.NextEpoch + 1}, step {trainer.Step}");
        // Per-site columns and lines are named by the sites' layers; feedback alignment covers every site but the output.
        string[] siteNames = [.. model.Sites.Select(site => site.Node.Name)];
        var interrupt = context.ListenForInterrupt();
        string[] alignedNames = [.. model.Sites.Where(site => site.Node != model.Output).Select(site => site.Node.Name)];
        void EpochDone(EpochReport report)
        {
            reports.Add(report);
            if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, description, ReplayFile.CheckpointNotes(p));
            if (context.WritesFiles) MetricsFile.Write(metricsPath, reports, runHash, siteNames, alignedNames);
        }
        try
        {
            if (quiet || !context.Interactive)
            {
                for (int e = trainer.NextEpoch; e < epochs; e++)
                {
                    EpochDone(trainer.RunEpoch(e, cancellationToken: interrupt));
                    if (!quiet) context.Output.WriteLine(Line(reports[^1], epochs));
                }
            }
            else
            {
                console.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(progress =>
                    {
                        var task = progress.AddTask("starting", maxValue: (long)epochs * trainer.StepsPerEpoch - trainer.Step);
                        var observer = new ProgressObserver(task, epochs, batch);
                        for (int e = trainer.NextEpoch; e < epochs; e++) EpochDone(trainer.RunEpoch(e, observer, interrupt));
                    });
            }
        }
        catch (OperationCanceledException) when (interrupt.IsCancellationRequested)
        {
            // Stopped between two steps: the checkpoint takes this step (within an epoch too), so no step is lost; the
            // metrics CSV already holds every finished epoch.
            if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, description, ReplayFile.CheckpointNotes(p));
            context.Error.WriteLine(Interruption.Message(trainer.Step, trainer.NextEpoch + 1, checkpoint, context.Arguments));
            return Interruption.ExitCode;
        }
        if (reports.Count == 0)
        {
            console.MarkupLine("nothing to do: the checkpoint has already completed every epoch.");
            return Cli.Success;
        }
        WriteEpochTable(console, reports, validation is not null, communicator.Size > 1, metricsPath);
        bool validated = validation is not null;
        var last = reports[^1];
        // The global cosine treats all parameters as one vector, which the largest sites dominate: each site's own line.
        if (last.SiteCosines.Any(c => !double.IsNaN(c)))
            console.MarkupLineInterpolated($"cosine to the backprop gradient per site, epoch {last.Epoch + 1} (cos global above: all parameters as one vector): {string.Join(", ", siteNames.Zip(last.SiteCosines, (name, c) => $"{name} {c:F3}"))}");
        if (validated)
            console.MarkupLineInterpolated($"final: train accuracy [green]{last.TrainAccuracy:P2}[/], validation accuracy [green]{last.ValidationAccuracy:P2}[/], test accuracy [green]{last.TestAccuracy:P2}[/]; metrics in {metricsPath}");
        else console.MarkupLineInterpolated($"final: train accuracy [green]{last.TrainAccuracy:P2}[/], test accuracy [green]{last.TestAccuracy:P2}[/]; metrics in {metricsPath}");
        if (!p.GetValue(o.NoPlot) && context.WritesFiles)
        {
            var (png, svg, _) = MetricsPlots.Draw(metricsPath);
            console.MarkupLineInterpolated($"plot in {png} and {svg}");
        }
        return Cli.Success;
    }

    /// <summary>On a model with local losses (the LocalMixer), activation guessers take each site's JVP of its own block's
    /// losses (Ren et al. 2022), not of the sum of all of them; recorded in the configuration.</summary>
    internal static Guessing.Guesser WithLocalLosses(Guessing.Guesser guesser, Graph.Model model, RunConfiguration? configuration)
    {
        if (model.Losses.Length == 1 || guesser is not Guessing.ActivationGuesser activation) return guesser;
        configuration?.Add("site_loss", "local");
        return activation with { Loss = Guessing.SiteLoss.Local };
    }

    /// <summary>The augmentation of --augment (null without it), checked against the data; recorded in the configuration.</summary>
    internal static Data.ImageAugmentation? Augmentation(ParseResult p, Option<bool> augment, Option<int?> cropPadding, Data.Dataset train, RunConfiguration configuration)
    {
        if (!p.GetValue(augment))
        {
            if (p.Given(cropPadding)) throw new UsageException("--crop-padding applies only with --augment. Add --augment or drop --crop-padding.");
            return null;
        }
        var augmentation = new Data.ImageAugmentation(p.GetValue(cropPadding) ?? DefaultCropPadding);
        try { augmentation.Validate(train.FeatureShape); }
        catch (ArgumentException e) { throw new UsageException($"--augment: {e.Message}"); }
        configuration.Add("augmentation", augmentation.ToString());
        return augmentation;
    }

    /// <summary>Refuses a batch that cannot give every rank an example (a usage error, found before anything is loaded).</summary>
    internal static void RequireBatchForRanks(ForwardAD.Distributed.Communicator communicator, int batch)
    {
        if (batch < communicator.Size)
            throw new UsageException($"--batch-size {batch} cannot be split over {communicator.Size} ranks: every rank needs at least one example of each batch. Use a batch of at least {communicator.Size} or fewer ranks.");
    }

    /// <summary>What a data-parallel run computes differently from one process, said in its banner: batch statistics are
    /// each rank's own, and mixing combines each rank's own examples.</summary>
    /// <summary>A ready-made CNN built for another input than the one it was sized for (vgg-small on 28×28×1 grey images):
    /// it works when its pooling fits, but the run should say so rather than pass silently for the net the name suggests.</summary>
    internal static string? ReadyMadeInputNote(string name, Graph.Model model)
    {
        var designed = Graph.CnnSpec.ReadyMade.Where(r => r.Name == name).Select(r => (Tensors.Shape?)r.DesignedFor).FirstOrDefault();
        var input = model.Nodes.First(n => n.Name == "x").Shape;
        return designed is not { } sized || sized == input ? null
            : $"note: {name} is sized for {Describe(sized)} images; it is built here for this data's {Describe(input)} (the same layers, other map sizes)";
        static string Describe(Tensors.Shape shape) => string.Join("×", shape.Dimensions.ToArray());
    }

    internal static IEnumerable<string> DataParallelNotes(ForwardAD.Distributed.Communicator communicator, Graph.Model model, Guessing.Guesser guesser)
    {
        if (communicator.Size == 1) yield break;
        if (model.States.Any())
            yield return "note: batch normalisation uses each rank's own batch statistics (its running statistics are averaged over the ranks), so this run is not the one-process computation";
        if (guesser is Guessing.ActivationGuesser { Hidden: var hidden } && Mixes(hidden))
            yield return "note: activation mixing combines each rank's own examples, so this run is not the one-process computation";
    }

    private static bool Mixes(Guessing.Guess guess) => guess switch
    {
        Guessing.MixingGuess => true,
        Guessing.MaskedGuess masked => Mixes(masked.Source),
        Guessing.NormalizedGuess normalized => Mixes(normalized.Source),
        Guessing.PulledBackGuess pulled => Mixes(pulled.Source),
        Guessing.ProjectedGuess projected => Mixes(projected.Source),
        _ => false,
    };

    /// <summary>"3 ranks (MPICH 4.0.2), 10–11 of the 32 examples of each batch per rank".</summary>
    internal static string DataParallelBanner(ForwardAD.Distributed.Communicator communicator, int batch)
    {
        int smallest = batch / communicator.Size, largest = (batch + communicator.Size - 1) / communicator.Size;
        return $"{communicator.Size} ranks ({communicator.Name}), {(smallest == largest ? $"{smallest}" : $"{smallest}–{largest}")} of the {batch} examples of each batch per rank";
    }

    /// <summary>The most rows the end-of-run table shows; a longer run shows one epoch in N (see <see cref="ShownEpochs"/>).</summary>
    internal const int MaxTableRows = 30;

    /// <summary>The end-of-run table of <paramref name="reports"/>, sized to the console (<see cref="ConsoleTable"/>):
    /// every epoch of a run of up to <see cref="MaxTableRows"/> epochs; a longer run's thinned, with a line that says so.</summary>
    internal static void WriteEpochTable(IAnsiConsole console, IReadOnlyList<EpochReport> reports, bool validated, bool dataParallel, string metricsPath)
    {
        List<TableColumnSpec> columns = [new("epoch"), new("train loss"), new("train acc"), new("test loss"), new("test acc"), new("cos global"),
            new("B·J align", DropOrder: 3), new("examples/s", DropOrder: 1)];
        if (validated) columns.AddRange([new("val loss"), new("val acc")]);
        if (dataParallel) columns.Add(new("bytes/step", DropOrder: 2));
        var (shown, stride, best) = ShownEpochs(reports, validated);
        var rows = shown.Select(i => reports[i]).Select(r => (string[])[.. Cells(r), .. validated ? [F(r.ValidationLoss), F(r.ValidationAccuracy, "P2")] : Array.Empty<string>(),
            .. dataParallel ? [F(r.ExchangedBytesPerStep, "N0")] : Array.Empty<string>()]).ToList();
        var (table, dropped) = ConsoleTable.Build(columns, rows, console.Profile.Width);
        console.Write(table);
        if (stride > 1)
            console.WriteLine($"one epoch in {stride} shown, and the first, the last{(best is null ? "" : $" and the best by {(validated ? "validation" : "test")} accuracy (epoch {reports[best.Value].Epoch + 1})")}; every epoch is in {metricsPath}");
        if (ConsoleTable.DroppedNote(dropped, metricsPath) is { } note) console.WriteLine(note);
    }

    /// <summary>The indices of the reports the end-of-run table shows: all of them up to <see cref="MaxTableRows"/>;
    /// beyond, every <c>Stride</c>-th epoch and always the first, the best (by validation accuracy when there is a
    /// validation set, else by test accuracy) and the last.</summary>
    internal static (IReadOnlyList<int> Shown, int Stride, int? Best) ShownEpochs(IReadOnlyList<EpochReport> reports, bool validated)
    {
        int count = reports.Count;
        int? best = null;
        for (int i = 0; i < count; i++)
        {
            double accuracy = validated ? reports[i].ValidationAccuracy : reports[i].TestAccuracy;
            if (!double.IsNaN(accuracy) && (best is not { } b || accuracy > (validated ? reports[b].ValidationAccuracy : reports[b].TestAccuracy))) best = i;
        }
        if (count <= MaxTableRows) return ([.. Enumerable.Range(0, count)], 1, best);
        int stride = (count + MaxTableRows - 4) / (MaxTableRows - 3); // at most MaxTableRows - 3 strided rows, then first, best and last
        var shown = new SortedSet<int> { 0, count - 1 };
        if (best is { } kept) shown.Add(kept);
        for (int i = stride - 1; i < count; i += stride) shown.Add(i);
        return ([.. shown], stride, best);
    }

    internal static string F(double v, string format = "F4") => double.IsNaN(v) ? "–" : v.ToString(format, CultureInfo.InvariantCulture);

    private static string[] Cells(EpochReport r) =>
    [
        (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), F(r.TrainLoss), F(r.TrainAccuracy, "P2"), F(r.TestLoss),
        F(r.TestAccuracy, "P2"), F(r.GlobalCosine, "F3"), r.FeedbackAlignment.IsEmpty ? "–" : F(r.FeedbackAlignment.Average(), "F3"), F(r.ExamplesPerSecond, "F0"),
    ];

    private static string Line(EpochReport r, int epochs) =>
        $"epoch {r.Epoch + 1}/{epochs}: train loss {F(r.TrainLoss)} acc {F(r.TrainAccuracy, "P2")}, " +
        (double.IsNaN(r.ValidationAccuracy) ? "" : $"validation loss {F(r.ValidationLoss)} acc {F(r.ValidationAccuracy, "P2")}, ") +
        $"test loss {F(r.TestLoss)} acc {F(r.TestAccuracy, "P2")}, " +
        $"cos {F(r.GlobalCosine, "F3")} (sites {string.Join(" ", r.SiteCosines.Select(c => F(c, "F3")))})" +
        (r.FeedbackAlignment.IsEmpty ? "" : $", B·J alignment {string.Join(" ", r.FeedbackAlignment.Select(c => F(c, "F3")))}") + $", {F(r.ExamplesPerSecond, "F0")} examples/s" +
        (r.ExchangedBytesPerStep > 0 ? $", {F(r.ExchangedBytesPerStep, "N0")} bytes/step exchanged" : "");

    /// <summary>The live progress line of a run: epoch, batch loss, speed, the last epoch's accuracies and cosine;
    /// <paramref name="label"/> (the method, when several runs share one display) goes first.</summary>
    internal sealed class ProgressObserver(ProgressTask task, int epochs, int batch, string? label = null) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value)
        {
            if (value.Completed is { } report) EpochCompleted(report);
            else StepCompleted(value.Epoch, value.BatchLoss);
        }

        private string _last = "";
        // Runs only while this run's epochs run: `compare` interleaves its methods epoch by epoch, and a clock running
        // through the other methods' epochs would divide this one's examples by all of their time.
        private readonly System.Diagnostics.Stopwatch _watch = new();
        private long _examples;

        private void StepCompleted(int epoch, double batchLoss)
        {
            task.Increment(1);
            // The clock starts at an epoch's first completed step, so that step's examples are not counted either.
            if (_watch.IsRunning) _examples += batch;
            else _watch.Start();
            string rate = _examples > 0 ? $" {_examples / _watch.Elapsed.TotalSeconds:F0} ex/s" : "";
            task.Description = $"{(label is null ? "" : label + ": ")}epoch {epoch + 1}/{epochs} loss {batchLoss:F3}{rate}{_last}";
        }

        private void EpochCompleted(EpochReport report)
        {
            _watch.Stop();
            _last = $" | last epoch: train acc {report.TrainAccuracy:P1}" + (double.IsNaN(report.ValidationAccuracy) ? "" : $" val acc {report.ValidationAccuracy:P1}") +
                $" test acc {report.TestAccuracy:P1} cos {F(report.GlobalCosine, "F3")}" +
                (report.FeedbackAlignment.IsEmpty ? "" : $" align {report.FeedbackAlignment.Average():F3}");
        }
    }
}
