using System.Buffers.Binary;
using System.Xml.Linq;
using ForwardAD.Plots;

namespace ForwardAD.Tests;

/// <summary>Charts are written as real image files: a PNG whose header carries the asked size, an SVG document of that size.</summary>
public sealed class PlotTests : IDisposable
{
    private readonly string folder = Directory.CreateTempSubdirectory("forwardad-plots-").FullName;

    public void Dispose() => Directory.Delete(folder, recursive: true);

    private static LineChart Example(bool logX = false) => new(
        "cosine against guesses", "guesses", "cosine",
        [new Series("Wᵀ", [2, 8, 32, 128], [0.1, 0.2, 0.25, 0.26]), new Series("activation perturbation", [2, 8, 32, 128], [0.01, 0.03, 0.06, 0.12])],
        LogX: logX);

    /// <summary>Reads width and height from a PNG's IHDR chunk (bytes 16–23, big-endian), after checking the signature.</summary>
    public static (int Width, int Height) PngSize(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 24, $"{path}: {bytes.Length} bytes is no PNG");
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A], bytes[..8]);
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        return (BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
    }

    /// <summary>Parses an SVG file as XML and returns its root's width and height attributes.</summary>
    public static (double Width, double Height) SvgSize(string path)
    {
        var root = XDocument.Load(path).Root!;
        Assert.Equal("svg", root.Name.LocalName);
        return (double.Parse(root.Attribute("width")!.Value.TrimEnd('p', 'x'), System.Globalization.CultureInfo.InvariantCulture),
                double.Parse(root.Attribute("height")!.Value.TrimEnd('p', 'x'), System.Globalization.CultureInfo.InvariantCulture));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Writes_png_and_svg_of_the_asked_size(bool logX)
    {
        var (png, svg) = ChartFile.SaveBoth(Example(logX), Path.Combine(folder, "sub", "chart"), 640, 400);
        Assert.Equal((640, 400), PngSize(png));
        Assert.Equal((640.0, 400.0), SvgSize(svg));
        Assert.Contains("activation perturbation", File.ReadAllText(svg));
    }

    [Fact]
    public void Bad_requests_name_the_fix()
    {
        var e = Assert.Throws<ArgumentException>(() => ChartFile.Save(Example(), Path.Combine(folder, "chart.jpg")));
        Assert.Contains(".png or .svg", e.Message);
        var mismatch = Example().With(new Series("broken", [1, 2], [1]));
        e = Assert.Throws<ArgumentException>(() => ChartFile.Save(mismatch, Path.Combine(folder, "chart.png")));
        Assert.Contains("series 'broken'", e.Message);
    }

    [Fact]
    public void A_figure_draws_its_panels_side_by_side_in_one_png_and_svg()
    {
        var accuracy = new LineChart("accuracy", "epoch", "accuracy", [new Series("train", [1, 2, 3], [0.5, 0.8, 0.9])]) { Legend = LegendCorner.LowerRight };
        var figure = new Figure([Example(), accuracy, Example(logX: true) with { Legend = LegendCorner.OutsideRight }], Columns: 2);
        Assert.Equal(2, figure.Rows);
        Assert.Equal((600, 500), figure.Size(300, 250));
        var (png, svg) = ChartFile.SaveBoth(figure, Path.Combine(folder, "figure"), 600, 500);
        Assert.Equal((600, 500), PngSize(png));
        Assert.Equal((600.0, 500.0), SvgSize(svg));
        var text = File.ReadAllText(svg);
        Assert.Contains("activation perturbation", text); // a legend of the first panel
        Assert.Contains("accuracy", text);                // the second panel's title
        Assert.Contains("(log scale)", text);             // the third panel's axis
    }

    [Fact]
    public void A_figure_too_small_for_its_panels_names_the_size_per_panel()
    {
        var figure = new Figure([Example(), Example(), Example()], Columns: 3);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ChartFile.Save(figure, Path.Combine(folder, "small.png"), 240, 400));
        Assert.Contains("80×400 each", e.Message);
        Assert.Throws<ArgumentException>(() => ChartFile.Save(new Figure([], 1), Path.Combine(folder, "empty.png"), 400, 400));
    }

    /// <summary>An epoch axis gets whole-number ticks only (no "1.5" between epochs 1 and 2), and accuracy is drawn in percent,
    /// as the console prints it: the tick labels of the SVG say so.</summary>
    [Fact]
    public void Epoch_axes_tick_whole_numbers_and_accuracy_is_in_percent()
    {
        var csv = Path.Combine(folder, "train.csv");
        var reports = Enumerable.Range(0, 3).Select(e => new Training.EpochReport(e, 1.0 / (e + 1), 0.5 + 0.1 * e, 1.0 / (e + 1), 0.45 + 0.1 * e,
            [0.1, 0.2], 0.15, 1000, TimeSpan.FromSeconds(1))).ToList();
        Cli.MetricsFile.Write(csv, reports, "run", ["conv1", "head"], []);
        var (_, svg, _) = Cli.MetricsPlots.Draw(csv);
        var labels = XDocument.Load(svg).Descendants().Where(e => e.Name.LocalName == "text").Select(e => e.Value.Trim()).ToList();
        Assert.Contains("accuracy (%)", labels);
        Assert.Contains("conv1", labels);                  // legends by layer name
        Assert.Contains("global (all parameters)", labels);
        Assert.DoesNotContain("1.5", labels);
        Assert.DoesNotContain("2.5", labels);
        Assert.Contains(labels, l => l == "65" || l == "60" || l == "64"); // accuracies 45–65 %, not 0.45–0.65
    }
}
