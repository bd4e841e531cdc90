using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Autodiff;

/// <summary>
/// A model compiled for one backend, batch size B and tangent count K. The plan owns every buffer
/// (values, K-channel tangents, cotangents, saved derivatives); running it allocates nothing.
/// Typical use: <see cref="SetInput"/>, then <see cref="Forward"/> and <see cref="Jvp"/> (or the fused
/// <see cref="ForwardJvp"/>), then read <see cref="Tangent"/> of the loss; or <see cref="Backward"/> for
/// the exact gradient of the mean loss L = (1/B) Σ_b ℓ_b.
/// A plan is not thread-safe.
/// </summary>
public sealed class Plan
{
    private readonly NodeBuffers[] _buffers;
    private readonly int[] _forwardOrder;      // non-leaf nodes in topological order
    private readonly int[] _tangentOrder;      // nodes with non-zero tangents in topological order
    private readonly BackwardSchedule _backward;
    private readonly bool[] _tangentNonZero;
    private readonly bool[] _hasInputTangent;  // a non-leaf whose rule must run (some input tangent non-zero)
    private readonly bool[] _seeded;
    private readonly bool[] _readable;
    private readonly RandomKey?[] _generators;
    private readonly bool _saveAuxiliary;
    private bool _forwardDone;

    public Model Model { get; }
    public ParameterStore Parameters { get; }
    public Backend Backend => Parameters.Backend;
    public PlanOptions Options { get; }
    public int BatchSize => Options.BatchSize;
    public int TangentCount => Options.TangentCount;
    /// <summary>Bytes of the buffers this plan allocated (parameters excluded: they live in the store).</summary>
    public long AllocatedBytes { get; }

    private Plan(ParameterStore parameters, PlanOptions options, NodeBuffers[] buffers, int[] forwardOrder, int[] tangentOrder,
        BackwardSchedule backward, bool[] tangentNonZero, bool[] hasInputTangent, bool[] seeded, bool[] readable,
        RandomKey?[] generators, bool saveAuxiliary, long allocatedBytes)
    {
        Model = parameters.Model;
        Parameters = parameters;
        Options = options;
        _buffers = buffers;
        _forwardOrder = forwardOrder;
        _tangentOrder = tangentOrder;
        _backward = backward;
        _tangentNonZero = tangentNonZero;
        _hasInputTangent = hasInputTangent;
        _seeded = seeded;
        _readable = readable;
        _generators = generators;
        _saveAuxiliary = saveAuxiliary;
        AllocatedBytes = allocatedBytes;
    }

    /// <summary>Compiles <paramref name="parameters"/>' model on the store's backend.</summary>
    public static Plan Compile(ParameterStore parameters, PlanOptions options)
    {
        var model = parameters.Model;
        var nodes = model.Nodes;
        int count = nodes.Length, batch = options.BatchSize, channels = options.TangentCount;
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(options), $"Batch size must be at least 1; got {batch}.");
        if (channels < 1) throw new ArgumentOutOfRangeException(nameof(options), $"Tangent count K must be at least 1; got {channels}.");
        if (options.ReuseBuffers && options.Gradients)
            throw new ArgumentException("ReuseBuffers cannot be combined with Gradients: the backward pass needs every forward value.", nameof(options));

        var seeded = new bool[count];
        var generators = new RandomKey?[count];
        foreach (var seed in options.Seeds)
        {
            if (!model.Contains(seed.Node)) throw new ArgumentException($"Seed node {seed.Node} is not a node of this model.", nameof(options));
            if (!seed.Node.Op.IsDifferentiable) throw new ArgumentException($"Cannot inject a tangent at {seed.Node}: no derivative flows through it.", nameof(options));
            if (seeded[seed.Node.Id]) throw new ArgumentException($"Node {seed.Node} is seeded twice.", nameof(options));
            seeded[seed.Node.Id] = true;
            generators[seed.Node.Id] = seed.Generator;
        }
        var retained = new bool[count];
        foreach (var node in options.Retain)
        {
            if (!model.Contains(node)) throw new ArgumentException($"Retained node {node} is not a node of this model.", nameof(options));
            retained[node.Id] = true;
        }
        retained[model.Loss.Id] = retained[model.Output.Id] = true;

