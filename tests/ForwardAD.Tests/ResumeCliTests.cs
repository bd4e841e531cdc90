using System.Diagnostics;
using ForwardAD.Data;

namespace ForwardAD.Tests;

/// <summary>
/// `lm --resume` and Ctrl-C through the command line: a run checkpointed halfway (or interrupted) and resumed ends with the
/// straight run's metrics and checkpoint, bit for bit; checkpoints of another run or of the other command are refused
/// naming the cause. The Ctrl-C test sends a real SIGINT to a `forwardad train` process.
/// </summary>
public sealed class ResumeCliTests() : TemporaryFolderTests("forwardad-resume-")
{
    /// <summary>A small structured text and a tiny model: 4 windows a step, a cosine every other step, an evaluation every
    /// <paramref name="evalEvery"/> steps.</summary>
    private string[] Lm(string guesser, string metrics, int evalEvery = 3)
    {
        var text = PathOf("verse.txt");
        if (!File.Exists(text)) File.WriteAllText(text, string.Concat(Enumerable.Range(0, 200).Select(i => $"to be or not to be {i % 7}\n")));
        return ["lm", "--text", text, "--model", "transformer:l1-h2-d16-t16", "--guesser", guesser, "--batch-size", "4", "--eval-every", evalEvery.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--validation-windows", "8", "--cosine-every", "2", "--quiet", "--no-plot", "--metrics", PathOf(metrics)];
    }

    /// <summary>Every tensor of a checkpoint (parameters, optimizer and guesser state), by name.</summary>
    private static SortedDictionary<string, float[]> Tensors(string path) =>
        new(SafeTensors.Read(path).Tensors.ToDictionary(t => t.Key, t => t.Value.Data), StringComparer.Ordinal);

    private static void AssertSameTensors(string expected, string actual)
    {
        var (a, b) = (Tensors(expected), Tensors(actual));
        Assert.Equal(a.Keys, b.Keys);
        foreach (var name in a.Keys) Assert.True(a[name].SequenceEqual(b[name]), $"tensor {name} differs");
    }

    [Theory]
    [InlineData("backprop")]
    [InlineData("grape")]
    public void Lm_checkpointed_halfway_and_resumed_ends_as_the_straight_run(string guesser)
    {
        CliTests.Succeeds([.. Lm(guesser, "straight.csv"), "--steps", "12", "--checkpoint", PathOf("straight.safetensors")]);
        CliTests.Succeeds([.. Lm(guesser, "halves.csv"), "--steps", "6", "--checkpoint", PathOf("halves.safetensors")]);
        Assert.Equal(3, File.ReadAllLines(PathOf("halves.csv")).Length);
        // --steps may differ on resume with a constant schedule: the run goes on for longer.
        var (code, output, error) = CliTests.Run([.. Lm(guesser, "halves.csv"), "--steps", "12", "--resume", PathOf("halves.safetensors")]);
        Assert.True(code == 0, error);
        Assert.Contains("resumed from", output);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(PathOf("halves.csv")));
        AssertSameTensors(PathOf("straight.safetensors"), PathOf("halves.safetensors"));
        // Nothing left to do: said, and nothing changes.
        var (again, againOutput, _) = CliTests.Run([.. Lm(guesser, "halves.csv"), "--steps", "12", "--resume", PathOf("halves.safetensors")]);
        Assert.Equal(0, again);
        Assert.Contains("nothing to do", againOutput);
        // The checkpoint still samples.
        CliTests.Succeeds("sample", "--checkpoint", PathOf("halves.safetensors"), "--length", "5");
    }

    /// <summary>Ctrl-C in process (the token the entry point would cancel, here cancelled once the metrics have a row):
    /// exit 130, the line that says where and how to resume, and that command ends as the straight run.</summary>
    [Fact]
    public void Lm_interrupted_says_how_to_resume_and_the_resumed_run_ends_as_the_straight_run()
    {
        CliTests.Succeeds([.. Lm("grape", "straight.csv", evalEvery: 50), "--steps", "400", "--checkpoint", PathOf("straight.safetensors")]);
        using var interrupt = new CancellationTokenSource();
        var metrics = PathOf("interrupted.csv");
        var watcher = new Thread(() =>
        {
            while (!interrupt.IsCancellationRequested && !(File.Exists(metrics) && File.ReadAllLines(metrics).Length > 1)) Thread.Sleep(20);
            interrupt.Cancel();
        });
        watcher.Start();
        string[] args = [.. Lm("grape", "interrupted.csv", evalEvery: 50), "--steps", "400", "--checkpoint", PathOf("interrupted.safetensors")];
        var (output, error) = (new StringWriter(), new StringWriter());
        int code = Cli.Cli.Run(args, output, error, listenForInterrupt: () => interrupt.Token);
        interrupt.Cancel();
        watcher.Join();
        Assert.True(code == 130, $"exit {code}, expected 130 (the run ended before the interruption?): {error}");
        var message = error.ToString().Trim();
        Assert.Matches($"^interrupted at step \\d+: checkpoint {System.Text.RegularExpressions.Regex.Escape(PathOf("interrupted.safetensors"))}; resume with: forwardad lm --resume ", message);
        Assert.DoesNotContain("--checkpoint", message);
        Assert.Contains("--steps 400", message);

        CliTests.Succeeds([.. Lm("grape", "interrupted.csv", evalEvery: 50), "--steps", "400", "--resume", PathOf("interrupted.safetensors")]);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(metrics));
        AssertSameTensors(PathOf("straight.safetensors"), PathOf("interrupted.safetensors"));

