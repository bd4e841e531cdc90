using System.Globalization;
using System.Text;
using ForwardAD.Plots;

namespace ForwardAD.Cli;

/// <summary>
/// Draws the metrics CSVs the tool writes. Every command writes its CSV first and then draws the plot from that file,
/// through the same code as `forwardad plot`: a plot redrawn later from the CSV is the plot the run wrote. A file is
/// recognised by its header (the columns each command writes first), never by its name.
/// </summary>
internal static class MetricsPlots
{
    /// <summary>Pixels per panel: a figure of n columns is n × 560 wide.</summary>
    public const int PanelWidth = 560, PanelHeight = 420;

    /// <summary>A kind of metrics CSV: the command that writes it, how its header starts, and how it is drawn.</summary>
    public sealed record Kind(string Name, string HeaderStart, Func<CsvTable, Figure> Draw);

    public static readonly Kind[] Kinds =
    [
        new("train", "epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global", Train),
        new("lm", "step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global", LanguageModel),
        new("cosine", "epoch,step,guesser,cosine,effectiveness", Cosine),
        new("grape-toy", "rule,start,seed,step,mean_row_cosine", GrapeToy),
        new("compare", CompareCommand.Header, Compare),
    ];

    /// <summary>The figure of <paramref name="csv"/> as <paramref name="stem"/>.png and .svg (default: the CSV's path without
    /// its extension); returns both paths and the kind recognised.</summary>
    public static (string Png, string Svg, string Kind) Draw(string csv, string? stem = null)
    {
        var table = CsvTable.Read(csv);
        var kind = Kinds.FirstOrDefault(k => (table.HeaderLine + ",").StartsWith(k.HeaderStart + ",", StringComparison.Ordinal))
            ?? throw new InvalidDataException($"{csv}, line 1: not a metrics CSV of forwardad: the header '{Shorten(table.HeaderLine)}' is none of the kinds " +
                $"{Opt.List([.. Kinds.Select(k => k.Name)])} (their headers start with {string.Join("; ", Kinds.Select(k => $"{k.Name}: {k.HeaderStart.Split(',')[0]},{k.HeaderStart.Split(',')[1]},…"))}). " +
                "Give a CSV written by forwardad train, lm, cosine, grape-toy or compare.");
        if (table.Rows.Count == 0) throw new InvalidDataException($"{csv}: a {kind.Name} CSV without data rows: nothing to draw.");
        var figure = kind.Draw(table);
        var (width, height) = figure.Size(PanelWidth, PanelHeight);
        stem ??= Path.Combine(Path.GetDirectoryName(csv) ?? "", Path.GetFileNameWithoutExtension(csv));
        var (png, svg) = ChartFile.SaveBoth(figure, stem, width, height);
        return (png, svg, kind.Name);
    }

    /// <summary>Fractions as percentages.</summary>
    private static double[] Percent(IReadOnlyList<double> fractions) => [.. fractions.Select(f => 100 * f)];

    private static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";

    // ---- one figure per kind ----------------------------------------------------------------------------

    /// <summary>train: loss, accuracy, and the cosine of the estimate to the backprop gradient per site (with
    /// B·J alignment for DFA and GrAPE), against the epoch.</summary>
    private static Figure Train(CsvTable t)
    {
        var epoch = t.Numbers("epoch");
        // The global cosine (all parameters as one vector), then one curve per site named by its layer (cosine_<layer>).
        var cosines = new List<Series> { new("global (all parameters)", epoch, t.Numbers("cosine_global")) };
        var (sites, aligned) = MetricsFile.SiteColumns(t.Header);
        foreach (var column in t.Header.Skip(6).Take(sites))
            cosines.Add(new(column["cosine_".Length..], epoch, t.Numbers(column)));
        // DFA and GrAPE: the row-cosine of B_l to the exact Jacobian J_lᵀ, per hidden site.
        foreach (var column in t.Header.Skip(6 + sites).Take(aligned))
            cosines.Add(new($"B·J, {column["alignment_".Length..]}", epoch, t.Numbers(column)));
        // Runs with --validation-fraction: the validation curves beside train and test (files without them draw as before).
        bool validated = t.Header.Contains("validation_accuracy");
        Series[] losses = [new("train", epoch, t.Numbers("train_loss")), new("test", epoch, t.Numbers("test_loss")), .. validated ? [new Series("validation", epoch, t.Numbers("validation_loss"))] : Array.Empty<Series>()];
        // Accuracies in percent, as the console prints them.
        Series[] accuracies = [new("train", epoch, Percent(t.Numbers("train_accuracy"))), new("test", epoch, Percent(t.Numbers("test_accuracy"))),
            .. validated ? [new Series("validation", epoch, Percent(t.Numbers("validation_accuracy")))] : Array.Empty<Series>()];
        return new Figure(
        [
            new LineChart("loss", "epoch", "cross-entropy loss", losses) { IntegerX = true },
            new LineChart("accuracy", "epoch", "accuracy (%)", accuracies) { Legend = LegendCorner.LowerRight, IntegerX = true },
            new LineChart("cosine to the backprop gradient", "epoch", "cosine (mean over the epoch)", cosines) { Legend = LegendCorner.OutsideRight, IntegerX = true },
        ], Columns: 3);
    }

