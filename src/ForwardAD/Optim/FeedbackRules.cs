using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Optim;

/// <summary>
/// What a feedback-alignment rule sees for one feedback matrix B (n × o) at one step: B itself, the
/// target g̃ (the estimated Jacobian J̄ᵀ rescaled to ‖B‖_F), the row-wise cosines c_i = cos(g̃[i], B[i])
/// computed before the update, B's initial Frobenius norm, scratch of B's size, and the step's inputs.
/// Rules in a chain all see the same c and g̃: the pre-update alignment.
/// </summary>
public sealed class FeedbackContext(Backend backend, View feedback, View target, View rowCosines, View scratch, View rowScratch, int outputs, double initialNorm)
{
    /// <summary>The backend that holds every view of this context and runs the rules' kernels.</summary>
    public Backend Backend { get; } = backend;
    /// <summary>B, n × o, updated in place.</summary>
    public View Feedback { get; } = feedback;
    /// <summary>g̃ = J̄ᵀ · ‖B‖/‖J̄ᵀ‖, n × o.</summary>
    public View Target { get; } = target;
    /// <summary>c, one cosine per row of B.</summary>
    public View RowCosines { get; } = rowCosines;
    /// <summary>Scratch the size of B and of a row vector.</summary>
    public View Scratch { get; } = scratch;
    /// <summary>Scratch of n floats (one per row of B), e.g. the per-row factors of <see cref="ShrinkMisaligned"/>.</summary>
    public View RowScratch { get; } = rowScratch;
    /// <summary>o, the columns of B (network outputs).</summary>
    public int Outputs { get; } = outputs;
    /// <summary>‖B₀‖_F, the Frobenius norm of B at initialisation, which <see cref="Renormalize"/> restores.</summary>
    public double InitialNorm { get; } = initialNorm;
}

/// <summary>
/// A rule that moves a feedback matrix toward its target, in the combinator style of the update rules:
/// small values composed with <see cref="Then"/>. GrAPE's original rule is
/// <c>ShrinkMisaligned(η).Then(AddNoise(σ)).Then(Renormalize())</c> (docs/design.md §2).
/// </summary>
public abstract record FeedbackRule
{
    private protected FeedbackRule() { }

    /// <summary>Updates <see cref="FeedbackContext.Feedback"/> in place for one step.</summary>
    /// <param name="context">B, its target g̃, the pre-update row cosines c and scratch.</param>
    /// <param name="step">The 0-based training step, for the rule's <see cref="Schedule"/>.</param>
    /// <param name="key">The RNG key of this step and matrix (for rules that add noise).</param>
    public abstract void Apply(FeedbackContext context, long step, RandomKey key);

    /// <summary>This rule, then <paramref name="next"/>, as one flat <see cref="FeedbackChain"/> (nested chains are flattened).</summary>
    public FeedbackRule Then(FeedbackRule next) =>
        new FeedbackChain([.. this is FeedbackChain a ? a.Rules : [this], .. next is FeedbackChain b ? b.Rules : [next]]);
}

/// <summary>Feedback rules applied in order to the same context. Rule i receives <c>key.Derive(i)</c>, so rules that draw
/// noise draw independent numbers.</summary>
/// <param name="Rules">The rules, first applied first.</param>
public sealed record FeedbackChain(ImmutableArray<FeedbackRule> Rules) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key)
    {
        for (int i = 0; i < Rules.Length; i++) Rules[i].Apply(context, step, key.Derive((ulong)i));
    }

    /// <summary>The rules joined by " → ", in order.</summary>
    public override string ToString() => string.Join(" → ", Rules);
}

/// <summary>B[i] ← B[i] − η(1 − c_i)·B[i]: rows shrink the more they disagree with their target.
/// A row's direction never changes under this rule alone.</summary>
public sealed record ShrinkMisaligned(Schedule Rate) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key)
    {
        float eta = Rate.At(step);
        // factor_i = 1 − η + η·c_i
        context.Backend.Fill(1f - eta, context.RowScratch);
        context.Backend.Axpby(eta, context.RowCosines, 1f, context.RowScratch);
        context.Backend.ScaleRows(context.Feedback, context.RowScratch, context.Feedback, accumulate: false);
    }
}

/// <summary>B[i] ← B[i] + η·c_i·g̃[i] (alternative 1's pull toward the target, weighted by the current agreement).</summary>
public sealed record PullTowardTarget(Schedule Rate) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key)
    {
        context.Backend.Scale(context.RowCosines, Rate.At(step), context.RowScratch);
        context.Backend.ScaleRows(context.Target, context.RowScratch, context.Feedback, accumulate: true);
    }
}

/// <summary>B ← (1 − η)·B (alternative 2's decay).</summary>
public sealed record DecayFeedback(Schedule Rate) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key) =>
        context.Backend.Scale(context.Feedback, 1f - Rate.At(step), context.Feedback);
}

/// <summary>B ← B + η·g̃ (alternative 2's step toward the target).</summary>
public sealed record AddTarget(Schedule Rate) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key) =>
        context.Backend.Axpby(Rate.At(step), context.Target, 1f, context.Feedback);
}

/// <summary>B ← B + σ·ε, ε ~ N(0, I): lets rows leave directions the deterministic rules cannot (an orthogonal row).</summary>
public sealed record AddNoise(float Scale) : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key)
    {
        if (Scale == 0) return;
        context.Backend.FillNormal(key, 0, 0f, 1f, context.Scratch);
        context.Backend.Axpby(Scale, context.Scratch, 1f, context.Feedback);
    }
}

/// <summary>B ← B·‖B₀‖/‖B‖: keeps the feedback's Frobenius norm at its initial value (the step size of DFA stays put).</summary>
public sealed record Renormalize : FeedbackRule
{
    /// <inheritdoc/>
    public override void Apply(FeedbackContext context, long step, RandomKey key)
    {
        double norm = Math.Sqrt(context.Backend.SumOfSquares(context.Feedback));
        if (norm > 0) context.Backend.Scale(context.Feedback, (float)(context.InitialNorm / norm), context.Feedback);
    }
}

/// <summary>The GrAPE rules of docs/design.md §2, as compositions.</summary>
public static class FeedbackRules
{
    /// <summary>The submission's rule: B ← B − η(1 − c)∘B, plus small noise, then back to the initial norm.</summary>
    public static FeedbackRule Original(Schedule rate, float noise = 1e-3f, bool renormalize = true) =>
        Compose(new ShrinkMisaligned(rate), noise > 0 ? new AddNoise(noise) : null, renormalize ? new Renormalize() : null);

    /// <summary>Alternative 1: B ← B − η(1 − c)∘B + η c∘g̃.</summary>
    public static FeedbackRule Alternative1(Schedule rate, float noise = 0f, bool renormalize = false) =>
        Compose(new ShrinkMisaligned(rate), new PullTowardTarget(rate), noise > 0 ? new AddNoise(noise) : null, renormalize ? new Renormalize() : null);

    /// <summary>Alternative 2: B ← (1 − η)B + η g̃.</summary>
    public static FeedbackRule Alternative2(Schedule rate, float noise = 0f, bool renormalize = false) =>
        Compose(new DecayFeedback(rate), new AddTarget(rate), noise > 0 ? new AddNoise(noise) : null, renormalize ? new Renormalize() : null);

    private static FeedbackRule Compose(params FeedbackRule?[] rules) => new FeedbackChain([.. rules.OfType<FeedbackRule>()]);
}
