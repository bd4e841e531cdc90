using System.CommandLine;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>`forwardad plot FILE.csv`: draws any metrics CSV the tool wrote, recognised by its header.</summary>
internal static class PlotCommand
{
    public static readonly string Help = $"""
        forwardad plot FILE.csv [--out STEM]   Draw a metrics CSV written by forwardad as PNG and SVG.

        The kind of file is recognised by its header: {Opt.List([.. MetricsPlots.Kinds.Select(k => k.Name)])}
        (the CSVs of the commands of these names). The figure is the one the command itself writes.

          FILE.csv                  the metrics CSV
          --out STEM                write STEM.png and STEM.svg (default: FILE's path without .csv)
        """;

    public static Command Create(CliContext context)
    {
        var file = new Argument<string>("file") { Description = "a metrics CSV written by forwardad" };
        var stem = Opt.OptionalString("out");
        var command = new Command("plot", "Draw a metrics CSV written by forwardad.") { file, stem };
        command.SetAction(p =>
        {
            var path = p.GetValue(file)!;
            var output = p.GetValue(stem);
            if (output is not null && (output.Length == 0 || Directory.Exists(output) || output.EndsWith('/') || output.EndsWith(Path.DirectorySeparatorChar)))
                throw new UsageException($"--out {output}: give a file path without extension (STEM: STEM.png and STEM.svg are written), not a folder.");
            var (png, svg, kind) = MetricsPlots.Draw(path, output);
            context.Console.MarkupLineInterpolated($"{kind} metrics {path}: plot in {png} and {svg}");
            return Cli.Success;
        });
        return command;
    }
}
