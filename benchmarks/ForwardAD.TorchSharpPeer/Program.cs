using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

// The TorchSharp peer of ForwardAD's benchmarks (issue 11): the same MLP as benchmarks/ForwardAD.Benchmarks and
// benchmarks/peers/torch_mlp.py (depth 6 = six weight matrices, width 1024, input 3072, 10 classes, batch 512,
// float32, ReLU, nn.Linear's initialisation), the same rows, timed the same way (single calls after warm-up; median
// and minimum). TorchSharp has no forward-mode AD (no forward_ad, jvp or vmap), so its JVP row is the
// double-backward emulation: a backward with create_graph through a dummy cotangent v, then the backward of
// ⟨g, u⟩ with respect to v (two reverse passes, the second through the graph of the first).
//
// Usage: ForwardAD.TorchSharpPeer [--threads N] [--repeats R] [--rows a,b,...] [--depth D] [--memory ROW]
// --memory ROW: instead of timing, the peak resident memory a call of ROW adds beyond the parameters and inputs
// (VmHWM after two calls minus VmRSS before them), {"memory": {"row", "depth", "peak_bytes"}}.
// Prints one JSON object: {"threads": N, "rows": {name: {"median": s, "min": s}}}.
const int Inputs = 3072, Width = 1024, Classes = 10, Batch = 512;
int Depth = 6;
string? memoryRow = null;

int threads = 1, repeats = 10;
string[]? only = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--threads": threads = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--repeats": repeats = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--rows": only = args[++i].Split(','); break;
        case "--check": break;
        case "--depth": Depth = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--memory": memoryRow = args[++i]; break;
        default: Console.Error.WriteLine($"unknown argument '{args[i]}'; use --threads N --repeats R --rows a,b"); return 2;
    }
}
torch.set_num_threads(threads);
torch.manual_seed(0);
if (args.Contains("--check")) return CheckDoubleBackwardJvp();

var sizes = new[] { Inputs }.Concat(Enumerable.Repeat(Width, Depth - 1)).Append(Classes).ToArray();
var x = torch.randn(Batch, Inputs);
var y = torch.arange(Batch, dtype: int64) % Classes;
var rows = new Dictionary<string, Func<Action>>
{
    ["forward"] = () =>
    {
        var parameters = MakeParameters(requiresGrad: false);
        return () => { using var scope = torch.NewDisposeScope(); using var _ = torch.no_grad(); Loss(parameters, null); };
    },
    ["jvp_k1_double_backward"] = () =>
    {
        var parameters = MakeParameters(requiresGrad: false);
        // Per-example tangents on every pre-activation, drawn once outside the timing (as on the other sides).
        var tangents = sizes.Skip(1).Select(n => torch.randn(Batch, n)).ToArray();
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            // s_i + d_i with d_i = 0 requiring grad: ∂ℓ/∂d_i = ∂ℓ/∂s_i. v is the dummy cotangent of the per-example losses.
            var dummies = sizes.Skip(1).Select(n => torch.zeros(Batch, n, requires_grad: true)).ToArray();
            var losses = Loss(parameters, dummies);
            var v = torch.zeros(Batch, requires_grad: true);
            var g = torch.autograd.grad([losses], dummies, [v], create_graph: true);   // g_i = v_b ∂ℓ_b/∂s_i, linear in v
            var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
            var jvp = torch.autograd.grad([inner], [v])[0];                           // ∂⟨g, u⟩/∂v_b = Σ_i ∂ℓ_b/∂s_i · u_i
            jvp.sum().item<float>();
        };
    },
    ["backprop"] = () =>
    {
        var parameters = MakeParameters(requiresGrad: true);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            foreach (var p in parameters) p.grad = null;
            Loss(parameters, null).mean().backward();
        };
    },
    ["backprop_adamw"] = () =>
    {
        var parameters = MakeParameters(requiresGrad: true);
        // A Parameter takes over its tensor's handle: make each once (AdamW enumerates its argument more than once).
        var owned = parameters.Select(p => new TorchSharp.Modules.Parameter(p)).ToArray();
        var optimizer = torch.optim.AdamW(owned, lr: 1e-3, weight_decay: 0.01);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            Loss(owned, null).mean().backward();
            optimizer.step();
        };
    },
};

if (memoryRow is not null)
{
    if (!rows.TryGetValue(memoryRow, out var makeRow)) { Console.Error.WriteLine($"unknown row '{memoryRow}'"); return 2; }
    var call = makeRow();
    long baseline = ProcStatusBytes("VmRSS:");
    call();
    call();
    Console.WriteLine(JsonSerializer.Serialize(new { memory = new { row = memoryRow, depth = Depth, peak_bytes = ProcStatusBytes("VmHWM:") - baseline } }));
    return 0;
}

