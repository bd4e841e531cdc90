using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>
/// `forwardad sweep`: a grid of train or lm runs (methods × learning rates × seeds × any option of the command), one
/// process per run, resumable, aggregated over the seeds, with the learning rate of every method chosen on a validation
/// split of the training set. What differs between train and lm (metrics, how a run is read) is in <see cref="SweptCommand"/>.
/// </summary>
internal static class SweepCommand
{
    /// <summary>The axes chosen per method by default (declared before the options, whose descriptions use it).</summary>
    public static readonly string[] DefaultTune = ["lr"];

    private sealed class Options
    {
        public readonly Option<string> Out = Opt.String("out", Path.Combine("runs", "sweep")).Describe("DIR", "claimed while the sweep runs: a second sweep on it is refused");
        public readonly Option<string?> Config = Opt.OptionalString("config").Describe("FILE", "axes and options from a file (format below); --grid adds axes after its own");
        public readonly Option<string[]> Grid = new Option<string[]>("--grid")
        {
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
            CustomParser = r =>
            {
                foreach (var token in r.Tokens)
                    if (token.Value.StartsWith("--", StringComparison.Ordinal))
                        r.AddError($"--grid needs NAME=V1,V2,...; got the option '{token.Value}' instead.");
                return [.. r.Tokens.Select(t => t.Value)];
            },
        }.Describe("NAME=V1,V2,...",
            "an axis: NAME is any option of the command without its dashes (guesser, lr, seed, batch-size, model, optimizer, hidden, " +
            "validation-fraction, …); switches (augment, standardize) take yes,no. Separate values by ';' when one holds commas: " +
            "hidden=128,128;64,64. Repeat --grid for more axes");
        public readonly Option<int?> Parallel = Opt.OptionalInt("parallel", 1, 1024).Describe("N", "runs at a time (default: the cores / T, at least 1; give 1 for runs on one GPU)");
        public readonly Option<int> Threads = Opt.Int("threads", 1, min: 1, max: 1024).Describe("T", "threads of each run (OPENBLAS_NUM_THREADS and the backend's)");
        public readonly Option<string?> SelectBy = Opt.OptionalChoice("select-by", "selection metric", [.. SweptCommand.All.SelectMany(c => c.Selections).Select(m => m.Name).Distinct()])
            .Describe("METRIC", "train: validation_accuracy (default) or validation_loss; lm: validation_bits_per_char (default) or validation_accuracy");
        public readonly Option<string?> Tune = Opt.OptionalString("tune").Describe("NAME[,NAME]",
            $"the axes chosen per method on validation (default {string.Join(',', DefaultTune)}; 'none': choose nothing)");
        public readonly Option<bool> DryRun = Opt.Flag("dry-run").Describe("", "list the runs, which are finished and their command lines; run nothing");
        public readonly Argument<string[]> TrainArguments = new("train-arguments") { Arity = ArgumentArity.ZeroOrMore, Description = "train or lm and its options, after --" };
    }

