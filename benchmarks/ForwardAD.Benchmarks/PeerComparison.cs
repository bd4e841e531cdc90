using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace ForwardAD.Benchmarks;

/// <summary>
/// `ours`: this library's side of the three-way comparison (issue 11), measured exactly as the peers measure
/// theirs: the same MLP (depth 6, width 1024, input 3072, 10 classes, batch 512), CNN (<see cref="CnnBenchmarks"/>; rows
/// cnn_*) and transformer (<see cref="TransformerBenchmarks"/>; rows tf_*), two warm-up calls, then single calls;
/// median, minimum, process CPU time per wall time, and managed bytes allocated per call. Prints one JSON object.
/// </summary>
internal static class OursSide
{
    /// <param name="only">Row names to run (all when null): `--rows cnn_forward,cnn_jvp_k1`.</param>
    public static int Run(int repeats, IReadOnlySet<string>? only = null)
    {
        // Each suite's setup (plans, parameter stores) runs only when one of its rows is wanted.
        var mlp = new Lazy<MlpBenchmarks>(() => { var m = new MlpBenchmarks(); m.Setup(); return m; });
        var steps = new Lazy<StepBenchmarks>(() => { var s = new StepBenchmarks(); s.Setup(); return s; });
        var cnn = new Lazy<CnnBenchmarks>(() => { var c = new CnnBenchmarks(); c.Setup(); return c; });
        var tf = new Lazy<TransformerBenchmarks>(() => { var t = new TransformerBenchmarks(); t.Setup(); return t; });
        var all = new (string Name, Func<Action> Call)[]
        {
            ("forward", () => mlp.Value.Forward), ("jvp_k1", () => mlp.Value.JvpK1), ("jvp_k16", () => mlp.Value.JvpK16),
            ("backprop", () => mlp.Value.Backprop), ("backprop_adamw", () => steps.Value.BackpropAdamW),
            ("ap_adamw", () => steps.Value.ActivationPerturbationAdamW), ("wt_adamw", () => steps.Value.WeightTransposeAdamW),
            ("dfa_adamw", () => steps.Value.DfaAdamW), ("grape_adamw", () => steps.Value.GrapeAdamW),
            ("cnn_forward", () => cnn.Value.Forward), ("cnn_jvp_k1", () => cnn.Value.JvpK1), ("cnn_backprop", () => cnn.Value.Backprop),
            ("cnn_backprop_adamw", () => cnn.Value.BackpropAdamW), ("cnn_ap_adamw", () => cnn.Value.ActivationPerturbationAdamW),
            ("cnn_dfa_adamw", () => cnn.Value.DfaAdamW), ("cnn_grape_adamw", () => cnn.Value.GrapeAdamW),
            ("tf_forward", () => tf.Value.Forward), ("tf_jvp_k1", () => tf.Value.JvpK1), ("tf_backprop", () => tf.Value.Backprop),
            ("tf_backprop_adamw", () => tf.Value.BackpropAdamW), ("tf_ap_adamw", () => tf.Value.ActivationPerturbationAdamW),
            ("tf_dfa_adamw", () => tf.Value.DfaAdamW), ("tf_grape_adamw", () => tf.Value.GrapeAdamW),
        };
        if (only is not null && only.FirstOrDefault(r => !all.Any(a => a.Name == r)) is { } unknown)
        {
            Console.Error.WriteLine($"ours: unknown row '{unknown}'; the rows are {string.Join(", ", all.Select(a => a.Name))}.");
            return 2;
        }
        var rows = all.Where(r => only is null || only.Contains(r.Name)).Select(r => (r.Name, Call: r.Call())).ToArray();
        var results = new Dictionary<string, object>();
        foreach (var (name, call) in rows)
        {
            call();
            call();
            var samples = new double[repeats];
            var process = Process.GetCurrentProcess();
            var cpuBefore = process.TotalProcessorTime;
            long allocatedBefore = GC.GetAllocatedBytesForCurrentThread(), wallStart = Stopwatch.GetTimestamp();
            for (int r = 0; r < repeats; r++)
            {
                long start = Stopwatch.GetTimestamp();
                call();
                samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            }
            double wall = Stopwatch.GetElapsedTime(wallStart).TotalSeconds;
            long allocated = (GC.GetAllocatedBytesForCurrentThread() - allocatedBefore) / repeats;
            process.Refresh();
            Array.Sort(samples);
            results[name] = new
            {
                median = PeerComparison.Median(samples),
                min = samples[0],
                cpu_per_wall = (process.TotalProcessorTime - cpuBefore).TotalSeconds / wall,
                allocated_bytes = allocated,
            };
        }
        Console.WriteLine(JsonSerializer.Serialize(new { backend = new Backends.CpuBackend().Name, rows = results }));
        return 0;
    }

