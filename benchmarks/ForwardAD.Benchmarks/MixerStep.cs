using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Benchmarks;

/// <summary>
/// `mixer-step` (issue 14): one LocalMixer training step (estimate + Adam) per method — backprop through the local losses,
/// Ren et al.'s activation perturbation, activation mixing and Wᵀ, each site's JVP of its own block's loss — on the model of
/// benchmarks/peers/torch_mixer.py (p4-d64-b2-g4 on 28×28×1, 10 classes, batch 64), beside that PyTorch step (backprop, and
/// activation perturbation with forward_ad), alternating sides for <c>rounds</c> rounds, one thread each (OpenBLAS and
/// torch set to 1). Prints medians in ms and the ratios ours / PyTorch; the load average is printed for the record.
/// </summary>
internal static class MixerStep
{
    public static int Run(int rounds, int repeats)
    {
        if (OpenBlasGemm.TryCreate() is not null) OpenBlasGemm.SetThreadCount(1); // loads the library first (its resolver)
        // The blocks construction with guesses at the sites: what the PyTorch peer implements.
        var spec = LocalMixerSpec.Parse("p4-d64-b2-g4-blocks", new Shape(28, 28, 1), 10);
        const int batch = 64;
        var methods = new (string Name, Guesser Guesser, string PeerRow)[]
        {
            ("backprop", Guessers.Backprop, "mixer_backprop_adam"),
            ("activation perturbation (Ren et al., per-block JVPs)", Guessers.RenActivationPerturbation(placement: GuessPlacement.Site, exactLast: false), "mixer_ap_adam"),
            ("activation mixing", (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local, LocalBlocks = true }, ""),
            ("Wᵀ", (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local, LocalBlocks = true }, ""),
        };
        var ours = methods.Select(_ => new List<double>()).ToArray();
        var peer = new Dictionary<string, List<double>>();
        Console.WriteLine($"LocalMixer step {spec} on 28×28×1, batch {batch}, Adam; {rounds} rounds × {repeats} steps, 1 thread; load average {LoadAverage()}");
        for (int round = 0; round < rounds; round++)
        {
            for (int m = 0; m < methods.Length; m++) ours[m].Add(TimeOurs(spec, methods[m].Guesser, batch, repeats));
            foreach (var (row, seconds) in RunPeer(repeats)) (peer.TryGetValue(row, out var list) ? list : peer[row] = []).Add(seconds);
        }
        Console.WriteLine($"{"method",-40} {"ours ms",9} {"PyTorch ms",11} {"ratio",7}");
        for (int m = 0; m < methods.Length; m++)
        {
            double mine = Median(ours[m]) * 1e3;
            double theirs = methods[m].PeerRow.Length > 0 && peer.TryGetValue(methods[m].PeerRow, out var p) ? Median(p) * 1e3 : double.NaN;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{methods[m].Name,-40} {mine,9:F2} {(double.IsNaN(theirs) ? "–" : theirs.ToString("F2", CultureInfo.InvariantCulture)),11} {(double.IsNaN(theirs) ? "–" : (mine / theirs).ToString("F2", CultureInfo.InvariantCulture)),7}"));
        }
        Console.WriteLine($"load average after: {LoadAverage()}");
        return 0;
    }

    /// <summary>Median seconds of one step (SetBatch, Estimate, Adam) over <paramref name="repeats"/> after two warm-up steps.</summary>
    private static double TimeOurs(LocalMixerSpec spec, Guesser guesser, int batch, int repeats)
    {
        var model = spec.Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
        var estimator = guesser.Compile(store, batch);
        var optimizer = new Optimizer(Optimizers.Adam(1e-3f), store);
        var x = new float[batch * spec.Input.ElementCount];
        RandomFill.Normal(new RandomKey(3, 1), 0, 0f, 1f, x);
        var y = Enumerable.Range(0, batch).Select(i => (float)(i % spec.Classes)).ToArray();
        var samples = new List<double>();
        for (int i = 0; i < repeats + 2; i++)
        {
            long start = Stopwatch.GetTimestamp();
            estimator.SetBatch(x, y);
            var (gradient, loss) = estimator.Estimate(new RandomKey(5, (ulong)i), i);
            optimizer.Step(new UpdateInputs(i, loss, default), gradient);
            if (i >= 2) samples.Add(Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        return Median(samples);
    }

    private static IEnumerable<(string Row, double Seconds)> RunPeer(int repeats)
    {
        string? script = null;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null && script is null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "benchmarks", "peers", "torch_mixer.py"))) script = Path.Combine(dir.FullName, "benchmarks", "peers", "torch_mixer.py");
        if (script is null) throw new FileNotFoundException("benchmarks/peers/torch_mixer.py not found above the benchmark's folder.");
        var start = new ProcessStartInfo("/usr/bin/python3", repeats < 10 ? [script, "--quick", "--threads", "1"] : [script, "--threads", "1"])
        {
            RedirectStandardOutput = true, WorkingDirectory = Path.GetDirectoryName(script)!,
        };
        foreach (var (key, value) in new[] { ("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1") }) start.Environment[key] = value;
        using var process = Process.Start(start) ?? throw new InvalidOperationException("Could not start /usr/bin/python3.");
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"The PyTorch peer {script} failed (exit {process.ExitCode}).");
        foreach (var row in JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement.GetProperty("rows").EnumerateObject())
            yield return (row.Name, row.Value.GetDouble());
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "?";
}
