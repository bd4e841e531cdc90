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
public sealed class Plan : IDisposable
{
    private readonly List<DeviceBuffer> _owned;  // every buffer this plan (and its pull-backs) allocated, given back by Dispose
    private bool _disposed;
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
    private readonly View _scratch;
    private bool _forwardDone, _backwardDone;

    /// <summary>The compiled model.</summary>
    public Model Model { get; }
    /// <summary>The parameter values the plan reads (and its parameter updates write); shared with other plans of the model.</summary>
    public ParameterStore Parameters { get; }
    /// <summary>The backend every buffer of the plan lives on: the parameter store's.</summary>
    public Backend Backend => Parameters.Backend;
    /// <summary>What the plan was compiled for (batch size, tangent channels, seeds, gradients, buffer reuse, mode).</summary>
    public PlanOptions Options { get; }
    /// <summary>B, the examples per run.</summary>
    public int BatchSize => Options.BatchSize;
    /// <summary>K, the tangent channels: tangents are laid out [K, B, ...].</summary>
    public int TangentCount => Options.TangentCount;
    /// <summary>Bytes of the buffers this plan allocated (parameters excluded: they live in the store).</summary>
    public long AllocatedBytes { get; }

    private Plan(ParameterStore parameters, PlanOptions options, NodeBuffers[] buffers, int[] forwardOrder, int[] tangentOrder,
        BackwardSchedule backward, bool[] tangentNonZero, bool[] hasInputTangent, bool[] seeded, bool[] readable,
        RandomKey?[] generators, bool saveAuxiliary, View scratch, long allocatedBytes, List<DeviceBuffer> owned)
    {
        _owned = owned;
        _scratch = scratch;
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
        retained[model.Output.Id] = true;
        foreach (var loss in model.Losses) retained[loss.Id] = true;
        var bound = new bool[count];
        foreach (var node in options.BoundInputs)
        {
            if (!model.Contains(node)) throw new ArgumentException($"Bound input {node} is not a node of this model.", nameof(options));
            RequireBindable(node, nameof(options));
            if (bound[node.Id]) throw new ArgumentException($"Input {node} is bound twice.", nameof(options));
            bound[node.Id] = true;
        }

        // Symbolic zeros: a tangent is non-zero iff the node is seeded or a differentiable input of it is (a
        // stop-gradient counts as differentiable here when the options let tangents cross it).
        var tangentNonZero = new bool[count];
        var hasInputTangent = new bool[count];
        foreach (var node in nodes)
        {
            bool carriesTangent = node.Op.IsDifferentiable || (options.TangentsCrossStopGradients && node.Op is StopGradientOp);
            if (!node.Op.IsLeaf && carriesTangent)
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
            // Every loss of the objective; no cotangent crosses a non-differentiable op (a stop-gradient).
            var reachesLoss = new bool[count];
            foreach (var loss in model.Losses) reachesLoss[loss.Id] = true;
            for (int id = count - 1; id >= 0; id--)
                if (reachesLoss[id] && !nodes[id].Op.IsLeaf && nodes[id].Op.IsDifferentiable)
                    foreach (var input in nodes[id].Inputs) reachesLoss[input] |= nodes[input].Op.IsDifferentiable;
            for (int id = 0; id < count; id++) needsCotangent[id] = fromSource[id] && reachesLoss[id];
        }

        bool differentiating = options.Gradients || options.Seeds.Length > 0 || options.SaveDerivatives;
        bool reuse = options.ReuseBuffers;
        var lastUse = new int[count];
        for (int id = 0; id < count; id++) lastUse[id] = id;
        foreach (var node in nodes)
            foreach (var input in node.Inputs) lastUse[input] = Math.Max(lastUse[input], node.Id);
        // Steps: the forward pass runs node id at step id; the backward pass (gradients) runs node id's VJP at step
        // 2·count − 1 − id. With reuse, a value lives until its last forward consumer or the last VJP rule that reads it
        // (Op.VjpReadsInput/VjpReadsOutput), a saved derivative until its own VJP, a cotangent from its first writer (the
        // latest consumer's VJP, or the loss seed at the start of the backward pass) to its own VJP: a deep model's
        // backward pass then keeps x and f'(s) of each layer, not s, and a few cotangents for all layers.
        int end = options.Gradients ? 2 * count : count;
        int BackwardStep(int id) => 2 * count - 1 - id;
        var runsVjp = new bool[count];
        var readByBackward = new int[count];
        var firstCotangentWrite = new int[count];
        Array.Fill(readByBackward, -1);
        Array.Fill(firstCotangentWrite, count); // the loss seed at the start of the backward pass; a consumer's VJP later
        if (options.Gradients)
            foreach (var node in nodes)
            {
                if (!needsCotangent[node.Id] || node.Op.IsLeaf) continue;
                runsVjp[node.Id] = true;
                int step = BackwardStep(node.Id);
                if (node.Op.VjpReadsOutput) readByBackward[node.Id] = Math.Max(readByBackward[node.Id], step);
                for (int i = 0; i < node.Inputs.Length; i++)
                {
                    int input = node.Inputs[i];
                    if (node.Op.VjpReadsInput(i)) readByBackward[input] = Math.Max(readByBackward[input], step);
                    // The latest consumer writes first (backward order); the loss, with no consumer, is seeded at step count.
                    firstCotangentWrite[input] = firstCotangentWrite[input] == count ? step : Math.Min(firstCotangentWrite[input], step);
                }
            }
        // A loss is seeded at the start of the backward pass even when it also feeds other ops (a local loss inside a
        // model): its cotangent is written at step count, before any consumer adds to it.
        var isLoss = new bool[count];
        foreach (var loss in model.Losses)
        {
            isLoss[loss.Id] = true;
            if (options.Gradients && needsCotangent[loss.Id]) firstCotangentWrite[loss.Id] = count;
        }
        int LastStep(int id) => retained[id] || nodes[id].Op.IsLeaf ? end : Math.Max(lastUse[id], readByBackward[id]);

        // With reuse (no intermediate tangent readable), an elementwise op whose only consumer is a max pool is folded into the
        // pool's JVP: its tangent f'(x) ⊙ ẋ is never written, the pool gathers f'(x)·ẋ at the winners (the same products): a
        // pass over the activation and a tangent buffer less. Its ẋ and f'(x) then live until the pool's step.
        // Likewise in the backward pass of such a plan: the pool scatters f'(x)·ȳ straight into x̄, the elementwise op's VJP
        // (x̄ = f'(x) ⊙ r̄ over the whole activation) and its cotangent r̄ are dropped. Only for windows that do not overlap
        // and an x that feeds nothing else: each x is then the winner of at most one window and x̄ is written by this rule
        // alone, so f'·(0 + ȳ) and 0 + f'·ȳ are the same number (up to the sign of a zero); overlapping windows would add
        // several ȳ before the product, and another consumer's term would be added in another order. x̄ is then written at
        // the pool's step.
        var foldedInto = new int[count];
        var vjpFoldedInto = new int[count];
        Array.Fill(foldedInto, -1);
        Array.Fill(vjpFoldedInto, -1);
        var tangentLastStep = new int[count];
        for (int id = 0; id < count; id++) tangentLastStep[id] = LastStep(id);
        var consumers = new int[count];
        foreach (var node in nodes)
            foreach (var input in node.Inputs) consumers[input]++;
        if (reuse)
        {
            foreach (var pool in nodes.Where(n => n.Op is MaxPool2dOp))
            {
                var e = nodes[pool.Inputs[0]];
                if (e.Op is not ElementwiseOp || consumers[e.Id] != 1 || retained[e.Id]) continue;
                int x = e.Inputs[0];
                if (!seeded[e.Id] && hasInputTangent[e.Id])
                {
                    foldedInto[e.Id] = pool.Id;
                    tangentLastStep[x] = Math.Max(tangentLastStep[x], pool.Id);
                }
                if (pool.Op is MaxPool2dOp { Stride: var stride, Kernel: var kernel } && stride >= kernel && consumers[x] == 1
                    && runsVjp[e.Id] && runsVjp[pool.Id] && needsCotangent[x])
                {
                    vjpFoldedInto[e.Id] = pool.Id;
                    firstCotangentWrite[x] = Math.Min(firstCotangentWrite[x], BackwardStep(pool.Id));
                }
            }
        }

        // A backprop plan with reuse keeps a ReLU's output y anyway (the next layer's weight gradient reads it), and the ReLU's
        // VJP can read its mask 1[y > 0] from y (ElementwiseOp.DerivativeFromOutput): such a plan saves no mask, one activation
        // per layer less, as autograd keeps. Only where nothing else reads the mask (no tangent, no fold into a pool, no
        // SaveDerivatives, not retained) and x feeds nothing else and is no loss (seeded), so that this rule alone writes x̄ (it
        // overwrites).
        var outputDerivative = new bool[count];
        if (reuse && options.Gradients && !options.SaveDerivatives)
        {
            foreach (var node in nodes)
                if (node.Op is ElementwiseOp { DerivativeFromOutput: true } && runsVjp[node.Id] && !tangentNonZero[node.Id]
                    && foldedInto[node.Id] < 0 && vjpFoldedInto[node.Id] < 0 && !retained[node.Id] && consumers[node.Inputs[0]] == 1
                    && !isLoss[node.Inputs[0]])
                {
                    outputDerivative[node.Id] = true;
                    readByBackward[node.Id] = Math.Max(readByBackward[node.Id], BackwardStep(node.Id));
                }
        }

        // Every buffer length fits an int (checked in long here, with the node named), before anything is planned.
        foreach (var node in nodes)
        {
            long valueElements = (long)(node.IsBatched ? batch : 1) * node.Shape.ElementCount;
            long largest = tangentNonZero[node.Id] ? channels * valueElements : valueElements;
            if (largest > int.MaxValue)
                throw new ArgumentException($"Node {node} needs {largest:N0} floats for batch {batch}{(tangentNonZero[node.Id] ? $" and K = {channels}" : "")}, " +
                    $"more than one buffer holds ({int.MaxValue:N0}). Use a smaller batch size or fewer tangent channels.");
        }
        var buffers = new NodeBuffers[count];
        for (int id = 0; id < count; id++) buffers[id] = new NodeBuffers();
        var planner = new BufferPlanner(reuse);
        foreach (var node in nodes)
        {
            int id = node.Id, elements = node.ElementCount(batch);
            var b = buffers[id];
            if (node.IsParameter || node.IsState) b.Value = parameters[node];
            else if (!bound[id]) planner.Request(elements, node.Op.IsLeaf ? -1 : id, LastStep(id), v => b.Value = v);

            int auxiliary = node.Op.AuxiliaryElements(node, nodes, batch);
            if ((differentiating || node.Op.ForwardWritesAuxiliary) && !outputDerivative[id])
                planner.Request(auxiliary, id, retained[id] ? end : Math.Max(runsVjp[id] ? BackwardStep(id) : id, foldedInto[id]), v => b.Auxiliary = v);

            if (tangentNonZero[id] && foldedInto[id] < 0)
            {
                int tangentElements = channels * elements;
                if (node.Op.IsLeaf)
                    planner.Request(tangentElements, generators[id] is null ? -1 : id, generators[id] is null ? end : LastStep(id), v => b.Tangent = b.Seed = v);
                else if (seeded[id] && !hasInputTangent[id])
                    // No other tangent reaches the node: its tangent is its seed, one buffer (no copy per pass); a generated seed
                    // then lives as long as the tangent, a caller's seed for the whole plan.
                    planner.Request(tangentElements, generators[id] is null ? -1 : id, generators[id] is null ? end : tangentLastStep[id], v => b.Tangent = b.Seed = v);
                else
                {
                    planner.Request(tangentElements, id, tangentLastStep[id], v => b.Tangent = v);
                    if (seeded[id])
                        planner.Request(tangentElements, generators[id] is null ? -1 : id, generators[id] is null ? end : id, v => b.Seed = v);
                }
            }
            if (needsCotangent[id] && !node.IsParameter && vjpFoldedInto[id] < 0)
                planner.Request(elements, reuse ? firstCotangentWrite[id] : -1, reuse && !node.Op.IsLeaf ? BackwardStep(id) : end, v => b.Cotangent = v);
        }
        // Parameter gradients share one flat vector in the store's layout, so update rules see them whole. With reuse, each
        // parameter's slice first hosts buffers that die before the backward pass writes it (a later layer's activations, an
        // earlier cotangent): the step then holds the gradients and, at any moment, only the activations still to be read, as
        // autograd allocates each gradient while it frees activations. The gradients stay readable until the next forward pass.
        var layout = options.Gradients ? ParameterLayout.Of(model) : null;
        if (layout is not null && reuse)
            foreach (var (p, offset) in layout.Entries)
                if (needsCotangent[p.Id] && firstCotangentWrite[p.Id] < end)
                {
                    int start = BufferPlanner.Aligned(offset), length = offset + p.Shape.ElementCount - start;
                    planner.Offer(start, length, firstCotangentWrite[p.Id]);
                }

        // One scratch buffer for every rule (im2col columns, normalisation temporaries): rules run one at a time.
        long scratchElements = ScratchNeed(nodes, nodes.Select(n => n.Id), batch, channels);
        parameters.Backend.RequireMemory((planner.PlannedElements() + scratchElements + (options.Gradients ? parameters.All.Length : 0)) * sizeof(float),
            $"A plan for batch {batch} with K = {channels} tangent channels{(options.Gradients ? " and gradients" : "")}");
        var owned = new List<DeviceBuffer>();
        DeviceBuffer Own(int length) => Allocate(parameters.Backend, owned, length);
        var gradientBuffer = layout is null ? null : Own(Math.Max(1, parameters.All.Length));
        long allocated = planner.Allocate(parameters.Backend, owned, gradientBuffer) + scratchElements;
        var scratch = scratchElements == 0 ? View.Empty : new View(Own((int)scratchElements), 0, (int)scratchElements);

        var gradients = View.Empty;
        var gradientSlices = new View[count];
        if (layout is not null)
        {
            gradients = new View(gradientBuffer!, 0, parameters.All.Length);
            allocated += parameters.All.Length;
            var slices = gradientSlices = layout.Slices(model, gradients);
            foreach (var p in model.Parameters)
                if (needsCotangent[p.Id]) buffers[p.Id].Cotangent = slices[p.Id];
        }

        var readable = new bool[count];
        for (int id = 0; id < count; id++) readable[id] = !reuse || retained[id] || nodes[id].Op.IsLeaf;
        // With reuse, only the cotangents of leaves (a differentiable input's gradient) outlive the backward pass.
        var cotangentReadable = new bool[count];
        for (int id = 0; id < count; id++) cotangentReadable[id] = !reuse || nodes[id].Op.IsLeaf;
        var forwardOrder = nodes.Where(n => !n.Op.IsLeaf).Select(n => n.Id).ToArray();
        var tangentOrder = nodes.Where(n => tangentNonZero[n.Id] && foldedInto[n.Id] < 0).Select(n => n.Id).ToArray();
        var foldsInput = new bool[count];
        foreach (var folded in foldedInto) if (folded >= 0) foldsInput[folded] = true;
        var backwardOrder = nodes.Where(n => needsCotangent[n.Id] && !n.Op.IsLeaf && vjpFoldedInto[n.Id] < 0).Select(n => n.Id).Reverse().ToArray();
        var vjpFolds = new bool[count];
        foreach (var folded in vjpFoldedInto) if (folded >= 0) vjpFolds[folded] = true;
        var objectiveSeeds = model.Losses.Where(l => needsCotangent[l.Id]).Select(l => l.Id).ToArray();
        // Gradients of parameters off the loss path are never written: zero them once here.
        if (options.Gradients) parameters.Backend.Fill(0f, gradients);
        var backward = BackwardSchedule.Build(model, backwardOrder, buffers, objectiveSeeds, vjpFolds);
        return new Plan(parameters, options, buffers, forwardOrder, tangentOrder, backward, tangentNonZero,
            hasInputTangent, seeded, readable, generators, differentiating, scratch, allocated * sizeof(float), owned)
        {
            ParameterGradients = gradients, GradientSlices = gradientSlices, CotangentReadable = cotangentReadable, FoldsInput = foldsInput,
            DerivativeFromOutput = outputDerivative,
            Folded = [.. Enumerable.Range(0, count).Select(id => (foldedInto[id] >= 0, vjpFoldedInto[id] >= 0))],
        };
    }

