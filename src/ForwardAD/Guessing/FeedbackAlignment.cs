using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
using ForwardAD.Graph;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Guessing;

/// <summary>How the feedback matrices B_l (n_l × o) start: N(0, 1/o), Xavier-uniform U(±√(6/(n_l+o))) or
/// Kaiming-uniform U(±√(6/o)) (fan-in o: B_l maps the o-dimensional error to layer l).</summary>
public enum FeedbackInitialization
{
    /// <summary>B_l ~ N(0, 1/o) elementwise.</summary>
    Gaussian,
    /// <summary>B_l ~ U(±√(6/(n_l + o))) (the default).</summary>
    XavierUniform,
    /// <summary>B_l ~ U(±√(6/o)).</summary>
    KaimingUniform,
}

/// <summary>Where GrAPE's activity tangent δ enters: the hidden output h_l (docs/design.md, J_l = ∂ŷ/∂h_l) or the
/// pre-activation a_l (the submission's choice, which folds σ'(a_l) into the estimate).</summary>
public enum TangentPlacement
{
    /// <summary>δ on h_l = σ(a_l): J̃_l estimates ∂ŷ/∂h_l, the matrix B_lᵀ stands in for.</summary>
    HiddenOutput,
    /// <summary>δ on a_l: J̃_l estimates ∂ŷ/∂a_l = J_l diag σ'(a_l) (the GrAPE submission's placement).</summary>
    PreActivation,
}

/// <summary>
/// GrAPE's knobs, all explicit. Defaults: the original rule with η_B = 0.01 (constant), noise 1e-3 and
/// renormalisation; δ on h_l; a cumulative moving average of J̃ over steps; and one joint tangent channel
/// for all layers. Joint is the default because the δ_l of different layers are independent, so the
/// cross terms (J_m δ_m)δ_lᵀ have zero mean and the moving average removes their variance over steps,
/// while per-layer channels cost L× the tangent work (one JVP channel per hidden layer).
/// </summary>
public sealed record GrapeOptions
{
    /// <summary>How B_l moves toward the rescaled estimate J̃_lᵀ each step: the original rule B ← B − η(1 − c)∘B (row-wise
    /// cosines c, plus noise, then rescaled to the initial norm) by default, η_B = 0.01 constant; see <see cref="FeedbackRules"/>
    /// for the alternatives.</summary>
    public FeedbackRule Rule { get; init; } = FeedbackRules.Original(Schedule.Constant(0.01f));
    /// <summary>Where the activity tangent δ enters (default: the hidden output h_l).</summary>
    public TangentPlacement Placement { get; init; } = TangentPlacement.HiddenOutput;
    /// <summary>One tangent channel for every hidden site (Joint, the default) or one per site (PerLayer, L× the tangent work).</summary>
    public TangentMode Mode { get; init; } = TangentMode.Joint;
    /// <summary>Average J̃_l over steps as a cumulative moving average, J̄_t = J̄_{t−1} + (J̃_t − J̄_{t−1})/(t + 1) (default);
    /// false: each step's estimate alone. The average is part of the estimator's checkpointed state.</summary>
    public bool MovingAverage { get; init; } = true;
    /// <summary>Short name of the rule for reports ("original", "alt1", ...).</summary>
    public string Label { get; init; } = "original";
}

