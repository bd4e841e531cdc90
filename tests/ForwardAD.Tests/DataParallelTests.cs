using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// Data-parallel training on ranks that are threads (<see cref="InProcessCommunicator"/>): N ranks with shares of a batch
/// of B compute what one process with the batch computes (docs/design.md §7), up to the order of float32 sums. The same code
/// path runs under MPI; <see cref="MpiTests"/> starts real <c>mpiexec</c> jobs.
/// </summary>
public sealed class DataParallelTests(ITestOutputHelper output)
{
    private const int Batch = 20, StepsPerEpoch = 10, Epochs = 5; // 50 steps; 3 ranks hold 6, 7 and 7 examples

    private static (Dataset Train, Dataset Test) Data()
    {
        var digits = Digits.Load();
        return (digits.Subset([.. Enumerable.Range(0, Batch * StepsPerEpoch)], "digits-train"), digits.Subset([.. Enumerable.Range(1000, 100)], "digits-test"));
    }

    internal static Guesser Method(string name) => name switch
    {
        "backprop" => Guessers.Backprop,
        "ap" => Guessers.ActivationPerturbation(TangentMode.Joint, 2),
        "wt" => Guessers.WeightTranspose(),
        "directional" => Guessers.DirectionalDescent(3),
        "dfa" => Guessers.Dfa(seed: 7),
        "grape" => Guessers.Grape(new GrapeOptions(), seed: 7),
        "mixing" => Guessers.ActivationMixing(),
        _ => throw new ArgumentException(name),
    };

    /// <summary>Trains 50 steps on <paramref name="ranks"/> thread ranks; returns rank 0's parameters, every rank's
    /// parameters being checked equal, and the reports.</summary>
    private static (float[] Parameters, EpochReport[] Reports) Train(string method, int ranks, int cosineEvery = 0) => Train(method, ranks, cosineEvery, out _);

    /// <summary>Learning rates at which 50 steps of each method train this MLP without diverging (backprop reaches ~75 %).</summary>
    private static float Rate(string method) => method is "backprop" or "dfa" or "grape" ? 0.3f : 0.05f;

