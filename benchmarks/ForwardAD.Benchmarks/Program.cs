using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Benchmarks;
using ForwardAD.Graph;
using ForwardAD.Random;

// `compare` runs our suite and the PyTorch peer in one go and prints the ratio table;
// anything else goes to BenchmarkDotNet's own switcher (e.g. --filter '*Gemm*').
if (args.Length > 0 && args[0] == "compare")
{
    bool quick = args.Contains("--quick");
    return Compare.Run(quick);
}
// `ours` prints this library's rows as JSON (one side of compare-peers); `compare-peers` runs ForwardAD, TorchSharp and
// PyTorch alternately at 1 and 2 threads and prints one table (issue 11).
if (args.Length > 0 && args[0] == "ours")
    return OursSide.Run(IntOption(args, "--repeats", 10), Option(args, "--rows")?.Split(',').ToHashSet());
if (args.Length > 0 && args[0] == "ours-memory")
    return OursSide.Memory(IntOption(args, "--depth", 6), Option(args, "--row") ?? "jvp_k1");
if (args.Length > 0 && args[0] == "compare-peers")
    return PeerComparison.Run(IntOption(args, "--rounds", 4), IntOption(args, "--repeats", 10),
        args.Contains("--memory-only") ? [] : [.. (Option(args, "--threads") ?? "1,2").Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture))],
        Option(args, "--out"), Option(args, "--models")?.Split(',').ToHashSet(), Option(args, "--cnn-layout"));
if (args.Length > 0 && args[0] == "mixer-step")
    return MixerStep.Run(IntOption(args, "--rounds", 3), IntOption(args, "--repeats", 10));
if (args.Length > 0 && args[0] == "cpu-threads")
    return CpuThreadScaling.Run(IntOption(args, "--repeats", 15));
if (args.Length > 0 && args[0] == "conv-gemm-rate")
    return ConvGemmRate.Run(IntOption(args, "--repeats", 15));
// `distributed`: 1 process × 2 threads against 2 MPI ranks × 1 thread, and the exchange costs for 8 to 1024 workers.
if (args.Length > 0 && args[0] == "distributed")
    return DistributedBenchmark.Run(IntOption(args, "--rounds", 3));
if (args.Length > 0 && args[0] == "distributed-worker")
    return DistributedBenchmark.Worker(IntOption(args, "--threads", 1));
if (args.Length > 0 && args[0] == "message-costs")
    return DistributedBenchmark.MessageCosts();
if (args.Length > 1 && args[0] == "profile")
    return Profile.Run(args[1], args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 20);
BenchmarkSwitcher.FromAssembly(typeof(MlpBenchmarks).Assembly).Run(args);
return 0;

static string? Option(string[] args, string name) => Array.IndexOf(args, name) is int i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
static int IntOption(string[] args, string name, int fallback) => Option(args, name) is { } v ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;

