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

    /// <summary>A kind of metrics CSV: the command that writes it, how its header starts (as the error message shows it),
    /// how a file is recognised (by default: its header starts with <see cref="HeaderStart"/>), and how it is drawn: one or
    /// more figures, each written as the stem plus its suffix ("" for the stem itself), as the command names its files.</summary>
    public sealed record Kind(string Name, string HeaderStart, Func<CsvTable, IReadOnlyList<(string Suffix, Figure Figure)>> Draw)
    {
        /// <summary>Pixels per panel across (sweep's panels are wider, for their long legend entries).</summary>
        public int Width { get; init; } = PanelWidth;

        /// <summary>Whether <paramref name="table"/> is a CSV of this kind; null: its header starts with <see cref="HeaderStart"/>.</summary>
        public Func<CsvTable, bool>? Matches { get; init; }

        public bool Recognises(CsvTable table) => Matches?.Invoke(table)
            ?? (table.HeaderLine + ",").StartsWith(HeaderStart + ",", StringComparison.Ordinal);
    }

    /// <summary>The header of the training-curve studies (bias-variance, sharpening, downstream): the study's name first, so
    /// that files of the same columns draw as their own study.</summary>
    public const string StudyCurvesHeader = "study,guesser,epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine";

    /// <summary>How the header of mixer-table's CSV starts (it ends with the run column, the hash of the table's configuration).</summary>
    public const string MixerTableHeader = "variant,augment,method,seed,epochs,train_loss,train_accuracy,test_loss,test_accuracy,cosine,seconds";

    private static IReadOnlyList<(string, Figure)> One(Figure figure) => [("", figure)];

    /// <summary>A training-curve study: its name in the study column; or, in a file written before that column, what only
    /// its rows hold (<paramref name="earlier"/>).</summary>
    private static Kind Study(string name, Func<CsvTable, IReadOnlyList<(string, Figure)>> draw, Func<CsvTable, bool> earlier) =>
        new($"study {name}", StudyCurvesHeader, draw)
        {
            Matches = t => t.Rows.Count > 0 && ((t.HeaderLine + ",").StartsWith(StudyCurvesHeader + ",", StringComparison.Ordinal)
                ? t.Rows[0][0] == name
                : (t.HeaderLine + ",").StartsWith(StudyCurvesHeader["study,".Length..] + ",", StringComparison.Ordinal) && earlier(t)),
        };

    /// <summary>Whether a guesser of <paramref name="t"/> has a name containing <paramref name="text"/>.</summary>
    private static bool AnyGuesser(CsvTable t, string text) => t.Groups("guesser").Any(g => g.Key.Contains(text, StringComparison.Ordinal));

    public static readonly Kind[] Kinds =
    [
        new("train", "epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global", t => One(Train(t))),
        new("lm", "step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global", t => One(LanguageModel(t))),
        new("cosine", "epoch,step,guesser,cosine,effectiveness", t => One(Cosine(t))),
        new("grape-toy", "rule,start,seed,step,mean_row_cosine", t => One(GrapeToy(t))),
        new("compare", CompareCommand.Header, t => One(Compare(t))),
        new("study saturation", "guesser,guesses,cosine", t => One(Saturation(t))),
        Study("bias-variance", BiasVariance, t => AnyGuesser(t, "cosine-matched")),
        Study("sharpening", Sharpening, t => t.Header.Contains("first_layer_effective_rank")),
        Study("downstream", Downstream, t => AnyGuesser(t, "-layer downstream")),
        new("study spectra", "site,kind,k,value", Spectra),
        new("mixer-table", MixerTableHeader, t => One(MixerTable(t))),
        // sweep's files have the grid's axes first: recognised by the columns after them, drawn from the runs' own CSVs.
        new("sweep", "AXES…,status,exit_code,…,folder", t => One(Sweep(t, t)))
        {
            Matches = t => t.Header.Contains("status") && t.Header.Contains("exit_code") && t.Header[^1] == "folder", Width = PanelWidth + 140,
        },
        new("sweep summary", "AXES…,runs,ok,failed,seeds,…,selected", t => One(Sweep(SweepRuns(t), t)))
        {
            Matches = t => t.Header.Contains("runs") && t.Header.Contains("ok") && t.Header.Contains("seeds") && t.Header[^1] == "selected", Width = PanelWidth + 140,
        },
    ];

    /// <summary>The figure of <paramref name="csv"/> as <paramref name="stem"/>.png and .svg (default: the CSV's path without
    /// its extension); returns both paths (of the first figure, for kinds that draw several) and the kind recognised.</summary>
    public static (string Png, string Svg, string Kind) Draw(string csv, string? stem = null)
    {
        var (files, kind) = DrawAll(csv, stem);
        return (files[0].Png, files[0].Svg, kind);
    }

    /// <summary>Every figure of <paramref name="csv"/>: stem+suffix.png and .svg per figure of its kind (the study kinds draw
    /// several, named as the study names them); returns the paths and the kind recognised.</summary>
    public static (List<(string Png, string Svg)> Files, string Kind) DrawAll(string csv, string? stem = null)
    {
        var table = CsvTable.Read(csv);
        var kind = Kinds.FirstOrDefault(k => k.Recognises(table))
            ?? throw new InvalidDataException($"{csv}, line 1: not a metrics CSV of forwardad: the header '{Shorten(table.HeaderLine)}' is none of the kinds " +
                $"{Opt.List([.. Kinds.Select(k => k.Name)])} (their headers start with {string.Join("; ", Kinds.Select(k => $"{k.Name}: {Start(k.HeaderStart)}"))}). " +
                "Give a CSV written by forwardad train, lm, cosine, grape-toy, compare, study, mixer-table or sweep.");
        if (table.Rows.Count == 0) throw new InvalidDataException($"{csv}: a {kind.Name} CSV without data rows: nothing to draw.");
        stem ??= Path.Combine(Path.GetDirectoryName(csv) ?? "", Path.GetFileNameWithoutExtension(csv));
        var title = Title(table, kind);
        var files = new List<(string Png, string Svg)>();
        foreach (var (suffix, drawn) in kind.Draw(table))
        {
            var figure = drawn with { Title = title };
            var (width, height) = figure.Size(kind.Width, PanelHeight);
            files.Add(ChartFile.SaveBoth(figure, stem + suffix, width, height));
        }
        return (files, kind.Name);

        static string Start(string header) => header.Split(',') is var h && h.Length > 2 && !header.StartsWith("AXES", StringComparison.Ordinal) ? $"{h[0]},{h[1]},…" : header;
    }

    /// <summary>The figure's title: which run it shows. The kind and the CSV's file name (the default names of train and lm
    /// hold the guesser, the seed and the configuration hash; compare's and the studies' files are named after the command,
    /// so their folder, the --out of the run, comes first; so do sweep's), then what the file says of the run: the configuration hash
    /// of train, lm and mixer-table (when the name lacks it), the variant, epochs and seeds of mixer-table (compare's methods are its legend).</summary>
    private static string Title(CsvTable t, Kind kind)
    {
        var name = System.IO.Path.GetFileNameWithoutExtension(t.Path);
        // compare and the studies name their files after themselves: the folder (--out) tells one run from another.
        if (kind.Name is "compare" or "sweep" or "sweep summary" || kind.Name.StartsWith("study ", StringComparison.Ordinal))
            name = System.IO.Path.Combine(System.IO.Path.GetFileName(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(t.Path))) ?? "", name);
        var details = new List<string>();
        if (t.Header.Contains("run") && t.Rows.Count > 0)
        {
            var run = t.Rows[^1][Array.IndexOf(t.Header, "run")];
            if (run.Length > 0 && !name.Contains(run, StringComparison.Ordinal)) details.Add($"configuration {run}");
        }
        string? Distinct(string column) => t.Header.Contains(column) ? string.Join(", ", t.Groups(column).Select(g => Label(g.Key))) : null;
        if (kind.Name == "mixer-table")
        {
            details.Add($"variant {Distinct("variant")}");
            details.Add($"{Distinct("epochs")} epoch(s)");
            details.Add($"seeds {Distinct("seed")}");
        }
        return $"{kind.Name}: {name}" + (details.Count > 0 ? $" ({string.Join("; ", details)})" : "");
    }

    /// <summary>Legend and title text: W^T instead of Wᵀ (the superscript T is missing from common chart fonts).</summary>
    public static string Label(string name) => name.Replace("Wᵀ", "W^T", StringComparison.Ordinal);

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
                 .. tested ? (Series[])[new("test", step, t.Numbers("test_bits_per_char"))] : []]) { IntegerX = true },
            new LineChart(tested ? "next-byte accuracy" : "validation next-byte accuracy", "step", "accuracy (%)", [new("validation", step, Percent(t.Numbers("validation_accuracy"))),
                .. tested ? (Series[])[new("test", step, Percent(t.Numbers("test_accuracy")))] : []]) { IntegerX = true },
            // The global cosine, then one curve per site named by its layer (the columns cosine_<site> after 'run').
            new LineChart("cosine to the backprop gradient", "step", "cosine", [new("global (all parameters)", step, t.Numbers("cosine_global")),
                .. t.Header.SkipWhile(h => h != "run").Where(h => h.StartsWith("cosine_", StringComparison.Ordinal)).Select(h => new Series(h["cosine_".Length..], step, t.Numbers(h)))])
                { Legend = LegendCorner.OutsideRight, IntegerX = true },
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
                [.. groups.Select(g => new Series(g.Key, [.. g.Rows.Select(r => step[r])], [.. g.Rows.Select(r => cosine[r])]))]) { Legend = LegendCorner.None, IntegerX = true },
            // The same guessers in the same order (the same colours): one legend, at the figure's right edge.
            new LineChart("1-step effectiveness", "step", "loss reduction relative to a backprop step",
                [.. groups.Select(g => new Series(g.Key, [.. g.Rows.Select(r => step[r])], [.. g.Rows.Select(r => effectiveness[r])]))]) { Legend = LegendCorner.OutsideRight, IntegerX = true },
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
            })]) { Legend = i % 2 == 1 ? LegendCorner.OutsideRight : LegendCorner.None, IntegerX = true }).ToList();
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

    // ---- the studies (study NAME) and mixer-table ------------------------------------------------------------

    /// <summary>Figure of one chart.</summary>
    private static Figure Single(LineChart chart) => new([chart with { Title = Label(chart.Title), YLabel = Label(chart.YLabel) }], Columns: 1);

    /// <summary>One series per value of <paramref name="key"/> (legend text: <see cref="Label"/>), y against x, over the rows
    /// <paramref name="keep"/> admits.</summary>
    private static Series[] By(CsvTable t, string key, double[] x, double[] y, Func<int, bool>? keep = null) =>
        [.. t.Groups(key).Select(g => g.Rows.Where(r => keep?.Invoke(r) ?? true).ToList()).Where(rows => rows.Count > 0)
            .Select(rows => new Series(Label(t.Rows[rows[0]][Array.IndexOf(t.Header, key)]), [.. rows.Select(r => x[r])], [.. rows.Select(r => y[r])]))];

    /// <summary>study saturation: the cosine of the mean of n guesses per guesser, n on a log axis.</summary>
    private static Figure Saturation(CsvTable t) =>
        Single(new LineChart("Bias saturation: cosine of the mean of n guesses", "guesses averaged (n)", "cosine to the true gradient",
            By(t, "guesser", t.Numbers("guesses"), t.Numbers("cosine")), LogX: true) { Legend = LegendCorner.UpperLeft });

    /// <summary>The training-curve studies: per guesser against the epoch (epoch 0, the initial model, has no cosine: left
    /// out of cosine charts).</summary>
    private static LineChart Curves(CsvTable t, string title, string yLabel, string column, bool skipInitial = false, Func<int, bool>? keep = null, bool percent = false)
    {
        var (epoch, y) = (t.Numbers("epoch"), t.Numbers(column));
        return new LineChart(title, "epoch", yLabel, By(t, "guesser", epoch, percent ? Percent(y) : y, r => (!skipInitial || epoch[r] > 0) && (keep?.Invoke(r) ?? true))) { IntegerX = true };
    }

    private static IReadOnlyList<(string, Figure)> BiasVariance(CsvTable t) =>
    [
        ("", Single(Curves(t, "Bias against variance: training loss", "training loss", "train_loss") with { LogY = true, Legend = LegendCorner.LowerLeft })),
        ("-cosine", Single(Curves(t, "Bias against variance: mean cosine per epoch", "cosine to the true gradient", "cosine", skipInitial: true))),
    ];

    private static IReadOnlyList<(string, Figure)> Sharpening(CsvTable t)
    {
        int guesser = Array.IndexOf(t.Header, "guesser");
        return
        [
            ("-cosine", Single(Curves(t, "Self-sharpening: mean cosine to the true gradient", "cosine to the true gradient", "cosine", skipInitial: true, keep: r => t.Rows[r][guesser] != "backprop"))),
            ("-rank", Single(Curves(t, "Self-sharpening: effective rank of the first layer's weight", "effective rank (Roy & Vetterli)", "first_layer_effective_rank") with { Legend = LegendCorner.LowerLeft })),
            ("-accuracy", Single(Curves(t, "Self-sharpening: test accuracy", "test accuracy (%)", "test_accuracy", percent: true) with { Legend = LegendCorner.LowerRight })),
        ];
    }

    private static IReadOnlyList<(string, Figure)> Downstream(CsvTable t) =>
    [
        ("-accuracy", Single(Curves(t, "k-layer downstream: test accuracy", "test accuracy (%)", "test_accuracy", percent: true) with { Legend = LegendCorner.LowerRight })),
        ("-cosine", Single(Curves(t, "k-layer downstream: mean cosine to the true gradient", "cosine to the true gradient", "cosine", skipInitial: true) with { Legend = LegendCorner.LowerRight })),
    ];

    /// <summary>study spectra: the Jacobians' normalised singular values (log y) and the explained variance of the site
    /// outputs (log x), one curve per site.</summary>
    private static IReadOnlyList<(string, Figure)> Spectra(CsvTable t)
    {
        var (k, value) = (t.Numbers("k"), t.Numbers("value"));
        int kind = Array.IndexOf(t.Header, "kind");
        return
        [
            ("-jacobian", Single(new LineChart("Singular values of the Jacobian to the next site", "k", "σ_k / σ_1",
                By(t, "site", k, value, r => t.Rows[r][kind] == "jacobian_singular_value"), LogY: true) { IntegerX = true })),
            ("-activations", Single(new LineChart("Explained variance of the site outputs", "principal components k", "fraction of variance explained",
                By(t, "site", k, value, r => t.Rows[r][kind] == "explained_variance"), LogX: true) { Legend = LegendCorner.LowerRight })),
        ];
    }

    /// <summary>mixer-table: test accuracy (%) and cosine per method, one series per augmentation mode; the mean over the
    /// seeds with ± its sample standard deviation as error bars when there are several.</summary>
    private static Figure MixerTable(CsvTable t)
    {
        var (accuracy, cosine) = (t.Numbers("test_accuracy"), t.Numbers("cosine"));
        var methods = t.Groups("method").Select(g => g.Key).ToList();
        int method = Array.IndexOf(t.Header, "method");
        var modes = t.Groups("augment");
        Series[] Points(double[] y, double scale) =>
            [.. modes.Select((mode, k) =>
            {
                var statistics = methods.Select(m => SampleStatistics.Of(mode.Rows.Where(r => t.Rows[r][method] == m).Select(r => scale * y[r]))).ToList();
                // The modes side by side around each method's tick, so that neither hides the other's point and error bar.
                double offset = 0.15 * (k - (modes.Count - 1) / 2.0);
                return new Series(mode.Key == "on" ? "crop + flip" : mode.Key == "off" ? "no augmentation" : mode.Key, [.. methods.Select((_, i) => i + offset)], [.. statistics.Select(s => s.Mean)])
                {
                    Band = ([.. statistics.Select(s => s.Mean - s.StandardDeviation)], [.. statistics.Select(s => s.Mean + s.StandardDeviation)]),
                };
            })];
        var categories = methods.Select(Label).ToList();
        return new Figure(
        [
            new LineChart("test accuracy (mean ± sd over seeds)", "method", "test accuracy (%)", Points(accuracy, 100)) { XCategories = categories, PointsOnly = true, Legend = LegendCorner.LowerLeft },
            new LineChart("cosine to the backprop gradient (global)", "method", "cosine, last epoch", Points(cosine, 1)) { XCategories = categories, PointsOnly = true, Legend = LegendCorner.None },
        ], Columns: 2);
    }

    // ---- sweep (sweep.csv, summary.csv) -----------------------------------------------------------------------

    /// <summary>The sweep.csv beside a summary.csv (the sweep writes both into its --out folder): the runs to draw.</summary>
    private static CsvTable SweepRuns(CsvTable summary)
    {
        var runs = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(summary.Path))!, "sweep.csv");
        if (!File.Exists(runs))
            throw new InvalidDataException($"{summary.Path}: a sweep's summary.csv holds the final values only; its figure is drawn from the runs listed in sweep.csv beside it, and {runs} does not exist.");
        return CsvTable.Read(runs);
    }

    /// <summary>sweep: the figure the sweep draws (summary.png): per configuration (the runs grouped over the seed axis), the
    /// mean over its seeds of the test headline metric (accuracy per epoch of train, bits per character per step of lm)
    /// with a ±1 sample standard deviation band, and the validation one beside it when the runs have one. The curves are
    /// read from each ok run's metrics.csv in its folder (sweep.csv's folder column, under the sweep's folder); when
    /// <paramref name="summary"/> marks configurations selected on validation, those only, as the sweep shows them.</summary>
    private static Figure Sweep(CsvTable runs, CsvTable summary)
    {
        string folder = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(runs.Path))!;
        int status = Array.IndexOf(runs.Header, "status"), path = runs.Header.Length - 1;
        var axes = runs.Header[..status];
        var command = runs.Header[status + 2] == SweptCommand.LanguageModel.Progress + "s" ? SweptCommand.LanguageModel : SweptCommand.Train;
        string Key(string[] row, string[] header) => string.Join(' ', axes.Where(a => a != SweepSummary.SeedAxis).Select(a => $"{a}={row[Array.IndexOf(header, a)]}"));
        // The configurations selected on validation (summary.csv's 'selected' column says yes), when there are any.
        HashSet<string> selected = summary == runs || !summary.Header.Contains("selected") ? [] :
            summary.Rows.Where(r => r[^1] == "yes").Select(r => Key(r, summary.Header)).ToHashSet();
        var configurations = runs.Rows.Where(r => r[status] == RunRecord.Ok).GroupBy(r => Key(r, runs.Header))
            .Where(g => selected.Count == 0 || selected.Contains(g.Key))
            .Select(g => (Label: g.Key.Length == 0 ? "all runs" : g.Key, Curves: g.Select(r => command.ReadCurves(System.IO.Path.Combine(folder, r[path], "metrics.csv"))).ToList()))
            .ToList();
        if (configurations.Count == 0) throw new InvalidDataException($"{runs.Path}: no run of the sweep succeeded: nothing to draw.");
        bool validated = configurations.Any(c => c.Curves.Any(x => x[command.ValidationHeadline].Any(double.IsFinite)));
        LineChart Panel(SweepMetric metric)
        {
            double scale = metric.Percent ? 100 : 1;
            var series = configurations.Select(c =>
            {
                int points = c.Curves.Min(x => x.Points);
                var statistics = Enumerable.Range(0, points).Select(e => SampleStatistics.Of(c.Curves.Select(x => x[metric][e]))).ToList();
                return new Series($"{c.Label} (n={c.Curves.Count})", c.Curves[0].Progress[..points], [.. statistics.Select(s => scale * s.Mean)])
                {
                    Band = ([.. statistics.Select(s => scale * (s.Mean - s.StandardDeviation))], [.. statistics.Select(s => scale * (s.Mean + s.StandardDeviation))]),
                };
            }).ToList();
            var what = selected.Count > 0 ? "selected on validation, mean ± sd over seeds" : "mean ± sd over seeds";
            return new LineChart($"{metric.Description} ({what})", command.Progress, metric.Percent ? $"{metric.Description} (%)" : metric.Description, series)
                { Legend = metric.HigherIsBetter ? LegendCorner.LowerRight : LegendCorner.UpperRight, IntegerX = true };
        }
        List<LineChart> panels = [Panel(command.TestHeadline), .. validated ? [Panel(command.ValidationHeadline) with { Legend = LegendCorner.None }] : Array.Empty<LineChart>()];
        return new Figure(panels, panels.Count);
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

    /// <summary>The column <paramref name="name"/> as numbers (NaN stays NaN, and an empty field, a value not measured, reads
    /// as NaN: the plot leaves such points out).</summary>
    public double[] Numbers(string name)
    {
        int c = Column(name);
        var values = new double[Rows.Count];
        for (int r = 0; r < values.Length; r++)
            if (Rows[r][c].Length == 0) values[r] = double.NaN;
            else if (!double.TryParse(Rows[r][c], NumberStyles.Float, CultureInfo.InvariantCulture, out values[r]))
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
