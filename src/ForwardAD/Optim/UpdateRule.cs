using System.Collections.Immutable;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Optim;

/// <summary>
/// The extra inputs every update rule may read, passed on each step: the 0-based step count, the
/// loss of the batch and an RNG key for rules that add noise. Rules keep no counters of their own,
/// so their state never changes shape and a step allocates nothing.
/// </summary>
public readonly record struct UpdateInputs(long Step, double Loss, RandomKey Key);

/// <summary>The state of one update rule: its buffers (moments, traces), never replaced during training.</summary>
public abstract record UpdateState
{
    private protected UpdateState() { }

    /// <summary>The state's buffers with stable names, for checkpoints (saved and restored bit for bit).</summary>
    public virtual IEnumerable<(string Name, View Buffer)> Buffers => [];
}

/// <summary>For rules without state.</summary>
public sealed record EmptyState : UpdateState
{
    /// <summary>The single instance (the state holds nothing).</summary>
    public static EmptyState Instance { get; } = new();
}

/// <summary>
/// An update rule in the optax style: an (init, update) pair over the flat parameter vector.
/// <see cref="Update"/> transforms <c>updates</c> in place: it enters as a gradient (or a gradient
/// estimate) and leaves as the step to add to the parameters. Rules compose with <see cref="Then"/>;
/// Adam is <c>ScaleByAdam().Then(ScaleByLearningRate(lr))</c>, as optax builds it.
/// </summary>
public abstract record UpdateRule
{
    /// <summary>Allocates and initialises the rule's state (e.g. zeroed moments) for <paramref name="parameters"/>, on
    /// their backend.</summary>
    public abstract UpdateState Init(ParameterStore parameters);
    /// <summary>Transforms <paramref name="updates"/> in place: in as a gradient or gradient estimate, out as the step to add
    /// to the parameters.</summary>
    /// <param name="state">The state <see cref="Init"/> returned for this rule.</param>
    /// <param name="inputs">The step count, loss and RNG key of this step.</param>
    /// <param name="updates">The flat update vector, as long as the parameter vector.</param>
    /// <param name="parameters">The flat parameter vector θ (read only: weight decay reads it; the optimizer adds the update).</param>
    public abstract void Update(UpdateState state, in UpdateInputs inputs, View updates, View parameters);

    /// <summary>True when element j of the result depends only on element j of the inputs and state, so the
    /// rule can run tile by tile fused with its neighbours in a chain (one trip through memory instead of one
    /// per rule). Rules with global reductions (norm clipping, StableAdamW's per-tensor RMS) are not.</summary>
    public virtual bool IsElementwise => false;

    /// <summary>The rule on elements [offset, offset + updates.Length) only (elementwise rules).</summary>
    internal virtual void UpdateRange(UpdateState state, in UpdateInputs inputs, View updates, View parameters, int offset) =>
        throw new InvalidOperationException($"{GetType().Name} is not elementwise.");

    /// <summary>This rule, then <paramref name="next"/> on its output.</summary>
    public UpdateRule Then(UpdateRule next) => new Chain([.. Flatten(this), .. Flatten(next)]);

    private static IEnumerable<UpdateRule> Flatten(UpdateRule rule) => rule is Chain chain ? chain.Rules : [rule];
}

/// <summary>The base for a rule with its own state type: the cast happens once here.</summary>
public abstract record UpdateRule<TState> : UpdateRule where TState : UpdateState
{
    /// <inheritdoc/>
    public sealed override UpdateState Init(ParameterStore parameters) => Create(parameters);
    /// <inheritdoc/>
    public sealed override void Update(UpdateState state, in UpdateInputs inputs, View updates, View parameters) =>
        Apply(Cast(state), inputs, updates, parameters);

    /// <summary>The state as <typeparamref name="TState"/>.</summary>
    /// <exception cref="ArgumentException">The state belongs to another rule.</exception>
    protected TState Cast(UpdateState state) => state as TState
        ?? throw new ArgumentException($"{GetType().Name} got the state of another rule ({state.GetType().Name}); pass the state its own Init returned.");

    /// <summary>Allocates and initialises the rule's state for <paramref name="parameters"/>.</summary>
    protected abstract TState Create(ParameterStore parameters);
    /// <summary>The rule on the whole vector, with its own state type; see <see cref="UpdateRule.Update"/>.</summary>
    protected abstract void Apply(TState state, in UpdateInputs inputs, View updates, View parameters);
}

/// <summary>The base for elementwise rules: written once for a range of elements; the whole vector is the range from 0.</summary>
public abstract record ElementwiseRule<TState> : UpdateRule<TState> where TState : UpdateState
{
    /// <summary>Always true.</summary>
    public sealed override bool IsElementwise => true;
    /// <summary>The whole vector as one range from offset 0.</summary>
    protected sealed override void Apply(TState state, in UpdateInputs inputs, View updates, View parameters) => ApplyRange(state, inputs, updates, parameters, 0);
    internal sealed override void UpdateRange(UpdateState state, in UpdateInputs inputs, View updates, View parameters, int offset) =>
        ApplyRange(Cast(state), inputs, updates, parameters, offset);

