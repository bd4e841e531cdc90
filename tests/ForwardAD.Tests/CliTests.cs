using ForwardAD.Cli;
using ForwardAD.Data;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>
/// The command-line tool end to end on the embedded digits, in process through its entry point: the main job,
/// its CSV, resume, exit codes and messages for bad input.
/// </summary>
public sealed class CliTests() : TemporaryFolderTests("forwardad-cli-")
{
    /// <summary>Every line of a console table fits 80 columns; its header rows hold only <paramref name="headerWords"/>
    /// (none cut), among them every one of <paramref name="required"/>.</summary>
    internal static void AssertFits(string table, string[] headerWords, string[] required)
    {
        var lines = table.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        Assert.All(lines, l => Assert.True(l.Length <= 80, $"{l.Length} columns: {l}"));
        // The header rows: between the top border and the first rule under them.
        var header = lines.SkipWhile(l => !l.StartsWith('┌')).Skip(1).TakeWhile(l => l.StartsWith('│')).ToList();
        var tokens = header.SelectMany(l => l.Split(['│', ' '], StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.NotEmpty(tokens);
        Assert.All(tokens, t => Assert.True(headerWords.Contains(t), $"header word '{t}' is cut or unknown:\n{table}"));
        Assert.All(required, w => Assert.Contains(w, tokens));
    }

    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Cli.Cli.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>A run that ends well: exit code 0 (else the exit code, stderr and stdout in the failure).</summary>
    internal static void Succeeds(params string[] args)
    {
        var (code, output, error) = Run(args);
        Assert.True(code == 0, $"exit {code}: {error}{output}");
    }

    /// <summary>A usage or data error: the expected code, the message on stderr (not stdout), no stack trace, no colour.</summary>
    internal static string Fails(int code, params string[] args)
    {
        var (actual, output, error) = Run(args);
        Assert.True(code == actual, $"exit code {actual}, expected {code}; stderr: {error}; stdout: {output}");
        Assert.StartsWith("error: ", error);
        Assert.DoesNotContain("   at ", error);
        Assert.DoesNotContain("\u001b[", error + output);
        Assert.DoesNotContain("error", output);
        return error;
    }

    // Tiny runs: an 8-unit hidden layer, one or two epochs on digits, a fraction of a second each; no plot (drawing is
    // tested on its own below).
    private string[] Tiny(string metrics) => ["--hidden", "8", "--quiet", "--no-plot", "--metrics", PathOf(metrics)];

    /// <summary>--version prints the version (a usage error before); a rate that is not a finite number says so, not that
    /// a negative rate would climb the loss.</summary>
    [Fact]
    public void Version_and_a_non_finite_rate()
    {
        var (code, output, error) = Run("--version");
        Assert.True(code == 0, error);
        Assert.Matches(@"^forwardad \d+\.\d+\.\d+", output);
        foreach (var value in new[] { "nan", "Infinity", "-Infinity" })
            Assert.Contains($"--lr must be a finite number; got '{value}'", Fails(2, "--lr", value));
        Assert.Contains("--lr must be a number > 0", Fails(2, "--lr", "-1"));
    }

    [Fact]
    public void Train_writes_a_metrics_row_per_epoch_and_resumes_into_the_same_file()
    {
        var metrics = PathOf("m.csv");
        var checkpoint = PathOf("c.safetensors");
        string[] common = ["--guesser", "wt", "--mode", "per-layer", "--optimizer", "adamw", "--lr", "1e-3", "--hidden", "32", "--quiet", "--metrics", metrics];
        Assert.Equal(0, Run([.. common, "--epochs", "2", "--checkpoint", checkpoint]).Code);
        Assert.Equal(3, File.ReadAllLines(metrics).Length);
        // --epochs may differ on resume with a constant schedule: the run goes on for longer.
        var (code, _, error) = Run([.. common, "--epochs", "3", "--resume", checkpoint]);
        Assert.True(code == 0, error);
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(4, lines.Length);
        Assert.StartsWith("epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,cosine_layer1,cosine_layer2", lines[0]);
        Assert.EndsWith(",examples_per_second,exchanged_bytes_per_step,wall_seconds,run", lines[0]);
        Assert.StartsWith("3,", lines[3]);
        Assert.Single(lines.Skip(1).Select(l => l.Split(',')[^1]).Distinct());
        Assert.All(lines, l => Assert.Equal(lines[0].Split(',').Length, l.Split(',').Length));
    }

    /// <summary>Options without a command are train's (no arguments at all run compare, the main job: a minute, not run
    /// here; its tiny version is tested below).</summary>
    [Fact]
    public void Options_without_a_command_mean_train_and_help_lists_the_commands_and_options()
    {
        Assert.Equal(0, Run([.. Tiny("m.csv"), "--epochs", "1"]).Code);
        Assert.Equal(2, File.ReadAllLines(PathOf("m.csv")).Length);
        var (code, help, _) = Run("train", "--help");
        Assert.Equal(0, code);
        foreach (var option in new[] { "--guesser", "--lr", "--epochs", "--hidden", "--layers", "--width", "--data", "--test-data", "--standardize", "--checkpoint", "--resume", "--metrics", "--quiet", "--device", "--clip", "--no-plot" })
            Assert.Contains(option, help);
        Assert.Contains("with GrAPE", help);
        var usage = Run("--help").Out;
        foreach (var command in new[] { "compare", "train", "cosine", "grape-toy", "lm", "sample", "plot" }) Assert.Contains($"\n  {command} ", usage);
        Assert.Contains("what `forwardad` alone runs", usage);
        Assert.Contains("--size", Run("grape-toy", "--help").Out);
        Assert.Contains("--out DIR", Run("compare", "--help").Out);
        Assert.Contains("--out STEM", Run("plot", "--help").Out);
    }

    [Fact]
    public void Bad_options_are_usage_errors_with_exit_code_2_on_stderr()
    {
        Assert.Contains("--epochz", Fails(2, "--epochz", "3"));
        Assert.Contains("Unknown guesser 'magic'", Fails(2, "--guesser", "magic"));
        Assert.Contains("error: --hidden is given twice; give it once.", Fails(2, "--hidden", "4", "--hidden", "8"));
        // lm trains a transformer: Ren et al.'s LocalMixer estimator is not offered (nor listed in its help).
        Assert.Contains("Unknown guesser 'ren' for --guesser", Fails(2, "lm", "--guesser", "ren"));
        Assert.DoesNotContain(" ren ", Run("lm", "--help").Out);
        // compare runs its own methods: options none of them uses are not among its options.
        Assert.Contains("'--k'", Fails(2, "compare", "--k", "3"));
        Assert.DoesNotContain("--k K", Run("compare", "--help").Out);
        Assert.Contains("--epochs must be an integer", Fails(2, "--epochs", "many"));
        Assert.Contains("Unknown command 'trian'", Fails(2, "trian"));
        Assert.Contains("--lr", Fails(2, "--lr", "1", "--lr", "2"));
        Assert.Contains("--data needs a value", Fails(2, "--data", "--quiet"));
        Assert.Contains("--lr must be a number > 0", Fails(2, "--lr", "-0.1"));
    }

    /// <summary>A negative or zero norm is refused for its sign; NaN, ∞ and 1e40 (beyond float32: ∞) as not finite.</summary>
    [Theory]
    [InlineData("-1", "--clip must be a norm > 0")]
    [InlineData("0", "--clip must be a norm > 0")]
    [InlineData("NaN", "--clip must be a finite number")]
    [InlineData("Infinity", "--clip must be a finite number")]
    [InlineData("1e40", "--clip must be a finite number")]
    public void Clip_must_be_a_positive_finite_norm(string clip, string message) =>
        Assert.Contains(message, Fails(2, [.. Tiny("m.csv"), "--epochs", "1", "--clip", clip]));

    [Fact]
    public void Conflicting_options_are_reported_as_conflicts_naming_both()
    {
        var error = Fails(2, "--hidden", "8", "--layers", "2");
        Assert.Contains("--hidden and --layers cannot be used together", error);
        Assert.DoesNotContain("Unknown", error);
        Assert.Contains("--hidden and --width cannot be used together", Fails(2, "--hidden", "8", "--width", "16"));
        Assert.Contains("--test-fraction and --test-data cannot be used together", Fails(2, "--test-fraction", "0.3", "--test-data", "digits"));
        Assert.Contains("--width needs --layers", Fails(2, "--width", "16"));
        Assert.Contains("--k applies only to --guesser downstream", Fails(2, "--guesser", "wt", "--k", "3"));
        Assert.Contains("--warmup applies only to --schedule cosine", Fails(2, "--warmup", "3"));
    }

    [Fact]
    public void A_weight_matrix_too_large_for_one_tensor_is_a_usage_error_naming_the_option()
    {
        Assert.Contains("--width", Fails(2, "--layers", "3", "--width", "16000000"));
        Assert.Contains("46341×46341", Fails(2, "--hidden", "46341,46341"));
        Assert.Contains("--width must be an integer from 1 to", Fails(2, "--layers", "3", "--width", "2147483647"));
        // Each matrix fits a tensor, the whole model does not fit one parameter store: the library's check, before allocating.
        Assert.Contains("parameters", Fails(1, "--layers", "8", "--width", "40000", "--quiet", "--metrics", PathOf("m.csv")));
    }

    [Fact]
    public void Bad_files_are_data_errors_with_exit_code_1_naming_the_file()
    {
        Assert.Contains("does not exist", Fails(1, "--data", PathOf("missing.csv")));
        File.WriteAllText(PathOf("ragged.csv"), "1,2,0\n1,1\n");
        Assert.Contains("line 2", Fails(1, "--data", PathOf("ragged.csv")));
        Assert.Contains("is a directory", Fails(1, "--data", Folder));
        Assert.Contains("is a directory", Fails(1, "--data", $"idx:{Folder},{PathOf("labels")}"));
    }

    /// <summary>A machine without a GPU is a runtime condition, not a usage mistake: exit 1 with the driver's reason
    /// (this test runs where CUDA is absent; on a GPU machine it is skipped by its own guard).</summary>
    [Fact]
    public void A_missing_gpu_is_a_runtime_error_not_a_usage_error()
    {
        if (ForwardAD.Cuda.CudaBackend.TryCreate(out _) is { } gpu)
        {
            gpu.Dispose();
            Assert.Skip("this machine has a working GPU: a missing one cannot be provoked here");
        }
        var error = Fails(1, "--device", "cuda", "--epochs", "1", "--quiet");
        Assert.Contains("--device cuda", error);
        Assert.DoesNotContain("--help", error);
    }

    [Fact]
    public void A_path_with_a_colon_is_loaded_as_a_file()
    {
        var path = PathOf("run:1.csv");
        File.WriteAllLines(path, Enumerable.Range(0, 40).Select(i => $"{i % 7},{i % 3},{i % 2}"));
        var (code, _, error) = Run("--data", path, "--hidden", "4", "--epochs", "1", "--batch-size", "8", "--quiet", "--metrics", PathOf("m.csv"));
        Assert.True(code == 0, error);
        Assert.Equal(2, File.ReadAllLines(PathOf("m.csv")).Length);
    }

    [Fact]
    public void A_test_set_that_does_not_fit_the_training_data_is_refused_before_training_naming_its_file()
    {
        File.WriteAllLines(PathOf("train.csv"), Enumerable.Range(0, 40).Select(i => $"{i % 7},{i % 5},{i % 3}"));
        File.WriteAllLines(PathOf("narrow.csv"), Enumerable.Range(0, 10).Select(i => $"{i % 7},{i % 3}"));
        File.WriteAllLines(PathOf("classes.csv"), Enumerable.Range(0, 10).Select(i => $"{i % 7},{i % 5},{i % 4}"));
        string[] common = ["--data", PathOf("train.csv"), "--hidden", "4", "--batch-size", "8", "--quiet", "--metrics", PathOf("m.csv"), "--checkpoint", PathOf("c.safetensors")];
        var error = Fails(1, [.. common, "--test-data", PathOf("narrow.csv")]);
        Assert.Contains("narrow.csv", error);
        Assert.Contains("features per example", error);
        Assert.Contains("classes.csv", Fails(1, [.. common, "--test-data", PathOf("classes.csv")]));
        Assert.False(File.Exists(PathOf("m.csv")));
        Assert.False(File.Exists(PathOf("c.safetensors")));
    }

    [Fact]
    public void Resume_refuses_every_option_that_changes_the_result()
    {
        var checkpoint = PathOf("c.safetensors");
        string[] Args(params string[] extra) => [.. Tiny("m.csv"), "--epochs", "1", .. extra];
        void Start(params string[] options) => Assert.Equal(0, Run([.. Args(options), "--checkpoint", checkpoint]).Code);
        string Refused(string key, params string[] options)
        {
            var error = Fails(1, [.. Args(options), "--resume", checkpoint]);
            Assert.Contains(key, error);
            Assert.Contains("drop --resume", error);
            return error;
        }

        Start("--guesser", "ap", "--guesses", "2");
        Refused("guesses", "--guesser", "ap", "--guesses", "3");
        Refused("mode", "--guesser", "ap", "--guesses", "2", "--mode", "joint"); // started at the MLP default, per-layer
        Refused("lr", "--guesser", "ap", "--guesses", "2", "--lr", "0.05");
        Refused("standardize", "--guesser", "ap", "--guesses", "2", "--standardize");
        Refused("test-data", "--guesser", "ap", "--guesses", "2", "--test-fraction", "0.3");
        Refused("clip", "--guesser", "ap", "--guesses", "2", "--clip", "1");
        // Not in the configuration: output options, and --epochs with a constant schedule.
        Assert.Equal(0, Run([.. Tiny("other.csv"), "--epochs", "2", "--guesser", "ap", "--guesses", "2", "--resume", checkpoint, "--cosine-every", "3"]).Code);

        Start("--guesser", "grape");
        Refused("grape-lr", "--guesser", "grape", "--grape-lr", "0.02");
        Refused("grape-placement", "--guesser", "grape", "--grape-placement", "a");
        Refused("feedback-init", "--guesser", "grape", "--feedback-init", "kaiming");

        Start("--schedule", "step", "--decay", "0.5");
        Refused("decay", "--schedule", "step", "--decay", "0.25");
        // The step schedule's length is the run's: another --epochs changes every later rate.
        Assert.Contains("schedule-steps", Fails(1, [.. Tiny("m.csv"), "--epochs", "3", "--schedule", "step", "--decay", "0.5", "--resume", checkpoint]));

        Start("--schedule", "cosine", "--warmup", "2");
        Refused("warmup", "--schedule", "cosine", "--warmup", "3");
    }

    [Fact]
    public void The_same_model_given_as_hidden_widths_or_as_layers_and_width_resumes()
    {
        var checkpoint = PathOf("c.safetensors");
        Assert.Equal(0, Run("--hidden", "8,8", "--epochs", "1", "--quiet", "--metrics", PathOf("m.csv"), "--checkpoint", checkpoint).Code);
        var (code, _, error) = Run("--layers", "3", "--width", "8", "--epochs", "2", "--quiet", "--metrics", PathOf("m.csv"), "--resume", checkpoint);
        Assert.True(code == 0, error);
        Assert.Equal(3, File.ReadAllLines(PathOf("m.csv")).Length);
    }

    [Fact]
    public void A_resumed_run_never_mixes_its_metrics_with_another_runs()
    {
        var checkpoint = PathOf("c.safetensors");
        var metrics = PathOf("m.csv");
        Assert.Equal(0, Run([.. Tiny("m.csv"), "--epochs", "1", "--checkpoint", checkpoint]).Code);
        // Another run (another rate) writes the same CSV.
        Assert.Equal(0, Run([.. Tiny("m.csv"), "--epochs", "1", "--lr", "0.05"]).Code);
        var before = File.ReadAllText(metrics);
        var error = Fails(1, [.. Tiny("m.csv"), "--epochs", "2", "--resume", checkpoint]);
        Assert.Contains("another run", error);
        Assert.Contains("m.csv", error);
        Assert.Equal(before, File.ReadAllText(metrics));
    }

    [Fact]
    public void An_empty_metrics_file_on_resume_starts_afresh_and_a_foreign_one_is_refused()
    {
        var checkpoint = PathOf("c.safetensors");
        var metrics = PathOf("m.csv");
        Assert.Equal(0, Run([.. Tiny("m.csv"), "--epochs", "1", "--checkpoint", checkpoint]).Code);
        File.WriteAllText(metrics, "");
        var (code, _, error) = Run([.. Tiny("m.csv"), "--epochs", "2", "--resume", checkpoint]);
        Assert.True(code == 0, error);
        Assert.Contains("is empty", error);
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("2,", lines[1]);

        File.WriteAllText(metrics, "epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,cosine_layer1,cosine_layer2,examples_per_second,wall_seconds\n1,2,0.5,2,0.5,1,1,1,100,1\n");
        Assert.Contains("older forwardad", Fails(1, [.. Tiny("m.csv"), "--epochs", "3", "--resume", checkpoint]));
        File.WriteAllText(metrics, "a,b\n1,2\n");
        Assert.Contains("not a metrics CSV", Fails(1, [.. Tiny("m.csv"), "--epochs", "3", "--resume", checkpoint]));
    }

    [Fact]
    public void A_failed_metrics_write_leaves_no_temporary_file()
    {
        var directory = Directory.CreateDirectory(PathOf("taken")).FullName;
        Assert.Contains("is a directory", Fails(1, "--hidden", "4", "--epochs", "1", "--quiet", "--metrics", directory));
        Assert.Empty(Directory.GetFiles(Folder, "*.tmp"));

        var target = PathOf("out.csv");
        File.WriteAllText(target, "old");
        static IEnumerable<string> Failing() { yield return "a"; throw new IOException("disk full"); }
        Assert.Throws<IOException>(() => AtomicFile.WriteAllLines(target, Failing()));
        Assert.Equal("old", File.ReadAllText(target));
        Assert.Empty(Directory.GetFiles(Folder, "*.tmp"));
    }

    /// <summary>A run killed while writing its metrics leaves its temporary (named after the file and its process);
    /// the next write of the same file removes it, but never one that a live writer holds locked.</summary>
    [Fact]
    public void A_metrics_write_removes_the_temporary_of_a_killed_writer_and_keeps_a_live_ones()
    {
        var target = PathOf("metrics.csv");
        var dead = PathOf($".metrics.csv.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllText(dead, "half a file");
        var live = PathOf($".metrics.csv.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllText(live, "being written");
        using (new FileStream(live, FileMode.Open, FileAccess.ReadWrite, FileShare.None))
        {
            AtomicFile.WriteAllLines(target, ["a,b", "1,2"]);
            Assert.False(File.Exists(dead), "the temporary of a writer that no longer runs was kept");
            Assert.True(File.Exists(live), "a temporary held open by a live writer was deleted");
        }
        Assert.Equal(["a,b", "1,2"], File.ReadAllLines(target));
        Assert.Equal([live], Directory.GetFiles(Folder, "*.tmp"));
        // Through the command: train's metrics write removes a dead run's temporary too.
        var stray = PathOf($".m.csv.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllText(stray, "half a file");
        Assert.Equal(0, Run([.. Tiny("m.csv"), "--epochs", "1"]).Code);
        Assert.False(File.Exists(stray));
    }

    /// <summary>A console as the tool makes one, <paramref name="width"/> columns wide, writing to <paramref name="output"/>.</summary>
    internal static Spectre.Console.IAnsiConsole ConsoleOf(StringWriter output, int width)
    {
        var console = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings
        {
            Ansi = Spectre.Console.AnsiSupport.No,
            ColorSystem = Spectre.Console.ColorSystemSupport.NoColors,
            Interactive = Spectre.Console.InteractionSupport.No,
            Out = new Spectre.Console.AnsiConsoleOutput(output),
        });
        console.Profile.Width = width;
        return console;
    }

    /// <summary>The first cell of each data row of a rendered table (its border lines and header rows have none that parse).</summary>
    private static List<int> FirstColumn(string output) =>
        [.. output.Split('\n').Where(l => l.StartsWith('│')).Select(l => l.Split('│')[1].Trim())
            .Where(c => int.TryParse(c, System.Globalization.CultureInfo.InvariantCulture, out _)).Select(c => int.Parse(c, System.Globalization.CultureInfo.InvariantCulture))];

    private static Training.EpochReport Epoch(int epoch, double testAccuracy) =>
        new(epoch, 0.5, 0.9, 0.6, testAccuracy, [0.1, 0.2], 0.15, 12345, TimeSpan.FromSeconds(epoch + 1))
        {
            FeedbackAlignment = [0.3], ValidationLoss = 0.55, ValidationAccuracy = testAccuracy, ExchangedBytesPerStep = 123456,
        };

    /// <summary>The end-of-run table of a 10-epoch run lists every epoch (it listed 1, 2, 4, 6, 8 and 10).</summary>
    [Fact]
    public void The_final_table_of_a_ten_epoch_run_lists_every_epoch()
    {
        var (code, output, error) = Run([.. Tiny("m.csv"), "--epochs", "10"]);
        Assert.True(code == 0, error);
        Assert.Equal(Enumerable.Range(1, 10), FirstColumn(output));
        Assert.DoesNotContain("shown", output);
    }

    /// <summary>A run too long for the table shows one epoch in N, always the first, the best and the last, and says so.</summary>
    [Fact]
    public void A_long_run_thins_its_table_keeping_the_first_the_best_and_the_last_and_says_so()
    {
        var reports = Enumerable.Range(0, 100).Select(e => Epoch(e, e == 41 ? 0.99 : 0.5)).ToList();
        var output = new StringWriter();
        TrainCommand.WriteEpochTable(ConsoleOf(output, 1000), reports, validated: false, dataParallel: false, "runs/m.csv");
        var shown = FirstColumn(output.ToString());
        Assert.InRange(shown.Count, 20, TrainCommand.MaxTableRows);
        Assert.Contains(1, shown);
        Assert.Contains(42, shown);
        Assert.Equal(100, shown[^1]);
        Assert.Equal(shown.Order(), shown);
        Assert.Contains("one epoch in 4 shown, and the first, the last and the best by test accuracy (epoch 42); every epoch is in runs/m.csv", output.ToString());
        // 30 epochs still fit.
        Assert.Equal(30, TrainCommand.ShownEpochs(reports[..30], validated: false).Shown.Count);
    }

    /// <summary>At 80 columns the tables of train and lm fit, and no header word is cut: headers wrap word by word, and
    /// optional columns (speed, time, bytes exchanged, alignment) are left out, with a line that says so.</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void The_final_tables_fit_80_columns_without_cutting_a_header(bool validated, bool dataParallel)
    {
        var output = new StringWriter();
        TrainCommand.WriteEpochTable(ConsoleOf(output, 80), [Epoch(0, 0.5), Epoch(99, 0.975)], validated, dataParallel, "m.csv");
        string[] words = ["epoch", "train", "loss", "acc", "test", "cos", "global", "B·J", "align", "examples/s", "val", "bytes/step"];
        AssertFits(output.ToString(), words, ["epoch", "train", "loss", "acc", "test", "cos", "global", .. validated ? ["val"] : Array.Empty<string>()]);
        if (validated || dataParallel)
            Assert.Matches(@"narrow terminal: (.*, )?examples/s(, .*)? not shown; every column is in\s+m\.csv", output.ToString());

        output = new StringWriter();
        var evaluation = new Training.TextEvaluation(1.5, 0.456, 1000);
        LanguageModelCommands.WriteStepTable(ConsoleOf(output, 80),
            [new Training.LanguageModelReport(100000, 2.1, evaluation, [0.1], 0.123, 54321, TimeSpan.FromSeconds(4321)) { Test = validated ? evaluation : null }], validated, "lm.csv");
        AssertFits(output.ToString(), ["step", "train", "bits/char", "validation", "next-byte", "acc", "test", "cos", "global", "tokens/s", "training", "time"],
            ["step", "train", "bits/char", "validation", "next-byte", "acc", "cos", "global", .. validated ? ["test"] : Array.Empty<string>()]);

        // Wide (a redirected output): one line of headers, every column.
        output = new StringWriter();
        TrainCommand.WriteEpochTable(ConsoleOf(output, 1000), [Epoch(0, 0.5)], validated, dataParallel, "m.csv");
        Assert.Contains("│ epoch │ train loss │ train acc │ test loss │ test acc │ cos global │ B·J align │ examples/s │", output.ToString());
        Assert.DoesNotContain("narrow", output.ToString());
    }

    [Fact]
    public void Standardize_z_scores_every_feature_with_the_given_statistics()
    {
        // Feature 0 varies with a large offset, feature 1 is constant.
        var data = new Dataset("d", new Shape(2), 2, [1000f, 5f, 1002f, 5f, 1004f, 5f, 1006f, 5f], [0f, 1f, 0f, 1f]);
        var (mean, deviation) = data.FeatureStatistics();
        Assert.Equal([1003f, 5f], mean);
        Assert.Equal(MathF.Sqrt(5f), deviation[0], 5);
        Assert.Equal(1f, deviation[1]);
        var z = data.Standardize(mean, deviation);
        var column = new[] { z.Features[0], z.Features[2], z.Features[4], z.Features[6] };
        Assert.Equal(0.0, column.Average(), 6);
        Assert.Equal(1.0, Math.Sqrt(column.Average(v => (double)v * v)), 5);
        Assert.All(new[] { z.Features[1], z.Features[3], z.Features[5], z.Features[7] }, v => Assert.Equal(0f, v));
        Assert.Equal(data.Labels, z.Labels);
        // The test set is scaled with the training set's statistics, not its own.
        var test = new Dataset("t", new Shape(2), 2, [1003f, 6f], [0f]);
        Assert.Equal([0f, 1f], test.Standardize(mean, deviation).Features);
        Assert.Throws<ArgumentException>(() => test.Standardize([0f], [1f]));
    }

    [Fact]
    public void Standardize_trains_and_is_part_of_the_configuration()
    {
        var (code, output, error) = Run([.. Tiny("m.csv"), "--epochs", "1", "--standardize"]);
        Assert.True(code == 0, error);
        Assert.DoesNotContain("\u001b[", output);
        Assert.Equal(2, File.ReadAllLines(PathOf("m.csv")).Length);
    }

    [Fact]
    public void The_toy_experiment_command_writes_every_step()
    {
        var csv = PathOf("toy.csv");
        Assert.Equal(0, Run("grape-toy", "--size", "20", "--steps", "5", "--seeds", "2", "--csv", csv).Code);
        // 4 rules × 5 starts × 2 seeds × (5 steps + the start) rows, plus the header.
        Assert.Equal(1 + 4 * 5 * 2 * 6, File.ReadAllLines(csv).Length);
        AssertFigure(PathOf("toy"), columns: 2, rows: 2); // one panel per rule
        AssertRedrawn(csv, "grape-toy", columns: 2, rows: 2);
        Assert.Contains("--size must be an integer from 2 to 46340", Fails(2, "grape-toy", "--size", "100000"));
    }

    [Fact]
    public void The_cosine_command_writes_every_measurement()
    {
        var csv = PathOf("cos.csv");
        var (code, _, error) = Run("cosine", "--hidden", "8", "--epochs", "1", "--every", "20", "--guessers", "ap,wt,backprop", "--csv", csv);
        Assert.True(code == 0, error);
        Assert.True(File.ReadAllLines(csv).Length > 1);
        AssertFigure(PathOf("cos"), columns: 2, rows: 1);
        AssertRedrawn(csv, "cosine", columns: 2, rows: 1);
        Assert.Contains("Unknown guesser 'nope' in --guessers", Fails(2, "cosine", "--guessers", "ap,nope", "--csv", csv));
    }

    // ---- CNNs (issue 12) ----------------------------------------------------------------------

    /// <summary>A tiny CNN on the embedded digits (8×8×1 images): 4 and 8 channels, a fraction of a second per epoch.</summary>
    private const string TinyCnn = "cnn:c4k3-bn-relu-p2,c8k3-relu,gap";

    [Fact]
    public void A_cnn_trains_on_the_digits_images_with_backprop_and_activation_perturbation()
    {
        foreach (var guesser in new[] { "backprop", "ap" })
        {
            var metrics = PathOf($"{guesser}.csv");
            var (code, output, error) = Run("--model", TinyCnn, "--guesser", guesser, "--epochs", "1", "--quiet", "--metrics", metrics);
            Assert.True(code == 0, error);
            Assert.Contains("cnn 8x8x1 c4k3-bn-relu-p2,c8k3-relu,gap -> 10 classes", output);
            var lines = File.ReadAllLines(metrics);
            Assert.Equal(2, lines.Length);
            // Sites: conv1, bn1, conv2, classifier; their cosine columns are named by the layers.
            Assert.StartsWith("epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,cosine_conv1,cosine_bn1,cosine_conv2,cosine_classifier,examples_per_second", lines[0]);
        }
    }

    [Fact]
    public void The_cnn_spec_is_part_of_the_configuration_and_resume_refuses_another()
    {
        var checkpoint = PathOf("c.safetensors");
        Assert.Equal(0, Run("--model", TinyCnn, "--epochs", "1", "--quiet", "--metrics", PathOf("m.csv"), "--checkpoint", checkpoint).Code);
        // The same net written another way is the same model: the canonical spec is recorded.
        var (code, _, error) = Run("--model", "cnn:C4K3P1-bn-relu-p2s2-c8k3-relu-gap", "--epochs", "2", "--quiet", "--metrics", PathOf("m.csv"), "--resume", checkpoint);
        Assert.True(code == 0, error);
        Assert.Equal(3, File.ReadAllLines(PathOf("m.csv")).Length);
        var refused = Fails(1, "--model", "cnn:c4k3-bn-relu-p2,c6k3-relu,gap", "--epochs", "3", "--quiet", "--metrics", PathOf("m.csv"), "--resume", checkpoint);
        Assert.Contains("model", refused);
        Assert.Contains("drop --resume", refused);
        Assert.Contains("model", Fails(1, "--hidden", "8", "--epochs", "3", "--quiet", "--metrics", PathOf("m.csv"), "--resume", checkpoint));
    }

    [Fact]
    public void Cnn_model_mistakes_are_usage_errors_naming_the_option()
    {
        Assert.Contains("--hidden applies only to --model mlp; this run uses --model cnn-small. Drop --hidden", Fails(2, "--model", "cnn-small", "--hidden", "8"));
        Assert.Contains("--layers applies only to --model mlp", Fails(2, "--model", TinyCnn, "--layers", "3"));
        Assert.Contains("--activation applies only to --model mlp", Fails(2, "--model", "vgg-small", "--activation", "tanh"));
        Assert.Contains("Unknown model 'resnet' for --model. Use mlp, cnn-small, vgg-small, alexnet-small, cnn:SPEC or localmixer:SPEC", Fails(2, "--model", "resnet"));
        var syntax = Fails(2, "--model", "cnn:c4k3-x9,gap");
        Assert.Contains("--model cnn:c4k3-x9,gap: CNN spec 'c4k3-x9,gap', layer 2 'x9': not a layer of the grammar", syntax);
        Assert.Contains("c<N>[k<K>][s<S>][p<P>][g<G>][b0]", syntax);
        // 8×8 digits: alexnet-small's third 3×3/2 pooling meets a 1×1 map.
        var vanishing = Fails(2, "--model", "alexnet-small");
        Assert.Contains("--model alexnet-small: CNN spec", vanishing);
        Assert.Contains("'p3s2' (input [1, 1, 48])", vanishing);
        Assert.Contains("the image vanishes", vanishing);
        File.WriteAllLines(PathOf("flat.csv"), Enumerable.Range(0, 40).Select(i => $"{i % 7},{i % 5},{i % 3}"));
        var notImage = Fails(2, "--data", PathOf("flat.csv"), "--model", "cnn-small", "--batch-size", "8");
        Assert.Contains("--model cnn-small needs image data, but the features of flat.csv (train) are a vector [2]", notImage);
        Assert.Contains("use --model mlp", notImage);
        Assert.Contains("--model", Run("train", "--help").Out);
    }

    [Fact]
    public void Fashion_mnist_is_found_by_name_and_its_absence_names_the_install_line()
    {
        var empty = Directory.CreateDirectory(PathOf("no-fashion")).FullName;
        var error = Fails(1, "--data", $"fashion-mnist:{empty}", "--model", "cnn-small", "--quiet", "--metrics", PathOf("m.csv"));
        Assert.Contains("train-images-idx3-ubyte.gz is missing", error);
        Assert.Contains("sudo apt-get install dataset-fashion-mnist", error);
        // Stand-in files with the original names: the test set is the folder's t10k files, not a split.
        var folder = Directory.CreateDirectory(PathOf("fashion")).FullName;
        foreach (var (prefix, count) in new[] { ("train", 40), ("t10k", 12) })
        {
            var pixels = Enumerable.Range(0, count * 36).Select(i => (byte)(i * 7 % 256)).ToArray();
            File.WriteAllBytes(Path.Combine(folder, $"{prefix}-images-idx3-ubyte.gz"), CnnSpecTests.Gzip(IdxBytes([count, 6, 6], pixels)));
            File.WriteAllBytes(Path.Combine(folder, $"{prefix}-labels-idx1-ubyte.gz"), CnnSpecTests.Gzip(IdxBytes([count], [.. Enumerable.Range(0, count).Select(i => (byte)(i % 10))])));
        }
        var (code, output, runError) = Run("--data", $"fashion-mnist:{folder}", "--model", "cnn:c4k3-relu,gap", "--batch-size", "8", "--epochs", "1", "--quiet", "--metrics", PathOf("f.csv"));
        Assert.True(code == 0, runError);
        Assert.Contains("(40 train / 12 test)", output);
        Assert.Contains("cnn 6x6x1", output);
    }

    private static byte[] IdxBytes(int[] dims, byte[] data)
    {
        var bytes = new byte[4 + 4 * dims.Length + data.Length];
        bytes[2] = 0x08;
        bytes[3] = (byte)dims.Length;
        for (int d = 0; d < dims.Length; d++) System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * d), dims[d]);
        data.CopyTo(bytes, 4 + 4 * dims.Length);
        return bytes;
    }

    /// <summary>`lm` trains a tiny transformer on a text the test writes, writes its metrics and checkpoint, and `sample`
    /// continues a prompt from that checkpoint; mistakes are usage or data errors naming the option or file.</summary>
    [Fact]
    public void Lm_trains_on_a_text_file_and_sample_continues_a_prompt()
    {
        var text = PathOf("text.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Range(0, 200).Select(i => $"to be or not to be {i % 7}\n")));
        var (metrics, checkpoint) = (PathOf("lm.csv"), PathOf("lm.safetensors"));
        var (code, output, error) = Run("lm", "--text", text, "--model", "transformer:l1-h2-d16-t16", "--steps", "20", "--eval-every", "10",
            "--batch-size", "4", "--validation-windows", "8", "--optimizer", "adamw", "--lr", "3e-3", "--quiet", "--metrics", metrics, "--checkpoint", checkpoint);
        Assert.True(code == 0, error);
        Assert.Contains("bits per character after 20 steps", output);
        var rows = File.ReadAllLines(metrics);
        Assert.Equal(3, rows.Length); // header + 2 evaluations
        Assert.DoesNotContain(",cosine_block1.attn,", rows[0] + ","); // not a site: attention has no parameters
        Assert.Contains(",cosine_block1.q,", rows[0] + ","); // every projection is
        Assert.Equal(rows[0].Split(',').Length, rows[1].Split(',').Length);
        AssertFigure(PathOf("lm"), columns: 3, rows: 1);
        AssertRedrawn(metrics, "lm", columns: 3, rows: 1);
        (code, output, error) = Run("sample", "--checkpoint", checkpoint, "--prompt", "to be", "--length", "20", "--seed", "3");
        Assert.True(code == 0, error);
        Assert.StartsWith("to be", output);
        Assert.Equal(output, Run("sample", "--checkpoint", checkpoint, "--prompt", "to be", "--length", "20", "--seed", "3").Out);

        Assert.Contains("multiple of the 3 heads", Fails(2, "lm", "--text", text, "--model", "transformer:l1-h3-d16-t16"));
        Assert.Contains("--model transformer:SPEC", Fails(2, "lm", "--text", text, "--model", "cnn-small"));
        var binary = PathOf("data.bin");
        File.WriteAllBytes(binary, [1, 2, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]);
        Assert.Contains("binary", Fails(1, "lm", "--text", binary));
        // Each mistake named as what it is: a folder is not a missing file; a spec names its wrong part.
        Assert.Contains("is a folder", Fails(1, "lm", "--text", Path.GetDirectoryName(text)!));
        var tooLong = Fails(2, "lm", "--text", text, "--model", "transformer:t1000000");
        Assert.Contains("the context 1000000 has more than the 6 digits", tooLong);
        Assert.Contains("the layer count (lN) is missing", tooLong);
        Assert.Contains("'x3' is not a size", Fails(2, "lm", "--text", text, "--model", "transformer:l1-h1-d8-t8-x3"));
        Assert.Contains("in the order l, h, d, t", Fails(2, "lm", "--text", text, "--model", "transformer:h1-l1-d8-t8"));
        Assert.Contains("--checkpoint", Fails(2, "sample"));
        Assert.Contains("lm.csv", Fails(1, "sample", "--checkpoint", metrics)); // not safetensors at all: the reader names the file
    }

    // ---- the main job and plots (issue 15) ------------------------------------------------------

    /// <summary>STEM.png and STEM.svg exist and are images of <paramref name="columns"/> × <paramref name="rows"/> panels
    /// under the band of the title that names the run.</summary>
    internal static void AssertFigure(string stem, int columns, int rows)
    {
        var (width, height) = (columns * MetricsPlots.PanelWidth, rows * MetricsPlots.PanelHeight + Plots.Figure.TitleHeight);
        Assert.Equal((width, height), PlotTests.PngSize(stem + ".png"));
        Assert.Equal(((double)width, (double)height), PlotTests.SvgSize(stem + ".svg"));
    }

    /// <summary>`plot` recognises <paramref name="csv"/> as <paramref name="kind"/> and draws the same figure again elsewhere.</summary>
    private void AssertRedrawn(string csv, string kind, int columns, int rows)
    {
        var stem = PathOf($"redrawn-{kind}");
        var (code, output, error) = Run("plot", csv, "--out", stem);
        Assert.True(code == 0, error);
        Assert.Contains($"{kind} metrics", output);
        AssertFigure(stem, columns, rows);
    }

    [Fact]
    public void Compare_trains_the_five_methods_and_prints_one_table_a_csv_and_a_plot()
    {
        var folder = PathOf("compare");
        var (code, output, error) = Run("compare", "--hidden", "16", "--epochs", "1", "--batch-size", "256", "--quiet", "--out", folder);
        Assert.True(code == 0, error);
        string[] methods = ["backprop", "activation perturbation (per-layer)", "Wᵀ (per-layer)", "DFA", "GrAPE (original)"];
        var tableRows = output.Split('\n').Where(l => l.StartsWith("│ ", StringComparison.Ordinal)).ToList();
        Assert.Equal(1 + methods.Length, tableRows.Count); // the header and one row per method
        Assert.Contains("time per step", tableRows[0]);
        for (int m = 0; m < methods.Length; m++) Assert.StartsWith($"│ {methods[m]} ", tableRows[m + 1]);
        Assert.Contains(Path.Combine(folder, "compare.png"), output);

        var lines = File.ReadAllLines(Path.Combine(folder, "compare.csv"));
        Assert.Equal(CompareCommand.Header + ",cosine_layer1,cosine_layer2", lines[0]); // then each site's cosine, by layer
        Assert.Equal(1 + methods.Length, lines.Length); // one epoch per method
        var cosine = lines.Skip(1).Select(l => double.Parse(l.Split(',')[^6], System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(1.0, cosine[0], 6); // backprop's update is the gradient
        Assert.All(cosine.Skip(1), c => Assert.InRange(c, -1.0, 0.999)); // the others are estimates, measured
        AssertFigure(Path.Combine(folder, "compare"), columns: 2, rows: 1);
        AssertRedrawn(Path.Combine(folder, "compare.csv"), "compare", columns: 2, rows: 1);

        Assert.Contains("Unrecognized command or argument '--k'", Fails(2, "compare", "--k", "2", "--out", folder));
        File.WriteAllText(PathOf("taken"), "");
        Assert.Contains("is a file", Fails(1, "compare", "--hidden", "4", "--epochs", "1", "--out", PathOf("taken")));
    }

    [Fact]
    public void Train_defaults_to_grape_and_draws_loss_accuracy_and_cosines_unless_told_not_to()
    {
        var (code, output, error) = Run("--hidden", "8", "--epochs", "2", "--quiet", "--metrics", PathOf("m.csv"));
        Assert.True(code == 0, error);
        Assert.Contains("GrAPE (original)", output);
        Assert.Contains(PathOf("m.png"), output);
        AssertFigure(PathOf("m"), columns: 3, rows: 1);
        var svg = File.ReadAllText(PathOf("m.svg"));
        foreach (var text in new[] { "loss", "accuracy", "cosine to the backprop gradient", "global (all parameters)", "layer2", "epoch" }) Assert.Contains(text, svg);
        AssertRedrawn(PathOf("m.csv"), "train", columns: 3, rows: 1);

        Assert.Equal(0, Run("--hidden", "8", "--epochs", "1", "--quiet", "--metrics", PathOf("n.csv"), "--no-plot").Code);
        Assert.True(File.Exists(PathOf("n.csv")));
        Assert.False(File.Exists(PathOf("n.png")));
        Assert.False(File.Exists(PathOf("n.svg")));
    }

    [Fact]
    public void Plot_refuses_a_file_it_cannot_draw_naming_the_file_and_the_kinds()
    {
        Assert.Contains("does not exist", Fails(1, "plot", PathOf("missing.csv")));
        Assert.Contains("is a directory", Fails(1, "plot", Folder));
        File.WriteAllText(PathOf("foreign.csv"), "a,b\n1,2\n");
        var error = Fails(1, "plot", PathOf("foreign.csv"));
        Assert.Contains("foreign.csv, line 1", error);
        Assert.Contains("train, lm, cosine, grape-toy, compare, study saturation, study bias-variance, study sharpening, study downstream, study spectra, mixer-table, sweep or sweep summary", error);
        Assert.False(File.Exists(PathOf("foreign.png")));
        File.WriteAllText(PathOf("ragged.csv"), "rule,start,seed,step,mean_row_cosine\n\"a, b\",0,1,0\n");
        Assert.Contains("ragged.csv, line 2: 4 fields", Fails(1, "plot", PathOf("ragged.csv")));
        File.WriteAllText(PathOf("words.csv"), "epoch,step,guesser,cosine,effectiveness\n1,0,\"ap\",high,0.1\n");
        Assert.Contains("'high' in column cosine", Fails(1, "plot", PathOf("words.csv")));
        File.WriteAllText(PathOf("header.csv"), "epoch,step,guesser,cosine,effectiveness\n");
        Assert.Contains("without data rows", Fails(1, "plot", PathOf("header.csv")));
        Assert.Contains("plot", Fails(2, "plot"));
        Assert.Contains("not a folder", Fails(2, "plot", PathOf("header.csv"), "--out", Folder));
    }
}
