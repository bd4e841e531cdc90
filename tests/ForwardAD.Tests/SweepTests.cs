using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Globalization;
using ForwardAD.Cli;
using ForwardAD.Data;
using ForwardAD.Distributed;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// `forwardad sweep`: grid expansion and its config file, resume, the aggregation's statistics, failed runs, the choice of
/// the learning rate on validation (never on test), the validation split of train, and one sweep of real processes.
/// All but the last run the sweep in process with a fake launcher that writes the metrics a test chooses.
/// </summary>
public sealed class SweepTests() : TemporaryFolderTests("forwardad-sweep-")
{
    private static System.CommandLine.Command Train() =>
        TrainCommand.Create(CliContext.Silent());

    private static (int Code, string Out, string Err) Sweep(IRunLauncher launcher, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Cli.Cli.Run(["sweep", .. args], output, error, sweepLauncher: launcher);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>What a fake run reports: its final test and validation accuracy and validation loss (two epochs, the
    /// first at 90 % of the final values), or a failure.</summary>
    private sealed record Outcome(double Test, double Validation, double ValidationLoss = 1.0, int ExitCode = 0, string Error = "");

    /// <summary>Runs nothing: writes the metrics CSV the run would (values from <paramref name="outcome"/>, given the run's
    /// options) and counts every launch, by command line.</summary>
    private sealed class FakeLauncher(Func<IReadOnlyDictionary<string, string>, Outcome> outcome) : IRunLauncher
    {
        public readonly ConcurrentQueue<string> Launches = new();

        public RunExit Run(IReadOnlyList<string> arguments, string logPath, int threads)
        {
            var options = new Dictionary<string, string>();
            for (int i = 1; i + 1 < arguments.Count; i++)
                if (arguments[i].StartsWith("--", StringComparison.Ordinal) && !arguments[i + 1].StartsWith("--", StringComparison.Ordinal))
                    options[arguments[i][2..]] = arguments[i + 1];
            Launches.Enqueue(string.Join(' ', arguments.TakeWhile(a => a != "--metrics")));
            var result = outcome(options);
            File.WriteAllText(logPath, "fake run\n");
            if (result.ExitCode != 0) return new RunExit(result.ExitCode, ["epoch 1/2: …", result.Error]);
            var reports = new[] { 0.9, 1.0 }.Select((f, e) => new EpochReport(e, 1, f * result.Test, 1, f * result.Test, [], double.NaN, 1000, TimeSpan.FromSeconds(1))
            { ValidationAccuracy = f * result.Validation, ValidationLoss = result.ValidationLoss / f }).ToList();
            MetricsFile.Write(options["metrics"], reports, "fake", [], []);
            return new RunExit(0, []);
        }
    }

    /// <summary>What a fake lm run reports at its last evaluation (step 10; step 5 has 10 % more bits and 90 % of the
    /// accuracy), or a failure. Without --validation-fraction in its options it writes what lm writes then: the
    /// held-out split's numbers (<see cref="TestBits"/>, <see cref="TestAccuracy"/>) in the validation columns alone.</summary>
    private sealed record LmOutcome(double TestBits, double ValidationBits, double TestAccuracy = 0.5, double ValidationAccuracy = 0.5, int ExitCode = 0, string Error = "");

    /// <summary>Runs nothing: writes the metrics CSV of lm that <paramref name="outcome"/> chooses, and counts launches.</summary>
    private sealed class FakeLmLauncher(Func<IReadOnlyDictionary<string, string>, LmOutcome> outcome) : IRunLauncher
    {
        public readonly ConcurrentQueue<string> Launches = new();

        public RunExit Run(IReadOnlyList<string> arguments, string logPath, int threads)
        {
            Assert.Equal("lm", arguments[0]);
            var options = new Dictionary<string, string>();
            for (int i = 1; i + 1 < arguments.Count; i++)
                if (arguments[i].StartsWith("--", StringComparison.Ordinal) && !arguments[i + 1].StartsWith("--", StringComparison.Ordinal))
                    options[arguments[i][2..]] = arguments[i + 1];
            Launches.Enqueue(string.Join(' ', arguments.TakeWhile(a => a != "--metrics")));
            var result = outcome(options);
            File.WriteAllText(logPath, "fake lm run\n");
            if (result.ExitCode != 0) return new RunExit(result.ExitCode, ["step 5: …", result.Error]);
            bool carved = options.ContainsKey("validation-fraction");
            static string G(double v) => v.ToString("R", CultureInfo.InvariantCulture);
            var lines = new List<string> { "step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global,tokens_per_second,training_seconds,run,cosine_head,exchanged_bytes_per_step" +
                (carved ? ",test_bits_per_char,test_accuracy" : "") };
            foreach (var (step, bits, accuracy) in new[] { (5, 1.1, 0.9), (10, 1.0, 1.0) })
            {
                var (validationBits, validationAccuracy) = carved ? (result.ValidationBits, result.ValidationAccuracy) : (result.TestBits, result.TestAccuracy);
                lines.Add($"{step},{G(bits * 3)},{G(bits * validationBits)},{G(accuracy * validationAccuracy)},1,1000,1,fake,1,0" +
                    (carved ? $",{G(bits * result.TestBits)},{G(accuracy * result.TestAccuracy)}" : ""));
            }
            File.WriteAllLines(options["metrics"], lines);
            return new RunExit(0, []);
        }
    }

    private static double Number(string text) => double.Parse(text, CultureInfo.InvariantCulture);

    /// <summary>The rows of a CSV the sweep wrote, as column → text (quoted fields unquoted).</summary>
    private static List<Dictionary<string, string>> Rows(string path)
    {
        var table = CsvTable.Read(path);
        return [.. table.Rows.Select(row => table.Header.Zip(row).ToDictionary(p => p.First, p => p.Second))];
    }

    // ---- grid ------------------------------------------------------------------------------------------------------

    [Fact]
    public void The_grid_is_the_cartesian_product_with_the_first_axis_slowest()
    {
        var grid = SweepGrid.Create(
            [SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid"), SweepGrid.ParseAxis("lr=1e-3, 3e-3 ,1e-2", "--grid"), SweepGrid.ParseAxis("--standardize=yes,no", "--grid")],
            ["train", "--epochs", "5"], Train());
        var runs = grid.Expand();
        Assert.Equal(12, grid.RunCount);
        Assert.Equal(12, runs.Count);
        Assert.Equal("guesser=backprop lr=1e-3 standardize=yes", runs[0].Label);
        Assert.Equal("guesser=backprop lr=1e-3 standardize=no", runs[1].Label);
        Assert.Equal("guesser=backprop lr=3e-3 standardize=yes", runs[2].Label);
        Assert.Equal("guesser=dfa lr=1e-2 standardize=no", runs[11].Label);
        Assert.Equal(["train", "--epochs", "5", "--guesser", "backprop", "--lr", "1e-3", "--standardize"], runs[0].Arguments);
        Assert.Equal(["train", "--epochs", "5", "--guesser", "backprop", "--lr", "1e-3"], runs[1].Arguments); // a switch at 'no' is left out
        Assert.Equal(Enumerable.Range(0, 12), runs.Select(r => r.Index));
        // Folders: one per run, readable, and the same on every expansion (resume finds them again).
        Assert.Equal(12, runs.Select(r => r.Folder).Distinct().Count());
        Assert.Equal(runs.Select(r => r.Folder), grid.Expand().Select(r => r.Folder));
        Assert.StartsWith("guesser-backprop_lr-1e-3_standardize-yes-", runs[0].Folder);
        // Another base command is another run, in another folder.
        var other = SweepGrid.Create([SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid")], ["train", "--epochs", "6"], Train()).Expand();
        var same = SweepGrid.Create([SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid")], ["train", "--epochs", "5"], Train()).Expand();
        Assert.NotEqual(other[0].Folder, same[0].Folder);
        // Values holding commas: separated by semicolons.
        Assert.Equal(["128,128", "64"], SweepGrid.ParseAxis("hidden=128,128;64", "--grid").Values);
        // No axis: the base command once; options first mean train.
        var single = SweepGrid.Create([], ["--epochs", "2"], Train()).Expand();
        Assert.Equal(["train", "--epochs", "2"], Assert.Single(single).Arguments);
    }

    [Fact]
    public void A_config_file_gives_axes_and_command_and_its_mistakes_name_the_line()
    {
        var config = PathOf("sweep.conf");
        File.WriteAllLines(config,
        [
            "# methods and rates",
            "grid guesser = backprop, dfa   # two methods",
            "",
            "grid lr = 0.05,0.1",
            "command = train --epochs 2 --validation-fraction 0.1 --data \"digits\"",
            "select-by = validation_loss",
        ]);
        var file = SweepGrid.ReadConfig(config);
        Assert.Equal(["guesser", "lr"], file.Axes.Select(a => a.Name));
        Assert.Equal(["backprop", "dfa"], file.Axes[0].Values);
        Assert.Equal(["train", "--epochs", "2", "--validation-fraction", "0.1", "--data", "digits"], file.Command);
        Assert.Equal("validation_loss", file.SelectBy);
        // The file and --grid together: the file's axes first. --dry-run lists the runs and runs none.
        var launcher = new FakeLauncher(_ => new Outcome(0.5, 0.5));
        var (code, output, error) = Sweep(launcher, "--config", config, "--grid", "seed=1,2", "--out", PathOf("out"), "--dry-run");
        Assert.True(code == 0, error);
        Assert.Contains("2 guesser × 2 lr × 2 seed = 8 runs", output);
        Assert.Contains("forwardad train --epochs 2 --validation-fraction 0.1 --data digits --guesser dfa --lr 0.1 --seed 2", output);
        Assert.Empty(launcher.Launches);

        foreach (var (lines, expected) in new (string[], string)[]
        {
            (["grid lr = 0.1", "grdi seed = 1"], "line 2: 'grdi seed = 1' is not a setting"),
            (["grid lr = 0.1,,0.2"], "line 1: 'lr = 0.1,,0.2' has an empty value"),
            (["grid lr 0.1"], "line 1: 'lr 0.1' is not NAME=V1,V2"),
            (["grid lr = 0.1,0.1"], "lists a value of lr twice"),
            (["", "command = train --data \"my file.csv"], "line 2: a quote (\") is not closed"),
            (["command = train", "command = train"], "line 2: 'command' is set a second time"),
        })
        {
            File.WriteAllLines(config, lines);
            var (c, _, e) = Sweep(launcher, "--config", config, "--out", PathOf("out"));
            Assert.Equal(2, c);
            Assert.Contains(expected, e);
            Assert.Contains(config, e);
        }
        Assert.Empty(launcher.Launches);
    }

    [Theory]
    [InlineData("--grid|bogus=1", "train has no option --bogus")]
    [InlineData("--grid|metrics=a.csv", "--metrics is set by the sweep")]
    [InlineData("--grid|lr=0.1|--grid|lr=0.2|--tune|none", "grid axis 'lr' is given twice")]
    [InlineData("--grid|lr=0.1|--|train|--lr|0.2|--tune|none", "--lr is both a grid axis and in the train arguments")]
    [InlineData("--grid|augment=maybe", "--augment is a switch; its values are yes or no")]
    [InlineData("--grid|guesser=backprop,nope", "run guesser=nope: Unknown guesser 'nope'")]
    [InlineData("--grid|seed=1|--|compare", "sweep runs 'train' or 'lm'; the command after '--' is 'compare'")]
    [InlineData("--grid|epochs=1,2|--tune|none|--|lm", "lm has no option --epochs")]
    [InlineData("--grid|lr=0.1,0.2|--|lm|--steps|3", "chosen on a validation split, never on the test set: add --validation-fraction F (e.g. 0.1) to the lm options")]
    [InlineData("--grid|lr=0.1,0.2|--select-by|validation_loss|--|lm|--validation-fraction|0.1", "--select-by validation_loss: lm runs are chosen by validation_bits_per_char or validation_accuracy")]
    [InlineData("--grid|seed=1|--|lm|--checkpoint|c.safetensors", "--checkpoint is set by the sweep")]
    [InlineData("--|train|--checkpoint|c.safetensors", "--checkpoint is set by the sweep")]
    [InlineData("--grid|lr=0.1,0.2", "chosen on a validation split, never on the test set: add --validation-fraction")]
    [InlineData("--select-by|validation_loss", "--select-by validation_loss needs a validation split")]
    [InlineData("--grid|lr=0.1|--tune|seed|--|train|--validation-fraction|0.1", "--tune seed")]
    [InlineData("--grid|lr=0.1|--tune|batch-size|--|train|--validation-fraction|0.1", "--tune batch-size: not a grid axis")]
    [InlineData("--grid|lr", "'lr' is not NAME=V1,V2")]
    [InlineData("--grid|seed=1|--|train|-h", "--help in the train options would run nothing")]
    [InlineData("--grid|lr=1,2,3,4,5,6,7,8,9,10|--grid|seed=1,2,3,4,5,6,7,8,9,10|--grid|epochs=1,2,3,4,5,6,7,8,9,10|--grid|width=1,2,3,4,5,6,7,8,9,10|--grid|guesses=1,2,3,4,5,6,7,8,9,10|--grid|batch-size=1,2,3,4,5,6,7,8,9,10",
        "the grid has 1,000,000 runs")]
    public void Bad_sweeps_are_usage_errors_before_any_run_starts(string args, string expected)
    {
        var launcher = new FakeLauncher(_ => new Outcome(0.5, 0.5));
        var (code, _, error) = Sweep(launcher, ["--out", PathOf("out"), .. args.Split('|')]);
        Assert.True(code == 2, error);
        Assert.Contains(expected, error);
        Assert.StartsWith("error: ", error);
        Assert.Empty(launcher.Launches);
        Assert.False(Directory.Exists(PathOf("out")));
    }

    // ---- resume ----------------------------------------------------------------------------------------------------

    [Fact]
    public void Finished_runs_are_not_repeated_and_failed_or_interrupted_ones_are()
    {
        bool failOnce = true;
        var launcher = new FakeLauncher(o =>
        {
            if (o["guesser"] == "dfa" && o["seed"] == "2" && failOnce) return new Outcome(0, 0, ExitCode: 1, Error: "error: a transient failure");
            return new Outcome(0.8, 0.85);
        });
        string[] args = ["--grid", "guesser=backprop,dfa", "--grid", "seed=1,2,3", "--out", PathOf("out"), "--parallel", "2", "--", "train", "--validation-fraction", "0.1"];
        var first = Sweep(launcher, args);
        Assert.Equal(1, first.Code);
        Assert.Equal(6, launcher.Launches.Count);
        Assert.Contains("error: 1 of 6 runs failed", first.Err);
        Assert.Contains("rerun the same sweep to retry them", first.Err);

        // Again: only the failed run is launched (now it succeeds).
        failOnce = false;
        launcher.Launches.Clear();
        var second = Sweep(launcher, args);
        Assert.True(second.Code == 0, second.Err);
        Assert.Equal(["train --validation-fraction 0.1 --guesser dfa --seed 2"], launcher.Launches);
        Assert.Contains("5 finished earlier, 1 to run (1 of them failed earlier: retried)", second.Out);

        // Everything finished: nothing is launched, the tables are written again.
        launcher.Launches.Clear();
        File.Delete(PathOf("out/summary.md"));
        var third = Sweep(launcher, args);
        Assert.True(third.Code == 0, third.Err);
        Assert.Empty(launcher.Launches);
        Assert.Contains("nothing to run", third.Out);
        Assert.True(File.Exists(PathOf("out/summary.md")));

        // A run interrupted before its record (here: the record removed) runs again, alone.
        var interrupted = Directory.GetDirectories(PathOf("out/runs")).Single(d => Path.GetFileName(d).StartsWith("guesser-backprop_seed-3-", StringComparison.Ordinal));
        File.Delete(Path.Combine(interrupted, "result.json"));
        var fourth = Sweep(launcher, args);
        Assert.True(fourth.Code == 0, fourth.Err);
        Assert.Equal(["train --validation-fraction 0.1 --guesser backprop --seed 3"], launcher.Launches);
        Assert.Equal(6, Rows(PathOf("out/sweep.csv")).Count(r => r["status"] == "ok"));
    }

    [Fact]
    public void A_second_sweep_on_the_same_folder_is_refused()
    {
        var launcher = new FakeLauncher(_ => new Outcome(0.5, 0.5));
        using (OutputLock.Acquire("sweep (out elsewhere)", ("--out", PathOf("out"))))
        {
            var (code, _, error) = Sweep(launcher, "--grid", "seed=1,2", "--out", PathOf("out"));
            Assert.Equal(1, code);
            Assert.Contains("is in use by another run", error);
        }
        Assert.Empty(launcher.Launches);
        Assert.Equal(0, Sweep(launcher, "--grid", "seed=1,2", "--out", PathOf("out")).Code);
    }

    // ---- aggregation -----------------------------------------------------------------------------------------------

    [Fact]
    public void Mean_and_sample_standard_deviation_match_hand_computed_values()
    {
        // 0.90, 0.92, 0.97: mean 0.93; deviations −0.03, −0.01, 0.04; Σ² = 0.0026; / (3 − 1) = 0.0013; sd = √0.0013.
        var s = SampleStatistics.Of([0.90, 0.92, 0.97]);
        Assert.Equal(3, s.Count);
        Assert.Equal(0.93, s.Mean, 12);
        Assert.Equal(Math.Sqrt(0.0013), s.StandardDeviation, 12);
        Assert.Equal("93.00 ± 3.61", s.Format(percent: true));
        // Two values: sd = |a − b| / √2.
        Assert.Equal(0.1 / Math.Sqrt(2), SampleStatistics.Of([0.5, 0.6]).StandardDeviation, 12);
        // One value: no deviation (undefined, not 0), and said so; none: no mean either.
        var one = SampleStatistics.Of([0.75]);
        Assert.Equal((1, 0.75), (one.Count, one.Mean));
        Assert.True(double.IsNaN(one.StandardDeviation));
        Assert.Equal("75.00 ± n/a", one.Format(percent: true));
        Assert.Equal("–", SampleStatistics.Of([double.NaN]).Format(percent: true));

        // The same numbers through a sweep: test accuracy by seed, validation accuracy 0.8 everywhere.
        var by = new Dictionary<string, double> { ["1"] = 0.90, ["2"] = 0.92, ["3"] = 0.97 };
        var launcher = new FakeLauncher(o => new Outcome(by[o.GetValueOrDefault("seed", "1")], 0.8));
        var (code, output, error) = Sweep(launcher, "--grid", "guesser=backprop,wt", "--grid", "seed=1,2,3", "--out", PathOf("out"), "--", "--validation-fraction", "0.1");
        Assert.True(code == 0, error);
        var rows = Rows(PathOf("out/summary.csv"));
        Assert.Equal(["backprop", "wt"], rows.Select(r => r["guesser"]));
        Assert.All(rows, r =>
        {
            Assert.Equal(("3", "3", "0", "1 2 3"), (r["runs"], r["ok"], r["failed"], r["seeds"]));
            Assert.Equal(0.93, Number(r["test_accuracy_mean"]), 12);
            Assert.Equal(Math.Sqrt(0.0013), Number(r["test_accuracy_sd"]), 12);
            Assert.Equal(0.8, Number(r["validation_accuracy_mean"]), 12);
            Assert.Equal(0, Number(r["validation_accuracy_sd"]), 12);
        });
        var markdown = File.ReadAllText(PathOf("out/summary.md"));
        Assert.Contains("| backprop | 3 | 0 | 80.00 ± 0.00 | 93.00 ± 3.61 |", markdown);
        Assert.Contains("Seeds 1, 2, 3: n = 3 per configuration", markdown);
        Assert.Contains($"forwardad sweep --out {PathOf("out")} --grid guesser=backprop,wt --grid seed=1,2,3 -- train --validation-fraction 0.1", markdown);
        Assert.Contains("Nothing tuned", markdown);
        Assert.Equal(markdown.TrimEnd(), output[output.IndexOf("# Sweep", StringComparison.Ordinal)..].Split("\nwritten in")[0].TrimEnd());
        // The per-run table: every run, its values and final metrics, its best epoch on validation (the last here).
        var runs = Rows(PathOf("out/sweep.csv"));
        Assert.Equal(6, runs.Count);
        Assert.Equal(("wt", "3", "ok", "2"), (runs[5]["guesser"], runs[5]["seed"], runs[5]["status"], runs[5]["best_epoch"]));
        Assert.Equal(0.97, Number(runs[5]["test_accuracy"]), 12);
        Assert.True(File.Exists(PathOf("out/summary.png")) && File.Exists(PathOf("out/summary.svg")));
        // The figure's bands: one lower and one upper edge per point, or the series is refused naming itself.
        var banded = new Plots.Series("wt", [1.0, 2.0], [0.5, 0.6]) { Band = ([0.4], [0.6, 0.7]) };
        Assert.Contains("series 'wt': 2 x values but a band of 1 lower and 2 upper values", Assert.Throws<ArgumentException>(banded.Validate).Message);

        // One seed: the deviation is undefined in the CSV (NaN) and says n/a in the Markdown.
        Assert.Equal(0, Sweep(launcher, "--grid", "guesser=backprop", "--out", PathOf("one"), "--", "--validation-fraction", "0.1").Code);
        var single = Assert.Single(Rows(PathOf("one/summary.csv")));
        Assert.Equal("NaN", single["test_accuracy_sd"]);
        Assert.Contains("90.00 ± n/a", File.ReadAllText(PathOf("one/summary.md")));
        Assert.Contains("One run per configuration (no seed axis)", File.ReadAllText(PathOf("one/summary.md")));
    }

    [Fact]
    public void A_failed_run_is_recorded_as_failed_and_kept_in_every_table()
    {
        var launcher = new FakeLauncher(o => o["lr"] == "0.3" && o["seed"] == "2"
            ? new Outcome(0, 0, ExitCode: 1, Error: "error: The batch loss became NaN at epoch 1, step 3, training diverged")
            : new Outcome(0.8, 0.9));
        var (code, _, error) = Sweep(launcher, "--grid", "lr=0.1,0.3", "--grid", "seed=1,2", "--out", PathOf("out"), "--", "train", "--validation-fraction", "0.1");
        Assert.Equal(1, code);
        Assert.Contains("error: 1 of 4 runs failed", error);
        var runs = Rows(PathOf("out/sweep.csv"));
        Assert.Equal(4, runs.Count);
        var failed = Assert.Single(runs, r => r["status"] == "failed");
        Assert.Equal(("0.3", "2", "1", "0"), (failed["lr"], failed["seed"], failed["exit_code"], failed["epochs"]));
        Assert.Contains("training diverged", failed["error"]);
        // Its record: status, exit code, the last lines of stderr; its folder keeps its log.
        var folder = Path.Combine(Folder, "out", failed["folder"]);
        var record = RunRecord.TryRead(Path.Combine(folder, "result.json"), out var problem);
        Assert.Null(problem);
        Assert.Equal((RunRecord.Failed, 1), (record!.Status, record.ExitCode));
        Assert.Equal("error: The batch loss became NaN at epoch 1, step 3, training diverged", record.ErrorTail[^1]);
        Assert.True(File.Exists(Path.Combine(folder, "run.log")));
        // The configuration with a failed seed: counted, its mean over the seed that succeeded, and never selected.
        var summary = Rows(PathOf("out/summary.csv"));
        Assert.Equal(("0.3", "2", "1", "1", "1", "no"), (summary[1]["lr"], summary[1]["runs"], summary[1]["ok"], summary[1]["failed"], summary[1]["seeds"], summary[1]["selected"]));
        Assert.Equal("yes", summary[0]["selected"]);
        var markdown = File.ReadAllText(PathOf("out/summary.md"));
        Assert.Contains("4 runs: 3 ok, 1 failed", markdown);
        Assert.Contains("## Failed runs", markdown);
        Assert.Contains("| lr=0.3 seed=2 | 1 | error: The batch loss became NaN", markdown);
    }

    // ---- selection ---------------------------------------------------------------------------------------------------

    [Fact]
    public void The_learning_rate_is_chosen_on_validation_never_on_test()
    {
        // Per guesser, the rate with the best validation accuracy has the worse test accuracy: a choice on test would
        // pick the other one.
        var launcher = new FakeLauncher(o => (o["guesser"], o["lr"]) switch
        {
            ("backprop", "0.1") => new Outcome(Test: 0.50, Validation: 0.90, ValidationLoss: 0.4),
            ("backprop", _) => new Outcome(Test: 0.95, Validation: 0.80, ValidationLoss: 0.2),
            ("dfa", "0.1") => new Outcome(Test: 0.99, Validation: 0.60, ValidationLoss: 0.9),
            _ => new Outcome(Test: 0.40, Validation: 0.70, ValidationLoss: 0.3),
        });
        string[] grid = ["--grid", "guesser=backprop,dfa", "--grid", "lr=0.1,0.01", "--grid", "seed=1,2"];
        var (code, _, error) = Sweep(launcher, [.. grid, "--out", PathOf("accuracy"), "--", "train", "--validation-fraction", "0.2"]);
        Assert.True(code == 0, error);
        var rows = Rows(PathOf("accuracy/summary.csv"));
        Assert.Equal(["0.1", "0.01"], rows.Where(r => r["selected"] == "yes").Select(r => r["lr"]));
        Assert.Equal(["backprop", "dfa"], rows.Where(r => r["selected"] == "yes").Select(r => r["guesser"]));
        var markdown = File.ReadAllText(PathOf("accuracy/summary.md"));
        Assert.Contains("| backprop | 0.1 | 2 | 90.00 ± 0.00 | 50.00 ± 0.00 |", markdown);
        Assert.Contains("| dfa | 0.01 | 2 | 70.00 ± 0.00 | 40.00 ± 0.00 |", markdown);
        Assert.Contains("the test set is not consulted", markdown);

        // By validation loss (lower is better): the other rates, still never by test.
        Assert.Equal(0, Sweep(launcher, [.. grid, "--out", PathOf("loss"), "--select-by", "validation_loss", "--", "train", "--validation-fraction", "0.2"]).Code);
        Assert.Equal(["0.01", "0.01"], Rows(PathOf("loss/summary.csv")).Where(r => r["selected"] == "yes").Select(r => r["lr"]));
        // --tune none: nothing is chosen, every configuration is compared (and needs no validation split).
        Assert.Equal(0, Sweep(launcher, [.. grid, "--out", PathOf("none"), "--tune", "none"]).Code);
        Assert.All(Rows(PathOf("none/summary.csv")), r => Assert.Equal("", r["selected"]));
    }

    // ---- validation split (train --validation-fraction) --------------------------------------------------------------

    [Fact]
    public void The_validation_split_is_disjoint_from_training_deterministic_and_part_of_the_run()
    {
        // Example i has feature i: the parts' features say which examples they hold.
        var data = new Dataset("numbered", new Shape(1), 2, [.. Enumerable.Range(0, 200).Select(i => (float)i)], [.. Enumerable.Range(0, 200).Select(i => (float)(i % 2))]);
        var (train, validation) = DataOptions.CarveValidation(data, 0.15f, seed: 7, "numbered");
        Assert.Equal((170, 30), (train.Count, validation.Count)); // ⌈0.15 · 200⌉ = 30
        Assert.Empty(train.Features.Intersect(validation.Features));
        Assert.Equal(Enumerable.Range(0, 200).Select(i => (float)i), train.Features.Concat(validation.Features).Order());
        Assert.Equal(validation.Features, DataOptions.CarveValidation(data, 0.15f, seed: 7, "numbered").Validation.Features);
        Assert.NotEqual(validation.Features, DataOptions.CarveValidation(data, 0.15f, seed: 8, "numbered").Validation.Features);
        Assert.Throws<InvalidDataException>(() => DataOptions.CarveValidation(data, 0.999f, seed: 7, "numbered"));

        // train: the validation columns, the split in the banner, and another run hash than without it.
        string[] tiny = ["train", "--hidden", "8", "--quiet", "--no-plot", "--guesser", "backprop"];
        var (code, output, error) = CliTests.Run([.. tiny, "--epochs", "2", "--validation-fraction", "0.1", "--metrics", PathOf("v.csv")]);
        Assert.True(code == 0, error);
        Assert.Contains("(1293 train / 144 validation / 360 test)", output); // 1,797 digits: 360 test, then ⌈0.1 · 1437⌉ = 144
        Assert.Contains(",cosine_layer2,validation_loss,validation_accuracy,examples_per_second,", File.ReadAllLines(PathOf("v.csv"))[0]);
        var reports = MetricsFile.ReadForResume(PathOf("v.csv"), File.ReadAllLines(PathOf("v.csv"))[1].Split(',')[^1], TextWriter.Null);
        Assert.Equal(2, reports.Count);
        Assert.All(reports, r => Assert.InRange(r.ValidationAccuracy, 0, 1));
        Assert.All(reports, r => Assert.True(r.ValidationLoss > 0));
        Assert.Equal(0, CliTests.Run([.. tiny, "--epochs", "2", "--metrics", PathOf("plain.csv")]).Code);
        Assert.DoesNotContain("validation", File.ReadAllLines(PathOf("plain.csv"))[0]);
        Assert.NotEqual(File.ReadAllLines(PathOf("v.csv"))[1].Split(',')[^1], File.ReadAllLines(PathOf("plain.csv"))[1].Split(',')[^1]);
        // The same run again: the same split, so the same numbers.
        Assert.Equal(0, CliTests.Run([.. tiny, "--epochs", "2", "--validation-fraction", "0.1", "--metrics", PathOf("v2.csv")]).Code);
        Assert.Equal(File.ReadAllLines(PathOf("v.csv")).Select(l => l.Split(',')[^5]), File.ReadAllLines(PathOf("v2.csv")).Select(l => l.Split(',')[^5]));
        // Both kinds of file still draw.
        foreach (var csv in new[] { "v.csv", "plain.csv" }) Assert.Equal(0, CliTests.Run("plot", PathOf(csv)).Code);
        // Resume checks the split like any data option: a run without it cannot continue one with it.
        Assert.Equal(0, CliTests.Run([.. tiny, "--epochs", "2", "--validation-fraction", "0.1", "--metrics", PathOf("r.csv"), "--checkpoint", PathOf("r.safetensors")]).Code);
        var refused = CliTests.Run([.. tiny, "--epochs", "3", "--metrics", PathOf("r.csv"), "--resume", PathOf("r.safetensors")]);
        Assert.Equal(1, refused.Code);
        Assert.Contains("validation is 'split 0.1 of the training set' but this run does not set it", refused.Err);
        Assert.Equal(0, CliTests.Run([.. tiny, "--epochs", "3", "--validation-fraction", "0.1", "--metrics", PathOf("r.csv"), "--resume", PathOf("r.safetensors")]).Code);
        Assert.Equal(4, File.ReadAllLines(PathOf("r.csv")).Length);
    }

    // ---- validation split (lm --validation-fraction) -------------------------------------------------------------------

    /// <summary>A small structured text: a tiny transformer learns it in a few steps.</summary>
    private string StructuredText()
    {
        var path = PathOf("text.txt");
        File.WriteAllText(path, string.Concat(Enumerable.Range(0, 200).Select(i => $"the cat sat on mat {i % 7}.\n")));
        return path;
    }

    [Fact]
    public void Lm_reports_a_carved_validation_split_beside_the_test_split_and_is_unchanged_without_it()
    {
        var text = StructuredText();
        string[] tiny = ["lm", "--text", text, "--model", "transformer:l1-h1-d8-t8", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--quiet", "--no-plot"];
        var (code, output, error) = CliTests.Run([.. tiny, "--metrics", PathOf("plain.csv")]);
        Assert.True(code == 0, error);
        // Without the option: the banner and the columns lm always wrote, nothing about a test split.
        Assert.Contains("(3,960 training / 440 validation bytes)", output); // 4,400 bytes: the first 90 % train
        var plain = File.ReadAllLines(PathOf("plain.csv"));
        Assert.StartsWith("step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global,tokens_per_second,training_seconds,run,cosine_embed,", plain[0]);
        Assert.EndsWith(",cosine_head,exchanged_bytes_per_step", plain[0]);
        Assert.DoesNotContain("test", plain[0] + output);

        (code, output, error) = CliTests.Run([.. tiny, "--validation-fraction", "0.1", "--metrics", PathOf("carved.csv")]);
        Assert.True(code == 0, error);
        Assert.Contains("(3,564 training / 396 validation / 440 test bytes)", output); // ⌈0.1 · 3,960⌉ = 396 carved from training
        var carved = File.ReadAllLines(PathOf("carved.csv"));
        Assert.EndsWith(",cosine_head,exchanged_bytes_per_step,test_bits_per_char,test_accuracy", carved[0]);
        Assert.Equal(3, carved.Length);
        Assert.All(carved.Skip(1), row => Assert.Equal(carved[0].Split(',').Length, row.Split(',').Length));
        var last = CsvTable.Read(PathOf("carved.csv"));
        Assert.All(last.Numbers("test_bits_per_char"), v => Assert.InRange(v, 0.1, 20));
        Assert.All(last.Numbers("test_accuracy"), v => Assert.InRange(v, 0, 1));
        // The split is part of the run's configuration: another hash (so another default metrics file) than without it.
        Assert.NotEqual(plain[1].Split(',')[7], carved[1].Split(',')[7]);
        // Deterministic: the same run again gives the same numbers; the file still draws.
        Assert.Equal(0, CliTests.Run([.. tiny, "--validation-fraction", "0.1", "--metrics", PathOf("again.csv")]).Code);
        Assert.Equal(CsvTable.Read(PathOf("again.csv")).Numbers("test_bits_per_char"), last.Numbers("test_bits_per_char"));
        Assert.Equal(CsvTable.Read(PathOf("again.csv")).Numbers("validation_bits_per_char"), last.Numbers("validation_bits_per_char"));
        Assert.Equal(0, CliTests.Run("plot", PathOf("carved.csv")).Code);

        // Fractions outside (0, 1) and splits too small for the context are usage errors that say so.
        var (badCode, _, badError) = CliTests.Run([.. tiny, "--validation-fraction", "1"]);
        Assert.Equal(2, badCode);
        Assert.Contains("between 0 and 1", badError);
        (badCode, _, badError) = CliTests.Run([.. tiny, "--validation-fraction", "0.001"]);
        Assert.Equal(2, badCode);
        Assert.Contains("--validation-fraction 0.001", badError);
        Assert.Contains("each needs at least 9 bytes", badError);
        Assert.Contains("--validation-fraction F", CliTests.Run("lm", "--help").Out);
    }

    // ---- sweeps of lm ------------------------------------------------------------------------------------------------

    [Fact]
    public void An_lm_grid_expands_into_lm_command_lines_from_the_arguments_or_a_config_file()
    {
        var lm = LanguageModelCommands.CreateLm(CliContext.Silent());
        Assert.Same(SweptCommand.LanguageModel, SweptCommand.For(["lm", "--steps", "3"]));
        Assert.Same(SweptCommand.Train, SweptCommand.For(["--epochs", "3"]));
        var grid = SweepGrid.Create([SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid"), SweepGrid.ParseAxis("lr=1e-3,3e-3", "--grid"), SweepGrid.ParseAxis("seed=1,2", "--grid")],
            ["lm", "--steps", "40", "--validation-fraction", "0.1"], lm);
        var runs = grid.Expand();
        Assert.Equal(8, runs.Count);
        Assert.Equal(["lm", "--steps", "40", "--validation-fraction", "0.1", "--guesser", "backprop", "--lr", "1e-3", "--seed", "1"], runs[0].Arguments);
        Assert.Equal("guesser=dfa lr=3e-3 seed=2", runs[7].Label);
        Assert.Equal(8, runs.Select(r => r.Folder).Distinct().Count());
        // The same values for train are other runs, in other folders.
        var train = SweepGrid.Create([SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid")], ["train"], Train()).Expand();
        var language = SweepGrid.Create([SweepGrid.ParseAxis("guesser=backprop,dfa", "--grid")], ["lm"], lm).Expand();
        Assert.NotEqual(train[0].Folder, language[0].Folder);
        // A train command line given to lm's grid is refused, naming both.
        Assert.Contains("this sweep runs 'lm'; the command after '--' is 'train'", Assert.Throws<UsageException>(() => SweepGrid.Create([], ["train"], lm)).Message);

        // The config file's command may be lm; --dry-run lists lm command lines and runs nothing.
        var config = PathOf("lm.conf");
        File.WriteAllLines(config, ["grid lr = 1e-3, 3e-3", "grid seed = 1, 2", "command = lm --text corpus.txt --steps 40 --validation-fraction 0.1"]);
        var launcher = new FakeLmLauncher(_ => new LmOutcome(2, 2));
        var (code, output, error) = Sweep(launcher, "--config", config, "--out", PathOf("out"), "--dry-run");
        Assert.True(code == 0, error);
        Assert.Contains("2 lr × 2 seed = 4 runs", output);
        Assert.Contains("forwardad lm --text corpus.txt --steps 40 --validation-fraction 0.1 --lr 3e-3 --seed 2", output);
        Assert.Empty(launcher.Launches);
    }

    [Fact]
    public void An_lm_sweep_chooses_the_rate_with_the_lowest_mean_validation_bits_per_char_never_by_test()
    {
        // backprop: lr 0.1 has the lower mean validation bits/char (2.5 against 2.6) though not on seed 1, and the worse
        // test: a choice on test, on one seed, or with higher taken as better would pick 0.01. dfa: 0.01 on validation.
        var launcher = new FakeLmLauncher(o => (o["guesser"], o["lr"], o["seed"]) switch
        {
            ("backprop", "0.1", "1") => new LmOutcome(TestBits: 4.0, ValidationBits: 2.7),
            ("backprop", "0.1", _) => new LmOutcome(TestBits: 4.0, ValidationBits: 2.3),
            ("backprop", _, _) => new LmOutcome(TestBits: 1.0, ValidationBits: 2.6),
            ("dfa", "0.1", _) => new LmOutcome(TestBits: 3.0, ValidationBits: 5.0),
            (_, _, "1") => new LmOutcome(TestBits: 6.0, ValidationBits: 4.0, TestAccuracy: 0.3),
            _ => new LmOutcome(TestBits: 6.2, ValidationBits: 4.0, TestAccuracy: 0.4),
        });
        string[] grid = ["--grid", "guesser=backprop,dfa", "--grid", "lr=0.1,0.01", "--grid", "seed=1,2"];
        var (code, output, error) = Sweep(launcher, [.. grid, "--out", PathOf("bits"), "--", "lm", "--text", "corpus.txt", "--validation-fraction", "0.1"]);
        Assert.True(code == 0, error);
        Assert.Equal(8, launcher.Launches.Count);
        Assert.Contains("ok, validation bits/char 2.700, test bits/char 4.000", output);
        var rows = Rows(PathOf("bits/summary.csv"));
        Assert.Equal([("backprop", "0.1"), ("dfa", "0.01")], rows.Where(r => r["selected"] == "yes").Select(r => (r["guesser"], r["lr"])));
        var chosen = rows.Single(r => r["guesser"] == "dfa" && r["lr"] == "0.01");
        Assert.Equal(6.1, Number(chosen["test_bits_per_char_mean"]), 12);
        Assert.Equal(0.2 / Math.Sqrt(2), Number(chosen["test_bits_per_char_sd"]), 12);
        Assert.Equal(0.35, Number(chosen["test_accuracy_mean"]), 12);
        Assert.Equal(2.5, Number(rows.Single(r => r["guesser"] == "backprop" && r["lr"] == "0.1")["validation_bits_per_char_mean"]), 12);
        // summary.md: per method the chosen rate, n, validation bits/char, test bits/char and test accuracy (mean ± sd).
        var markdown = File.ReadAllText(PathOf("bits/summary.md"));
        Assert.Contains("| guesser | lr | n | validation bits/char | test bits/char | test accuracy |", markdown);
        Assert.Contains("| backprop | 0.1 | 2 | 2.5000 ± 0.2828 | 4.0000 ± 0.0000 | 50.00 ± 0.00 |", markdown);
        Assert.Contains("| dfa | 0.01 | 2 | 4.0000 ± 0.0000 | 6.1000 ± 0.1414 | 35.00 ± 7.07 |", markdown);
        Assert.Contains("Chosen by the mean final-step validation bits/char", markdown);
        Assert.Contains("The test bits/char and test accuracy are those of the chosen configuration", markdown);
        // sweep.csv: lm's columns, the last step, and the best step on validation (the last: bits fall).
        var run = Rows(PathOf("bits/sweep.csv"))[0];
        Assert.Equal(("10", "10"), (run["steps"], run["best_step"]));
        Assert.Equal(4.0, Number(run["test_bits_per_char"]), 12);
        Assert.Equal(2.7, Number(run["validation_bits_per_char_at_best_step"]), 12);
        Assert.Equal(3.0, Number(run["train_bits_per_char"]), 12);
        Assert.True(new FileInfo(PathOf("bits/summary.png")).Length > 0);

        // By validation accuracy (higher is better): every run has 0.5, so the first listed rate wins the tie.
        Assert.Equal(0, Sweep(launcher, [.. grid, "--out", PathOf("accuracy"), "--select-by", "validation_accuracy", "--", "lm", "--validation-fraction", "0.1"]).Code);
        Assert.Equal(["0.1", "0.1"], Rows(PathOf("accuracy/summary.csv")).Where(r => r["selected"] == "yes").Select(r => r["lr"]));
    }

    [Fact]
    public void A_failed_lm_run_is_recorded_as_failed_and_a_resumed_lm_sweep_runs_only_what_is_not_finished()
    {
        bool failOnce = true;
        var launcher = new FakeLmLauncher(o => o["lr"] == "3e-3" && o["seed"] == "2" && failOnce
            ? new LmOutcome(0, 0, ExitCode: 1, Error: "error: The batch loss became NaN at step 7 (dfa): training diverged.")
            : new LmOutcome(TestBits: 2.0, ValidationBits: 2.5));
        string[] args = ["--grid", "lr=1e-3,3e-3", "--grid", "seed=1,2", "--out", PathOf("out"), "--", "lm", "--steps", "10", "--validation-fraction", "0.1"];
        var first = Sweep(launcher, args);
        Assert.Equal(1, first.Code);
        Assert.Contains("error: 1 of 4 runs failed", first.Err);
        var failed = Assert.Single(Rows(PathOf("out/sweep.csv")), r => r["status"] == "failed");
        Assert.Equal(("3e-3", "2", "1", "0"), (failed["lr"], failed["seed"], failed["exit_code"], failed["steps"]));
        Assert.Contains("training diverged", failed["error"]);
        var summary = Rows(PathOf("out/summary.csv"));
        Assert.Equal(("1", "no"), (summary[1]["failed"], summary[1]["selected"]));
        Assert.Equal("yes", summary[0]["selected"]);
        Assert.Contains("| lr=3e-3 seed=2 | 1 | error: The batch loss became NaN at step 7", File.ReadAllText(PathOf("out/summary.md")));

        // Again: only the failed run is launched; then nothing is.
        failOnce = false;
        launcher.Launches.Clear();
        var second = Sweep(launcher, args);
        Assert.True(second.Code == 0, second.Err);
        Assert.Equal(["lm --steps 10 --validation-fraction 0.1 --lr 3e-3 --seed 2"], launcher.Launches);
        Assert.Contains("3 finished earlier, 1 to run (1 of them failed earlier: retried)", second.Out);
        launcher.Launches.Clear();
        var third = Sweep(launcher, args);
        Assert.True(third.Code == 0, third.Err);
        Assert.Empty(launcher.Launches);
        Assert.Contains("all 4 runs finished earlier: nothing to run", third.Out);
        // A finished run whose metrics are not an lm CSV (here: a train CSV) is not finished: it runs again.
        var folder = Directory.GetDirectories(PathOf("out/runs")).Single(d => Path.GetFileName(d).StartsWith("lr-1e-3_seed-1-", StringComparison.Ordinal));
        File.WriteAllLines(Path.Combine(folder, "metrics.csv"), ["epoch,train_loss,train_accuracy,test_loss,test_accuracy", "1,1,0.5,1,0.5"]);
        var fourth = Sweep(launcher, args);
        Assert.True(fourth.Code == 0, fourth.Err);
        Assert.Equal(["lm --steps 10 --validation-fraction 0.1 --lr 1e-3 --seed 1"], launcher.Launches);
    }

    [Fact]
    public void An_lm_sweep_without_a_validation_split_reports_the_held_out_split_as_test_and_chooses_nothing()
    {
        var launcher = new FakeLmLauncher(o => new LmOutcome(TestBits: o["seed"] == "1" ? 2.0 : 3.0, ValidationBits: 9.0, TestAccuracy: 0.6));
        var (code, _, error) = Sweep(launcher, "--grid", "lr=1e-3,3e-3", "--grid", "seed=1,2", "--tune", "none", "--out", PathOf("out"), "--", "lm");
        Assert.True(code == 0, error);
        // What lm calls validation without --validation-fraction is its held-out split: the test columns here.
        var run = Rows(PathOf("out/sweep.csv"))[0];
        Assert.Equal(2.0, Number(run["test_bits_per_char"]), 12);
        Assert.Equal(0.6, Number(run["test_accuracy"]), 12);
        Assert.Equal("NaN", run["validation_bits_per_char"]);
        Assert.Equal("", run["best_step"]);
        var rows = Rows(PathOf("out/summary.csv"));
        Assert.All(rows, r => Assert.Equal(("", 2.5), (r["selected"], Number(r["test_bits_per_char_mean"]))));
        var markdown = File.ReadAllText(PathOf("out/summary.md"));
        Assert.Contains("| lr | n | failed | test bits/char | test accuracy |", markdown);
        Assert.Contains("| 1e-3 | 2 | 0 | 2.5000 ± 0.7071 | 60.00 ± 0.00 |", markdown);
    }

    /// <summary>The real thing for lm: each run a process of the built tool on a small structured text (a tiny
    /// transformer, 4 steps: seconds), 2 rates × 2 seeds, then the same sweep again, which starts none.</summary>
    [Fact]
    public void An_lm_sweep_runs_each_run_as_a_process_of_the_tool_and_resumes()
    {
        var text = StructuredText();
        var launcher = new ProcessLauncher("dotnet", [Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll")]);
        string[] lm = ["lm", "--text", text, "--model", "transformer:l1-h1-d8-t8", "--steps", "4", "--eval-every", "2", "--batch-size", "4",
            "--validation-windows", "8", "--optimizer", "adamw", "--validation-fraction", "0.1"];
        string[] args = ["--grid", "lr=1e-3,3e-2", "--grid", "seed=1,2", "--out", PathOf("out"), "--parallel", "2", "--", .. lm];
        var (code, output, error) = Sweep(launcher, args);
        Assert.True(code == 0, $"{error}\n{output}");
        Assert.Contains("[4/4] ", output);
        var runs = Rows(PathOf("out/sweep.csv"));
        Assert.Equal(4, runs.Count);
        Assert.All(runs, r =>
        {
            Assert.Equal(("ok", "0", "4"), (r["status"], r["exit_code"], r["steps"]));
            Assert.InRange(Number(r["test_bits_per_char"]), 0.1, 12);
            Assert.InRange(Number(r["validation_bits_per_char"]), 0.1, 12);
            Assert.InRange(Number(r["test_accuracy"]), 0, 1);
            Assert.Contains("3,564 training / 396 validation / 440 test bytes", File.ReadAllText(Path.Combine(Folder, "out", r["folder"], "run.log")));
        });
        Assert.NotEqual(runs[0]["test_bits_per_char"], runs[1]["test_bits_per_char"]); // seeds differ
        // Each run is the lm run it claims to be: the same command in process gives the same final test bits/char.
        Assert.Equal(0, CliTests.Run([.. lm, "--lr", "3e-2", "--seed", "2", "--quiet", "--no-plot", "--metrics", PathOf("check.csv")]).Code);
        Assert.Equal(Number(runs[3]["test_bits_per_char"]), CsvTable.Read(PathOf("check.csv")).Numbers("test_bits_per_char")[^1]);
        var selected = Assert.Single(Rows(PathOf("out/summary.csv")), r => r["selected"] == "yes");
        var means = Rows(PathOf("out/summary.csv")).Select(r => Number(r["validation_bits_per_char_mean"])).ToList();
        Assert.Equal(means.Min(), Number(selected["validation_bits_per_char_mean"]));
        Assert.Contains("## Selected lr per method", File.ReadAllText(PathOf("out/summary.md")));
        Assert.True(new FileInfo(PathOf("out/summary.png")).Length > 0);

        var again = Sweep(launcher, args);
        Assert.True(again.Code == 0, again.Err);
        Assert.Contains("all 4 runs finished earlier: nothing to run", again.Out);
    }

    // ---- the command line ----------------------------------------------------------------------------------------------

    [Fact]
    public void Sweep_is_listed_documented_and_refused_under_mpiexec()
    {
        Assert.Contains("\n  sweep ", CliTests.Run("--help").Out);
        var help = CliTests.Run("sweep", "--help").Out;
        foreach (var text in new[] { "--grid NAME=V1,V2", "--config FILE", "--parallel N", "--select-by", "--out DIR", "Train and lm can", "-- lm OPTIONS", "validation_bits_per_char", "retries the failed", "grid NAME = V1, V2", "command = train" })
            Assert.Contains(text, help);
        Assert.Contains("--validation-fraction F", CliTests.Run("train", "--help").Out);

        var communicators = InProcessCommunicator.CreateGroup(2);
        var errors = new StringWriter[2];
        var codes = new int[2];
        Parallel.For(0, 2, rank =>
        {
            errors[rank] = new StringWriter();
            codes[rank] = Cli.Cli.Run(["sweep", "--grid", "seed=1,2", "--out", PathOf("out")], TextWriter.Null, errors[rank], communicator: communicators[rank]);
        });
        Assert.Equal([2, 2], codes);
        Assert.Contains("'sweep' runs in one process; start it without mpiexec", errors[0].ToString());
        Assert.False(Directory.Exists(PathOf("out")));
    }

    /// <summary>The real thing: each run a process of the built tool, on the embedded digits (2 guessers × 2 seeds, one
    /// epoch of a tiny MLP: a few seconds), then the same sweep again, which starts none.</summary>
    [Fact]
    public void A_sweep_runs_each_run_as_a_process_of_the_tool_and_resumes()
    {
        var launcher = new ProcessLauncher("dotnet", [Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll")]);
        string[] args = ["--grid", "guesser=backprop,dfa", "--grid", "seed=1,2", "--out", PathOf("out"), "--parallel", "2",
            "--", "train", "--hidden", "8", "--epochs", "1", "--validation-fraction", "0.1"];
        var (code, output, error) = Sweep(launcher, args);
        Assert.True(code == 0, $"{error}\n{output}");
        Assert.Contains("[4/4] ", output);
        var runs = Rows(PathOf("out/sweep.csv"));
        Assert.Equal(4, runs.Count);
        Assert.All(runs, r =>
        {
            Assert.Equal(("ok", "0", "1"), (r["status"], r["exit_code"], r["epochs"]));
            Assert.InRange(Number(r["test_accuracy"]), 0.05, 1);
            Assert.InRange(Number(r["validation_accuracy"]), 0.0, 1);
            var folder = Path.Combine(Folder, "out", r["folder"]);
            Assert.Contains("1293 train / 144 validation / 360 test", File.ReadAllText(Path.Combine(folder, "run.log")));
            Assert.Equal(RunRecord.Ok, RunRecord.TryRead(Path.Combine(folder, "result.json"), out _)!.Status);
        });
        // Seeds differ, so do their runs; each run is the train run it claims to be (the same command in process agrees).
        Assert.NotEqual(runs[0]["test_accuracy"], runs[1]["test_accuracy"]);
        Assert.Equal(0, CliTests.Run("train", "--hidden", "8", "--epochs", "1", "--validation-fraction", "0.1", "--guesser", "dfa", "--seed", "2", "--quiet", "--no-plot", "--metrics", PathOf("check.csv")).Code);
        Assert.Equal(runs[3]["test_accuracy"], Number(File.ReadAllLines(PathOf("check.csv"))[1].Split(',')[4]).ToString("R", CultureInfo.InvariantCulture));
        Assert.Equal(2, Rows(PathOf("out/summary.csv")).Count);
        Assert.True(new FileInfo(PathOf("out/summary.png")).Length > 0);

        var again = Sweep(launcher, args);
        Assert.True(again.Code == 0, again.Err);
        Assert.Contains("all 4 runs finished earlier: nothing to run", again.Out);
        Assert.DoesNotContain("[1/", again.Out);
    }
}
