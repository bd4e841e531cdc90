using System.Collections.Immutable;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

// Invariants as FsCheck.Xunit [Property] tests (issue 15). Every class replays the fixed seed of PropertyConfig, so CI sees
// the same cases on every run; on a failure FsCheck shrinks the arguments (sizes are small bytes and ints, mapped into
// their ranges by Pick, which shrink toward the smallest geometry) and prints the Replay string of the run.

/// <summary>Maps a shrinkable byte to [low, high]: 0 (where shrinking goes) is <paramref name="low"/>.</summary>
file static class Pick
{
    public static int In(byte raw, int low, int high) => low + raw % (high - low + 1);
}

/// <summary>Shapes: element counts, the dense split Leading × Last, equality, and the convolution/pooling size rule as the
/// spec, the op's shape rule and PyTorch's formula ⌊(n + 2p − k)/s⌋ + 1 give it.</summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 200)]
public class ShapeProperties
{
    [Property]
    public void Element_count_is_the_product_and_leading_times_last_is_it(byte[] raw, byte last)
    {
        var dims = raw.Take(5).Select(b => Pick.In(b, 1, 9)).ToArray();
        var shape = new Shape(dims);
        Assert.Equal(dims.Aggregate(1, (p, d) => p * d), shape.ElementCount);
        Assert.Equal(shape.ElementCount, shape.LeadingCount * shape.Last);
        int newLast = Pick.In(last, 1, 9);
        var changed = shape.WithLast(newLast);
        Assert.Equal(newLast, changed.Last);
        Assert.Equal(Math.Max(1, shape.Rank), changed.Rank);
        Assert.Equal(shape.LeadingCount, changed.LeadingCount);
        Assert.Equal(shape, new Shape([.. dims]));
        Assert.Equal(shape.GetHashCode(), new Shape([.. dims]).GetHashCode());
        Assert.Equal(newLast == shape.Last && shape.Rank > 0, changed == shape);
    }

    [Property]
    public void A_dimension_below_one_is_refused(byte[] raw, byte at, sbyte bad)
    {
        var dims = raw.Take(4).Select(b => Pick.In(b, 1, 9)).Append(1).ToArray();
        dims[at % dims.Length] = -Math.Abs((int)bad); // 0 or negative
        Assert.Throws<ArgumentException>(() => new Shape(dims));
    }

    [Property]
    public void Convolution_and_pooling_sizes_agree_between_spec_op_and_pytorch(byte h, byte w, byte c, byte k, byte s, byte p, byte g, byte pool)
    {
        int groups = Pick.In(g, 1, 3), channels = groups * Pick.In(c, 1, 2), outChannels = groups * Pick.In(c, 1, 3);
        int kernel = Pick.In(k, 1, 5), stride = Pick.In(s, 1, 3), padding = Pick.In(p, 0, kernel / 2 + 1);
        int height = Pick.In(h, 1, 12), width = Pick.In(w, 1, 12), window = Pick.In(pool, 1, 3);
        var input = new Shape(height, width, channels);
        var layers = ImmutableArray.Create<CnnLayer>(new CnnLayer.Conv(outChannels, kernel, stride, padding, groups), new CnnLayer.Pool(window, Average: pool % 2 == 1), new CnnLayer.GlobalAvgPool());
        static int Sweep(int n, int kernel, int stride, int padding) => (n + 2 * padding - kernel) / stride + 1;
        int convHeight = Sweep(height, kernel, stride, padding), convWidth = Sweep(width, kernel, stride, padding);
        var spec = new CnnSpec(input, layers, 3);
        if (height + 2 * padding < kernel || width + 2 * padding < kernel || convHeight < window || convWidth < window)
        {
            Assert.Throws<ArgumentException>(() => spec.Shapes()); // an image that vanishes is an error, not a 0-sized shape
            return;
        }
        var expectedConv = new Shape(convHeight, convWidth, outChannels);
        var expectedPool = new Shape(Sweep(convHeight, window, window, 0), Sweep(convWidth, window, window, 0), outChannels);
        var shapes = spec.Shapes();
        Assert.Equal(expectedConv, shapes[0]);
        Assert.Equal(expectedPool, shapes[1]);
        var model = spec.Build();
        Assert.Equal(expectedConv, model["conv1"].Shape);
        Assert.Equal(expectedPool, model[pool % 2 == 1 ? "avgpool1" : "maxpool1"].Shape);
        Assert.Equal(new Shape(outChannels, kernel, kernel, channels / groups), model["conv1.weight"].Shape);
    }
}

