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
    public abstract UpdateState Init(ParameterStore parameters);
    public abstract void Update(UpdateState state, in UpdateInputs inputs, View updates, View parameters);

    /// <summary>This rule, then <paramref name="next"/> on its output.</summary>
    public UpdateRule Then(UpdateRule next) => new Chain([.. Flatten(this), .. Flatten(next)]);

    private static IEnumerable<UpdateRule> Flatten(UpdateRule rule) => rule is Chain chain ? chain.Rules : [rule];
}

/// <summary>The base for a rule with its own state type: the cast happens once here.</summary>
public abstract record UpdateRule<TState> : UpdateRule where TState : UpdateState
{
    public sealed override UpdateState Init(ParameterStore parameters) => Create(parameters);
    public sealed override void Update(UpdateState state, in UpdateInputs inputs, View updates, View parameters) =>
        Apply(state as TState ?? throw new ArgumentException($"{GetType().Name} got the state of another rule ({state.GetType().Name}); pass the state its own Init returned."),
            inputs, updates, parameters);

    protected abstract TState Create(ParameterStore parameters);
    protected abstract void Apply(TState state, in UpdateInputs inputs, View updates, View parameters);
}

/// <summary>Rules applied in order, each on the previous one's output (optax.chain).</summary>
public sealed record Chain(ImmutableArray<UpdateRule> Rules) : UpdateRule<ChainState>
{
    protected override ChainState Create(ParameterStore parameters) => new([.. Rules.Select(r => r.Init(parameters))]);

    protected override void Apply(ChainState state, in UpdateInputs inputs, View updates, View parameters)
    {
        for (int i = 0; i < Rules.Length; i++) Rules[i].Update(state.States[i], inputs, updates, parameters);
    }

    public override string ToString() => string.Join(" → ", Rules);
}

public sealed record ChainState(ImmutableArray<UpdateState> States) : UpdateState
{
    public override IEnumerable<(string Name, View Buffer)> Buffers =>
        States.SelectMany((state, i) => state.Buffers.Select(b => ($"{i}.{b.Name}", b.Buffer)));
}

/// <summary>A rule and its state, bound to a parameter store: what a trainer steps.</summary>
public sealed class Optimizer(UpdateRule rule, ParameterStore parameters)
{
    public UpdateRule Rule { get; } = rule;
    public ParameterStore Parameters { get; } = parameters;
    public UpdateState State { get; } = rule.Init(parameters);

    /// <summary>Transforms <paramref name="gradient"/> in place into the update and adds it to the parameters: θ ← θ + u.</summary>
    public void Step(in UpdateInputs inputs, View gradient)
    {
        if (gradient.Length != Parameters.All.Length)
            throw new ArgumentException($"The gradient has {gradient.Length} elements; the model has {Parameters.All.Length} parameters.", nameof(gradient));
        Rule.Update(State, inputs, gradient, Parameters.All);
        Parameters.Backend.Axpby(1f, gradient, 1f, Parameters.All);
    }
}