    /// <summary>`ours-memory --depth D --row jvp_k1|backprop`: the peak resident memory a call adds beyond the parameters and
    /// inputs (VmHWM after two calls, the peak reset just before, minus VmRSS before compiling the plan), measured as the
    /// peers measure theirs.</summary>
    public static int Memory(int depth, string row)
    {
        var model = Graph.MlpSpec.Uniform(MlpBenchmarks.Inputs, depth, MlpBenchmarks.Width, MlpBenchmarks.Classes, Backends.ElementwiseFunction.Relu).Build();
        var backend = new Backends.CpuBackend();
        var store = Autodiff.ParameterStore.Initialize(model, backend, 1);
        // The batch lives in a buffer of the backend, as the peers' input tensor does, and the plan reads it there.
        var x = new Backends.View(backend.Allocate(MlpBenchmarks.Batch * MlpBenchmarks.Inputs));
        Random.RandomFill.Normal(new Random.RandomKey(1, 1), 0, 0f, 1f, Backends.CpuBackend.Span(x));
        var y = Enumerable.Range(0, MlpBenchmarks.Batch).Select(i => (float)(i % MlpBenchmarks.Classes)).ToArray();
        PeerComparison.ResetPeakResident();
        long baseline = PeerComparison.ProcStatusBytes("VmRSS:");
        var options = row == "jvp_k1"
            ? new Autodiff.PlanOptions(MlpBenchmarks.Batch)
            {
                ReuseBuffers = true,
                Seeds = [.. model.Sites.Select(s => new Autodiff.TangentSeed(s.Node, new Random.RandomKey(1, (ulong)s.Node.Id)))],
                BoundInputs = [model["x"]],
            }
            // Backprop as the training step runs it (BackpropGuesser): only what the backward pass reads is kept.
            : new Autodiff.PlanOptions(MlpBenchmarks.Batch) { Gradients = true, ReuseBuffers = true, BoundInputs = [model["x"]] };
        var plan = Autodiff.Plan.Compile(store, options);
        plan.BindInput(model["x"], x);
        plan.SetInput(model["y"], y);
        for (int i = 0; i < 2; i++)
        {
            if (row == "jvp_k1") plan.ForwardJvp();
            else { plan.Forward(); plan.Backward(); }
        }
        Console.WriteLine(JsonSerializer.Serialize(new { memory = new { row, depth, peak_bytes = PeerComparison.ProcStatusBytes("VmHWM:") - baseline } }));
        return 0;
    }
}

/// <summary>
/// `compare-peers`: ForwardAD, TorchSharp (benchmarks/ForwardAD.TorchSharpPeer) and PyTorch
/// (benchmarks/peers/torch_peer.py) on the same MLP, CNN and transformer rows (`--models mlp,cnn,transformer`; the CNN is
/// <see cref="CnnBenchmarks"/>, benchmarks/peers/torch_cnn.py and the TorchSharp peer's cnn_* rows; the transformer
/// <see cref="TransformerBenchmarks"/>, benchmarks/peers/torch_transformer.py and the peer's tf_* rows), each side its own process at the same priority, run
/// alternately (A, B, C, then B, C, A, …) at one thread per side and at two (docs/design.md §6: OMP_NUM_THREADS,
/// MKL_NUM_THREADS and OPENBLAS_NUM_THREADS set to the count, OMP_WAIT_POLICY=PASSIVE so that spin-waiting libtorch
/// threads do not starve the other side). Per row: the median over rounds of each side's median of single calls,
/// the minimum over all calls, the ratios, the spread of the per-round ratios, CPU/wall, our bytes per call, the
/// load average, and the targets of issue 11 judged from the table.
/// </summary>
internal static class PeerComparison
{
    private sealed record Side(string Name, string Program, string[] Arguments);

