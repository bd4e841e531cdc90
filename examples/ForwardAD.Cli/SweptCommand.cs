using System.Collections.Immutable;
using System.CommandLine;

namespace ForwardAD.Cli;

/// <summary>
/// A metric of a swept run, one value per evaluation, named by its column in the sweep's tables (and, normally, in the
/// run's own metrics CSV). Lower is better for a loss or bits per character, higher for an accuracy: what the selection
/// of a learning rate and the best evaluation of a run go by.
/// </summary>
internal sealed record SweepMetric(string Name, string Description, bool HigherIsBetter, bool Percent)
{
    public bool Better(double candidate, double incumbent) => HigherIsBetter ? candidate > incumbent : candidate < incumbent;

    /// <summary>How the Markdown prints it: accuracies in percent with 2 decimals, losses and bits per character with 4.</summary>
    public string Format => Percent ? "F2" : "F4";
}

/// <summary>A finished run's metrics per evaluation (an epoch of train, an evaluation step of lm), by metric name, against
/// the progress column; a metric the run did not report reads as NaN.</summary>
internal sealed record RunCurves(double[] Progress, ImmutableDictionary<string, double[]> Metrics)
{
    public double[] this[SweepMetric metric] => Metrics.TryGetValue(metric.Name, out var values) ? values : [.. Progress.Select(_ => double.NaN)];

    /// <summary>Evaluations (rows of the metrics CSV).</summary>
    public int Points => Progress.Length;
}

/// <summary>
/// What a sweep runs: a command of this tool (train, lm), how its command line is parsed and checked (its own parser,
/// so every run's options are validated before the first process starts), how a finished run's metrics CSV is read,
/// which validation metrics a tuned axis may be chosen by (the first is the default), and what the tables and the figure
/// report. Two instances, <see cref="Train"/> and <see cref="LanguageModel"/>; the sweep itself knows neither.
/// </summary>
internal sealed record SweptCommand(
    string Name,
    Func<CliContext, Command> CreateParser,
    string Progress,
    Func<CsvTable, RunCurves> Read,
    ImmutableArray<SweepMetric> Selections,
    SweepMetric ValidationHeadline,
    SweepMetric TestHeadline,
    ImmutableArray<SweepMetric> Reported,
    ImmutableArray<SweepMetric> RunColumns,
    ImmutableArray<SweepMetric> SummaryColumns,
    string Units,
    string Example)
{
    public SweepMetric DefaultSelection => Selections[0];

    /// <summary>A run's metrics CSV as curves; throws <see cref="InvalidDataException"/> naming the file when it is not one
    /// of this command's.</summary>
    public RunCurves ReadCurves(string path) => Read(CsvTable.Read(path));

    /// <summary>train: one row per epoch; accuracies and cross-entropy losses.</summary>
    public static SweptCommand Train { get; } = CreateTrain();

    /// <summary>lm: one row per evaluation step; bits per character (lower is better) and next-byte accuracy.</summary>
    public static SweptCommand LanguageModel { get; } = CreateLanguageModel();

    /// <summary>The commands a sweep can run (declared after them: initialised in this order).</summary>
    public static ImmutableArray<SweptCommand> All { get; } = [Train, LanguageModel];

    /// <summary>The command a base command line runs: its first word, or train when it starts with an option (as on the
    /// command line itself) or is empty.</summary>
    public static SweptCommand For(IReadOnlyList<string> commandLine)
    {
        if (commandLine.Count == 0 || commandLine[0].StartsWith("--", StringComparison.Ordinal)) return Train;
        return All.FirstOrDefault(c => c.Name == commandLine[0])
            ?? throw new UsageException($"sweep runs {Opt.List([.. All.Select(c => $"'{c.Name}'")])}; the command after '--' is '{commandLine[0]}'. " +
                $"Give one of them and its options, e.g. {Train.Example} or {LanguageModel.Example}.");
    }

    private static SweptCommand CreateTrain()
    {
        var trainAccuracy = new SweepMetric("train_accuracy", "train accuracy", true, true);
        var testLoss = new SweepMetric("test_loss", "test loss", false, false);
        var testAccuracy = new SweepMetric("test_accuracy", "test accuracy", true, true);
        var validationLoss = new SweepMetric("validation_loss", "validation loss", false, false);
        var validationAccuracy = new SweepMetric("validation_accuracy", "validation accuracy", true, true);
        return new SweptCommand("train", TrainCommand.Create, "epoch",
            table => Columns(table, "epoch", [.. new[] { trainAccuracy, testLoss, testAccuracy }.Select(m => (m, m.Name))],
                [.. new[] { validationLoss, validationAccuracy }.Select(m => (m, m.Name))]),
            [validationAccuracy, validationLoss], validationAccuracy, testAccuracy, [testAccuracy],
            [trainAccuracy, testLoss, testAccuracy, validationLoss, validationAccuracy],
            [testAccuracy, validationAccuracy, validationLoss, testLoss],
            "Accuracies in %, final epoch",
            "-- train --data digits --validation-fraction 0.1");
    }

    private static SweptCommand CreateLanguageModel()
    {
        var trainBits = new SweepMetric("train_bits_per_char", "train bits/char", false, false);
        var testBits = new SweepMetric("test_bits_per_char", "test bits/char", false, false);
        var testAccuracy = new SweepMetric("test_accuracy", "test accuracy", true, true);
        var validationBits = new SweepMetric("validation_bits_per_char", "validation bits/char", false, false);
        var validationAccuracy = new SweepMetric("validation_accuracy", "validation accuracy", true, true);
        return new SweptCommand("lm", LanguageModelCommands.CreateLm, "step",
            table => table.Header.Contains(testBits.Name)
                ? Columns(table, "step", [.. new[] { trainBits, testBits, testAccuracy, validationBits, validationAccuracy }.Select(m => (m, m.Name))], [])
                // Without --validation-fraction lm evaluates on the held-out split alone and calls it validation: here it
                // is the test split (nothing may be chosen on it), and there is no validation split.
                : Columns(table, "step", [(trainBits, trainBits.Name), (testBits, validationBits.Name), (testAccuracy, validationAccuracy.Name)], []),
            [validationBits, validationAccuracy], validationBits, testBits, [testBits, testAccuracy],
            [trainBits, testBits, testAccuracy, validationBits, validationAccuracy],
            [testBits, testAccuracy, validationBits, validationAccuracy],
            "Bits per character (per byte) and next-byte accuracies in %, at the final step",
            "-- lm --text FILE --validation-fraction 0.1");
    }

    /// <summary>The progress column and the metrics read from their columns: <paramref name="required"/> must be there,
    /// <paramref name="optional"/> are left out when absent (then NaN).</summary>
    private static RunCurves Columns(CsvTable table, string progress, (SweepMetric Metric, string Column)[] required, (SweepMetric Metric, string Column)[] optional) =>
        new(table.Numbers(progress), required.Concat(optional.Where(o => table.Header.Contains(o.Column)))
            .ToImmutableDictionary(m => m.Metric.Name, m => table.Numbers(m.Column)));
}