    /// <summary>The largest scratch need of the given nodes' rules with <paramref name="channels"/> channels, checked to fit one buffer.</summary>
    private static long ScratchNeed(IReadOnlyList<Node> nodes, IEnumerable<int> ids, int batch, int channels)
    {
        long need = 0;
        foreach (var id in ids)
        {
            long elements = nodes[id].Op.ScratchElements(nodes[id], nodes, batch, channels);
            if (elements > int.MaxValue)
                throw new ArgumentException($"Node {nodes[id]} needs {elements:N0} floats of scratch for batch {batch} and {channels} channel(s), " +
                    $"more than one buffer holds ({int.MaxValue:N0}). Use a smaller batch size or fewer channels.");
            need = Math.Max(need, elements);
        }
        return need;
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// <summary>
    /// Copies a batch into an input node: B × (per-example elements) values, examples one after the
    /// other. Class labels must be whole numbers in [0, classes), tokens in [0, vocabulary) or their padding id. Checked before anything is written.
    /// </summary>
    public void SetInput(Node input, ReadOnlySpan<float> values)
    {
        CheckNode(input);
        if (input.Op is not (InputOp or ClassLabelsOp or TokensOp))
            throw new ArgumentException($"{input} is not an input of the model; inputs are: {string.Join(", ", Model.Inputs)}.", nameof(input));
        if (Options.BoundInputs.Contains(input))
            throw new InvalidOperationException($"Input {input} is read from the caller's buffer (PlanOptions.BoundInputs): write the batch into that buffer, or bind another with BindInput.");
        int expected = input.ElementCount(BatchSize);
        if (values.Length != expected)
            throw new ArgumentException($"Input {input} expects {expected} values (batch {BatchSize} × {input.Shape.ElementCount} per example); got {values.Length}.", nameof(values));
        if (input.Op is ClassLabelsOp labels)
            for (int i = 0; i < values.Length; i++)
                if (values[i] < 0 || values[i] >= labels.Classes || values[i] != MathF.Floor(values[i]))
                    throw new ArgumentException($"Input {input}: example {i} has label {values[i]}; labels must be whole numbers in [0, {labels.Classes}).", nameof(values));
        if (input.Op is TokensOp tokens)
            for (int i = 0; i < values.Length; i++)
                if ((values[i] < 0 || values[i] >= tokens.Vocabulary || values[i] != MathF.Floor(values[i])) && values[i] != tokens.Padding)
                    throw new ArgumentException($"Input {input}: example {i / tokens.Length}, position {i % tokens.Length} has token {values[i]}; " +
                        $"tokens must be whole numbers in [0, {tokens.Vocabulary}) or the padding id {tokens.Padding}.", nameof(values));
        Backend.CopyFromHost(values, _buffers[input.Id].Value);
        _forwardDone = false;
    }

    /// <summary>
    /// Reads a bound input (<see cref="PlanOptions.BoundInputs"/>) from <paramref name="values"/> from the next pass on:
    /// B × (per-example elements) floats on this plan's backend, which the caller keeps alive and unchanged until the
    /// passes that read them have run (with gradients, until <see cref="Backward"/>: a layer's weight gradient reads its
    /// input). Binding is free; rebind per batch to read each from where it lies.
    /// </summary>
    public void BindInput(Node input, View values)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        CheckNode(input);
        RequireBindable(input, nameof(input));
        if (!Options.BoundInputs.Contains(input))
            throw new ArgumentException($"Input {input} was not compiled as bound; list it in PlanOptions.BoundInputs, or copy a batch into it with SetInput.", nameof(input));
        if (values.IsEmpty) throw new ArgumentException($"Input {input}: the view to bind is empty.", nameof(values));
        if (values.Buffer!.Backend != Backend)
            throw new ArgumentException($"Input {input}: the buffer belongs to {values.Buffer.Backend.Name}, this plan runs on {Backend.Name}; allocate it with the plan's backend.", nameof(values));
        if (_owned.Contains(values.Buffer) || values.Buffer == Parameters.All.Buffer)
            throw new ArgumentException($"Input {input}: the view lies in memory this plan writes (its buffers or the parameters); bind a buffer of your own.", nameof(values));
        int expected = input.ElementCount(BatchSize);
        if (values.Length != expected)
            throw new ArgumentException($"Input {input} expects {expected} values (batch {BatchSize} × {input.Shape.ElementCount} per example); the view holds {values.Length}.", nameof(values));
        _buffers[input.Id].Value = values;
        _forwardDone = false;
    }

