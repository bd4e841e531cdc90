using System.CommandLine;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>`forwardad plot FILE.csv`: draws any CSV the tool wrote and draws (train, lm, cosine, grape-toy, compare, every
/// study, mixer-table), recognised by its header, with the code the command itself draws it with.</summary>
internal static class PlotCommand
{
    public static DocumentedCommand Create(CliContext context)
    {
        var file = new Argument<string>("file") { Description = "a metrics CSV written by forwardad" };
        var stem = Opt.OptionalString("out").Describe("STEM",
            "write STEM.png and STEM.svg (default: FILE's path without .csv); a study that writes several charts gets them as " +
            "STEM-cosine.png, STEM-rank.png, … as the study names them");
        var command = new DocumentedCommand("plot", "Draw a metrics CSV written by forwardad as PNG and SVG.", "forwardad plot FILE.csv [--out STEM]")
        {
            Summary =
                $"The kind of file is recognised by its header: {Opt.List([.. MetricsPlots.Kinds.Select(k => k.Name)])} (the CSVs of the " +
                "commands of these names). The figures are those the command itself writes, titled with the run: the file's name " +
                "and what the file says of the run (configuration, variant, seeds). FILE.csv is the metrics CSV to draw.",
        };
        command.Add(file);
        command.Section("Options", [stem]);
        command.SetAction(p =>
        {
            var path = p.GetValue(file)!;
            var output = p.GetValue(stem);
            if (output is not null && (output.Length == 0 || Directory.Exists(output) || output.EndsWith('/') || output.EndsWith(Path.DirectorySeparatorChar)))
                throw new UsageException($"--out {output}: give a file path without extension (STEM: STEM.png and STEM.svg are written), not a folder.");
            var (files, kind) = MetricsPlots.DrawAll(path, output);
            context.Console.MarkupLineInterpolated($"{kind} metrics {path}: plot in {string.Join(", ", files.Select(f => $"{f.Png} and {f.Svg}"))}");
            return Cli.Success;
        });
        return command;
    }
}
