using System.CommandLine;
using System.Globalization;
using System.Text;
using ForwardAD.Autodiff;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>`forwardad lm`: a byte-level transformer language model on a text with any guesser; `forwardad sample`:
/// text from its checkpoint.</summary>
internal static class LanguageModelCommands
{
    private sealed class LmOptions
    {
        public readonly GuesserOptions Guesser = new();
        public readonly RuleOptions Rule = new();
        public readonly DeviceOptions Device = new();
        public readonly Option<string> GuesserName = GuesserOptions.GuesserOption("backprop", excluded: "ren");
        public readonly Option<string> Model = Opt.String("model", "transformer:l4-h4-d128-t64").Describe("transformer:SPEC", $"SPEC {TransformerSpec.Grammar}");
        public readonly Option<string?> Text = Opt.OptionalString("text").Describe("PATH",
            "any UTF-8 text file instead of the fortunes (first 90\u00a0% trains, last 10\u00a0% validates)");
        public readonly Option<float?> ValidationFraction = Opt.OptionalFloat("validation-fraction", f => f is > 0 and < 1, "a number between 0 and 1 (both excluded)")
            .Describe("F", "carve the last F (0 < F < 1) of the training bytes as a validation split: training uses the rest, the last 10\u00a0% " +
                "becomes the test split, and every evaluation reports both (validation_* columns: the carved split; test_bits_per_char, " +
                "test_accuracy: the last 10\u00a0%). Choose hyperparameters on validation, not on test (default: none)");
        public readonly Option<string> Init = InitOption.Create();
        public readonly Option<string> Positions = Opt.Choice("positions", PositionInit.Gpt2.Name(), "position initialisation",
            PositionInit.Gpt2.Name(), PositionInit.Embedding.Name()).Describe("NAME",
            $"how the learned position table starts: {PositionInit.Gpt2.Name()}: N(0, 0.02²) as GPT-2; {PositionInit.Embedding.Name()}: N(0, 1) as a PyTorch nn.Embedding (the token table's scale)");
        public readonly Option<int> Steps = Opt.Int("steps", 2000, min: 1, max: 100_000_000).Describe("N", "optimizer steps");
        public readonly Option<int?> MaxSeconds = Opt.OptionalInt("max-seconds", 1).Describe("S",
            "stop as soon as the training time passes S seconds (compare methods at equal time; default: no limit)");
        public readonly Option<int> EvalEvery = Opt.Int("eval-every", 250, min: 1).Describe("N", "validate every N steps");
        public readonly Option<int> ValidationWindows = Opt.Int("validation-windows", 256, min: 0).Describe("N", "windows of the validation split per evaluation (0 = all)");
        public readonly Option<int> BatchSize = Opt.Int("batch-size", TrainDefaults.ForLanguageModel("backprop").BatchSize, min: 1, max: 1 << 20).Describe("B", "windows per step");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "seed of initialisation, windows and every guess");
        public readonly Option<int> CosineEvery = Opt.Int("cosine-every", TrainDefaults.ForLanguageModel("backprop").CosineEvery, min: 0)
            .Describe("N", "measure cos(estimate, backprop gradient) every N steps (0 = never)");
        public readonly Option<string?> Metrics = Opt.OptionalString("metrics").Describe("PATH",
            "CSV per evaluation (default runs/lm-<guesser>-seed<S>-<config>.csv); beside it, at the end, its plot (.png and .svg: bits per character, accuracy, cosine)");
        public readonly Option<string?> Checkpoint = Opt.OptionalString("checkpoint").Describe("PATH",
            "safetensors checkpoint after every evaluation: parameters, optimizer and guesser state and progress (what --resume continues and `forwardad sample` reads)");
        public readonly Option<string?> Resume = Opt.OptionalString("resume").Describe("PATH",
            "continue a run from its checkpoint, bit for bit, writing it on. The checkpoint records the run's configuration (model, " +
            "text, split, initialisation, guesser and its options, optimizer, rate, clipping, schedule, seed, batch size; for the step " +
            "and cosine schedules their length, which --steps and --eval-every set, and for the exponential one --eval-every, its " +
            "interval), and any difference is refused. May differ: --steps (train longer), --max-seconds (the training time counts " +
            "from the run's start), --eval-every (evaluations stay on its multiples), --validation-windows, --cosine-every, --metrics, " +
            "--checkpoint, --quiet, --no-plot, --device and --tf32 (another device continues to float rounding). Rows of the metrics " +
            "CSV up to the checkpoint are kept and the new ones appended; a CSV of another run or not written by lm is an error (pass another --metrics)");
        public readonly Option<bool> Quiet = Opt.Flag("quiet").Describe("", "no live progress, only the final table");
        public readonly Option<bool> NoPlot = Opt.Flag("no-plot").Describe("", "write no plot");
    }

    public static DocumentedCommand CreateLm(CliContext context)
    {
        var o = new LmOptions();
        var defaults = TrainDefaults.ForLanguageModel("backprop");
        var command = new DocumentedCommand("lm", "Train a decoder-only transformer language model on a text, bytes as tokens.", "forwardad lm [options]")
        {
            Summary =
                $"With no options it trains {o.Model.GetDefaultValue()} with backprop and {defaults.Optimizer} (lr {defaults.Rate.ToString(CultureInfo.InvariantCulture)}) on Debian's fortunes " +
                "(sudo apt-get install fortunes), validating in bits per character on the last 10 % of the text.",
            Footer =
                "Ctrl-C stops the run after the current step: with --checkpoint it writes the checkpoint there and prints the command " +
                "that resumes it; a second Ctrl-C ends at once. Exit code 130.",
        };
        command.Section("Model and text", [o.Model, o.Text, o.ValidationFraction, o.Init, o.Positions]);
        o.Guesser.AddTo(command, o.GuesserName, perModel: $"{defaults.Mode}; --normalize yes for wt and downstream");
        o.Rule.AddTo(command, defaults: string.Create(CultureInfo.InvariantCulture, $"{defaults.Optimizer}, lr {defaults.Rate}"));
        o.Device.AddTo(command);
        command.Section("Training", [o.Steps, o.MaxSeconds, o.EvalEvery, o.ValidationWindows, o.BatchSize, o.Seed, o.CosineEvery]);
        command.Section("Output", [o.Metrics, o.NoPlot, o.Checkpoint, o.Resume, o.Quiet]);
        command.SetAction(p => RunLm(p, o, context));
        return command;
    }

    private static TransformerSpec ParseModel(string text)
    {
        const string prefix = "transformer:";
        if (!text.StartsWith(prefix, StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"--model {text}: the lm command trains transformers: --model transformer:SPEC with SPEC {TransformerSpec.Grammar}.");
        try { return TransformerSpec.Parse(text[prefix.Length..]); }
        catch (Exception e) when (e is FormatException or ArgumentException) { throw new UsageException($"--model {text}: {e.Message}"); }
    }

    private static int RunLm(ParseResult p, LmOptions o, CliContext context)
    {
        var console = context.Console;
        ulong seed = (ulong)p.GetValue(o.Seed);
        int steps = p.GetValue(o.Steps), evalEvery = p.GetValue(o.EvalEvery), batch = p.GetValue(o.BatchSize);
        int? maxSeconds = p.GetValue(o.MaxSeconds);
        var guesserName = GuesserOptions.Canonical(p.GetValue(o.GuesserName)!);
        o.Guesser.RejectUnused(p, [guesserName]);
        TrainCommand.RequireBatchForRanks(context.Communicator, batch);
        var spec = ParseModel(p.GetValue(o.Model)!);
        var textPath = p.GetValue(o.Text);
        var corpus = textPath is null ? TextCorpus.Fortunes() : TextCorpus.Load(textPath);
        if (corpus.ValidationWindows(spec.Context) < 1 || corpus.Train.Length <= spec.Context)
            throw new UsageException($"{corpus.Name}: too short for context {spec.Context} ({corpus.Train.Length} training and {corpus.Validation.Length} validation bytes). Use a longer text or a shorter context (t in the spec).");
        var validationFraction = p.GetValue(o.ValidationFraction);
        if (validationFraction is float fraction)
        {
            // Through decimal: the fraction as typed (0.1), not the float's binary neighbour, decides the split's size.
            corpus = corpus.WithValidationFraction((double)(decimal)fraction);
            if (!corpus.Holds(spec.Context))
                throw new UsageException($"--validation-fraction {fraction.ToString(CultureInfo.InvariantCulture)}: {corpus.Name} splits into {corpus.Describe()}; " +
                    $"each needs at least {spec.Context + 1} bytes (a window of context {spec.Context} + 1). Use another fraction, a longer text or a shorter context (t in the spec).");
        }
        var configuration = new RunConfiguration();
        configuration.Add("model", $"transformer {spec}");
        configuration.Add("text", textPath is null ? "fortunes" : Path.GetFullPath(textPath));
        // Recorded only when given: runs without a validation split keep their hash (default metrics file) and checkpoints.
        configuration.AddSince("validation", validationFraction is float f ? string.Create(CultureInfo.InvariantCulture, $"split {f:R} of the training bytes") : "none", "none");
        var init = InitOption.Read(p, o.Init, configuration);
        var positions = PositionInits.Parse(p.GetValue(o.Positions)!);
        configuration.AddSince("positions", positions.Name(), earlierValue: PositionInit.Gpt2.Name()); // runs from before the option: gpt2
        var defaults = TrainDefaults.ForLanguageModel(guesserName);
        var guesser = o.Guesser.Build(p, guesserName, seed, configuration, defaults);
        var (rule, ruleDescription) = o.Rule.Build(p, evalEvery, Math.Max(1, steps / evalEvery), configuration, defaults);
        var runHash = configuration.Hash(("seed", seed.ToString(CultureInfo.InvariantCulture)), ("batch_size", batch.ToString(CultureInfo.InvariantCulture)));
        var metricsPath = p.GetValue(o.Metrics) ?? Path.Combine("runs", $"lm-{guesserName}-seed{seed}-{runHash}.csv");
        var checkpoint = p.GetValue(o.Checkpoint);
        var resume = p.GetValue(o.Resume);
        foreach (var (option, path) in new[] { ("--metrics", metricsPath), ("--checkpoint", checkpoint), ("--resume", resume) })
            if (path is not null && Directory.Exists(path)) throw new IOException($"{option} {path}: is a directory; give a file path.");
        // Claimed before anything is read for a resume or written: a second run on these outputs is refused, not interleaved.
        using var outputs = context.WritesFiles ? OutputLock.Acquire($"lm (metrics {metricsPath})", ("--metrics", metricsPath), ("--checkpoint", checkpoint ?? resume)) : null;
        var backend = o.Device.Create(p);
        var parameters = ParameterStore.Initialize(spec.Build(init, positions), backend, seed);
        int windows = p.GetValue(o.ValidationWindows);
        var communicator = context.Communicator;
        var trainer = new LanguageModelTrainer(guesser, rule, parameters, corpus,
            new LanguageModelOptions(batch, seed) { CosineEvery = p.GetValue(o.CosineEvery), ValidationWindows = windows == 0 ? null : windows, Communicator = communicator });
        var description = configuration.ToDictionary();
        // The exponential schedule decays per evaluation interval (its "epoch"), so there --eval-every shapes every rate.
        // Checked on resume but kept out of the run's hash, so that the metrics files of existing runs keep their names.
        if (configuration["schedule"] == "exponential") description["eval-every"] = evalEvery.ToString(CultureInfo.InvariantCulture);
        var header = MetricsHeader(parameters.Model.Sites.Select(site => site.Name), corpus.HasTest);
        List<string> rows = [];
        if (resume is not null)
        {
            try { trainer.Resume(resume, spec, description); }
            catch (CheckpointMismatchException e)
            {
                // Only a changed configuration gets the hint; a damaged or foreign file's own message says what to do.
                throw new InvalidDataException($"{e.Message} --resume continues a run only with the options it was started with " +
                    "(the checkpoint's metadata lists them; see 'forwardad lm --help' for those that may differ). To train with these options instead, " +
                    "start a new run: drop --resume and give a new --checkpoint path.", e);
            }
            // After the checkpoint's check, so that a changed option is reported as such, not as a foreign metrics file.
            if (context.WritesFiles) rows = ReadMetricsForResume(metricsPath, header, runHash, trainer.Step, context.Error);
        }
        checkpoint ??= resume;
        trainer.RequireSameRun(description);
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] lm: {corpus.Name} ({corpus.Train.Length:N0} training / {corpus.Validation.Length:N0} validation{(corpus.HasTest ? $" / {corpus.Test.Length:N0} test" : "")} bytes), transformer {spec} ({parameters.Model.ParameterCount:N0} parameters), {guesser.Name}, {ruleDescription}, batch {batch}, seed {seed}, {backend.Name}");

        if (communicator.Size > 1) console.MarkupLineInterpolated($"data parallel: {TrainCommand.DataParallelBanner(communicator, batch)}");
        foreach (var note in TrainCommand.DataParallelNotes(communicator, parameters.Model, guesser)) console.MarkupLineInterpolated($"{note}");
        var reports = new List<LanguageModelReport>();
        bool quiet = p.GetValue(o.Quiet);
        if (resume is not null) console.MarkupLineInterpolated($"resumed from {resume} at step {trainer.Step}");
        else if (!quiet) context.Output.WriteLine($"step 0: validation {trainer.Validate().BitsPerCharacter:F3} bits/char");
        var interrupt = context.ListenForInterrupt();
        // Trains to the end, reporting each step to `progress` (null: none) and each evaluation through `say`.
        void Run(IProgress<TrainingProgress>? progress, Action<string> say)
        {
            // --max-seconds: the ranks' clocks differ, so they stop together when any of them is out of time.
            while (trainer.Step < steps && communicator.AllAgree(maxSeconds is null || trainer.TrainingTime.TotalSeconds < maxSeconds))
            {
                // Evaluations fall on multiples of --eval-every, also after a resume from an interrupted stretch.
                int chunk = (int)Math.Min(evalEvery - trainer.Step % evalEvery, steps - trainer.Step);
                var report = trainer.Train(chunk, progress, interrupt);
                reports.Add(report);
                rows.Add(MetricsRow(report, runHash));
                if (context.WritesFiles) WriteMetrics(metricsPath, header, rows);
                if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, spec, description, ReplayFile.CheckpointNotes(p));
                if (!quiet) say($"step {report.Step}: train loss {report.TrainLoss / Math.Log(2):F3} bits/char, validation {report.Validation.BitsPerCharacter:F3} bits/char " +
                    $"(next-byte accuracy {report.Validation.Accuracy:P1}){(report.Test is { } test ? $", test {test.BitsPerCharacter:F3} bits/char" : "")}, cos global {TrainCommand.F(report.GlobalCosine, "F3")}, {report.TokensPerSecond:F0} tokens/s, {report.TrainingTime.TotalSeconds:F0} s");
            }
        }
        try
        {
            if (quiet || !context.Interactive) Run(null, context.Output.WriteLine);
            else
                // A live bar with the time left (the steps to go at the speed so far), the evaluations printed above it.
                console.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(display =>
                    {
                        var task = display.AddTask("starting", maxValue: Math.Max(1, steps - trainer.Step));
                        Run(new StepProgress(task, trainer, steps), line => console.WriteLine(line));
                    });
        }
        catch (OperationCanceledException) when (interrupt.IsCancellationRequested)
        {
            // Stopped between two steps: the checkpoint takes this step and the unreported stretch, so no step is lost;
            // the metrics CSV already holds every evaluation.
            if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, spec, description, ReplayFile.CheckpointNotes(p));
            context.Error.WriteLine(Interruption.Message(trainer.Step, epoch: null, checkpoint, context.Arguments));
            return Interruption.ExitCode;
        }
        if (reports.Count == 0)
        {
            console.MarkupLineInterpolated($"nothing to do: the checkpoint is at step {trainer.Step} (--steps {steps}{(maxSeconds is int limit ? $", --max-seconds {limit}" : "")}).");
            return Cli.Success;
        }
        WriteStepTable(console, reports, corpus.HasTest, metricsPath);
        // The global cosine treats all parameters as one vector, which the largest sites dominate: each site's own line.
        var sites = parameters.Model.Sites;
        if (reports[^1].SiteCosines.Any(c => !double.IsNaN(c)))
            console.MarkupLineInterpolated($"cosine to the backprop gradient per site at step {reports[^1].Step} (cos global above: all parameters as one vector): {string.Join(", ", sites.Zip(reports[^1].SiteCosines, (site, c) => $"{site.Name} {c:F3}"))}");
        var finalTest = reports[^1].Test is { } last ? $", test {last.BitsPerCharacter:F3}" : "";
        console.MarkupLineInterpolated($"final: validation [green]{reports[^1].Validation.BitsPerCharacter:F3}[/]{finalTest} bits per character after {reports[^1].Step} steps; metrics in {metricsPath}");
        if (!p.GetValue(o.NoPlot) && context.WritesFiles)
        {
            var (png, svg, _) = MetricsPlots.Draw(metricsPath);
            console.MarkupLineInterpolated($"plot in {png} and {svg}");
        }
        return Cli.Success;
    }

    /// <summary>The end-of-run table of lm: one row per evaluation, sized to the console (<see cref="ConsoleTable"/>: on a
    /// narrow terminal the speed and time columns are left out first, with a line that says so).</summary>
    internal static void WriteStepTable(IAnsiConsole console, IReadOnlyList<LanguageModelReport> reports, bool tested, string metricsPath)
    {
        List<TableColumnSpec> columns = [new("step"), new("train bits/char"), new("validation bits/char"), new("next-byte acc")];
        if (tested) columns.AddRange([new("test bits/char"), new("test next-byte acc")]);
        columns.AddRange([new("cos global"), new("tokens/s", DropOrder: 1), new("training time", DropOrder: 2)]);
        var rows = reports.Select(r => (string[])[r.Step.ToString(CultureInfo.InvariantCulture), TrainCommand.F(r.TrainLoss / Math.Log(2), "F3"), TrainCommand.F(r.Validation.BitsPerCharacter, "F3"),
            TrainCommand.F(r.Validation.Accuracy, "P1"), .. r.Test is { } test ? (string[])[TrainCommand.F(test.BitsPerCharacter, "F3"), TrainCommand.F(test.Accuracy, "P1")] : [],
            TrainCommand.F(r.GlobalCosine, "F3"), TrainCommand.F(r.TokensPerSecond, "F0"), $"{r.TrainingTime.TotalSeconds:F0} s"]).ToList();
        var (table, dropped) = ConsoleTable.Build(columns, rows, console.Profile.Width);
        console.Write(table);
        if (ConsoleTable.DroppedNote(dropped, metricsPath) is { } note) console.WriteLine(note);
    }

    /// <summary>The metrics CSV of lm has one row per evaluation: step, train and validation bits per character, next-byte
    /// accuracy, the global cosine, speed, time, the run's hash, then the cosine at every site; with a test split
    /// (--validation-fraction), its bits per character and accuracy last. Per-site cosines come after the fixed columns
    /// (sites in model order, named in the header), then the bytes a step exchanged in a data-parallel run (0 in one
    /// process), then the test split's columns when there is one, so that the columns scripts read by position stay where
    /// they are (and `plot` still recognises the header's start).</summary>
    private static string MetricsHeader(IEnumerable<string> sites, bool tested) =>
        "step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global,tokens_per_second,training_seconds,run" +
        string.Concat(sites.Select(site => $",cosine_{site}")) + ",exchanged_bytes_per_step" + (tested ? "," + string.Join(',', TestColumns) : "");

    /// <summary>The position of the run's hash in a row (<see cref="MetricsHeader"/>).</summary>
    private const int RunColumn = 7;

    private static string MetricsRow(LanguageModelReport r, string run)
    {
        static string G(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        return string.Join(',', r.Step.ToString(CultureInfo.InvariantCulture), G(r.TrainLoss / Math.Log(2)), G(r.Validation.BitsPerCharacter),
            G(r.Validation.Accuracy), G(r.GlobalCosine), G(r.TokensPerSecond), G(r.TrainingTime.TotalSeconds), run) + string.Concat(r.SiteCosines.Select(c => "," + G(c))) + "," + G(r.ExchangedBytesPerStep) +
            (r.Test is { } test ? $",{G(test.BitsPerCharacter)},{G(test.Accuracy)}" : "");
    }

    private static void WriteMetrics(string path, string header, IEnumerable<string> rows) => AtomicFile.WriteAllLines(path, rows.Prepend(header));

    /// <summary>
    /// The rows of <paramref name="path"/> a resumed run keeps, as they are: those of its evaluations up to the
    /// checkpoint's <paramref name="step"/>. A missing or empty file holds none (an empty one with a note). A file that is
    /// not this run's metrics CSV (another header: not lm's, or another model or split; a row of another run; a damaged
    /// row) is an error, and is left untouched.
    /// </summary>
    private static List<string> ReadMetricsForResume(string path, string header, string run, long step, TextWriter notes)
    {
        if (!File.Exists(path)) return [];
        var lines = File.ReadAllLines(path);
        if (lines.All(string.IsNullOrWhiteSpace))
        {
            notes.WriteLine($"note: the metrics file {path} is empty; it will hold the evaluations from the checkpoint on.");
            return [];
        }
        const string Advice = "It is left as it is: move it away or pass --metrics with another path.";
        if (lines[0] != header)
            throw new InvalidDataException(lines[0].StartsWith("step,train_bits_per_char,", StringComparison.Ordinal)
                ? $"{path}, line 1: the columns differ from this run's (another model or split): {lines[0]}. {Advice}"
                : $"{path}, line 1: not a metrics CSV of forwardad lm (the header does not start with step,train_bits_per_char). {Advice}");
        int columns = header.Split(',').Length;
        var kept = new List<string>();
        for (int i = 1; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            var cells = lines[i].Split(',');
            if (cells.Length != columns)
                throw new InvalidDataException($"{path}, line {i + 1}: {cells.Length} columns, the header has {columns}. {Advice}");
            if (cells[RunColumn] != run)
                throw new InvalidDataException($"{path}, line {i + 1}: a row of another run (configuration {cells[RunColumn]}; this run's is {run}). " +
                    "Rows of two runs would mix in one file. Pass --metrics with another path (the default path is unique to the configuration).");
            if (!long.TryParse(cells[0], NumberStyles.None, CultureInfo.InvariantCulture, out long rowStep))
                throw new InvalidDataException($"{path}, line {i + 1}: step '{cells[0]}' is not a whole number. {Advice}");
            if (rowStep <= step) kept.Add(lines[i]);
        }
        return kept;
    }

    /// <summary>The test split's columns, last in the metrics CSV of a run with --validation-fraction.</summary>
    public static readonly string[] TestColumns = ["test_bits_per_char", "test_accuracy"];

    private sealed class SampleOptions
    {
        public readonly Option<string?> Checkpoint = Opt.OptionalString("checkpoint").Describe("PATH", "the checkpoint (required)");
        public readonly Option<string> Prompt = Opt.String("prompt", "\n").Describe("TEXT", "text to continue (default: a new line)");
        public readonly Option<int> Length = Opt.Int("length", 400, min: 0, max: 1_000_000).Describe("N", "bytes to generate");
        public readonly Option<float> Temperature = Opt.Float("temperature", 0.8f, t => t >= 0, "a number ≥ 0").Describe("T", "softmax temperature (0 = always the most likely byte)");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "seed of the sampling");
    }

    public static DocumentedCommand CreateSample(CliContext context)
    {
        var o = new SampleOptions();
        var command = new DocumentedCommand("sample", "Generate text from a language model checkpoint of `forwardad lm`.", "forwardad sample --checkpoint PATH [options]")
        {
            Footer =
                "The model generates bytes, which need not form valid UTF-8; the text is always printed as valid UTF-8: each invalid " +
                "byte sequence is printed as U+FFFD (�), and a character that --length leaves incomplete gets up to 3 more bytes when " +
                "the model continues it, or is printed as U+FFFD.",
        };
        command.Section("Options", [o.Checkpoint, o.Prompt, o.Length, o.Temperature, o.Seed]);
        command.SetAction(p =>
        {
            var path = p.GetValue(o.Checkpoint) ?? throw new UsageException("sample needs --checkpoint PATH (a checkpoint written by `forwardad lm --checkpoint`).");
            var (spec, parameters) = TextSampler.Load(path);
            var text = new TextSampler(parameters).Sample(p.GetValue(o.Prompt)!, p.GetValue(o.Length), p.GetValue(o.Temperature), (ulong)p.GetValue(o.Seed));
            context.Output.WriteLine(text);
            return Cli.Success;
        });
        return command;
    }

    /// <summary>lm's live progress: one tick per step, the step and the batch's bits per character in the description.</summary>
    private sealed class StepProgress(Spectre.Console.ProgressTask task, LanguageModelTrainer trainer, int steps) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value)
        {
            task.Increment(1);
            task.Description = $"step {trainer.Step}/{steps}, batch {value.BatchLoss / Math.Log(2):F3} bits/char";
        }
    }
}
