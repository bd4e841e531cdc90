using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Cuda.Interop;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Cuda.Tests;

/// <summary>The CUDA backend against the CPU backend on the same seeds: random numbers bit for bit, every kernel,
/// plan, guesser and update rule within float32 tolerance. Skipped, with the reason, where there is no GPU.</summary>
public sealed class ParityTests(CudaFixture fixture) : IClassFixture<CudaFixture>
{
    private readonly CpuBackend _cpu = new();

    [Fact]
    public void Random_numbers_are_identical_bit_for_bit()
    {
        var cuda = fixture.Require();
        foreach (var (first, n) in new[] { (0L, 1000), (13L, 4099), (1L << 33, 77) })
        {
            var key = new RandomKey(0xABCDEF, (ulong)first + 5);
            var expected = new float[n];
            RandomFill.Normal(key, first, 0.5f, 2f, expected);
            var device = new View(cuda.Allocate(n));
            cuda.FillNormal(key, first, 0.5f, 2f, device);
            Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), device.ToArray().Select(BitConverter.SingleToUInt32Bits));
            RandomFill.Uniform(key, first, -3f, 1f, expected);
            cuda.FillUniform(key, first, -3f, 1f, device);
            Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), device.ToArray().Select(BitConverter.SingleToUInt32Bits));
        }
    }

    [Theory]
    [InlineData(Transpose.No, Transpose.No)]
    [InlineData(Transpose.No, Transpose.Yes)]
    [InlineData(Transpose.Yes, Transpose.No)]
    [InlineData(Transpose.Yes, Transpose.Yes)]
    public void Gemm_matches_the_cpu(Transpose ta, Transpose tb)
    {
        var cuda = fixture.Require();
        const int m = 37, n = 29, k = 53;
        var a = Host.Normal(1, m * k); var b = Host.Normal(2, k * n); var c = Host.Normal(3, m * n);
        int lda = ta == Transpose.No ? k : m, ldb = tb == Transpose.No ? n : k;
        var cpuC = _cpu.Upload(c);
        _cpu.Gemm(ta, tb, m, n, k, 0.7f, _cpu.Upload(a), lda, _cpu.Upload(b), ldb, 0.3f, cpuC, n);
        var gpuC = cuda.Upload(c);
        cuda.Gemm(ta, tb, m, n, k, 0.7f, cuda.Upload(a), lda, cuda.Upload(b), ldb, 0.3f, gpuC, n);
        Host.Close(cpuC.ToArray(), gpuC.ToArray(), 1e-5, $"gemm {ta}{tb}");
    }

    /// <summary>Every elementwise, reduction and loss kernel on random data.</summary>
    [Fact]
    public void Every_kernel_matches_the_cpu()
    {
        var cuda = fixture.Require();
        const int rows = 12, columns = 10, channels = 3;
        var x = Host.Normal(4, rows * columns); var y = Host.Normal(5, rows * columns); var z = Host.Normal(6, channels * rows * columns);
        var rowScale = Host.Normal(7, rows); var bias = Host.Normal(8, columns);
        var labels = Enumerable.Range(0, rows).Select(i => (float)(i % columns)).ToArray();
        void Check(string what, Action<Backend, View> run, int length, params float[][] inputs)
        {
            var onCpu = new View(_cpu.Allocate(length)); _cpu.CopyFromHost(new float[length], onCpu);
            var onGpu = cuda.Upload(new float[length]);
            run(_cpu, onCpu);
            run(cuda, onGpu);
            Host.Close(onCpu.ToArray(), onGpu.ToArray(), 2e-5, what);
        }
        View U(Backend backend, float[] values) => backend.Upload(values);
        foreach (var f in new[] { ElementwiseFunction.Relu, ElementwiseFunction.Tanh, ElementwiseFunction.Gelu, ElementwiseFunction.Identity })
        {
            Check($"{f.Name} forward", (be, d) => be.Elementwise(f, U(be, x), d), x.Length);
            Check($"{f.Name} derivative", (be, d) => { var o = U(be, new float[x.Length]); be.Elementwise(f, U(be, x), o); be.ElementwiseDerivative(f, U(be, x), o, d); }, x.Length);
        }
        Check("fill", (be, d) => be.Fill(2.5f, d), 17);
        Check("copy accumulate", (be, d) => { be.Copy(U(be, x), d); be.Copy(U(be, y), d, accumulate: true); }, x.Length);
        Check("scale", (be, d) => be.Scale(U(be, x), -1.5f, d), x.Length);
        Check("add", (be, d) => be.Add(U(be, x), U(be, y), d), x.Length);
        Check("multiply channels", (be, d) => { be.MultiplyChannels(U(be, x), U(be, z), d, false); be.MultiplyChannels(U(be, x), U(be, z), d, true); }, z.Length);
        Check("add bias", (be, d) => { be.Copy(U(be, x), d); be.AddBias(U(be, bias), d); }, x.Length);
        Check("sum rows", (be, d) => be.SumRows(U(be, x), d, false), columns);
        Check("row dot", (be, d) => be.RowDot(U(be, x), U(be, z), columns, d), channels * rows);
        Check("scale rows", (be, d) => be.ScaleRows(U(be, x), U(be, rowScale), d, false), x.Length);
        Check("normalize rows", (be, d) => { be.Copy(U(be, x), d); be.NormalizeRows(d, columns, 3f); }, x.Length);
        Check("row cosines", (be, d) => be.RowCosines(U(be, x), U(be, y), columns, d), rows);
        Check("softmax cross-entropy", (be, d) => be.SoftmaxCrossEntropy(U(be, x), U(be, labels), columns, d.Slice(0, rows), d.Slice(rows, rows * columns)), rows + rows * columns);
        Check("squared error", (be, d) => be.SquaredError(U(be, x), U(be, y), columns, d.Slice(0, rows), d.Slice(rows, rows * columns)), rows + rows * columns);
        Check("axpby", (be, d) => { be.Copy(U(be, y), d); be.Axpby(0.3f, U(be, x), 0.7f, d); }, x.Length);
        Check("adam", (be, d) => { var v = U(be, y.Select(a => a * a).ToArray()); be.MovingAverageOfSquares(U(be, x), 0.9f, v); be.AdamDirection(U(be, x), v, 1.1f, 2f, 1e-8f, d); }, x.Length);
        foreach (var (name, cpuValue, gpuValue) in new[]
        {
            ("sum", _cpu.Sum(U(_cpu, x)), cuda.Sum(U(cuda, x))),
            ("sum of squares", _cpu.SumOfSquares(U(_cpu, x)), cuda.SumOfSquares(U(cuda, x))),
            ("dot", _cpu.Dot(U(_cpu, x), U(_cpu, y)), cuda.Dot(U(cuda, x), U(cuda, y))),
            ("mean ratio", _cpu.MeanRatioOfSquares(U(_cpu, x), U(_cpu, y.Select(a => a * a).ToArray()), 1.5f, 1e-12f),
                cuda.MeanRatioOfSquares(U(cuda, x), U(cuda, y.Select(a => a * a).ToArray()), 1.5f, 1e-12f)),
        })
            Assert.True(Math.Abs(cpuValue - gpuValue) <= 1e-4 * (1 + Math.Abs(cpuValue)), $"{name}: CPU {cpuValue}, CUDA {gpuValue}");
    }

    private static (Model Model, float[] X, float[] Y) Problem(int batch)
    {
        var model = MlpSpec.Uniform(20, 3, 32, 5, ElementwiseFunction.Gelu).Build();
        return (model, Host.Normal(9, batch * 20), Enumerable.Range(0, batch).Select(i => (float)(i % 5)).ToArray());
    }

    /// <summary>Disposing a plan gives its device memory back to the allocator at once (every byte it and its pull-back
    /// took), not when the backend goes; the parameters stay.</summary>
    [Fact]
    public void A_disposed_plan_returns_its_device_memory()
    {
        var cuda = fixture.Require();
        var (model, _, _) = Problem(8);
        var store = ParameterStore.Initialize(model, cuda, 5);
        long before = cuda.Allocator.LiveBytes;
        var plan = Plan.Compile(store, new PlanOptions(8) { Gradients = true, TangentCount = 2, Seeds = [new TangentSeed(model.Sites[0].Node, new RandomKey(1, 1))] });
        plan.CreatePullBack([model.Sites[^1].Node], model.Sites[0].Node, channels: 2);
        Assert.True(cuda.Allocator.LiveBytes > before);
        plan.Dispose();
        Assert.Equal(before, cuda.Allocator.LiveBytes);
    }

    /// <summary>Same seeds, same model: forward, K-channel JVP with generated tangents and the backprop gradient agree.</summary>
    [Fact]
    public void Plans_agree_with_the_cpu()
    {
        var cuda = fixture.Require();
        const int batch = 16;
        var (model, x, y) = Problem(batch);
        float[] Run(Backend backend, out float[] tangent, out float[] gradient)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var plan = Plan.Compile(store, new PlanOptions(batch)
            {
                Gradients = true, TangentCount = 4,
                Seeds = [.. model.Sites.Select(l => new TangentSeed(l.Node, new RandomKey(3, (ulong)l.Node.Id)))],
            });
            plan.SetInput(model["x"], x);
            plan.SetInput(model["y"], y);
            plan.ForwardJvp();
            plan.Backward();
            tangent = plan.Tangent(model.Loss).ToArray();
            gradient = plan.ParameterGradients.ToArray();
            return store.All.ToArray();
        }
        var cpuParameters = Run(_cpu, out var cpuTangent, out var cpuGradient);
        var gpuParameters = Run(cuda, out var gpuTangent, out var gpuGradient);
        Assert.Equal(cpuParameters, gpuParameters); // initialisation draws the same numbers
        Host.Close(cpuTangent, gpuTangent, 1e-4, "loss tangent");
        Host.Close(cpuGradient, gpuGradient, 1e-4, "gradient");
    }

    public static TheoryData<string> GuesserNames() => ["backprop", "ap", "wt-per-layer", "mixing", "self-sharpening", "directional", "dfa", "grape"];

    [Theory]
    [MemberData(nameof(GuesserNames))]
    public void Guessers_and_update_rules_agree_with_the_cpu(string name)
    {
        var cuda = fixture.Require();
        const int batch = 16;
        var (model, x, y) = Problem(batch);
        Guesser guesser = name switch
        {
            "backprop" => Guessers.Backprop,
            "ap" => Guessers.ActivationPerturbation(),
            "wt-per-layer" => Guessers.WeightTranspose(TangentMode.PerLayer),
            "mixing" => Guessers.ActivationMixing(),
            "self-sharpening" => Guessers.SelfSharpening(),
            "directional" => Guessers.DirectionalDescent(2),
            "dfa" => Guessers.Dfa(),
            _ => Guessers.Grape(new GrapeOptions { Rule = FeedbackRules.Alternative1(0.1f, 1e-3f, true) }),
        };
        float[] Train(Backend backend)
        {
            var store = ParameterStore.Initialize(model, backend, 5);
            var estimator = guesser.Compile(store, batch);
            var optimizer = new Optimizer(new ClipByGlobalNorm(1f).Then(Optimizers.AdamW(1e-2f)), store);
            for (int step = 0; step < 3; step++)
            {
                estimator.SetBatch(x, y);
                var (gradient, loss) = estimator.Estimate(new RandomKey(8, (ulong)step), step);
                optimizer.Step(new UpdateInputs(step, loss, default), gradient);
            }
            return store.All.ToArray();
        }
        Host.Close(Train(_cpu), Train(cuda), 5e-4, name);
    }

    [Fact]
    public void The_allocator_reuses_blocks_by_size_and_explains_out_of_memory()
    {
        var cuda = fixture.Require();
        var allocator = cuda.Allocator;
        var first = allocator.Allocate(1000);
        allocator.Return(first);
        Assert.Equal(first, allocator.Allocate(900)); // same rounded size: the cached block comes back
        var error = Assert.Throws<CudaOutOfMemoryException>(() => allocator.Allocate(1L << 50));
        Assert.Contains("asked for", error.Message);
        Assert.Contains("free", error.Message);
        Assert.Equal("cuMemAlloc_v2", error.Function);
    }

    [Fact]
    public void Errors_name_the_function_and_the_drivers_message()
    {
        fixture.Require();
        var error = Assert.Throws<CudaException>(() => CudaDriver.Check(1, "cuExample"));
        Assert.Contains("cuExample", error.Message);
        Assert.Contains("CUDA_ERROR_INVALID_VALUE", error.Message);
    }

    [Fact]
    public void A_captured_step_replays_as_a_graph()
    {
        var cuda = fixture.Require();
        var values = cuda.Upload(new float[1000]);
        using var graph = CudaGraph.Capture(cuda, () => cuda.Axpby(1f, values, 2f, values));
        cuda.Fill(1f, values);
        graph.Launch();
        graph.Launch();
        Assert.All(values.ToArray(), v => Assert.Equal(9f, v));
    }

    /// <summary>The driver's current context is per thread: the backend, created on the fixture's thread, must work on a
    /// fresh thread that never had a context (copies, kernels, a reduction, the allocator, a GEMM).</summary>
    [Fact]
    public void The_backend_works_on_a_thread_that_did_not_create_it()
    {
        var cuda = fixture.Require();
        float[]? scaled = null, product = null;
        double sum = 0;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                var values = cuda.Upload([1f, 2f, 3f]);
                cuda.Scale(values, 2f, values);
                sum = cuda.Sum(values);
                scaled = values.ToArray();
                var c = cuda.Upload(new float[1]);
                cuda.Gemm(Transpose.No, Transpose.Yes, 1, 1, 3, 1f, values, 3, values, 3, 0f, c, 1);
                product = c.ToArray();
            }
            catch (Exception e) { error = e; }
        });
        thread.Start();
        thread.Join();
        Assert.Null(error);
        Assert.Equal([2f, 4f, 6f], scaled!);
        Assert.Equal(12.0, sum);
        Assert.Equal([56f], product!);
    }

    /// <summary>The parallel sum_rows on a tall matrix (several tiles, a ragged last tile): within the float32 rounding of
    /// both summation orders of the CPU's row-by-row sum, and the same bits on a second run (a fixed reduction order).</summary>
    [Fact]
    public void Sum_rows_on_many_rows_matches_the_cpu_and_is_reproducible()
    {
        var cuda = fixture.Require();
        const int rows = 4099, columns = 1030;
        var x = Host.Normal(11, rows * columns);
        var start = Host.Normal(12, columns);
        foreach (var accumulate in new[] { false, true })
        {
            var onCpu = _cpu.Upload(start);
            _cpu.SumRows(_cpu.Upload(x), onCpu, accumulate);
            var source = cuda.Upload(x);
            var first = cuda.Upload(start);
            var second = cuda.Upload(start);
            cuda.SumRows(source, first, accumulate);
            cuda.SumRows(source, second, accumulate);
            float[] expected = onCpu.ToArray(), actual = first.ToArray();
            Assert.Equal(actual.Select(BitConverter.SingleToUInt32Bits), second.ToArray().Select(BitConverter.SingleToUInt32Bits));
            for (int j = 0; j < columns; j++)
            {
                // Each order errs by at most (additions) · 2^-24 · Σ|terms|: rows for the CPU, rows/32 + 6 for the GPU.
                double magnitude = (accumulate ? Math.Abs(start[j]) : 0) + Enumerable.Range(0, rows).Sum(r => Math.Abs((double)x[r * columns + j]));
                double bound = (rows + rows / CudaBackend.SumRowsTile + 6) * Math.Pow(2, -24) * magnitude;
                Assert.True(Math.Abs(expected[j] - actual[j]) <= bound, $"column {j} (accumulate {accumulate}): CPU {expected[j]:G9}, CUDA {actual[j]:G9}, bound {bound:G3}");
            }
        }
    }
}
