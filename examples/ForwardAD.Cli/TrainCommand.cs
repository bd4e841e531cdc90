using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Optim;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class TrainCommand
{
    public const string Help = """
        forwardad train [options]      Train an MLP and report train/test accuracy per epoch.

        With no options it trains a 3-layer MLP (hidden 128,128) with backprop and SGD on the
        embedded digits data set (1,797 8×8 images, no download) for 20 epochs.

        Data
          --data digits|PATH        'digits' (embedded, default) or a CSV file (.csv or .csv.gz): one
                                    example per row, features then an integer label in the last column
          --test-fraction F         held-out fraction, shuffled by the seed (default 0.2)
        Model
          --hidden W1,W2,...        hidden layer widths (default 128,128; 'none' for a linear model)
          --activation NAME         relu (default), tanh, gelu, identity
        Training
          --epochs N                (default 20)
          --batch-size B            (default 32)
          --optimizer NAME          sgd (default), momentum, nesterov, adam, adamw, stable-adamw
          --lr RATE                 learning rate (default 0.1 for sgd/momentum, 0.001 for the Adam family)
          --weight-decay L          decoupled weight decay for adamw/stable-adamw (default 0.01)
          --seed S                  seed of initialisation, split, shuffling and noise (default 1)
        Output
          --metrics PATH            write per-epoch metrics as CSV
          --quiet                   no live progress, only the final table
        """;

    public static int Run(string[] args)
    {
        var options = new Options(args, new HashSet<string> { "quiet" });
        var dataName = options.String("data", "digits");
        double testFraction = options.Float("test-fraction", 0.2f);
        var hidden = options.IntList("hidden", "128,128");
        var activation = ParseActivation(options.String("activation", "relu"));
        int epochs = options.Int("epochs", 20, min: 1);
        int batch = options.Int("batch-size", 32, min: 1);
        var optimizerName = options.String("optimizer", "sgd");
        bool adamFamily = optimizerName.Contains("adam", StringComparison.Ordinal);
        float rate = options.Float("lr", adamFamily ? 1e-3f : 0.1f);
        float decay = options.Float("weight-decay", 0.01f);
        ulong seed = (ulong)options.Int("seed", 1, min: 0);
        var metricsPath = options.OptionalString("metrics");
        bool quiet = options.Flag("quiet");
        options.RejectUnknown();

        var data = dataName == "digits" ? Digits.Load() : CsvDataset.Load(dataName);
        var (train, test) = data.Split(testFraction, seed);
        var rule = optimizerName switch
        {
            "sgd" => Optimizers.Sgd(rate),
            "momentum" => Optimizers.Momentum(rate),
            "nesterov" => Optimizers.Momentum(rate, nesterov: true),
            "adam" => Optimizers.Adam(rate),
            "adamw" => Optimizers.AdamW(rate, decay),
            "stable-adamw" => Optimizers.StableAdamW(rate, decay),
            _ => throw new UsageException($"Unknown optimizer '{optimizerName}'. Use sgd, momentum, nesterov, adam, adamw or stable-adamw."),
        };
        var model = new MlpSpec(data.FeatureSize, [.. hidden], data.Classes, activation).Build();
        var backend = new CpuBackend();
        var parameters = ParameterStore.Initialize(model, backend, seed);
        var trainer = new Trainer(new BackpropEstimator(parameters, batch), rule, train, test, seed);

        AnsiConsole.MarkupLineInterpolated($"[bold]ForwardAD[/] train: {data.Name} ({train.Count} train / {test.Count} test), MLP {data.FeatureSize}→{string.Join("→", hidden)}→{data.Classes} {activation.Name}, backprop, {optimizerName} lr {rate}, batch {batch}, seed {seed}, {backend.Name}");
        var reports = new List<EpochReport>();
        if (quiet || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            for (int e = 0; e < epochs; e++)
            {
                reports.Add(trainer.RunEpoch(e));
                if (!quiet) PrintEpoch(reports[^1], epochs);
            }
        }
        else
        {
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(context =>
                {
                    var task = context.AddTask("epoch 1", maxValue: epochs * trainer.StepsPerEpoch);
                    var observer = new ProgressObserver(task, epochs);
                    for (int e = 0; e < epochs; e++) reports.Add(trainer.RunEpoch(e, observer));
                });
        }

        var table = new Table().AddColumns("epoch", "train loss", "train acc", "test loss", "test acc", "examples/s");
        foreach (var r in reports.Where((r, i) => i == 0 || i == reports.Count - 1 || (i + 1) % Math.Max(1, epochs / 5) == 0))
            table.AddRow(Cells(r));
        AnsiConsole.Write(table);
        var last = reports[^1];
        AnsiConsole.MarkupLineInterpolated($"final: train accuracy [green]{last.TrainAccuracy:P2}[/], test accuracy [green]{last.TestAccuracy:P2}[/]");
        if (metricsPath is not null) WriteMetrics(metricsPath, reports);
        return 0;
    }

    private static ElementwiseFunction ParseActivation(string name)
    {
        try { return ElementwiseFunction.Parse(name); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    private static string[] Cells(EpochReport r) =>
    [
        (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), r.TrainLoss.ToString("F4", CultureInfo.InvariantCulture),
        r.TrainAccuracy.ToString("P2", CultureInfo.InvariantCulture), r.TestLoss.ToString("F4", CultureInfo.InvariantCulture),
        r.TestAccuracy.ToString("P2", CultureInfo.InvariantCulture), r.ExamplesPerSecond.ToString("F0", CultureInfo.InvariantCulture),
    ];

    private static void PrintEpoch(EpochReport r, int epochs) =>
        Console.WriteLine($"epoch {r.Epoch + 1}/{epochs}: train loss {r.TrainLoss:F4} acc {r.TrainAccuracy:P2}, test loss {r.TestLoss:F4} acc {r.TestAccuracy:P2}, {r.ExamplesPerSecond:F0} examples/s");

    /// <summary>Writes the CSV next to its destination first, then renames it into place: a failed run never leaves half a file.</summary>
    private static void WriteMetrics(string path, IReadOnlyList<EpochReport> reports)
    {
        var temporary = path + ".tmp";
        using (var writer = new StreamWriter(temporary))
        {
            writer.WriteLine("epoch,train_loss,train_accuracy,test_loss,test_accuracy,examples_per_second,wall_seconds");
            foreach (var r in reports)
                writer.WriteLine(string.Join(',', (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), F(r.TrainLoss), F(r.TrainAccuracy), F(r.TestLoss), F(r.TestAccuracy), F(r.ExamplesPerSecond), F(r.WallTime.TotalSeconds)));
        }
        File.Move(temporary, path, overwrite: true);
        static string F(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
    }

    private sealed class ProgressObserver(ProgressTask task, int epochs) : ITrainingObserver
    {
        private double _lastTestAccuracy = double.NaN;

        public void StepCompleted(int epoch, int step, int stepsPerEpoch, double batchLoss)
        {
            task.Increment(1);
            task.Description = $"epoch {epoch + 1}/{epochs} loss {batchLoss:F3}" + (double.IsNaN(_lastTestAccuracy) ? "" : $" test acc {_lastTestAccuracy:P1}");
        }

        public void EpochCompleted(EpochReport report) => _lastTestAccuracy = report.TestAccuracy;
    }
}
