using ForwardAD.Autodiff;
using ForwardAD.Backends;

namespace ForwardAD.Optim;

/// <summary>u ← factor · u.</summary>
public sealed record Scale(float Factor) : ElementwiseRule<EmptyState>
{
    /// <inheritdoc/>
    protected override EmptyState Create(ParameterStore parameters) => EmptyState.Instance;
    /// <inheritdoc/>
    protected override void ApplyRange(EmptyState state, in UpdateInputs inputs, View updates, View parameters, int offset) =>
        parameters.Buffer!.Backend.Scale(updates, Factor, updates);
}

/// <summary>u ← −η(step) · u: turns a descent direction into a step (the last link of every named optimizer).</summary>
public sealed record ScaleByLearningRate(Schedule Rate) : ElementwiseRule<EmptyState>
{
    /// <inheritdoc/>
    protected override EmptyState Create(ParameterStore parameters) => EmptyState.Instance;
    /// <inheritdoc/>
    protected override void ApplyRange(EmptyState state, in UpdateInputs inputs, View updates, View parameters, int offset) =>
        parameters.Buffer!.Backend.Scale(updates, -Rate.At(inputs.Step), updates);
}

/// <summary>
/// Momentum as PyTorch's SGD computes it (dampening 0): trace m ← μ·m + u, then u ← m (heavy ball)
/// or u ← u + μ·m (Nesterov). The learning rate is applied after, by <see cref="ScaleByLearningRate"/>.
/// </summary>
public sealed record Momentum(float Decay, bool Nesterov = false) : ElementwiseRule<TraceState>
{
    /// <summary>A zeroed trace of the parameters' length.</summary>
    protected override TraceState Create(ParameterStore parameters) => new(Zeros(parameters));
    /// <inheritdoc/>
    protected override void ApplyRange(TraceState state, in UpdateInputs inputs, View updates, View parameters, int offset)
    {
        var backend = parameters.Buffer!.Backend;
        var trace = state.Trace.Slice(offset, updates.Length);
        // PyTorch starts the trace at the first gradient (buf = g), which equals μ·0 + g.
        backend.Axpby(1f, updates, Decay, trace);
        if (Nesterov) backend.Axpby(Decay, trace, 1f, updates);
        else backend.Copy(trace, updates);
    }

    internal static View Zeros(ParameterStore parameters)
    {
        var view = new View(parameters.Backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        parameters.Backend.Fill(0f, view);
        return view;
    }
}

/// <summary>The state of <see cref="Momentum"/>: one trace buffer over the flat parameter vector, saved in checkpoints
/// as <c>trace</c>.</summary>
/// <param name="Trace">The momentum trace m, as long as the parameter vector, zero at initialisation.</param>
public sealed record TraceState(View Trace) : UpdateState
{
    /// <inheritdoc/>
    public override IEnumerable<(string Name, View Buffer)> Buffers => [("trace", Trace)];
}

/// <summary>
/// Adam's direction (Kingma &amp; Ba 2015): m ← β₁m + (1−β₁)u, v ← β₂v + (1−β₂)u², then
/// u ← m̂ / (√v̂ + ε) with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), t = step + 1 (PyTorch's ε placement).
/// </summary>
public sealed record ScaleByAdam(float Beta1 = 0.9f, float Beta2 = 0.999f, float Epsilon = 1e-8f) : ElementwiseRule<AdamState>
{
    /// <summary>Zeroed first and second moments of the parameters' length.</summary>
    protected override AdamState Create(ParameterStore parameters) => new(Momentum.Zeros(parameters), Momentum.Zeros(parameters));
    /// <inheritdoc/>
    protected override void ApplyRange(AdamState state, in UpdateInputs inputs, View updates, View parameters, int offset)
    {
        var backend = parameters.Buffer!.Backend;
        var (m, v) = (state.FirstMoment.Slice(offset, updates.Length), state.SecondMoment.Slice(offset, updates.Length));
        backend.Axpby(1f - Beta1, updates, Beta1, m);
        backend.MovingAverageOfSquares(updates, Beta2, v);
        var (mScale, vScale) = BiasCorrections(Beta1, Beta2, inputs.Step);
        backend.AdamDirection(m, v, mScale, vScale, Epsilon, updates);
    }

