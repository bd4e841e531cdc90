using System.CommandLine;
using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Optim;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>
/// `forwardad compare`, the main job and what `forwardad` alone runs: the same model, optimizer, seed, batches and
/// initial weights trained with backprop and with four methods that do without it, taking turns epoch by epoch (one at
/// a time, so that the time per step of each is its own), then one table and one figure of the curves.
/// </summary>
internal static class CompareCommand
{
    public const string Header = "method,epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,seconds_per_step,examples_per_second,wall_seconds";

    /// <summary>The methods, in the table's order: the reference, two forward-gradient guessers, feedback alignment and its
    /// forward-gradient-aligned version.</summary>
    private static readonly string[] Methods = ["backprop", "activation-perturbation", "wt", "dfa", "grape"];

    private const int DefaultEpochs = 50, DefaultBatch = 32;

    private sealed class Options
    {
        public readonly DataOptions Data = new();
        public readonly ModelOptions Model = new();
        public readonly GuesserOptions Guesser = new(defaultMode: "per-layer");
        public readonly Option<int> Epochs = Opt.Int("epochs", DefaultEpochs, min: 1, max: 1_000_000).Describe("N", "passes over the training set");
        public readonly Option<int> BatchSize = Opt.Int("batch-size", DefaultBatch, min: 1).Describe("B", "examples per step");
        public readonly Option<float> Lr = Opt.Float("lr", 1e-3f, v => v > 0, "a number > 0 (a negative rate would climb the loss)").Describe("RATE", "AdamW's learning rate");
        public readonly Option<float> WeightDecay = Opt.Float("weight-decay", 0.01f, v => v >= 0, "a number ≥ 0").Describe("L", "AdamW's decoupled weight decay");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "seed of initialisation, split, shuffling and every guess");
        public readonly Option<string> Out = Opt.String("out", Path.Combine("runs", "compare")).Describe("DIR", "folder of compare.csv, compare.png and compare.svg");
        public readonly Option<bool> NoPlot = Opt.Flag("no-plot").Describe("", "write the CSV only");
        public readonly Option<bool> Quiet = Opt.Flag("quiet").Describe("", "no progress, only the table");
    }

    public static DocumentedCommand Create(CliContext context)
    {
        var o = new Options();
        var command = new DocumentedCommand("compare", "Backprop against forward gradients, side by side (what `forwardad` alone runs).", "forwardad compare [options]")
        {
            Summary =
                "Trains the same model from the same initial weights, with the same optimizer (AdamW), seed and batches, with backprop, " +
                "activation perturbation, Wᵀ, DFA and GrAPE, taking turns epoch by epoch; prints one table (test accuracy, mean cosine " +
                "of the update to the backprop gradient, time per step) and writes the curves per epoch as a CSV and a figure (test " +
                "accuracy and cosine per epoch, PNG and SVG) into a folder. With no options: the 3×128 MLP on the embedded digits, " +
                $"{DefaultEpochs} epochs, batch {DefaultBatch}, about a minute on 2 cores.\n" +
                "The cosine is measured at every step against a backprop pass on the same batch (not counted in the time per step, " +
                "which is the method's own: batch, estimate, update; the median over the epochs).",
        };
        o.Data.AddTo(command);
        o.Model.AddTo(command);
        o.Guesser.AddTo(command, fixedMethods: true);
        command.Section("Training", [o.Epochs, o.BatchSize, o.Lr, o.WeightDecay, o.Seed]);
        command.Section("Output", [o.Out, o.NoPlot, o.Quiet]);
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    /// <summary>One method's run: its name as the guesser gives it, and its report per epoch.</summary>
    private sealed record MethodRun(string Name, List<EpochReport> Reports);

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        var console = context.Console;
        ulong seed = (ulong)p.GetValue(o.Seed);
        int epochs = p.GetValue(o.Epochs), batch = p.GetValue(o.BatchSize);
        float lr = p.GetValue(o.Lr), weightDecay = p.GetValue(o.WeightDecay);
        o.Guesser.RejectUnused(p, Methods);
        var configuration = new RunConfiguration();
        TrainCommand.RequireBatchForRanks(context.Communicator, batch);
        var (train, test) = o.Data.Load(p, seed, configuration);
        if (batch > train.Count)
            throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples): no full batch to train on.");
        var model = o.Model.Build(p, train, configuration);
        string[] siteNames = [.. model.Sites.Select(site => site.Name)]; // the per-site columns' and the table's names
        var guessers = Methods.Select(name => o.Guesser.Build(p, name, seed, configuration: null)).ToList();
        var rule = Optimizers.AdamW(Schedule.Constant(lr), weightDecay);
        var folder = p.GetValue(o.Out)!;
        if (File.Exists(folder)) throw new IOException($"--out {folder}: is a file; give a folder for compare.csv and its plot.");
        var csv = Path.Combine(folder, "compare.csv");
        using var outputs = context.WritesFiles ? OutputLock.Acquire($"compare (out {folder})", ("--out", folder)) : null;
        bool quiet = p.GetValue(o.Quiet), plot = !p.GetValue(o.NoPlot);

        var methods = string.Join(", ", guessers.Select(g => g.Name));
        var rate = string.Create(CultureInfo.InvariantCulture, $"adamw lr {lr} wd {weightDecay}");
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] compare: {train.Name} ({train.Count} train / {test.Count} test), {configuration["model"]}, {rate}, batch {batch}, {epochs} epochs, seed {seed}; {methods}");
        // Every method starts from the same weights (same seed) and sees the same batches (the trainer's permutation
        // depends on the seed and the epoch only); the cosine is measured at every step. The methods take turns epoch by
        // epoch, so that a change in the machine's load (these 2 cores are shared) weighs on all of them alike.
        var communicator = context.Communicator;
        if (communicator.Size > 1) console.MarkupLineInterpolated($"data parallel: {TrainCommand.DataParallelBanner(communicator, batch)}");
        foreach (var note in guessers.SelectMany(g => TrainCommand.DataParallelNotes(communicator, model, g)).Distinct()) console.MarkupLineInterpolated($"{note}");
        var trainers = guessers.Select(g => new Trainer(g, rule, ParameterStore.Initialize(model, new CpuBackend(), seed), train, test,
            new TrainingOptions(batch, seed) { CosineEvery = 1, Communicator = communicator })).ToList();
        foreach (var trainer in trainers) trainer.RequireSameRun(configuration.ToDictionary());
        var runs = guessers.Select(g => new MethodRun(g.Name, [])).ToList();
        if (context.Interactive && !quiet)
        {
            console.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(progress =>
                {
                    var observers = trainers.Select((t, m) => new TrainCommand.ProgressObserver(
                        progress.AddTask(runs[m].Name, maxValue: epochs * t.StepsPerEpoch), epochs, batch, runs[m].Name)).ToList();
                    for (int e = 0; e < epochs; e++)
                    {
                        for (int m = 0; m < trainers.Count; m++) runs[m].Reports.Add(trainers[m].RunEpoch(e, observers[m]));
                        if (context.WritesFiles) WriteCsv(csv, runs, siteNames);
                    }
                });
        }
        else
        {
            for (int e = 0; e < epochs; e++)
            {
                for (int m = 0; m < trainers.Count; m++) runs[m].Reports.Add(trainers[m].RunEpoch(e));
                if (context.WritesFiles) WriteCsv(csv, runs, siteNames);
                if (!quiet && (e == 0 || e == epochs - 1 || (e + 1) % 10 == 0))
                    context.Output.WriteLine($"epoch {e + 1}/{epochs}: test accuracy " + string.Join(", ", runs.Select(r => $"{r.Name} {TrainCommand.F(r.Reports[^1].TestAccuracy, "P1")}")));
            }
        }

        double reference = StepMilliseconds(runs[0]);
        // Sized to the console (ConsoleTable): on a narrow one the per-site cosines go first, then the step times.
        List<TableColumnSpec> columns = [new("method"), new("test accuracy"), new("mean cos global"),
            new($"mean cos per site ({string.Join(" / ", siteNames)})", DropOrder: 1), new("time per step", DropOrder: 2), new("× backprop", DropOrder: 3)];
        var rows = runs.Select(run => new[] { run.Name, TrainCommand.F(run.Reports[^1].TestAccuracy, "P2"), TrainCommand.F(MeanCosine(run), "F3"),
            string.Join(" / ", Enumerable.Range(0, siteNames.Length).Select(i => TrainCommand.F(MeanSiteCosine(run, i), "F3"))),
            string.Create(CultureInfo.InvariantCulture, $"{StepMilliseconds(run):F2} ms"), string.Create(CultureInfo.InvariantCulture, $"{StepMilliseconds(run) / reference:F2}") }).ToList();
        var (table, dropped) = ConsoleTable.Build(columns, rows, console.Profile.Width);
        console.Write(table);
        if (ConsoleTable.DroppedNote(dropped, csv) is { } narrow) console.WriteLine(narrow);
        console.MarkupLineInterpolated($"test accuracy after epoch {epochs}; cosine to the backprop gradient: mean over every step of the run, global (all parameters as one vector) and per site (each layer's own); time per step: median over the epochs of the mean step (batch, estimate, update), without the cosine measurement.");
        if (plot && context.WritesFiles)
        {
            var (png, svg, _) = MetricsPlots.Draw(csv);
            console.MarkupLineInterpolated($"curves in {csv}; plot in {png} and {svg}");
        }
        else console.MarkupLineInterpolated($"curves in {csv}");
        return Cli.Success;
    }

    /// <summary>The mean cosine over the run: every epoch has as many steps, each measured, so the mean of the epoch means.</summary>
    private static double MeanCosine(MethodRun run) => run.Reports.Average(r => r.GlobalCosine);

    /// <summary>The mean over the run of site <paramref name="site"/>'s cosine (NaN when the run measured none there).</summary>
    private static double MeanSiteCosine(MethodRun run, int site) => run.Reports.Average(r => site < r.SiteCosines.Length ? r.SiteCosines[site] : double.NaN);

    /// <summary>The median over the epochs of the mean step time: an epoch slowed by another process on the shared cores
    /// does not move it.</summary>
    private static double StepMilliseconds(MethodRun run)
    {
        var times = run.Reports.Select(r => r.StepTime.TotalMilliseconds).Order().ToList();
        return times.Count % 2 == 1 ? times[times.Count / 2] : (times[times.Count / 2 - 1] + times[times.Count / 2]) / 2;
    }

    /// <summary>One row per method and epoch: <see cref="Header"/>'s columns, then the epoch's mean cosine at every site,
    /// cosine_&lt;site&gt; by the sites' layer names.</summary>
    private static void WriteCsv(string path, List<MethodRun> runs, string[] sites)
    {
        static string G(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
        AtomicFile.WriteAllLines(path, runs.SelectMany(run => run.Reports.Select(r => string.Join(',', [Quote(run.Name), (r.Epoch + 1).ToString(CultureInfo.InvariantCulture),
            G(r.TrainLoss), G(r.TrainAccuracy), G(r.TestLoss), G(r.TestAccuracy), G(r.GlobalCosine), G(r.StepTime.TotalSeconds), G(r.ExamplesPerSecond), G(r.WallTime.TotalSeconds),
            .. Enumerable.Range(0, sites.Length).Select(i => i < r.SiteCosines.Length ? G(r.SiteCosines[i]) : "NaN")])))
            .Prepend(Header + string.Concat(sites.Select(site => $",cosine_{site.Replace(',', '_')}"))));
    }

    private static string Quote(string text) => $"\"{text.Replace("\"", "\"\"", StringComparison.Ordinal)}\"";
}