/// <summary>The text forms of CNN and transformer specs: print then parse is the identity on canonical specs, parse then
/// print is idempotent, and anything else is a FormatException/ArgumentException naming the problem, never a crash.</summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 300)]
public class SpecTextProperties
{
    private static CnnLayer Layer(byte kind, byte a, byte b, byte c)
    {
        switch (kind % 8)
        {
            case 0:
                int kernel = Pick.In(b, 1, 7), groups = Pick.In(c, 1, 4);
                int? padding = a % 3 == 0 ? null : (a % 3 == 1 ? CnnLayer.Conv.DefaultPadding(kernel) + 1 : (CnnLayer.Conv.DefaultPadding(kernel) == 0 ? null : 0));
                return new CnnLayer.Conv(groups * Pick.In(a, 1, 64), kernel, Pick.In(c, 1, 3), padding, groups, Bias: b % 5 != 0);
            case 1:
                int window = Pick.In(a, 1, 4);
                int? stride = b % 2 == 0 ? null : window + 1;
                return new CnnLayer.Pool(window, stride, Pick.In(c, 0, window / 2), Average: c % 2 == 1);
            case 2: return new CnnLayer.GlobalAvgPool();
            case 3: return new CnnLayer.Flatten();
            case 4: return new CnnLayer.BatchNorm(Affine: a % 2 == 0, FrozenStatistics: b % 2 == 0);
            case 5: return new CnnLayer.Activation(new[] { ElementwiseFunction.Relu, ElementwiseFunction.Tanh, ElementwiseFunction.Gelu }[a % 3]);
            default: return new CnnLayer.Dense(Pick.In(a, 1, 200) * Pick.In(b, 1, 10));
        }
    }

    [Property]
    public void Cnn_layers_print_then_parse_to_themselves(byte[] raw)
    {
        var layers = raw.Chunk(4).Where(q => q.Length == 4).Take(12).Select(q => Layer(q[0], q[1], q[2], q[3])).ToImmutableArray();
        if (layers.IsEmpty) return;
        var text = new CnnSpec(new Shape(8, 8, 1), layers, 10).ToString();
        Assert.Equal(layers, CnnSpec.ParseLayers(text));
        // Separators and case do not matter.
        Assert.Equal(layers, CnnSpec.ParseLayers(text.Replace(',', '-').ToUpperInvariant()));
    }

    [Property(Arbitrary = new[] { typeof(SpecTextArbitrary) })]
    public void Any_cnn_text_parses_to_a_fixed_point_or_is_a_format_error(string text)
    {
        ImmutableArray<CnnLayer> layers;
        try { layers = CnnSpec.ParseLayers(text); }
        catch (FormatException e)
        {
            Assert.Contains("CNN spec", e.Message);
            return;
        }
        var printed = new CnnSpec(new Shape(8, 8, 1), layers, 10).ToString();
        Assert.Equal(layers, CnnSpec.ParseLayers(printed));
    }

    [Property]
    public void Transformer_specs_print_then_parse_to_themselves(byte l, byte h, byte d, byte t, byte v, byte m)
    {
        int heads = Pick.In(h, 1, 8);
        var spec = new TransformerSpec(Pick.In(l, 1, 12), heads, heads * Pick.In(d, 1, 32), Pick.In(t, 1, 255), v % 3 == 0 ? 256 : Pick.In(v, 2, 255) * 7, Pick.In(m, 1, 8));
        Assert.Equal(spec, TransformerSpec.Parse(spec.ToString()));
        Assert.Equal(spec, TransformerSpec.Parse(" " + spec.ToString().ToUpperInvariant() + " "));
    }