/// <summary>
/// Direct feedback alignment (Nøkland 2016) on sites: at every site s_l but the output site, δs_l = (B_l e) ⊙ f'(s_l)
/// with e = ∂L/∂ŷ of the main loss, B_l ∈ R^{(site elements) × o} and f' the site's activation Jacobian (I without one);
/// the output site gets its exact error e. Each δ becomes a parameter update through the site op's own VJP (dense:
/// δs_l x_lᵀ). With <see cref="Grape"/> set, GrAPE: before each
/// DFA step every B_l is moved toward J̃_lᵀ, the Jacobian ∂ŷ/∂h_l estimated by one JVP with δ ~ N(0, I):
/// J̃_l = (1/B) Σ_b (J_l δ_b) δ_bᵀ, E[J̃_l] = J_l.
/// <para>Sequence models (the output and every site [T, ·] with the same T: a transformer's) get one B_l ∈ R^{D_l × V}
/// shared by the T positions, as DFA for transformers is used: δs_{b,t} = B_l e_{b,t}. A B over whole sequences would
/// be (T·D) × (T·V): 537 MB per site for T = 64, D = 128, V = 256. GrAPE then aligns B_l with the same-position Jacobian
/// ∂ŷ_t/∂h_t: J̃_l = (1/(B·T)) Σ_{b,t} (J δ)_{b,t} δ_{b,t}ᵀ, whose expectation is the mean diagonal block (attention's
/// cross-position terms average out, δ being independent across positions).</para>
/// </summary>
public sealed record DirectFeedbackAlignment(FeedbackInitialization Initialization = FeedbackInitialization.XavierUniform, GrapeOptions? Grape = null, ulong Seed = 0) : Guesser
{
    /// <summary>"DFA", or "GrAPE (label)" with the rule's <see cref="GrapeOptions.Label"/>.</summary>
    public override string Name => Grape is null ? "DFA" : $"GrAPE ({Grape.Label})";

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">The model's output is not a site, or a feedback matrix would exceed one buffer
    /// (2³¹ − 1 floats).</exception>
    public override GradientEstimator Compile(ParameterStore parameters, BatchShard shard) => new FeedbackEstimator(this, parameters, shard);
}

/// <summary>Estimators that keep feedback matrices report how well they match the true Jacobians.</summary>
public interface IFeedbackAlignment
{
    /// <summary>Per hidden site, the mean over rows i of cos(B_l[i], J_lᵀ[i]) with J_l = ∂ŷ/∂h_l averaged over the
    /// batch in <paramref name="oracle"/>'s inputs, computed exactly by pull-backs.</summary>
    double[] MeasureAlignment(BackpropEstimator oracle);
}

internal sealed class FeedbackEstimator : GradientEstimator, IFeedbackAlignment
{
    private readonly DirectFeedbackAlignment _guesser;
    private readonly Plan _plan;
    private readonly Site[] _sites;        // every site, in order: the update path writes them in this order
    private readonly Site[] _hidden;       // the sites that get B_l e: all but the output site
    private readonly int[] _hiddenIndex;   // per site: its index in _hidden, or −1 for the output site
    private readonly View[] _feedback, _jacobians;
    /// <summary>GrAPE: per hidden site, the positions that lay an outputs × n matrix out as n × outputs (as floats, for
    /// <see cref="Backend.GatherColumns"/>): index[i·o + k] = k·n + i.</summary>
    private readonly View[] _transposeIndices;
    private readonly FeedbackContext[] _contexts;
    private readonly ParameterUpdate _update;
    private readonly View _error, _delta, _estimate, _estimateTransposed, _gradient;
    private readonly int _outputs, _channels;
    /// <summary>Rows of the feedback GEMMs per example: T for sequence models (one B shared by the positions), else 1.</summary>
    private readonly int _positions;
    private readonly Dictionary<int, PullBack> _pullBacks = [];

    private readonly BatchShard _shard;