        // Symbolic zeros: a tangent is non-zero iff the node is seeded or a differentiable input of it is.
        var tangentNonZero = new bool[count];
        var hasInputTangent = new bool[count];
        foreach (var node in nodes)
        {
            if (!node.Op.IsLeaf && node.Op.IsDifferentiable)
                foreach (var input in node.Inputs) hasInputTangent[node.Id] |= tangentNonZero[input];
            tangentNonZero[node.Id] = seeded[node.Id] || hasInputTangent[node.Id];
        }

        // Cotangents: nodes on a path from a parameter (or differentiable input) to the loss.
        var needsCotangent = new bool[count];
        if (options.Gradients)
        {
            var fromSource = new bool[count];
            foreach (var node in nodes)
            {
                fromSource[node.Id] = node.Op.IsLeaf ? node.Op.IsDifferentiable && (node.IsParameter || node.Op is InputOp) : node.Op.IsDifferentiable && node.Inputs.Any(i => fromSource[i]);
            }
            var reachesLoss = new bool[count];
            reachesLoss[model.Loss.Id] = true;
            for (int id = count - 1; id >= 0; id--)
                if (reachesLoss[id] && !nodes[id].Op.IsLeaf)
                    foreach (var input in nodes[id].Inputs) reachesLoss[input] |= nodes[input].Op.IsDifferentiable;
            for (int id = 0; id < count; id++) needsCotangent[id] = fromSource[id] && reachesLoss[id];
        }

        bool differentiating = options.Gradients || options.Seeds.Length > 0 || options.SaveDerivatives;
        bool reuse = options.ReuseBuffers;
        var lastUse = new int[count];
        for (int id = 0; id < count; id++) lastUse[id] = id;
        foreach (var node in nodes)
            foreach (var input in node.Inputs) lastUse[input] = Math.Max(lastUse[input], node.Id);
        int end = count;
        int LastStep(int id) => retained[id] || nodes[id].Op.IsLeaf ? end : lastUse[id];

        var buffers = new NodeBuffers[count];
        for (int id = 0; id < count; id++) buffers[id] = new NodeBuffers();
        var planner = new BufferPlanner(reuse);
        foreach (var node in nodes)
        {
            int id = node.Id, elements = node.ElementCount(batch);
            var b = buffers[id];
            if (node.IsParameter) b.Value = parameters[node];
            else planner.Request(elements, node.Op.IsLeaf ? -1 : id, LastStep(id), v => b.Value = v);

            int auxiliary = node.Op.AuxiliaryElements(node, nodes, batch);
            if (differentiating || node.Op.ForwardWritesAuxiliary)
                planner.Request(auxiliary, id, retained[id] ? end : id, v => b.Auxiliary = v);

            if (tangentNonZero[id])
            {
                int tangentElements = channels * elements;
                if (node.Op.IsLeaf)
                    planner.Request(tangentElements, generators[id] is null ? -1 : id, generators[id] is null ? end : LastStep(id), v => b.Tangent = b.Seed = v);
                else
                {
                    planner.Request(tangentElements, id, LastStep(id), v => b.Tangent = v);
                    if (seeded[id])
                        planner.Request(tangentElements, generators[id] is null ? -1 : id, generators[id] is null ? end : id, v => b.Seed = v);
                }
            }
            if (needsCotangent[id] && !node.IsParameter) planner.Request(elements, -1, end, v => b.Cotangent = v);
        }
        long allocated = planner.Allocate(parameters.Backend);

