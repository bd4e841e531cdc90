using System.Runtime.InteropServices;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Distributed;

/// <summary>
/// The exchange of a data-parallel training step (docs/design.md §7), around an estimator compiled for this rank's
/// <see cref="BatchShard"/>: the estimate on the rank's examples; then what the estimator's
/// <see cref="GradientEstimator.Exchange"/> asks for (the all-reduce sum of the ranks' shares of the update, or nothing
/// when the estimator already agreed, as directional descent's K scalars); the batch loss as the mean over the global
/// batch; and batch normalisation's running statistics averaged over the ranks so that every rank keeps the same model.
/// Every rank then holds the same gradient and applies the same update. With one rank it is the estimator alone.
/// </summary>
public sealed class DataParallelStep
{
    private readonly GradientEstimator _estimator;
    private readonly BatchShard _shard;
    private readonly ParameterStore _parameters;
    private readonly View[] _states;
    private readonly float[] _stateHost;
    private readonly double[] _stateSums, _loss = new double[1];

    /// <summary>The step of one rank.</summary>
    /// <param name="estimator">An estimator compiled for <paramref name="shard"/> (its plan's batch size is the shard's
    /// <see cref="BatchShard.Count"/>), over <paramref name="parameters"/>.</param>
    /// <param name="shard">This rank's share of the global batch and the communicator of all ranks.</param>
    /// <param name="parameters">The parameters and state (batch-norm running statistics) the estimator reads; the
    /// statistics are averaged over the ranks after each step.</param>
    /// <exception cref="ArgumentException">The estimator's plan was compiled for another batch size than the shard's.</exception>
    public DataParallelStep(GradientEstimator estimator, BatchShard shard, ParameterStore parameters)
    {
        if (estimator.Plan.BatchSize != shard.Count)
            throw new ArgumentException($"The estimator was compiled for {estimator.Plan.BatchSize} examples but this rank's share is {shard.Count} ({shard}).", nameof(estimator));
        (_estimator, _shard, _parameters) = (estimator, shard, parameters);
        _states = [.. parameters.Model.States.Select(s => parameters[s])];
        int stateLength = shard.IsWhole ? 0 : _states.Sum(s => s.Length);
        (_stateHost, _stateSums) = (new float[stateLength], new double[stateLength]);
    }

    /// <summary>This rank's share of the global batch.</summary>
    public BatchShard Shard => _shard;
    /// <summary>The communicator of the shard: the ranks the step sums over.</summary>
    public Communicator Communicator => _shard.Communicator;

    /// <summary>What the last <see cref="Run"/> handed to the communicator (measured at the communicator).</summary>
    public CommunicationTraffic LastTraffic { get; private set; }

    /// <summary>The global batch's estimate (the same on every rank) and its mean loss.</summary>
    public (View Gradient, double Loss) Run(RandomKey key, long step)
    {
        var communicator = _shard.Communicator;
        var before = communicator.Traffic;
        var (gradient, loss) = _estimator.Estimate(key, step);
        if (!_shard.IsWhole)
        {
            if (_estimator.Exchange == EstimateExchange.SumShares) communicator.AllReduceSum(_parameters.Backend, gradient);
            // The estimator's loss is its shard's mean; the batch's is Σ_r (B_r/B)·mean_r.
            _loss[0] = loss * _shard.Count / _shard.GlobalBatch;
            communicator.AllReduceSum(_loss);
            loss = _loss[0];
            if (_states.Length > 0) AverageRunningStatistics();
        }
        LastTraffic = communicator.Traffic - before;
        return (gradient, loss);
    }

    /// <summary>Batch statistics are each rank's own (as in PyTorch's DDP without SyncBatchNorm): the running estimates are
    /// averaged over the ranks so that every rank evaluates and saves the same model. Summed and divided in float64, so
    /// that equal values (frozen statistics) stay exactly what they were: (x + x + x)/3 = x in float64 for a float32 x.</summary>
    private void AverageRunningStatistics()
    {
        var backend = _parameters.Backend;
        int offset = 0;
        foreach (var state in _states)
        {
            backend.CopyToHost(state, _stateHost.AsSpan(offset, state.Length));
            offset += state.Length;
        }
        for (int i = 0; i < _stateHost.Length; i++) _stateSums[i] = _stateHost[i];
        _shard.Communicator.AllReduceSum(_stateSums);
        double size = _shard.Communicator.Size;
        for (int i = 0; i < _stateHost.Length; i++) _stateHost[i] = (float)(_stateSums[i] / size);
        offset = 0;
        foreach (var state in _states)
        {
            backend.CopyFromHost(_stateHost.AsSpan(offset, state.Length), state);
            offset += state.Length;
        }
    }
}

