using System.Diagnostics;
using System.Text.RegularExpressions;
using ForwardAD.Data;
using ForwardAD.Distributed;

namespace ForwardAD.Tests;

/// <summary>
/// Data-parallel runs of the command-line tool under a real <c>mpiexec</c> (MPICH's Hydra) on loopback, 2 and 3 ranks:
/// the same parameters as one process, the shared-seed exchange measured, resume with another rank count, a killed rank,
/// a hung rank, a rank with another configuration. They need MPICH (<c>apt-get install mpich</c>; <c>.ci/run</c>
/// installs it) and skip, saying so, where it is missing.
/// </summary>
[Collection(nameof(MpiTests))] // one mpiexec job at a time: these 2 cores are all there is
public sealed partial class MpiTests(ITestOutputHelper output) : TemporaryFolderTests("forwardad-mpi-")
{
    private static readonly string Cli = Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll");

    private static void RequireMpi()
    {
        Assert.SkipUnless(MpiExec is not null, "mpiexec is not installed (apt-get install mpich; .ci/run installs it).");
        Assert.SkipUnless(MpiCommunicator.IsAvailable(out var reason), reason);
    }

    private static string? MpiExec => new[] { "/usr/bin/mpiexec.hydra", "/usr/bin/mpiexec.mpich", "/usr/bin/mpiexec" }.FirstOrDefault(File.Exists);

    /// <summary>Runs `mpiexec -n N dotnet forwardad ARGS` (N = 0: one process without mpiexec) in the test folder.</summary>
    private (int Code, string Out, string Err, TimeSpan Wall) Run(int ranks, string arguments, Action<Process>? during = null, int timeoutSeconds = 120,
        string? environment = null, bool prefixOnly = false)
    {
        // prefixOnly: the arguments hold whole mpiexec program segments (with their own -wdir, program and options).
        var start = ranks == 0
            ? new ProcessStartInfo("dotnet", $"\"{Cli}\" {arguments}")
            : new ProcessStartInfo(MpiExec!, prefixOnly ? $"-n {ranks} {arguments}" : $"-n {ranks} {environment} dotnet \"{Cli}\" {arguments}");
        start.WorkingDirectory = Folder;
        start.RedirectStandardOutput = start.RedirectStandardError = true;
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        var watch = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        during?.Invoke(process);
        if (!process.WaitForExit(TimeSpan.FromSeconds(timeoutSeconds)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"mpiexec -n {ranks} {arguments} did not end within {timeoutSeconds} s");
        }
        process.WaitForExit();
        var result = (process.ExitCode, stdout.Result, stderr.Result, watch.Elapsed);
        output.WriteLine($"$ {(ranks == 0 ? "" : $"mpiexec -n {ranks} ")}forwardad {arguments}  → exit {result.ExitCode} in {result.Elapsed.TotalSeconds:F1} s");
        return result;
    }

    private float[] Parameters(string checkpoint)
    {
        var (tensors, _) = SafeTensors.Read(Path.Combine(Folder, checkpoint));
        // The model's parameters and state; not the optimizer's or the estimator's buffers.
        return [.. tensors.Where(t => !t.Key.StartsWith("optimizer.", StringComparison.Ordinal) && !t.Key.StartsWith("estimator.", StringComparison.Ordinal))
            .OrderBy(t => t.Key, StringComparer.Ordinal).SelectMany(t => t.Value.Data)];
    }

    /// <summary>Digits' default split has 1437 training examples: batch 57 gives 25 steps an epoch, 50 in two; 57 is odd
    /// and not a multiple of 2 or 3, so the ranks' shares are uneven (28/29 and 19/19/19 … as ⌊rB/N⌋ gives).</summary>
    private static string Training(string method, int epochs = 2, string checkpoint = "c.safetensors") =>
        $"train --guesser {method} --epochs {epochs} --batch-size 57 --lr {(method is "backprop" or "dfa" or "grape" ? "0.1" : "0.01")} --seed 3 --cosine-every 0 " +
        $"--no-plot --quiet --metrics {Path.ChangeExtension(checkpoint, ".csv")} --checkpoint {checkpoint}";