    // (model, row label, our row, TorchSharp's row, PyTorch's row)
    private static readonly (string Model, string Label, string Ours, string? TorchSharp, string? PyTorch)[] Rows =
    [
        ("mlp", "forward", "forward", "forward", "forward"),
        ("mlp", "JVP K=1 (TorchSharp: double backward; PyTorch: forward_ad)", "jvp_k1", "jvp_k1_double_backward", "jvp_k1"),
        ("mlp", "JVP K=16 (PyTorch: vmap(jvp))", "jvp_k16", null, "jvp_k16"),
        ("mlp", "backprop", "backprop", "backprop", "backprop"),
        ("mlp", "step: backprop + AdamW", "backprop_adamw", "backprop_adamw", "backprop_adamw"),
        ("mlp", "step: activation perturbation + AdamW (PyTorch: forward_ad)", "ap_adamw", "backprop_adamw", "forward_ad_ap"),
        ("mlp", "step: Wᵀ + AdamW (peers: backprop + AdamW)", "wt_adamw", "backprop_adamw", "backprop_adamw"),
        ("mlp", "step: DFA + AdamW (peers: backprop + AdamW)", "dfa_adamw", "backprop_adamw", "backprop_adamw"),
        ("mlp", "step: GrAPE + AdamW (peers: backprop + AdamW)", "grape_adamw", "backprop_adamw", "backprop_adamw"),
        ("cnn", "CNN forward", "cnn_forward", "cnn_forward", "cnn_forward"),
        ("cnn", "CNN JVP K=1 (TorchSharp: double backward; PyTorch: forward_ad)", "cnn_jvp_k1", "cnn_jvp_k1_double_backward", "cnn_jvp_k1"),
        ("cnn", "CNN backprop", "cnn_backprop", "cnn_backprop", "cnn_backprop"),
        ("cnn", "CNN step: backprop + AdamW", "cnn_backprop_adamw", "cnn_backprop_adamw", "cnn_backprop_adamw"),
        ("cnn", "CNN step: activation perturbation + AdamW (TorchSharp: backprop + AdamW; PyTorch: forward_ad)", "cnn_ap_adamw", "cnn_backprop_adamw", "cnn_ap_adamw"),
        ("cnn", "CNN step: DFA + AdamW (peers: backprop + AdamW)", "cnn_dfa_adamw", "cnn_backprop_adamw", "cnn_backprop_adamw"),
        ("cnn", "CNN step: GrAPE + AdamW (peers: backprop + AdamW)", "cnn_grape_adamw", "cnn_backprop_adamw", "cnn_backprop_adamw"),
        ("transformer", "transformer forward", "tf_forward", "tf_forward", "tf_forward"),
        ("transformer", "transformer JVP K=1 (TorchSharp: double backward; PyTorch: forward_ad)", "tf_jvp_k1", "tf_jvp_k1_double_backward", "tf_jvp_k1"),
        ("transformer", "transformer backprop", "tf_backprop", "tf_backprop", "tf_backprop"),
        ("transformer", "transformer step: backprop + AdamW", "tf_backprop_adamw", "tf_backprop_adamw", "tf_backprop_adamw"),
        ("transformer", "transformer step: activation perturbation + AdamW (TorchSharp: backprop + AdamW; PyTorch: forward_ad)", "tf_ap_adamw", "tf_backprop_adamw", "tf_ap_adamw"),
        ("transformer", "transformer step: DFA + AdamW (peers: backprop + AdamW)", "tf_dfa_adamw", "tf_backprop_adamw", "tf_backprop_adamw"),
        ("transformer", "transformer step: GrAPE + AdamW (peers: backprop + AdamW)", "tf_grape_adamw", "tf_backprop_adamw", "tf_backprop_adamw"),
    ];

    /// <summary>The rows of the chosen models, and each side's row names for its `--rows` argument.</summary>
    private static ((string Model, string Label, string Ours, string? TorchSharp, string? PyTorch)[] Rows, string Ours, string TorchSharp, string PyTorch)
        Select(IReadOnlySet<string> models)
    {
        var rows = Rows.Where(r => models.Contains(r.Model)).ToArray();
        static string Names(IEnumerable<string?> names) => string.Join(",", names.OfType<string>().Distinct());
        return (rows, Names(rows.Select(r => r.Ours)), Names(rows.Select(r => r.TorchSharp)), Names(rows.Select(r => r.PyTorch)));
    }

