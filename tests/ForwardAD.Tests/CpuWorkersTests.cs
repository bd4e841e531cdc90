using ForwardAD.Random;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Tensors;

namespace ForwardAD.Tests;

/// <summary>The CPU backend's parallel kernels: every part runs exactly once per call, a failing part's exception reaches
/// the caller, and a whole CNN gives bit-identical results at 1, 2 and 3 threads (each output is computed by one part in
/// the order one thread uses, and batch statistics are summed in blocks fixed by size, not by thread count): convolutions,
/// im2col/col2im, max and average pooling and their adjoints, batch norm, activations.</summary>
public class CpuWorkersTests
{
    private readonly record struct Counts(int[] Runs);

    [Fact]
    public void Every_part_runs_once_per_call()
    {
        var workers = new CpuWorkers(helpers: 2);
        var runs = new int[37];
        var work = new PartWork<Counts>(static (in Counts c, int part, int parts) => Interlocked.Increment(ref c.Runs[part]));
        work.Arguments = new Counts(runs);
        for (int call = 1; call <= 500; call++)
        {
            int parts = 1 + call % runs.Length;
            workers.Run(work, parts);
            for (int p = 0; p < runs.Length; p++) Assert.Equal(p < parts ? 1 : 0, runs[p]);
            Array.Clear(runs);
        }
    }

    [Fact]
    public void A_failing_part_reaches_the_caller()
    {
        var workers = new CpuWorkers(helpers: 1);
        var work = new PartWork<Counts>(static (in Counts c, int part, int parts) =>
        {
            if (part == 3) throw new InvalidOperationException("part three failed");
        });
        var error = Assert.Throws<InvalidOperationException>(() => workers.Run(work, 6));
        Assert.Equal("part three failed", error.Message);
        workers.Run(new PartWork<Counts>(static (in Counts c, int part, int parts) => { }), 4); // still usable
    }

    /// <summary>A part that calls back into the same workers (or a second thread using them) runs that call's parts on
    /// its own thread: every part of both calls still runs exactly once.</summary>
    [Fact]
    public void A_nested_call_runs_on_its_own_thread()
    {
        var workers = new CpuWorkers(helpers: 1);
        var outer = new int[8];
        var inner = new int[5];
        var innerWork = new PartWork<Counts>(static (in Counts c, int part, int parts) => Interlocked.Increment(ref c.Runs[part])) { Arguments = new Counts(inner) };
        var outerWork = new PartWork<(Counts Runs, CpuWorkers Workers, PartWork Inner)>(static (in (Counts Runs, CpuWorkers Workers, PartWork Inner) a, int part, int parts) =>
        {
            Interlocked.Increment(ref a.Runs.Runs[part]);
            if (part == 0) a.Workers.Run(a.Inner, 5);
        }) { Arguments = (new Counts(outer), workers, innerWork) };
        workers.Run(outerWork, outer.Length);
        Assert.All(outer, n => Assert.Equal(1, n));
        Assert.All(inner, n => Assert.Equal(1, n));
    }

