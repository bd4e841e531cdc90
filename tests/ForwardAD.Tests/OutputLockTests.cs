using System.Diagnostics;

namespace ForwardAD.Tests;

/// <summary>
/// Two runs given the same outputs: the second is refused while the first lives, naming the first, and the first's files
/// are intact; a run killed with SIGKILL leaves no lock behind (the operating system releases its flock), so the next run
/// on those outputs starts.
/// </summary>
public sealed class OutputLockTests() : TemporaryFolderTests("forwardad-lock-")
{
    private static readonly string Cli = Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll");

    /// <summary>A long run in its own process, started once its checkpoint exists (so it holds its outputs).</summary>
    private Process StartLongRun(string metrics, string checkpoint)
    {
        var start = new ProcessStartInfo("dotnet", $"\"{Cli}\" train --guesser backprop --hidden 8 --epochs 100000 --quiet --no-plot --metrics \"{metrics}\" --checkpoint \"{checkpoint}\"")
        { RedirectStandardOutput = true, RedirectStandardError = true };
        var process = Process.Start(start)!;
        var wait = Stopwatch.StartNew();
        while (!File.Exists(checkpoint) && !process.HasExited && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(50);
        if (process.HasExited) Assert.Fail($"the first run ended early: {process.StandardError.ReadToEnd()}");
        return process;
    }

    [Fact]
    public void A_second_run_on_the_same_outputs_is_refused_and_the_first_runs_files_stay_intact()
    {
        string metrics = PathOf("m.csv"), checkpoint = PathOf("c.safetensors");
        using var first = StartLongRun(metrics, checkpoint);
        try
        {
            foreach (var args in new[]
            {
                new[] { "train", "--hidden", "8", "--epochs", "1", "--no-plot", "--metrics", metrics },                                   // same metrics
                new[] { "train", "--hidden", "8", "--epochs", "1", "--no-plot", "--metrics", PathOf("other.csv"), "--checkpoint", checkpoint }, // same checkpoint
            })
            {
                var (code, _, error) = CliTests.Run(args);
                Assert.Equal(1, code);
                Assert.Contains("is in use by another run (process " + first.Id, error);
                Assert.Contains("Wait for that run to end, or give this one other outputs", error);
            }
            Assert.False(File.Exists(PathOf("other.csv")), "the refused run wrote its metrics");
            Thread.Sleep(500);
            Assert.False(first.HasExited);
            // The first run's files: its checkpoint loads and its metrics hold its own rows.
            Assert.NotEmpty(ForwardAD.Data.SafeTensors.Read(checkpoint).Tensors);
            Assert.StartsWith("epoch,", File.ReadAllLines(metrics)[0]);
        }
        finally
        {
            first.Kill();
            first.WaitForExit();
        }
        // Killed with SIGKILL: its lock went with it; a new run on the same outputs starts and, at its end, removes the lock files.
        var (after, _, afterError) = CliTests.Run("train", "--hidden", "8", "--epochs", "1", "--no-plot", "--metrics", PathOf("new.csv"), "--checkpoint", checkpoint);
        Assert.True(after == 0, afterError);
        Assert.False(File.Exists(checkpoint + ".lock"));
        Assert.False(File.Exists(checkpoint + ".lock.owner"));
    }

    /// <summary>An output in a folder where nothing can be created (the kernel's /proc here) is refused for that reason, not
    /// as "in use by another run"; a folder that cannot be made (a file where a folder should be) likewise.</summary>
    [Fact]
    public void An_output_that_cannot_be_created_is_refused_as_such()
    {
        var blocker = PathOf("a-file");
        File.WriteAllText(blocker, "");
        string[] places = Directory.Exists("/proc/self") ? ["/proc/forwardad-metrics.csv", Path.Combine(blocker, "m.csv")] : [Path.Combine(blocker, "m.csv")];
        foreach (var metrics in places)
        {
            var (code, _, error) = CliTests.Run("train", "--guesser", "backprop", "--hidden", "8", "--epochs", "1", "--quiet", "--no-plot", "--metrics", metrics);
            Assert.Equal(1, code);
            Assert.Contains($"--metrics {metrics}: cannot create files in", error);
            Assert.DoesNotContain("in use", error);
        }
    }
}
