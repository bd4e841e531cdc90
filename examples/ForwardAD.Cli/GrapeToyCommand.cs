using System.Globalization;
using ForwardAD.Optim;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class GrapeToyCommand
{
    public const string Help = """
        forwardad grape-toy [options]  The toy experiment of the GrAPE rebuttal.

        A fixed 200×200 target matrix T; B starts with mean row-cosine to T of −0.9, −0.3, 0, 0.3 and 0.9;
        50 steps of each feedback rule with η = 0.1 decayed ×0.99 per step; 10 seeds. Rules: the original
        rule without noise and with noise (both renormalised to the initial norm), alternative 1 and
        alternative 2. Prints the final mean row-cosine per rule and start, and writes every step to a CSV.

          --size N          target size (default 200)
          --steps S         (default 50)
          --seeds K         (default 10)
          --lr ETA          initial η (default 0.1)
          --decay D         η multiplied by D every step (default 0.99)
          --noise S         noise scale of the noisy original rule, per entry (default 0.001;
                            B's rows have unit norm, so entries are about 1/√N)
          --csv PATH        every step (default runs/grape-toy.csv)
        """;

    public static int Run(string[] args)
    {
        var options = new Options(args, new HashSet<string>());
        int size = options.Int("size", 200, min: 2), steps = options.Int("steps", 50, min: 1), seeds = options.Int("seeds", 10, min: 1);
        float eta = options.Float("lr", 0.1f), decay = options.Float("decay", 0.99f), noise = options.Float("noise", 1e-3f);
        var csv = options.String("csv", Path.Combine("runs", "grape-toy.csv"));
        options.RejectUnknown();
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
        AnsiConsole.MarkupLineInterpolated($"[bold]ForwardAD[/] grape-toy: {size}×{size} target, {steps} steps, η {eta} ×{decay}/step, {seeds} seeds, noise {noise}");
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
        AnsiConsole.Write(table);

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(csv))!);
        var temporary = csv + ".tmp";
        File.WriteAllLines(temporary, runs.SelectMany(r => r.MeanRowCosine.Select((c, step) => string.Join(',', $"\"{r.Rule}\"",
            r.Start.ToString(CultureInfo.InvariantCulture), r.Seed, step, c.ToString("G6", CultureInfo.InvariantCulture))))
            .Prepend("rule,start,seed,step,mean_row_cosine"));
        File.Move(temporary, csv, overwrite: true);
        AnsiConsole.MarkupLineInterpolated($"every step in {csv}");
        return 0;
    }
}
