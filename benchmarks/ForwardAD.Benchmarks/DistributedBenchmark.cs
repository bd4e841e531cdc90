using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Benchmarks;

/// <summary>
/// Data-parallel training on this machine, in one run: 1 process × 2 threads against 2 MPI ranks × 1 thread (steps per
/// second and bytes per step, per method, rounds alternating the two sides), then the cost of an MPI all-reduce measured
/// at sizes from 8 B to 16 MB, fitted as t(s) = a + b·s, and from it the cost per step of the two exchanges for 8 to 1024
/// workers: the ring all-reduce of the update (2(N−1) hops of s/N bytes) and the shared-seed exchange of directional
/// descent (K + 1 scalars, log₂N hops of recursive doubling). `distributed-worker` and `message-costs` are the children.
/// </summary>
internal static class DistributedBenchmark
{
    private static readonly string[] Methods = ["backprop", "ap", "wt", "directional", "dfa", "grape"];
    private const int Batch = 128, Guesses = 4;
    private static readonly int[] Hidden = [512, 512];

    private static Guesser Method(string name) => name switch
    {
        "backprop" => Guessers.Backprop,
        "ap" => Guessers.ActivationPerturbation(),
        "wt" => Guessers.WeightTranspose(),
        "directional" => Guessers.DirectionalDescent(Guesses),
        "dfa" => Guessers.Dfa(seed: 1),
        _ => Guessers.Grape(new GrapeOptions(), seed: 1),
    };