    /// <summary>Replaces the Philox stream of a generated seed (e.g. a new key per step).</summary>
    public void SetSeedGenerator(Node node, RandomKey key)
    {
        CheckNode(node);
        if (_generators[node.Id] is null) throw new ArgumentException($"Node {node} was not compiled with a generated seed.", nameof(node));
        _generators[node.Id] = key;
    }

    /// <summary>Gives every buffer this plan allocated (values, tangents, cotangents, gradients, scratch, its pull-backs')
    /// back to the backend (<see cref="Backend.Release"/>): on a GPU, device memory returns to the allocator at once
    /// rather than when the whole backend is disposed. The parameters stay (they belong to the store). Running the plan, or
    /// a pull-back or parameter update created from it, afterwards throws <see cref="ObjectDisposedException"/>; a second
    /// Dispose does nothing.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var buffer in _owned) Backend.Release(buffer);
        _owned.Clear();
    }

    /// <summary>A buffer the plan owns (a pull-back's cotangents or scratch), given back by <see cref="Dispose"/>.</summary>
    private DeviceBuffer Own(int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Allocate(Backend, _owned, length);
    }

    /// <summary>A new buffer on <paramref name="backend"/>, recorded in <paramref name="owned"/> for <see cref="Dispose"/>.</summary>
    private static DeviceBuffer Allocate(Backend backend, List<DeviceBuffer> owned, int length)
    {
        var buffer = backend.Allocate(length);
        owned.Add(buffer);
        return buffer;
    }

    // ---- running ------------------------------------------------------------------------------

    /// <summary>Computes every value (and the derivatives the rules need) from the inputs and parameters.</summary>
    public void Forward()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        RequireBoundInputs();
        foreach (var id in _forwardOrder) RunForward(id);
        _forwardDone = true;
        _backwardDone = false;
    }

    /// <summary>Pushes the seeds through the graph: every reached node gets its K-channel tangent.
    /// Needs the values of the last <see cref="Forward"/>.</summary>
    public void Jvp()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Options.ReuseBuffers) throw new InvalidOperationException("This plan reuses buffers: run the fused ForwardJvp() instead of Forward() then Jvp().");
        RequireForward();
        foreach (var id in _tangentOrder) RunJvp(id);
    }

    /// <summary>Forward and JVP in one pass, node by node (the primal is computed once).</summary>
    public void ForwardJvp()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        RequireBoundInputs();
        int t = 0;
        foreach (var id in _forwardOrder)
        {
            while (t < _tangentOrder.Length && _tangentOrder[t] < id) RunJvp(_tangentOrder[t++]); // leaves
            RunForward(id);
            if (t < _tangentOrder.Length && _tangentOrder[t] == id) RunJvp(_tangentOrder[t++]);
        }
        while (t < _tangentOrder.Length) RunJvp(_tangentOrder[t++]);
        _forwardDone = true;
        _backwardDone = false;
    }

    /// <summary>
    /// The exact gradient of the objective L = Σ_losses (1/B) Σ_b ℓ_b (with one loss, the mean loss): seeds
    /// ℓ̄_b = 1/B at every loss and runs every VJP rule in reverse; nothing crosses a stop-gradient. Parameter gradients are then in <see cref="Gradient"/>, per-example cotangents of
    /// activations in <see cref="Cotangent"/>. Needs the values of the last <see cref="Forward"/>.
    /// </summary>
    public void Backward()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Options.Gradients) throw new InvalidOperationException("This plan was compiled without gradients; set PlanOptions.Gradients = true.");
        RequireForward();
        // With reuse, the backward pass overwrites saved derivatives it has used: one backward pass per forward pass.
        if (Options.ReuseBuffers && _backwardDone)
            throw new InvalidOperationException("This plan reuses buffers in the backward pass: run Forward() again before another Backward().");
        foreach (var loss in _backward.Seeds) Backend.Fill(1f / BatchSize, _buffers[loss].Cotangent);
        RunBackward(_backward, _buffers, _scratch);
        _backwardDone = true;
    }

    /// <summary>The mean loss (1/B) Σ_b ℓ_b of the last forward pass.</summary>
    public double MeanLoss()
    {
        RequireForward();
        return Backend.Sum(_buffers[Model.Loss.Id].Value) / BatchSize;
    }

    /// <summary>
    /// Prepares a K-channel partial pull-back: cotangents written at the <paramref name="from"/> nodes
    /// (<see cref="PullBack.Cotangent"/>, [C, B, ...] with C = <paramref name="channels"/>) are carried back by the
    /// VJP rules of every op on a derivative path from <paramref name="to"/> to them (local Jacobians at this plan's
    /// forward values: weights, activation masks, residual adds, reshapes), all C channels at once, touching no
    /// parameter gradient. A guess at the next sites pulled back to a site this way is "Wᵀ"; through k sites, k-layer
    /// downstream. The pull-back owns its cotangent buffers; running it allocates nothing.
    /// </summary>
    public PullBack CreatePullBack(IReadOnlyList<Node> from, Node to, int channels = 1)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (channels < 1) throw new ArgumentOutOfRangeException(nameof(channels), $"A pull-back needs at least one channel; got {channels}.");
        if (Options.ReuseBuffers) throw new InvalidOperationException("Pull-backs read the forward values between their ends; this plan reuses buffers (PlanOptions.ReuseBuffers).");
        if (!Options.BoundInputs.IsEmpty) throw new InvalidOperationException("Pull-backs keep views of the inputs; this plan reads them from buffers the caller binds (PlanOptions.BoundInputs).");
        if (!_saveAuxiliary) throw new InvalidOperationException("Pull-backs read the saved derivatives; compile the plan with seeds, Gradients or SaveDerivatives.");
        if (from.Count == 0) throw new ArgumentException("A pull-back needs at least one node to start from.", nameof(from));
        CheckNode(to);
        var nodes = Model.Nodes;
        var isStart = new bool[nodes.Length];
        foreach (var node in from)
        {
            CheckNode(node);
            if (node.Id == to.Id) throw new ArgumentException($"{to} is both an end and a start of the pull-back.", nameof(from));
            isStart[node.Id] = true;
        }
        // Nodes on a derivative path to → from: reachable forward from `to` and backward from a start, never across
        // a non-differentiable op (a stop-gradient ends every path).
        var downstream = new bool[nodes.Length];
        downstream[to.Id] = true;
        foreach (var node in nodes)
            if (!node.Op.IsLeaf && node.Op.IsDifferentiable && node.Inputs.Any(i => downstream[i])) downstream[node.Id] = true;
        var upstream = (bool[])isStart.Clone();
        for (int id = nodes.Length - 1; id >= 0; id--)
            if (upstream[id] && !nodes[id].Op.IsLeaf && nodes[id].Op.IsDifferentiable)
                foreach (var input in nodes[id].Inputs) upstream[input] = true;
        foreach (var node in from)
            if (!downstream[node.Id])
                throw new ArgumentException($"{node} does not depend on {to} through a derivative path: there is nothing to pull back.", nameof(from));

        var restricted = new NodeBuffers[nodes.Length];
        for (int id = 0; id < nodes.Length; id++)
        {
            var b = _buffers[id];
            bool onPath = downstream[id] && upstream[id];
            restricted[id] = new NodeBuffers
            {
                Value = b.Value,
                Auxiliary = b.Auxiliary,
                Cotangent = onPath ? new View(Own(channels * nodes[id].ElementCount(BatchSize))) : View.Empty,
            };
        }
        var order = Enumerable.Range(0, nodes.Length)
            .Where(id => downstream[id] && upstream[id] && id != to.Id && !nodes[id].Op.IsLeaf).Reverse().ToArray();
        var schedule = BackwardSchedule.Build(Model, order, restricted, [.. from.Select(n => n.Id)]);
        bool readsForwardValues = order.Any(id => nodes[id].Op.InputVjpReadsForwardValues);
        long scratchElements = ScratchNeed(nodes, order, BatchSize, channels);
        var scratch = scratchElements <= _scratch.Length ? _scratch : new View(Own((int)scratchElements), 0, (int)scratchElements);
        return new PullBack(this, schedule, restricted, channels, to, readsForwardValues, scratch);
    }

    internal void RunPullBack(BackwardSchedule schedule, NodeBuffers[] buffers, int channels, View scratch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        RequireForward();
        RunBackward(schedule, buffers, scratch, channels);
    }

    /// <summary>
    /// Prepares the one path from a site's cotangent to a parameter update: the VJP rule of each site's own op,
    /// writing only its parameters' cotangents into <paramref name="destination"/> (a flat vector in the store's
    /// layout), the rule backprop uses (for dense, ΔW = s̄ᵀ x, Δb = Σ s̄). Parameters no site updates are zeroed here.
    /// </summary>
    public ParameterUpdate CreateParameterUpdate(IReadOnlyList<Node> sites, View destination)
    {
        if (destination.Length != Parameters.All.Length)
            throw new ArgumentException($"The destination must hold every parameter ({Parameters.All.Length} elements); got {destination.Length}.", nameof(destination));
        if (Options.ReuseBuffers) throw new InvalidOperationException("Parameter updates read the sites' inputs; this plan reuses buffers (PlanOptions.ReuseBuffers).");
        if (!Options.BoundInputs.IsEmpty) throw new InvalidOperationException("Parameter updates keep views of the sites' inputs; this plan reads its inputs from buffers the caller binds (PlanOptions.BoundInputs).");
        var nodes = Model.Nodes;
        var slices = ParameterLayout.Of(Model).Slices(Model, destination);
        var buffers = new NodeBuffers[nodes.Length];
        for (int id = 0; id < nodes.Length; id++)
            buffers[id] = new NodeBuffers { Value = _buffers[id].Value, Auxiliary = _buffers[id].Auxiliary };
        var written = new bool[nodes.Length];
        var masks = new int[sites.Count];
        for (int i = 0; i < sites.Count; i++)
        {
            CheckNode(sites[i]);
            var inputs = sites[i].Inputs;
            for (int j = 0; j < inputs.Length; j++)
            {
                if (!nodes[inputs[j]].IsParameter) continue;
                buffers[inputs[j]].Cotangent = slices[inputs[j]];
                if (!written[inputs[j]]) masks[i] |= 1 << j; // the first site to update a shared parameter overwrites, later ones add
                written[inputs[j]] = true;
            }
        }
        Backend.Fill(0f, destination);
        return new ParameterUpdate(this, [.. sites], masks, buffers);
    }

    internal void RunParameterVjp(Node site, NodeBuffers[] buffers, int overwriteMask)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        RequireForward();
        site.Op.Vjp(new RuleContext(Backend, BatchSize, TangentCount, site, buffers, _scratch, Options, Model, overwriteMask));
    }

    private void RunForward(int id) =>
        Model.Nodes[id].Op.Forward(new RuleContext(Backend, BatchSize, TangentCount, Model.Nodes[id], _buffers, _scratch, Options, Model),
            _saveAuxiliary && !DerivativeFromOutput[id]);

    private void RunJvp(int id)
    {
        var node = Model.Nodes[id];
        var b = _buffers[id];
        if (_generators[id] is { } key) Backend.FillNormal(key, 0, 0f, 1f, b.Seed);
        if (node.Op.IsLeaf || !_hasInputTangent[id]) return; // a leaf's or an unreached node's tangent is its seed (one buffer)
        bool ruleAdds = _seeded[id] && node.Op.JvpAddsInjectedTangent;
        node.Op.Jvp(new RuleContext(Backend, BatchSize, TangentCount, node, _buffers, _scratch, Options, Model, injectedTangent: ruleAdds ? b.Seed : default,
            foldedInput: FoldsInput[id]));
        if (_seeded[id] && !ruleAdds) Backend.Add(b.Tangent, b.Seed, b.Tangent);
    }

    private void RunBackward(BackwardSchedule schedule, NodeBuffers[] buffers, View scratch, int channels = 1)
    {
        foreach (var view in schedule.Clear) Backend.Fill(0f, view);
        for (int i = 0; i < schedule.Order.Length; i++)
        {
            var node = Model.Nodes[schedule.Order[i]];
            node.Op.Vjp(new RuleContext(Backend, BatchSize, TangentCount, node, buffers, scratch, Options, Model, schedule.OverwriteMasks[i], channels,
                foldedInput: schedule.FoldsInput(i), derivativeFromOutput: DerivativeFromOutput[node.Id]));
        }
    }

    // ---- reading ------------------------------------------------------------------------------

    /// <summary>The value of a node, [B, ...shape] (parameters: their store value).</summary>
    public View Value(Node node) => Readable(node, _buffers[node.Id].Value, "value");

    /// <summary>What the forward pass saved for the derivative rules: f'(x) for an elementwise node (the
    /// ReLU mask of docs/design.md §2), ∂ℓ_b/∂prediction for a loss node. Empty when not saved.</summary>
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

    /// <summary>∂(objective)/∂value per example after <see cref="Backward"/> (pull-backs keep their own, see <see cref="PullBack.Cotangent"/>).</summary>
    public View Cotangent(Node node)
    {
        CheckNode(node);
        var view = _buffers[node.Id].Cotangent;
        // An elementwise op folded into its max pool has no cotangent buffer at all: not kept, as the others.
        if (!CotangentReadable[node.Id] && (!view.IsEmpty || FoldedIntoPool(node).Backward))
            throw new InvalidOperationException($"The cotangent of {node} is not kept: this plan reuses buffers in the backward pass (PlanOptions.ReuseBuffers); only parameter gradients and the inputs' cotangents are. Compile without ReuseBuffers to read it.");
        if (view.IsEmpty) throw new ArgumentException($"{node} has no cotangent: it is off every path from a parameter to the loss, or the plan has no gradients.", nameof(node));
        return view;
    }

    /// <summary>∂L/∂θ for every parameter after <see cref="Backward"/>, flat in the store's layout
    /// (parameters off the loss path stay zero). With <see cref="PlanOptions.ReuseBuffers"/> the next forward pass
    /// overwrites it (its slices hold activations until the backward pass writes them): read or copy it before.</summary>
    public View ParameterGradients { get; private init; }

    /// <summary>Per node id: whether <see cref="Cotangent"/> may read the node's cotangent after the backward pass.</summary>
    private bool[] CotangentReadable { get; init; } = [];

    /// <summary>Per node: its JVP rule reads through the elementwise op before it, whose tangent was folded in (never written).</summary>
    private bool[] FoldsInput { get; init; } = [];

    /// <summary>Per node id: an elementwise op whose VJP reads its mask from its output, with no derivative saved (backprop
    /// plans with reuse; see <see cref="Compile"/>).</summary>
    private bool[] DerivativeFromOutput { get; init; } = [];

    /// <summary>Per node id: the elementwise op's tangent (forward) and cotangent (backward) folded into the max pool after it.</summary>
    private (bool Forward, bool Backward)[] Folded { get; init; } = [];

    /// <summary>Whether <paramref name="elementwise"/>'s tangent and cotangent are folded into the max pool after it (tests).</summary>
    internal (bool Forward, bool Backward) FoldedIntoPool(Node elementwise) => Folded.Length == 0 ? default : Folded[elementwise.Id];

    /// <summary>Per node id, the parameter's slice of <see cref="ParameterGradients"/> (empty without gradients).</summary>
    private View[] GradientSlices { get; init; } = [];

    /// <summary>∂L/∂θ for a parameter after <see cref="Backward"/> (zero for a parameter no loss depends on through a
    /// derivative path, e.g. behind a stop-gradient); with <see cref="PlanOptions.ReuseBuffers"/>, until the next forward pass
    /// (see <see cref="ParameterGradients"/>).</summary>
    public View Gradient(Node parameter)
    {
        CheckNode(parameter);
        if (!parameter.IsParameter) throw new ArgumentException($"{parameter} is not a parameter.", nameof(parameter));
        if (!Options.Gradients) throw new InvalidOperationException("This plan was compiled without gradients; set PlanOptions.Gradients = true.");
        return GradientSlices[parameter.Id];
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

    /// <summary>Only real-valued inputs are bound: labels and tokens are copied, as SetInput checks them.</summary>
    private static void RequireBindable(Node node, string parameter)
    {
        if (node.Op is not InputOp)
            throw new ArgumentException($"Only real-valued inputs can be bound; {node} is {(node.Op is ClassLabelsOp or TokensOp ? "labels or tokens: copy them in with SetInput, which checks them" : "no input of the model")}.", parameter);
    }

    private void RequireBoundInputs()
    {
        foreach (var input in Options.BoundInputs)
            if (_buffers[input.Id].Value.IsEmpty)
                throw new InvalidOperationException($"Input {input} is read from the caller's buffer (PlanOptions.BoundInputs) and none is bound: call BindInput first.");
    }
}