    /// <summary>1/(1 − β₁ᵗ) and 1/(1 − β₂ᵗ) for t = step + 1.</summary>
    internal static (float FirstScale, float SecondScale) BiasCorrections(float beta1, float beta2, long step) =>
        ((float)(1 / (1 - Math.Pow(beta1, step + 1))), (float)(1 / (1 - Math.Pow(beta2, step + 1))));
}

/// <summary>The state of <see cref="ScaleByAdam"/>: the moving averages m and v over the flat parameter vector, saved
/// in checkpoints as <c>first_moment</c> and <c>second_moment</c>. The bias corrections come from the step count in
/// <see cref="UpdateInputs"/>, so the state holds no counter.</summary>
/// <param name="FirstMoment">m, the moving average of the updates, zero at initialisation.</param>
/// <param name="SecondMoment">v, the moving average of the squared updates, zero at initialisation.</param>
public sealed record AdamState(View FirstMoment, View SecondMoment) : UpdateState
{
    /// <inheritdoc/>
    public override IEnumerable<(string Name, View Buffer)> Buffers => [("first_moment", FirstMoment), ("second_moment", SecondMoment)];
}

/// <summary>
/// StableAdamW's direction (Wortsman et al. 2023, "Stable and low-precision training for large-scale
/// vision-language models", Alg. 2): Adam's direction, divided per parameter tensor by
/// max(1, RMS) with RMS = √(mean(g² / max(v̂, ε²))), the Adafactor update clipping that tames loss spikes.
/// </summary>
public sealed record ScaleByStableAdam(float Beta1 = 0.9f, float Beta2 = 0.99f, float Epsilon = 1e-6f) : UpdateRule<StableAdamState>
{
    /// <summary>Zeroed moments and the parameter layout (the per-tensor ranges the RMS is taken over).</summary>
    protected override StableAdamState Create(ParameterStore parameters) =>
        new(Momentum.Zeros(parameters), Momentum.Zeros(parameters), ParameterLayout.Of(parameters.Model));

    /// <summary>Updates m and v on the whole vector, then, tensor by tensor, takes RMS = √(mean(u² / max(v̂, ε²))) and
    /// writes u ← m̂ / (√v̂ + ε) / max(1, RMS). Not elementwise (the RMS is a per-tensor reduction).</summary>
    protected override void Apply(StableAdamState state, in UpdateInputs inputs, View updates, View parameters)
    {
        var backend = parameters.Buffer!.Backend;
        var (mScale, vScale) = ScaleByAdam.BiasCorrections(Beta1, Beta2, inputs.Step);
        backend.Axpby(1f - Beta1, updates, Beta1, state.FirstMoment);
        backend.MovingAverageOfSquares(updates, Beta2, state.SecondMoment);
        foreach (var (parameter, offset) in state.Layout.Entries)
        {
            int n = parameter.Shape.ElementCount;
            var g = updates.Slice(offset, n);
            var v = state.SecondMoment.Slice(offset, n);
            double rms = Math.Sqrt(backend.MeanRatioOfSquares(g, v, vScale, Epsilon * Epsilon));
            float clip = (float)(1 / Math.Max(1, rms));
            backend.AdamDirection(state.FirstMoment.Slice(offset, n), v, mScale * clip, vScale, Epsilon, g);
        }
    }
}

/// <summary>The state of <see cref="ScaleByStableAdam"/>: Adam's moments plus the parameter layout that delimits the
/// tensors. Checkpoints save the moments as <c>first_moment</c> and <c>second_moment</c>.</summary>
/// <param name="FirstMoment">m, the moving average of the updates.</param>
/// <param name="SecondMoment">v, the moving average of the squared updates.</param>
/// <param name="Layout">Where each parameter tensor lies in the flat vector; the update RMS is clipped per tensor.</param>
public sealed record StableAdamState(View FirstMoment, View SecondMoment, ParameterLayout Layout) : UpdateState
{
    /// <inheritdoc/>
    public override IEnumerable<(string Name, View Buffer)> Buffers => [("first_moment", FirstMoment), ("second_moment", SecondMoment)];
}

/// <summary>Decoupled weight decay (Loshchilov &amp; Hutter 2019): u ← u + λθ, placed before the learning-rate
/// scaling so that θ ← θ − η(u + λθ), exactly PyTorch's AdamW.</summary>
public sealed record AddDecoupledWeightDecay(float Rate) : ElementwiseRule<EmptyState>
{
    /// <inheritdoc/>
    protected override EmptyState Create(ParameterStore parameters) => EmptyState.Instance;
    /// <inheritdoc/>
    protected override void ApplyRange(EmptyState state, in UpdateInputs inputs, View updates, View parameters, int offset)
    {
        if (Rate != 0) parameters.Buffer!.Backend.Axpby(Rate, parameters, 1f, updates);
    }
}

/// <summary>u ← u · min(1, c / ‖u‖₂) over all parameters at once (torch.nn.utils.clip_grad_norm_).</summary>
public sealed record ClipByGlobalNorm : UpdateRule<EmptyState>
{
    /// <param name="maxNorm">c &gt; 0: a negative c would flip the update (gradient ascent), zero would freeze training.</param>
    public ClipByGlobalNorm(float maxNorm)
    {
        if (!(maxNorm > 0) || !float.IsFinite(maxNorm))
            throw new ArgumentOutOfRangeException(nameof(maxNorm), $"The clipping norm must be a positive finite number; got {maxNorm}.");
        MaxNorm = maxNorm;
    }

