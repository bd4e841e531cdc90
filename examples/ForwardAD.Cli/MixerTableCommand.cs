using System.CommandLine;
using System.Globalization;
using System.Text;
using ForwardAD.Autodiff;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>
/// Table 1 of "How to Guess a Gradient" (Singhal et al.) on Ren et al.'s LocalMixer: end-to-end backprop, backprop through
/// the local losses, Ren et al.'s activation perturbation, activation mixing and Wᵀ, with and without augmentation, over one
/// or more seeds; one training run per cell and seed, every cell of a seed from the same initialisation.
/// </summary>
internal static class MixerTableCommand
{
    public const string DefaultMixer = "p4-d64-b2-g4";

    // Before the options' descriptions, which read them: static fields are initialised in textual order.
    private static readonly string[] MethodNames = ["backprop", "local-backprop", "ap", "mixing", "wt", "ap-example", "mixing-example", "wt-example", "ap-at-sites", "ap-noisy-heads"];
    private static readonly string[] DefaultMethods = ["backprop", "local-backprop", "ap", "mixing", "wt"];

    private sealed class Options
    {
        public readonly DataOptions Data = new("fashion-mnist");
        public readonly DeviceOptions Device = new();
        public readonly Option<string> Mixer = Opt.String("mixer", DefaultMixer).Describe("SPEC", "the LocalMixer (grammar below)");
        public readonly Option<string> Variant = Opt.Choice("variant", "ren", "LocalMixer variant", "ren", "blocks").Describe("NAME",
            "ren (Ren et al.'s construction) or blocks (the same as a spec ending in -blocks)");
        public readonly Option<string> Methods = Opt.String("methods", string.Join(',', DefaultMethods)).Describe("LIST", $"columns, of {string.Join(", ", MethodNames)}");
        public readonly Option<string> AugmentModes = Opt.String("augment-modes", "off,on").Describe("LIST", "off, on or both: rows without and with augmentation");
        public readonly Option<int> CropPadding = Opt.Int("crop-padding", 4, min: 0).Describe("P", "zeros on each side before the random crop");
        public readonly Option<int> Epochs = Opt.Int("epochs", 2, min: 1, max: 100_000).Describe("N", "epochs per run");
        public readonly Option<int> BatchSize = Opt.Int("batch-size", 64, min: 1).Describe("B", "examples per step");
        public readonly Option<float> Lr = Opt.Float("lr", 1e-3f, v => v > 0, "a number > 0").Describe("R", "Adam's learning rate");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "first seed of initialisation, shuffling, augmentation and every guess");
        public readonly Option<int> Seeds = Opt.Int("seeds", 1, min: 1, max: 1000).Describe("N", "seeds S, S+1, …, S+N−1: N runs per cell");
        public readonly Option<int> CosineEvery = Opt.Int("cosine-every", 50, min: 0).Describe("N",
            "measure cos(estimate, backprop gradient of the training objective) every N steps (0 = never)");
        public readonly Option<int?> TrainExamples = Opt.OptionalInt("train-examples", 1).Describe("N", "train on the first N training examples only (a quick look; default all)");
        public readonly Option<string> Out = Opt.String("out", Path.Combine("runs", "mixer-table")).Describe("PREFIX", "output files PREFIX.csv, .md, .png and .svg");
        public readonly Option<bool> Quiet = Opt.Flag("quiet").Describe("", "no per-epoch lines (each says the epochs done of all and the time left)");
        public readonly Option<string?> Checkpoint = Opt.OptionalString("checkpoint").Describe("PATH",
            "after every epoch, write the run in progress to a safetensors checkpoint (atomically; a finished run is kept by its row in PREFIX.csv instead)");
        public readonly Option<string?> Resume = Opt.OptionalString("resume").Describe("PATH",
            "continue an interrupted table from its checkpoint, bit for bit: the runs in PREFIX.csv are kept, the run in progress " +
            "goes on from the checkpoint, and the rest follow; the CSV and Markdown end with the numbers of an uninterrupted table " +
            "(the seconds aside). The checkpoint records the table's configuration (data, model, columns, augmentation, epochs, " +
            "batch, rate, seeds, cosine interval) and any difference is refused, naming it. May differ: --checkpoint (default: keep " +
            "writing the resumed one), --quiet, --device and --tf32 (another device continues to float rounding, not bit for bit). Give the same --out.");
    }

    public static DocumentedCommand Create(CliContext context)
    {
        var o = new Options();
        var command = new DocumentedCommand("mixer-table", "Table 1 of \"How to Guess a Gradient\" on Ren et al.'s LocalMixer.", "forwardad mixer-table [options]")
        {
            Summary =
                "Trains the LocalMixer --mixer once per column, augmentation mode and seed, with Adam, and writes the test accuracies " +
                "and wall times as PREFIX.csv (one row per run) and PREFIX.md (mean ± sample standard deviation over the seeds, and " +
                "what each column is), drawn as PREFIX.png and PREFIX.svg (test accuracy and cosine per column, as `forwardad plot " +
                "PREFIX.csv` draws it). By default the model is Ren et al.'s construction, as their released code builds it: a patch " +
                "block (patch-linear, then group-wise linear), mixer blocks, one head per block over the concatenated groups; " +
                "--variant blocks builds this library's first construction instead. The defaults (Fashion-MNIST, " +
                $"{DefaultMixer}, 2 epochs, batch 64, one seed) take about 2–4 minutes per run on 2 shared cores (10 runs: about 30 minutes per seed).\n" +
                "\n" +
                "Columns (--methods), with --variant ren (the default)\n" +
                "  backprop        backprop of the main loss only, end to end: no stop-gradients, no local losses (Ren et\n" +
                "                  al.'s BP column)\n" +
                "  local-backprop  backprop through every local loss, stop-gradients kept (Ren et al.'s local greedy BP)\n" +
                "  ap              Ren et al.'s activation perturbation: N(0, I) noise after each linear layer's LayerNorm,\n" +
                "                  before its ReLU; one JVP scalar of the block's local loss per (example, token, channel\n" +
                "                  group) (per token at token mixing); the estimate masked by the ReLU's derivative and passed\n" +
                "                  back through the LayerNorm; heads and classifier trained with their exact local gradients\n" +
                "  mixing, wt      the same, with activation mixing or Wᵀ in place of the noise\n" +
                "  ap-example, mixing-example, wt-example\n" +
                "                  the same with one JVP scalar per example (and block loss) instead of per block\n" +
                "  ap-at-sites     ablation: ap with the noise at each linear layer's output, before its LayerNorm\n" +
                "  ap-noisy-heads  ablation: ap with the heads and the classifier perturbed instead of exact\n" +
                "With --variant blocks: backprop and local-backprop as above; ap, mixing, wt put their guesses at the linear layers' " +
                "outputs and perturb the heads too, with per-block JVPs where the blocks stay apart at the site (per (token, group) " +
                "at the group-wise layer, per token at token mixing and channel1); the -example columns take one JVP scalar per " +
                "example and block loss.",
        };
        o.Data.AddTo(command);
        command.Section("", [o.TrainExamples],
            "The default data is Debian's dataset-fashion-mnist with its test set; cifar10:data_batch_1.bin,...,data_batch_5.bin with " +
            "--test-data cifar10:test_batch.bin is the paper's data set; a split test set is split by the first seed.");
        command.Section("Model and training", [o.Mixer, o.Variant, o.Methods, o.AugmentModes, o.CropPadding, o.Epochs, o.BatchSize, o.Lr, o.Seed, o.Seeds, o.CosineEvery]);
        command.Section("Output", [o.Out, o.Quiet]);
        command.Section("Checkpoints", [o.Checkpoint, o.Resume],
            "Ctrl-C stops the table after the current step: with --checkpoint it writes the checkpoint there (within an epoch too) and " +
            "prints the command that resumes it; a second Ctrl-C ends at once. Exit code 130. A second table given the same --out or " +
            "checkpoint while this one runs is refused.");
        o.Device.AddTo(command);
        command.Section("LocalMixer grammar", [], string.Join('\n', LocalMixerSpec.Grammar.Split('\n').Select(l => "  " + l.TrimEnd('\r'))));
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    /// <summary>The guesser of a column on a LocalMixer of the given construction (backprop columns: <see cref="Guessers.Backprop"/>,
    /// run on the end-to-end model for "backprop"). Ren et al.'s construction: guesses at the normalised outputs, heads exact;
    /// the blocks construction: guesses at the sites, heads guessed, as this table measured it first.</summary>
    public static Guesser Column(string method, LocalMixerVariant variant)
    {
        bool ren = variant == LocalMixerVariant.Ren;
        var placement = ren ? GuessPlacement.Normalized : GuessPlacement.Site;
        ActivationGuesser Local(Guesser guesser, bool blocks) =>
            (ActivationGuesser)guesser with { Loss = SiteLoss.Local, LocalBlocks = blocks, Placement = placement, ExactLast = ren };
        return method switch
        {
            "backprop" or "local-backprop" => Guessers.Backprop,
            "ap" => Guessers.RenActivationPerturbation(placement: placement, exactLast: ren),
            "ap-example" => Local(Guessers.ActivationPerturbation(), blocks: false),
            // Ablations of Ren et al.'s estimator, one ingredient each (on the blocks construction, ap already is both).
            "ap-at-sites" when ren => Guessers.RenActivationPerturbation(placement: GuessPlacement.Site, exactLast: true),
            "ap-noisy-heads" when ren => Guessers.RenActivationPerturbation(placement: GuessPlacement.Normalized, exactLast: false),
            "ap-at-sites" or "ap-noisy-heads" => throw new UsageException($"--methods {method}: an ablation of Ren et al.'s estimator; with --variant blocks, ap already puts its noise at the sites and on the heads."),
            "mixing" => Local(Guessers.ActivationMixing(), blocks: true),
            "mixing-example" => Local(Guessers.ActivationMixing(), blocks: false),
            "wt" => Local(Guessers.WeightTranspose(), blocks: true),
            "wt-example" => Local(Guessers.WeightTranspose(), blocks: false),
            _ => throw new UsageException($"--methods: unknown method '{method}'; use {Opt.List(MethodNames)}."),
        };
    }

    /// <summary>Column headers of the Markdown table.</summary>
    private static string Header(string method) => method switch
    {
        "backprop" => "Backprop, end to end",
        "local-backprop" => "Backprop, local losses",
        "ap" => "AP",
        "mixing" => "Mixing",
        "wt" => "Wᵀ",
        "ap-example" => "AP, JVP per example",
        "ap-at-sites" => "AP, noise at the linear outputs",
        "ap-noisy-heads" => "AP, heads perturbed",
        "mixing-example" => "Mixing, JVP per example",
        "wt-example" => "Wᵀ, JVP per example",
        _ => method,
    };

    /// <summary>What a column is, for the legend under the table.</summary>
    private static string Legend(string method, LocalMixerVariant variant)
    {
        bool ren = variant == LocalMixerVariant.Ren;
        string where = ren
            ? "at each linear layer's LayerNorm output (before its ReLU), the estimate masked by the ReLU's derivative and passed back through the LayerNorm; heads and classifier trained with their exact local gradients"
            : "at each linear layer's output, heads and classifier guessed too";
        string blocks = ren ? "one JVP scalar of the block's loss per (example, token, group), per (example, token) at token mixing" :
            "one JVP scalar of the block's loss per (example, token, group) at the group-wise layer, per (example, token) at channel1 and token mixing, per example elsewhere";
        return method switch
        {
            "backprop" => "backprop of the main loss only: no stop-gradients, no local losses (Ren et al.'s BP)",
            "local-backprop" => "backprop of the sum of every block's local loss and the main loss, stop-gradients kept (Ren et al.'s local greedy BP)",
            "ap" => $"activation perturbation, N(0, I) {where}; {blocks}" + (ren ? " (Ren et al.'s forward gradient)" : ""),
            "mixing" => $"activation mixing in place of the noise, {where}; {blocks}",
            "wt" => $"Wᵀ (noise at the next sites pulled back) in place of the noise, {where}; {blocks}",
            "ap-example" => "as AP with one JVP scalar per example and block loss",
            "ap-at-sites" => "as AP with the noise at each linear layer's output instead of after its LayerNorm (so one scalar per (example, token) at the patch-linear layer and channel1, whose LayerNorm joins a token's groups)",
            "ap-noisy-heads" => "as AP with the heads and the classifier perturbed too (N(0, I) at their outputs, one JVP scalar per example of their loss) instead of their exact local gradients",
            "mixing-example" => "as Mixing with one JVP scalar per example and block loss",
            "wt-example" => "as Wᵀ with one JVP scalar per example and block loss",
            _ => method,
        };
    }

    private static string[] List(ParseResult p, Option<string> option, string[] allowed)
    {
        var items = p.GetValue(option)!.Split(',', StringSplitOptions.TrimEntries);
        foreach (var item in items)
            if (!allowed.Contains(item)) throw new UsageException($"{option.Name}: '{item}' is not one of {Opt.List(allowed)}.");
        if (items.Distinct().Count() != items.Length) throw new UsageException($"{option.Name}: an item is listed twice; list each once.");
        return items;
    }

    private static string Format(double value, string format) => double.IsNaN(value) ? "–" : value.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>The header of PREFIX.csv: plot's columns, then the hash of the table's configuration, which a resume checks.</summary>
    private const string CsvHeader = MetricsPlots.MixerTableHeader + ",run";

    /// <summary>The checkpoint's metadata key naming the run it holds; the rest of its description is the table's configuration.</summary>
    private const string CellKey = "cell";

    private const string ResumeAdvice = "--resume continues a table only with the options it was started with (the checkpoint's metadata lists them; " +
        "see 'forwardad mixer-table --help' for those that may differ). To run a table with these options instead, drop --resume and give another --out and --checkpoint.";

    /// <summary>One training run of the table: its seed, augmentation mode and column, in the order the table runs them.</summary>
    internal readonly record struct TableCell(ulong Seed, string Mode, string Method)
    {
        public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"seed {Seed}, augment {Mode}, {Method}");
    }

    /// <summary>What a finished run's last epoch measured (a row of PREFIX.csv; <see cref="Cosine"/> NaN for the exact
    /// columns) and the seconds it took.</summary>
    internal sealed record Result(TableCell Cell, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy, double Cosine, double Seconds);

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        var console = context.Console;
        int firstSeed = p.GetValue(o.Seed), seedCount = p.GetValue(o.Seeds);
        if ((long)firstSeed + seedCount - 1 > int.MaxValue) throw new UsageException($"--seed {firstSeed} --seeds {seedCount}: the last seed would pass {int.MaxValue}.");
        var seeds = Enumerable.Range(firstSeed, seedCount).Select(s => (ulong)s).ToArray();
        int epochs = p.GetValue(o.Epochs), batch = p.GetValue(o.BatchSize);
        var methods = List(p, o.Methods, MethodNames);
        var modes = List(p, o.AugmentModes, ["off", "on"]);
        var configuration = new RunConfiguration();
        var (train, test) = o.Data.Load(p, seeds[0], configuration);
        var limit = p.GetValue(o.TrainExamples);
        if (limit < train.Count)
            train = train.Subset([.. Enumerable.Range(0, limit.Value)], $"{train.Name} (first {limit})");
        if (batch > train.Count) throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples).");
        var input = train.FeatureShape.Rank == 2 ? new Tensors.Shape(train.FeatureShape[0], train.FeatureShape[1], 1) : train.FeatureShape;
        var spec = ModelOptions.ParseMixer("localmixer:" + p.GetValue(o.Mixer), input, train.Classes);
        if (p.Given(o.Variant))
        {
            var asked = p.GetValue(o.Variant) == "blocks" ? LocalMixerVariant.Blocks : LocalMixerVariant.Ren;
            if (asked == LocalMixerVariant.Ren && spec.Variant == LocalMixerVariant.Blocks)
                throw new UsageException($"--variant ren contradicts --mixer {p.GetValue(o.Mixer)} (a blocks spec); drop one of them.");
            spec = spec with { Variant = asked };
            try { spec.Validate(); }
            catch (ArgumentException e) { throw new UsageException($"--variant {p.GetValue(o.Variant)}: {e.Message}"); }
        }
        foreach (var method in methods) Column(method, spec.Variant); // a column the variant cannot run is refused before any training
        if (p.Given(o.CropPadding) && !modes.Contains("on"))
            throw new UsageException("--crop-padding applies only to the augmented rows; --augment-modes has no 'on'. Drop --crop-padding or add on.");
        var augmentation = new ImageAugmentation(p.GetValue(o.CropPadding));
        if (modes.Contains("on"))
        {
            try { augmentation.Validate(input); }
            catch (ArgumentException e) { throw new UsageException($"--crop-padding: {e.Message}"); }
        }
        string variantName = spec.Variant == LocalMixerVariant.Ren ? "ren" : "blocks";
        float lr = p.GetValue(o.Lr);
        int cosineEvery = p.GetValue(o.CosineEvery);
        // Everything that decides the table's numbers: recorded in every checkpoint (checked by a resume, naming what
        // differs) and hashed into the CSV's run column (so that a CSV of another table is never continued).
        configuration.Add("train-examples", limit is int n ? n.ToString(CultureInfo.InvariantCulture) : "all");
        configuration.Add("model", ModelOptions.Describe(spec));
        configuration.Add("methods", string.Join(',', methods));
        configuration.Add("augment-modes", string.Join(',', modes));
        if (modes.Contains("on")) configuration.Add("crop-padding", augmentation.Padding);
        configuration.Add("epochs", epochs);
        configuration.Add("batch_size", batch); // the trainer's own name for it: it records the same value
        configuration.Add("optimizer", "adam");
        configuration.Add("lr", lr);
        // Consecutive seeds: the range says them all, briefly (a checkpoint's metadata and a refusal's message).
        configuration.Add("seeds", seeds.Length == 1 ? $"{firstSeed}" : $"{firstSeed}-{seeds[^1]}");
        configuration.Add("cosine-every", cosineEvery);
        var runHash = configuration.Hash();

        var prefix = p.GetValue(o.Out)!;
        string csvPath = prefix + ".csv", mdPath = prefix + ".md";
        var checkpoint = p.GetValue(o.Checkpoint);
        var resume = p.GetValue(o.Resume);
        foreach (var (option, path) in new[] { ("--out", csvPath), ("--out", mdPath), ("--checkpoint", checkpoint), ("--resume", resume) })
            if (path is not null && Directory.Exists(path)) throw new IOException($"{option} {path}: is a directory; give a file path.");
        if (Path.GetDirectoryName(prefix) is { Length: > 0 } directory) Directory.CreateDirectory(directory);
        // Claimed before anything is read for a resume or written: a second table on these outputs is refused, not interleaved.
        using var outputs = OutputLock.Acquire($"mixer-table (out {prefix})", ("--out", csvPath), ("--out", mdPath), ("--checkpoint", checkpoint ?? resume));

        var cells = (from seed in seeds from mode in modes from method in methods select new TableCell(seed, mode, method)).ToList();
        var results = new List<Result>();
        TableCell? resumed = null;
        if (resume is not null)
        {
            // The checkpoint's configuration first, so that a changed option is reported as such, not as a foreign CSV.
            var saved = CheckpointCell(resume, configuration);
            results = ReadFinished(csvPath, runHash, cells, variantName, epochs);
            int at = cells.FindIndex(c => c.ToString() == saved);
            if (at == results.Count) resumed = cells[at];
            else if (at < 0 || at > results.Count)
                throw new InvalidDataException(at < 0
                    ? $"{resume}: the checkpoint holds the run '{saved}', which this table does not have. {ResumeAdvice}"
                    : $"{resume}: the checkpoint holds run {at + 1} of {cells.Count} ({saved}), but {csvPath} holds {results.Count} finished runs, not the {at} before it. Give the --out of the interrupted table.");
            // else: the checkpoint holds a run the CSV already has (the process ended between the row and the next
            // run's first checkpoint): the next run starts afresh, as it would have.
        }
        checkpoint ??= resume;
        var backend = o.Device.Create(p);
        var model = spec.Build();
        var endToEnd = methods.Contains("backprop") ? spec.Build(endToEnd: true) : null;
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] mixer-table: {train.Name} ({train.Count} train / {test.Count} test), {ModelOptions.Describe(spec)} ({model.ParameterCount:N0} parameters), Adam {lr}, {Opt.Count(epochs, "epoch")}, batch {batch}, {(seeds.Length == 1 ? $"seed {seeds[0]}" : $"seeds {string.Join(",", seeds)}")}, {backend.Name}");
        if (resume is not null)
            console.MarkupLineInterpolated($"resumed from {resume}: {results.Count} of {cells.Count} runs finished in {csvPath}{(resumed is { } r ? $", {r} goes on from the checkpoint" : "")}");

        bool finishedBefore = results.Count == cells.Count;
        var interrupt = context.ListenForInterrupt();
        // Time left: the epochs still to train at the mean time per epoch of this process so far (the columns differ in
        // cost, so it settles once each column has run once).
        int totalEpochs = cells.Count * epochs, epochsDone = results.Count * epochs, epochsBefore = epochsDone;
        var total = System.Diagnostics.Stopwatch.StartNew();
        foreach (var cell in cells.Skip(results.Count))
        {
            var (seed, mode, method) = cell;
            // The same initialisation for every cell of a seed: the end-to-end model has the same nodes, ids and parameters.
            var parameters = ParameterStore.Initialize(method == "backprop" ? endToEnd! : model, backend, seed);
            bool exact = method is "backprop" or "local-backprop";
            var options = new TrainingOptions(batch, seed) { CosineEvery = exact ? 0 : cosineEvery, Augmentation = mode == "on" ? augmentation : null };
            var trainer = new Trainer(Column(method, spec.Variant), Optimizers.Adam(lr), parameters, train, test, options);
            var description = configuration.ToDictionary();
            description[CellKey] = cell.ToString();
            if (cell == resumed)
            {
                try { trainer.Resume(resume!, description); }
                catch (CheckpointMismatchException e) { throw new InvalidDataException($"{e.Message} {ResumeAdvice}", e); }
                if (trainer.NextEpoch >= epochs)
                    throw new InvalidDataException($"{resume}: the checkpoint has finished every epoch of {cell}, but {csvPath} has no row for it. Start the table afresh.");
                epochsDone += trainer.NextEpoch;
                epochsBefore = epochsDone;
            }
            var watch = System.Diagnostics.Stopwatch.StartNew();
            EpochReport last = null!;
            try
            {
                for (int e = trainer.NextEpoch; e < epochs; e++)
                {
                    last = trainer.RunEpoch(e, cancellationToken: interrupt);
                    // A run's last epoch is kept by its row in the CSV, which the next run's checkpoints then follow.
                    if (checkpoint is not null && e < epochs - 1) trainer.SaveCheckpoint(checkpoint, description);
                    epochsDone++;
                    string left = SweepCommand.TimeLeft(total.Elapsed, epochsDone - epochsBefore, totalEpochs - epochsBefore);
                    if (!p.GetValue(o.Quiet))
                        context.Output.WriteLine($"{cell}: epoch {e + 1}/{epochs} train acc {Format(last.TrainAccuracy, "P2")}, test acc {Format(last.TestAccuracy, "P2")}, " +
                            $"cos global {Format(last.GlobalCosine, "F3")}{SiteCosines(parameters.Model, last)}, {Format(last.WallTime.TotalSeconds, "F1")} s training [{epochsDone}/{totalEpochs} epochs{left}]");
                }
            }
            catch (OperationCanceledException) when (interrupt.IsCancellationRequested)
            {
                // Stopped between two steps: the checkpoint takes this step (within an epoch too), so no step is lost; the
                // CSV already holds every finished run.
                if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, description);
                context.Output.WriteLine($"stopped in {cell}, run {cells.IndexOf(cell) + 1} of {cells.Count}; {csvPath} holds {Opt.Count(results.Count, "finished run")}");
                context.Error.WriteLine(Interruption.Message(trainer.Step, trainer.NextEpoch + 1, checkpoint, context.Arguments));
                return Interruption.ExitCode;
            }
            results.Add(new Result(cell, last.TrainLoss, last.TrainAccuracy, last.TestLoss, last.TestAccuracy, last.GlobalCosine, watch.Elapsed.TotalSeconds));
            WriteCsv(csvPath, results, variantName, epochs, runHash);
        }
        if (finishedBefore)
            console.MarkupLine("nothing to train: every run is already in the CSV; the Markdown and the figure are written again from it.");

        var md = new StringBuilder();
        md.Append(CultureInfo.InvariantCulture, $"Test accuracy (%), {train.Name}, LocalMixer {spec} ({(spec.Variant == LocalMixerVariant.Ren ? "Ren et al.'s construction" : "blocks construction")}), ")
          .Append(CultureInfo.InvariantCulture, $"Adam {lr}, {Opt.Count(epochs, "epoch")}, batch {batch}, ")
          .Append(seeds.Length == 1 ? $"seed {seeds[0]}" : $"mean ± sample sd over seeds {string.Join(", ", seeds)} (n = {seeds.Length})").Append("\n\n");
        md.Append("| augmentation | ").Append(string.Join(" | ", methods.Select(Header))).Append(" |\n|---|").Append(string.Concat(methods.Select(_ => "---:|"))).Append('\n');
        foreach (var mode in modes)
            md.Append("| ").Append(ModeLabel(mode)).Append(" | ")
              .Append(string.Join(" | ", methods.Select(m => Cell(Accuracies(results, mode, m)))))
              .Append(" |\n");
        md.Append('\n');
        foreach (var method in methods) md.Append(CultureInfo.InvariantCulture, $"- {Header(method)}: {Legend(method, spec.Variant)}.\n");
        md.Append(CultureInfo.InvariantCulture, $"\nWall time per run (s, mean over seeds): {string.Join(", ", modes.SelectMany(mode => methods.Select(m => $"{mode}/{m} {results.Where(r => r.Cell.Mode == mode && r.Cell.Method == m).Average(r => r.Seconds):F0}")))}; total {results.Sum(r => r.Seconds):F0} s.\n");
        AtomicFile.WriteAllLines(mdPath, [md.ToString().TrimEnd('\n')]);
        // On the console, the same accuracies as a table sized to it (the Markdown's long headers would wrap).
        console.WriteLine(seeds.Length == 1 ? $"test accuracy (%), seed {seeds[0]}:" : $"test accuracy (%), mean ± sample sd over {seeds.Length} seeds:");
        var (table, dropped) = SummaryTable(modes, methods, results, console.Profile.Width);
        console.Write(table);
        if (ConsoleTable.DroppedNote(dropped, mdPath) is { } note) console.WriteLine(note);
        // The figure from the CSV just written, by the code `forwardad plot` runs on it.
        var (png, svg, _) = MetricsPlots.Draw(csvPath);
        console.MarkupLineInterpolated($"written {csvPath}, {mdPath}, {png} and {svg}");
        return Cli.Success;
    }

    private static string ModeLabel(string mode) => mode == "on" ? "crop + flip" : "none";

    private static double[] Accuracies(IReadOnlyList<Result> results, string mode, string method) =>
        [.. results.Where(r => r.Cell.Mode == mode && r.Cell.Method == method).Select(r => 100 * r.TestAccuracy)];

    /// <summary>The console's summary: the Markdown table's accuracies, sized to the console (<see cref="ConsoleTable"/>).
    /// When it does not fit even with its headers stacked, the columns after the first are left out, the last first; they
    /// are returned by their --methods names (the headers hold commas, which would run together in a list).</summary>
    internal static (Spectre.Console.Table Table, IReadOnlyList<string> Dropped) SummaryTable(IReadOnlyList<string> modes, IReadOnlyList<string> methods, IReadOnlyList<Result> results, int width)
    {
        List<TableColumnSpec> columns = [new("augment"), .. methods.Select((m, i) => new TableColumnSpec(Header(m), DropOrder: i == 0 ? 0 : methods.Count - i))];
        var rows = modes.Select(mode => (string[])[ModeLabel(mode), .. methods.Select(m => Cell(Accuracies(results, mode, m)))]).ToList();
        var (table, dropped) = ConsoleTable.Build(columns, rows, width);
        return (table, [.. methods.Where(m => dropped.Contains(Header(m)))]);
    }

    /// <summary>The run a checkpoint holds, once its metadata shows it is of this table's configuration (every difference
    /// named); the trainer then checks the rest (its own settings, every tensor) when it resumes it.</summary>
    private static string CheckpointCell(string path, RunConfiguration configuration)
    {
        var metadata = SafeTensors.Read(path).Metadata;
        if (!metadata.TryGetValue(CellKey, out var cell))
            throw new InvalidDataException($"{path}: not a checkpoint of mixer-table (its metadata has no '{CellKey}'); resume it with the command that wrote it. Nothing was changed.");
        var differences = configuration.Entries
            .Where(e => !metadata.TryGetValue(e.Key, out var theirs) || theirs != e.Value)
            .Select(e => metadata.TryGetValue(e.Key, out var theirs) ? $"{e.Key} is '{theirs}' but this run's is '{e.Value}'" : $"{e.Key} is missing from the checkpoint but this run's is '{e.Value}'")
            .ToList();
        if (differences.Count > 0)
            throw new InvalidDataException($"{path}: the checkpoint is of another table: {string.Join("; ", differences)}. Nothing was changed. {ResumeAdvice}");
        return cell;
    }

    /// <summary>The finished runs PREFIX.csv holds, which must be the first runs of <paramref name="cells"/> in order, of
    /// this configuration (<paramref name="run"/>); none when the file is missing or empty.</summary>
    private static List<Result> ReadFinished(string path, string run, IReadOnlyList<TableCell> cells, string variant, int epochs)
    {
        if (!File.Exists(path) || File.ReadAllText(path).Trim().Length == 0) return [];
        const string Advice = "It is left as it is; resume with the --out of the interrupted table, or start a new table elsewhere.";
        var table = CsvTable.Read(path);
        if (table.HeaderLine != CsvHeader)
            throw new InvalidDataException($"{path}, line 1: not a CSV of this version's mixer-table (the header is not {CsvHeader}). {Advice}");
        if (table.Rows.Count > cells.Count)
            throw new InvalidDataException($"{path}: {table.Rows.Count} rows, but this table has {cells.Count} runs. {Advice}");
        var (trainLoss, trainAccuracy, testLoss, testAccuracy, cosine, seconds) =
            (table.Numbers("train_loss"), table.Numbers("train_accuracy"), table.Numbers("test_loss"), table.Numbers("test_accuracy"), table.Numbers("cosine"), table.Numbers("seconds"));
        var results = new List<Result>();
        for (int i = 0; i < table.Rows.Count; i++)
        {
            var row = table.Rows[i];
            if (row[^1] != run)
                throw new InvalidDataException($"{path}, row {i + 1}: a run of another table (configuration {row[^1]}; this table's is {run}). {Advice}");
            var cell = cells[i];
            string[] expected = [variant, cell.Mode, cell.Method, cell.Seed.ToString(CultureInfo.InvariantCulture), epochs.ToString(CultureInfo.InvariantCulture)];
            if (!row.Take(expected.Length).SequenceEqual(expected))
                throw new InvalidDataException($"{path}, row {i + 1}: '{string.Join(',', row.Take(expected.Length))}' where this table's run {i + 1} is '{string.Join(',', expected)}'. {Advice}");
            results.Add(new Result(cell, trainLoss[i], trainAccuracy[i], testLoss[i], testAccuracy[i], cosine[i], seconds[i]));
        }
        return results;
    }

    /// <summary>Writes PREFIX.csv with the runs finished so far, atomically: an interrupted table leaves every finished run.</summary>
    private static void WriteCsv(string path, IReadOnlyList<Result> results, string variant, int epochs, string run)
    {
        // Round-trip formats: a resumed table reads the rows back and writes them again unchanged.
        var csv = new StringBuilder(CsvHeader + "\n");
        foreach (var r in results)
            csv.Append(CultureInfo.InvariantCulture, $"{variant},{r.Cell.Mode},{r.Cell.Method},{r.Cell.Seed},{epochs},{r.TrainLoss:R},{r.TrainAccuracy:R},{r.TestLoss:R},{r.TestAccuracy:R},{(double.IsNaN(r.Cosine) ? "" : r.Cosine.ToString("R", CultureInfo.InvariantCulture))},{r.Seconds:F1},{run}\n");
        AtomicFile.WriteAllLines(path, [csv.ToString().TrimEnd('\n')]);
    }

    /// <summary>" (per site: block1.patch 0.412, …)" when the epoch measured cosines, named by the sites' layers; empty for
    /// the exact columns, which measure none.</summary>
    private static string SiteCosines(Model model, EpochReport report) =>
        report.SiteCosines.All(double.IsNaN) ? ""
            : $" (per site: {string.Join(", ", model.Sites.Zip(report.SiteCosines, (site, c) => $"{site.Node.Name} {Format(c, "F3")}"))})";

    /// <summary>One value with one decimal, or "mean ± sd" (sample standard deviation) over several seeds.</summary>
    private static string Cell(double[] values)
    {
        double mean = values.Average();
        if (values.Length == 1) return mean.ToString("F1", CultureInfo.InvariantCulture);
        double sd = Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Length - 1));
        return string.Create(CultureInfo.InvariantCulture, $"{mean:F1} ± {sd:F1}");
    }
}
