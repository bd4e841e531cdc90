using ScottPlot;
using SkiaSharp;

namespace ForwardAD.Plots;

/// <summary>
/// Several charts in one image, as a value: a grid of <paramref name="Columns"/> columns filled row by row, each
/// panel a <see cref="LineChart"/> with its own title, axes and legend (curves that share an x axis but not a y unit,
/// such as accuracy and cosine per epoch, read best side by side rather than on one scale).
/// </summary>
public sealed record Figure(IReadOnlyList<LineChart> Panels, int Columns)
{
    /// <summary>Height in pixels of the band above the panels that holds the figure's <see cref="Title"/>.</summary>
    public const int TitleHeight = 36;

    /// <summary>The title of the whole figure (which run it shows), centred in a band of <see cref="TitleHeight"/> pixels
    /// above the panels; null or empty: no band. Text too wide for the figure is drawn smaller.</summary>
    public string? Title { get; init; }

    /// <summary>Rows of the grid: as many as the panels need.</summary>
    public int Rows => Columns < 1 ? 0 : (Panels.Count + Columns - 1) / Columns;

    /// <summary>The height of the title band: <see cref="TitleHeight"/> with a title, 0 without.</summary>
    public int TitleBand => string.IsNullOrEmpty(Title) ? 0 : TitleHeight;

    /// <summary>The size of a figure whose every panel is <paramref name="panelWidth"/>×<paramref name="panelHeight"/> pixels
    /// (with the title band above them when the figure has a title).</summary>
    public (int Width, int Height) Size(int panelWidth, int panelHeight) => (Columns * panelWidth, Rows * panelHeight + TitleBand);
}

public static partial class ChartFile
{
    /// <summary>
    /// Writes <paramref name="figure"/> to <paramref name="path"/> (.png or .svg) at <paramref name="width"/>×<paramref name="height"/>
    /// pixels, the panels sharing the area below the title band (if any) equally. The folder is created when missing. Returns the path written.
    /// </summary>
    public static string Save(Figure figure, string path, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(figure);
        if (figure.Panels.Count == 0) throw new ArgumentException("a figure needs at least one panel");
        if (figure.Columns < 1) throw new ArgumentOutOfRangeException(nameof(figure), $"a figure needs at least one column; got {figure.Columns}");
        int band = figure.TitleBand;
        int panelWidth = width / figure.Columns, panelHeight = (height - band) / figure.Rows;
        if (panelWidth < 100 || panelHeight < 100)
            throw new ArgumentOutOfRangeException(nameof(width), $"{figure.Panels.Count} panels in {width}×{height} pixels leave {panelWidth}×{panelHeight} each, too small to read; use at least 100×100 per panel");
        string extension = Path.GetExtension(path).ToLowerInvariant();
        if (extension is not (".png" or ".svg"))
            throw new ArgumentException($"'{path}': figures are written as .png or .svg; give the file one of these extensions");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);

        var plots = figure.Panels.Select(Build).ToList();
        try
        {
            void Draw(SKCanvas canvas)
            {
                canvas.Clear(SKColors.White);
                if (band > 0) DrawTitle(canvas, figure.Title!, width, band);
                for (int i = 0; i < plots.Count; i++)
                {
                    // Each panel drawn as a whole plot of the panel's size, moved to its cell and clipped to it (a plot
                    // clears and lays out the canvas it is given, so it gets a canvas that is only its cell).
                    canvas.Save();
                    canvas.Translate(i % figure.Columns * panelWidth, band + i / figure.Columns * panelHeight);
                    canvas.ClipRect(new SKRect(0, 0, panelWidth, panelHeight));
                    plots[i].Render(canvas, panelWidth, panelHeight);
                    canvas.Restore();
                }
            }
            if (extension == ".png")
            {
                using var surface = SKSurface.Create(new SKImageInfo(width, height)) ?? throw new InvalidOperationException($"'{path}': Skia could not create a {width}×{height} surface");
                Draw(surface.Canvas);
                using var image = surface.Snapshot();
                using var data = image.Encode(SKEncodedImageFormat.Png, 100);
                using var file = File.Create(path);
                data.SaveTo(file);
            }
            else
            {
                using var file = File.Create(path);
                // The SVG canvas writes the document when disposed, before the file is closed.
                using (var canvas = SKSvgCanvas.Create(new SKRect(0, 0, width, height), file)) Draw(canvas);
            }
        }
        finally
        {
            foreach (var plot in plots) plot.Dispose();
        }
        return path;
    }

    /// <summary>The figure's title, bold and centred in the band at the top; scaled down to fit the width.</summary>
    private static void DrawTitle(SKCanvas canvas, string title, int width, int band)
    {
        using var typeface = SKTypeface.FromFamilyName(Fonts.Default, SKFontStyle.Bold);
        using var font = new SKFont(typeface, 18);
        // A margin of 20 pixels each side, and 5 % for what the measure leaves out (the bold face as drawn).
        float measured = 1.05f * font.MeasureText(title), room = width - 40;
        if (measured > room) font.Size = Math.Max(8, font.Size * room / measured);
        using var paint = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        canvas.DrawText(title, width / 2f, band / 2f + font.Size / 3, SKTextAlign.Center, font, paint);
    }

    /// <summary>Writes the figure as both <c>stem.png</c> and <c>stem.svg</c>; returns both paths.</summary>
    public static (string Png, string Svg) SaveBoth(Figure figure, string stem, int width, int height) =>
        (Save(figure, stem + ".png", width, height), Save(figure, stem + ".svg", width, height));
}