/// <summary>A prepared K-channel partial pull-back (see <see cref="Plan.CreatePullBack"/>). Running it allocates nothing.</summary>
public sealed class PullBack
{
    private readonly Plan _plan;
    private readonly BackwardSchedule _schedule;
    private readonly NodeBuffers[] _buffers;
    private readonly Node _to;
    private readonly View _ownTarget;
    private readonly View _scratch;

    internal PullBack(Plan plan, BackwardSchedule schedule, NodeBuffers[] buffers, int channels, Node to, bool readsForwardValues, View scratch)
    {
        (_plan, _schedule, _buffers, Channels, _to, ReadsForwardValues, _scratch) = (plan, schedule, buffers, channels, to, readsForwardValues, scratch);
        _ownTarget = buffers[to.Id].Cotangent;
    }

    /// <summary>C, the number of cotangent channels carried at once.</summary>
    public int Channels { get; }

    /// <summary>True when some op on the way reads forward values (an activation's f'); false when the pull-back
    /// reads only parameters (linear maps, adds, copies) and may run before the forward pass of a step.</summary>
    public bool ReadsForwardValues { get; }

    /// <summary>The cotangent buffer of a node on the pull-back's paths, [C, B, ...shape]: write the starts, read the end.</summary>
    public View Cotangent(Node node)
    {
        var view = node.Id >= 0 && node.Id < _buffers.Length ? _buffers[node.Id].Cotangent : View.Empty;
        if (view.IsEmpty) throw new ArgumentException($"{node} is not on this pull-back's paths.", nameof(node));
        return view;
    }