    public FeedbackEstimator(DirectFeedbackAlignment guesser, ParameterStore parameters, BatchShard shard)
    {
        int batchSize = shard.Count;
        _shard = shard;
        var model = parameters.Model;
        var backend = parameters.Backend;
        if (!model.Sites.Any(s => s.Node == model.Output))
            throw new ArgumentException($"Feedback alignment needs the model's output {model.Output} to be a site (made by a parameterised op): its error is projected to the other sites.");
        _guesser = guesser;
        _sites = [.. model.Sites];
        _hidden = [.. _sites.Where(s => s.Node != model.Output)];
        _hiddenIndex = [.. _sites.Select(s => Array.IndexOf(_hidden, s))];
        // Sequence models: the output and every hidden site [T, ·] with the same T share B over positions.
        var output = model.Output.Shape;
        _positions = output.Rank == 2 && _hidden.All(s => s.Node.Shape.Rank == 2 && s.Node.Shape[0] == output[0]) ? output[0] : 1;
        _outputs = output.ElementCount / _positions;
        // B_l is (site elements per position) × (outputs per position); checked before anything is allocated, so that a size
        // beyond one buffer is refused, not wrapped.
        foreach (var site in _hidden)
            if ((long)(site.ElementCount / _positions) * _outputs > int.MaxValue)
                throw new ArgumentException($"Feedback alignment: the feedback matrix of {site} would be {site.ElementCount / _positions} × {_outputs} " +
                    $"(its elements per {(_positions > 1 ? "position" : "example")} × the output {model.Output}'s) = {(long)(site.ElementCount / _positions) * _outputs} floats, " +
                    $"more than one buffer holds ({int.MaxValue}). Use a narrower site or a smaller output.");
        var grape = guesser.Grape;
        _channels = grape is not null && grape.Mode == TangentMode.PerLayer ? Math.Max(1, _hidden.Length) : 1;
        _plan = Plan.Compile(parameters, new PlanOptions(batchSize)
        {
            TangentCount = _channels,
            SaveDerivatives = true,
            Seeds = grape is null ? [] : [.. _hidden.Select(s => new TangentSeed(Placed(s)))],
            // J_l = ∂y/∂h_l of the function the model computes: local losses' stop-gradients do not change it.
            TangentsCrossStopGradients = true,
        });
        int widest = Math.Max(1, _hidden.Select(s => s.ElementCount).DefaultIfEmpty(1).Max());
        int rows = batchSize * _positions;
        _feedback = new View[_hidden.Length];
        _jacobians = new View[_hidden.Length];
        _transposeIndices = new View[_hidden.Length];
        _contexts = new FeedbackContext[_hidden.Length];
        for (int l = 0; l < _hidden.Length; l++)
        {
            int n = _hidden[l].ElementCount / _positions; // B_l ∈ R^{site elements (per position) × outputs}, whatever the site's shape
            _feedback[l] = Allocate(backend, n * _outputs);
            float bound = guesser.Initialization switch
            {
                FeedbackInitialization.XavierUniform => MathF.Sqrt(6f / (n + _outputs)),
                FeedbackInitialization.KaimingUniform => MathF.Sqrt(6f / _outputs),
                _ => 0f,
            };
            var key = new RandomKey(guesser.Seed, 0xFEEDBAC).Derive((ulong)l);
            if (guesser.Initialization == FeedbackInitialization.Gaussian) backend.FillNormal(key, 0, 0f, 1f / MathF.Sqrt(_outputs), _feedback[l]);
            else backend.FillUniform(key, 0, -bound, bound, _feedback[l]);
            if (grape is null) continue;
            _jacobians[l] = Allocate(backend, n * _outputs);
            backend.Fill(0f, _jacobians[l]);
            _transposeIndices[l] = TransposeIndices(backend, n, _outputs);
            _contexts[l] = new FeedbackContext(backend, _feedback[l], Allocate(backend, n * _outputs), Allocate(backend, n),
                Allocate(backend, n * _outputs), Allocate(backend, n), _outputs, Math.Sqrt(backend.SumOfSquares(_feedback[l])));
            backend.Fill(0f, _plan.Seed(Placed(_hidden[l])));
        }
        _error = Allocate(backend, rows * _outputs);
        _delta = Allocate(backend, batchSize * widest);
        _estimate = Allocate(backend, widest / _positions * _outputs);
        _estimateTransposed = Allocate(backend, grape is null ? 0 : widest / _positions * _outputs);
        _gradient = Allocate(backend, parameters.All.Length);
        _update = _plan.CreateParameterUpdate([.. _sites.Select(s => s.Node)], _gradient);
    }

    private static View Allocate(Backend backend, int length) => new(backend.Allocate(Math.Max(1, length)), 0, length);

