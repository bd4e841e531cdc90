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
// The CNN rows (cnn_*; issue 12) time the benchmark CNN of benchmarks/peers/torch_cnn.py and CnnBenchmarks.cs: input
// 32×32×3, batch 128; conv 32 3×3 pad 1 → batch norm (affine, training mode) → relu → max pool 2 → conv 64 3×3 pad 1 →
// batch norm → relu → max pool 2 → flatten → linear 10 → softmax cross-entropy; the same five sites (conv, batch-norm and
// linear outputs) carry the JVP's tangents. TorchSharp 0.107 has no memory_format API; channels last is reached anyway by
// storing the images, tangents and conv weights NHWC and viewing them as NCHW (permute), which is what channels_last means
// to libtorch. --cnn-layout auto (the default) runs each row in the layout measured faster for it (cnnDefaultLayouts).
//
// The transformer rows (tf_*) time the benchmark transformer of benchmarks/peers/torch_transformer.py and
// TransformerBenchmarks.cs: TransformerSpec l2-h4-d128-t64 (2 pre-LN GPT-2 blocks, 4 heads, width 128, context 64,
// vocabulary 256, MLP ratio 4, exact GELU), batch 32 sequences; attention written as matmul + additive causal mask +
// softmax + matmul, as the PyTorch peer; the same 20 sites (embedding, positions, every LayerNorm, q, k, v, proj, fc1, fc2,
// head) carry the JVP's tangents.
//
// Usage: ForwardAD.TorchSharpPeer [--threads N] [--repeats R] [--rows a,b,...] [--depth D] [--memory ROW] [--cnn-layout auto|nchw|nhwc]
// --memory ROW: instead of timing, the peak resident memory a call of ROW adds beyond the parameters and inputs
// (VmHWM after two calls minus VmRSS before them, the peak reset just before), {"memory": {"row", "depth", "peak_bytes"}}.
// Prints one JSON object: {"threads": N, "rows": {name: {"median": s, "min": s}}}.
const int Inputs = 3072, Width = 1024, Classes = 10, Batch = 512;
int Depth = 6;
string? memoryRow = null;

int threads = 1, repeats = 10;
string[]? only = null;
string cnnLayout = "auto";
// The layout each CNN row runs in under --cnn-layout auto: the faster of NCHW and channels last for that row, measured on the
// 2-core EPYC VM at one thread (2026-11-26, interleaved runs, minimum of 5-7 calls, a shared machine at load 10-30: rough
// ratios, the same ordering in every run): channels last was 1.5-3× faster for the forward, backprop and the backprop step;
// the double-backward JVP was 2.3× faster in NCHW (libtorch's double backward of the channels-last convolution and max
// pool is slow). Confirm on a quiet machine with --cnn-layout nchw and nhwc.
var cnnDefaultLayouts = new Dictionary<string, string>
{
    ["cnn_forward"] = "nhwc", ["cnn_jvp_k1_double_backward"] = "nchw", ["cnn_backprop"] = "nhwc", ["cnn_backprop_adamw"] = "nhwc",
};
var cnnUsedLayouts = new Dictionary<string, string>();
const int CnnBatch = 128, CnnImage = 32, CnnClasses = 10;
// The benchmark transformer: l2-h4-d128-t64, vocabulary 256, batch 32 sequences (TransformerBenchmarks.cs).
var TfBench = new TfConfig(Layers: 2, Heads: 4, Width: 128, Context: 64, Vocabulary: 256, Batch: 32);
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
        case "--cnn-layout": cnnLayout = args[++i] is "auto" or "nchw" or "nhwc" ? args[i] : throw new ArgumentException($"--cnn-layout {args[i]}: use auto, nchw or nhwc"); break;
        default: Console.Error.WriteLine($"unknown argument '{args[i]}'; use --threads N --repeats R --rows a,b"); return 2;
    }
}
torch.set_num_threads(threads);
torch.manual_seed(0);
if (args.Contains("--check")) return CheckDoubleBackwardJvp() | CheckCnnDoubleBackwardJvp() | CheckTransformer();

