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
/// The four columns of Table 1 of "How to Guess a Gradient" (Singhal et al.) on Ren et al.'s LocalMixer: backprop through the
/// local losses, Ren et al.'s activation perturbation, activation mixing and Wᵀ, each site's JVP taken of its own block's
/// local loss, with and without augmentation; one training run per cell, the same seed and initialisation for all.
/// </summary>
internal static class MixerTableCommand
{
    public const string DefaultMixer = "p4-d64-b2-g4";

    public static readonly string Help = $"""
        forwardad mixer-table [options]   Table 1 of "How to Guess a Gradient" on a LocalMixer (Ren et al. 2022).

        Trains the LocalMixer --mixer with each of backprop (through the local losses, stop-gradients kept),
        Ren et al.'s activation perturbation (ap: one JVP scalar per example, token and channel group where the
        blocks stay apart up to the local loss), activation mixing (mixing) and Wᵀ (wt), every guess's JVP
        taken of its own block's local loss, with Adam, without and with augmentation (random crop + flip);
        writes the test accuracies and wall times as PREFIX.csv (one row per run) and PREFIX.md (the table).
        The defaults (Fashion-MNIST, {DefaultMixer}, 2 epochs, batch 64) take about 2–4 minutes per run on 2
        shared cores (8 runs: about 25 minutes).

        Data
          --data SOURCE             fashion-mnist (default: Debian's dataset-fashion-mnist, its test set for the
                                    table); cifar10:data_batch_1.bin,...,data_batch_5.bin with --test-data
                                    cifar10:test_batch.bin for the paper's data set; any image source of
                                    'forwardad train --help'
          --test-data SOURCE, --test-fraction F, --standardize    as for train
          --train-examples N        train on the first N training examples only (a quick look; default all)
        Model and training
          --mixer SPEC              the LocalMixer (default {DefaultMixer}; grammar below)
          --methods LIST            columns, of backprop, ap, mixing, wt (default these four, in that order; the
                                    guessers take one JVP scalar per (token, group) block, as Ren et al.) and
                                    ap-example, mixing-example, wt-example (the same guesses with one JVP scalar
                                    per example and block loss)
          --augment-modes LIST      off, on (default both): rows without and with augmentation
          --crop-padding P          zeros on each side before the random crop (default 4)
          --epochs N                (default 2)
          --batch-size B            (default 64)
          --lr R                    Adam's learning rate (default 0.001)
          --seed S                  seed of initialisation, shuffling, augmentation and every guess (default 1)
          --cosine-every N          measure cos(estimate, backprop gradient) every N steps (default 50; 0 = never)
          --out PREFIX              output files PREFIX.csv and PREFIX.md (default runs/mixer-table)
          --quiet                   no per-run lines
        {DeviceOptions.Help}
        LocalMixer grammar
        {string.Join('\n', LocalMixerSpec.Grammar.Split('\n').Select(l => "  " + l.TrimEnd('\r')))}
        """;

    private static readonly string[] MethodNames = ["backprop", "ap", "mixing", "wt", "ap-example", "mixing-example", "wt-example"];
    private static readonly string[] DefaultMethods = ["backprop", "ap", "mixing", "wt"];

