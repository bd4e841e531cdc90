using System.Globalization;
using ScottPlot;

namespace ForwardAD.Plots;

/// <summary>One named curve of a chart: y against x, as many points as x has.</summary>
public sealed record Series(string Name, IReadOnlyList<double> X, IReadOnlyList<double> Y)
{
    /// <summary>An error band around the curve (a mean ± its standard deviation over seeds): its lower and upper edge at
    /// each x, shaded in the curve's colour. Null: no band. Points where either edge is not finite (a standard deviation
    /// of one value) get no band.</summary>
    public (IReadOnlyList<double> Lower, IReadOnlyList<double> Upper)? Band { get; init; }

    /// <summary>Checks that the curve can be drawn; the message names the series and the fix.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Name)) throw new ArgumentException("a series needs a name (it labels the legend)");
        if (X.Count != Y.Count)
            throw new ArgumentException($"series '{Name}': {X.Count} x values but {Y.Count} y values; give one y per x");
        if (Band is var (lower, upper) && (lower.Count != X.Count || upper.Count != X.Count))
            throw new ArgumentException($"series '{Name}': {X.Count} x values but a band of {lower.Count} lower and {upper.Count} upper values; give one of each per x");
    }
}

/// <summary>
/// A line chart described as a value: title, axis labels, named series, optional log axes. Written by
/// <see cref="ChartFile"/> as PNG and SVG. Log axes plot log10 of the data with decade ticks (ScottPlot has no native log
/// scale); points that are not positive on a log axis are left out, since they have no place on it.
/// </summary>
public sealed record LineChart(string Title, string XLabel, string YLabel, IReadOnlyList<Series> Series, bool LogX = false, bool LogY = false)
{
    /// <summary>Where the legend sits (with two or more series): pick the corner the curves leave free (rising
    /// accuracy curves leave the lower right), or outside the data area.</summary>
    public LegendCorner Legend { get; init; } = LegendCorner.UpperRight;

    /// <summary>Ticks on whole numbers only along x (epochs, steps): no "1.5" between two epochs.</summary>
    public bool IntegerX { get; init; }

    /// <summary>Named categories along x instead of numbers: category i sits at x = i and its name labels the tick there
    /// (methods of a table, say); the series give one y per category at x = 0, 1, …. Null: a numeric x axis.</summary>
    public IReadOnlyList<string>? XCategories { get; init; }

    /// <summary>Markers only, no line between the points (values per category, not a curve); a band is drawn as error
    /// bars at the points instead of a shaded area.</summary>
    public bool PointsOnly { get; init; }

    /// <summary>The same chart with one more series.</summary>
    public LineChart With(Series series) => this with { Series = [.. Series, series] };
}

/// <summary>Where a chart's legend goes: a corner of the data area, outside it on the right (never over a curve, at the
/// cost of some width; for many series or curves that fill the area), or nowhere (for a panel of a <see cref="Figure"/>
/// whose series, and so their colours, are those of a panel that shows the legend).</summary>
public enum LegendCorner
{
    /// <summary>Inside the data area, top right.</summary>
    UpperRight,
    /// <summary>Inside the data area, bottom right.</summary>
    LowerRight,
    /// <summary>Inside the data area, top left.</summary>
    UpperLeft,
    /// <summary>Inside the data area, bottom left.</summary>
    LowerLeft,
    /// <summary>Outside the data area, to its right: never over a curve; the data area gets narrower.</summary>
    OutsideRight,
    /// <summary>No legend.</summary>
    None,
}

/// <summary>Writes charts to image files.</summary>
public static partial class ChartFile
{
    /// <summary>Default image size in pixels: readable in a README at full width.</summary>
    public const int DefaultWidth = 800, DefaultHeight = 500;

    /// <summary>
    /// Writes <paramref name="chart"/> to <paramref name="path"/>; the extension chooses the format (.png or .svg).
    /// The folder is created when missing. Returns the path written.
    /// </summary>
    public static string Save(LineChart chart, string path, int width = DefaultWidth, int height = DefaultHeight)
    {
        ArgumentNullException.ThrowIfNull(chart);
        if (width < 100 || height < 100) throw new ArgumentOutOfRangeException(nameof(width), $"a chart of {width}×{height} pixels is too small to read; use at least 100×100");
        string extension = Path.GetExtension(path).ToLowerInvariant();
        if (extension is not (".png" or ".svg"))
            throw new ArgumentException($"'{path}': charts are written as .png or .svg; give the file one of these extensions");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        using var plot = Build(chart);
        if (extension == ".png") plot.SavePng(path, width, height);
        else plot.SaveSvg(path, width, height);
        return path;
    }

    /// <summary>Writes the chart as both <c>stem.png</c> and <c>stem.svg</c>; returns both paths.</summary>
    public static (string Png, string Svg) SaveBoth(LineChart chart, string stem, int width = DefaultWidth, int height = DefaultHeight) =>
        (Save(chart, stem + ".png", width, height), Save(chart, stem + ".svg", width, height));