    private static Model Cnn()
    {
        var b = new ModelBuilder();
        var x = b.Input("x", new Shape(16, 16, 3));
        var h = b.Activation("r1", b.BatchNorm("bn1", b.Conv2d("c1", x, 16, 3, padding: 1)), ElementwiseFunction.Relu);
        h = b.MaxPool2d("p1", h, 2);
        h = b.Activation("r2", b.BatchNorm("bn2", b.Conv2d("c2", h, 32, 3, padding: 1)), ElementwiseFunction.Tanh);
        var logits = b.Dense("head", b.Flatten("flat", b.AvgPool2d("p2", h, 2)), 5, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 5)), logits);
    }

    /// <summary>Batch 32: the first block's activations (32·16·16·16 floats) are above the size at which kernels split.</summary>
    [Fact]
    public void A_cnn_gives_the_same_bits_at_any_thread_count() =>
        AssertSameBitsAtAnyThreadCount(threads => Problem.From(Cnn(), 5, 32, new CpuBackend { Threads = threads }), 32);

    /// <summary>A transformer whose LayerNorm rows (32·32·64 floats) and attention scores (32·2·32·32) split: layer norm,
    /// causal softmax, their JVPs and adjoints, GELU.</summary>
    [Fact]
    public void A_transformer_gives_the_same_bits_at_any_thread_count() =>
        AssertSameBitsAtAnyThreadCount(threads => TransformerTests.Randomized(new TransformerSpec(Layers: 1, Heads: 2, Width: 64, Context: 32, Vocabulary: 32),
            5, 32, backend: new CpuBackend { Threads = threads }), 32);

    /// <summary>Loss, loss JVP (K = 2, tangents on the input when it is differentiable and on every parameter) and every
    /// parameter gradient at 1 thread against 2 and 3: equal bits.</summary>
    private static void AssertSameBitsAtAnyThreadCount(Func<int, Problem> problemAt, int batch)
    {
        float[][] Run(int threads)
        {
            var problem = problemAt(threads);
            var model = problem.Model;
            var seeded = model.Nodes.Where(n => n.Op is InputOp { Differentiable: true }).Concat(model.Parameters).ToList();
            var plan = problem.Compile(new PlanOptions(batch) { TangentCount = 2, Gradients = true, Seeds = [.. seeded.Select(n => new TangentSeed(n))] });
            foreach (var node in seeded)
                CpuBackend.Span(plan.Seed(node)).CopyFrom(Problem.Normal(node.Id + 100, plan.Seed(node).Length, 1f));
            plan.ForwardJvp();
            plan.Backward();
            return [plan.Value(model.Loss).ToArray(), plan.Tangent(model.Loss).ToArray(), .. model.Parameters.Select(p => plan.Gradient(p).ToArray())];
        }
        var one = Run(1);
        foreach (int threads in new[] { 2, 3 })
        {
            var many = Run(threads);
            for (int i = 0; i < one.Length; i++) Assert.True(one[i].AsSpan().SequenceEqual(many[i]), $"output {i} differs at {threads} threads");
        }
    }

    /// <summary>Normal and uniform fills split across threads give the numbers one thread gives, at any start (the parts
    /// begin on multiples of 16 after it, odd lengths end mid-block) and allocate nothing.</summary>
    [Theory]
    [InlineData(0L, 1_000_003)]
    [InlineData(7L, 300_001)]
    public void Random_fills_give_the_same_bits_at_any_thread_count(long first, int length)
    {
        var key = new RandomKey(42, 7);
        var normal = new float[length];
        var uniform = new float[length];
        RandomFill.Normal(key, first, 0.5f, 2f, normal);
        RandomFill.Uniform(key, first, -1f, 3f, uniform);
        foreach (int threads in new[] { 1, 2, 3 })
        {
            var backend = new CpuBackend { Threads = threads };
            var buffer = new View(backend.Allocate(length));
            backend.FillNormal(key, first, 0.5f, 2f, buffer);
            Assert.True(normal.AsSpan().SequenceEqual(CpuBackend.Span(buffer)), $"normal numbers differ at {threads} threads");
            backend.FillUniform(key, first, -1f, 3f, buffer);
            Assert.True(uniform.AsSpan().SequenceEqual(CpuBackend.Span(buffer)), $"uniform numbers differ at {threads} threads");
            Allocations.AssertNone(_ => backend.FillNormal(key, first, 0.5f, 2f, buffer), warmUp: 2, steps: 3, $"a normal fill at {threads} threads");
        }
    }

    /// <summary>The pointwise kernels split across threads (products with a mask or a per-row factor, copies, sums,
    /// scaling) give one thread's bits, overwriting and accumulating, and a copy between overlapping, shifted ranges of
    /// one buffer moves as one move would.</summary>
    [Fact]
    public void Pointwise_kernels_give_the_same_bits_at_any_thread_count()
    {
        const int length = (1 << 17) + 5, row = 24;
        var a = Problem.Normal(1, length, 1f);
        var b = Problem.Normal(2, length, 1f);
        var c = Problem.Normal(3, length, 1f);
        var perRow = Problem.Normal(4, row, 1f);
        float[][] Run(int threads)
        {
            var backend = new CpuBackend { Threads = threads };
            View Of(float[] values) { var view = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, view); return view; }
            var (x, y, z, factor) = (Of(a), Of(b), Of(c), Of(perRow));
            var results = new List<float[]>();
            var target = Of(c);
            backend.MultiplyChannels(x, y, target, accumulate: false); results.Add(target.ToArray());
            backend.MultiplyChannels(x, y, target, accumulate: true); results.Add(target.ToArray());
            var rows = Of(c[..(row * 5000)]);
            backend.MultiplyChannels(factor, x.Slice(0, row * 5000), rows, accumulate: true); results.Add(rows.ToArray());
            backend.Copy(x, target); results.Add(target.ToArray());
            backend.Copy(y, target, accumulate: true); results.Add(target.ToArray());
            backend.Scale(z, 0.37f, target); results.Add(target.ToArray());
            backend.Add(x, z, target); results.Add(target.ToArray());
            // In place, shifted by 3 within one buffer, both ways.
            var shifted = Of(a);
            backend.Copy(shifted.Slice(0, length - 3), shifted.Slice(3, length - 3)); results.Add(shifted.ToArray());
            backend.Copy(shifted.Slice(3, length - 3), shifted.Slice(0, length - 3)); results.Add(shifted.ToArray());
            Allocations.AssertNone(_ => backend.MultiplyChannels(x, y, target, accumulate: true), warmUp: 2, steps: 3, $"a product at {threads} threads");
            return [.. results];
        }
        var one = Run(1);
        var expectedShift = a.ToArray();
        Array.Copy(expectedShift, 0, expectedShift, 3, length - 3);
        Assert.Equal(expectedShift, one[^2]);
        foreach (int threads in new[] { 2, 3 })
        {
            var many = Run(threads);
            for (int i = 0; i < one.Length; i++) Assert.True(one[i].AsSpan().SequenceEqual(many[i]), $"result {i} differs at {threads} threads");
        }
    }

    /// <summary>The parallel kernels allocate nothing per call on the calling thread (work items made once, helpers queued
    /// as the same object).</summary>
    [Fact]
    public void Parallel_passes_allocate_nothing()
    {
        const int batch = 32;
        var problem = Problem.From(Cnn(), 5, batch, new CpuBackend { Threads = 2 });
        var plan = problem.Compile(new PlanOptions(batch) { TangentCount = 1, Gradients = true, Seeds = [new TangentSeed(problem.Model["x"])] });
        Allocations.AssertNone(_ =>
        {
            plan.ForwardJvp();
            plan.Backward();
        }, warmUp: 2, steps: 3, "a parallel CNN forward + JVP + backward");
    }
}