    /// <summary>lm: bits per character (train, validation, and test with --validation-fraction), next-byte accuracy and the
    /// global cosine against the step.</summary>
    private static Figure LanguageModel(CsvTable t)
    {
        var step = t.Numbers("step");
        bool tested = t.Header.Contains("test_bits_per_char");
        return new Figure(
        [
            new LineChart("bits per character", "step", "bits per character",
                [new("train", step, t.Numbers("train_bits_per_char")), new("validation", step, t.Numbers("validation_bits_per_char")),
                 .. tested ? (Series[])[new("test", step, t.Numbers("test_bits_per_char"))] : []]),
            new LineChart(tested ? "next-byte accuracy" : "validation next-byte accuracy", "step", "accuracy (%)", [new("validation", step, Percent(t.Numbers("validation_accuracy"))),
                .. tested ? (Series[])[new("test", step, Percent(t.Numbers("test_accuracy")))] : []]) { IntegerX = true },
            // The global cosine, then one curve per site named by its layer (the columns cosine_<site> after 'run').
            new LineChart("cosine to the backprop gradient", "step", "cosine", [new("global (all parameters)", step, t.Numbers("cosine_global")),
                .. t.Header.SkipWhile(h => h != "run").Where(h => h.StartsWith("cosine_", StringComparison.Ordinal)).Select(h => new Series(h["cosine_".Length..], step, t.Numbers(h)))])
                { Legend = LegendCorner.OutsideRight },
        ], Columns: 3);
    }

    /// <summary>cosine (Figure 1 of the paper): every guesser's cosine and 1-step effectiveness along the backprop trajectory.</summary>
    private static Figure Cosine(CsvTable t)
    {
        var step = t.Numbers("step");
        var (cosine, effectiveness) = (t.Numbers("cosine"), t.Numbers("effectiveness"));
        var groups = t.Groups("guesser");
        return new Figure(
        [
            new LineChart("cosine to the true gradient (backprop trajectory)", "step", "cos(estimate, ∇L)",
                [.. groups.Select(g => new Series(g.Key, [.. g.Rows.Select(r => step[r])], [.. g.Rows.Select(r => cosine[r])]))]) { Legend = LegendCorner.None },
            // The same guessers in the same order (the same colours): one legend, at the figure's right edge.
            new LineChart("1-step effectiveness", "step", "loss reduction relative to a backprop step",
                [.. groups.Select(g => new Series(g.Key, [.. g.Rows.Select(r => step[r])], [.. g.Rows.Select(r => effectiveness[r])]))]) { Legend = LegendCorner.OutsideRight },
        ], Columns: 2);
    }

    /// <summary>grape-toy: one panel per feedback rule, the mean row-cosine of B to the target over the steps, one curve per
    /// starting cosine (the mean over the seeds).</summary>
    private static Figure GrapeToy(CsvTable t)
    {
        var (start, step, cosine) = (t.Numbers("start"), t.Numbers("step"), t.Numbers("mean_row_cosine"));
        // The same starts in every panel (the same colours): the legend on the right column's panels only.
        var panels = t.Groups("rule").Select((rule, i) => new LineChart(rule.Key, "step", "mean row-cosine of B to the target",
            [.. rule.Rows.GroupBy(r => start[r]).OrderBy(s => s.Key).Select(s =>
            {
                var mean = s.GroupBy(r => step[r]).OrderBy(g => g.Key).Select(g => (Step: g.Key, Cosine: g.Average(r => cosine[r]))).ToList();
                return new Series(string.Create(CultureInfo.InvariantCulture, $"start {s.Key:+0.0;-0.0;0}"), [.. mean.Select(m => m.Step)], [.. mean.Select(m => m.Cosine)]);
            })]) { Legend = i % 2 == 1 ? LegendCorner.OutsideRight : LegendCorner.None }).ToList();
        return new Figure(panels, Columns: Math.Min(2, panels.Count));
    }

