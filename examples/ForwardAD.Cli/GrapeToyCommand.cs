using System.CommandLine;
using System.Globalization;
using ForwardAD.Optim;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class GrapeToyCommand
{
    public static DocumentedCommand Create(CliContext context)
    {
        var size = Opt.Int("size", 200, min: 2, max: 46_340).Describe("N", "target size, 2 to 46340 (N² must fit one array)");
        var steps = Opt.Int("steps", 50, min: 1, max: 1_000_000).Describe("S", "feedback-rule steps");
        var seeds = Opt.Int("seeds", 10, min: 1, max: 1_000_000).Describe("K", "seeds 1 … K per rule and start");
        var lr = Opt.Float("lr", 0.1f, v => v >= 0, "a number ≥ 0").Describe("ETA", "initial η ≥ 0");
        var decay = Opt.Float("decay", 0.99f, v => v > 0, "a number > 0").Describe("D", "η multiplied by D > 0 every step");
        var noise = Opt.Float("noise", 1e-3f, v => v >= 0, "a number ≥ 0").Describe("S",
            "noise scale ≥ 0 of the noisy original rule, per entry (B's rows have unit norm, so entries are about 1/√N)");
        var csv = Opt.String("csv", Path.Combine("runs", "grape-toy.csv")).Describe("PATH",
            "every step; beside it its plot (.png and .svg: one panel per rule, the mean row-cosine over the steps per start)");
        var noPlot = Opt.Flag("no-plot").Describe("", "write no plot");
        var command = new DocumentedCommand("grape-toy", "The toy experiment of the GrAPE rebuttal.", "forwardad grape-toy [options]")
        {
            Summary =
                "A fixed N×N target matrix T; B starts with mean row-cosine to T of −0.9, −0.3, 0, 0.3 and 0.9; S steps of each " +
                "feedback rule with η decayed by D per step; K seeds. Rules: the original rule without noise and with noise (both " +
                "renormalised to the initial norm), alternative 1 and alternative 2. Prints the final mean row-cosine per rule and " +
                "start, and writes every step to a CSV.",
        };
        command.Section("Options", [size, steps, seeds, lr, decay, noise, csv, noPlot]);
        command.SetAction(p => Run(context, p.GetValue(size), p.GetValue(steps), p.GetValue(seeds), p.GetValue(lr), p.GetValue(decay), p.GetValue(noise), p.GetValue(csv)!, !p.GetValue(noPlot)));
        return command;
    }

    private static int Run(CliContext context, int size, int steps, int seeds, float eta, float decay, float noise, string csv, bool plot)
    {
        if (Directory.Exists(csv)) throw new IOException($"--csv {csv}: is a directory; give a file path.");
        var console = context.Console;
        var rate = Schedule.Exponential(eta, decay);
        var rules = new (string Label, FeedbackRule Rule)[]
        {
            ("original, no noise", FeedbackRules.Original(rate, noise: 0f)),
            ("original, noise", FeedbackRules.Original(rate, noise)),
            ("alternative 1", FeedbackRules.Alternative1(rate)),
            ("alternative 2", FeedbackRules.Alternative2(rate)),
        };
        double[] starts = [-0.9, -0.3, 0, 0.3, 0.9];
        var runs = new List<ToyTrajectory>();
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] grape-toy: {size}×{size} target, {steps} steps, η {eta} ×{decay}/step, {seeds} seeds, noise {noise}");
        foreach (var (label, rule) in rules)
            foreach (var start in starts)
                for (int s = 0; s < seeds; s++)
                    runs.Add(GrapeToy.Run(label, rule, start, (ulong)(s + 1), size, steps));

        var table = new Table().AddColumn("rule");
        foreach (var start in starts) table.AddColumn(new TableColumn($"start {start:+0.0;-0.0;0}").RightAligned());
        foreach (var (label, _) in rules)
            table.AddRow([label, .. starts.Select(start =>
            {
                var finals = runs.Where(r => r.Rule == label && r.Start == start).Select(r => r.MeanRowCosine[^1]).ToArray();
                double mean = finals.Average(), std = Math.Sqrt(finals.Sum(v => (v - mean) * (v - mean)) / Math.Max(1, finals.Length - 1));
                return $"{Math.Round(mean, 3):+0.000;-0.000;0.000} ± {std:0.000}";
            })]);
        console.Write(table);

        AtomicFile.WriteAllLines(csv, runs.SelectMany(r => r.MeanRowCosine.Select((c, step) => string.Join(',', $"\"{r.Rule}\"",
            r.Start.ToString(CultureInfo.InvariantCulture), r.Seed, step, c.ToString("G6", CultureInfo.InvariantCulture))))
            .Prepend("rule,start,seed,step,mean_row_cosine"));
        console.MarkupLineInterpolated($"every step in {csv}");
        if (plot)
        {
            var (png, svg, _) = MetricsPlots.Draw(csv);
            console.MarkupLineInterpolated($"plot in {png} and {svg}");
        }
        return Cli.Success;
    }
}