/// <summary>
/// Checks, before the first step, that every rank runs the same configuration on the same data from the same
/// parameters, and refuses with one message on every rank otherwise (a rank with another learning rate or data file
/// would silently train another model). Also used at epoch ends to check that the ranks' parameters are still the same
/// bits.
/// </summary>
public static class RunAgreement
{
    /// <summary>Compares <paramref name="facts"/> (name → value, including fingerprints of data and parameters) with rank
    /// 0's; throws <see cref="RunMismatchException"/> on every rank, naming the first differing rank and its differences,
    /// when any rank differs.</summary>
    public static void Require(Communicator communicator, IReadOnlyDictionary<string, string> facts, string what = "configuration")
    {
        if (communicator.Size == 1) return;
        string mine = Canonical(facts);
        string rootText = communicator.BroadcastText(mine);
        var differences = new List<string>();
        if (communicator.Rank != 0)
        {
            var root = Parse(rootText);
            foreach (var (key, value) in facts.OrderBy(f => f.Key, StringComparer.Ordinal))
                if (!root.TryGetValue(key, out var theirs)) differences.Add($"{key} is '{value}' here but rank 0 does not set it");
                else if (theirs != value) differences.Add($"{key} is '{value}' here but '{theirs}' on rank 0");
            foreach (var key in root.Keys.Where(k => !facts.ContainsKey(k)).Order(StringComparer.Ordinal))
                differences.Add($"{key} is '{root[key]}' on rank 0 but not set here");
        }
        // Which ranks differ: a vector with a 1 at each differing rank's place.
        var differing = new double[communicator.Size];
        if (differences.Count > 0) differing[communicator.Rank] = 1;
        communicator.AllReduceSum(differing);
        int first = Array.FindIndex(differing, d => d != 0);
        if (first < 0) return;
        var ranks = Enumerable.Range(0, communicator.Size).Where(r => differing[r] != 0).ToArray();
        string detail = communicator.BroadcastText(string.Join("; ", differences.Take(8)) + (differences.Count > 8 ? $"; and {differences.Count - 8} more" : ""), root: first);
        throw new RunMismatchException($"rank{(ranks.Length > 1 ? "s" : "")} {string.Join(", ", ranks)} of {communicator.Size} {(ranks.Length > 1 ? "run" : "runs")} another {what} than rank 0 " +
            $"(rank {first}: {detail}). Start every rank with the same command, data files and checkpoint; nothing was trained or written.");
    }

    /// <summary>FNV-1a's starting value: <see cref="Hash(ReadOnlySpan{float}, ulong)"/> of nothing.</summary>
    public const ulong EmptyHash = 14695981039346656037UL;

    /// <summary>A 64-bit hash of floats (FNV-1a over their bits, 8 bytes at a time), continuing from <paramref name="hash"/>.</summary>
    public static ulong Hash(ReadOnlySpan<float> values, ulong hash = EmptyHash)
    {
        var words = MemoryMarshal.Cast<float, ulong>(values);
        foreach (ulong word in words) hash = (hash ^ word) * 1099511628211UL;
        if ((values.Length & 1) == 1) hash = (hash ^ BitConverter.SingleToUInt32Bits(values[^1])) * 1099511628211UL;
        return hash;
    }

    /// <summary>A 64-bit hash of bytes (FNV-1a, 8 bytes at a time, then the rest one by one), continuing from <paramref name="hash"/>.</summary>
    public static ulong Hash(ReadOnlySpan<byte> bytes, ulong hash = EmptyHash)
    {
        foreach (ulong word in MemoryMarshal.Cast<byte, ulong>(bytes)) hash = (hash ^ word) * 1099511628211UL;
        foreach (byte rest in bytes[(bytes.Length & ~7)..]) hash = (hash ^ rest) * 1099511628211UL;
        return hash;
    }

    /// <summary><see cref="Hash(ReadOnlySpan{float}, ulong)"/> as 16 hexadecimal digits: equal data, equal text.</summary>
    public static string Fingerprint(ReadOnlySpan<float> values) => Hash(values).ToString("x16", System.Globalization.CultureInfo.InvariantCulture);

    private static string Canonical(IReadOnlyDictionary<string, string> facts) =>
        string.Concat(facts.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => $"{Escape(f.Key)}={Escape(f.Value)}\n"));

    private static Dictionary<string, string> Parse(string text)
    {
        var facts = new Dictionary<string, string>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = line.IndexOf('=');
            facts[Unescape(line[..equals])] = Unescape(line[(equals + 1)..]);
        }
        return facts;
    }

    private static string Escape(string text) => text.Replace("\\", "\\\\").Replace("\n", "\\n").Replace("=", "\\e");
    private static string Unescape(string text)
    {
        var result = new System.Text.StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] != '\\' || i + 1 == text.Length) { result.Append(text[i]); continue; }
            char next = text[++i];
            result.Append(next switch { 'n' => '\n', 'e' => '=', _ => next });
        }
        return result.ToString();
    }
}

/// <summary>The ranks of a data-parallel job do not run the same thing (configuration, data or parameters).</summary>
public sealed class RunMismatchException(string message) : CommunicationException(message);