    private static (float[] Parameters, EpochReport[] Reports) Train(string method, int ranks, int cosineEvery, out float[] initial)
    {
        var (train, test) = Data();
        var communicators = InProcessCommunicator.CreateGroup(ranks);
        var results = new (float[] Parameters, EpochReport[] Reports)[ranks];
        var start = new float[1][];
        var threads = communicators.Select(c => new Thread(() =>
        {
            c.Timeout = TimeSpan.FromSeconds(30);
            var store = ParameterStore.Initialize(new MlpSpec(64, [24, 16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend { Threads = 1 }, 11);
            if (c.Rank == 0) start[0] = AllParameters(store);
            var trainer = new Trainer(Method(method), Optimizers.Sgd(Rate(method)), store, train, test,
                new TrainingOptions(Batch, 5) { CosineEvery = cosineEvery, Communicator = c });
            var reports = Enumerable.Range(0, Epochs).Select(e => trainer.RunEpoch(e)).ToArray();
            results[c.Rank] = (AllParameters(store), reports);
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        for (int r = 1; r < ranks; r++) Assert.Equal(results[0].Parameters, results[r].Parameters); // the same bits on every rank
        initial = start[0];
        return results[0];
    }

    internal static float[] AllParameters(ParameterStore store)
    {
        var host = new float[store.All.Length];
        store.Backend.CopyToHost(store.All, host);
        return host;
    }

    /// <summary>‖a − b‖ / ‖b‖.</summary>
    internal static double RelativeDistance(float[] a, float[] b)
    {
        double difference = 0, norm = 0;
        for (int i = 0; i < a.Length; i++) { difference += (double)(a[i] - b[i]) * (a[i] - b[i]); norm += (double)b[i] * b[i]; }
        return Math.Sqrt(difference / norm);
    }

    [Theory]
    [InlineData("backprop")]
    [InlineData("ap")]
    [InlineData("wt")]
    [InlineData("directional")]
    [InlineData("dfa")]
    [InlineData("grape")]
    public void Ranks_with_shares_of_the_batch_train_as_one_process_with_the_batch(string method)
    {
        var (single, singleReports) = Train(method, 1, 0, out var initial);
        // Not a trivial agreement: training moved the parameters far more than the ranks differ.
        double moved = RelativeDistance(single, initial);
        output.WriteLine($"{method}: 50 steps moved the parameters by ‖θ_50 − θ_0‖/‖θ_0‖ = {moved:E2}");
        Assert.True(moved > 0.01, $"{method} hardly trained: {moved:E2}");
        foreach (int ranks in new[] { 2, 3 })
        {
            var (parallel, reports) = Train(method, ranks);
            double distance = RelativeDistance(parallel, single);
            output.WriteLine($"{method}, {ranks} ranks: ‖θ_N − θ_1‖/‖θ_1‖ = {distance:E2} after {Epochs * StepsPerEpoch} steps; " +
                $"train loss {reports[^1].TrainLoss:F6} vs {singleReports[^1].TrainLoss:F6}, accuracy {reports[^1].TrainAccuracy:P1}");
            Assert.True(distance <= 1e-5, $"{method} on {ranks} ranks drifted {distance:E2} from one process");
        }
    }

    /// <summary>Directional descent exchanges its K JVP scalars and the loss (8 bytes each), whatever the parameter count;
    /// activation perturbation the whole update (4 bytes per parameter) and the loss. Counted at the communicator.</summary>
    [Fact]
    public void Directional_descent_sends_K_scalars_whatever_the_parameter_count()
    {
        var (train, test) = Data();
        foreach (int width in new[] { 8, 64 })
            foreach (var (method, expected) in new (string, Func<int, double>)[] { ("directional", _ => 8 * 3 + 8), ("ap", p => 4.0 * p + 8) })
            {
                var communicators = InProcessCommunicator.CreateGroup(2);
                var bytes = new double[2];
                int parameterCount = 0;
                var threads = communicators.Select(c => new Thread(() =>
                {
                    var store = ParameterStore.Initialize(new MlpSpec(64, [width], 10, ElementwiseFunction.Relu).Build(), new CpuBackend { Threads = 1 }, 1);
                    parameterCount = store.All.Length;
                    var trainer = new Trainer(Method(method), Optimizers.Sgd(0.01f), store, train, test, new TrainingOptions(Batch, 1) { CosineEvery = 0, Communicator = c });
                    bytes[c.Rank] = trainer.RunEpoch(0).ExchangedBytesPerStep;
                })).ToList();
                threads.ForEach(t => t.Start());
                threads.ForEach(t => t.Join());
                output.WriteLine($"{method}, hidden width {width} ({parameterCount} parameters): {bytes[0]} bytes per step");
                Assert.Equal(expected(parameterCount), bytes[0]);
                Assert.Equal(bytes[0], bytes[1]);
            }
    }

    [Fact]
    public void The_cosine_of_a_data_parallel_run_is_measured_against_the_whole_batch_gradient()
    {
        var (_, single) = Train("ap", 1, cosineEvery: 1);
        var (_, parallel) = Train("ap", 3, cosineEvery: 1);
        Assert.Equal(single[^1].GlobalCosine, parallel[^1].GlobalCosine, 4);
        Assert.Equal(1.0, Train("backprop", 2, cosineEvery: 1).Reports[^1].GlobalCosine, 6);
    }

    [Fact]
    public void One_process_exchanges_nothing()
    {
        Assert.All(new[] { "directional", "grape", "backprop" }, method => Assert.Equal(0, Train(method, 1).Reports[^1].ExchangedBytesPerStep));
    }

    /// <summary>GrAPE's reported alignment of B to the exact Jacobian is measured over the whole batch, not rank 0's share.</summary>
    [Fact]
    public void The_feedback_alignment_of_a_data_parallel_run_is_measured_over_the_whole_batch()
    {
        var single = Train("grape", 1, cosineEvery: 5).Reports[^1].FeedbackAlignment;
        var parallel = Train("grape", 3, cosineEvery: 5).Reports[^1].FeedbackAlignment;
        Assert.NotEmpty(single);
        for (int l = 0; l < single.Length; l++) Assert.Equal(single[l], parallel[l], 5);
    }

    /// <summary>A data-parallel step (estimate, exchange of the update or of the JVP scalars, loss, running statistics of a
    /// batch-norm model) allocates nothing on either rank. Both ranks run the same fixed windows (an exchange needs both);
    /// a rank passes when one of its windows read 0 bytes (the runtime's counter is occasionally off by stray bytes, see
    /// <see cref="Allocations"/>).</summary>
    [Theory]
    [InlineData("backprop")]
    [InlineData("directional")]
    [InlineData("grape")]
    public void A_data_parallel_step_allocates_nothing(string method)
    {
        var communicators = InProcessCommunicator.CreateGroup(2);
        var windows = new long[2][];
        var threads = communicators.Select(c => new Thread(() =>
        {
            var b = new ModelBuilder();
            var x = b.Input("x", new Shape(64), differentiable: false);
            var h = b.Activation("r1", b.BatchNorm("bn1", b.Dense("d1", x, 32, ElementwiseFunction.Identity).Output), ElementwiseFunction.Relu);
            var logits = b.Dense("head", h, 10, ElementwiseFunction.Identity).Output;
            var model = b.Build(b.SoftmaxCrossEntropy("loss", logits, b.ClassLabels("y", 10)), logits);
            var store = ParameterStore.Initialize(model, new CpuBackend { Threads = 1 }, 1);
            var shard = BatchShard.Split(Batch, c);
            var estimator = Method(method).Compile(store, shard);
            var (train, _) = Data();
            var features = new float[shard.Count * 64];
            var labels = new float[shard.Count];
            train.CopyBatch([.. Enumerable.Range(shard.First, shard.Count)], features, labels);
            estimator.SetBatch(features, labels);
            var step = new DataParallelStep(estimator, shard, store);
            long Window(int steps)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                for (int i = 0; i < steps; i++) step.Run(new Random.RandomKey(1, (ulong)i), i);
                return GC.GetAllocatedBytesForCurrentThread() - before;
            }
            Window(3);
            // The ranks meet at a System.Threading.Barrier, whose two phase events each allocate a lock object (24 bytes)
            // the first time a thread blocks on one; on a loaded machine that first block can fall inside a measured
            // window. Make each rank block once on each phase now: the other rank arrives late, twice in a row.
            for (int late = 0; late < 2 * communicators.Length; late++)
            {
                if (late / 2 != c.Rank) Thread.Sleep(20);
                c.Barrier();
            }
            windows[c.Rank] = [Window(5), Window(40)];
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.All(windows, w => Assert.True(w[0] == 0 || w[1] == 0, $"{method}: a data-parallel step allocated {w[0]} bytes in 5 steps, then {w[1]} in 40"));
    }

    [Fact]
    public void Language_model_ranks_on_other_texts_are_refused()
    {
        var communicators = InProcessCommunicator.CreateGroup(2);
        var errors = new Exception?[2];
        var threads = communicators.Select(c => new Thread(() =>
        {
            var text = string.Concat(Enumerable.Range(0, 400).Select(i => $"line {i} of {(c.Rank == 0 ? "one" : "two")} text\n"));
            var corpus = TextCorpus.FromText("corpus.txt", text); // the same name and length, other bytes
            var spec = new TransformerSpec(Layers: 1, Heads: 2, Width: 16, Context: 12);
            var store = ParameterStore.Initialize(spec.Build(), new CpuBackend { Threads = 1 }, 1);
            var trainer = new LanguageModelTrainer(Guessers.Backprop, Optimizers.Sgd(0.1f), store, corpus, new LanguageModelOptions(8, 1) { Communicator = c });
            try { trainer.Train(2); } catch (Exception e) { errors[c.Rank] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.All(errors, e => Assert.Contains("text_fingerprint", Assert.IsType<RunMismatchException>(e).Message));
    }

    [Fact]
    public void A_rank_with_another_learning_rate_is_refused_before_the_first_step_on_every_rank()
    {
        var (train, test) = Data();
        var communicators = InProcessCommunicator.CreateGroup(3);
        var errors = new Exception?[3];
        var stores = new ParameterStore[3];
        var threads = communicators.Select(c => new Thread(() =>
        {
            var store = stores[c.Rank] = ParameterStore.Initialize(new MlpSpec(64, [16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend { Threads = 1 }, 1);
            string rate = c.Rank == 2 ? "0.2" : "0.1";
            var trainer = new Trainer(Guessers.Backprop, Optimizers.Sgd(float.Parse(rate)), store, train, test, new TrainingOptions(Batch, 1) { Communicator = c });
            try { trainer.RequireSameRun(new Dictionary<string, string> { ["lr"] = rate }); trainer.RunEpoch(0); }
            catch (Exception e) { errors[c.Rank] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        foreach (var error in errors)
        {
            var mismatch = Assert.IsType<RunMismatchException>(error);
            Assert.Contains("rank 2 of 3", mismatch.Message);
            Assert.Contains("lr is '0.2' here but '0.1' on rank 0", mismatch.Message);
        }
        output.WriteLine(errors[0]!.Message);
    }

    [Fact]
    public void A_rank_on_other_data_is_refused()
    {
        var (train, test) = Data();
        var other = Digits.Load().Subset([.. Enumerable.Range(1, Batch * StepsPerEpoch)], "digits-train");
        var communicators = InProcessCommunicator.CreateGroup(2);
        var errors = new Exception?[2];
        var threads = communicators.Select(c => new Thread(() =>
        {
            var store = ParameterStore.Initialize(new MlpSpec(64, [16], 10, ElementwiseFunction.Relu).Build(), new CpuBackend { Threads = 1 }, 1);
            var trainer = new Trainer(Guessers.Backprop, Optimizers.Sgd(0.1f), store, c.Rank == 0 ? train : other, test, new TrainingOptions(Batch, 1) { Communicator = c });
            try { trainer.RunEpoch(0); } catch (Exception e) { errors[c.Rank] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.All(errors, e => Assert.Contains("data is", Assert.IsType<RunMismatchException>(e).Message));
    }

    [Fact]
    public void A_rank_that_stops_answering_ends_the_others_wait_after_the_timeout()
    {
        var communicators = InProcessCommunicator.CreateGroup(3);
        var errors = new Exception?[3];
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var threads = communicators.Take(2).Select(c => new Thread(() =>
        {
            c.Timeout = TimeSpan.FromSeconds(1);
            try { c.AllReduceSum(new float[4]); } catch (CommunicationException e) { errors[c.Rank] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20));
        Assert.Contains(errors.Take(2), e => e is CommunicationException && e.Message.Contains("stopped answering"));
        Assert.All(errors.Take(2), e => Assert.IsType<CommunicationException>(e));
    }

    [Fact]
    public void Sums_are_the_same_bits_on_every_rank_and_broadcasts_reach_every_rank()
    {
        var communicators = InProcessCommunicator.CreateGroup(3);
        var sums = new float[3][];
        var texts = new string[3];
        var threads = communicators.Select(c => new Thread(() =>
        {
            var values = Enumerable.Range(0, 5).Select(i => 0.1f * (i + 1) * (c.Rank + 1)).ToArray();
            c.AllReduceSum(values);
            sums[c.Rank] = values;
            double[] one = [c.Rank];
            c.AllReduceSum(one);
            Assert.Equal(3.0, one[0]);
            texts[c.Rank] = c.BroadcastText(c.Rank == 1 ? "from rank one=ok\n" : "", root: 1);
            c.Barrier();
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Equal(sums[0], sums[1]);
        Assert.Equal(sums[0], sums[2]);
        Assert.Equal(0.1f + 0.2f + 0.3f, sums[0][0]);
        Assert.All(texts, t => Assert.Equal("from rank one=ok\n", t));
    }

    [Fact]
    public void A_batch_is_split_by_global_index_with_shares_differing_by_at_most_one()
    {
        var communicators = InProcessCommunicator.CreateGroup(3);
        var shards = communicators.Select(c => BatchShard.Split(20, c)).ToArray();
        Assert.Equal([(0, 6), (6, 7), (13, 7)], shards.Select(s => (s.First, s.Count)));
        var error = Assert.Throws<ArgumentException>(() => BatchShard.Split(2, communicators[0]));
        Assert.Contains("at least 3", error.Message);
    }
}