    private sealed class Options
    {
        public readonly DataOptions Data = new("fashion-mnist");
        public readonly DeviceOptions Device = new();
        public readonly Option<string> Mixer = Opt.String("mixer", DefaultMixer);
        public readonly Option<string> Methods = Opt.String("methods", string.Join(',', DefaultMethods));
        public readonly Option<string> AugmentModes = Opt.String("augment-modes", "off,on");
        public readonly Option<int> CropPadding = Opt.Int("crop-padding", 4, min: 0);
        public readonly Option<int> Epochs = Opt.Int("epochs", 2, min: 1, max: 100_000);
        public readonly Option<int> BatchSize = Opt.Int("batch-size", 64, min: 1);
        public readonly Option<float> Lr = Opt.Float("lr", 1e-3f, v => v > 0, "a number > 0");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0);
        public readonly Option<int> CosineEvery = Opt.Int("cosine-every", 50, min: 0);
        public readonly Option<int?> TrainExamples = Opt.OptionalInt("train-examples", 1);
        public readonly Option<string> Out = Opt.String("out", Path.Combine("runs", "mixer-table"));
        public readonly Option<bool> Quiet = Opt.Flag("quiet");
    }

    public static Command Create(CliContext context)
    {
        var o = new Options();
        var command = new Command("mixer-table", "Table 1 of 'How to Guess a Gradient' on a LocalMixer.");
        o.Data.AddTo(command);
        o.Device.AddTo(command);
        foreach (var option in new Option[] { o.Mixer, o.Methods, o.AugmentModes, o.CropPadding, o.Epochs, o.BatchSize, o.Lr, o.Seed, o.CosineEvery, o.TrainExamples, o.Out, o.Quiet })
            command.Add(option);
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    /// <summary>The guesser of a column: every activation guesser with local losses (Ren et al.'s JVP of the block's loss).</summary>
    public static Guesser Column(string method) => method switch
    {
        "backprop" => Guessers.Backprop,
        "ap" => Guessers.RenActivationPerturbation(),
        "ap-example" => (ActivationGuesser)Guessers.ActivationPerturbation() with { Loss = SiteLoss.Local },
        "mixing" => (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local, LocalBlocks = true },
        "mixing-example" => (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local },
        "wt" => (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local, LocalBlocks = true },
        "wt-example" => (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local },
        _ => throw new UsageException($"--methods: unknown method '{method}'; use {Opt.List(MethodNames)}."),
    };

    private static string[] List(ParseResult p, Option<string> option, string[] allowed)
    {
        var items = p.GetValue(option)!.Split(',', StringSplitOptions.TrimEntries);
        foreach (var item in items)
            if (!allowed.Contains(item)) throw new UsageException($"{option.Name}: '{item}' is not one of {Opt.List(allowed)}.");
        if (items.Distinct().Count() != items.Length) throw new UsageException($"{option.Name}: an item is listed twice; list each once.");
        return items;
    }

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        var console = context.Console;
        ulong seed = (ulong)p.GetValue(o.Seed);
        int epochs = p.GetValue(o.Epochs), batch = p.GetValue(o.BatchSize);
        var methods = List(p, o.Methods, MethodNames);
        var modes = List(p, o.AugmentModes, ["off", "on"]);
        var configuration = new RunConfiguration();
        var (train, test) = o.Data.Load(p, seed, configuration);
        if (p.GetValue(o.TrainExamples) is int limit && limit < train.Count)
            train = train.Subset([.. Enumerable.Range(0, limit)], $"{train.Name} (first {limit})");
        if (batch > train.Count) throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples).");
        var input = train.FeatureShape.Rank == 2 ? new Tensors.Shape(train.FeatureShape[0], train.FeatureShape[1], 1) : train.FeatureShape;
        var spec = ModelOptions.ParseMixer("localmixer:" + p.GetValue(o.Mixer), input, train.Classes);
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
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] mixer-table: {train.Name} ({train.Count} train / {test.Count} test), {ModelOptions.Describe(spec)} ({model.ParameterCount:N0} parameters), Adam {p.GetValue(o.Lr)}, {epochs} epoch(s), batch {batch}, seed {seed}, {backend.Name}");

        var rows = new List<(string Mode, string Method, EpochReport Last, TimeSpan Wall)>();
        foreach (var mode in modes)
            foreach (var method in methods)
            {
                var parameters = ParameterStore.Initialize(model, backend, seed); // the same initialisation for every cell
                var options = new TrainingOptions(batch, seed) { CosineEvery = method == "backprop" ? 0 : p.GetValue(o.CosineEvery), Augmentation = mode == "on" ? augmentation : null };
                var trainer = new Trainer(Column(method), Optimizers.Adam(p.GetValue(o.Lr)), parameters, train, test, options);
                var watch = System.Diagnostics.Stopwatch.StartNew();
                EpochReport last = null!;
                for (int e = 0; e < epochs; e++)
                {
                    last = trainer.RunEpoch(e);
                    if (!p.GetValue(o.Quiet))
                        context.Output.WriteLine($"augment {mode}, {method}: epoch {e + 1}/{epochs} train acc {TrainCommand.F(last.TrainAccuracy, "P2")}, test acc {TrainCommand.F(last.TestAccuracy, "P2")}, " +
                            $"cos {TrainCommand.F(last.GlobalCosine, "F3")}, {TrainCommand.F(last.WallTime.TotalSeconds, "F1")} s training");
                }
                rows.Add((mode, method, last, watch.Elapsed));
            }

        var csv = new StringBuilder("augment,method,epochs,train_loss,train_accuracy,test_loss,test_accuracy,cosine,seconds\n");
        foreach (var (mode, method, r, wall) in rows)
            csv.Append(CultureInfo.InvariantCulture, $"{mode},{method},{epochs},{r.TrainLoss:R},{r.TrainAccuracy:R},{r.TestLoss:R},{r.TestAccuracy:R},{(double.IsNaN(r.GlobalCosine) ? "" : r.GlobalCosine.ToString("R", CultureInfo.InvariantCulture))},{wall.TotalSeconds:F1}\n");
        File.WriteAllText(prefix + ".csv", csv.ToString());
        var header = new Dictionary<string, string> { ["backprop"] = "Backprop", ["ap"] = "Ren et al. (AP)", ["ap-example"] = "AP, one JVP per example", ["mixing"] = "Mixing", ["wt"] = "Wᵀ",
            ["mixing-example"] = "Mixing, one JVP per example", ["wt-example"] = "Wᵀ, one JVP per example" };
        var md = new StringBuilder();
        md.Append(CultureInfo.InvariantCulture, $"Test accuracy (%), {train.Name}, LocalMixer {spec}, Adam {p.GetValue(o.Lr)}, {epochs} epoch(s), batch {batch}, seed {seed}\n\n");
        md.Append("| augmentation | ").Append(string.Join(" | ", methods.Select(m => header[m]))).Append(" |\n|---|").Append(string.Concat(methods.Select(_ => "---:|"))).Append('\n');
        foreach (var mode in modes)
            md.Append(mode == "on" ? "| crop + flip | " : "| none | ")
              .Append(string.Join(" | ", methods.Select(m => (100 * rows.Single(r => r.Mode == mode && r.Method == m).Last.TestAccuracy).ToString("F1", CultureInfo.InvariantCulture))))
              .Append(" |\n");
        md.Append(CultureInfo.InvariantCulture, $"\nWall time per run (s): {string.Join(", ", rows.Select(r => $"{r.Mode}/{r.Method} {r.Wall.TotalSeconds:F0}"))}; total {rows.Sum(r => r.Wall.TotalSeconds):F0} s.\n");
        File.WriteAllText(prefix + ".md", md.ToString());
        context.Output.Write(md.ToString());
        console.MarkupLineInterpolated($"written {prefix}.csv and {prefix}.md");
        return Cli.Success;
    }
}