    [Theory]
    [InlineData("backprop")]
    [InlineData("ap")]
    [InlineData("wt")]
    [InlineData("directional")]
    [InlineData("dfa")]
    [InlineData("grape")]
    public void Two_and_three_ranks_give_the_parameters_of_one_process_after_50_steps(string method)
    {
        RequireMpi();
        var single = Run(0, Training(method, checkpoint: "one.safetensors"));
        Assert.True(single.Code == 0, single.Err);
        var reference = Parameters("one.safetensors");
        foreach (int ranks in new[] { 2, 3 })
        {
            var run = Run(ranks, Training(method, checkpoint: $"n{ranks}.safetensors"));
            Assert.True(run.Code == 0, run.Out + run.Err);
            double distance = DataParallelTests.RelativeDistance(Parameters($"n{ranks}.safetensors"), reference);
            output.WriteLine($"{method}: {ranks} ranks × B/{ranks} vs 1 process × B after 50 steps: ‖θ_N − θ_1‖/‖θ_1‖ = {distance:E2}");
            Assert.True(distance <= 1e-5, $"{method} on {ranks} MPI ranks differs by {distance:E2}");
        }
    }

    [GeneratedRegex(@"([\d,]+) bytes/step exchanged")]
    private static partial Regex BytesPerStep();

    /// <summary>Directional descent sends K JVP scalars and the loss (8 bytes each) a step, measured at the communicator,
    /// for a model of 8 or of 2 × 512 hidden units alike; backprop sends the whole update.</summary>
    [Fact]
    public void The_shared_seed_exchange_sends_O_K_bytes_per_step_whatever_the_parameter_count()
    {
        RequireMpi();
        var measured = new Dictionary<(string, string), long>();
        foreach (var hidden in new[] { "8", "512,512" })
            foreach (var method in new[] { "directional", "backprop" })
            {
                string guesses = method == "directional" ? "--guesses 4" : "";
                var run = Run(2, $"train --guesser {method} {guesses} --hidden {hidden} --epochs 1 --batch-size 64 --lr 0.001 --cosine-every 0 --no-plot --metrics {method}{hidden.Length}.csv");
                Assert.True(run.Code == 0, run.Out + run.Err);
                var match = BytesPerStep().Match(run.Out);
                Assert.True(match.Success, run.Out);
                measured[(method, hidden)] = long.Parse(match.Groups[1].Value.Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture);
                output.WriteLine($"{method}, hidden {hidden}: {measured[(method, hidden)]:N0} bytes per step");
            }
        Assert.Equal(8 * 4 + 8, measured[("directional", "8")]);
        Assert.Equal(8 * 4 + 8, measured[("directional", "512,512")]);
        // Backprop: the update (4 bytes per parameter: 64·8 + 8 + 8·10 + 10 = 610, or 301,066 with two layers of 512) and the loss.
        Assert.Equal(4 * 610 + 8, measured[("backprop", "8")]);
        Assert.Equal(4 * (64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10) + 8, measured[("backprop", "512,512")]);
    }

    [Fact]
    public void A_run_resumed_with_another_rank_count_continues_the_same_run()
    {
        RequireMpi();
        var straight = Run(0, Training("grape", epochs: 2, checkpoint: "straight.safetensors"));
        Assert.True(straight.Code == 0, straight.Err);
        var first = Run(2, Training("grape", epochs: 1, checkpoint: "resumed.safetensors"));
        Assert.True(first.Code == 0, first.Out + first.Err);
        var second = Run(3, Training("grape", epochs: 2, checkpoint: "resumed.safetensors") + " --resume resumed.safetensors");
        Assert.True(second.Code == 0, second.Out + second.Err);
        double distance = DataParallelTests.RelativeDistance(Parameters("resumed.safetensors"), Parameters("straight.safetensors"));
        output.WriteLine($"1 epoch on 2 ranks, then resumed on 3: ‖θ − θ_straight‖/‖θ_straight‖ = {distance:E2}");
        Assert.True(distance <= 1e-5, $"{distance:E2}");
    }

