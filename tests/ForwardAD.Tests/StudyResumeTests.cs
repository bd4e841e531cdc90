using System.Diagnostics;

namespace ForwardAD.Tests;

/// <summary>
/// The studies that train (bias-variance, sharpening, downstream) interrupted through the command line and resumed end
/// with the CSV of a straight run, bit for bit; a resume with another option or another study's CSV is refused naming
/// the cause; a second study on the outputs of a running one is refused, the first's files intact; the one-shot studies
/// claim their outputs too; every study and `cosine` count their work done of all.
/// </summary>
public sealed class StudyResumeTests() : TemporaryFolderTests("forwardad-study-resume-")
{
    /// <summary>A tiny configuration with enough steps (batch 8: 179 a curve's epoch) that an interruption polled for
    /// lands while later curves still train.</summary>
    private static string[] Tiny(string study) => study switch
    {
        "sharpening" => ["study", study, "--hidden", "8,8", "--epochs", "2", "--batch-size", "8", "--powers", "0,1,2"],
        "downstream" => ["study", study, "--layers", "3", "--width", "8", "--epochs", "2", "--batch-size", "8"],
        _ => ["study", study, "--hidden", "8", "--epochs", "2", "--batch-size", "8"],
    };

    /// <summary>Runs <paramref name="args"/> in process with an interrupt token cancelled, as a Ctrl-C would, once
    /// <paramref name="csv"/> holds more than <paramref name="rows"/> lines; the exit code and stderr.</summary>
    private static (int Code, string Error) Interrupted(string[] args, string csv, int rows)
    {
        using var interrupt = new CancellationTokenSource();
        var watcher = Task.Run(() =>
        {
            while (!interrupt.IsCancellationRequested && !(File.Exists(csv) && Lines(csv) > rows)) Thread.Sleep(5);
            interrupt.Cancel();
        });
        var error = new StringWriter();
        int code = Cli.Cli.Run(args, new StringWriter(), error, listenForInterrupt: () => interrupt.Token);
        interrupt.Cancel();
        watcher.Wait();
        return (code, error.ToString());
    }

    /// <summary>The lines of a file being rewritten atomically by another thread (a rename: never half a file).</summary>
    private static int Lines(string path)
    {
        try { return File.ReadAllLines(path).Length; }
        catch (IOException) { return 0; }
    }

    [Theory]
    [InlineData("bias-variance")]
    [InlineData("sharpening")]
    [InlineData("downstream")]
    public void An_interrupted_study_resumed_ends_with_the_straight_runs_csv(string study)
    {
        var straight = PathOf("straight");
        CliTests.Succeeds([.. Tiny(study), "--out", straight]);
        var expected = File.ReadAllLines(Path.Combine(straight, study + ".csv"));

        var interrupted = PathOf("interrupted");
        var csv = Path.Combine(interrupted, study + ".csv");
        var checkpoint = PathOf("study.safetensors");
        // Stopped once the second curve has begun (a header and the first curve's 3 rows, then one more).
        var (code, error) = Interrupted([.. Tiny(study), "--out", interrupted, "--checkpoint", checkpoint], csv, rows: 5);
        Assert.True(code == 130, $"exit {code}, expected 130 (the study ended before the interruption?): {error}");
        var match = System.Text.RegularExpressions.Regex.Match(error.Trim(), @"^interrupted at step \d+ \(epoch \d+\): checkpoint (.+); resume with: forwardad (.*)$");
        Assert.True(match.Success, error);
        Assert.Equal(checkpoint, match.Groups[1].Value);
        Assert.True(Lines(csv) < expected.Length, "the interrupted study wrote every row");
        Assert.False(File.Exists(checkpoint + ".lock"), "the output lock is released");

        // The printed command (temporary paths need no quoting), run as printed.
        var (resumedCode, output, resumedError) = CliTests.Run(match.Groups[2].Value.Split(' '));
        Assert.True(resumedCode == 0, $"exit {resumedCode}: {resumedError}{output}");
        Assert.Contains($"resumed from {checkpoint}", output);
        Assert.Equal(expected, File.ReadAllLines(csv));
    }

    [Fact]
    public void A_resume_with_another_option_or_another_studys_csv_is_refused_naming_it()
    {
        var checkpoint = PathOf("bv.safetensors");
        var args = new[] { "study", "bias-variance", "--hidden", "8", "--epochs", "1", "--batch-size", "128", "--ridges", "none", "--out", PathOf("bv") };
        CliTests.Succeeds([.. args, "--checkpoint", checkpoint]);
        var csv = File.ReadAllText(Path.Combine(PathOf("bv"), "bias-variance.csv"));

        var (code, _, error) = CliTests.Run([.. args, "--guesses", "2", "--resume", checkpoint]);
        Assert.Equal(1, code);
        Assert.Contains("study_guesses is '1' but this run's is '2'", error);
        Assert.DoesNotContain("   at ", error);
        (code, _, error) = CliTests.Run([.. args, "--mode", "joint", "--resume", checkpoint]);
        Assert.Equal(1, code);
        Assert.Contains("study_mode is 'per-layer' but this run's is 'joint'", error);

        // Another study's checkpoint, and a CSV that is not the one the checkpoint was written after.
        (code, _, error) = CliTests.Run(["study", "downstream", "--layers", "3", "--width", "8", "--epochs", "1", "--batch-size", "128", "--out", PathOf("ds"), "--resume", checkpoint]);
        Assert.Equal(1, code);
        Assert.Contains("a checkpoint of `forwardad study bias-variance`", error);
        File.WriteAllText(Path.Combine(PathOf("bv"), "bias-variance.csv"), csv.Replace("bias-variance,\"directional", "bias-variance,\"other", StringComparison.Ordinal));
        (code, _, error) = CliTests.Run([.. args, "--resume", checkpoint]);
        Assert.Equal(1, code);
        Assert.Contains("does not hold the rows", error);
        // A train checkpoint is no study's.
        CliTests.Succeeds("train", "--guesser", "backprop", "--hidden", "8", "--epochs", "1", "--quiet", "--no-plot", "--metrics", PathOf("t.csv"), "--checkpoint", PathOf("t.safetensors"));
        (code, _, error) = CliTests.Run([.. args, "--resume", PathOf("t.safetensors")]);
        Assert.Equal(1, code);
        Assert.Contains("not a checkpoint of a study", error);
    }

