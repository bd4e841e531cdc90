using System.Globalization;
using System.Text.RegularExpressions;
using ForwardAD.Cli;
using Spectre.Console;

namespace ForwardAD.Tests;

/// <summary>
/// `mixer-table` resumed and stopped by Ctrl-C through the command line, on a tiny mixer and table (digits, 2 seeds, both
/// augmentation modes, 2 columns, 2 epochs: 8 runs in a second or two): a table interrupted, resumed, interrupted again
/// and resumed ends with the CSV and Markdown of a straight table (the seconds aside); a second table on the same
/// outputs is refused while the first runs; a resume with another option is refused naming it; the console's summary
/// fits 80 columns.
/// </summary>
public sealed class MixerTableResumeTests() : TemporaryFolderTests("forwardad-mixer-")
{
    /// <summary>The tiny table with its outputs at PREFIX, and <paramref name="more"/> (option, value pairs and flags)
    /// in place of the defaults they name or after them.</summary>
    private string[] Table(string prefix, params string[] more)
    {
        List<string> args = ["mixer-table", "--data", "digits", "--mixer", "p2-d8-b1-g2", "--methods", "backprop,ap", "--epochs", "2", "--batch-size", "16",
            "--train-examples", "256", "--seeds", "2", "--cosine-every", "3", "--out", PathOf(prefix)];
        for (int i = 0; i < more.Length; i++)
        {
            bool valued = i + 1 < more.Length && !more[i + 1].StartsWith("--", StringComparison.Ordinal);
            int at = args.IndexOf(more[i]);
            if (at >= 0 && valued) args[at + 1] = more[++i];
            else args.AddRange(valued ? [more[i], more[++i]] : [more[i]]);
        }
        return [.. args];
    }

