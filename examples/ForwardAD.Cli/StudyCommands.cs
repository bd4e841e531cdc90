using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Studies;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>
/// `forwardad study NAME`: the figures of "How to Guess a Gradient" (arXiv 2312.04709) as commands, each writing a CSV
/// and a chart (PNG + SVG) into one folder. Defaults run in minutes on two cores; the options reach the paper's sizes.
/// </summary>
internal static class StudyCommands
{
    public static readonly string[] Names = ["saturation", "bias-variance", "sharpening", "downstream", "spectra"];

    /// <summary>Options every study shares.</summary>
    private sealed class Common
    {
        public readonly DataOptions Data = new();
        public readonly ModelOptions Model = new();
        public readonly RuleOptions Rule = new();
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "initialisation, data split and order, every guess");
        public readonly Option<string> Out = Opt.String("out", Path.Combine("runs", "studies")).Describe("DIR", "folder for NAME.csv, NAME*.png and NAME*.svg");

        /// <summary>Registers the shared options; <paramref name="ownModel"/>: the study's own network, if not the usual MLP.</summary>
        public void AddTo(DocumentedCommand command, string? ownModel = null)
        {
            command.Section("Common", [Out, Seed]);
            Data.AddTo(command);
            Model.AddTo(command, ownModel);
            Rule.AddTo(command, defaults: "adamw, lr 0.001, weight decay 0.01, a study's own rule; the other rule options need --optimizer");
        }