        // Without --checkpoint there is nothing to resume from, and the line says how to make runs resumable.
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var noCheckpoint = new StringWriter();
        Assert.Equal(130, Cli.Cli.Run([.. Lm("grape", "none.csv"), "--steps", "10"], new StringWriter(), noCheckpoint, listenForInterrupt: () => cancelled.Token));
        Assert.Equal("interrupted at step 0: no checkpoint was written (give --checkpoint PATH to make runs resumable)", noCheckpoint.ToString().Trim());
    }

    [Fact]
    public void Lm_resume_refuses_another_runs_checkpoint_and_each_command_refuses_the_others()
    {
        var lmCheckpoint = PathOf("lm.safetensors");
        CliTests.Succeeds([.. Lm("backprop", "lm.csv"), "--steps", "3", "--checkpoint", lmCheckpoint]);
        var seed = CliTests.Fails(1, [.. Lm("backprop", "other.csv"), "--steps", "6", "--seed", "2", "--resume", lmCheckpoint]);
        Assert.Contains("seed is '1' but this run's is '2'", seed);
        Assert.Contains("drop --resume", seed);
        var guesser = CliTests.Fails(1, [.. Lm("grape", "other.csv"), "--steps", "6", "--resume", lmCheckpoint]);
        Assert.Contains("guesser is 'backprop' but this run's is 'grape'", guesser);
        // A metrics file of another run is refused, and left as it was.
        CliTests.Succeeds([.. Lm("grape", "grape.csv"), "--steps", "3"]);
        var foreign = File.ReadAllText(PathOf("grape.csv"));
        Assert.Contains("a row of another run", CliTests.Fails(1, [.. Lm("backprop", "grape.csv"), "--steps", "6", "--resume", lmCheckpoint]));
        Assert.Equal(foreign, File.ReadAllText(PathOf("grape.csv")));

        var trainCheckpoint = PathOf("train.safetensors");
        CliTests.Succeeds("train", "--hidden", "8", "--epochs", "1", "--quiet", "--no-plot", "--metrics", PathOf("train.csv"), "--checkpoint", trainCheckpoint);
        Assert.Contains("this is an lm checkpoint; resume it with `forwardad lm --resume`",
            CliTests.Fails(1, "train", "--hidden", "8", "--epochs", "2", "--quiet", "--no-plot", "--metrics", PathOf("train.csv"), "--resume", lmCheckpoint));
        Assert.Contains("this is a train checkpoint; resume it with `forwardad train --resume`",
            CliTests.Fails(1, [.. Lm("backprop", "lm.csv"), "--steps", "6", "--resume", trainCheckpoint]));
    }

    /// <summary>A real Ctrl-C: SIGINT to a `forwardad train` process once its metrics have a row. It exits 130 with the
    /// line that says where it stopped (within an epoch, as a rule) and how to resume; resumed to one epoch past the
    /// interrupted one, it ends with the metrics of a straight run of that many epochs.</summary>
    [Fact]
    public async Task Train_stopped_by_sigint_says_how_to_resume_and_resumes_to_the_straight_run()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "sends SIGINT with kill(1) and reads /proc");
        string[] common = ["train", "--hidden", "64,64", "--cosine-every", "1", "--quiet", "--no-plot"];
        var (metrics, checkpoint) = (PathOf("m.csv"), PathOf("c.safetensors"));
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Folder };
        string[] arguments = [Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll"), .. common, "--epochs", "100000", "--metrics", metrics, "--checkpoint", checkpoint];
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            var waited = Stopwatch.StartNew();
            while (!(File.Exists(metrics) && File.ReadAllLines(metrics).Length > 1))
            {
                Assert.False(process.HasExited, $"train ended (exit {(process.HasExited ? process.ExitCode : 0)}) before writing a metrics row");
                Assert.True(waited.Elapsed < TimeSpan.FromMinutes(3), "no metrics row within 3 minutes (safety net)");
                await Task.Delay(50, TestContext.Current.CancellationToken);
            }
            // A process started with SIGINT ignored (a background job of a non-interactive shell) cannot be interrupted.
            var ignored = File.ReadAllLines($"/proc/{process.Id}/status").Single(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
            Assert.SkipWhen((Convert.ToUInt64(ignored["SigIgn:".Length..].Trim(), 16) & 2) != 0, "this test process ignores SIGINT, and so does its child");
            using (var kill = Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) await kill.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "train did not end within 2 minutes of SIGINT (safety net)");
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
        await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        await stdout;
        var error = (await stderr).Trim();
        Assert.True(process.ExitCode == 130, $"exit {process.ExitCode}, expected 130; stderr: {error}");
        var match = System.Text.RegularExpressions.Regex.Match(error, @"^interrupted at step (\d+) \(epoch (\d+)\): checkpoint (.+); resume with: forwardad train --resume (\S+) (.*)$");
        Assert.True(match.Success, $"stderr: {error}");
        Assert.Equal(checkpoint, match.Groups[3].Value);
        Assert.Contains("--epochs 100000", match.Groups[5].Value);
        Assert.False(File.Exists(checkpoint + ".lock") && IsLocked(checkpoint + ".lock"), "the output lock is released");

        int epochs = int.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) + 1;
        string epochsText = epochs.ToString(System.Globalization.CultureInfo.InvariantCulture);
        CliTests.Succeeds([.. common, "--epochs", epochsText, "--metrics", metrics, "--resume", checkpoint]);
        CliTests.Succeeds([.. common, "--epochs", epochsText, "--metrics", PathOf("straight.csv"), "--checkpoint", PathOf("straight.safetensors")]);
        Assert.Equal(TimedColumns.Untimed(PathOf("straight.csv")), TimedColumns.Untimed(metrics));
        AssertSameTensors(PathOf("straight.safetensors"), checkpoint);
    }

    private static bool IsLocked(string path)
    {
        try { using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None); return false; }
        catch (IOException) { return true; }
    }
}