    public static DocumentedCommand Create(CliContext context)
    {
        var o = new Options();
        var command = new DocumentedCommand("sweep", "Run a grid of train (or lm) runs and compare them over seeds.", "forwardad sweep [options] [-- train|lm OPTIONS]")
        {
            Summary =
                "Runs every combination of the --grid axes (the first axis varies slowest), each as its own process of this tool running " +
                "`train` (or `lm`) with the options after '--' plus the run's values, --parallel at a time. Each run writes into " +
                "OUT/runs/<values>-<hash>/ (metrics.csv, run.log with its stdout and stderr, and result.json at its end: status ok or " +
                "failed, exit code, last lines of stderr). Rerunning the same sweep skips every run whose result.json says ok (for the " +
                "same command line) and retries the failed and interrupted ones. Train and lm can be swept. Example (4 methods × 3 " +
                "rates × 3 seeds = 36 runs):\n" +
                "\n" +
                "  forwardad sweep --grid guesser=backprop,wt,dfa,grape --grid lr=0.03,0.1,0.3 --grid seed=1,2,3 \\\n" +
                "      -- train --data digits --epochs 10 --validation-fraction 0.1\n" +
                "\n" +
                "Learning rates are chosen on validation, never on the test set: per method (the values of every axis but the seed and " +
                "the tuned ones), the rate whose runs all succeeded with the best mean final validation metric over the seeds (ties: " +
                "the first listed). This needs --validation-fraction F in the command's options (or as an axis). An lm sweep (-- lm " +
                "--text FILE --validation-fraction 0.1 …) chooses by validation bits per character (lower is better) and reports test " +
                "bits per character and next-byte accuracy; its curves are against the step.\n" +
                "\n" +
                "Writes, in OUT:\n" +
                "  sweep.csv                 one row per run (ok or failed, never dropped): its values, status, exit code, final\n" +
                "                            train/validation/test metrics, the best epoch (step) on validation with its\n" +
                "                            validation and test metric, wall time, the error of a failed run, its folder\n" +
                "  summary.csv, summary.md   per configuration (every axis but seed): runs, failed runs, seeds, mean ± sample\n" +
                "                            standard deviation (n − 1) of test and validation accuracy and loss (bits/char for\n" +
                "                            lm; n/a for one seed), and per method the selected rate with its test metrics; the\n" +
                "                            Markdown also lists the seeds, the failed runs and the command that reproduces it\n" +
                "  summary.png, .svg         test (and validation) accuracy per epoch (bits/char per step for lm) of the\n" +
                "                            selected configurations (every configuration when nothing is selected): the mean\n" +
                "                            over the seeds, a ±1 sd band\n" +
                "Exit code 1 when a run failed (after writing all of the above), 2 for a usage error.",
            Footer = SweepGrid.ConfigHelp,
        };
        command.Section("Grid", [o.Grid, o.Config],
            "  -- train OPTIONS          the options every run shares (default: train's defaults); not --metrics,\n" +
            "                            --checkpoint or --resume, which the sweep sets per run\n" +
            "  -- lm OPTIONS             the same for lm runs");
        command.Section("Selection", [o.SelectBy, o.Tune]);
        command.Section("Running", [o.Out, o.Threads, o.Parallel, o.DryRun]);
        command.Add(o.TrainArguments);
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        // ---- what to run -------------------------------------------------------------------------------------------
        var config = p.GetValue(o.Config) is { } file ? SweepGrid.ReadConfig(file) : null;
        var axes = config?.Axes.ToList() ?? [];
        axes.AddRange((p.GetValue(o.Grid) ?? []).Select(text => SweepGrid.ParseAxis(text, "--grid")));
        var trainArguments = p.GetValue(o.TrainArguments) ?? [];
        if (config?.Command is not null && trainArguments.Length > 0)
            throw new UsageException($"the command's options are given twice, in {p.GetValue(o.Config)} (command = …) and after '--'; give them once.");
        var selectByText = Setting(p, o.SelectBy, config?.SelectBy, "select-by");
        var tuneText = Setting(p, o.Tune, config?.Tune, "tune");
        var baseCommand = config?.Command ?? [.. trainArguments];
        var swept = SweptCommand.For(baseCommand);
        var parser = swept.CreateParser(context);
        var grid = SweepGrid.Create(axes, baseCommand, parser);
        // The command's parser takes these as a request for its help: every run would print it and train nothing.
        if (grid.Command.Any(t => t is "--help" or "-h" or "-?" or "/h" or "/?"))
            throw new UsageException($"--help in the {swept.Name} options would run nothing; see 'forwardad {swept.Name} --help' instead.");
        var runs = grid.Expand();
        RequireParses(runs, parser);
        if (selectByText is not null && !swept.Selections.Any(m => m.Name == selectByText))
            throw new UsageException($"--select-by {selectByText}: {swept.Name} runs are chosen by {Opt.List([.. swept.Selections.Select(m => m.Name)])}.");

        var tune = tuneText is null ? DefaultTune : tuneText == "none" ? [] : tuneText.Split(',', StringSplitOptions.TrimEntries);
        foreach (var name in tune)
        {
            if (name == SweepSummary.SeedAxis) throw new UsageException("--tune seed: the seed is what the statistics are taken over, not a setting to choose.");
            if (tuneText is not null && !grid.Axes.Any(a => a.Name == name))
                throw new UsageException($"--tune {name}: not a grid axis; the axes are {Opt.List([.. grid.Axes.Select(a => a.Name)])}.");
        }
        bool validation = SweepGrid.Mentions(grid.Command, "validation-fraction") || grid.Axes.Any(a => a.Name == "validation-fraction");
        var tunedAxes = tune.Where(t => grid.Axes.Any(a => a.Name == t)).ToList();
        if (selectByText is not null && !validation)
            throw new UsageException($"--select-by {selectByText} needs a validation split: add --validation-fraction F (e.g. 0.1) to the {swept.Name} options.");
        if (tunedAxes.Count > 0 && !validation)
            throw new UsageException($"the grid has {Opt.List(tunedAxes)} values to choose from, and they are chosen on a validation split, never on the test set: " +
                $"add --validation-fraction F (e.g. 0.1) to the {swept.Name} options after '--', or pass --tune none to compare every configuration without choosing.");
        var selectBy = validation ? swept.Selections.First(m => m.Name == (selectByText ?? swept.DefaultSelection.Name)) : null;

        int threads = p.GetValue(o.Threads);
        int parallel = p.GetValue(o.Parallel) ?? Math.Max(1, Environment.ProcessorCount / threads);
        var output = p.GetValue(o.Out)!;
        if (File.Exists(output)) throw new IOException($"--out {output}: is a file; give a folder for the sweep's runs and tables.");
        var reproduction = grid.Reproduction(output, selectByText, tune);

        // ---- what is done already ----------------------------------------------------------------------------------
        var console = context.Console;
        var finished = new Dictionary<int, RunRecord>();
        int retried = 0;
        foreach (var run in runs)
        {
            if (SweepExecution.Finished(swept, output, run, out var problem) is { } record) finished[run.Index] = record;
            else if (problem is not null) context.Output.WriteLine($"note: {problem}");
            else if (RunRecord.TryRead(RunPaths.Of(output, run).Record, out _) is { Succeeded: false }) retried++;
        }
        var pending = runs.Where(r => !finished.ContainsKey(r.Index)).ToList();
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] sweep: {grid}, in {output}");
        context.Output.WriteLine(pending.Count == 0 ? $"all {runs.Count} runs finished earlier: nothing to run; aggregating"
            : $"{finished.Count} finished earlier, {pending.Count} to run{(retried > 0 ? $" ({retried} of them failed earlier: retried)" : "")}, {Math.Min(parallel, pending.Count)} at a time, {threads} thread(s) each");
        if (p.GetValue(o.DryRun))
        {
            foreach (var run in runs)
                context.Output.WriteLine($"{(finished.ContainsKey(run.Index) ? "done" : "to run")}  runs/{run.Folder}  forwardad {string.Join(' ', run.Arguments.Select(SweepGrid.Quote))}");
            return Cli.Success;
        }

