using System.Globalization;
using ForwardAD.Training;

namespace ForwardAD.Cli;

/// <summary>
/// The per-epoch metrics CSV of train. Every row ends with the run's configuration hash (column 'run'), so
/// that a resumed run can tell its own rows from another run's: the default path already differs per
/// configuration, but --metrics can point anywhere. Runs with a validation set (--validation-fraction) have two more
/// columns, validation_loss and validation_accuracy, after the per-site ones; files without them are read as before.
/// </summary>
internal static class MetricsFile
{
    private static readonly string[] FixedColumns = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "cosine_global"];
    private static readonly string[] TrailingColumns = ["examples_per_second", "exchanged_bytes_per_step", "wall_seconds", "run"];
    /// <summary>The trailing columns before data-parallel runs reported their exchange (read as 0 bytes).</summary>
    private static readonly string[] EarlierTrailingColumns = ["examples_per_second", "wall_seconds", "run"];
    private static readonly string[] ValidationColumns = ["validation_loss", "validation_accuracy"];

    /// <summary>Writes the rows; the per-site columns are named by the sites' layers, cosine_&lt;site&gt; for every site and
    /// alignment_&lt;site&gt; for the feedback-aligned ones (<paramref name="sites"/>, <paramref name="alignedSites"/>, in model
    /// order; an MLP's sites are layer1, layer2, …, as the columns were named before).</summary>
    public static void Write(string path, IReadOnlyList<EpochReport> reports, string run, IReadOnlyList<string> sites, IReadOnlyList<string> alignedSites)
    {
        int layers = reports.Max(r => r.SiteCosines.Length), aligned = reports.Max(r => r.FeedbackAlignment.Length);
        bool validated = reports.Any(r => !double.IsNaN(r.ValidationAccuracy));
        var header = string.Join(',', FixedColumns.Concat(Enumerable.Range(0, layers).Select(l => $"cosine_{Column(sites, l)}"))
            .Concat(Enumerable.Range(0, aligned).Select(l => $"alignment_{Column(alignedSites, l)}")).Concat(validated ? ValidationColumns : []).Concat(TrailingColumns));
        AtomicFile.WriteAllLines(path, reports.Select(r => string.Join(',',
            new[] { (r.Epoch + 1).ToString(CultureInfo.InvariantCulture), G(r.TrainLoss), G(r.TrainAccuracy), G(r.TestLoss), G(r.TestAccuracy), G(r.GlobalCosine) }
                .Concat(Enumerable.Range(0, layers).Select(l => l < r.SiteCosines.Length ? G(r.SiteCosines[l]) : "NaN"))
                .Concat(Enumerable.Range(0, aligned).Select(l => l < r.FeedbackAlignment.Length ? G(r.FeedbackAlignment[l]) : "NaN"))
                .Concat(validated ? [G(r.ValidationLoss), G(r.ValidationAccuracy)] : [])
                .Concat([G(r.ExamplesPerSecond), r.ExchangedBytesPerStep.ToString("R", CultureInfo.InvariantCulture), G(r.WallTime.TotalSeconds), run]))).Prepend(header));
        static string G(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
    }

    /// <summary>Site l's name as a column suffix (commas, which would split the column, become '_'; a missing name: layer l+1).</summary>
    private static string Column(IReadOnlyList<string> names, int l) => l < names.Count ? names[l].Replace(',', '_') : $"layer{l + 1}";

    /// <summary>The per-site columns of a metrics header: cosine_&lt;site&gt; after cosine_global, then alignment_&lt;site&gt;.</summary>
    public static (int Sites, int Aligned) SiteColumns(IReadOnlyList<string> header)
    {
        int sites = header.Skip(FixedColumns.Length).TakeWhile(h => h.StartsWith("cosine_", StringComparison.Ordinal)).Count();
        int aligned = header.Skip(FixedColumns.Length + sites).TakeWhile(h => h.StartsWith("alignment_", StringComparison.Ordinal)).Count();
        return (sites, aligned);
    }

    /// <summary>
    /// The rows already in <paramref name="path"/>, for a resumed run whose configuration hash is <paramref name="run"/>.
    /// A missing or empty file holds no rows (an empty file has nothing to lose: the run starts the file afresh, with a
    /// note). A file that is not a metrics CSV of this tool, is damaged, or holds another run's rows is an error: it
    /// is left untouched, and the message says how to proceed.
    /// </summary>
    public static List<EpochReport> ReadForResume(string path, string run, TextWriter notes)
    {
        if (Directory.Exists(path)) throw new IOException($"--metrics {path}: is a directory; give a file path.");
        if (!File.Exists(path)) return [];
        var lines = File.ReadAllLines(path);
        if (lines.All(string.IsNullOrWhiteSpace))
        {
            notes.WriteLine($"note: the metrics file {path} is empty; it will hold the epochs from the checkpoint on.");
            return [];
        }
        const string Advice = "It is left as it is: move it away or pass --metrics with another path.";
        var header = lines[0].Split(',');
        if (!header.Take(FixedColumns.Length).SequenceEqual(FixedColumns))
            throw new InvalidDataException($"{path}, line 1: not a metrics CSV of forwardad train (the header does not start with {string.Join(',', FixedColumns)}). {Advice}");
        bool exchange = header.TakeLast(TrailingColumns.Length).SequenceEqual(TrailingColumns);
        var trailing = exchange ? TrailingColumns : EarlierTrailingColumns;
        if (!header.TakeLast(trailing.Length).SequenceEqual(trailing))
            throw new InvalidDataException($"{path}, line 1: the header does not end with {string.Join(',', TrailingColumns)}: written by an older forwardad (without the run column) or not by forwardad. {Advice}");
        var (layers, aligned) = SiteColumns(header);
        // The validation columns, when present, sit right after the per-site ones (as Write puts them).
        bool validated = header.Skip(FixedColumns.Length + layers + aligned).Take(ValidationColumns.Length).SequenceEqual(ValidationColumns);
        int validationColumns = validated ? ValidationColumns.Length : 0;
        if (header.Length != FixedColumns.Length + layers + aligned + validationColumns + trailing.Length)
            throw new InvalidDataException($"{path}, line 1: unexpected columns in the header. {Advice}");
        var result = new List<EpochReport>();
        for (int i = 1; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            var cells = lines[i].Split(',');
            if (cells.Length != header.Length)
                throw new InvalidDataException($"{path}, line {i + 1}: {cells.Length} columns, the header has {header.Length}. {Advice}");
            if (cells[^1] != run)
                throw new InvalidDataException($"{path}, line {i + 1}: a row of another run (configuration {cells[^1]}; this run's is {run}). " +
                    "Rows of two runs would mix in one file. Pass --metrics with another path (the default path is unique to the configuration).");
            var v = new double[cells.Length - 1];
            for (int c = 0; c < v.Length; c++)
                if (!double.TryParse(cells[c], NumberStyles.Float, CultureInfo.InvariantCulture, out v[c]))
                    throw new InvalidDataException($"{path}, line {i + 1}: '{cells[c]}' in column {header[c]} is not a number. {Advice}");
            if (v[0] != Math.Floor(v[0]) || v[0] < 1 || v[0] > int.MaxValue)
                throw new InvalidDataException($"{path}, line {i + 1}: epoch '{cells[0]}' is not a positive integer. {Advice}");
            result.Add(new EpochReport((int)v[0] - 1, v[1], v[2], v[3], v[4], [.. v.Skip(6).Take(layers)], v[5], v[exchange ? ^3 : ^2],
                TimeSpan.FromSeconds(Math.Clamp(v[^1], 0, TimeSpan.MaxValue.TotalSeconds / 2)))
            {
                FeedbackAlignment = [.. v.Skip(6 + layers).Take(aligned)],
                ExchangedBytesPerStep = exchange ? v[^2] : 0,
                ValidationLoss = validated ? v[6 + layers + aligned] : double.NaN,
                ValidationAccuracy = validated ? v[6 + layers + aligned + 1] : double.NaN,
            });
        }
        return result;
    }
}

/// <summary>Writes a whole text file through a temporary file renamed into place: readers never see half a file.</summary>
internal static class AtomicFile
{
    /// <summary>
    /// Through <see cref="Data.AtomicWriter"/>: the temporary beside the target names its writer
    /// (<c>.{file}.{pid}.{guid}.tmp</c>, two runs writing the same path do not share it), is held locked while written and is
    /// deleted when anything fails, so a failed write leaves neither half a file nor a stray temporary; one that a killed
    /// run left behind is removed by the next write of the same file.
    /// </summary>
    public static void WriteAllLines(string path, IEnumerable<string> lines)
    {
        if (Directory.Exists(path)) throw new IOException($"{path}: is a directory; give a file path for the CSV.");
        Data.AtomicWriter.WriteAllLines(path, lines);
    }
}