var results = new Dictionary<string, object>();
foreach (var (name, make) in rows)
{
    if (only is not null && !only.Contains(name)) continue;
    var call = make();
    for (int w = 0; w < 2; w++) call(); // warm-up
    var samples = new double[repeats];
    var process = Process.GetCurrentProcess();
    var cpuBefore = process.TotalProcessorTime;
    long wallStart = Stopwatch.GetTimestamp();
    for (int r = 0; r < repeats; r++)
    {
        long start = Stopwatch.GetTimestamp();
        call();
        samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
    double wall = Stopwatch.GetElapsedTime(wallStart).TotalSeconds;
    process.Refresh();
    double cpuPerWall = (process.TotalProcessorTime - cpuBefore).TotalSeconds / wall;
    Array.Sort(samples);
    double median = repeats % 2 == 1 ? samples[repeats / 2] : (samples[repeats / 2 - 1] + samples[repeats / 2]) / 2;
    results[name] = new { median, min = samples[0], cpu_per_wall = cpuPerWall };
}
Console.WriteLine(JsonSerializer.Serialize(new { threads = torch.get_num_threads(), torchsharp = "0.107.0", libtorch = "2.10.0", rows = results }));
return 0;

// nn.Linear's default initialisation: W ~ U(±1/√fan_in), b = 0 (as peer_common.make_params).
Tensor[] MakeParameters(bool requiresGrad) => [.. Enumerable.Range(0, Depth).SelectMany(i =>
{
    double bound = 1 / Math.Sqrt(sizes[i]);
    var w = torch.empty(sizes[i + 1], sizes[i]).uniform_(-bound, bound).requires_grad_(requiresGrad);
    var b = torch.zeros(sizes[i + 1]).requires_grad_(requiresGrad);
    return new[] { w, b };
})];

// Per-example cross-entropy of the MLP; dummies (if any) are added to the pre-activations.
Tensor Loss(IReadOnlyList<Tensor> parameters, Tensor[]? dummies)
{
    var h = x;
    for (int i = 0; i < Depth; i++)
    {
        var s = F.linear(h, parameters[2 * i], parameters[2 * i + 1]);
        if (dummies is not null) s = s + dummies[i];
        h = i < Depth - 1 ? F.relu(s) : s;
    }
    return F.cross_entropy(h, y, reduction: nn.Reduction.None);
}

// --check: the double-backward JVP against float64 central differences on a small MLP (3 → 5 → 4 → 3, batch 4): the
// emulated row computes what a JVP computes. Exit 0 when the largest relative error is below 1e-6.
static int CheckDoubleBackwardJvp()
{
    int[] widths = [3, 5, 4, 3];
    const int batch = 4;
    var x = torch.randn(batch, widths[0], dtype: float64);
    var y = torch.tensor(new long[] { 0, 2, 1, 2 });
    var weights = Enumerable.Range(0, 3).Select(i => torch.randn(widths[i + 1], widths[i], dtype: float64)).ToArray();
    var tangents = Enumerable.Range(0, 3).Select(i => torch.randn(batch, widths[i + 1], dtype: float64)).ToArray();
    Tensor Losses(Tensor[] offsets)
    {
        var h = x;
        for (int i = 0; i < 3; i++)
        {
            var s = F.linear(h, weights[i]) + offsets[i];
            h = i < 2 ? F.tanh(s) : s;
        }
        return F.cross_entropy(h, y, reduction: nn.Reduction.None);
    }
    var dummies = Enumerable.Range(0, 3).Select(i => torch.zeros(batch, widths[i + 1], dtype: float64, requires_grad: true)).ToArray();
    var v = torch.zeros(batch, dtype: float64, requires_grad: true);
    var g = torch.autograd.grad([Losses(dummies)], dummies, [v], create_graph: true);
    var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
    var jvp = torch.autograd.grad([inner], [v])[0].data<double>().ToArray();
    const double epsilon = 1e-6;
    var plus = Losses([.. tangents.Select(u => u * epsilon)]).data<double>().ToArray();
    var minus = Losses([.. tangents.Select(u => u * -epsilon)]).data<double>().ToArray();
    double worst = 0;
    for (int b = 0; b < batch; b++)
        worst = Math.Max(worst, Math.Abs(jvp[b] - (plus[b] - minus[b]) / (2 * epsilon)) / (1 + Math.Abs(jvp[b])));
    Console.WriteLine($"double-backward JVP against central differences (float64): largest relative error {worst:E2}");
    return worst < 1e-6 ? 0 : 1;
}

// A line of /proc/self/status ("VmRSS:   1234 kB") in bytes.
static long ProcStatusBytes(string key) =>
    long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(key, StringComparison.Ordinal))[key.Length..].Trim().Split(' ')[0],
        System.Globalization.CultureInfo.InvariantCulture) * 1024;