    [Property(Arbitrary = new[] { typeof(SpecTextArbitrary) })]
    public void Any_transformer_text_parses_to_a_fixed_point_or_is_refused(string text)
    {
        TransformerSpec spec;
        try { spec = TransformerSpec.Parse(text); }
        catch (FormatException) { return; }
        catch (ArgumentException e)
        {
            Assert.Contains("Transformer", e.Message); // sizes that cannot work (heads not dividing the width, …)
            return;
        }
        Assert.Equal(spec, TransformerSpec.Parse(spec.ToString()));
    }
}

/// <summary>Strings over the spec grammars' own letters (where the edge cases are), shrinking by dropping characters.</summary>
public static class SpecTextArbitrary
{
    private static readonly char[] Alphabet = "ckspgbaflrtnuevhdmx0123456789-, ".ToCharArray();

    public static Arbitrary<string> SpecLikeText() =>
        Arb.From(Gen.Elements(Alphabet).ArrayOf().Select(chars => new string(chars)),
            text => Enumerable.Range(0, text.Length).Select(i => text.Remove(i, 1)));
}

/// <summary>
/// The adjoint identity ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ that ties every op's JVP rule to its VJP rules, for one op y = f(x; θ) at a
/// time over generated small geometries: J v is the plan's tangent of y with tangents v on x and every parameter, Jᵀ w is
/// the pull-back of a cotangent w from y to x plus the site's parameter VJP (the rule an update goes through). Both sides
/// are accumulated in float64; they differ only by float32 rounding, bounded relative to Σ|terms|.
/// </summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 40)]
public class AdjointProperties
{
    private static void AssertAdjoint(Model model, Node x, Node y, int batch, int seed, bool hasParameters)
    {
        var store = ParameterStore.Initialize(model, new CpuBackend(), (ulong)seed);
        var seeds = model.Parameters.Append(x).Select(n => new TangentSeed(n)).ToImmutableArray();
        var plan = Plan.Compile(store, new PlanOptions(batch) { Gradients = true, Seeds = seeds });
        foreach (var input in model.Inputs) plan.SetInput(input, Problem.Normal(seed * 7 + input.Id, input.ElementCount(batch), 1f));
        var tangents = new Dictionary<Node, float[]>();
        foreach (var s in seeds)
        {
            var v = Problem.Normal(seed * 13 + s.Node.Id, plan.Seed(s.Node).Length, 1f);
            CpuBackend.Span(plan.Seed(s.Node)).CopyFrom(v);
            tangents[s.Node] = v;
        }
        plan.Forward();
        plan.Jvp();
        var w = Problem.Normal(seed * 17 + 1, y.ElementCount(batch), 1f);
        var jv = plan.Tangent(y).ToArray();
        double left = 0, scale = 0;
        for (int i = 0; i < w.Length; i++) { left += (double)w[i] * jv[i]; scale += Math.Abs((double)w[i] * jv[i]); }

        var pullBack = plan.CreatePullBack([y], x);
        CpuBackend.Span(pullBack.Cotangent(y)).CopyFrom(w);
        pullBack.Run();
        double right = Dot(pullBack.Cotangent(x).ToArray(), tangents[x], ref scale);
        if (hasParameters)
        {
            var siteIndex = model.Sites.Single(site => site.Node.Id == y.Id);
            var updates = new View(store.Backend.Allocate(store.All.Length));
            var update = plan.CreateParameterUpdate([y], updates);
            var cotangent = new View(store.Backend.Allocate(w.Length));
            CpuBackend.Span(cotangent).CopyFrom(w);
            update.Write(0, cotangent);
            foreach (var p in siteIndex.Parameters)
                right += Dot(updates.Slice(store[p].Offset - store.All.Offset, p.Shape.ElementCount).ToArray(), tangents[p], ref scale);
        }
        Assert.True(Math.Abs(left - right) <= 1e-5 * (1 + scale), $"⟨w, Jv⟩ = {left:G9}, ⟨Jᵀw, v⟩ = {right:G9} (Σ|terms| {scale:G4})");
    }

    private static double Dot(float[] a, float[] b, ref double scale)
    {
        Assert.Equal(a.Length, b.Length);
        double sum = 0;
        for (int i = 0; i < a.Length; i++) { sum += (double)a[i] * b[i]; scale += Math.Abs((double)a[i] * b[i]); }
        return sum;
    }