        public (UpdateRule Rule, string Description) BuildRule(ParseResult p, int stepsPerEpoch, int epochs)
        {
            if (p.Given(Rule.Optimizer)) return Rule.Build(p, stepsPerEpoch, epochs, configuration: null);
            // Without --optimizer a study uses its own fixed rule, so every other rule option would be silently ignored.
            var given = new Option[] { Rule.Lr, Rule.Momentum, Rule.WeightDecay, Rule.Clip, Rule.Schedule, Rule.Warmup, Rule.Decay }.Where(p.Given).ToList();
            if (given.Count > 0)
                throw new UsageException($"{Opt.List([.. given.Select(o => o.Name)])} need{(given.Count == 1 ? "s" : "")} --optimizer in a study (its default rule is adamw, lr 0.001, weight decay 0.01).");
            return (Optimizers.AdamW(1e-3f, 0.01f), "adamw lr 0.001 wd 0.01");
        }
    }

    public static DocumentedCommand Create(CliContext context)
    {
        var study = new DocumentedCommand("study", "The paper's studies, each writing CSV + PNG/SVG into --out.", "forwardad study NAME [options]")
        {
            Summary =
                "Each prints a line per unit of its work (guesser, site or epoch) with the units done of all and the time left, and " +
                "claims NAME.csv in --out while it runs (a second study on the same --out is refused). bias-variance, sharpening and " +
                "downstream take --checkpoint PATH and --resume PATH and stop cleanly on Ctrl-C. `forwardad study NAME --help` shows " +
                "the options of one study.",
        };
        study.SetAction(_ => { context.Output.WriteLine(study.Help()); return Cli.Success; });
        foreach (var command in new[] { Saturation(context), BiasVariance(context), Sharpening(context), Downstream(context), Spectrum(context) }) study.Add(command);
        return study;
    }

    private static Option<string> Mode() => Opt.Choice("mode", "per-layer", "mode", "joint", "per-layer").Describe("joint|per-layer", "tangent channels of the activation guessers");

    private static TangentMode ModeOf(ParseResult p, Option<string> mode) => p.GetValue(mode) == "joint" ? TangentMode.Joint : TangentMode.PerLayer;

    private static double[] Numbers(ParseResult p, Option<string> option, Func<double, bool> valid, string requirement)
    {
        var text = p.GetValue(option)!;
        var values = new List<double>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v) || !valid(v))
                throw new UsageException($"--{option.Name.TrimStart('-')} must be a comma-separated list of {requirement}; got '{text}'.");
            values.Add(v);
        }
        return [.. values];
    }

    // ---------------------------------------------------------------------------------------------------- saturation

    private static DocumentedCommand Saturation(CliContext context)
    {
        var common = new Common();
        var maxGuesses = Opt.Int("max-guesses", 8192, min: 2, max: 1 << 20).Describe("N", "largest n, a power of two");
        var example = Opt.Int("example", 0, min: 0).Describe("I", "first training example of the batch measured");
        var batch = Opt.Int("batch-size", 1, min: 1).Describe("B", "examples in that batch (1: one example)");
        var pretrain = Opt.Int("pretrain-epochs", 1, min: 0, max: 10_000).Describe("N", "backprop epochs before measuring (1: the paper's \"after one epoch\")");
        var ridges = Opt.String("ridges", "0.1,0.01").Describe("LIST", "relative ridges ρ of the de-biased Wᵀ curves, λ = ρ·tr(C)/n ('none' for no such curve)");
        var mode = Mode();
        var command = new DocumentedCommand("saturation",
            "cosine to the true gradient of the mean of n = 2 … 8192 guesses on one example (Fig. 4 left): unbiased guessers keep improving, Wᵀ and mixing saturate; de-biased Wᵀ in between",
            "forwardad study saturation [options]");
        command.Section("Saturation", [pretrain, example, batch, maxGuesses, mode, ridges],
            "Directional descent, activation perturbation, Wᵀ, activation mixing and de-biased Wᵀ are measured. With one example, activation mixing mixes that example's own output only.");
        common.AddTo(command);
        command.SetAction(p =>
        {
            var watch = Stopwatch.StartNew();
            int max = p.GetValue(maxGuesses), b = p.GetValue(batch), first = p.GetValue(example);
            if ((max & (max - 1)) != 0) throw new UsageException($"--max-guesses must be a power of two (2, 4, …, 8192); got {max}.");
            var folder = p.GetValue(common.Out)!;
            using var outputs = ClaimOutputs(context, folder, "saturation");
            var rhos = p.GetValue(ridges) is "none" or "" ? [] : Numbers(p, ridges, v => v > 0, "numbers > 0 (relative ridges ρ, or 'none')");
            var (parameters, train, description) = Pretrained(p, common, p.GetValue(pretrain), context);
            if ((long)first + b > train.Count) throw new UsageException($"--example {first} with --batch-size {b} runs past the training set ({train.Count} examples).");
            var features = new float[b * train.FeatureSize];
            var labels = new float[b];
            train.CopyBatch(Enumerable.Range(first, b).ToArray(), features, labels);
            var m = ModeOf(p, mode);
            var methods = new List<Func<int, Guesser>>
            {
                g => Guessers.DirectionalDescent(g),
                g => Guessers.ActivationPerturbation(m, g),
                g => Guessers.WeightTranspose(m, g),
                g => Guessers.ActivationMixing(m, g),
            };
            foreach (var rho in rhos) methods.Add(g => new DebiasedGuesser((ActivationGuesser)Guessers.WeightTranspose(m, g), rho));
            if (rhos.Any()) RequireDebiasable(() => methods[^1](1).Compile(parameters, 1));
            context.Console.MarkupLineInterpolated($"[bold]ForwardAD[/] study saturation: {description}, examples {first}…{first + b - 1}, up to {max} guesses, {p.GetValue(mode)}");
            // A line per guesser measured, counting those done with the time left (the rest at the mean time per guesser).
            int measured = 0;
            var measuring = Stopwatch.StartNew();
            var points = SaturationStudy.Run(parameters, features, labels, b, methods, max, (ulong)p.GetValue(common.Seed),
                new Reported<string>(name => context.Console.MarkupLineInterpolated($"  {name} done [[{++measured}/{methods.Count} guessers{SweepCommand.TimeLeft(measuring.Elapsed, measured, methods.Count)}]]")));

            var csv = Path.Combine(folder, "saturation.csv");
            int mid = Math.Min(64, max);
            var rows = points.GroupBy(q => q.Guesser).Select(group => new[] { group.Key, F(group.First().Cosine),
                F(group.FirstOrDefault(q => q.Guesses == mid)?.Cosine ?? double.NaN), F(group.Last().Cosine) }).ToList();
            Write(context.Console, [new("guesser"), new("n = 2"), new($"n = {mid}"), new($"n = {max}")], rows, csv);
            Csv(folder, "saturation", "guesser,guesses,cosine", points.Select(q => $"{Quote(q.Guesser)},{q.Guesses},{G(q.Cosine)}"));
            Charts(context, folder, "saturation");
            Done(context, watch);
            return Cli.Success;
        });
        return command;
    }

    /// <summary>The model, initialised from the seed and trained with backprop for <paramref name="epochs"/> epochs.</summary>
    private static (ParameterStore Parameters, Dataset Train, string Description) Pretrained(ParseResult p, Common common, int epochs, CliContext context)
    {
        ulong seed = (ulong)p.GetValue(common.Seed);
        var configuration = new RunConfiguration();
        var (train, test) = common.Data.Load(p, seed, configuration);
        var model = common.Model.Build(p, train, configuration);
        var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed);
        // Batches of 32, or the whole set when it is smaller (else an epoch would have no step and "pretraining" do nothing).
        int batch = Math.Min(32, train.Count);
        var (rule, ruleText) = common.BuildRule(p, train.Count / batch, Math.Max(1, epochs));
        if (epochs > 0)
        {
            var trainer = new Trainer(Guessers.Backprop, rule, parameters, train, test, new TrainingOptions(batch, seed) { CosineEvery = 0 });
            var watch = Stopwatch.StartNew();
            for (int e = 0; e < epochs; e++)
            {
                var r = trainer.RunEpoch(e);
                context.Console.MarkupLineInterpolated($"  backprop epoch {e + 1}: test accuracy {r.TestAccuracy:P1} [[{e + 1}/{epochs} epochs{SweepCommand.TimeLeft(watch.Elapsed, e + 1, epochs)}]]");
            }
        }
        return (parameters, train, $"{configuration["model"]}, {epochs} backprop epoch{(epochs == 1 ? "" : "s")} ({ruleText})");
    }

    // ------------------------------------------------------------------------------------------------- training curves

    /// <summary>Options of the studies that train: epochs, batch, mode, guesses per step.</summary>
    private sealed class CurveOptions
    {
        public readonly Option<int> Epochs;
        public readonly Option<int> BatchSize = Opt.Int("batch-size", 32, min: 1).Describe("B", "examples per step");
        public readonly Option<string> Mode = StudyCommands.Mode();
        public readonly Option<int> Guesses = Opt.Int("guesses", 1, min: 1, max: 1 << 16).Describe("G", "guesses averaged per step");
        public readonly Option<string?> Checkpoint = Opt.OptionalString("checkpoint").Describe("PATH",
            "write a safetensors checkpoint of the curve in progress after every epoch (atomically); NAME.csv in --out gains each epoch's row as it completes");
        public readonly Option<string?> Resume = Opt.OptionalString("resume").Describe("PATH",
            "continue an interrupted study from its checkpoint and the NAME.csv of its --out, bit for bit: finished curves are kept, " +
            "the curve in progress goes on from its last step. The checkpoint records the study's configuration (data, model, rule, " +
            "batch size, mode, guesses, epochs, the curves and their options, seed) and any difference is refused, naming it; so is " +
            "a NAME.csv that does not hold the rows the checkpoint was written after. May differ: --checkpoint (without it the " +
            "resumed checkpoint is written on)");

        public CurveOptions(int epochs) => Epochs = Opt.Int("epochs", epochs, min: 1, max: 1_000_000).Describe("N", "epochs of every curve");

        /// <summary>Registers the options under "Training" (with the study's own <paramref name="more"/> and
        /// <paramref name="note"/>) and "Checkpoints".</summary>
        public void AddTo(DocumentedCommand command, Option[] more, string? note)
        {
            command.Section("Training", [Epochs, BatchSize, Mode, Guesses, .. more], note);
            command.Section("Checkpoints", [Checkpoint, Resume],
                "Ctrl-C stops the study after the current step: with --checkpoint it writes the checkpoint there (within an epoch too) " +
                "and prints the command that resumes it; a second Ctrl-C ends at once. Exit code 130.");
        }
    }

    /// <summary>De-biased Wᵀ works on dense sites feeding dense sites only: check the model before minutes of other methods
    /// run, and name the way out.</summary>
    private static void RequireDebiasable(Action compile)
    {
        try { compile(); }
        catch (ArgumentException e)
        {
            throw new UsageException($"--ridges: the de-biased Wᵀ curves cannot run on this model ({e.Message}). Give an MLP, or --ridges none.");
        }
    }

    private sealed record CurveSetup(Model Model, Dataset Train, Dataset Test, UpdateRule Rule, TrainingOptions Options, string Description, int Epochs,
        Dictionary<string, string> Configuration);

    private static CurveSetup Setup(ParseResult p, Common common, CurveOptions training, Func<Dataset, RunConfiguration, Model?>? defaultModel = null)
    {
        ulong seed = (ulong)p.GetValue(common.Seed);
        var configuration = new RunConfiguration();
        var (train, test) = common.Data.Load(p, seed, configuration);
        int batch = p.GetValue(training.BatchSize), epochs = p.GetValue(training.Epochs);
        if (batch > train.Count) throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples).");
        // The study's own default network unless any MLP option asks for another (never silently ignored).
        bool mlpOptionGiven = new Option[] { common.Model.Hidden, common.Model.Layers, common.Model.Width, common.Model.Activation }.Any(p.Given);
        var model = (p.GetValue(common.Model.Model) == "mlp" && !mlpOptionGiven ? defaultModel?.Invoke(train, configuration) : null)
            ?? common.Model.Build(p, train, configuration);
        var (rule, ruleText) = common.BuildRule(p, train.Count / batch, epochs);
        // Cosines on every step (the oracle is one backprop pass, cheaper than most guessers' step): smooth per-epoch means.
        var options = new TrainingOptions(batch, seed) { CosineEvery = 1 };
        // What a checkpoint records and a resume compares, besides the seed and batch size the trainer records itself.
        var recorded = configuration.ToDictionary();
        recorded["study_rule"] = ruleText;
        recorded["study_mode"] = p.GetValue(training.Mode)!;
        recorded["study_guesses"] = p.GetValue(training.Guesses).ToString(CultureInfo.InvariantCulture);
        recorded["study_epochs"] = epochs.ToString(CultureInfo.InvariantCulture);
        return new CurveSetup(model, train, test, rule, options, $"{configuration["model"]}, {ruleText}, batch {batch}, {p.GetValue(training.Mode)}", epochs, recorded);
    }

    /// <summary>
    /// Every guesser's curve, a line per epoch with the epochs done of all and the time left (the epochs to go at the mean
    /// time per epoch so far; a diverged run's remaining epochs leave the count), then the CSV, its table and charts.
    /// NAME.csv is rewritten (atomically) after every epoch, and with --checkpoint the curve in progress is checkpointed
    /// after it, through the trainer's own checkpoint, whose description holds the study's configuration, the curve's index
    /// and a hash of the CSV rows written so far. --resume finds in NAME.csv the rows that hash names, keeps them (the
    /// finished curves and the epochs of the curve in progress) and continues that curve's trainer; Ctrl-C checkpoints the
    /// curve within its epoch and exits 130 with the command that resumes.
    /// </summary>
    private static int RunCurves(CliContext context, ParseResult p, CurveOptions training, string folder, string name, CurveSetup s,
        IReadOnlyList<Guesser> guessers, string[] extraNames, Func<ParameterStore, double[]>? extra = null)
    {
        var csv = Path.Combine(folder, name + ".csv");
        var resume = p.GetValue(training.Resume);
        var checkpoint = p.GetValue(training.Checkpoint) ?? resume;
        foreach (var (option, path) in new[] { ("--checkpoint", checkpoint), ("--resume", resume) })
            if (path is not null && Directory.Exists(path)) throw new IOException($"{option} {path}: is a directory; give a file path.");
        // Claimed before the CSV is read for a resume or written: a second study on these outputs is refused, not interleaved.
        using var outputs = context.WritesFiles ? OutputLock.Acquire($"study {name} (out {folder})", ("--out", csv), ("--checkpoint", checkpoint)) : null;
        var header = MetricsPlots.StudyCurvesHeader + string.Concat(extraNames.Select(n => "," + n));
        var configuration = new Dictionary<string, string>(s.Configuration)
        {
            ["study"] = name,
            ["study_curves"] = string.Join(" | ", guessers.Select(g => g.Name)),
        };
        Dictionary<string, string> Description(int curve, IReadOnlyList<string> rows) => new(configuration)
        {
            [CurveKey] = curve.ToString(CultureInfo.InvariantCulture),
            [RowsKey] = RowsHash(rows),
        };

        List<string> rows = [];
        List<CurvePoint> kept = [];
        CurveResume? continued = null;
        if (resume is not null)
        {
            var (curve, stored) = StudyCheckpoint(resume, name);
            if (curve >= guessers.Count)
                throw new InvalidDataException($"{resume}: the checkpoint is of curve {curve + 1} of a study with more curves than this run's {guessers.Count} " +
                    $"({configuration["study_curves"]}). Resume with the options the study was started with.");
            rows = RowsFor(csv, header, stored, resume);
            kept = [.. rows.Select(row => ParseRow(row, extraNames.Length))];
            var description = Description(curve, rows);
            continued = new CurveResume(curve, trainer =>
            {
                try { trainer.Resume(resume, description); }
                catch (CheckpointMismatchException e)
                {
                    throw new InvalidDataException($"{e.Message} --resume continues a study only with the options it was started with " +
                        $"(the checkpoint's metadata lists them). To run with these options instead, start anew: drop --resume and give another --out.", e);
                }
                context.Console.MarkupLineInterpolated($"resumed from {resume}: {guessers[curve].Name} at epoch {trainer.NextEpoch + 1}, step {trainer.Step}");
            });
        }

        // A diverged curve's rows stop early: its epochs never run and leave the count.
        int done = kept.Count(q => q.Epoch > 0), total = guessers.Count * s.Epochs, doneThisGuesser = 0;
        foreach (var finished in kept.GroupBy(q => q.Guesser).SkipLast(1)) total -= s.Epochs - finished.Max(q => q.Epoch);
        var watch = Stopwatch.StartNew();
        int doneAtStart = done;
        int current = -1;
        Trainer? trainer = null;
        var interrupt = context.ListenForInterrupt();
        List<CurvePoint> points;
        try
        {
            points = TrainingCurves.Run(s.Model, guessers, s.Rule, s.Train, s.Test, s.Options, s.Epochs, extra,
                progress: new Reported<CurvePoint>(point =>
                {
                    if (point.Epoch == 0) doneThisGuesser = 0;
                    else (done, doneThisGuesser) = (done + 1, doneThisGuesser + 1);
                    rows.Add(Row(name, point));
                    // The row first: a checkpoint never names rows the CSV lacks (a row ahead of it is dropped on resume).
                    AtomicFile.WriteAllLines(csv, rows.Prepend(header));
                    if (checkpoint is not null) trainer!.SaveCheckpoint(checkpoint, Description(current, rows));
                    string left = SweepCommand.TimeLeft(watch.Elapsed, done - doneAtStart, total - doneAtStart);
                    context.Console.MarkupLineInterpolated($"  {point.Guesser}, epoch {point.Epoch}: test accuracy {point.TestAccuracy:P1}, cosine {F(point.Cosine)} [[{done}/{total} epochs{left}]]");
                }),
                diverged: (guesser, e) =>
                {
                    total -= s.Epochs - doneThisGuesser;
                    context.Console.MarkupLineInterpolated($"  [yellow]{guesser} diverged:[/] {e.Message}");
                },
                resume: continued,
                started: (curve, t) =>
                {
                    (current, trainer) = (curve, t);
                    // A resumed curve goes on counting its own epochs (for the count a divergence takes away).
                    doneThisGuesser = t.NextEpoch;
                },
                cancellationToken: interrupt);
        }
        catch (OperationCanceledException) when (interrupt.IsCancellationRequested)
        {
            // Stopped between two steps: the checkpoint takes this step (within an epoch too); the CSV holds every finished epoch.
            if (checkpoint is not null && trainer is not null) trainer.SaveCheckpoint(checkpoint, Description(current, rows));
            if (trainer is not null) context.Console.MarkupLineInterpolated($"interrupted during the curve of {guessers[current].Name}");
            context.Error.WriteLine(Interruption.Message(trainer?.Step ?? 0, trainer?.NextEpoch + 1, trainer is null ? null : checkpoint, context.Arguments));
            return Interruption.ExitCode;
        }
        // Every row is in the CSV already (written as it came); the table shows each curve's last epoch.
        if (rows.Count == 0) AtomicFile.WriteAllLines(csv, [header]);
        WriteCurveTable(context.Console, csv, [.. kept, .. points], extraNames);
        Charts(context, folder, name);
        return Cli.Success;
    }

    /// <summary>Checkpoint metadata of a study: the index of the curve in progress and the hash of the CSV rows written
    /// before the checkpoint.</summary>
    private const string CurveKey = "study_curve", RowsKey = "study_rows_sha256";

    private static string RowsHash(IEnumerable<string> rows) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.Concat(rows.Select(r => r + "\n")))));

    /// <summary>The study and curve a checkpoint continues, and the hash of its rows; a file that is no study checkpoint,
    /// or another study's, is refused naming what it is.</summary>
    private static (int Curve, string RowsHash) StudyCheckpoint(string path, string name)
    {
        if (!File.Exists(path)) throw new IOException($"--resume {path}: no such file. Give the --checkpoint path of the interrupted study.");
        var metadata = SafeTensors.Read(path).Metadata;
        if (!metadata.TryGetValue(CurveKey, out var curveText) || !metadata.TryGetValue(RowsKey, out var hash) || !metadata.TryGetValue("study", out var study))
            throw new InvalidDataException($"{path}: not a checkpoint of a study (it has no {CurveKey}); `forwardad study {name} --resume` continues a study's own checkpoints.");
        if (study != name)
            throw new InvalidDataException($"{path}: a checkpoint of `forwardad study {study}`; resume it with that study.");
        if (!int.TryParse(curveText, NumberStyles.None, CultureInfo.InvariantCulture, out int curve))
            throw new InvalidDataException($"{path}: {CurveKey} is '{curveText}', not a curve index.");
        return (curve, hash);
    }

    /// <summary>The rows of <paramref name="csv"/> the checkpoint was written after: the first rows whose hash is the
    /// checkpoint's (a row written after it, when the study was killed between the two writes, is dropped).</summary>
    private static List<string> RowsFor(string csv, string header, string hash, string checkpoint)
    {
        string[] lines = File.Exists(csv) ? File.ReadAllLines(csv) : [];
        if (lines.Length > 0 && lines[0] != header)
            throw new InvalidDataException($"{csv}: not this study's CSV (its header is '{lines[0]}'; expected '{header}'). Give the --out of the interrupted study.");
        using var incremental = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        for (int count = 0; ; count++)
        {
            if (Convert.ToHexStringLower(incremental.GetCurrentHash()) == hash) return [.. lines.Skip(1).Take(count)];
            if (count + 1 >= lines.Length) break;
            incremental.AppendData(System.Text.Encoding.UTF8.GetBytes(lines[count + 1] + "\n"));
        }
        throw new InvalidDataException($"{csv} does not hold the rows {checkpoint} was written after (the CSV of another run, or edited): " +
            "resume with the --out of the interrupted study, or start anew without --resume.");
    }

    private static string Row(string name, CurvePoint q) => string.Join(',', [name, Quote(q.Guesser), q.Epoch.ToString(CultureInfo.InvariantCulture),
        G(q.TrainLoss), G(q.TrainAccuracy), G(q.TestLoss), G(q.TestAccuracy), G(q.Cosine), .. q.Extra.Select(G)]);

    /// <summary>A row of the CSV read back for the table (a guesser's name is quoted and may hold commas).</summary>
    private static CurvePoint ParseRow(string row, int extras)
    {
        int open = row.IndexOf('"', StringComparison.Ordinal), close = row.LastIndexOf('"');
        var guesser = row[(open + 1)..close].Replace("\"\"", "\"", StringComparison.Ordinal);
        var cells = row[(close + 2)..].Split(',');
        double D(int i) => double.Parse(cells[i], NumberStyles.Float, CultureInfo.InvariantCulture);
        return new CurvePoint(guesser, int.Parse(cells[0], CultureInfo.InvariantCulture), D(1), D(2), D(3), D(4), D(5), [.. Enumerable.Range(6, extras).Select(D)]);
    }

    /// <summary>Each curve's last epoch, sized to the console (<see cref="ConsoleTable"/>); the extra measures are left out
    /// first when it is narrow, then the train loss.</summary>
    internal static void WriteCurveTable(IAnsiConsole console, string csv, IReadOnlyList<CurvePoint> points, string[] extraNames)
    {
        List<TableColumnSpec> columns = [new("guesser"), new("epochs"), new("train loss", DropOrder: extraNames.Length + 1), new("test acc"),
            new("cosine (last epoch)"), .. extraNames.Select((n, i) => new TableColumnSpec(n.Replace('_', ' '), DropOrder: i + 1))];
        var rows = points.GroupBy(q => q.Guesser).Select(g => g.Last())
            .Select(last => (string[])[last.Guesser, last.Epoch.ToString(CultureInfo.InvariantCulture), F(last.TrainLoss), Percent(last.TestAccuracy), F(last.Cosine), .. last.Extra.Select(F)]).ToList();
        Write(console, columns, rows, csv);
    }

    private static void Write(IAnsiConsole console, IReadOnlyList<TableColumnSpec> columns, IReadOnlyList<string[]> rows, string csv)
    {
        var (table, dropped) = ConsoleTable.Build(columns, rows, console.Profile.Width);
        console.Write(table);
        if (ConsoleTable.DroppedNote(dropped, csv) is { } note) console.WriteLine(note);
    }

    private static string Percent(double v) => double.IsFinite(v) ? v.ToString("P1", CultureInfo.InvariantCulture) : "–";

    private static DocumentedCommand BiasVariance(CliContext context)
    {
        var common = new Common();
        var training = new CurveOptions(20);
        var ridges = Opt.String("ridges", "0.1").Describe("LIST", "relative ridges ρ of de-biased Wᵀ curves ('none' for no such curve)");
        var command = new DocumentedCommand("bias-variance",
            "training curves of directional descent, Wᵀ, directional descent matched to Wᵀ's cosine at every step, and de-biased Wᵀ (Fig. 4 right)",
            "forwardad study bias-variance [options]");
        training.AddTo(command, [ridges],
            "\"cosine-matched to Wᵀ\": at every step Wᵀ's estimate on the same batch gives θ = cos(ĝ_Wᵀ, g); the direction " +
            "y = √N(|θ| g/‖g‖ + √(1−θ²) r̂), r̂ ⟂ g random, gives sign(θ)(g·y)y: the same cosine, no bias.");
        common.AddTo(command);
        command.SetAction(p =>
        {
            var watch = Stopwatch.StartNew();
            var s = Setup(p, common, training);
            var mode = ModeOf(p, training.Mode);
            int g = p.GetValue(training.Guesses);
            var wt = Guessers.WeightTranspose(mode, g);
            var text = p.GetValue(ridges)!;
            var rhos = text is "none" or "" ? [] : Numbers(p, ridges, v => v > 0, "numbers > 0 (or 'none')");
            List<Guesser> guessers = [Guessers.DirectionalDescent(g), wt, new CosineMatchedTo(wt), .. rhos.Select(r => (Guesser)new DebiasedGuesser((ActivationGuesser)wt, r))];
            if (rhos.Any()) RequireDebiasable(() => guessers[^1].Compile(ParameterStore.Initialize(s.Model, new CpuBackend(), 1), 1));
            context.Console.MarkupLineInterpolated($"[bold]ForwardAD[/] study bias-variance: {s.Description}, {Opt.Count(s.Epochs, "epoch")}");
            var folder = p.GetValue(common.Out)!;
            int code = RunCurves(context, p, training, folder, "bias-variance", s, guessers, []);
            if (code == Cli.Success) Done(context, watch);
            return code;
        });
        return command;
    }

    private static DocumentedCommand Sharpening(CliContext context)
    {
        var common = new Common();
        var training = new CurveOptions(20);
        var powers = Opt.String("powers", "0,1,2,3").Describe("LIST", "singular-value powers p (p = 1 is self-sharpening)");
        var command = new DocumentedCommand("sharpening",
            "self-sharpening with Wᵀ's singular values raised to p: cosine and the first layer's effective rank over training (Fig. 5)",
            "forwardad study sharpening [options]");
        training.AddTo(command, [powers],
            "Default model --hidden 64,64 (p ≠ 1 decomposes WᵀW on the host every step). Backprop is trained alongside for reference (its effective rank).");
        common.AddTo(command, ownModel: "--hidden 64,64, the study's own network");
        command.SetAction(p =>
        {
            var watch = Stopwatch.StartNew();
            // Default model 64-64-64-10: σ^p ≠ 1 decomposes WᵀW on the host at every step (n³), 8× cheaper than at width 128.
            var s = Setup(p, common, training, (train, configuration) =>
            {
                var spec = new MlpSpec(train.FeatureSize, [64, 64], train.Classes, ElementwiseFunction.Relu);
                configuration.Add("model", ModelOptions.Describe(spec));
                return spec.Build(InitOption.Read(p, common.Model.Init, configuration));
            });
            var mode = ModeOf(p, training.Mode);
            int g = p.GetValue(training.Guesses);
            // Self-sharpening's composition (uniform noise pulled back one site, the true error at the output) with
            // Wᵀ = V Σ Uᵀ replaced by V Σ^p Uᵀ: p = 1 is self-sharpening itself.
            var guessers = Numbers(p, powers, _ => true, "numbers").Select(power => (Guesser)new ActivationGuesser(
                string.Create(CultureInfo.InvariantCulture, $"σ^{power:0.##} Wᵀ self-sharpening"),
                Guess.Uniform.ProjectedWithSingularValuePower((float)power).Masked(), Guess.TrueError, mode, g)).Prepend(Guessers.Backprop).ToList();
            context.Console.MarkupLineInterpolated($"[bold]ForwardAD[/] study sharpening: {s.Description}, {Opt.Count(s.Epochs, "epoch")}");
            var folder = p.GetValue(common.Out)!;
            int code = RunCurves(context, p, training, folder, "sharpening", s, guessers, ["first_layer_effective_rank"], ps => [TrainingCurves.FirstLayerEffectiveRank(ps)]);
            if (code == Cli.Success) Done(context, watch);
            return code;
        });
        return command;
    }

    private static DocumentedCommand Downstream(CliContext context)
    {
        var common = new Common();
        var training = new CurveOptions(15);
        var command = new DocumentedCommand("downstream", "k-layer downstream guesses, k = 1 … L−1: accuracy and cosine over training (Fig. 7 left)",
            "forwardad study downstream [options]");
        training.AddTo(command, [], "Default model: --layers 5 --width 128 (k = 1 … 4); activation perturbation (k = 0) for reference.");
        common.AddTo(command, ownModel: "--layers 5 --width 128, the study's own network");
        command.SetAction(p =>
        {
            var watch = Stopwatch.StartNew();
            // Default model: 5 weight matrices of width 128, so that k reaches 4.
            var s = Setup(p, common, training, (train, configuration) =>
            {
                var spec = MlpSpec.Uniform(train.FeatureSize, 5, 128, train.Classes, ElementwiseFunction.Relu);
                configuration.Add("model", ModelOptions.Describe(spec));
                return spec.Build(InitOption.Read(p, common.Model.Init, configuration));
            });
            var mode = ModeOf(p, training.Mode);
            int g = p.GetValue(training.Guesses), sites = s.Model.Sites.Length;
            if (sites < 2) throw new UsageException("k-layer downstream needs a model with at least two sites (one hidden layer).");
            var guessers = Enumerable.Range(1, sites - 1).Select(k => Guessers.Downstream(k, mode, g)).Prepend(Guessers.ActivationPerturbation(mode, g)).ToList();
            context.Console.MarkupLineInterpolated($"[bold]ForwardAD[/] study downstream: {s.Description}, {Opt.Count(s.Epochs, "epoch")}");
            var folder = p.GetValue(common.Out)!;
            int code = RunCurves(context, p, training, folder, "downstream", s, guessers, []);
            if (code == Cli.Success) Done(context, watch);
            return code;
        });
        return command;
    }

    // ------------------------------------------------------------------------------------------------------- spectra

    private static DocumentedCommand Spectrum(CliContext context)
    {
        var common = new Common();
        var pretrain = Opt.Int("pretrain-epochs", 1, min: 0, max: 10_000).Describe("N", "backprop epochs first (0: the initial model)");
        var examples = Opt.Int("examples", 512, min: 2).Describe("N", "examples whose site outputs are analysed");
        var jacobians = Opt.Int("jacobian-examples", 8, min: 1).Describe("N", "examples whose Jacobian spectra are averaged");
        var command = new DocumentedCommand("spectra",
            "singular values of the Jacobians between consecutive sites and the explained variance of each site's outputs (Figs. 2 and 7), on any model --model builds",
            "forwardad study spectra [options]");
        command.Section("Spectra", [pretrain, examples, jacobians],
            "The Jacobian of a site is that of its next sites with respect to it, read by pulling unit vectors back through the real " +
            "ops (residual adds, convolutions, norms included); sides above 1024 are skipped.");
        common.AddTo(command);
        command.SetAction(p =>
        {
            var watch = Stopwatch.StartNew();
            var folder = p.GetValue(common.Out)!;
            using var outputs = ClaimOutputs(context, folder, "spectra");
            var (parameters, train, description) = Pretrained(p, common, p.GetValue(pretrain), context);
            int count = Math.Min(p.GetValue(examples), train.Count);
            context.Console.MarkupLineInterpolated($"[bold]ForwardAD[/] study spectra: {description}, {count} examples, {p.GetValue(jacobians)} Jacobians per site");
            var model = parameters.Model;
            // A line per site, counting the sites done with the time left (the rest at the mean time per site so far).
            int analysed = 0;
            var analysing = Stopwatch.StartNew();
            var spectra = SpectraStudy.Run(parameters, train, Math.Min(p.GetValue(jacobians), train.Count), count, new Reported<SiteSpectrum>(site =>
                context.Console.MarkupLineInterpolated($"  {site.Site} done [[{++analysed}/{model.Sites.Length} sites{SweepCommand.TimeLeft(analysing.Elapsed, analysed, model.Sites.Length)}]]")));
            var rows = spectra.Select(s =>
            {
                string At(int k) => s.JacobianSingularValues.Length >= k ? F(s.JacobianSingularValues[k - 1]) : "–";
                return new[] { s.Site, s.JacobianSingularValues.Length == 0 ? "(no next site)" : $"{At(2)}, {At(5)}, {At(10)}",
                    s.JacobianSingularValues.Length == 0 ? "–" : F(s.JacobianEffectiveRank), s.ComponentsFor90Percent.ToString(CultureInfo.InvariantCulture),
                    model.Sites.First(x => x.Name == s.Site).ElementCount.ToString(CultureInfo.InvariantCulture) };
            }).ToList();
            Write(context.Console, [new("site"), new("Jacobian σ_k/σ_1 at k = 2, 5, 10"), new("Jacobian effective rank", DropOrder: 2),
                new("components for 90 % of activation variance"), new("site width", DropOrder: 1)], rows, Path.Combine(folder, "spectra.csv"));
            Csv(folder, "spectra", "site,kind,k,value", spectra.SelectMany(s =>
                s.JacobianSingularValues.Select((v, k) => $"{Quote(s.Site)},jacobian_singular_value,{k + 1},{G(v)}")
                    .Concat(s.ExplainedVariance.Select((v, k) => $"{Quote(s.Site)},explained_variance,{k + 1},{G(v)}"))));
            Charts(context, folder, "spectra");
            Done(context, watch);
            return Cli.Success;
        });
        return command;
    }

    // ------------------------------------------------------------------------------------------------------- output

    /// <summary>Claims a one-shot study's CSV (and so its charts) for the run: a second run on the same --out is refused.</summary>
    private static OutputLock? ClaimOutputs(CliContext context, string folder, string name) =>
        context.WritesFiles ? OutputLock.Acquire($"study {name} (out {folder})", ("--out", Path.Combine(folder, name + ".csv"))) : null;

    private static string F(double v) => double.IsFinite(v) ? v.ToString("F4", CultureInfo.InvariantCulture) : "–";
    private static string G(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
    private static string Quote(string s) => $"\"{s.Replace("\"", "\"\"", StringComparison.Ordinal)}\"";


    private static void Csv(string folder, string name, string header, IEnumerable<string> rows)
    {
        AtomicFile.WriteAllLines(Path.Combine(folder, name + ".csv"), rows.Prepend(header));
    }

    /// <summary>The study's charts, drawn from the CSV just written by the code `forwardad plot` runs on it (the same figures).</summary>
    private static void Charts(CliContext context, string folder, string name)
    {
        foreach (var (png, svg) in MetricsPlots.DrawAll(Path.Combine(folder, name + ".csv")).Files)
            context.Console.MarkupLineInterpolated($"chart {png} and {svg}");
    }

    private static void Done(CliContext context, Stopwatch watch) =>
        context.Console.MarkupLineInterpolated($"CSV and charts in the --out folder; {watch.Elapsed.TotalSeconds:F0} s");
}