    [Fact]
    public void A_rank_with_another_learning_rate_is_refused_before_the_first_step()
    {
        RequireMpi();
        var run = Run(1, $"{Training("backprop")} : -n 1 dotnet \"{Cli}\" {Training("backprop").Replace("--lr 0.1", "--lr 0.2")}");
        Assert.NotEqual(0, run.Code);
        Assert.Contains("rank 1 of 2 runs another command line than rank 0", run.Err);
        Assert.Contains("--lr 0.2", run.Err);
        Assert.Single(Regex.Matches(run.Err, "runs another command line"));
        Assert.False(File.Exists(Path.Combine(Folder, "c.safetensors")), "nothing may be written");
        Assert.True(run.Wall < TimeSpan.FromSeconds(30));
    }

    /// <summary>The same command line in two working directories whose data files differ (one label changed): refused
    /// before the first step by the data's fingerprint, nothing written.</summary>
    [Fact]
    public void Ranks_that_read_different_data_are_refused_before_the_first_step()
    {
        RequireMpi();
        var rows = Enumerable.Range(0, 200).Select(i => string.Join(',', Enumerable.Range(0, 4).Select(j => ((i * 7 + j * 3) % 11).ToString(System.Globalization.CultureInfo.InvariantCulture))) + $",{i % 3}").ToList();
        foreach (var (folder, label) in new[] { ("a", "0"), ("b", "1") })
        {
            Directory.CreateDirectory(Path.Combine(Folder, folder));
            File.WriteAllLines(Path.Combine(Folder, folder, "data.csv"), rows.Take(199).Append("1,2,3,4," + label));
        }
        string command = "train --data data.csv --guesser backprop --epochs 1 --batch-size 16 --no-plot --quiet --metrics m.csv --checkpoint c.safetensors";
        var run = Run(1, $"-wdir a dotnet \"{Cli}\" {command} : -n 1 -wdir b dotnet \"{Cli}\" {command}", prefixOnly: true);
        Assert.NotEqual(0, run.Code);
        Assert.Contains("rank 1 of 2 runs another configuration than rank 0", run.Err);
        Assert.Contains("data is", run.Err);
        Assert.False(File.Exists(Path.Combine(Folder, "a", "c.safetensors")), "nothing may be written");
    }

    /// <summary>A rank with one option more (here a checkpoint path: only that rank would write and wait for the others
    /// to agree) or an unknown option: refused at once, with one message, whatever the option.</summary>
    [Theory]
    [InlineData("--checkpoint extra.safetensors")]
    [InlineData("--bogus")]
    public void A_rank_with_another_command_line_is_refused_at_once(string extra)
    {
        RequireMpi();
        string common = "train --guesser backprop --epochs 2 --batch-size 57 --no-plot --quiet --metrics m.csv";
        var run = Run(1, $"{common} : -n 1 dotnet \"{Cli}\" {common} {extra}");
        Assert.Equal(2, run.Code);
        Assert.Contains("rank 1 of 2 runs another command line than rank 0", run.Err);
        Assert.Contains($"{common} {extra}' here", run.Err);
        Assert.Single(Regex.Matches(run.Err, "runs another command line"));
        Assert.True(run.Wall < TimeSpan.FromSeconds(30), $"took {run.Wall}");
        Assert.False(File.Exists(Path.Combine(Folder, "m.csv")));
    }

    [Fact]
    public void A_command_that_runs_in_one_process_is_refused_under_mpiexec()
    {
        RequireMpi();
        var run = Run(2, "grape-toy --size 20 --steps 5 --seeds 2 --csv toy.csv");
        Assert.Equal(2, run.Code);
        Assert.Contains("'grape-toy' runs in one process; start it without mpiexec", run.Err);
        Assert.Single(Regex.Matches(run.Err, "runs in one process"));
    }