    private static Model Wrap(ModelBuilder builder, Node y)
    {
        var flat = y.Shape.Rank == 1 ? y : builder.Flatten("flat", y);
        return builder.Build(builder.MeanSquaredError("loss", flat, builder.Input("target", flat.Shape, differentiable: false)), flat);
    }

    [Property]
    public void Elementwise_ops(byte function, byte n, byte b, int seed)
    {
        ElementwiseFunction[] functions = [ElementwiseFunction.Relu, ElementwiseFunction.Tanh, ElementwiseFunction.Gelu, ElementwiseFunction.GeluTanh, ElementwiseFunction.Identity];
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(Pick.In(n, 1, 40)));
        var y = builder.Activation("f", x, functions[function % functions.Length]);
        AssertAdjoint(Wrap(builder, y), x, y, Pick.In(b, 1, 4), seed & 0xFFFF, hasParameters: false);
    }

    [Property]
    public void Linear(byte rows, byte fanIn, byte width, bool bias, byte b, int seed)
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", rows % 2 == 0 ? new Shape(Pick.In(fanIn, 1, 12)) : new Shape(Pick.In(rows, 1, 4), Pick.In(fanIn, 1, 12)));
        var y = builder.Dense("dense", x, Pick.In(width, 1, 12), ElementwiseFunction.Identity, bias: bias).Output;
        AssertAdjoint(Wrap(builder, y), x, y, Pick.In(b, 1, 4), seed & 0xFFFF, hasParameters: true);
    }

    [Property]
    public void Convolution(byte h, byte w, byte c, byte k, byte s, byte p, byte g, bool bias, byte b, int seed)
    {
        int groups = Pick.In(g, 1, 3), kernel = Pick.In(k, 1, 4), padding = Pick.In(p, 0, kernel / 2);
        int height = Math.Max(kernel, Pick.In(h, 1, 8)), width = Math.Max(kernel, Pick.In(w, 1, 8));
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(height, width, groups * Pick.In(c, 1, 2)));
        var y = builder.Conv2d("conv", x, groups * Pick.In(c, 1, 3), kernel, Pick.In(s, 1, 3), padding, groups, bias);
        AssertAdjoint(Wrap(builder, y), x, y, Pick.In(b, 1, 3), seed & 0xFFFF, hasParameters: true);
    }
}

/// <summary>Checkpoint files: safetensors write then read gives every tensor back bit for bit (NaN payloads, −0,
/// infinities and subnormals included), with its shape, and every metadata entry.</summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 30)]
public sealed class CheckpointProperties() : TemporaryFolderTests("forwardad-prop-")
{
    private static readonly float[] Special = [float.NaN, BitConverter.Int32BitsToSingle(0x7FC0_1234), -0f, 0f, float.PositiveInfinity, float.NegativeInfinity,
        float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue, 1e-40f];

    [Property]
    public void Write_then_read_returns_every_tensor_and_entry(byte[][] shapes, int[] bits, string[] values)
    {
        var tensors = new List<NamedTensor>();
        int next = 0;
        foreach (var (raw, t) in shapes.Take(6).Select((s, t) => (s, t)))
        {
            var shape = raw.Take(3).Select(d => d % 4).ToArray(); // rank 0 to 3, zero-sized dimensions included
            var data = new float[shape.Aggregate(1, (p, d) => p * d)];
            for (int i = 0; i < data.Length; i++, next++)
                data[i] = bits.Length == 0 ? Special[next % Special.Length]
                    : next % 3 == 0 ? Special[(uint)bits[next % bits.Length] % Special.Length] : BitConverter.Int32BitsToSingle(bits[next % bits.Length]);
            tensors.Add(new NamedTensor($"layer{t}.weight", shape, data));
        }
        // Metadata values are text: strings that UTF-8 can carry (no lone surrogates), as every JSON header needs.
        var metadata = values.Where(v => v is not null && Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(v)) == v).Take(5).Select((v, i) => ($"key{i}", v)).ToDictionary(e => e.Item1, e => e.v);
        var path = Path.Combine(Folder, "c.safetensors");
        SafeTensors.Write(path, tensors, metadata);
        var (read, readMetadata) = SafeTensors.Read(path);
        Assert.Equal(tensors.Count, read.Count);
        foreach (var t in tensors)
        {
            var r = read[t.Name];
            Assert.Equal(t.Shape, r.Shape);
            Assert.Equal(t.Data.Select(BitConverter.SingleToInt32Bits), r.Data.Select(BitConverter.SingleToInt32Bits));
        }
        foreach (var (key, value) in metadata) Assert.Equal(value, readMetadata[key]);
    }
}