    /// <summary>updates and parameters are elements [offset, offset + n) of the flat vectors; slice the state the same way.</summary>
    protected abstract void ApplyRange(TState state, in UpdateInputs inputs, View updates, View parameters, int offset);
}

/// <summary>Rules applied in order, each on the previous one's output (optax.chain).</summary>
public sealed record Chain(ImmutableArray<UpdateRule> Rules) : UpdateRule<ChainState>
{
    /// <summary>Every rule's state, in order.</summary>
    protected override ChainState Create(ParameterStore parameters) => new([.. Rules.Select(r => r.Init(parameters))]);

    /// <summary>True when every rule in the chain is elementwise: the whole chain then runs fused, tile by tile.</summary>
    public override bool IsElementwise => Rules.All(r => r.IsElementwise);

    /// <summary>Runs of consecutive elementwise rules are fused tile by tile; other rules run on the whole vector.</summary>
    protected override void Apply(ChainState state, in UpdateInputs inputs, View updates, View parameters)
    {
        int i = 0;
        while (i < Rules.Length)
        {
            if (!Rules[i].IsElementwise)
            {
                Rules[i].Update(state.States[i], inputs, updates, parameters);
                i++;
                continue;
            }
            int end = i;
            while (end < Rules.Length && Rules[end].IsElementwise) end++;
            int tile = parameters.Buffer!.Backend.FusedTileElements;
            // offset advances by n, not by the tile: a tile of int.MaxValue (a GPU's) would overflow it.
            for (int offset = 0, n; offset < updates.Length; offset += n)
            {
                n = Math.Min(tile, updates.Length - offset);
                UpdateRange(state, inputs, updates.Slice(offset, n), parameters.Slice(offset, n), offset, i, end);
            }
            i = end;
        }
    }

    internal override void UpdateRange(UpdateState state, in UpdateInputs inputs, View updates, View parameters, int offset) =>
        UpdateRange((ChainState)state, inputs, updates, parameters, offset, 0, Rules.Length);

    private void UpdateRange(ChainState state, in UpdateInputs inputs, View updates, View parameters, int offset, int first, int end)
    {
        for (int r = first; r < end; r++) Rules[r].UpdateRange(state.States[r], inputs, updates, parameters, offset);
    }

    /// <summary>The rules joined by " → ", in order.</summary>
    public override string ToString() => string.Join(" → ", Rules);
}

/// <summary>The state of a <see cref="Chain"/>: one state per rule, in the chain's order.</summary>
/// <param name="States">The rules' states, <c>States[i]</c> for <c>Rules[i]</c>.</param>
public sealed record ChainState(ImmutableArray<UpdateState> States) : UpdateState
{
    /// <summary>Every rule's buffers, named <c>i.name</c> with i the rule's index in the chain (e.g. <c>0.first_moment</c>).</summary>
    public override IEnumerable<(string Name, View Buffer)> Buffers =>
        States.SelectMany((state, i) => state.Buffers.Select(b => ($"{i}.{b.Name}", b.Buffer)));
}

/// <summary>A rule and its state, bound to a parameter store: what a trainer steps.</summary>
public sealed class Optimizer(UpdateRule rule, ParameterStore parameters)
{
    /// <summary>The update rule this optimizer steps.</summary>
    public UpdateRule Rule { get; } = rule;
    /// <summary>The parameters updated in place by <see cref="Step"/>.</summary>
    public ParameterStore Parameters { get; } = parameters;
    /// <summary>The rule's state, created by <see cref="UpdateRule.Init"/> when the optimizer is constructed.</summary>
    public UpdateState State { get; } = rule.Init(parameters);
    private readonly bool _elementwise = rule.IsElementwise;

    /// <summary>Transforms <paramref name="gradient"/> in place into the update and adds it to the parameters: θ ← θ + u.</summary>
    public void Step(in UpdateInputs inputs, View gradient)
    {
        if (gradient.Length != Parameters.All.Length)
            throw new ArgumentException($"The gradient has {gradient.Length} elements; the model has {Parameters.All.Length} parameters.", nameof(gradient));
        var backend = Parameters.Backend;
        if (!_elementwise)
        {
            Rule.Update(State, inputs, gradient, Parameters.All);
            backend.Axpby(1f, gradient, 1f, Parameters.All);
            return;
        }
        // Every rule elementwise: the whole step, θ ← θ + u included, in one pass over the backend's tiles
        // (L2-sized on a CPU, the whole vector on a GPU); offset advances by n so that a tile of int.MaxValue cannot overflow it.
        int tile = backend.FusedTileElements;
        for (int offset = 0, n; offset < gradient.Length; offset += n)
        {
            n = Math.Min(tile, gradient.Length - offset);
            var updates = gradient.Slice(offset, n);
            var parameters = Parameters.All.Slice(offset, n);
            Rule.UpdateRange(State, inputs, updates, parameters, offset);
            backend.Axpby(1f, updates, 1f, parameters);
        }
    }
}