var sizes = new[] { Inputs }.Concat(Enumerable.Repeat(Width, Depth - 1)).Append(Classes).ToArray();
var x = torch.randn(Batch, Inputs);
var y = torch.arange(Batch, dtype: int64) % Classes;
// A CNN row's layout (recorded for the JSON) and its batch, made outside the calls' dispose scopes.
(bool ChannelsLast, Tensor X, Tensor Y) CnnSetup(string row)
{
    string layout = cnnUsedLayouts[row] = cnnLayout == "auto" ? cnnDefaultLayouts[row] : cnnLayout;
    torch.manual_seed(1);
    bool last = layout == "nhwc";
    return (last, Image([CnnBatch, 3, CnnImage, CnnImage], last, s => torch.randn(s)), torch.arange(CnnBatch, dtype: int64) % CnnClasses);
}
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
    ["cnn_forward"] = () =>
    {
        var (last, cx, cy) = CnnSetup("cnn_forward");
        var (parameters, state) = MakeCnnParameters(last, requiresGrad: false);
        return () => { using var scope = torch.NewDisposeScope(); using var _ = torch.no_grad(); CnnLosses(parameters, state, cx, cy, null); };
    },
    ["cnn_jvp_k1_double_backward"] = () =>
    {
        var (last, cx, cy) = CnnSetup("cnn_jvp_k1_double_backward");
        var (parameters, state) = MakeCnnParameters(last, requiresGrad: false);
        var tangents = CnnSiteShapes(CnnBatch).Select(shape => Image(shape, last, s => torch.randn(s))).ToArray();
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            // As the MLP's row: zero offsets d_i on the five sites, a dummy cotangent v of the per-example losses,
            // g_i = v_b ∂ℓ_b/∂s_i by a backward with create_graph, then ∂⟨g, u⟩/∂v_b = Σ_i ∂ℓ_b/∂s_i · u_i.
            var dummies = CnnSiteShapes(CnnBatch).Select(shape => Image(shape, last, s => torch.zeros(s)).requires_grad_(true)).ToArray();
            var losses = CnnLosses(parameters, state, cx, cy, dummies);
            var v = torch.zeros(CnnBatch, requires_grad: true);
            var g = torch.autograd.grad([losses], dummies, [v], create_graph: true);
            var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
            torch.autograd.grad([inner], [v])[0].sum().item<float>();
        };
    },
    ["cnn_backprop"] = () =>
    {
        var (last, cx, cy) = CnnSetup("cnn_backprop");
        var (parameters, state) = MakeCnnParameters(last, requiresGrad: true);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            foreach (var p in parameters) p.grad = null;
            CnnLosses(parameters, state, cx, cy, null).mean().backward();
        };
    },
    ["cnn_backprop_adamw"] = () =>
    {
        var (last, cx, cy) = CnnSetup("cnn_backprop_adamw");
        var (parameters, state) = MakeCnnParameters(last, requiresGrad: true);
        var owned = parameters.Select(p => new TorchSharp.Modules.Parameter(p)).ToArray();
        var optimizer = torch.optim.AdamW(owned, lr: 1e-3, weight_decay: 0.01);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            CnnLosses(owned, state, cx, cy, null).mean().backward();
            optimizer.step();
        };
    },
    ["tf_forward"] = () =>
    {
        var (parameters, tx, ty) = TransformerSetup(requiresGrad: false);
        var mask = CausalMask(TfBench.Context, float32);
        return () => { using var scope = torch.NewDisposeScope(); using var _ = torch.no_grad(); TransformerLosses(parameters, TfBench, tx, ty, mask, null); };
    },
    ["tf_jvp_k1_double_backward"] = () =>
    {
        var (parameters, tx, ty) = TransformerSetup(requiresGrad: false);
        var mask = CausalMask(TfBench.Context, float32);
        var shapes = TransformerSiteShapes(TfBench, TfBench.Batch);
        var tangents = shapes.Select(s => torch.randn(s)).ToArray();
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            // As the MLP's row: zero offsets d_i on the 20 sites, a dummy cotangent v of the per-example losses,
            // g_i = v_b ∂ℓ_b/∂s_i by a backward with create_graph, then ∂⟨g, u⟩/∂v_b = Σ_i ∂ℓ_b/∂s_i · u_i.
            var dummies = shapes.Select(s => torch.zeros(s, requires_grad: true)).ToArray();
            var losses = TransformerLosses(parameters, TfBench, tx, ty, mask, dummies);
            var v = torch.zeros(TfBench.Batch, requires_grad: true);
            var g = torch.autograd.grad([losses], dummies, [v], create_graph: true);
            var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
            torch.autograd.grad([inner], [v])[0].sum().item<float>();
        };
    },
    ["tf_backprop"] = () =>
    {
        var (parameters, tx, ty) = TransformerSetup(requiresGrad: true);
        var mask = CausalMask(TfBench.Context, float32);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            foreach (var p in parameters.Values) p.grad = null;
            TransformerLosses(parameters, TfBench, tx, ty, mask, null).mean().backward();
        };
    },
    ["tf_backprop_adamw"] = () =>
    {
        var (parameters, tx, ty) = TransformerSetup(requiresGrad: true);
        var mask = CausalMask(TfBench.Context, float32);
        // A Parameter takes over its tensor's handle: make each once and compute with the Parameters.
        var owned = parameters.ToDictionary(p => p.Key, p => (Tensor)new TorchSharp.Modules.Parameter(p.Value));
        var optimizer = torch.optim.AdamW(owned.Values.Cast<TorchSharp.Modules.Parameter>().ToArray(), lr: 1e-3, weight_decay: 0.01);
        return () =>
        {
            using var scope = torch.NewDisposeScope();
            optimizer.zero_grad();
            TransformerLosses(owned, TfBench, tx, ty, mask, null).mean().backward();
            optimizer.step();
        };
    },
};

