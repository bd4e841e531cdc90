using System.Collections.Immutable;
using System.Globalization;
using System.Text;

namespace ForwardAD.Cli;

/// <summary>The mean and the sample standard deviation (divisor n − 1) of the finite values given; the deviation is
/// undefined (NaN) for fewer than two values, and both are NaN for none.</summary>
internal readonly record struct SampleStatistics(int Count, double Mean, double StandardDeviation)
{
    public static SampleStatistics Of(IEnumerable<double> values)
    {
        var finite = values.Where(double.IsFinite).ToList();
        if (finite.Count == 0) return new(0, double.NaN, double.NaN);
        double mean = finite.Sum() / finite.Count;
        // Two passes: the deviations from the mean, not E[x²] − E[x]², which cancels for accuracies close together.
        double squares = finite.Sum(v => (v - mean) * (v - mean));
        return new(finite.Count, mean, finite.Count < 2 ? double.NaN : Math.Sqrt(squares / (finite.Count - 1)));
    }

    /// <summary>"93.61 ± 0.42" in percent (<paramref name="percent"/>) or as is; "93.61 ± n/a" for one value (no deviation
    /// from one seed); "–" for none.</summary>
    public string Format(bool percent, string format = "F2")
    {
        if (Count == 0) return "–";
        double scale = percent ? 100 : 1;
        var mean = (scale * Mean).ToString(format, CultureInfo.InvariantCulture);
        return double.IsNaN(StandardDeviation) ? $"{mean} ± n/a" : $"{mean} ± {(scale * StandardDeviation).ToString(format, CultureInfo.InvariantCulture)}";
    }
}

/// <summary>One run with its record and, when it succeeded, its curves.</summary>
internal sealed record RunResult(SweepRun Run, RunRecord Record, RunCurves? Curves)
{
    public bool Succeeded => Record.Succeeded && Curves is not null;

    /// <summary>The last evaluation's value of a metric (NaN for a failed run).</summary>
    public double Final(SweepMetric metric) => Curves is { Points: > 0 } c ? c[metric][^1] : double.NaN;

    /// <summary>The evaluation (0-based row) with the best validation value by <paramref name="selectBy"/>; -1 without validation.</summary>
    public int BestPoint(SweepMetric selectBy)
    {
        if (Curves is null) return -1;
        var values = Curves[selectBy];
        int best = -1;
        for (int i = 0; i < values.Length; i++)
            if (double.IsFinite(values[i]) && (best < 0 || selectBy.Better(values[i], values[best]))) best = i;
        return best;
    }
}

/// <summary>The runs of one configuration (every axis but the seed), with their statistics over the seeds (final
/// evaluation: the last epoch of train, the last step of lm).</summary>
internal sealed class SweepConfiguration(ImmutableArray<(string Axis, string Value)> values, List<RunResult> runs)
{
    public ImmutableArray<(string Axis, string Value)> Values { get; } = values;
    public List<RunResult> Runs { get; } = runs;
    public IEnumerable<RunResult> Succeeded => Runs.Where(r => r.Succeeded);
    public int Failed => Runs.Count(r => !r.Succeeded);
    public bool Selected { get; set; }

    public string Label => Values.IsEmpty ? "all runs" : string.Join(' ', Values.Select(v => $"{v.Axis}={v.Value}"));

    public SampleStatistics Statistic(SweepMetric metric) => SampleStatistics.Of(Succeeded.Select(r => r.Final(metric)));
}

/// <summary>
/// The aggregate of a sweep: every run (ok or failed: none is dropped), the configurations (runs grouped over the seed
/// axis), and per method (the values of every axis but the seed and the tuned ones) the tuned values chosen on the
/// validation split: the configuration with the best mean final validation metric among those whose every run
/// succeeded (ties: the first in grid order). The test metrics of that choice are reported, never consulted.
/// </summary>
internal sealed class SweepSummary
{
    public const string SeedAxis = "seed";