/// <summary>Philox streams: a number depends only on (seed, stream, position), so any chunking reproduces a stream;
/// derived keys are reproducible, distinct per tag and seed, and their numbers uncorrelated.</summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 100)]
public class RandomStreamProperties
{
    [Property]
    public void A_stream_is_the_same_whatever_the_chunks(ulong seed, ulong stream, byte first, byte[] cuts, bool normal)
    {
        var key = new RandomKey(seed, stream);
        var whole = new float[97];
        void Fill(long at, Span<float> destination)
        {
            if (normal) RandomFill.Normal(key, at, 0f, 1f, destination);
            else RandomFill.Uniform(key, at, -1f, 1f, destination);
        }
        Fill(first, whole);
        var pieces = new float[whole.Length];
        int position = 0;
        foreach (var cut in cuts.Append((byte)255))
        {
            int length = Math.Min(1 + cut % 23, whole.Length - position);
            Fill(first + position, pieces.AsSpan(position, length));
            position += length;
            if (position == whole.Length) break;
        }
        if (position < whole.Length) Fill(first + position, pieces.AsSpan(position));
        Assert.Equal(whole, pieces);
    }

    [Property]
    public void Derived_keys_are_reproducible_and_distinct(ulong seed, ulong stream, ulong tagA, ulong tagB)
    {
        var key = new RandomKey(seed, stream);
        Assert.Equal(key.Derive(tagA), new RandomKey(seed, stream).Derive(tagA));
        Assert.Equal(seed, key.Derive(tagA).Seed);
        if (tagA == tagB) return;
        Assert.NotEqual(key.Derive(tagA), key.Derive(tagB));
        Assert.NotEqual(key.Derive(tagA), new RandomKey(seed ^ 1, stream).Derive(tagA));
    }

    /// <summary>n = 4096 pairs of normals from two sibling streams: the sample correlation of independent streams has
    /// standard error 1/√n; 5 of them bound it (a false failure per case ~6e-7).</summary>
    [Property(MaxTest = 30)]
    public void Sibling_streams_are_uncorrelated(ulong seed, ulong tag)
    {
        const int n = 4096;
        var parent = new RandomKey(seed, 0);
        float[] a = new float[n], b = new float[n];
        RandomFill.Normal(parent.Derive(tag), 0, 0f, 1f, a);
        RandomFill.Normal(parent.Derive(unchecked(tag + 1)), 0, 0f, 1f, b);
        double sum = 0;
        for (int i = 0; i < n; i++) sum += (double)a[i] * b[i];
        Assert.InRange(sum / n, -5 / Math.Sqrt(n), 5 / Math.Sqrt(n));
    }
}