    private static int? RankProcess(int rank, string marker)
    {
        foreach (var process in Process.GetProcessesByName("dotnet"))
        {
            try
            {
                var environ = File.ReadAllText($"/proc/{process.Id}/environ");
                var commandLine = File.ReadAllText($"/proc/{process.Id}/cmdline");
                if (commandLine.Contains(marker, StringComparison.Ordinal) && environ.Split('\0').Contains($"PMI_RANK={rank}")) return process.Id;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return null;
    }

    /// <summary>kill -9 of rank 1 after the first checkpoint: the job ends within seconds with the launcher's message; the
    /// checkpoint is intact and a run resumes from it. (Repeated for kill -9 of rank 0 at random moments, mid-checkpoint
    /// included, by hand in review: the same.)</summary>
    [Fact]
    public void A_killed_rank_ends_the_job_within_seconds_and_leaves_the_checkpoint_intact()
    {
        RequireMpi();
        string checkpoint = Path.Combine(Folder, "killed.safetensors");
        TimeSpan? killedAfter = null;
        var run = Run(2, Training("backprop", epochs: 100_000, checkpoint: "killed.safetensors"), process =>
        {
            var wait = Stopwatch.StartNew();
            while (!File.Exists(checkpoint) && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(50);
            Thread.Sleep(300); // mid-step (or mid-checkpoint) of a later epoch
            int pid = RankProcess(1, "killed.safetensors") ?? throw new InvalidOperationException("rank 1 not found");
            Process.GetProcessById(pid).Kill();
            killedAfter = wait.Elapsed;
            wait.Restart();
            process.WaitForExit(TimeSpan.FromSeconds(60));
            output.WriteLine($"the job ended {wait.Elapsed.TotalSeconds:F1} s after rank 1 was killed");
            Assert.True(wait.Elapsed < TimeSpan.FromSeconds(10), $"the job took {wait.Elapsed.TotalSeconds:F1} s to end");
        });
        Assert.NotNull(killedAfter);
        Assert.NotEqual(0, run.Code);
        // The launcher reports the first rank it saw end: the killed one (Killed (signal 9)), or the survivor when MPI's
        // transport noticed the lost peer first and aborted it (Aborted (signal 6)); either way the job ends at once.
        Assert.Contains("BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES", run.Out + run.Err);
        Assert.Matches("EXIT STRING: (Killed \\(signal 9\\)|Aborted \\(signal 6\\))", run.Out + run.Err);
        Assert.Null(RankProcess(0, "killed.safetensors"));
        // Intact: it loads, and a run resumes from it in one process.
        var resume = Run(0, Training("backprop", epochs: 100_000, checkpoint: "killed.safetensors").Replace("--epochs 100000", "--epochs 1000") + " --resume killed.safetensors", process =>
        {
            Thread.Sleep(2000);
            process.Kill(entireProcessTree: true);
        });
        Assert.DoesNotContain("error", resume.Err);
        Assert.NotEmpty(Parameters("killed.safetensors"));
    }

    /// <summary>A rank that stops (SIGSTOP: hung, not dead, so the launcher sees nothing) is noticed by the others after the
    /// exchange timeout: they say so and end the job.</summary>
    [Fact]
    public void A_hung_rank_ends_the_job_after_the_exchange_timeout()
    {
        RequireMpi();
        int? stopped = null;
        var run = Run(2, Training("backprop", epochs: 100_000, checkpoint: "hung.safetensors"), process =>
        {
            var wait = Stopwatch.StartNew();
            while (!File.Exists(Path.Combine(Folder, "hung.safetensors")) && wait.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(50);
            stopped = RankProcess(1, "hung.safetensors");
            if (stopped is { } pid) _ = Process.Start("kill", $"-STOP {pid}")!.WaitForExit(5000);
        }, timeoutSeconds: 60, environment: "-env FORWARDAD_COLLECTIVE_TIMEOUT 3");
        Assert.NotNull(stopped);
        Assert.NotEqual(0, run.Code);
        Assert.Contains("rank 0 of 2 waited 3 s for the other ranks: a rank stopped answering", run.Err);
        if (stopped is { } id) try { Process.GetProcessById(id).Kill(); } catch (ArgumentException) { }
    }
}