    public SweepSummary(SweptCommand command, SweepGrid grid, IReadOnlyList<RunResult> results, IReadOnlyList<string> tune, SweepMetric? selectBy)
    {
        Command = command;
        Grid = grid;
        Results = results;
        SelectBy = selectBy;
        Tuned = [.. tune.Where(t => grid.Axes.Any(a => a.Name == t))];
        Configurations = [.. results.GroupBy(r => Key(r.Run.Values, [SeedAxis]))
            .Select(g => new SweepConfiguration([.. g.First().Run.Values.Where(v => v.Axis != SeedAxis)], [.. g]))];
        if (selectBy is not null && Tuned.Length > 0)
            foreach (var method in Configurations.GroupBy(c => Key(c.Values, Tuned)))
            {
                SweepConfiguration? best = null;
                double bestValue = double.NaN;
                foreach (var candidate in method.Where(c => c.Failed == 0 && c.Succeeded.Any()))
                {
                    double value = candidate.Statistic(selectBy).Mean;
                    if (!double.IsFinite(value)) continue;
                    if (best is null || selectBy.Better(value, bestValue)) (best, bestValue) = (candidate, value);
                }
                if (best is not null) best.Selected = true;
                Methods.Add((method.First().Values.Where(v => !Tuned.Contains(v.Axis)).ToImmutableArray(), best, [.. method]));
            }
    }

    /// <summary>What was swept: its metrics, how its runs are read and reported.</summary>
    public SweptCommand Command { get; }
    public SweepGrid Grid { get; }
    public IReadOnlyList<RunResult> Results { get; }
    public SweepMetric? SelectBy { get; }
    public ImmutableArray<string> Tuned { get; }
    public List<SweepConfiguration> Configurations { get; }

    /// <summary>Per method: its values, the selected configuration (null when every candidate had a failed run), its candidates.</summary>
    public List<(ImmutableArray<(string Axis, string Value)> Values, SweepConfiguration? Selected, List<SweepConfiguration> Candidates)> Methods { get; } = [];

    public bool HasValidation => Results.Any(r => r.Curves is { } c && c[Command.ValidationHeadline].Any(double.IsFinite));

    private static string Key(IEnumerable<(string Axis, string Value)> values, IReadOnlyCollection<string> without) =>
        string.Join('\0', values.Where(v => !without.Contains(v.Axis)).Select(v => $"{v.Axis}={v.Value}"));

    /// <summary>Results for every run in grid order: each run's record, and its curves when it succeeded. A run recorded
    /// ok whose metrics can no longer be read is reported failed, with the reason.</summary>
    public static List<RunResult> Collect(SweptCommand command, string output, IEnumerable<(SweepRun Run, RunRecord Record)> runs) =>
        [.. runs.OrderBy(r => r.Run.Index).Select(r =>
        {
            if (!r.Record.Succeeded) return new RunResult(r.Run, r.Record, null);
            var metrics = RunPaths.Of(output, r.Run).Metrics;
            try { return new RunResult(r.Run, r.Record, command.ReadCurves(metrics)); }
            catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
            {
                return new RunResult(r.Run, r.Record with { Status = RunRecord.Failed, ErrorTail = [.. r.Record.ErrorTail, $"error: {e.Message}"] }, null);
            }
        })];

    // ---- files --------------------------------------------------------------------------------------------------------

    /// <summary>sweep.csv: one row per run, ok or failed.</summary>
    public void WriteRuns(string path)
    {
        var metric = SelectBy ?? Command.DefaultSelection;
        var (validation, test, progress) = (Command.ValidationHeadline, Command.TestHeadline, Command.Progress);
        var lines = new List<string>
        {
            string.Join(',', Grid.Axes.Select(a => a.Name).Concat(["status", "exit_code", $"{progress}s"]).Concat(Command.RunColumns.Select(m => m.Name))
                .Concat([$"best_{progress}", $"{validation.Name}_at_best_{progress}", $"{test.Name}_at_best_{progress}", "wall_seconds", "error", "folder"]).Select(Csv)),
        };
        foreach (var r in Results)
        {
            int best = r.BestPoint(metric);
            double At(SweepMetric m) => best < 0 ? double.NaN : r.Curves![m][best];
            // The last epoch of train (its number is the count of epochs), the last step of lm.
            int done = r.Curves is { Points: > 0 } c ? (int)c.Progress[^1] : 0;
            lines.Add(string.Join(',', Grid.Axes.Select(a => r.Run.ValueOf(a.Name) ?? "").Concat(
            [
                r.Succeeded ? RunRecord.Ok : RunRecord.Failed, I(r.Record.ExitCode), I(done),
                .. Command.RunColumns.Select(m => G(r.Final(m))),
                best < 0 ? "" : I((int)r.Curves!.Progress[best]), G(At(validation)), G(At(test)),
                r.Record.WallSeconds.ToString("F2", CultureInfo.InvariantCulture), r.Succeeded ? "" : r.Record.Reason, Path.Combine("runs", r.Run.Folder),
            ]).Select(Csv)));
        }
        AtomicFile.WriteAllLines(path, lines);
    }

