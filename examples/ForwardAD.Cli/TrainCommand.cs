using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class TrainCommand
{
    public static readonly string Help = $"""
        forwardad train [options]      Train an MLP with a gradient guesser and report accuracies per epoch.

        With no options it trains a 3×128 ReLU MLP (hidden 128,128) with backprop and SGD on the embedded
        digits data set (1,797 8×8 images, no download) for 20 epochs, in a few seconds.

        {RunSpec.DataHelp}
        {RunSpec.ModelHelp}
        {RunSpec.GuesserHelp}
        {RunSpec.RuleHelp}
        {RunSpec.DeviceHelp}
        Training
          --epochs N                (default 20)
          --batch-size B            (default 32)
          --seed S                  seed of initialisation, split, shuffling and every guess (default 1)
          --cosine-every N          measure cos(estimate, backprop gradient) every N steps (default 1; 0 = never)
        Output and checkpoints
          --metrics PATH            per-epoch CSV (default runs/train-<guesser>-seed<S>.csv)
          --checkpoint PATH         write a safetensors checkpoint after every epoch (atomically)
          --resume PATH             continue a run from its checkpoint, bit for bit (same options)
          --quiet                   no live progress, only the final table
        """;

    public static int Run(string[] args)
    {
        var options = new Options(args, new HashSet<string> { "quiet", "tf32" });
        ulong seed = (ulong)options.Int("seed", 1, min: 0);
        int epochs = options.Int("epochs", 20, min: 1);
        int batch = options.Int("batch-size", 32, min: 1);
        int cosineEvery = options.Int("cosine-every", 1, min: 0);
        var (train, test, dataDescription) = RunSpec.LoadData(options, seed);
        var spec = RunSpec.Model(options, train);
        var guesser = RunSpec.Guesser(options);
        var (rule, ruleDescription) = RunSpec.Rule(options, train.Count / Math.Max(1, batch), epochs);
        var metricsPath = options.String("metrics", Path.Combine("runs", $"train-{guesser.Name.Replace(' ', '-').Replace("(", "").Replace(")", "")}-seed{seed}.csv"));
        var checkpoint = options.OptionalString("checkpoint");
        var resume = options.OptionalString("resume");
        bool quiet = options.Flag("quiet");
        var backend = RunSpec.Device(options);
        options.RejectUnknown();

        var model = spec.Build();
        var parameters = ParameterStore.Initialize(model, backend, seed);
        var trainer = new Trainer(guesser, rule, parameters, train, test, new TrainingOptions(batch, seed) { CosineEvery = cosineEvery });
        var description = new Dictionary<string, string>
        {
            ["model"] = RunSpec.Describe(spec),
            ["guesser"] = guesser.Name,
            ["rule"] = ruleDescription,
            ["data"] = dataDescription,
        };
        var reports = resume is null ? new List<EpochReport>() : ReadPreviousMetrics(metricsPath);
        if (resume is not null)
        {
            trainer.Resume(resume, description);
            reports = reports.Where(r => r.Epoch < trainer.NextEpoch).ToList();
        }
        checkpoint ??= resume;

        AnsiConsole.MarkupLineInterpolated($"[bold]ForwardAD[/] train: {train.Name} ({train.Count} train / {test.Count} test), {description["model"]}, {guesser.Name}, {ruleDescription}, batch {batch}, seed {seed}, {backend.Name}");
        if (resume is not null) AnsiConsole.MarkupLineInterpolated($"resumed from {resume} at epoch {trainer.NextEpoch + 1}, step {trainer.Step}");
        void EpochDone(EpochReport report)
        {
            reports.Add(report);
            if (checkpoint is not null) trainer.SaveCheckpoint(checkpoint, description);
            WriteMetrics(metricsPath, reports);
        }
        if (quiet || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            for (int e = trainer.NextEpoch; e < epochs; e++)
            {
                EpochDone(trainer.RunEpoch(e));
                if (!quiet) Console.WriteLine(Line(reports[^1], epochs));
            }
        }
        else
        {
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask("starting", maxValue: (epochs - trainer.NextEpoch) * trainer.StepsPerEpoch);
                    var observer = new ProgressObserver(task, epochs, batch);
                    for (int e = trainer.NextEpoch; e < epochs; e++) EpochDone(trainer.RunEpoch(e, observer));
                });
        }
        if (reports.Count == 0)
        {
            AnsiConsole.MarkupLine("nothing to do: the checkpoint has already completed every epoch.");
            return 0;
        }
        var table = new Table().AddColumns("epoch", "train loss", "train acc", "test loss", "test acc", "cos(est, ∇L)", "B·J align", "examples/s");
        foreach (var r in reports.Where((r, i) => i == 0 || i == reports.Count - 1 || (i + 1) % Math.Max(1, epochs / 5) == 0))
            table.AddRow(Cells(r));
        AnsiConsole.Write(table);
        var last = reports[^1];
        AnsiConsole.MarkupLineInterpolated($"final: train accuracy [green]{last.TrainAccuracy:P2}[/], test accuracy [green]{last.TestAccuracy:P2}[/]; metrics in {metricsPath}");
        return 0;
    }

    private static string F(double v, string format = "F4") => double.IsNaN(v) ? "–" : v.ToString(format, CultureInfo.InvariantCulture);

    private static string[] Cells(EpochReport r) =>
    [
        (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), F(r.TrainLoss), F(r.TrainAccuracy, "P2"), F(r.TestLoss),
        F(r.TestAccuracy, "P2"), F(r.GlobalCosine, "F3"), r.FeedbackAlignment.IsEmpty ? "–" : F(r.FeedbackAlignment.Average(), "F3"), F(r.ExamplesPerSecond, "F0"),
    ];

    private static string Line(EpochReport r, int epochs) =>
        $"epoch {r.Epoch + 1}/{epochs}: train loss {F(r.TrainLoss)} acc {F(r.TrainAccuracy, "P2")}, test loss {F(r.TestLoss)} acc {F(r.TestAccuracy, "P2")}, " +
        $"cos {F(r.GlobalCosine, "F3")} (sites {string.Join(" ", r.SiteCosines.Select(c => F(c, "F3")))})" +
        (r.FeedbackAlignment.IsEmpty ? "" : $", B·J alignment {string.Join(" ", r.FeedbackAlignment.Select(c => F(c, "F3")))}") + $", {F(r.ExamplesPerSecond, "F0")} examples/s";

    private static readonly string[] FixedColumns = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "cosine_global"];

    /// <summary>Writes the whole CSV to a temporary file, then renames it into place: a failed run never leaves half a file.</summary>
    private static void WriteMetrics(string path, IReadOnlyList<EpochReport> reports)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        var temporary = path + ".tmp";
        using (var writer = new StreamWriter(temporary))
        {
            int layers = reports[0].SiteCosines.Length, aligned = reports.Max(r => r.FeedbackAlignment.Length);
            writer.WriteLine(string.Join(',', FixedColumns.Concat(Enumerable.Range(1, layers).Select(l => $"cosine_layer{l}"))
                .Concat(Enumerable.Range(1, aligned).Select(l => $"alignment_layer{l}")).Concat(["examples_per_second", "wall_seconds"])));
            foreach (var r in reports)
                writer.WriteLine(string.Join(',', new[] { (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), G(r.TrainLoss), G(r.TrainAccuracy), G(r.TestLoss), G(r.TestAccuracy), G(r.GlobalCosine) }
                    .Concat(r.SiteCosines.Select(G)).Concat(Enumerable.Range(0, aligned).Select(l => l < r.FeedbackAlignment.Length ? G(r.FeedbackAlignment[l]) : "NaN"))
                    .Concat([G(r.ExamplesPerSecond), G(r.WallTime.TotalSeconds)])));
        }
        File.Move(temporary, path, overwrite: true);
        static string G(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
    }

    /// <summary>On resume, the epochs already in the metrics CSV are kept so that the file covers the whole run.</summary>
    private static List<EpochReport> ReadPreviousMetrics(string path)
    {
        if (!File.Exists(path)) return [];
        var lines = File.ReadAllLines(path);
        var header = lines[0].Split(',');
        int layers = header.Count(h => h.StartsWith("cosine_layer", StringComparison.Ordinal));
        int aligned = header.Count(h => h.StartsWith("alignment_layer", StringComparison.Ordinal));
        var result = new List<EpochReport>();
        foreach (var line in lines.Skip(1))
        {
            var v = line.Split(',').Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            result.Add(new EpochReport((int)v[0] - 1, v[1], v[2], v[3], v[4], [.. v.Skip(6).Take(layers)], v[5], v[^2], TimeSpan.FromSeconds(v[^1]))
            {
                FeedbackAlignment = [.. v.Skip(6 + layers).Take(aligned)],
            });
        }
        return result;
    }

    private sealed class ProgressObserver(ProgressTask task, int epochs, int batch) : ITrainingObserver
    {
        private string _last = "";
        private readonly System.Diagnostics.Stopwatch _watch = System.Diagnostics.Stopwatch.StartNew();
        private long _examples;

        public void StepCompleted(int epoch, int step, int stepsPerEpoch, double batchLoss)
        {
            task.Increment(1);
            _examples += batch;
            task.Description = $"epoch {epoch + 1}/{epochs} loss {batchLoss:F3} {_examples / _watch.Elapsed.TotalSeconds:F0} ex/s{_last}";
        }

        public void EpochCompleted(EpochReport report) =>
            _last = $" | last epoch: train acc {report.TrainAccuracy:P1} test acc {report.TestAccuracy:P1} cos {F(report.GlobalCosine, "F3")}" +
                (report.FeedbackAlignment.IsEmpty ? "" : $" align {report.FeedbackAlignment.Average():F3}");
    }
}