    /// <summary>The gather positions that transpose an o × n matrix into n × o: entry i·o + k reads k·n + i; none (an empty
    /// view: <see cref="Align"/> then multiplies δᵀ y directly) from 2²⁴ entries on, where positions stop being exact as floats.</summary>
    private static View TransposeIndices(Backend backend, int n, int outputs)
    {
        if ((long)n * outputs >= 1 << 24) return default;
        var host = new float[n * outputs];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < outputs; k++) host[i * outputs + k] = k * n + i;
        var indices = Allocate(backend, host.Length);
        backend.CopyFromHost(host, indices);
        return indices;
    }

    /// <summary>Where δ enters: h = f(s) (the default) or the site s itself.</summary>
    private Node Placed(Site site) => _guesser.Grape!.Placement == TangentPlacement.PreActivation ? site.Node : site.Output;

    public override Plan Plan => _plan;

    /// <summary>The feedback matrices (n_l × o each, row-major), for inspection and tests.</summary>
    internal View Feedback(int layer) => _feedback[layer];

    public override IEnumerable<(string Name, View Buffer)> StateBuffers =>
        _feedback.Select((b, l) => ($"feedback{l + 1}", b)).Concat(_guesser.Grape?.MovingAverage == true ? _jacobians.Select((j, l) => ($"jacobian{l + 1}", j)) : []);

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        var backend = _plan.Backend;
        int batch = _plan.BatchSize;
        if (_guesser.Grape is null) _plan.Forward();
        else
        {
            // δ does not depend on the forward values: draw it first, then run forward and JVP fused, site by site.
            // δ per example at its global index, so that ranks holding shares of the batch draw what one process would.
            for (int l = 0; l < _hidden.Length; l++) _shard.Fill(backend, key.Derive((ulong)l), Placed(_hidden[l]).Shape.ElementCount, uniform: false, 0f, 1f, Activity(l));
            _plan.ForwardJvp();
            for (int l = 0; l < _hidden.Length; l++) Align(l, step, key.Derive(1000 + (ulong)l));
        }
        // e = ∂L/∂ŷ of the mean loss: the loss's saved per-example derivative, divided by B (the global batch: a rank's
        // updates are then its share of the sum).
        backend.Scale(_plan.Derivative(_plan.Model.Loss), 1f / _shard.GlobalBatch, _error);
        for (int i = 0; i < _sites.Length; i++)
        {
            int l = _hiddenIndex[i];
            if (l < 0) { _update.Write(i, _error); continue; } // the output site: its exact error
            var site = _hidden[l];
            int n = site.ElementCount / _positions, rows = batch * _positions;
            var delta = _delta.Slice(0, rows * n);
            // δs_l = (B_l e) ⊙ f'(s_l), per example (per position in a sequence model): rows e_rᵀ B_lᵀ.
            backend.Gemm(Transpose.No, Transpose.Yes, rows, n, _outputs, 1f, _error, _outputs, _feedback[l], _outputs, 0f, delta, n);
            if (site.Activation is { } activation)
                backend.MultiplyChannels(_plan.Derivative(activation), delta, delta, accumulate: false);
            _update.Write(i, delta);
        }
        return (_gradient, _plan.MeanLoss());
    }

    /// <summary>The δ of hidden site l: its own channel of the seed (the only non-zero one in per-layer mode).</summary>
    private View Activity(int layer)
    {
        var seed = _plan.Seed(Placed(_hidden[layer]));
        return _channels == 1 ? seed : seed.Channel(layer, seed.Length / _channels);
    }

    /// <summary>J̃_lᵀ = (1/B) Σ_b δ_b (J_l δ_b)ᵀ, its running mean J̄ᵀ, the target g̃ = J̄ᵀ·‖B‖/‖J̄ᵀ‖, row cosines, then the rule.</summary>
    private void Align(int l, long step, RandomKey key)
    {
        var backend = _plan.Backend;
        var grape = _guesser.Grape!;
        int n = _hidden[l].ElementCount / _positions, rows = _plan.BatchSize * _positions;
        var outputTangent = _plan.Tangent(_plan.Model.Output);
        var y = _channels == 1 ? outputTangent : outputTangent.Channel(l, rows * _outputs);
        var estimate = _estimate.Slice(0, n * _outputs);
        var transposed = _estimateTransposed.Slice(0, n * _outputs);
        // Averaged over the global batch's rows; data parallel, each rank's sum over its rows, then summed over the ranks:
        // the alignment statistics every rank then applies the same rule to. Computed as its transpose J̃_l = (1/R) yᵀ δ
        // (outputs × n), then laid out as B_l by a gather: with the site's n as the GEMM's long side the product runs 2–3×
        // faster than δᵀ y, whose few output columns leave the GEMM kernel mostly idle (one thread, n = 32768, 128 rows,
        // 10 outputs: 2.7–3.6 ms against 6.1–8.0 ms; the gather ~0.3 ms).
        float mean = 1f / (_shard.GlobalBatch * _positions);
        if (_transposeIndices[l].Buffer is null)
            backend.Gemm(Transpose.Yes, Transpose.No, n, _outputs, rows, mean, Activity(l), n, y, _outputs, 0f, estimate, _outputs);
        else
        {
            backend.Gemm(Transpose.Yes, Transpose.No, _outputs, n, rows, mean, y, _outputs, Activity(l), n, 0f, transposed, n);
            backend.GatherColumns(transposed, n * _outputs, _transposeIndices[l], estimate);
        }
        _shard.Communicator.AllReduceSum(backend, estimate);
        // Cumulative moving average over steps: J̄_t = J̄_{t−1} + (J̃_t − J̄_{t−1})/(t + 1).
        float weight = grape.MovingAverage ? 1f / (step + 1) : 1f;
        backend.Axpby(weight, estimate, 1f - weight, _jacobians[l]);
        var context = _contexts[l];
        double targetNorm = Math.Sqrt(backend.SumOfSquares(_jacobians[l])), feedbackNorm = Math.Sqrt(backend.SumOfSquares(_feedback[l]));
        backend.Scale(_jacobians[l], targetNorm > 0 ? (float)(feedbackNorm / targetNorm) : 0f, context.Target);
        backend.RowCosines(context.Target, _feedback[l], _outputs, context.RowCosines);
        grape.Rule.Apply(context, step, key);
    }

    public double[] MeasureAlignment(BackpropEstimator oracle)
    {
        var plan = oracle.Plan;
        var backend = plan.Backend;
        int rows = plan.BatchSize * _positions;
        // Data parallel, the oracle holds this rank's share and the rows are summed over the ranks; in one process the oracle
        // may hold any batch.
        int totalRows = _shard.IsWhole ? rows : _shard.GlobalBatch * _positions;
        plan.Forward();
        var result = new double[_hidden.Length];
        var oneHot = new float[rows * _outputs];
        for (int l = 0; l < _hidden.Length; l++)
        {
            var h = _hidden[l].Output;
            if (!_pullBacks.TryGetValue(l, out var pullBack)) _pullBacks[l] = pullBack = plan.CreatePullBack([plan.Model.Output], h);
            int n = h.Shape.ElementCount / _positions;
            var jacobianTransposed = new float[n * _outputs];
            var row = new float[n];
            var sums = Allocate(backend, n);
            for (int k = 0; k < _outputs; k++)
            {
                // Row k of J_l for every example: pull the unit cotangent e_k at ŷ back to h_l; then average over the batch
                // (in a sequence model e_k at every position, averaged over examples and positions).
                Array.Clear(oneHot);
                for (int r = 0; r < rows; r++) oneHot[r * _outputs + k] = 1f;
                backend.CopyFromHost(oneHot, pullBack.Cotangent(plan.Model.Output));
                pullBack.Run();
                backend.SumRows(pullBack.Cotangent(h), sums, accumulate: false);
                // Data parallel: the rows of every rank's share of the batch (the oracle is compiled for this rank's share).
                _shard.Communicator.AllReduceSum(backend, sums);
                backend.CopyToHost(sums, row);
                for (int i = 0; i < n; i++) jacobianTransposed[i * _outputs + k] = row[i] / totalRows;
            }
            var feedback = new float[n * _outputs];
            backend.CopyToHost(_feedback[l], feedback);
            double total = 0;
            for (int i = 0; i < n; i++) total += Metrics.Cosine(feedback.AsSpan(i * _outputs, _outputs), jacobianTransposed.AsSpan(i * _outputs, _outputs));
            result[l] = total / n;
        }
        return result;
    }
}
