using System.Diagnostics;
using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Cuda;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.GpuBenchmarks;

/// <summary>
/// The issue-5 benchmark on the GPU machine. Our rows on the CUDA backend (synchronised wall
/// time over repeated calls, after warm-up) beside that machine's PyTorch (benchmarks/peers/torch_gpu.py),
/// at batch 512 and 8192, plus the FLOP rate of our GEMM-bound rows against cuBLAS's own SGEMM rate.
/// </summary>
internal static class GpuCompare
{
    private const int Inputs = 3072, Width = 1024, Classes = 10, Depth = 6;

    public static int Run()
    {
        using var cuda = CudaBackend.TryCreate(out var reason);
        if (cuda is null)
        {
            Console.WriteLine($"The GPU benchmark needs a CUDA device: {reason}");
            return 1;
        }
        Console.WriteLine($"ForwardAD GPU benchmark, {DateTime.UtcNow:yyyy-MM-dd}, {cuda.Name}; kernels: {string.Join("; ", cuda.KernelOrigins)}");
        foreach (var batch in new[] { 512, 8192 })
        {
            var peer = RunPeer(batch);
            var model = MlpSpec.Uniform(Inputs, Depth, Width, Classes, ElementwiseFunction.Relu).Build();
            var store = ParameterStore.Initialize(model, cuda, 1);
            var x = new float[batch * Inputs];
            RandomFill.Normal(new RandomKey(1, 1), 0, 0f, 1f, x);
            var y = Enumerable.Range(0, batch).Select(i => (float)(i % Classes)).ToArray();
            Plan Compile(PlanOptions options)
            {
                var plan = Plan.Compile(store, options);
                plan.SetInput(model["x"], x);
                plan.SetInput(model["y"], y);
                return plan;
            }
            var seeds = model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(2, (ulong)l.Node.Id))).ToArray();
            var forward = Compile(new PlanOptions(batch));
            var jvp1 = Compile(new PlanOptions(batch) { Seeds = [.. seeds], ReuseBuffers = true });
            var jvp16 = Compile(new PlanOptions(batch) { Seeds = [.. seeds], TangentCount = 16, ReuseBuffers = true });
            var backprop = Compile(new PlanOptions(batch) { Gradients = true });
            // Whole training steps, each with its own store and AdamW (lr 1e-3, weight decay 0.01, as the peer's).
            Action TrainingStep(Guesser guesser)
            {
                var stepStore = ParameterStore.Initialize(model, cuda, 1);
                var estimator = guesser.Compile(stepStore, batch);
                estimator.SetBatch(x, y);
                var optimizer = new Optimizer(Optimizers.AdamW(1e-3f, 0.01f), stepStore);
                long step = 0;
                return () =>
                {
                    var (g, loss) = estimator.Estimate(new RandomKey(3, (ulong)step), step);
                    optimizer.Step(new UpdateInputs(step++, loss, default), g);
                };
            }
            double forwardFlops = 2.0 * batch * model.Sites.Sum(l => (double)l.Parameters[0].Shape.ElementCount);
            var rows = new (string Name, Action Work, string Peer, double Flops)[]
            {
                ("forward", forward.Forward, "forward", forwardFlops),
                ("JVP K=1", jvp1.ForwardJvp, "jvp_k1", forwardFlops * (1 + 4.0 / 7)),
                ("JVP K=16", jvp16.ForwardJvp, "jvp_k16", forwardFlops * (1 + 16 * 4.0 / 7)),
                ("backprop", () => { backprop.Forward(); backprop.Backward(); }, "backprop", forwardFlops * (3 - 3.0 / 7)),
                ("backprop step (AdamW)", TrainingStep(Guessers.Backprop), "backprop_adamw", forwardFlops * (3 - 3.0 / 7)),
                ("activation perturbation step (AdamW)", TrainingStep(Guessers.ActivationPerturbation()), "ap_adamw", forwardFlops * (2 + 4.0 / 7)),
                ("Wᵀ step (AdamW)", TrainingStep(Guessers.WeightTranspose()), "", double.NaN),
                ("DFA step (AdamW)", TrainingStep(Guessers.Dfa()), "", double.NaN),
                ("GrAPE step (AdamW)", TrainingStep(Guessers.Grape(new GrapeOptions())), "", double.NaN),
            };
            double gemmRate = Row(peer, "gemm_gflops");
            Console.WriteLine();
            if (peer.Result is { } result)
                Console.WriteLine($"batch {batch} on {Text(result, "device")} (PyTorch {Text(result, "torch")}, TF32 off); cuBLAS SGEMM {batch}×1024×1024 via torch.mm: {gemmRate:F0} GFLOP/s");
            else
                Console.WriteLine($"batch {batch}: the PyTorch GPU peer failed, so its columns are empty; our rows follow. {peer.Failure}");
            Console.WriteLine("| row | ForwardAD ms | PyTorch ms | ours / PyTorch | our GFLOP/s | / cuBLAS SGEMM rate |");
            Console.WriteLine("|---|---:|---:|---:|---:|---:|");
            foreach (var (name, work, peerRow, flops) in rows)
            {
                double seconds = Time(cuda, work);
                double theirs = peerRow.Length > 0 ? Row(peer, peerRow) : double.NaN;
                double rate = flops / seconds / 1e9; // NaN for rows whose FLOP count we do not claim (Wᵀ, DFA, GrAPE)
                Console.WriteLine($"| {name} | {seconds * 1e3:F2} | {Cell(theirs * 1e3, "F2")} | {Cell(seconds / theirs, "F2")} | {Cell(rate, "F0")} | {Cell(rate / gemmRate, "P0")} |");
            }
        }
        return 0;
    }

    private static string Cell(double value, string format) => double.IsNaN(value) ? "–" : value.ToString(format, System.Globalization.CultureInfo.InvariantCulture);

    private static double Time(CudaBackend cuda, Action work, int repeats = 20)
    {
        for (int i = 0; i < 3; i++) work();
        cuda.Synchronize();
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) work();
        cuda.Synchronize();
        return watch.Elapsed.TotalSeconds / repeats;
    }

    /// <summary>A row of the peer's result, or NaN ("–" in the table) when the peer failed or did not measure it.</summary>
    private static double Row(PeerResult peer, string name) =>
        peer.Result is { } result && result.TryGetProperty("rows", out var rows) && rows.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number
            ? value.GetDouble() : double.NaN;

    private static string Text(JsonElement result, string name) => result.TryGetProperty(name, out var value) ? value.ToString() : "?";

    /// <summary>benchmarks/peers/torch_gpu.py at this batch, with the venv's Python when there is one. Never throws: a peer
    /// that cannot run is reported beside our rows (see <see cref="PeerProcess"/>).</summary>
    private static PeerResult RunPeer(int batch)
    {
        string? script = Environment.GetEnvironmentVariable("FORWARDAD_TORCH_GPU_PEER");
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null && script is null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "benchmarks", "peers", "torch_gpu.py");
            if (File.Exists(candidate)) script = candidate;
        }
        if (script is null) return new PeerResult(null, $"benchmarks/peers/torch_gpu.py was not found above {AppContext.BaseDirectory}; set FORWARDAD_TORCH_GPU_PEER.");
        var python = Environment.GetEnvironmentVariable("FORWARDAD_PYTHON") ?? (File.Exists("/opt/torch/.venv/bin/python") ? "/opt/torch/.venv/bin/python" : "python3");
        return PeerProcess.Run(PeerProcess.StartInfo(python, [script, batch.ToString(System.Globalization.CultureInfo.InvariantCulture)]));
    }
}
