using System.Diagnostics;
using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Benchmarks;

/// <summary>
/// `cpu-threads`: the CPU backend's own parallel kernels at one thread and at <see cref="CpuBackend.Threads"/> (by default
/// OpenBLAS's count, OPENBLAS_NUM_THREADS), on the benchmark CNN's first block (batch 128: conv 3→32 on 32×32, batch norm,
/// ReLU, max pool; conv 32→64 on 16×16); medians of single calls after warm-up, both in one process.
/// </summary>
internal static class CpuThreadScaling
{
    public static int Run(int repeats)
    {
        var parallel = new CpuBackend();
        var single = new CpuBackend { Threads = 1 };
        const int batch = 128;
        var conv1 = new ConvGeometry(32, 32, 3, 3, 3, 1, 1, 1);
        var conv2 = new ConvGeometry(16, 16, 32, 3, 3, 1, 1, 1);
        var pool = new PoolGeometry(32, 32, 32, 2, 2, 2, 0);
        Console.WriteLine($"CPU kernels, 1 thread vs {parallel.Threads} (CpuBackend.Threads), batch {batch}, medians of {repeats} calls");
        Console.WriteLine($"| kernel | 1 thread ms | {parallel.Threads} threads ms | speed-up |");
        Console.WriteLine("|---|---:|---:|---:|");
        View Make(CpuBackend backend, int length, ulong seed)
        {
            var view = new View(backend.Allocate(length));
            RandomFill.Normal(new RandomKey(seed, 0), 0, 0f, 1f, CpuBackend.Span(view));
            return view;
        }
        void Row(string name, Action<CpuBackend> kernel)
        {
            double Median(CpuBackend backend)
            {
                kernel(backend);
                kernel(backend);
                var samples = new double[repeats];
                for (int r = 0; r < repeats; r++)
                {
                    long start = Stopwatch.GetTimestamp();
                    kernel(backend);
                    samples[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                }
                Array.Sort(samples);
                return samples[repeats / 2];
            }
            double one = Median(single), many = Median(parallel);
            Console.WriteLine($"| {name} | {one:F2} | {many:F2} | {one / many:F2}× |");
        }
        // The same buffers for both backends (a CPU view is host memory whichever CpuBackend reads it).
        int activations = batch * conv1.OutputPositions * 32;
        var x = Make(parallel, batch * conv1.InputElements, 1);
        var w1 = Make(parallel, 32 * conv1.PatchLength, 2);
        var h = Make(parallel, activations, 3);
        var y = Make(parallel, activations, 4);
        var columns = Make(parallel, batch * conv2.OutputPositions * conv2.PatchLength, 5);
        var x2 = Make(parallel, batch * conv2.InputElements, 6);
        var w2 = Make(parallel, 64 * conv2.PatchLength, 7);
        var y2 = Make(parallel, batch * conv2.OutputPositions * 64, 8);
        var (shift, scale, bias) = (Make(parallel, 32, 9), Make(parallel, 32, 10), Make(parallel, 32, 11));
        var (pooled, argmax) = (Make(parallel, batch * pool.OutputElements, 12), Make(parallel, batch * pool.OutputElements, 13));
        Row("conv1 direct (3→32, 32×32)", b => b.Convolve(x, conv1, w1, 32, 0f, h, columns));
        Row("conv2 direct (32→64, 16×16)", b => b.Convolve(x2, conv2, w2, 64, 0f, y2, columns));
        Row("bias add [131072, 32]", b => b.AddBias(bias, h));
        Row("batch-norm moments", b => b.ColumnMoments(h, shift, scale, y));
        Row("batch-norm (x − μ)/σ", b => b.ShiftScaleColumns(h, shift, scale, y));
        Row("batch-norm γx + β", b => b.ScaleShiftColumns(y, scale, shift, y));
        Row("relu", b => b.Elementwise(ElementwiseFunction.Relu, y, y));
        Row("max pool 2", b => b.MaxPool(y, pool, pooled, argmax));
        return 0;
    }
}