if (memoryRow is not null)
{
    if (!rows.TryGetValue(memoryRow, out var makeRow)) { Console.Error.WriteLine($"unknown row '{memoryRow}'"); return 2; }
    var call = makeRow();
    File.WriteAllText("/proc/self/clear_refs", "5"); // VmHWM from here on: the peak of the calls, not of the set-up's temporaries
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
Console.WriteLine(JsonSerializer.Serialize(new { threads = torch.get_num_threads(), torchsharp = "0.107.0", libtorch = "2.10.0", cnn_layout = cnnUsedLayouts, rows = results }));
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

// The benchmark CNN's parameters with nn.Conv2d / nn.Linear / nn.BatchNorm2d's default initialisation (U(±1/√fan_in) for
// the conv and linear weights and biases, γ = 1, β = 0): [w1, b1, γ1, β1, w2, b2, γ2, β2, w3, b3]; the running statistics
// [mean1, var1, mean2, var2] are state (updated in place by every training-mode pass).
static (Tensor[] Parameters, Tensor[] State) MakeCnnParameters(bool channelsLast, bool requiresGrad)
{
    static Tensor Uniform(long[] shape, long fanIn) => torch.empty(shape).uniform_(-1 / Math.Sqrt(fanIn), 1 / Math.Sqrt(fanIn));
    Tensor ConvWeight(long outChannels, long inChannels) => Image([outChannels, inChannels, 3, 3], channelsLast, s => Uniform(s, inChannels * 9));
    const long c1 = 32, c2 = 64, flat = c2 * (CnnImage / 4) * (CnnImage / 4);
    Tensor[] parameters =
    [
        ConvWeight(c1, 3), Uniform([c1], 27), torch.ones(c1), torch.zeros(c1),
        ConvWeight(c2, c1), Uniform([c2], c1 * 9), torch.ones(c2), torch.zeros(c2),
        Uniform([CnnClasses, flat], flat), Uniform([CnnClasses], flat),
    ];
    return ([.. parameters.Select(p => p.requires_grad_(requiresGrad))], [torch.zeros(c1), torch.ones(c1), torch.zeros(c2), torch.ones(c2)]);
}

// Per-example cross-entropy of the benchmark CNN (the same function serves --check's small CNN: the widths come from the
// parameters); offsets (if any) are added to the five sites: conv1, bn1, conv2, bn2, linear.
static Tensor CnnLosses(IReadOnlyList<Tensor> p, Tensor[] state, Tensor x, Tensor y, Tensor[]? offsets)
{
    Tensor Site(int i, Tensor s) => offsets is null ? s : s + offsets[i];
    var h = x;
    for (int i = 0; i < 2; i++)
    {
        var s = Site(2 * i, F.conv2d(h, p[4 * i], p[4 * i + 1], padding: [1, 1]));
        s = Site(2 * i + 1, F.batch_norm(s, state[2 * i], state[2 * i + 1], p[4 * i + 2], p[4 * i + 3], training: true, momentum: 0.1, eps: 1e-5));
        h = F.max_pool2d(F.relu(s), 2);
    }
    return F.cross_entropy(Site(4, F.linear(h.flatten(1), p[8], p[9])), y, reduction: nn.Reduction.None);
}

// The shapes of the five sites (NCHW sizes) for a batch.
static long[][] CnnSiteShapes(long batch, long image = CnnImage, long c1 = 32, long c2 = 64, long classes = CnnClasses) =>
    [[batch, c1, image, image], [batch, c1, image, image], [batch, c2, image / 2, image / 2], [batch, c2, image / 2, image / 2], [batch, classes]];

// A new tensor of NCHW sizes [n, c, h, w] made by make, stored channels last when asked: made as [n, h, w, c] and viewed as
// NCHW (permute), the strides libtorch's kernels recognise as channels_last. Other ranks are made as they are.
static Tensor Image(long[] nchw, bool channelsLast, Func<long[], Tensor> make) =>
    channelsLast && nchw.Length == 4 ? make([nchw[0], nchw[2], nchw[3], nchw[1]]).permute(0, 3, 1, 2) : make(nchw);

// --check, CNN part: the double-backward JVP of a small CNN of the benchmark's form (6×6×2 images, batch 4, conv 3 → batch
// norm → relu → max pool 2 → conv 4 → batch norm → relu → max pool 2 → linear 3; float64, both layouts) against central
// differences of the per-example losses along the same site tangents. Exit 0 when the largest relative error is below 1e-6.
static int CheckCnnDoubleBackwardJvp()
{
    int failures = 0;
    foreach (bool channelsLast in new[] { false, true })
    {
        const int batch = 4, image = 6, c1 = 3, c2 = 4, classes = 3;
        var x = Image([batch, 2, image, image], channelsLast, s => torch.randn(s, dtype: float64));
        var y = torch.tensor(new long[] { 0, 2, 1, 2 });
        Tensor[] p =
        [
            Image([c1, 2, 3, 3], channelsLast, s => torch.randn(s, dtype: float64)), torch.randn(c1, dtype: float64), 1 + 0.5 * torch.rand(c1, dtype: float64), torch.randn(c1, dtype: float64),
            Image([c2, c1, 3, 3], channelsLast, s => torch.randn(s, dtype: float64)), torch.randn(c2, dtype: float64), 1 + 0.5 * torch.rand(c2, dtype: float64), torch.randn(c2, dtype: float64),
            torch.randn(classes, c2 * (image / 4) * (image / 4), dtype: float64), torch.randn(classes, dtype: float64),
        ];
        Tensor[] State() => [torch.zeros(c1, dtype: float64), torch.ones(c1, dtype: float64), torch.zeros(c2, dtype: float64), torch.ones(c2, dtype: float64)];
        var shapes = CnnSiteShapes(batch, image, c1, c2, classes);
        var tangents = shapes.Select(s => Image(s, channelsLast, t => torch.randn(t, dtype: float64))).ToArray();
        var dummies = shapes.Select(s => Image(s, channelsLast, t => torch.zeros(t, dtype: float64)).requires_grad_(true)).ToArray();
        var v = torch.zeros(batch, dtype: float64, requires_grad: true);
        var g = torch.autograd.grad([CnnLosses(p, State(), x, y, dummies)], dummies, [v], create_graph: true);
        var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
        var jvp = torch.autograd.grad([inner], [v])[0].data<double>().ToArray();
        const double epsilon = 1e-6;
        double[] Shifted(double sign) { using var _ = torch.no_grad(); return CnnLosses(p, State(), x, y, [.. tangents.Select(u => u * (sign * epsilon))]).data<double>().ToArray(); }
        var (plus, minus) = (Shifted(1), Shifted(-1));
        double worst = Enumerable.Range(0, batch).Max(b => Math.Abs(jvp[b] - (plus[b] - minus[b]) / (2 * epsilon)) / (1 + Math.Abs(jvp[b])));
        Console.WriteLine($"CNN ({(channelsLast ? "channels last" : "NCHW")}) double-backward JVP against central differences (float64): largest relative error {worst:E2}");
        if (!(worst < 1e-6)) failures = 1;
    }
    return failures;
}

// The benchmark transformer's parameters and one batch of random tokens (seed 2), made outside the calls' dispose scopes.
(Dictionary<string, Tensor> Parameters, Tensor X, Tensor Y) TransformerSetup(bool requiresGrad)
{
    torch.manual_seed(2);
    var parameters = MakeTransformerParameters(TfBench, float32, requiresGrad);
    var window = torch.randint(0, TfBench.Vocabulary, [TfBench.Batch, TfBench.Context + 1], dtype: int64);
    return (parameters, window[.., ..^1].contiguous(), window[.., 1..].contiguous());
}

// The parameters of a transformer in ForwardAD's names and layouts, with ModelBuilder's default initialisation (as
// torch_transformer.make_params): linear weights [out, in] U(±1/√fan_in), zero biases, token table N(0, 1), positions
// N(0, 0.02²), LayerNorm γ = 1, β = 0.
static Dictionary<string, Tensor> MakeTransformerParameters(TfConfig c, ScalarType dtype, bool requiresGrad)
{
    var p = new Dictionary<string, Tensor>
    {
        ["embed.weight"] = torch.randn(c.Vocabulary, c.Width, dtype: dtype),
        ["pos.weight"] = 0.02 * torch.randn(c.Context, c.Width, dtype: dtype),
    };
    void Linear(string name, long outputs, long inputs)
    {
        p[$"{name}.weight"] = torch.empty(outputs, inputs, dtype: dtype).uniform_(-1 / Math.Sqrt(inputs), 1 / Math.Sqrt(inputs));
        p[$"{name}.bias"] = torch.zeros(outputs, dtype: dtype);
    }
    void Norm(string name) { p[$"{name}.weight"] = torch.ones(c.Width, dtype: dtype); p[$"{name}.bias"] = torch.zeros(c.Width, dtype: dtype); }
    for (int l = 1; l <= c.Layers; l++)
    {
        Norm($"block{l}.ln1");
        foreach (var name in new[] { "q", "k", "v", "proj" }) Linear($"block{l}.{name}", c.Width, c.Width);
        Norm($"block{l}.ln2");
        Linear($"block{l}.fc1", 4 * c.Width, c.Width);
        Linear($"block{l}.fc2", c.Width, 4 * c.Width);
    }
    Norm("ln_f");
    Linear("head", c.Vocabulary, c.Width);
    foreach (var t in p.Values) t.requires_grad_(requiresGrad);
    return p;
}

// The additive causal mask [T, T]: 0 on and below the diagonal, −∞ above.
static Tensor CausalMask(long length, ScalarType dtype) => torch.full(length, length, double.NegativeInfinity, dtype: dtype).triu(1);

// Per-example mean next-token cross-entropy [B] of the transformer (targets −1 ignored); offsets (if any) are added to the
// sites in Model.Sites order: embed, pos, per block ln1, q, k, v, proj, ln2, fc1 (before the GELU), fc2, then ln_f, head.
static Tensor TransformerLosses(IReadOnlyDictionary<string, Tensor> p, TfConfig c, Tensor x, Tensor y, Tensor mask, Tensor[]? offsets)
{
    int site = 0;
    Tensor Site(Tensor s) => offsets is null ? s : s + offsets[site++];
    Tensor Linear(Tensor t, string name) => Site(F.linear(t, p[$"{name}.weight"], p[$"{name}.bias"]));
    Tensor Norm(Tensor t, string name) => Site(F.layer_norm(t, [c.Width], p[$"{name}.weight"], p[$"{name}.bias"], 1e-5));
    long batch = x.shape[0], length = x.shape[1], dh = c.Width / c.Heads;
    Tensor Split(Tensor t) => t.view(batch, length, c.Heads, dh).transpose(1, 2); // [B, H, T, dh]
    // TorchSharp 0.107 has no functional embedding: index_select is the kernel libtorch's embedding runs.
    var h = Site(p["embed.weight"].index_select(0, x.reshape(-1)).view(batch, length, c.Width));
    h = Site(h + p["pos.weight"][..(int)length]);
    for (int l = 1; l <= c.Layers; l++)
    {
        var a = Norm(h, $"block{l}.ln1");
        var (q, k, v) = (Linear(a, $"block{l}.q"), Linear(a, $"block{l}.k"), Linear(a, $"block{l}.v"));
        var scores = torch.matmul(Split(q), Split(k).transpose(-1, -2)) * (1 / Math.Sqrt(dh)) + mask;
        var attended = torch.matmul(scores.softmax(-1), Split(v)).transpose(1, 2).reshape(batch, length, c.Width);
        h = h + Linear(attended, $"block{l}.proj");
        h = h + Linear(F.gelu(Linear(Norm(h, $"block{l}.ln2"), $"block{l}.fc1")), $"block{l}.fc2");
    }
    var logits = Linear(Norm(h, "ln_f"), "head");
    var perToken = F.cross_entropy(logits.reshape(-1, c.Vocabulary), y.reshape(-1), ignore_index: -1, reduction: nn.Reduction.None).view(batch, length);
    var kept = y.ne(-1).to_type(perToken.dtype);
    return (perToken * kept).sum(1) / kept.sum(1);
}

// The sites' shapes [B, T, width] in TransformerLosses's order.
static long[][] TransformerSiteShapes(TfConfig c, long batch) =>
    [[batch, c.Context, c.Width], [batch, c.Context, c.Width],
     .. Enumerable.Range(0, c.Layers).SelectMany(_ => new[] { c.Width, c.Width, c.Width, c.Width, c.Width, c.Width, 4L * c.Width, c.Width }.Select(w => new[] { batch, c.Context, w })),
     [batch, c.Context, c.Width], [batch, c.Context, c.Vocabulary]];

// --check, transformer part (float64). (1) On tests/ForwardAD.Tests/Golden/transformer.json (the parameters and batch that
// ForwardAD's TransformerTests match, with a padding target): TransformerLosses equals the golden per-example losses, so
// this peer computes the model ForwardAD computes. (2) On a small transformer with parameters off their defaults
// (l2-h2-d8-t6, vocabulary 13, batch 3): the double-backward JVP with tangents on every site against central differences
// of the per-example losses. Exit 0 when the golden losses agree to 1e-12 and the JVP to 1e-6 (relative).
static int CheckTransformer()
{
    int failures = 0;
    string? golden = null;
    for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null && golden is null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "tests", "ForwardAD.Tests", "Golden", "transformer.json")))
            golden = Path.Combine(dir.FullName, "tests", "ForwardAD.Tests", "Golden", "transformer.json");
    if (golden is null) { Console.WriteLine("transformer: tests/ForwardAD.Tests/Golden/transformer.json not found above the peer"); failures = 1; }
    else
    {
        var root = JsonDocument.Parse(File.ReadAllText(golden)).RootElement;
        var config = root.GetProperty("config");
        int Int(string name) => config.GetProperty(name).GetInt32();
        var c = new TfConfig(Int("layers"), Int("heads"), Int("width"), Int("context"), Int("vocabulary"), Int("batch"));
        // The parameters are float32 values written in their shortest form: read them as float32, then widen.
        static Tensor Array(JsonElement a, ScalarType dtype) =>
            torch.tensor(a.GetProperty("data").EnumerateArray().Select(v => v.GetDouble()).ToArray(), dtype: float64).to_type(dtype).to_type(float64)
                .reshape([.. a.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64())]);
        var parameters = root.GetProperty("parameters").EnumerateObject().ToDictionary(p => p.Name, p => Array(p.Value, float32));
        Tensor Ids(string name) => torch.tensor(root.GetProperty(name).EnumerateArray().SelectMany(r => r.EnumerateArray()).Select(v => v.GetInt64()).ToArray())
            .reshape(c.Batch, c.Context);
        var losses = TransformerLosses(parameters, c, Ids("x"), Ids("y"), CausalMask(c.Context, float64), null);
        var want = Array(root.GetProperty("per_example_loss"), float64);
        double error = ((losses - want).abs().max() / want.abs().max()).item<double>();
        Console.WriteLine($"transformer against the golden losses (float64): largest relative error {error:E2}");
        if (!(error < 1e-12)) failures = 1;
    }
    {
        var c = new TfConfig(Layers: 2, Heads: 2, Width: 8, Context: 6, Vocabulary: 13, Batch: 3);
        var p = MakeTransformerParameters(c, float64, requiresGrad: false);
        foreach (var (name, t) in p) // off the defaults: every term counts
            t.add_(torch.randn(t.shape, dtype: float64) * (t.dim() == 1 ? 0.3 : 0.5 / Math.Sqrt(t.shape[^1])));
        var window = torch.randint(0, c.Vocabulary, [c.Batch, c.Context + 1], dtype: int64);
        var (x, y) = (window[.., ..^1].contiguous(), window[.., 1..].contiguous());
        var mask = CausalMask(c.Context, float64);
        var shapes = TransformerSiteShapes(c, c.Batch);
        var tangents = shapes.Select(s => torch.randn(s, dtype: float64)).ToArray();
        var dummies = shapes.Select(s => torch.zeros(s, dtype: float64, requires_grad: true)).ToArray();
        var v = torch.zeros(c.Batch, dtype: float64, requires_grad: true);
        var g = torch.autograd.grad([TransformerLosses(p, c, x, y, mask, dummies)], dummies, [v], create_graph: true);
        var inner = g.Zip(tangents, (gi, ui) => (gi * ui).sum()).Aggregate((a, b) => a + b);
        var jvp = torch.autograd.grad([inner], [v])[0].data<double>().ToArray();
        const double epsilon = 1e-6;
        double[] Shifted(double sign) { using var _ = torch.no_grad(); return TransformerLosses(p, c, x, y, mask, [.. tangents.Select(u => u * (sign * epsilon))]).data<double>().ToArray(); }
        var (plus, minus) = (Shifted(1), Shifted(-1));
        double worst = Enumerable.Range(0, c.Batch).Max(b => Math.Abs(jvp[b] - (plus[b] - minus[b]) / (2 * epsilon)) / (1 + Math.Abs(jvp[b])));
        Console.WriteLine($"transformer double-backward JVP against central differences (float64): largest relative error {worst:E2}");
        if (!(worst < 1e-6)) failures = 1;
    }
    return failures;
}

// A line of /proc/self/status ("VmRSS:   1234 kB") in bytes.
static long ProcStatusBytes(string key) =>
    long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(key, StringComparison.Ordinal))[key.Length..].Trim().Split(' ')[0],
        System.Globalization.CultureInfo.InvariantCulture) * 1024;

// A transformer's sizes (MLP ratio 4) and batch.
internal sealed record TfConfig(int Layers, int Heads, int Width, int Context, int Vocabulary, int Batch);