    /// <summary>The run's output, which cancels the run's token (as a Ctrl-C would) once a line containing
    /// <paramref name="trigger"/> is written, at once or after <paramref name="delay"/>: the epoch lines say where the
    /// run is.</summary>
    private sealed class CancelOnLine(CancellationTokenSource source, string trigger, TimeSpan delay) : StringWriter(CultureInfo.InvariantCulture)
    {
        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            if (value is null || !value.Contains(trigger, StringComparison.Ordinal)) return;
            if (delay == TimeSpan.Zero) source.Cancel();
            else source.CancelAfter(delay);
        }
    }

    /// <summary>Runs <paramref name="args"/> in process, interrupted at <paramref name="trigger"/>; asserts exit 130 and
    /// returns the stderr line and the output.</summary>
    private static (string Error, string Output) Interrupted(string[] args, string trigger, TimeSpan delay)
    {
        using var interrupt = new CancellationTokenSource();
        var output = new CancelOnLine(interrupt, trigger, delay);
        var error = new StringWriter();
        int code = Cli.Cli.Run(args, output, error, listenForInterrupt: () => interrupt.Token);
        Assert.True(code == 130, $"exit {code}, expected 130 (the table ended before the interruption?): {error}{output}");
        Assert.Contains("stopped in seed ", output.ToString());
        return (error.ToString().Trim(), output.ToString());
    }

    /// <summary>The Markdown without its wall-time line.</summary>
    private static string[] UntimedMarkdown(string path) => [.. File.ReadAllLines(path).Where(l => !l.StartsWith("Wall time", StringComparison.Ordinal))];

    /// <summary>The resume command an interrupted table prints, as arguments (it quotes none here: the paths are plain).</summary>
    private static string[] ResumeCommand(string message)
    {
        var match = Regex.Match(message, @"^interrupted at step \d+ \(epoch \d+\): checkpoint (\S+); resume with: forwardad (.+)$");
        Assert.True(match.Success, message);
        Assert.DoesNotContain("'", match.Groups[2].Value);
        return match.Groups[2].Value.Split(' ');
    }

    [Fact]
    public void An_interrupted_table_resumed_twice_ends_as_the_straight_table()
    {
        CliTests.Succeeds(Table("straight"));
        var checkpoint = PathOf("cut.safetensors");
        // At an epoch boundary: the line of the third run's first epoch is written before its second epoch's first step.
        var (first, _) = Interrupted(Table("cut", "--checkpoint", checkpoint), "seed 1, augment on, backprop: epoch 1/2", TimeSpan.Zero);
        Assert.StartsWith($"interrupted at step 16 (epoch 2): checkpoint {checkpoint}; resume with: forwardad mixer-table --resume {checkpoint} ", first);
        Assert.DoesNotContain("--checkpoint", first);
        Assert.Equal(1 + 2, File.ReadAllLines(PathOf("cut.csv")).Length); // the two finished runs
        Assert.False(File.Exists(PathOf("cut.md")));

        // Resumed by the command it printed, and interrupted again a moment into a later run (within an epoch, as a rule).
        // The run in progress goes on from its checkpoint: its first epoch is not trained again (a restart would give the
        // same numbers, only later), nor are the finished runs.
        var (second, secondOutput) = Interrupted(ResumeCommand(first), "seed 2, augment off, ap: epoch 1/2", TimeSpan.FromMilliseconds(5));
        Assert.Contains("resumed from " + checkpoint + ": 2 of 8 runs finished", secondOutput);
        Assert.DoesNotContain("seed 1, augment off", secondOutput);
        Assert.DoesNotContain("seed 1, augment on, backprop: epoch 1/2", secondOutput);
        Assert.Contains("seed 1, augment on, backprop: epoch 2/2", secondOutput);
        Assert.Contains($"--resume {checkpoint}", second);
        Assert.True(File.ReadAllLines(PathOf("cut.csv")).Length >= 1 + 5);

        var (code, output, error) = CliTests.Run(ResumeCommand(second));
        Assert.True(code == 0, error + output);
        Assert.Contains("resumed from", output);
        Assert.DoesNotContain("seed 2, augment off, ap: epoch 1/2", output);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(PathOf("cut.csv")));
        Assert.Equal(UntimedMarkdown(PathOf("straight.md")), UntimedMarkdown(PathOf("cut.md")));
        Assert.False(File.Exists(checkpoint + ".lock"), "the output lock is released");

        // Resumed once more: nothing to train, and the numbers stay.
        var (again, againOutput, againError) = CliTests.Run(ResumeCommand(second));
        Assert.True(again == 0, againError);
        Assert.Contains("nothing to train", againOutput);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(PathOf("cut.csv")));
    }

    /// <summary>A table killed outright (no Ctrl-C) leaves its CSV and its checkpoint as they were last written, which a
    /// resume continues: the run the checkpoint holds when the CSV ends before it, the next run afresh when the CSV
    /// already has it (killed between the row and the next run's first checkpoint); a checkpoint ahead of the CSV is
    /// refused.</summary>
    [Fact]
    public void A_table_killed_between_its_files_resumes_from_what_they_hold()
    {
        var checkpoint = PathOf("last.safetensors");
        CliTests.Succeeds(Table("straight", "--checkpoint", checkpoint)); // the checkpoint holds the last run after its first epoch
        var straight = File.ReadAllLines(PathOf("straight.csv"));
        Assert.Equal(1 + 8, straight.Length);

        // Ahead of the CSV: the runs before the checkpoint's are missing.
        File.WriteAllLines(PathOf("behind.csv"), straight[..6]);
        Assert.Contains("holds run 8 of 8 (seed 2, augment on, ap), but", CliTests.Fails(1, Table("behind", "--resume", checkpoint)));
        Assert.Equal(straight[..6], File.ReadAllLines(PathOf("behind.csv")));

        // Killed in the last run's second epoch: the run goes on from its first epoch's checkpoint.
        File.WriteAllLines(PathOf("killed.csv"), straight[..8]);
        var (code, output, error) = CliTests.Run(Table("killed", "--resume", checkpoint));
        Assert.True(code == 0, error + output);
        Assert.Contains("7 of 8 runs finished", output);
        Assert.Contains("seed 2, augment on, ap: epoch 2/2", output);
        Assert.DoesNotContain("epoch 1/2", output);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(PathOf("killed.csv")));

        // Killed just after the third run's row: its checkpoint is behind the CSV, and the fourth run starts afresh.
        var third = PathOf("third.safetensors");
        Interrupted(Table("cut", "--checkpoint", third), "seed 1, augment on, backprop: epoch 1/2", TimeSpan.Zero);
        File.WriteAllLines(PathOf("cut.csv"), straight[..4]);
        (code, output, error) = CliTests.Run(Table("cut", "--resume", third));
        Assert.True(code == 0, error + output);
        Assert.Contains("3 of 8 runs finished", output);
        Assert.DoesNotContain("goes on from the checkpoint", output);
        Assert.Contains("seed 1, augment on, ap: epoch 1/2", output);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(PathOf("cut.csv")));
        Assert.Equal(UntimedMarkdown(PathOf("straight.md")), UntimedMarkdown(PathOf("cut.md")));
    }

    [Fact]
    public void A_resume_with_another_option_is_refused_naming_it_and_changes_nothing()
    {
        var checkpoint = PathOf("c.safetensors");
        Interrupted(Table("t", "--checkpoint", checkpoint), "seed 1, augment on, backprop: epoch 1/2", TimeSpan.Zero);
        var csv = File.ReadAllText(PathOf("t.csv"));
        var saved = File.ReadAllBytes(checkpoint);

        var lr = CliTests.Fails(1, Table("t", "--resume", checkpoint, "--lr", "0.002"));
        Assert.Contains("lr is '0.001' but this run's is '0.002'", lr);
        Assert.Contains("drop --resume", lr);
        Assert.Contains("methods is 'backprop,ap' but this run's is 'ap,backprop'", CliTests.Fails(1, Table("t", "--resume", checkpoint, "--methods", "ap,backprop")));
        Assert.Contains("epochs is '2' but this run's is '3'", CliTests.Fails(1, Table("t", "--resume", checkpoint, "--epochs", "3")));
        Assert.Contains("seeds is '1-2' but this run's is '1-3'", CliTests.Fails(1, Table("t", "--resume", checkpoint, "--seeds", "3")));
        // Another table's CSV beside the checkpoint (another --out): its rows are not this table's runs.
        CliTests.Succeeds(Table("other", "--seed", "5", "--seeds", "1", "--augment-modes", "off"));
        var other = File.ReadAllText(PathOf("other.csv"));
        Assert.Contains("a run of another table", CliTests.Fails(1, Table("other", "--resume", checkpoint)));
        Assert.Equal(other, File.ReadAllText(PathOf("other.csv")));
        // A checkpoint of train is no table's.
        CliTests.Succeeds("train", "--hidden", "8", "--epochs", "1", "--quiet", "--no-plot", "--metrics", PathOf("train.csv"), "--checkpoint", PathOf("train.safetensors"));
        Assert.Contains("not a checkpoint of mixer-table", CliTests.Fails(1, Table("t", "--resume", PathOf("train.safetensors"))));

        Assert.Equal(csv, File.ReadAllText(PathOf("t.csv")));
        Assert.Equal(saved, File.ReadAllBytes(checkpoint));
        Assert.False(File.Exists(PathOf("t.md")));
    }

    /// <summary>A second table on the outputs of a running one (its --out, or its checkpoint) is refused naming the first,
    /// which goes on, its files intact.</summary>
    [Fact]
    public void A_second_table_on_the_same_outputs_is_refused_while_the_first_runs()
    {
        var checkpoint = PathOf("c.safetensors");
        using var interrupt = new CancellationTokenSource();
        int firstCode = -1;
        var firstError = new StringWriter();
        // Long enough to outlive the second tables: 100 seeds; stopped by the token once they have been refused.
        var first = new Thread(() => firstCode = Cli.Cli.Run(Table("t", "--seeds", "100", "--quiet", "--checkpoint", checkpoint), TextWriter.Null, firstError,
            listenForInterrupt: () => interrupt.Token));
        first.Start();
        try
        {
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (!(File.Exists(PathOf("t.csv")) && File.ReadAllLines(PathOf("t.csv")).Length > 1))
            {
                Assert.True(first.IsAlive, $"the first table ended (exit {firstCode}) before writing a row: {firstError}");
                Assert.True(waited.Elapsed < TimeSpan.FromMinutes(2), "no row within 2 minutes (safety net)");
                Thread.Sleep(20);
            }
            foreach (var args in new[] { Table("t"), Table("elsewhere", "--checkpoint", checkpoint), Table("t", "--resume", checkpoint) })
            {
                var error = CliTests.Fails(1, args);
                Assert.Contains($"is in use by another run (process {Environment.ProcessId}", error);
                Assert.Contains("mixer-table (out " + PathOf("t"), error);
            }
            Assert.False(File.Exists(PathOf("elsewhere.csv")), "the refused table wrote its CSV");
            Assert.True(first.IsAlive, "the first table ended before the second ones were refused");
            var rows = File.ReadAllLines(PathOf("t.csv"));
            Assert.StartsWith("variant,augment,method,seed,epochs,", rows[0]);
            Assert.All(rows.Skip(1), row => Assert.StartsWith("ren,", row));
        }
        finally
        {
            interrupt.Cancel();
            first.Join();
        }
        Assert.True(firstCode == 130, $"exit {firstCode}: {firstError}");
        Assert.NotEmpty(ForwardAD.Data.SafeTensors.Read(checkpoint).Tensors);
        Assert.False(File.Exists(PathOf("t.csv.lock")), "the output lock is released");
    }

    /// <summary>The console's summary fits 80 columns: the default five columns over several seeds fit whole; ten columns
    /// with wide cells leave out the later ones, keeping the first, and say where every column is.</summary>
    [Fact]
    public void The_summary_table_fits_80_columns()
    {
        string[] modes = ["off", "on"];
        string[] five = ["backprop", "local-backprop", "ap", "mixing", "wt"];
        var output = new StringWriter();
        Write(output, modes, five, spread: 0.013);
        var text = output.ToString();
        Assert.All(Lines(text), l => Assert.True(l.Length <= 80, $"{l.Length} columns: {l}"));
        Assert.Contains(" ± 0.9 ", text);
        Assert.DoesNotContain("narrow terminal", text);
        foreach (var word in new[] { "augment", "Backprop,", "local", "AP", "Mixing", "Wᵀ" }) Assert.Contains(word, text);

        string[] ten = ["backprop", "local-backprop", "ap", "mixing", "wt", "ap-example", "mixing-example", "wt-example", "ap-at-sites", "ap-noisy-heads"];
        output = new StringWriter();
        Write(output, modes, ten, spread: 0.15);
        text = output.ToString();
        Assert.All(Lines(text), l => Assert.True(l.Length <= 80, $"{l.Length} columns: {l}"));
        Assert.Contains("Backprop,", text);
        Assert.Contains("85.0 ± 10.6", text);
        Assert.Matches(@"narrow terminal:\s+(\S+,\s+)*ap-noisy-heads\s+not\s+shown;\s+every\s+column\s+is\s+in\s+t\.md", text);
        Assert.DoesNotMatch(@"narrow terminal:[^;]*(?<![-\w])backprop\b", text);

        static void Write(StringWriter output, string[] modes, string[] methods, double spread)
        {
            var results = (from seed in new ulong[] { 1, 2 } from mode in modes from method in methods
                           select new MixerTableCommand.Result(new(seed, mode, method), 0.5, 0.9, 0.4, 0.85 + (seed == 1 ? spread : -spread) / 2, double.NaN, 1)).ToList();
            var console = CliTests.ConsoleOf(output, 80);
            var (table, dropped) = MixerTableCommand.SummaryTable(modes, methods, results, 80);
            console.Write(table);
            if (ConsoleTable.DroppedNote(dropped, "t.md") is { } note) console.WriteLine(note);
        }

        static IEnumerable<string> Lines(string text) => text.Split('\n').Select(l => l.TrimEnd('\r'));
    }
}