/// <summary>Optimizer steps: SGD moves by exactly −η g; a zero gradient leaves SGD, momentum and Adam where they are and
/// shrinks AdamW's parameters by (1 − η λ); Adam's first step moves each parameter by η (sign of g) whatever the
/// gradient's scale; clipping leaves a norm ≤ c along the same direction.</summary>
[Properties(Replay = PropertyConfig.Replay, MaxTest = 100)]
public class OptimizerProperties
{
    private static (ParameterStore Store, View Gradient, float[] Theta) Setup(byte inputs, byte outputs, int seed)
    {
        var model = new MlpSpec(Pick.In(inputs, 1, 6), [], Pick.In(outputs, 2, 5), ElementwiseFunction.Identity).Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), (ulong)(uint)seed);
        return (store, new View(store.Backend.Allocate(store.All.Length)), store.All.ToArray());
    }

    private static float[] Step(UpdateRule rule, ParameterStore store, View gradient, float[] g, int steps = 1)
    {
        var optimizer = new Optimizer(rule, store);
        for (int s = 0; s < steps; s++)
        {
            CpuBackend.Span(gradient).CopyFrom(g); // Step turns the gradient into the update in place
            optimizer.Step(new UpdateInputs(s, 0, new RandomKey(1, (ulong)s)), gradient);
        }
        return store.All.ToArray();
    }

    [Property]
    public void Sgd_moves_by_minus_rate_times_gradient(byte inputs, byte outputs, int seed, byte rate)
    {
        var (store, gradient, theta) = Setup(inputs, outputs, seed);
        float eta = Pick.In(rate, 1, 100) / 64f;
        var g = Problem.Normal(seed, theta.Length, 1f);
        var after = Step(Optimizers.Sgd(eta), store, gradient, g);
        for (int j = 0; j < theta.Length; j++) Assert.Equal(theta[j] + -eta * g[j], after[j]);
    }

    [Property]
    public void A_zero_gradient_moves_only_by_weight_decay(byte inputs, byte outputs, int seed, byte which, byte decay)
    {
        var (store, gradient, theta) = Setup(inputs, outputs, seed);
        float lambda = Pick.In(decay, 0, 10) / 100f, eta = 1e-2f;
        var rule = (which % 4) switch
        {
            0 => Optimizers.Sgd(eta),
            1 => Optimizers.Momentum(eta, 0.9f, nesterov: which % 8 == 5),
            2 => Optimizers.Adam(eta),
            _ => Optimizers.AdamW(eta, weightDecay: lambda),
        };
        var after = Step(rule, store, gradient, new float[theta.Length], steps: 3);
        double shrink = which % 4 == 3 ? Math.Pow(1 - eta * lambda, 3) : 1;
        for (int j = 0; j < theta.Length; j++) Assert.Equal(theta[j] * shrink, after[j], 1e-6 * (1 + Math.Abs(theta[j])));
    }

    [Property]
    public void Adams_first_step_is_the_rate_times_the_sign_at_any_gradient_scale(byte inputs, byte outputs, int seed, sbyte exponent)
    {
        var (store, gradient, theta) = Setup(inputs, outputs, seed);
        float eta = 1e-3f, scale = MathF.Pow(2, exponent % 12);
        var g = Problem.Normal(seed, theta.Length, scale);
        var after = Step(Optimizers.Adam(eta), store, gradient, g);
        // m̂ = g, v̂ = g², so Δθ = −η g/(|g| + ε): η·sign(g) up to ε/|g|.
        for (int j = 0; j < theta.Length; j++)
            if (Math.Abs(g[j]) > 1e-3f) // ε/|g| ≤ 1e-5
                Assert.Equal(-eta * Math.Sign(g[j]), after[j] - theta[j], 1e-5 * eta + 1e-6 * (1 + Math.Abs(theta[j])));
    }

    [Property]
    public void Clipping_bounds_the_norm_and_keeps_the_direction(byte inputs, byte outputs, int seed, byte norm, sbyte exponent)
    {
        var (store, gradient, theta) = Setup(inputs, outputs, seed);
        float maxNorm = Pick.In(norm, 1, 50) / 10f;
        var g = Problem.Normal(seed, theta.Length, MathF.Pow(2, exponent % 8));
        var after = Step(new ClipByGlobalNorm(maxNorm), store, gradient, g); // θ + clip(g)
        var update = after.Select((v, j) => (double)v - theta[j]).ToArray();
        double gNorm = Math.Sqrt(g.Sum(v => (double)v * v)), uNorm = Math.Sqrt(update.Sum(v => v * v));
        double rounding = 1e-6 * (1 + theta.Max(Math.Abs)) * Math.Sqrt(theta.Length);
        Assert.True(uNorm <= maxNorm * (1 + 1e-5) + rounding, $"‖clip(g)‖ = {uNorm} > {maxNorm}");
        Assert.True(Math.Abs(uNorm - Math.Min(gNorm, maxNorm)) <= 1e-5 * maxNorm + rounding, $"‖clip(g)‖ = {uNorm}, expected {Math.Min(gNorm, maxNorm)}");
        double cosine = update.Select((u, j) => u * g[j]).Sum() / (uNorm * gNorm);
        Assert.True(cosine > 1 - 1e-4, $"cos(clip(g), g) = {cosine}");
    }
}