    internal static Plot Build(LineChart chart)
    {
        var plot = new Plot();
        foreach (var series in chart.Series)
        {
            series.Validate();
            var (xs, ys) = Points(series, chart.LogX, chart.LogY);
            var scatter = plot.Add.Scatter(xs, ys);
            scatter.LegendText = series.Name;
            scatter.MarkerSize = chart.PointsOnly ? 8 : xs.Length <= 40 ? 5 : 0;
            scatter.LineWidth = chart.PointsOnly ? 0 : 1.5f;
            if (chart.PointsOnly && series.Band is var (low, high) && BandPoints(series.X, low, high, chart.LogX, chart.LogY) is { X.Length: > 0 } bars)
            {
                // Error bars from the band's edges, around their midpoint (a mean ± its standard deviation is symmetric).
                var errors = plot.Add.ErrorBar(bars.X, [.. bars.Lower.Zip(bars.Upper, (l, u) => (l + u) / 2)], [.. bars.Lower.Zip(bars.Upper, (l, u) => (u - l) / 2)]);
                errors.Color = scatter.Color;
            }
            else if (series.Band is var (lower, upper) && BandPoints(series.X, lower, upper, chart.LogX, chart.LogY) is { X.Length: > 1 } band)
            {
                // Translucent, in the curve's colour, without an outline or a legend entry of its own.
                var fill = plot.Add.FillY(band.X, band.Lower, band.Upper);
                fill.FillColor = scatter.Color.WithAlpha(0.2);
                fill.LineWidth = 0;
            }
        }
        plot.Title(chart.Title);
        plot.XLabel(chart.LogX ? chart.XLabel + " (log scale)" : chart.XLabel);
        plot.YLabel(chart.LogY ? chart.YLabel + " (log scale)" : chart.YLabel);
        if (chart.LogX) plot.Axes.Bottom.TickGenerator = LogTicks();
        else if (chart.IntegerX) plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        if (chart.XCategories is { Count: > 0 } categories)
        {
            plot.Axes.Bottom.SetTicks([.. Enumerable.Range(0, categories.Count).Select(i => (double)i)], [.. categories]);
            plot.Axes.SetLimitsX(-0.5, categories.Count - 0.5);
        }
        if (chart.LogY) plot.Axes.Left.TickGenerator = LogTicks();
        // ScottPlot shows a legend by itself once series have names: hiding it is explicit.
        if (chart.Series.Count < 2 || chart.Legend == LegendCorner.None) plot.HideLegend();
        else if (chart.Legend == LegendCorner.OutsideRight) plot.ShowLegend(Edge.Right);
        else
            plot.ShowLegend(chart.Legend switch
            {
                LegendCorner.LowerRight => Alignment.LowerRight,
                LegendCorner.UpperLeft => Alignment.UpperLeft,
                LegendCorner.LowerLeft => Alignment.LowerLeft,
                _ => Alignment.UpperRight,
            });
        return plot;
    }

    /// <summary>The drawable points: finite values only, log10 of those on a log axis (positive values only).</summary>
    private static (double[] X, double[] Y) Points(Series series, bool logX, bool logY)
    {
        var xs = new List<double>(series.X.Count);
        var ys = new List<double>(series.Y.Count);
        for (int i = 0; i < series.X.Count; i++)
        {
            double x = series.X[i], y = series.Y[i];
            if (!double.IsFinite(x) || !double.IsFinite(y) || (logX && x <= 0) || (logY && y <= 0)) continue;
            xs.Add(logX ? Math.Log10(x) : x);
            ys.Add(logY ? Math.Log10(y) : y);
        }
        return ([.. xs], [.. ys]);
    }

    /// <summary>The band's drawable points: x and both edges finite (and positive on a log axis), mapped like the curve's.</summary>
    private static (double[] X, double[] Lower, double[] Upper) BandPoints(IReadOnlyList<double> x, IReadOnlyList<double> lower, IReadOnlyList<double> upper, bool logX, bool logY)
    {
        var (xs, ls, us) = (new List<double>(), new List<double>(), new List<double>());
        for (int i = 0; i < x.Count; i++)
        {
            double a = x[i], l = lower[i], u = upper[i];
            if (!double.IsFinite(a) || !double.IsFinite(l) || !double.IsFinite(u) || (logX && a <= 0) || (logY && (l <= 0 || u <= 0))) continue;
            xs.Add(logX ? Math.Log10(a) : a);
            ls.Add(logY ? Math.Log10(l) : l);
            us.Add(logY ? Math.Log10(u) : u);
        }
        return ([.. xs], [.. ls], [.. us]);
    }

    /// <summary>Decade labels (1, 10, 100, …) with minor ticks at 2…9 for an axis that carries log10 of the data.</summary>
    /// <summary>10^e written plainly from 0.0001 to 1,000,000 ("10000", not "1E+04"), as 1e7 beyond.</summary>
    private static string DecadeLabel(double exponent)
    {
        int e = (int)Math.Round(exponent);
        return e is >= -4 and <= 6
            ? Math.Pow(10, e).ToString(e < 0 ? "0.####" : "0", CultureInfo.InvariantCulture)
            : string.Create(CultureInfo.InvariantCulture, $"1e{e}");
    }

    private static ScottPlot.TickGenerators.NumericAutomatic LogTicks() => new()
    {
        MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
        IntegerTicksOnly = true,
        LabelFormatter = DecadeLabel,
    };
}