        // Parameter gradients share one flat vector in the store's layout, so update rules see them whole.
        var gradients = View.Empty;
        if (options.Gradients)
        {
            gradients = new View(parameters.Backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
            allocated += parameters.All.Length;
            var slices = ParameterLayout.Of(model).Slices(model, gradients);
            foreach (var p in model.Parameters)
                if (needsCotangent[p.Id]) buffers[p.Id].Cotangent = slices[p.Id];
        }

        var readable = new bool[count];
        for (int id = 0; id < count; id++) readable[id] = !reuse || retained[id] || nodes[id].Op.IsLeaf;
        var forwardOrder = nodes.Where(n => !n.Op.IsLeaf).Select(n => n.Id).ToArray();
        var tangentOrder = nodes.Where(n => tangentNonZero[n.Id]).Select(n => n.Id).ToArray();
        var backwardOrder = nodes.Where(n => needsCotangent[n.Id] && !n.Op.IsLeaf && n != model.Loss).Select(n => n.Id).Reverse().ToArray();
        // Gradients of parameters off the loss path are never written: zero them once here.
        if (options.Gradients) parameters.Backend.Fill(0f, gradients);
        var backward = BackwardSchedule.Build(model, [model.Loss.Id, .. backwardOrder], buffers, model.Loss.Id);
        return new Plan(parameters, options, buffers, forwardOrder, tangentOrder, backward, tangentNonZero,
            hasInputTangent, seeded, readable, generators, differentiating, allocated * sizeof(float)) { ParameterGradients = gradients };
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// <summary>
    /// Copies a batch into an input node: B × (per-example elements) values, examples one after the
    /// other. Class labels must be whole numbers in [0, classes). Checked before anything is written.
    /// </summary>
    public void SetInput(Node input, ReadOnlySpan<float> values)
    {
        CheckNode(input);
        if (input.Op is not (InputOp or ClassLabelsOp))
            throw new ArgumentException($"{input} is not an input of the model; inputs are: {string.Join(", ", Model.Inputs)}.", nameof(input));
        int expected = input.ElementCount(BatchSize);
        if (values.Length != expected)
            throw new ArgumentException($"Input {input} expects {expected} values (batch {BatchSize} × {input.Shape.ElementCount} per example); got {values.Length}.", nameof(values));
        if (input.Op is ClassLabelsOp labels)
            for (int i = 0; i < values.Length; i++)
                if (values[i] < 0 || values[i] >= labels.Classes || values[i] != MathF.Floor(values[i]))
                    throw new ArgumentException($"Input {input}: example {i} has label {values[i]}; labels must be whole numbers in [0, {labels.Classes}).", nameof(values));
        Backend.CopyFromHost(values, _buffers[input.Id].Value);
        _forwardDone = false;
    }

    /// <summary>Replaces the Philox stream of a generated seed (e.g. a new key per step).</summary>
    public void SetSeedGenerator(Node node, RandomKey key)
    {
        CheckNode(node);
        if (_generators[node.Id] is null) throw new ArgumentException($"Node {node} was not compiled with a generated seed.", nameof(node));
        _generators[node.Id] = key;
    }

    // ---- running ------------------------------------------------------------------------------

    /// <summary>Computes every value (and the derivatives the rules need) from the inputs and parameters.</summary>
    public void Forward()
    {
        foreach (var id in _forwardOrder) RunForward(id);
        _forwardDone = true;
    }

    /// <summary>Pushes the seeds through the graph: every reached node gets its K-channel tangent.
    /// Needs the values of the last <see cref="Forward"/>.</summary>
    public void Jvp()
    {
        if (Options.ReuseBuffers) throw new InvalidOperationException("This plan reuses buffers: run the fused ForwardJvp() instead of Forward() then Jvp().");
        RequireForward();
        foreach (var id in _tangentOrder) RunJvp(id);
    }

    /// <summary>Forward and JVP in one pass, node by node (the primal is computed once).</summary>
    public void ForwardJvp()
    {
        int t = 0;
        foreach (var id in _forwardOrder)
        {
            while (t < _tangentOrder.Length && _tangentOrder[t] < id) RunJvp(_tangentOrder[t++]); // leaves
            RunForward(id);
            if (t < _tangentOrder.Length && _tangentOrder[t] == id) RunJvp(_tangentOrder[t++]);
        }
        while (t < _tangentOrder.Length) RunJvp(_tangentOrder[t++]);
        _forwardDone = true;
    }

    /// <summary>
    /// The exact gradient of the mean loss L = (1/B) Σ_b ℓ_b: seeds ℓ̄_b = 1/B and runs every VJP rule
    /// in reverse. Parameter gradients are then in <see cref="Gradient"/>, per-example cotangents of
    /// activations in <see cref="Cotangent"/>. Needs the values of the last <see cref="Forward"/>.
    /// </summary>
    public void Backward()
    {
        if (!Options.Gradients) throw new InvalidOperationException("This plan was compiled without gradients; set PlanOptions.Gradients = true.");
        RequireForward();
        Backend.Fill(1f / BatchSize, _buffers[Model.Loss.Id].Cotangent);
        RunBackward(_backward, _buffers);
    }

    /// <summary>The mean loss (1/B) Σ_b ℓ_b of the last forward pass.</summary>
    public double MeanLoss()
    {
        RequireForward();
        return Backend.Sum(_buffers[Model.Loss.Id].Value) / BatchSize;
    }

    /// <summary>
    /// Prepares a partial pull-back: a cotangent written at <paramref name="from"/> is carried by the VJP
    /// rules (local Jacobians only) back to <paramref name="to"/>, touching no parameter gradient.
    /// k-layer downstream guessing pulls noise at s_{i+k} back to s_i this way.
    /// </summary>
    public PullBack CreatePullBack(Node from, Node to)
    {
        if (!Options.Gradients) throw new InvalidOperationException("Pull-backs need a plan compiled with PlanOptions.Gradients = true.");
        CheckNode(from); CheckNode(to);
        var nodes = Model.Nodes;
        // Nodes on a path to → from: reachable forward from `to` and backward from `from`.
        var downstream = new bool[nodes.Length];
        downstream[to.Id] = true;
        foreach (var node in nodes)
            if (!node.Op.IsLeaf && node.Inputs.Any(i => downstream[i])) downstream[node.Id] = true;
        var upstream = new bool[nodes.Length];
        upstream[from.Id] = true;
        for (int id = nodes.Length - 1; id >= 0; id--)
            if (upstream[id]) foreach (var input in nodes[id].Inputs) upstream[input] = true;
        if (!upstream[to.Id]) throw new ArgumentException($"{from} does not depend on {to}: there is nothing to pull back.");

        var onPath = new bool[nodes.Length];
        var restricted = new NodeBuffers[nodes.Length];
        for (int id = 0; id < nodes.Length; id++)
        {
            onPath[id] = downstream[id] && upstream[id];
            if (onPath[id] && _buffers[id].Cotangent.IsEmpty)
                throw new ArgumentException($"{nodes[id]} on the path from {to} to {from} has no cotangent in this plan (it is off the loss path).");
            var b = _buffers[id];
            restricted[id] = new NodeBuffers { Value = b.Value, Auxiliary = b.Auxiliary, Cotangent = onPath[id] ? b.Cotangent : View.Empty };
        }
        var order = Enumerable.Range(0, nodes.Length).Where(id => onPath[id] && id != to.Id && !nodes[id].Op.IsLeaf).Reverse().ToArray();
        return new PullBack(this, BackwardSchedule.Build(Model, order, restricted, from.Id), restricted);
    }

    internal void RunPullBack(BackwardSchedule schedule, NodeBuffers[] buffers)
    {
        RequireForward();
        RunBackward(schedule, buffers);
    }

    private void RunForward(int id) =>
        Model.Nodes[id].Op.Forward(new RuleContext(Backend, BatchSize, TangentCount, Model.Nodes[id], _buffers), _saveAuxiliary);

    private void RunJvp(int id)
    {
        var node = Model.Nodes[id];
        var b = _buffers[id];
        if (_generators[id] is { } key) Backend.FillNormal(key, 0, 0f, 1f, b.Seed);
        if (node.Op.IsLeaf) return;
        if (_hasInputTangent[id])
        {
            node.Op.Jvp(new RuleContext(Backend, BatchSize, TangentCount, node, _buffers));
            if (_seeded[id]) Backend.Add(b.Tangent, b.Seed, b.Tangent);
        }
        else Backend.Copy(b.Seed, b.Tangent);
    }

    private void RunBackward(BackwardSchedule schedule, NodeBuffers[] buffers)
    {
        foreach (var view in schedule.Clear) Backend.Fill(0f, view);
        for (int i = 0; i < schedule.Order.Length; i++)
        {
            var node = Model.Nodes[schedule.Order[i]];
            node.Op.Vjp(new RuleContext(Backend, BatchSize, TangentCount, node, buffers, schedule.OverwriteMasks[i]));
        }
    }

    // ---- reading ------------------------------------------------------------------------------

    /// <summary>The value of a node, [B, ...shape] (parameters: their store value).</summary>
    public View Value(Node node) => Readable(node, _buffers[node.Id].Value, "value");

    /// <summary>What the forward pass saved for the derivative rules: f'(x) for an elementwise node (the
    /// ReLU mask of DESIGN.md §2), ∂ℓ_b/∂prediction for a loss node. Empty when not saved.</summary>
    public View Derivative(Node node) => Readable(node, _buffers[node.Id].Auxiliary, "saved derivative");

    /// <summary>The K-channel tangent [K, B, ...shape]; empty (a symbolic zero) when no seed reaches the node.
    /// The loss's tangent holds ℓ̇_{k,b}; divide by B for the per-example JVP of ℓ_b / B.</summary>
    public View Tangent(Node node) => Readable(node, _buffers[node.Id].Tangent, "tangent");

    /// <summary>Where to write the tangent injected at a seeded node, [K, B, ...shape] or [K, ...shape].</summary>
    public View Seed(Node node)
    {
        CheckNode(node);
        if (!_seeded[node.Id]) throw new ArgumentException($"{node} is not seeded in this plan; add it to PlanOptions.Seeds.", nameof(node));
        return _buffers[node.Id].Seed;
    }

    /// <summary>∂(mean loss)/∂value per example after <see cref="Backward"/>; the pulled-back cotangent after a pull-back.</summary>
    public View Cotangent(Node node)
    {
        CheckNode(node);
        var view = _buffers[node.Id].Cotangent;
        if (view.IsEmpty) throw new ArgumentException($"{node} has no cotangent: it is off every path from a parameter to the loss, or the plan has no gradients.", nameof(node));
        return view;
    }

    /// <summary>∂L/∂θ for every parameter after <see cref="Backward"/>, flat in the store's layout
    /// (parameters off the loss path stay zero).</summary>
    public View ParameterGradients { get; private init; }

    /// <summary>∂L/∂θ for a parameter after <see cref="Backward"/>.</summary>
    public View Gradient(Node parameter)
    {
        if (!parameter.IsParameter) throw new ArgumentException($"{parameter} is not a parameter.", nameof(parameter));
        return Cotangent(parameter);
    }

    /// <summary>True when no seed reaches the node (its tangent is a symbolic zero).</summary>
    public bool IsTangentZero(Node node)
    {
        CheckNode(node);
        return !_tangentNonZero[node.Id];
    }

    private View Readable(Node node, View view, string what)
    {
        CheckNode(node);
        if (!_readable[node.Id])
            throw new InvalidOperationException($"The {what} of {node} is not kept: this plan reuses buffers. Add the node to PlanOptions.Retain.");
        return view;
    }

    private void CheckNode(Node node)
    {
        if (!Model.Contains(node)) throw new ArgumentException($"{node} is not a node of this plan's model.", nameof(node));
    }

    private void RequireForward()
    {
        if (!_forwardDone) throw new InvalidOperationException("Run Forward() (or ForwardJvp()) after setting the inputs first.");
    }
}

/// <summary>A prepared partial pull-back (see <see cref="Plan.CreatePullBack"/>). Running it allocates nothing.</summary>
public sealed class PullBack
{
    private readonly Plan _plan;
    private readonly BackwardSchedule _schedule;
    private readonly NodeBuffers[] _buffers;