    /// <summary>summary.csv: one row per configuration, statistics over its seeds' final evaluations.</summary>
    public void WriteConfigurations(string path)
    {
        var axes = Grid.Axes.Where(a => a.Name != SeedAxis).Select(a => a.Name).ToList();
        var lines = new List<string>
        {
            string.Join(',', axes.Concat(["runs", "ok", "failed", "seeds"]).Concat(Command.SummaryColumns.SelectMany(m => (string[])[$"{m.Name}_mean", $"{m.Name}_sd"]))
                .Concat(["selected"]).Select(Csv)),
        };
        foreach (var c in Configurations)
        {
            lines.Add(string.Join(',', axes.Select(a => c.Values.First(v => v.Axis == a).Value).Concat(
            [
                I(c.Runs.Count), I(c.Succeeded.Count()), I(c.Failed), Seeds(c.Succeeded),
                .. Command.SummaryColumns.Select(c.Statistic).SelectMany(s => (string[])[G(s.Mean), G(s.StandardDeviation)]),
                SelectBy is null || Tuned.IsEmpty ? "" : c.Selected ? "yes" : "no",
            ]).Select(Csv)));
        }
        AtomicFile.WriteAllLines(path, lines);
    }

    /// <summary>summary.md: the selection per method, every configuration, the failed runs, and how to reproduce it.</summary>
    public string Markdown(string reproduction)
    {
        var md = new StringBuilder();
        int ok = Results.Count(r => r.Succeeded);
        md.Append(CultureInfo.InvariantCulture, $"# Sweep: {Grid}\n\n");
        md.Append(CultureInfo.InvariantCulture, $"{Results.Count} runs: {ok} ok, {Results.Count - ok} failed. Reproduce (finished runs are not repeated):\n\n");
        md.Append("```bash\n").Append(reproduction).Append("\n```\n\n");
        var seeds = Grid.Axes.FirstOrDefault(a => a.Name == SeedAxis);
        md.Append(seeds is null
            ? "One run per configuration (no seed axis): no standard deviation. "
            : $"Seeds {string.Join(", ", seeds.Values)}: n = {seeds.Values.Length} per configuration (fewer where a run failed). ");
        md.Append(Command.Units).Append(", mean ± sample standard deviation (n − 1) over the seeds; ± n/a: one seed, no deviation.\n\n");
        if (Tuned.IsEmpty)
            md.Append("Nothing tuned (no --tune axis in the grid): every configuration is shown below.\n\n");
        else if (SelectBy is null)
            md.Append(CultureInfo.InvariantCulture, $"No validation split (--validation-fraction): {Opt.List([.. Tuned])} not selected.\n\n");
        else
        {
            var tuned = Opt.List([.. Tuned]);
            md.Append(CultureInfo.InvariantCulture, $"## Selected {tuned} per method\n\n");
            var reported = Command.Reported.Select(m => m.Description).ToList();
            md.Append(CultureInfo.InvariantCulture, $"Chosen by the mean final-{Command.Progress} {SelectBy.Description} over the seeds on the validation split carved from the training set (--validation-fraction), ")
              .Append(CultureInfo.InvariantCulture, $"among the candidates whose every run succeeded; the test set is not consulted. The {Both(reported)} {(reported.Count == 1 ? "is that" : "are those")} of the chosen configuration.\n\n");
            var methodAxes = Grid.Axes.Select(a => a.Name).Where(n => n != SeedAxis && !Tuned.Contains(n)).ToList();
            md.Append("| ").Append(string.Join(" | ", methodAxes.Concat(Tuned).Concat(["n", SelectBy.Description]).Concat(reported))).Append(" |\n|");
            md.Append(string.Concat(methodAxes.Concat(Tuned).Select(_ => "---|"))).Append("---:|---:|").Append(string.Concat(reported.Select(_ => "---:|"))).Append('\n');
            foreach (var (values, selected, candidates) in Methods)
            {
                var cells = methodAxes.Select(a => values.First(v => v.Axis == a).Value).ToList();
                if (selected is null)
                {
                    cells.AddRange(Tuned.Select(_ => "none"));
                    cells.AddRange(["0", $"every candidate had a failed run ({candidates.Sum(c => c.Failed)} failed)", .. reported.Select(_ => "–")]);
                }
                else
                {
                    cells.AddRange(Tuned.Select(t => selected.Values.First(v => v.Axis == t).Value));
                    cells.AddRange([I(selected.Succeeded.Count()), selected.Statistic(SelectBy).Format(SelectBy.Percent, SelectBy.Format),
                        .. Command.Reported.Select(m => selected.Statistic(m).Format(m.Percent, m.Format))]);
                }
                md.Append("| ").Append(string.Join(" | ", cells.Select(EscapeCell))).Append(" |\n");
            }
            md.Append('\n');
        }
        md.Append("## Every configuration\n\n");
        var axes = Grid.Axes.Select(a => a.Name).Where(n => n != SeedAxis).ToList();
        bool validated = HasValidation;
        var headers = axes.Concat(["n", "failed"]).Concat(validated ? [Command.ValidationHeadline.Description] : []).Concat(Command.Reported.Select(m => m.Description)).Concat(SelectBy is not null && !Tuned.IsEmpty ? ["selected"] : []).ToList();
        md.Append("| ").Append(string.Join(" | ", headers)).Append(" |\n|").Append(string.Concat(axes.Select(_ => "---|"))).Append(string.Concat(headers.Skip(axes.Count).Select(_ => "---:|"))).Append('\n');
        foreach (var c in Configurations)
        {
            var cells = axes.Select(a => c.Values.First(v => v.Axis == a).Value).ToList();
            cells.AddRange([I(c.Succeeded.Count()), I(c.Failed)]);
            if (validated) cells.Add(c.Statistic(Command.ValidationHeadline).Format(Command.ValidationHeadline.Percent, Command.ValidationHeadline.Format));
            cells.AddRange(Command.Reported.Select(m => c.Statistic(m).Format(m.Percent, m.Format)));
            if (SelectBy is not null && !Tuned.IsEmpty) cells.Add(c.Selected ? "yes" : "");
            md.Append("| ").Append(string.Join(" | ", cells.Select(EscapeCell))).Append(" |\n");
        }
        var failed = Results.Where(r => !r.Succeeded).ToList();
        if (failed.Count > 0)
        {
            md.Append("\n## Failed runs\n\nRerunning the sweep retries them; their logs are in their folders.\n\n| run | exit code | last error | folder |\n|---|---:|---|---|\n");
            foreach (var r in failed)
                md.Append(CultureInfo.InvariantCulture, $"| {EscapeCell(r.Run.Label)} | {r.Record.ExitCode} | {EscapeCell(r.Record.Reason)} | runs/{r.Run.Folder} |\n");
        }
        return md.ToString();
    }

    /// <summary>"test accuracy"; "test bits/char and test accuracy".</summary>
    private static string Both(IReadOnlyList<string> names) =>
        names.Count == 1 ? names[0] : $"{string.Join(", ", names.Take(names.Count - 1))} and {names[^1]}";

    private static string Seeds(IEnumerable<RunResult> runs) => string.Join(' ', runs.Select(r => r.Run.ValueOf(SeedAxis)).OfType<string>());

    private static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    private static string G(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>A CSV field: quoted when it holds a comma, a quote or a line break (quotes doubled).</summary>
    public static string Csv(string field) =>
        field.AsSpan().IndexOfAny(",\"\n\r") < 0 ? field : "\"" + field.Replace("\"", "\"\"") + "\"";

    private static string EscapeCell(string text) => text.Replace("|", "\\|").Replace("\n", " ");
}