    /// <summary>Pulls the cotangents at the starts back to the end (read it with <see cref="Cotangent"/>).</summary>
    public void Run() => _plan.RunPullBack(_schedule, _buffers, Channels, _scratch);

    /// <summary>Pulls back and writes the end's cotangent straight into <paramref name="target"/> (same length), saving a copy.</summary>
    public void Run(View target)
    {
        if (target.Length != _ownTarget.Length)
            throw new ArgumentException($"The target holds {target.Length} elements; the cotangent of {_to} has {_ownTarget.Length}.", nameof(target));
        _buffers[_to.Id].Cotangent = target;
        try { _plan.RunPullBack(_schedule, _buffers, Channels, _scratch); }
        finally { _buffers[_to.Id].Cotangent = _ownTarget; }
    }
}

/// <summary>A prepared site-to-parameter update (see <see cref="Plan.CreateParameterUpdate"/>). Running it allocates nothing.</summary>
public sealed class ParameterUpdate
{
    private readonly Plan _plan;
    private readonly Node[] _sites;
    private readonly int[] _masks;
    private readonly NodeBuffers[] _buffers;

    internal ParameterUpdate(Plan plan, Node[] sites, int[] masks, NodeBuffers[] buffers) => (_plan, _sites, _masks, _buffers) = (plan, sites, masks, buffers);