    /// <summary>c, the largest global L2 norm an update may leave with (positive and finite).</summary>
    public float MaxNorm { get; }

    /// <inheritdoc/>
    protected override EmptyState Create(ParameterStore parameters) => EmptyState.Instance;
    /// <summary>Scales the update by c / (‖u‖₂ + 10⁻⁶) when that factor is below 1 (PyTorch's clip coefficient); leaves it
    /// unchanged otherwise.</summary>
    protected override void Apply(EmptyState state, in UpdateInputs inputs, View updates, View parameters)
    {
        var backend = parameters.Buffer!.Backend;
        double norm = Math.Sqrt(backend.SumOfSquares(updates));
        // PyTorch: clip_coef = max_norm / (total_norm + 1e-6), applied when below 1.
        double coefficient = MaxNorm / (norm + 1e-6);
        if (coefficient < 1) backend.Scale(updates, (float)coefficient, updates);
    }
}

/// <summary>The named optimizers, each a composition of the rules above.</summary>
public static class Optimizers
{
    /// <summary>Plain SGD: θ ← θ − η(t)·g.</summary>
    /// <param name="rate">The learning rate η, constant (a float converts) or scheduled.</param>
    public static UpdateRule Sgd(Schedule rate) => new ScaleByLearningRate(rate);

    /// <summary>SGD with momentum as PyTorch's (dampening 0): m ← μ·m + g, θ ← θ − η·m, or θ ← θ − η·(g + μ·m) with
    /// Nesterov. <see cref="Optim.Momentum"/> then <see cref="ScaleByLearningRate"/>.</summary>
    /// <param name="rate">The learning rate η.</param>
    /// <param name="momentum">μ, the trace's decay.</param>
    /// <param name="nesterov">Nesterov momentum instead of heavy ball.</param>
    public static UpdateRule Momentum(Schedule rate, float momentum = 0.9f, bool nesterov = false) =>
        new Momentum(momentum, nesterov).Then(new ScaleByLearningRate(rate));

    /// <summary>Adam (Kingma &amp; Ba 2015, PyTorch's ε placement): θ ← θ − η·m̂ / (√v̂ + ε) with bias-corrected moments
    /// m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ). <see cref="ScaleByAdam"/> then <see cref="ScaleByLearningRate"/>.</summary>
    /// <param name="rate">The learning rate η.</param>
    /// <param name="beta1">β₁, the first moment's decay.</param>
    /// <param name="beta2">β₂, the second moment's decay.</param>
    /// <param name="epsilon">ε, added to √v̂.</param>
    public static UpdateRule Adam(Schedule rate, float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f) =>
        new ScaleByAdam(beta1, beta2, epsilon).Then(new ScaleByLearningRate(rate));

    /// <summary>AdamW (Loshchilov &amp; Hutter 2019), as PyTorch's: θ ← θ − η·(m̂ / (√v̂ + ε) + λθ), the weight decay
    /// decoupled from the gradient's moments and scaled by the same η. <see cref="ScaleByAdam"/>, then
    /// <see cref="AddDecoupledWeightDecay"/>, then <see cref="ScaleByLearningRate"/>.</summary>
    /// <param name="rate">The learning rate η.</param>
    /// <param name="weightDecay">λ; 0 gives Adam.</param>
    /// <param name="beta1">β₁, the first moment's decay.</param>
    /// <param name="beta2">β₂, the second moment's decay.</param>
    /// <param name="epsilon">ε, added to √v̂.</param>
    public static UpdateRule AdamW(Schedule rate, float weightDecay = 0.01f, float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f) =>
        new ScaleByAdam(beta1, beta2, epsilon).Then(new AddDecoupledWeightDecay(weightDecay)).Then(new ScaleByLearningRate(rate));

    /// <summary>StableAdamW (Wortsman et al. 2023): AdamW whose direction is divided, per parameter tensor, by
    /// max(1, RMS) with RMS = √(mean(g² / max(v̂, ε²))). <see cref="ScaleByStableAdam"/>, then
    /// <see cref="AddDecoupledWeightDecay"/>, then <see cref="ScaleByLearningRate"/>.</summary>
    /// <param name="rate">The learning rate η.</param>
    /// <param name="weightDecay">λ, the decoupled weight decay.</param>
    /// <param name="beta1">β₁, the first moment's decay.</param>
    /// <param name="beta2">β₂, the second moment's decay (0.99 by default, as the paper).</param>
    /// <param name="epsilon">ε, added to √v̂ and squared as the floor of v̂ in the RMS.</param>
    public static UpdateRule StableAdamW(Schedule rate, float weightDecay = 0.01f, float beta1 = 0.9f, float beta2 = 0.99f, float epsilon = 1e-6f) =>
        new ScaleByStableAdam(beta1, beta2, epsilon).Then(new AddDecoupledWeightDecay(weightDecay)).Then(new ScaleByLearningRate(rate));
}