    /// <summary>compare: test accuracy and cosine to the backprop gradient per epoch, one curve per method.</summary>
    private static Figure Compare(CsvTable t)
    {
        var epoch = t.Numbers("epoch");
        var (accuracy, cosine) = (t.Numbers("test_accuracy"), t.Numbers("cosine_global"));
        var methods = t.Groups("method");
        return new Figure(
        [
            new LineChart("test accuracy", "epoch", "test accuracy (%)",
                [.. methods.Select(m => new Series(m.Key, [.. m.Rows.Select(r => epoch[r])], [.. m.Rows.Select(r => 100 * accuracy[r])]))]) { Legend = LegendCorner.LowerRight, IntegerX = true },
            // The same methods in the same order, so the same colours: the legend of the left panel names them.
            new LineChart("cosine to the backprop gradient (global: all parameters)", "epoch", "cos(update, ∇L), mean over the epoch",
                [.. methods.Select(m => new Series(m.Key, [.. m.Rows.Select(r => epoch[r])], [.. m.Rows.Select(r => cosine[r])]))]) { Legend = LegendCorner.None, IntegerX = true },
        ], Columns: 2);
    }
}

/// <summary>A CSV as the tool writes it: a header line, then rows of the same number of fields; a field may be quoted
/// ("…", with "" for a quote) when it holds a comma.</summary>
internal sealed class CsvTable
{
    private CsvTable(string path, string headerLine, string[] header, List<string[]> rows, List<int> lineNumbers)
    {
        Path = path;
        HeaderLine = headerLine;
        Header = header;
        Rows = rows;
        _lineNumbers = lineNumbers;
    }

    private readonly List<int> _lineNumbers;

    public string Path { get; }
    public string HeaderLine { get; }
    public string[] Header { get; }
    public IReadOnlyList<string[]> Rows { get; }

    public static CsvTable Read(string path)
    {
        if (Directory.Exists(path)) throw new IOException($"{path}: is a directory; give a metrics CSV file.");
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: the file does not exist; give a metrics CSV written by forwardad.", path);
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0 || string.IsNullOrWhiteSpace(lines[0]))
            throw new InvalidDataException($"{path}: empty, or no header in line 1; give a metrics CSV written by forwardad.");
        var header = Split(lines[0], path, 1);
        var rows = new List<string[]>();
        var numbers = new List<int>();
        for (int i = 1; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            var cells = Split(lines[i], path, i + 1);
            if (cells.Length != header.Length)
                throw new InvalidDataException($"{path}, line {i + 1}: {cells.Length} fields, the header has {header.Length}.");
            rows.Add(cells);
            numbers.Add(i + 1);
        }
        return new CsvTable(path, lines[0].TrimEnd('\r'), header, rows, numbers);
    }

    /// <summary>The column <paramref name="name"/> as numbers (NaN stays NaN: the plot leaves such points out).</summary>
    public double[] Numbers(string name)
    {
        int c = Column(name);
        var values = new double[Rows.Count];
        for (int r = 0; r < values.Length; r++)
            if (!double.TryParse(Rows[r][c], NumberStyles.Float, CultureInfo.InvariantCulture, out values[r]))
                throw new InvalidDataException($"{Path}, line {_lineNumbers[r]}: '{Rows[r][c]}' in column {name} is not a number.");
        return values;
    }

    /// <summary>Row indices grouped by the text of column <paramref name="name"/>, groups in order of first appearance.</summary>
    public List<(string Key, List<int> Rows)> Groups(string name)
    {
        int c = Column(name);
        var groups = new List<(string Key, List<int> Rows)>();
        for (int r = 0; r < Rows.Count; r++)
        {
            int g = groups.FindIndex(x => x.Key == Rows[r][c]);
            if (g < 0) groups.Add((Rows[r][c], [r]));
            else groups[g].Rows.Add(r);
        }
        return groups;
    }

    private int Column(string name)
    {
        int c = Array.IndexOf(Header, name);
        return c >= 0 ? c : throw new InvalidDataException($"{Path}, line 1: no column '{name}' in the header.");
    }

    private static string[] Split(string line, string path, int number)
    {
        var cells = new List<string>();
        var cell = new StringBuilder();
        bool quoted = false;
        line = line.TrimEnd('\r');
        for (int i = 0; i < line.Length; i++)
        {
            char ch = line[i];
            if (quoted)
            {
                if (ch != '"') cell.Append(ch);
                else if (i + 1 < line.Length && line[i + 1] == '"') { cell.Append('"'); i++; }
                else quoted = false;
            }
            else if (ch == '"') quoted = true;
            else if (ch == ',') { cells.Add(cell.ToString()); cell.Clear(); }
            else cell.Append(ch);
        }
        if (quoted) throw new InvalidDataException($"{path}, line {number}: a quoted field is not closed.");
        cells.Add(cell.ToString());
        return [.. cells];
    }
}