internal static class Compare
{
    public static int Run(bool quick)
    {
        Console.WriteLine($"ForwardAD core benchmark, {DateTime.UtcNow:yyyy-MM-dd}, {Environment.ProcessorCount} cores, {new CpuBackend().Name}");
        // The peer runs before and after our suite; each row uses its faster median of the two, which
        // is conservative for our ratios on a machine whose speed drifts (shared VMs do).
        var peerBefore = RunPeer("torch_mlp.py", quick);
        var stepPeerBefore = RunPeer("torch_step.py", quick);
        var job = (quick ? Job.ShortRun.WithIterationCount(3).WithWarmupCount(1) : Job.Default.WithIterationCount(10).WithWarmupCount(3))
            .WithLaunchCount(1);
        var config = ManualConfig.Create(DefaultConfig.Instance).AddJob(job).WithOptions(ConfigOptions.DisableLogFile);
        var ours = BenchmarkRunner.Run<MlpBenchmarks>(config);
        var gemm = BenchmarkRunner.Run<GemmBenchmarks>(config);
        var steps = BenchmarkRunner.Run<StepBenchmarks>(config);
        var peerAfter = RunPeer("torch_mlp.py", quick);
        var stepPeerAfter = RunPeer("torch_step.py", quick);
        var peer = peerBefore;

        double Median(Summary s, string method) =>
            s.Reports.First(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == method).ResultStatistics!.Median / 1e9;
        long Allocated(Summary s, string method)
        {
            var report = s.Reports.First(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == method);
            return report.GcStats.GetBytesAllocatedPerOperation(report.BenchmarkCase) ?? -1;
        }
        double P(string name) => Math.Min(Row(peerBefore, name), Row(peerAfter, name));
        static double Row(JsonElement run, string name) =>
            run.GetProperty("rows").TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : double.NaN;

        double forward = Median(ours, "Forward");
        var rows = new (string Row, string Method, string PeerRow, double Target, string TargetText)[]
        {
            ("forward", "Forward", "forward", 1.1, "≤ 1.1× PyTorch forward"),
            ("JVP K=1", "JvpK1", "forward_ad_k1", double.NaN, "≤ 2.2× our forward"),
            ("JVP K=6 (one channel per layer)", "JvpK6PerLayer", "", double.NaN, ""),
            ("JVP K=16", "JvpK16", "forward_ad_k16", double.NaN, ""),
            ("backprop (forward + backward)", "Backprop", "backprop", 1.0, "≤ 1.0× PyTorch forward + backward"),
        };
        Console.WriteLine();
        Console.WriteLine($"PyTorch {peer.GetProperty("torch")} ({peer.GetProperty("threads")} threads) vs ForwardAD; MLP depth 6, width 1024, input 3072, batch 512, float32; medians");
        Console.WriteLine("| row | ForwardAD ms | PyTorch ms | ours / PyTorch | ours / our forward | B allocated per call | target |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---|");
        foreach (var (row, method, peerRow, _, target) in rows)
        {
            double t = Median(ours, method), p = peerRow.Length > 0 ? P(peerRow) : double.NaN;
            string targetText = target;
            if (method == "Forward") targetText += t / P("forward") <= 1.1 ? " (met)" : " (missed)";
            if (method == "JvpK1") targetText += t / forward <= 2.2 ? " (met)" : " (missed)";
            if (method == "Backprop") targetText += t / P("backprop") <= 1.0 ? " (met)" : " (missed)";
            Console.WriteLine($"| {row} | {t * 1e3:F1} | {(double.IsNaN(p) ? "–" : (p * 1e3).ToString("F1"))} | {(double.IsNaN(p) ? "–" : (t / p).ToString("F2"))} | {t / forward:F2} | {Allocated(ours, method)} | {targetText} |");
        }
        Console.WriteLine($"PyTorch's own forward-AD pass (K=1) takes {P("forward_ad_k1") / P("forward"):F2}× its forward.");
        Console.WriteLine($"PyTorch medians, run before / after our suite (ms): " + string.Join(", ",
            new[] { "forward", "forward_ad_k1", "forward_ad_k16", "backprop" }.Select(r => $"{r} {Row(peerBefore, r) * 1e3:F1} / {Row(peerAfter, r) * 1e3:F1}")));

        double managed = Median(gemm, "Managed"), openBlas = Median(gemm, "OpenBlas");
        Console.WriteLine();
        Console.WriteLine("GEMM 512×1024×1024 (the MLP's dominant shape):");
        Console.WriteLine($"| managed | {managed * 1e3:F2} ms | {GemmBenchmarks.Flops / managed / 1e9:F1} GFLOP/s |");
        Console.WriteLine($"| openblas | {openBlas * 1e3:F2} ms | {GemmBenchmarks.Flops / openBlas / 1e9:F1} GFLOP/s |");

        double S(string name) => Math.Min(Row(stepPeerBefore, name), Row(stepPeerAfter, name));
        double ap = Median(steps, "ActivationPerturbationAdamW"), wt = Median(steps, "WeightTransposeAdamW"), bp = Median(steps, "BackpropAdamW");
        Console.WriteLine();
        Console.WriteLine("Training step with AdamW (guess, JVP, estimate, update), same model and batch; PyTorch rows: backprop step, and activation perturbation written with forward_ad");
        Console.WriteLine("| row | ForwardAD ms | B allocated per step | / PyTorch backprop step | / PyTorch forward-AD AP step | target |");
        Console.WriteLine("|---|---:|---:|---:|---:|---|");
        foreach (var (row, t, method, target) in new[]
        {
            ("activation perturbation", ap, "ActivationPerturbationAdamW", $"≤ 1.2× backprop step ({(ap / S("backprop_adamw") <= 1.2 ? "met" : "missed")}), ≤ 0.5× forward-AD step ({(ap / S("forward_ad_ap") <= 0.5 ? "met" : "missed")})"),
            ("Wᵀ", wt, "WeightTransposeAdamW", ""),
            ("backprop (ours)", bp, "BackpropAdamW", ""),
            ("DFA", Median(steps, "DfaAdamW"), "DfaAdamW", ""),
            ("GrAPE (original rule, joint tangent)", Median(steps, "GrapeAdamW"), "GrapeAdamW",
                $"≤ 1.3× DFA step: {Median(steps, "GrapeAdamW") / Median(steps, "DfaAdamW"):F2}× ({(Median(steps, "GrapeAdamW") / Median(steps, "DfaAdamW") <= 1.3 ? "met" : "missed")})"),
        })
            Console.WriteLine($"| {row} | {t * 1e3:F1} | {Allocated(steps, method)} | {t / S("backprop_adamw"):F2} | {t / S("forward_ad_ap"):F2} | {target} |");
        Console.WriteLine($"PyTorch step medians, before / after our suite (ms): backprop + AdamW {Row(stepPeerBefore, "backprop_adamw") * 1e3:F1} / {Row(stepPeerAfter, "backprop_adamw") * 1e3:F1}, " +
            $"forward-AD activation perturbation + AdamW {Row(stepPeerBefore, "forward_ad_ap") * 1e3:F1} / {Row(stepPeerAfter, "forward_ad_ap") * 1e3:F1}");

        Console.WriteLine();
        Console.WriteLine("Memory against depth (width 1024, batch 512): our plan buffers (parameters excluded) and PyTorch's saved tensors for backward");
        Console.WriteLine("| depth | ForwardAD JVP K=1 (generated tangents, buffer reuse) | ForwardAD backprop | PyTorch saved for backward |");
        Console.WriteLine("|---:|---:|---:|---:|");
        foreach (var depth in new[] { 6, 12, 24 })
        {
            var model = MlpSpec.Uniform(MlpBenchmarks.Inputs, depth, MlpBenchmarks.Width, MlpBenchmarks.Classes, ElementwiseFunction.Relu).Build();
            var store = ParameterStore.Initialize(model, new CpuBackend(), 1);
            long jvp = Plan.Compile(store, new PlanOptions(MlpBenchmarks.Batch)
            {
                ReuseBuffers = true,
                Seeds = [.. model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(1, (ulong)l.Node.Id)))],
            }).AllocatedBytes;
            long backprop = Plan.Compile(store, new PlanOptions(MlpBenchmarks.Batch) { Gradients = true }).AllocatedBytes;
            var saved = peer.GetProperty("saved_bytes").GetProperty(depth.ToString(CultureInfo.InvariantCulture)).GetInt64();
            Console.WriteLine($"| {depth} | {jvp / 1048576.0:F1} MiB | {backprop / 1048576.0:F1} MiB | {saved / 1048576.0:F1} MiB |");
        }
        return 0;
    }

    private static JsonElement RunPeer(string name, bool quick)
    {
        var script = FindPeerScript(name);
        var start = new ProcessStartInfo("/usr/bin/python3", quick ? [script, "--quick"] : [script]) { RedirectStandardOutput = true };
        using var process = Process.Start(start) ?? throw new InvalidOperationException("Could not start /usr/bin/python3.");
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"The PyTorch peer {script} failed (exit {process.ExitCode}). Install it with: apt-get install python3-torch libopenblas0-pthread");
        return JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
    }

    private static string FindPeerScript(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "benchmarks", "peers", name);
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException($"benchmarks/peers/{name} not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>`profile NAME`: runs one MLP, CNN or transformer benchmark row in a tight loop for external profilers (perf).</summary>
internal static class Profile
{
    /// <summary>8 M normal numbers on one thread (the scale of a CNN activation-perturbation step's guesses).</summary>
    private static Action NormalFill()
    {
        var buffer = new float[8 << 20];
        return () => ForwardAD.Random.RandomFill.Normal(new RandomKey(1, 2), 0, 0f, 1f, buffer);
    }

    /// <summary>Exact GELU over 2M N(0, 1) values (the transformer row's two MLP activations per forward pass).</summary>
    private static Action GeluRow(bool withDerivative)
    {
        var x = new float[Environment.GetEnvironmentVariable("GELU_N") is { } n ? int.Parse(n) : 2 << 20];
        ForwardAD.Random.RandomFill.Normal(new RandomKey(1, 3), 0, 0f, 1f, x);
        var (y, derivative) = (new float[x.Length], new float[x.Length]);
        var gelu = ElementwiseFunction.Gelu;
        return withDerivative ? () => gelu.ApplyWithDerivative(x, y, derivative) : () => gelu.Apply(x, y);
    }

    public static int Run(string row, int iterations)
    {
        var bench = new MlpBenchmarks();
        bench.Setup();
        static StepBenchmarks Steps() { var s = new StepBenchmarks(); s.Setup(); return s; }
        static CnnBenchmarks Cnn() { var c = new CnnBenchmarks(); c.Setup(); return c; }
        static TransformerBenchmarks Tf() { var t = new TransformerBenchmarks(); t.Setup(); return t; }
        Action action = row switch
        {
            "forward" => bench.Forward,
            "jvp1" => bench.JvpK1,
            "jvp16" => bench.JvpK16,
            "backprop" => bench.Backprop,
            "gemm-managed" => new GemmBenchmarks().Managed,
            "step-ap" => Steps().ActivationPerturbationAdamW,
            "step-wt" => Steps().WeightTransposeAdamW,
            "step-backprop" => Steps().BackpropAdamW,
            "step-dfa" => Steps().DfaAdamW,
            "step-grape" => Steps().GrapeAdamW,
            "cnn-forward" => Cnn().Forward,
            "cnn-jvp1" => Cnn().JvpK1,
            "cnn-backprop" => Cnn().Backprop,
            "cnn-step-backprop" => Cnn().BackpropAdamW,
            "cnn-step-ap" => Cnn().ActivationPerturbationAdamW,
            "cnn-step-dfa" => Cnn().DfaAdamW,
            "cnn-step-grape" => Cnn().GrapeAdamW,
            "tf-forward" => Tf().Forward,
            "tf-jvp1" => Tf().JvpK1,
            "tf-backprop" => Tf().Backprop,
            "tf-step-backprop" => Tf().BackpropAdamW,
            "tf-step-ap" => Tf().ActivationPerturbationAdamW,
            "tf-step-dfa" => Tf().DfaAdamW,
            "tf-step-grape" => Tf().GrapeAdamW,
            "normal-fill" => NormalFill(),
            "gelu" => GeluRow(withDerivative: false),
            "gelu-derivative" => GeluRow(withDerivative: true),
            _ => throw new ArgumentException($"Unknown row '{row}': use forward, jvp1, jvp16, backprop, gemm-managed, step-ap, step-wt, " +
                "step-backprop, step-dfa, step-grape, cnn-forward, cnn-jvp1, cnn-backprop, cnn-step-backprop, cnn-step-ap, cnn-step-dfa, cnn-step-grape, tf-forward, tf-jvp1, " +
                "tf-backprop, tf-step-backprop, tf-step-ap, tf-step-dfa, tf-step-grape, normal-fill, gelu or gelu-derivative."),
        };
        action();
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++) action();
        Console.WriteLine($"{row}: {watch.Elapsed.TotalMilliseconds / iterations:F2} ms per call");
        return 0;
    }
}
