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
        if (p.GetValue(o.TrainExamples) is int limit && limit < train.Count)
            train = train.Subset([.. Enumerable.Range(0, limit)], $"{train.Name} (first {limit})");
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
        var prefix = p.GetValue(o.Out)!;
        if (Path.GetDirectoryName(prefix) is { Length: > 0 } directory) Directory.CreateDirectory(directory);
        var backend = o.Device.Create(p);
        var model = spec.Build();
        var endToEnd = methods.Contains("backprop") ? spec.Build(endToEnd: true) : null;
        string variantName = spec.Variant == LocalMixerVariant.Ren ? "ren" : "blocks";
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] mixer-table: {train.Name} ({train.Count} train / {test.Count} test), {ModelOptions.Describe(spec)} ({model.ParameterCount:N0} parameters), Adam {p.GetValue(o.Lr)}, {epochs} epoch(s), batch {batch}, seeds {string.Join(",", seeds)}, {backend.Name}");

        var rows = new List<(ulong Seed, string Mode, string Method, EpochReport Last, TimeSpan Wall)>();
        // Time left: the epochs still to train at the mean time per epoch so far (the columns differ in cost, so it settles
        // once each column has run once).
        int totalEpochs = seeds.Length * modes.Length * methods.Length * epochs, epochsDone = 0;
        var total = System.Diagnostics.Stopwatch.StartNew();
        foreach (var seed in seeds)
            foreach (var mode in modes)
                foreach (var method in methods)
                {
                    // The same initialisation for every cell of a seed: the end-to-end model has the same nodes, ids and parameters.
                    var parameters = ParameterStore.Initialize(method == "backprop" ? endToEnd! : model, backend, seed);
                    bool exact = method is "backprop" or "local-backprop";
                    var options = new TrainingOptions(batch, seed) { CosineEvery = exact ? 0 : p.GetValue(o.CosineEvery), Augmentation = mode == "on" ? augmentation : null };
                    var trainer = new Trainer(Column(method, spec.Variant), Optimizers.Adam(p.GetValue(o.Lr)), parameters, train, test, options);
                    var watch = System.Diagnostics.Stopwatch.StartNew();
                    EpochReport last = null!;
                    for (int e = 0; e < epochs; e++)
                    {
                        last = trainer.RunEpoch(e);
                        epochsDone++;
                        string left = SweepCommand.TimeLeft(total.Elapsed, epochsDone, totalEpochs);
                        if (!p.GetValue(o.Quiet))
                            context.Output.WriteLine($"seed {seed}, augment {mode}, {method}: epoch {e + 1}/{epochs} train acc {Format(last.TrainAccuracy, "P2")}, test acc {Format(last.TestAccuracy, "P2")}, " +
                                $"cos global {Format(last.GlobalCosine, "F3")}{SiteCosines(parameters.Model, last)}, {Format(last.WallTime.TotalSeconds, "F1")} s training [{epochsDone}/{totalEpochs} epochs{left}]");
                    }
                    rows.Add((seed, mode, method, last, watch.Elapsed));
                }

        var csv = new StringBuilder(MetricsPlots.MixerTableHeader + "\n");
        foreach (var (seed, mode, method, r, wall) in rows)
            csv.Append(CultureInfo.InvariantCulture, $"{variantName},{mode},{method},{seed},{epochs},{r.TrainLoss:R},{r.TrainAccuracy:R},{r.TestLoss:R},{r.TestAccuracy:R},{(double.IsNaN(r.GlobalCosine) ? "" : r.GlobalCosine.ToString("R", CultureInfo.InvariantCulture))},{wall.TotalSeconds:F1}\n");
        AtomicFile.WriteAllLines(prefix + ".csv", [csv.ToString().TrimEnd('\n')]);
        var md = new StringBuilder();
        md.Append(CultureInfo.InvariantCulture, $"Test accuracy (%), {train.Name}, LocalMixer {spec} ({(spec.Variant == LocalMixerVariant.Ren ? "Ren et al.'s construction" : "blocks construction")}), ")
          .Append(CultureInfo.InvariantCulture, $"Adam {p.GetValue(o.Lr)}, {epochs} epoch(s), batch {batch}, ")
          .Append(seeds.Length == 1 ? $"seed {seeds[0]}" : $"mean ± sample sd over seeds {string.Join(", ", seeds)} (n = {seeds.Length})").Append("\n\n");
        md.Append("| augmentation | ").Append(string.Join(" | ", methods.Select(Header))).Append(" |\n|---|").Append(string.Concat(methods.Select(_ => "---:|"))).Append('\n');
        foreach (var mode in modes)
            md.Append(mode == "on" ? "| crop + flip | " : "| none | ")
              .Append(string.Join(" | ", methods.Select(m => Cell([.. rows.Where(r => r.Mode == mode && r.Method == m).Select(r => 100 * r.Last.TestAccuracy)]))))
              .Append(" |\n");
        md.Append('\n');
        foreach (var method in methods) md.Append(CultureInfo.InvariantCulture, $"- {Header(method)}: {Legend(method, spec.Variant)}.\n");
        md.Append(CultureInfo.InvariantCulture, $"\nWall time per run (s, mean over seeds): {string.Join(", ", modes.SelectMany(mode => methods.Select(m => $"{mode}/{m} {rows.Where(r => r.Mode == mode && r.Method == m).Average(r => r.Wall.TotalSeconds):F0}")))}; total {rows.Sum(r => r.Wall.TotalSeconds):F0} s.\n");
        AtomicFile.WriteAllLines(prefix + ".md", [md.ToString().TrimEnd('\n')]);
        context.Output.Write(md.ToString());
        // The figure from the CSV just written, by the code `forwardad plot` runs on it.
        var (png, svg, _) = MetricsPlots.Draw(prefix + ".csv");
        console.MarkupLineInterpolated($"written {prefix}.csv, {prefix}.md, {png} and {svg}");
        return Cli.Success;
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