    [Fact]
    public async Task A_second_study_on_the_outputs_of_a_running_one_is_refused_and_its_files_stay_intact()
    {
        var out1 = PathOf("first");
        var csv = Path.Combine(out1, "bias-variance.csv");
        using var interrupt = new CancellationTokenSource();
        var first = Task.Run(() => Cli.Cli.Run(["study", "bias-variance", "--hidden", "8", "--batch-size", "8", "--epochs", "50", "--out", out1], new StringWriter(), new StringWriter(), listenForInterrupt: () => interrupt.Token));
        try
        {
            var wait = Stopwatch.StartNew();
            while (!File.Exists(csv) && !first.IsCompleted && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(10);
            Assert.False(first.IsCompleted, "the first study ended early");
            var (code, _, error) = CliTests.Run([.. Tiny("bias-variance"), "--out", out1]);
            Assert.Equal(1, code);
            Assert.Contains("is in use by another run", error);
            Assert.False(first.IsCompleted);
            Assert.StartsWith("study,guesser,epoch,", File.ReadAllLines(csv)[0]);
        }
        finally
        {
            interrupt.Cancel();
            Assert.Equal(130, await first);
        }
        // Its rows are its own: every one names a curve of this study at an epoch of 0 … 50.
        Assert.All(File.ReadAllLines(csv).Skip(1), row => Assert.StartsWith("bias-variance,", row));
    }

    [Fact]
    public void A_one_shot_study_refuses_outputs_another_run_holds()
    {
        var folder = PathOf("held");
        Directory.CreateDirectory(folder);
        // The lock a running saturation study holds (the same exclusive open OutputLock takes).
        using (new FileStream(Path.Combine(folder, "saturation.csv") + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None))
        {
            var (code, _, error) = CliTests.Run("study", "saturation", "--hidden", "8", "--pretrain-epochs", "0", "--max-guesses", "4", "--ridges", "none", "--out", folder);
            Assert.Equal(1, code);
            Assert.Contains("is in use by another run", error);
            Assert.False(File.Exists(Path.Combine(folder, "saturation.csv")));
        }
    }

    [Fact]
    public void Studies_and_cosine_count_their_work_done_of_all()
    {
        var (code, output, error) = CliTests.Run("study", "saturation", "--hidden", "8", "--pretrain-epochs", "0", "--max-guesses", "4", "--ridges", "none", "--out", PathOf("s"));
        Assert.True(code == 0, error);
        Assert.Contains("[1/4 guessers; about ", output);
        Assert.Contains("[4/4 guessers]", output);
        (code, output, error) = CliTests.Run("study", "spectra", "--hidden", "8,6", "--pretrain-epochs", "0", "--examples", "16", "--jacobian-examples", "2", "--out", PathOf("s"));
        Assert.True(code == 0, error);
        Assert.Contains("[1/3 sites; about ", output);
        Assert.Contains("[3/3 sites]", output);
        (code, output, error) = CliTests.Run("cosine", "--hidden", "8", "--epochs", "2", "--guessers", "wt", "--csv", PathOf("c.csv"), "--no-plot");
        Assert.True(code == 0, error);
        Assert.Contains("epoch 1/2 measured [44/88 steps; about ", output);
        Assert.Contains("epoch 2/2 measured [88/88 steps]", output);
    }

    /// <summary>The cosine and study tables on an 80-column console: every line fits, no header word is cut, and the
    /// columns left out are named with the CSV that keeps them.</summary>
    [Fact]
    public void The_cosine_and_study_tables_fit_80_columns()
    {
        var output = new StringWriter();
        string[] names = ["directional descent", "activation perturbation", "Wᵀ", "2-layer downstream", "cosine-matched to Wᵀ (per-layer)", "backprop"];
        Cli.CosineCommand.WriteSummary(CliTests.ConsoleOf(output, 80), [.. names.Select(n => new Training.CosineSummary(n, 0.0055, 0.0045, -0.2089, 10.6669, 22))], "c.csv");
        CliTests.AssertFits(output.ToString(), ["guesser", "cosine", "to", "∇L", "(mean", "±", "std)", "1-step", "effectiveness", "samples"], ["guesser", "cosine", "effectiveness"]);
        Assert.Contains("narrow terminal: samples not shown; every column is in c.csv", output.ToString());

        output = new StringWriter();
        Cli.StudyCommands.WriteCurveTable(CliTests.ConsoleOf(output, 80), "sharpening.csv",
            [.. names.Select(n => new Studies.CurvePoint(n, 20, 0.123456, 0.5, 0.7, 0.975, 0.25, [12.345]))], ["first_layer_effective_rank"]);
        CliTests.AssertFits(output.ToString(), ["guesser", "epochs", "train", "loss", "test", "acc", "cosine", "(last", "epoch)", "first", "layer", "effective", "rank"],
            ["guesser", "epochs", "test", "cosine"]);
    }
}