    internal PullBack(Plan plan, BackwardSchedule schedule, NodeBuffers[] buffers) => (_plan, _schedule, _buffers) = (plan, schedule, buffers);

    /// <summary>Pulls the cotangent at the start node back to the end node (read it with <see cref="Plan.Cotangent"/>).</summary>
    public void Run() => _plan.RunPullBack(_schedule, _buffers);
}

/// <summary>
/// The order of VJP rules and, for each, which input cotangents it writes first (and so overwrites,
/// which saves clearing them), plus the cotangents no rule writes (cleared before the pass).
/// </summary>
internal sealed record BackwardSchedule(int[] Order, int[] OverwriteMasks, View[] Clear)
{
    public static BackwardSchedule Build(Model model, int[] order, NodeBuffers[] buffers, int seedNode)
    {
        var written = new bool[model.Nodes.Length];
        written[seedNode] = true;
        var masks = new int[order.Length];
        for (int i = 0; i < order.Length; i++)
        {
            var inputs = model.Nodes[order[i]].Inputs;
            for (int j = 0; j < inputs.Length; j++)
                if (!buffers[inputs[j]].Cotangent.IsEmpty && !written[inputs[j]])
                {
                    masks[i] |= 1 << j;
                    written[inputs[j]] = true;
                }
        }
        var clear = Enumerable.Range(0, buffers.Length).Where(id => !written[id] && !buffers[id].Cotangent.IsEmpty)
            .Select(id => buffers[id].Cotangent).ToArray();
        return new BackwardSchedule(order, masks, clear);
    }
}