    public static int Run(int rounds)
    {
        var mpiexec = new[] { "/usr/bin/mpiexec.hydra", "/usr/bin/mpiexec" }.FirstOrDefault(File.Exists);
        if (mpiexec is null) { Console.Error.WriteLine("mpiexec is missing: apt-get install mpich"); return 1; }
        Console.WriteLine($"# Data-parallel training on this machine, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, load {Load()}");
        Console.WriteLine($"MLP 64-{string.Join('-', Hidden)}-10 on digits, batch {Batch}, SGD; directional descent with K = {Guesses}; medians over {rounds} rounds, sides alternating.\n");
        var single = new List<Dictionary<string, (double StepMs, double Bytes)>>();
        var parallel = new List<Dictionary<string, (double StepMs, double Bytes)>>();
        for (int round = 0; round < rounds; round++)
        {
            single.Add(Parse(Child(null, "distributed-worker --threads 2", threads: 2)));
            parallel.Add(Parse(Child(mpiexec, "distributed-worker --threads 1", threads: 1)));
        }
        Console.WriteLine("| method | 1 process × 2 threads: step | 2 ranks × 1 thread: step | steps/s (1 × 2) | steps/s (2 × 1) | 2 × 1 / 1 × 2 | bytes/step per rank |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var method in Methods)
        {
            double one = Median(single.Select(r => r[method].StepMs)), two = Median(parallel.Select(r => r[method].StepMs));
            Console.WriteLine($"| {method} | {one:F2} ms | {two:F2} ms | {1000 / one:F0} | {1000 / two:F0} | {one / two:F2}× | {parallel[0][method].Bytes:N0} |");
        }
        Console.WriteLine($"\nLoad after: {Load()}.");

        var costs = Child(mpiexec, "message-costs", threads: 1).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ')).Select(p => (Bytes: double.Parse(p[0], CultureInfo.InvariantCulture), Seconds: double.Parse(p[1], CultureInfo.InvariantCulture))).ToList();
        Console.WriteLine("\n## MPI all-reduce (sum, in place) between 2 ranks on this machine (MPICH, shared memory)\n");
        Console.WriteLine("| bytes | time | bandwidth |");
        Console.WriteLine("|---:|---:|---:|");
        foreach (var (bytes, seconds) in costs) Console.WriteLine($"| {bytes:N0} | {seconds * 1e6:F1} µs | {bytes / seconds / 1e9:F2} GB/s |");
        // Least squares t = a + b·s; with 2 ranks a ring all-reduce is 2 hops of s/2 bytes: a = 2α, b = β per byte.
        double meanS = costs.Average(c => c.Bytes), meanT = costs.Average(c => c.Seconds);
        double slope = costs.Sum(c => (c.Bytes - meanS) * (c.Seconds - meanT)) / costs.Sum(c => (c.Bytes - meanS) * (c.Bytes - meanS));
        double intercept = Math.Max(costs.Min(c => c.Seconds), meanT - slope * meanS);
        double alpha = intercept / 2, beta = slope;
        Console.WriteLine($"\nFit: t(s) = {intercept * 1e6:F1} µs + s / ({1 / beta / 1e9:F2} GB/s): per hop α = {alpha * 1e6:F1} µs, β = {beta * 1e12:F1} ps/byte.\n");
        Console.WriteLine("## Exchange per step computed from these costs (ring all-reduce of the update vs the shared-seed exchange)\n");
        long parameters = ParameterCount();
        Console.WriteLine($"Update: 4P bytes, ring: 2(N−1)(α + 4P/N·β). Shared seed: 8(K+1) bytes (K = {Guesses} JVP sums and the loss), recursive doubling: log₂N·(α + 8(K+1)β).\n");
        Console.WriteLine($"| workers N | update all-reduce, P = {parameters:N0} | update all-reduce, P = 100 M | shared-seed exchange | ratio (P = 100 M) |");
        Console.WriteLine("|---:|---:|---:|---:|---:|");
        foreach (int n in new[] { 8, 16, 32, 64, 128, 256, 512, 1024 })
        {
            double Ring(double bytes) => 2.0 * (n - 1) * (alpha + bytes / n * beta);
            double seed = Math.Log2(n) * (alpha + 8.0 * (Guesses + 1) * beta);
            Console.WriteLine($"| {n} | {Time(Ring(4.0 * parameters))} | {Time(Ring(4e8))} | {Time(seed)} | {Ring(4e8) / seed:N0}× |");
        }
        return 0;
    }

    private static string Time(double seconds) => seconds >= 1e-3 ? $"{seconds * 1e3:F2} ms" : $"{seconds * 1e6:F1} µs";

    private static long ParameterCount() => new MlpSpec(64, [.. Hidden], 10, ElementwiseFunction.Relu).Build().ParameterCount;

    private static string Load() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static Dictionary<string, (double, double)> Parse(string json) =>
        JsonSerializer.Deserialize<Dictionary<string, double[]>>(json)!.ToDictionary(e => e.Key, e => (e.Value[0], e.Value[1]));

    /// <summary>Runs this program (under mpiexec -n 2 when given) and returns rank 0's standard output.</summary>
    private static string Child(string? mpiexec, string arguments, int threads)
    {
        var self = Environment.ProcessPath!;
        var program = Path.GetFileNameWithoutExtension(self) == "dotnet" ? $"{self} \"{typeof(DistributedBenchmark).Assembly.Location}\"" : $"\"{self}\"";
        var start = mpiexec is null
            ? new ProcessStartInfo("/bin/sh", ["-c", $"{program} {arguments}"])
            : new ProcessStartInfo(mpiexec, $"-n 2 /bin/sh -c \"exec {program.Replace("\"", "\\\"")} {arguments}\"");
        start.RedirectStandardOutput = true;
        // Each side at its best with the cores it is given: OpenBLAS and our kernels at that many threads, no spinning.
        start.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        start.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        using var process = Process.Start(start)!;
        var text = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{arguments} exited with {process.ExitCode}: {text}");
        return text.Trim();
    }

    /// <summary>Child: every method for a few epochs; rank 0 prints {method: [median step ms, bytes per step]}.</summary>
    public static int Worker(int threads)
    {
        using var communicator = MpiCommunicator.IsLaunchedByMpi ? MpiCommunicator.Initialize() : null;
        var digits = Digits.Load();
        var (train, test) = digits.Split(0.2, 1);
        var results = new Dictionary<string, double[]>();
        foreach (var method in Methods)
        {
            var store = ParameterStore.Initialize(new MlpSpec(64, [.. Hidden], 10, ElementwiseFunction.Relu).Build(), new CpuBackend { Threads = threads }, 1);
            var trainer = new Trainer(Method(method), Optimizers.Sgd(0.001f), store, train, test,
                new TrainingOptions(Batch, 1) { CosineEvery = 0, Communicator = (Communicator?)communicator ?? Communicator.SingleProcess });
            trainer.RunEpoch(0); // warm-up: JIT, first touches
            var epochs = Enumerable.Range(1, 4).Select(e => trainer.RunEpoch(e)).ToList();
            results[method] = [Median(epochs.Select(r => r.StepTime.TotalMilliseconds)), epochs[^1].ExchangedBytesPerStep];
        }
        if (communicator is null || communicator.Rank == 0) Console.WriteLine(JsonSerializer.Serialize(results));
        return 0;
    }

    /// <summary>Child under mpiexec: median time of an in-place all-reduce for sizes from 8 B to 16 MB; rank 0 prints "bytes seconds" lines.</summary>
    public static int MessageCosts()
    {
        using var communicator = MpiCommunicator.Initialize();
        foreach (int bytes in new[] { 8, 64, 512, 4 << 10, 32 << 10, 256 << 10, 2 << 20, 16 << 20 })
        {
            var buffer = new float[Math.Max(1, bytes / 4)];
            var doubles = new double[1];
            int repeats = Math.Clamp((int)(64L << 20) / bytes, 5, 2000);
            var times = new double[repeats];
            for (int i = -3; i < repeats; i++)
            {
                communicator.Barrier();
                long start = Stopwatch.GetTimestamp();
                if (bytes == 8) communicator.AllReduceSum(doubles); else communicator.AllReduceSum(buffer);
                if (i >= 0) times[i] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            }
            // The slower rank's median: an all-reduce is done when both are.
            var gathered = new double[communicator.Size];
            gathered[communicator.Rank] = Median(times);
            communicator.AllReduceSum(gathered);
            if (communicator.Rank == 0) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{bytes} {gathered.Max()}"));
        }
        return 0;
    }
}