    /// <summary>
    /// Writes the update of site <paramref name="index"/>'s parameters from its cotangent ([B, ...site shape], the
    /// estimate of ∂L/∂s per example, summed over guesses). Call it for every site, in order, each step: a parameter
    /// shared by several sites is overwritten by the first and accumulated by the others.
    /// </summary>
    public void Write(int index, View siteCotangent)
    {
        var site = _sites[index];
        if (siteCotangent.Length != site.ElementCount(_plan.BatchSize))
            throw new ArgumentException($"The cotangent of {site} holds {site.ElementCount(_plan.BatchSize)} elements; got {siteCotangent.Length}.", nameof(siteCotangent));
        _buffers[site.Id].Cotangent = siteCotangent;
        try { _plan.RunParameterVjp(site, _buffers, _masks[index]); }
        finally { _buffers[site.Id].Cotangent = View.Empty; } // a later site may consume this one: its VJP must not write here
    }
}

/// <summary>
/// The order of VJP rules and, for each, which input cotangents it writes first (and so overwrites,
/// which saves clearing them), plus the cotangents no rule writes (cleared before the pass).
/// </summary>
internal sealed record BackwardSchedule(int[] Order, int[] OverwriteMasks, View[] Clear, int[] Seeds, bool[] Folds)
{
    /// <summary><paramref name="folds"/> (per node, or empty): the node's VJP writes through the elementwise op before it
    /// (input 0's own input 0), whose VJP is not in the order.</summary>
    public static BackwardSchedule Build(Model model, int[] order, NodeBuffers[] buffers, int[] seeds, bool[]? folds = null)
    {
        var written = new bool[model.Nodes.Length];
        foreach (var seed in seeds) written[seed] = true;
        var masks = new int[order.Length];
        var orderFolds = new bool[order.Length];
        for (int i = 0; i < order.Length; i++)
        {
            var inputs = model.Nodes[order[i]].Inputs;
            orderFolds[i] = folds is not null && folds[order[i]];
            for (int j = 0; j < inputs.Length; j++)
            {
                int target = orderFolds[i] && j == 0 ? model.Nodes[inputs[0]].Inputs[0] : inputs[j];
                if (!buffers[target].Cotangent.IsEmpty && !written[target])
                {
                    masks[i] |= 1 << j;
                    written[target] = true;
                }
            }
        }
        var clear = Enumerable.Range(0, buffers.Length).Where(id => !written[id] && !buffers[id].Cotangent.IsEmpty)
            .Select(id => buffers[id].Cotangent).ToArray();
        return new BackwardSchedule(order, masks, clear, seeds, orderFolds);
    }

    /// <summary>Whether entry <paramref name="index"/> of the order writes through a folded elementwise op.</summary>
    public bool FoldsInput(int index) => Folds[index];
}