    /// <summary>A line of /proc/self/status ("VmRSS:   1234 kB") in bytes.</summary>
    /// <summary>Resets the kernel's peak resident size (VmHWM) to the current one (<c>/proc/self/clear_refs</c>, "5"), so that
    /// a later VmHWM is the peak of what ran after it, not of the set-up's temporaries; every side does this before its
    /// baseline.</summary>
    internal static void ResetPeakResident() => File.WriteAllText("/proc/self/clear_refs", "5");

    internal static long ProcStatusBytes(string key) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(key, StringComparison.Ordinal))[key.Length..].Trim().Split(' ')[0],
            CultureInfo.InvariantCulture) * 1024;

    internal static double Median(IReadOnlyList<double> sorted) =>
        sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Where(double.IsFinite).Order().ToList();
        return sorted.Count == 0 ? double.NaN : Median(sorted);
    }

    /// <param name="models">any of mlp, cnn and transformer: whose rows run (the memory table belongs to the MLP).</param>
    /// <param name="cnnLayout">nchw or nhwc for every CNN row of both torch peers; null: each row in the layout measured faster
    /// for it on that peer (torch_cnn.DEFAULT_LAYOUTS, the TorchSharp peer's cnnDefaultLayouts).</param>
    public static int Run(int rounds, int repeats, int[] threadCounts, string? outPath, IReadOnlySet<string>? models = null, string? cnnLayout = null)
    {
        models ??= new HashSet<string> { "mlp", "cnn", "transformer" };
        if (models.FirstOrDefault(m => m is not ("mlp" or "cnn" or "transformer")) is { } unknownModel)
        {
            Console.Error.WriteLine($"compare-peers: unknown model '{unknownModel}' in --models; use any of mlp, cnn and transformer, e.g. mlp,cnn,transformer.");
            return 2;
        }
        if (cnnLayout is not (null or "nchw" or "nhwc"))
        {
            Console.Error.WriteLine($"compare-peers: --cnn-layout {cnnLayout}: use nchw or nhwc.");
            return 2;
        }
        var (rows, ourRows, torchSharpRows, pyTorchRows) = Select(models);
        string[] layout = cnnLayout is null || !models.Contains("cnn") ? [] : ["--cnn-layout", cnnLayout];
        var root = FindRoot();
        var peerProject = Path.Combine(root, "benchmarks", "ForwardAD.TorchSharpPeer");
        Console.Error.WriteLine("building the TorchSharp peer (downloads TorchSharp and libtorch, ~160 MB, the first time) …");
        var peerDll = Path.Combine(peerProject, "bin", "Release", "net10.0", "ForwardAD.TorchSharpPeer.dll");
        if (!RunToEnd("dotnet", ["build", "-c", "Release", "-nologo", "-v", "q", peerProject], null, TimeSpan.FromMinutes(15), out var build))
            Console.Error.WriteLine($"The TorchSharp peer did not build (its columns will show –); the build said:\n{build[^Math.Min(1500, build.Length)..]}");
        var ourDll = typeof(PeerComparison).Assembly.Location;
        var report = new StringBuilder();
        report.AppendLine($"ForwardAD / TorchSharp 0.107.0 (libtorch 2.10) / PyTorch (Debian python3-torch) — {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, " +
            $"{Environment.ProcessorCount} cores, {File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "cpu"}");
        report.AppendLine($"{(models.Contains("mlp") ? "MLP depth 6, width 1024, input 3072, batch 512, float32; " : "float32; ")}{rounds} alternating rounds, " +
            $"each side a fresh process per round, {repeats} single calls after 2 warm-up calls per row.");
        if (models.Contains("cnn"))
            report.AppendLine("CNN: input 32×32×3, batch 128, conv 32 3×3 pad 1 → batch norm (affine, training mode) → relu → max pool 2 → conv 64 3×3 pad 1 → " +
                "batch norm → relu → max pool 2 → flatten → linear 10 → softmax cross-entropy; tangents on the five sites (conv, batch-norm and linear outputs).");
        if (models.Contains("transformer"))
            report.AppendLine($"Transformer: {TransformerBenchmarks.Spec} (pre-LN GPT-2 blocks: {TransformerBenchmarks.Spec.Layers} layers, {TransformerBenchmarks.Spec.Heads} heads, " +
                $"width {TransformerBenchmarks.Spec.Width}, context {TransformerBenchmarks.Spec.Context}, vocabulary {TransformerBenchmarks.Spec.Vocabulary}, MLP ×{TransformerBenchmarks.Spec.MlpRatio}, exact GELU), " +
                $"batch {TransformerBenchmarks.Batch} sequences of random tokens, loss the mean next-token cross-entropy; attention written as matmul + causal mask + softmax + matmul " +
                "on the peers; tangents on the 20 sites (embedding, positions, every LayerNorm, q, k, v, proj, fc1, fc2, head).");
        foreach (int threads in threadCounts)
        {
            var environment = new Dictionary<string, string>
            {
                ["OMP_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture),
                ["MKL_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture),
                ["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture),
                ["OMP_WAIT_POLICY"] = "PASSIVE",
                // .NET sides: fully optimised code from the first call. With tiered compilation, a dozen calls leave hot
                // managed loops at tier 0 (or on-stack-replaced) and a JIT thread busy during the timing (CPU/wall 1.2 at
                // one thread in a first run); the peers' native code has no such phase.
                ["DOTNET_TieredCompilation"] = "0",
            };
            string count = threads.ToString(CultureInfo.InvariantCulture), repeat = repeats.ToString(CultureInfo.InvariantCulture);
            var sides = new[]
            {
                new Side("ForwardAD", "dotnet", [ourDll, "ours", "--repeats", repeat, "--rows", ourRows]),
                new Side("TorchSharp", "dotnet", [peerDll, "--threads", count, "--repeats", repeat, "--rows", torchSharpRows, .. layout]),
                new Side("PyTorch", "/usr/bin/python3", [Path.Combine(root, "benchmarks", "peers", "torch_peer.py"), "--threads", count, "--repeats", repeat, "--rows", pyTorchRows, .. layout]),
            };
            var results = sides.ToDictionary(s => s.Name, _ => new List<JsonElement?>());
            var loads = new List<string>();
            for (int round = 0; round < rounds; round++)
                for (int i = 0; i < sides.Length; i++)
                {
                    var side = sides[(i + round) % sides.Length];
                    loads.Add(File.ReadAllText("/proc/loadavg").Split(' ')[0]);
                    Console.Error.WriteLine($"{threads} thread(s), round {round + 1}/{rounds}: {side.Name} (load {loads[^1]})");
                    bool ok = RunToEnd(side.Program, side.Arguments, environment, TimeSpan.FromMinutes(10), out var output);
                    results[side.Name].Add(ok ? ParseLastJson(output) : null);
                    if (!ok) Console.Error.WriteLine($"  {side.Name} failed: {output[^Math.Min(600, output.Length)..]}");
                }
            AppendTable(report, threads, rows, models, results, loads);
        }
        if (models.Contains("mlp")) AppendMemory(report, ourDll, peerDll, root);
        Console.WriteLine(report);
        if (outPath is not null) File.WriteAllText(outPath, report.ToString());
        return 0;
    }

    private static void AppendTable(StringBuilder report, int threads, (string Model, string Label, string Ours, string? TorchSharp, string? PyTorch)[] rows,
        IReadOnlySet<string> models, Dictionary<string, List<JsonElement?>> results, List<string> loads)
    {
        double Value(JsonElement? run, string? row, string field) =>
            run is { } r && row is not null && r.GetProperty("rows").TryGetProperty(row, out var v) && v.TryGetProperty(field, out var f) ? f.GetDouble() : double.NaN;
        IEnumerable<double> PerRound(string side, string? row, string field = "median") => results[side].Select(r => Value(r, row, field));
        double MedianOf(string side, string? row) => Median(PerRound(side, row));
        double MinOf(string side, string? row) => PerRound(side, row, "min").Where(double.IsFinite).DefaultIfEmpty(double.NaN).Min();
        string Spread(string side, string ours, string? theirs)
        {
            var ratios = PerRound("ForwardAD", ours).Zip(PerRound(side, theirs), (a, b) => a / b).Where(double.IsFinite).ToList();
            return ratios.Count == 0 ? "–" : $"{ratios.Min():F2}–{ratios.Max():F2}";
        }
        static string Ms(double seconds) => double.IsFinite(seconds) ? (seconds * 1e3).ToString("F1", CultureInfo.InvariantCulture) : "–";
        static string Ratio(double r) => double.IsFinite(r) ? r.ToString("F2", CultureInfo.InvariantCulture) : "–";

        report.AppendLine();
        report.AppendLine($"### {threads} thread{(threads == 1 ? "" : "s")} per side (load average before each process: {string.Join(" ", loads)})");
        report.AppendLine();
        report.AppendLine("| row | ForwardAD ms (min) | TorchSharp ms (min) | PyTorch ms (min) | ours/TorchSharp (per-round spread) | ours/PyTorch (spread) | CPU/wall ours, TS, PT | our B/call |");
        report.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (_, label, ours, torchSharp, pyTorch) in rows)
        {
            double o = MedianOf("ForwardAD", ours), t = MedianOf("TorchSharp", torchSharp), p = MedianOf("PyTorch", pyTorch);
            string cpu = string.Join(", ", new[] { ("ForwardAD", ours), ("TorchSharp", torchSharp), ("PyTorch", pyTorch) }
                .Select(s => Median(PerRound(s.Item1, s.Item2, "cpu_per_wall"))).Select(v => double.IsFinite(v) ? v.ToString("F2", CultureInfo.InvariantCulture) : "–"));
            double allocated = Median(PerRound("ForwardAD", ours, "allocated_bytes"));
            report.AppendLine($"| {label} | {Ms(o)} ({Ms(MinOf("ForwardAD", ours))}) | {Ms(t)} ({Ms(MinOf("TorchSharp", torchSharp))}) | {Ms(p)} ({Ms(MinOf("PyTorch", pyTorch))}) | " +
                $"{Ratio(o / t)} ({Spread("TorchSharp", ours, torchSharp)}) | {Ratio(o / p)} ({Spread("PyTorch", ours, pyTorch)}) | {cpu} | {(double.IsFinite(allocated) ? allocated.ToString("F0", CultureInfo.InvariantCulture) : "–")} |");
        }
        static string Judge(double value, double target) => !double.IsFinite(value) ? "not measured" : value <= target ? "met" : "missed";
        static string Verdict(double value, double target) => $"{Ratio(value)} ({Judge(value, target)})";
        static string Threads(int count) => count == 1 ? "1 thread" : $"{count} threads";
        if (models.Contains("cnn"))
        {
            // The layout of each CNN row as the torch peer reported it ({row: "nchw" | "nhwc"}; the same in every round).
            string Layout(string side) => results[side]
                .Select(r => r is { } j && j.TryGetProperty("cnn_layout", out var l) && l.ValueKind == JsonValueKind.Object
                    ? string.Join(", ", l.EnumerateObject().Select(p => $"{p.Name} {p.Value.GetString()}")) : null)
                .FirstOrDefault(l => l is not null) ?? "–";
            double cnnForward = MedianOf("ForwardAD", "cnn_forward"), cnnJvp = MedianOf("ForwardAD", "cnn_jvp_k1"), cnnAp = MedianOf("ForwardAD", "cnn_ap_adamw");
            double cnnBackprop = MedianOf("ForwardAD", "cnn_backprop"), cnnStep = MedianOf("ForwardAD", "cnn_backprop_adamw");
            double cnnDfa = MedianOf("ForwardAD", "cnn_dfa_adamw"), cnnGrape = MedianOf("ForwardAD", "cnn_grape_adamw");
            double tsCnnForward = MedianOf("TorchSharp", "cnn_forward"), tsCnnJvp = MedianOf("TorchSharp", "cnn_jvp_k1_double_backward");
            double tsCnnBackprop = MedianOf("TorchSharp", "cnn_backprop"), tsCnnStep = MedianOf("TorchSharp", "cnn_backprop_adamw");
            report.AppendLine();
            report.AppendLine($"CNN layouts (per row; channels last = nhwc): TorchSharp {Layout("TorchSharp")}; PyTorch {Layout("PyTorch")}; ours nhwc.");
            report.AppendLine();
            report.AppendLine($"CNN targets ({Threads(threads)}): forward ≤ 1.0× TorchSharp: {Verdict(cnnForward / tsCnnForward, 1.0)}; " +
                $"backprop ≤ 0.9× TorchSharp: {Verdict(cnnBackprop / tsCnnBackprop, 0.9)}; backprop + AdamW step ≤ 0.9× TorchSharp's: {Verdict(cnnStep / tsCnnStep, 0.9)}; " +
                $"activation-perturbation step ≤ 1.0× TorchSharp's backprop + AdamW step: {Verdict(cnnAp / tsCnnStep, 1.0)}; DFA step ≤ 1.0× it: {Verdict(cnnDfa / tsCnnStep, 1.0)}; " +
                $"GrAPE step ≤ 1.3× our DFA step: {Verdict(cnnGrape / cnnDfa, 1.3)}; JVP K=1 ≤ 1.8× our forward: {Verdict(cnnJvp / cnnForward, 1.8)}. " +
                $"For reading: JVP K=1 / TorchSharp's double backward {Ratio(cnnJvp / tsCnnJvp)}.");
        }
        if (models.Contains("transformer"))
        {
            double tfForward = MedianOf("ForwardAD", "tf_forward"), tfJvp = MedianOf("ForwardAD", "tf_jvp_k1"), tfAp = MedianOf("ForwardAD", "tf_ap_adamw");
            double tfDfa = MedianOf("ForwardAD", "tf_dfa_adamw"), tfGrape = MedianOf("ForwardAD", "tf_grape_adamw");
            double tsTfForward = MedianOf("TorchSharp", "tf_forward"), tsTfJvp = MedianOf("TorchSharp", "tf_jvp_k1_double_backward"), tsTfStep = MedianOf("TorchSharp", "tf_backprop_adamw");
            double ptTfJvp = MedianOf("PyTorch", "tf_jvp_k1"), ptTfAp = MedianOf("PyTorch", "tf_ap_adamw");
            report.AppendLine();
            report.AppendLine($"Transformer targets ({Threads(threads)}): forward ≤ 0.9× TorchSharp: {Verdict(tfForward / tsTfForward, 0.9)}; " +
                $"activation-perturbation step ≤ 0.9× TorchSharp's backprop + AdamW step: {Verdict(tfAp / tsTfStep, 0.9)}; GrAPE step ≤ 1.3× our DFA step: {Verdict(tfGrape / tfDfa, 1.3)}; " +
                $"JVP K=1 ≤ 1.8× our forward: {Verdict(tfJvp / tfForward, 1.8)}. For reading: JVP K=1 / TorchSharp's double backward {Ratio(tfJvp / tsTfJvp)}, " +
                $"/ PyTorch's forward_ad {Ratio(tfJvp / ptTfJvp)}; activation-perturbation step / PyTorch's forward_ad AP step {Ratio(tfAp / ptTfAp)}.");
        }
        if (!models.Contains("mlp")) return;
        double forward = MedianOf("ForwardAD", "forward"), jvp = MedianOf("ForwardAD", "jvp_k1"), ap = MedianOf("ForwardAD", "ap_adamw");
        double tsForward = MedianOf("TorchSharp", "forward"), tsJvp = MedianOf("TorchSharp", "jvp_k1_double_backward"), tsStep = MedianOf("TorchSharp", "backprop_adamw");
        report.AppendLine();
        report.AppendLine($"Targets ({threads} thread{(threads == 1 ? "" : "s")}): forward ≤ 0.9× TorchSharp: {Ratio(forward / tsForward)} ({Judge(forward / tsForward, 0.9)}); " +
            $"JVP K=1 ≤ 0.7× TorchSharp's double backward: {Ratio(jvp / tsJvp)} ({Judge(jvp / tsJvp, 0.7)}); JVP K=1 ≤ 1.6× our forward: {Ratio(jvp / forward)} ({Judge(jvp / forward, 1.6)}); " +
            $"activation-perturbation step ≤ 1.0× TorchSharp's backprop + AdamW step: {Ratio(ap / tsStep)} ({Judge(ap / tsStep, 1.0)}).");
    }

    /// <summary>Peak memory against depth, one fresh process per side, depth and row (one thread): what a JVP or a backprop
    /// call adds beyond parameters and inputs. Ours should stay flat in depth for the JVP (buffers reused layer by layer).</summary>
    private static void AppendMemory(StringBuilder report, string ourDll, string peerDll, string root)
    {
        var environment = new Dictionary<string, string>
        {
            ["OMP_NUM_THREADS"] = "1", ["MKL_NUM_THREADS"] = "1", ["OPENBLAS_NUM_THREADS"] = "1",
            // glibc's mmap threshold fixed (it grows after large frees by default): a freed tensor or buffer then leaves the
            // resident set at once, and the peak is that of live memory. With the default, memory freed in the set-up stays
            // resident and a call may or may not reuse it: PyTorch's depth-24 backprop measured 144 to 254 MiB between runs,
            // its live peak 110.
            ["MALLOC_MMAP_THRESHOLD_"] = "131072",
        };
        report.AppendLine();
        report.AppendLine("### Peak memory a call adds beyond parameters and inputs (MiB; VmHWM after two calls − VmRSS before, the peak reset just before; " +
            "glibc's mmap threshold fixed at 128 KiB so that freed memory leaves the resident set; one thread)");
        report.AppendLine();
        report.AppendLine("| depth | ForwardAD JVP K=1 | TorchSharp JVP (double backward) | PyTorch JVP (forward_ad) | ForwardAD backprop | TorchSharp backprop | PyTorch backprop |");
        report.AppendLine("|---:|---:|---:|---:|---:|---:|---:|");
        foreach (int depth in new[] { 6, 12, 24 })
        {
            string d = depth.ToString(CultureInfo.InvariantCulture);
            var cells = new List<string>();
            foreach (var (ours, torchSharp, pyTorch) in new[] { ("jvp_k1", "jvp_k1_double_backward", "jvp_k1"), ("backprop", "backprop", "backprop") })
                foreach (var (program, arguments) in new[]
                {
                    ("dotnet", new[] { ourDll, "ours-memory", "--depth", d, "--row", ours }),
                    ("dotnet", new[] { peerDll, "--threads", "1", "--depth", d, "--memory", torchSharp }),
                    ("/usr/bin/python3", new[] { Path.Combine(root, "benchmarks", "peers", "torch_peer.py"), "--threads", "1", "--depth", d, "--memory", pyTorch }),
                })
                {
                    Console.Error.WriteLine($"memory: depth {depth}, {Path.GetFileName(arguments[0])} {arguments[^1]}");
                    bool ok = RunToEnd(program, arguments, environment, TimeSpan.FromMinutes(5), out var output);
                    var json = ok ? ParseLastJson(output) : null;
                    cells.Add(json is { } j ? (j.GetProperty("memory").GetProperty("peak_bytes").GetInt64() / 1048576.0).ToString("F0", CultureInfo.InvariantCulture) : "–");
                }
            report.AppendLine($"| {depth} | {string.Join(" | ", cells)} |");
        }
    }

    private static JsonElement? ParseLastJson(string output)
    {
        var line = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault(l => l.TrimStart().StartsWith('{'));
        if (line is null) return null;
        try { return JsonDocument.Parse(line).RootElement.Clone(); }
        catch (JsonException) { return null; }
    }

    /// <summary>Runs a program to its end; returns its standard output (or, on failure, stdout and stderr) and whether it succeeded.</summary>
    private static bool RunToEnd(string program, string[] arguments, Dictionary<string, string>? environment, TimeSpan timeout, out string output)
    {
        var start = new ProcessStartInfo(program, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (environment is not null) foreach (var (key, value) in environment) start.Environment[key] = value;
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {program}.");
        var error = process.StandardError.ReadToEndAsync();
        output = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            output += "\n(timed out)";
            return false;
        }
        if (process.ExitCode == 0) return true;
        output += "\n" + error.Result;
        return false;
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "benchmarks", "peers", "torch_peer.py"))) return dir.FullName;
        throw new DirectoryNotFoundException("benchmarks/peers/torch_peer.py not found above " + AppContext.BaseDirectory);
    }
}