        // ---- run -----------------------------------------------------------------------------------------------------
        // Claimed before any run starts: two sweeps on one folder would run the same runs twice and race on the tables.
        using var claim = OutputLock.Acquire($"sweep (out {output})", ("--out", output));
        Directory.CreateDirectory(output);
        var launcher = context.SweepLauncher ?? ProcessLauncher.ForThisProcess();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int done = 0;
        var gate = new object();
        SweepExecution.Execute(swept, pending, output, launcher, parallel, threads, (run, record) =>
        {
            lock (gate)
            {
                finished[run.Index] = record;
                done++;
                var elapsed = watch.Elapsed;
                var left = TimeLeft(elapsed, done, pending.Count);
                context.Output.WriteLine($"[{done}/{pending.Count}] {run.Label}: {Outcome(swept, output, run, record)} ({Duration(TimeSpan.FromSeconds(record.WallSeconds))}){left}");
            }
        });

        // ---- aggregate -----------------------------------------------------------------------------------------------
        var results = SweepSummary.Collect(swept, output, runs.Select(r => (r, finished[r.Index])));
        var summary = new SweepSummary(swept, grid, results, tune, selectBy);
        summary.WriteRuns(Path.Combine(output, "sweep.csv"));
        summary.WriteConfigurations(Path.Combine(output, "summary.csv"));
        var markdown = summary.Markdown(reproduction);
        AtomicFile.WriteAllLines(Path.Combine(output, "summary.md"), [markdown.TrimEnd('\n')]);
        context.Output.WriteLine();
        context.Output.Write(markdown);
        context.Output.WriteLine();
        string plot = "";
        if (results.Any(r => r.Succeeded))
        {
            // Drawn from the files just written by the code `forwardad plot summary.csv` runs: one figure, one way to draw it.
            MetricsPlots.Draw(Path.Combine(output, "summary.csv"));
            plot = ", summary.png, summary.svg";
        }
        else
            // No run succeeded: nothing to draw, and an earlier sweep's figure must not pass for this one's.
            foreach (var extension in new[] { ".png", ".svg" }) File.Delete(Path.Combine(output, "summary" + extension));
        console.MarkupLineInterpolated($"written in {output}: sweep.csv, summary.csv, summary.md{plot} ({Duration(watch.Elapsed)})");
        int failed = results.Count(r => !r.Succeeded);
        if (failed > 0)
        {
            context.Error.WriteLine($"error: {failed} of {results.Count} runs failed (listed in sweep.csv and summary.md, logs in their folders); rerun the same sweep to retry them.");
            return Cli.RuntimeError;
        }
        return Cli.Success;
    }

    /// <summary>A setting given on the command line or in the config file, not both.</summary>
    private static string? Setting(ParseResult p, Option<string?> option, string? fromFile, string name)
    {
        var given = p.GetValue(option);
        if (given is not null && fromFile is not null)
            throw new UsageException($"{name} is given both in --config and as --{name}; give it once.");
        return given ?? fromFile;
    }

    /// <summary>Every run's command line through the command's own parser before anything starts: a misspelt option or
    /// a bad value is a usage error naming its run, not a column of failed runs.</summary>
    private static void RequireParses(List<SweepRun> runs, Command parser)
    {
        var root = new RootCommand { parser };
        root.Directives.Clear();
        foreach (var run in runs)
        {
            var parse = root.Parse([.. run.Arguments], new ParserConfiguration { ResponseFileTokenReplacer = null });
            if (parse.Errors.Count > 0)
                throw new UsageException($"run {run.Label}: {parse.Errors[0].Message} (its command line: {string.Join(' ', run.Arguments.Select(SweepGrid.Quote))})");
        }
    }

    private static string Outcome(SweptCommand swept, string output, SweepRun run, RunRecord record)
    {
        if (!record.Succeeded)
            return $"FAILED (exit code {record.ExitCode}): {record.Reason}; log in {RunPaths.Of(output, run).Log}";
        try
        {
            var curves = swept.ReadCurves(RunPaths.Of(output, run).Metrics);
            string Shown(SweepMetric m) => $"{m.Description} {TrainCommand.F(curves[m][^1], m.Percent ? "P2" : "F3")}";
            var validation = curves[swept.ValidationHeadline][^1];
            return $"ok, {(double.IsNaN(validation) ? "" : Shown(swept.ValidationHeadline) + ", ")}{Shown(swept.TestHeadline)}";
        }
        catch (Exception e) when (e is IOException or InvalidDataException)
        {
            return "ok";
        }
    }

    /// <summary>"; about D left" for <paramref name="done"/> of <paramref name="total"/> equal units of work taking
    /// <paramref name="elapsed"/> so far (the units to go at the mean time per unit); empty before the first and after the last.</summary>
    internal static string TimeLeft(TimeSpan elapsed, int done, int total) =>
        done > 0 && done < total ? $"; about {Duration(elapsed / done * (total - done))} left" : "";

    /// <summary>"45 s", "3 min 20 s", "2 h 05 min".</summary>
    internal static string Duration(TimeSpan t) =>
        t.TotalSeconds < 60 ? string.Create(CultureInfo.InvariantCulture, $"{t.TotalSeconds:F1} s")
        : t.TotalHours < 1 ? string.Create(CultureInfo.InvariantCulture, $"{(int)t.TotalMinutes} min {t.Seconds:D2} s")
        : string.Create(CultureInfo.InvariantCulture, $"{(int)t.TotalHours} h {t.Minutes:D2} min");
}
