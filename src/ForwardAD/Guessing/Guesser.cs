using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Guessing;

/// <summary>
/// How the guesses of the layers share tangent channels (DESIGN.md §2). Joint: one channel carries every
/// layer's guess (K = G; cheap, cross-layer terms add variance). PerLayer: one channel per layer
/// (K = L·G; independent estimates, L× the tangent work).
/// </summary>
public enum TangentMode { Joint, PerLayer }

/// <summary>A way to estimate the gradient from one batch: a description, compiled into a
/// <see cref="GradientEstimator"/> for a parameter store and batch size.</summary>
public abstract record Guesser
{
    private protected Guesser() { }

    /// <summary>Short name for reports and CSV columns.</summary>
    public abstract string Name { get; }

    public abstract GradientEstimator Compile(ParameterStore parameters, int batchSize);

    public override string ToString() => Name;
}

/// <summary>The exact gradient by backprop: the oracle as a guesser.</summary>
public sealed record BackpropGuesser : Guesser
{
    public override string Name => "backprop";
    public override GradientEstimator Compile(ParameterStore parameters, int batchSize) => new BackpropEstimator(parameters, batchSize);
}

/// <summary>
/// Activation guessing: at every dense layer i a guess u_i of ∂L/∂s_i per example (<see cref="Hidden"/> for
/// hidden layers, <see cref="Last"/> for the output layer), one JVP giving per-example scalars
/// d_b = ∂(ℓ_b/B)/∂s_i·u_b, and the estimate ΔW_i = Σ_b d_b u_b x_bᵀ, Δb_i = Σ_b d_b u_b, averaged over
/// <see cref="Guesses"/> guesses.
/// </summary>
public sealed record ActivationGuesser(string Label, Guess Hidden, Guess Last, TangentMode Mode = TangentMode.Joint, int Guesses = 1) : Guesser
{
    public override string Name => Mode == TangentMode.PerLayer ? $"{Label} (per-layer)" : Label;

    public override GradientEstimator Compile(ParameterStore parameters, int batchSize)
    {
        if (Guesses < 1) throw new ArgumentOutOfRangeException(nameof(Guesses), $"At least one guess per step; got {Guesses}.");
        return new ActivationGuessEstimator(this, parameters, batchSize);
    }
}

/// <summary>
/// Directional descent (weight perturbation): v ~ N(0, I) over all parameters, one JVP of the mean loss,
/// ĝ = (g·v) v, averaged over <see cref="Guesses"/> directions (K = G channels).
/// </summary>
public sealed record DirectionalDescent(int Guesses = 1) : Guesser
{
    public override string Name => "directional descent";
    public override GradientEstimator Compile(ParameterStore parameters, int batchSize) => new DirectionalEstimator(parameters, batchSize, Guesses, null);
}

/// <summary>
/// The paper's cosine-matched control (appendix A.2): a direction y with a set cosine θ to the true gradient g,
/// y = √N (θ ĝ + √(1−θ²) r̂), ĝ = g/‖g‖, r̂ a random unit vector orthogonal to g; then ĝ_est = (g·y) y with
/// g·y from one JVP. It needs the oracle gradient each step, so it is a measurement device, not a method.
/// </summary>
public sealed record CosineMatchedDescent(double Cosine, int Guesses = 1) : Guesser
{
    public override string Name => $"cosine-matched ({Cosine:0.###})";
    public override GradientEstimator Compile(ParameterStore parameters, int batchSize)
    {
        if (Cosine is < -1 or > 1) throw new ArgumentOutOfRangeException(nameof(Cosine), $"A cosine lies in [−1, 1]; got {Cosine}.");
        return new DirectionalEstimator(parameters, batchSize, Guesses, Cosine);
    }
}

/// <summary>The named guessers, as compositions of <see cref="Guesses"/>.</summary>
public static class Guessers
{
    public static Guesser Backprop { get; } = new BackpropGuesser();
    public static Guesser DirectionalDescent(int guesses = 1) => new DirectionalDescent(guesses);
    public static Guesser ActivationPerturbation(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("activation perturbation", Guesses.ActivationPerturbation, Guess.Normal, mode, guesses);
    public static Guesser WeightTranspose(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("Wᵀ", Guesses.WeightTranspose, Guess.Normal, mode, guesses);
    public static Guesser Downstream(int k, TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser($"{k}-layer downstream", Guesses.Downstream(k), Guess.Normal, mode, guesses);
    public static Guesser ActivationMixing(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("activation mixing", Guesses.ActivationMixing, Guess.Normal, mode, guesses);
    public static Guesser SelfSharpening(TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser("self-sharpening", Guesses.SelfSharpening, Guess.TrueError, mode, guesses);
    public static Guesser WeightTransposePower(float power, TangentMode mode = TangentMode.Joint, int guesses = 1) =>
        new ActivationGuesser($"Wᵀ with σ^{power:0.##}", Guesses.WeightTransposePower(power), Guess.Normal, mode, guesses);
    public static Guesser CosineMatched(double cosine, int guesses = 1) => new CosineMatchedDescent(cosine, guesses);
    public static Guesser Dfa(FeedbackInitialization initialization = FeedbackInitialization.XavierUniform, ulong seed = 0) =>
        new DirectFeedbackAlignment(initialization, null, seed);
    public static Guesser Grape(GrapeOptions options, FeedbackInitialization initialization = FeedbackInitialization.XavierUniform, ulong seed = 0) =>
        new DirectFeedbackAlignment(initialization, options, seed);
}

/// <summary>The compiled <see cref="ActivationGuesser"/>.</summary>
internal sealed class ActivationGuessEstimator : GradientEstimator
{
    private readonly ActivationGuesser _guesser;
    private readonly Plan _plan;
    private readonly GuessProgram[] _programs;
    private readonly View _scales, _scaled, _summed, _gradient;
    private readonly View[] _gradients;
    private readonly int _guesses;
    private readonly bool _readsForwardValues;

    public ActivationGuessEstimator(ActivationGuesser guesser, ParameterStore parameters, int batchSize)
    {
        var model = parameters.Model;
        if (model.Layers.Length == 0) throw new ArgumentException("Activation guessing needs a model with dense layers.");
        _guesser = guesser;
        _guesses = guesser.Guesses;
        int layers = model.Layers.Length;
        int channels = guesser.Mode == TangentMode.PerLayer ? layers * _guesses : _guesses;
        _plan = Plan.Compile(parameters, new PlanOptions(batchSize)
        {
            TangentCount = channels,
            Seeds = [.. model.Layers.Select(l => new TangentSeed(l.PreActivation))],
        });
        var compiler = new GuessCompiler(_plan, _guesses);
        _programs = [.. Enumerable.Range(0, layers).Select(i => (i == layers - 1 ? guesser.Last : guesser.Hidden).Compile(compiler, i))];
        _readsForwardValues = _programs.Any(p => p.ReadsForwardValues);
        // Channels of other layers stay zero in per-layer mode: clear the seeds once.
        foreach (var layer in model.Layers) parameters.Backend.Fill(0f, _plan.Seed(layer.PreActivation));
        int widest = Enumerable.Range(0, layers).Max(compiler.Elements);
        _scales = compiler.Workspace(channels * batchSize);
        _scaled = compiler.Workspace(widest);
        _summed = compiler.Workspace(widest / _guesses);
        _gradient = compiler.Workspace(parameters.All.Length);
        parameters.Backend.Fill(0f, _gradient);
        _gradients = ParameterLayout.Of(model).Slices(model, _gradient);
    }

    public override Plan Plan => _plan;

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        var backend = _plan.Backend;
        var layers = _plan.Model.Layers;
        int batch = _plan.BatchSize;
        if (_readsForwardValues) _plan.Forward();
        for (int i = 0; i < layers.Length; i++)
        {
            var seed = _plan.Seed(layers[i].PreActivation);
            _programs[i].Write(key.Derive((ulong)i), GuessSlice(seed, i));
        }
        // Guesses that need no forward value (plain noise) are drawn first; forward and JVP then run fused, layer by layer.
        if (_readsForwardValues) _plan.Jvp();
        else _plan.ForwardJvp();
        // d_{k,b} = ℓ̇_{k,b} / B, and the average over G guesses folded in: scale = 1/(B·G).
        backend.Scale(_plan.Tangent(_plan.Model.Loss), 1f / (batch * _guesses), _scales);
        for (int i = 0; i < layers.Length; i++)
        {
            var layer = layers[i];
            var guess = GuessSlice(_plan.Seed(layer.PreActivation), i);
            int channelBase = _guesser.Mode == TangentMode.PerLayer ? i * _guesses : 0;
            int rowsPerExample = layer.PreActivation.Shape.LeadingCount, width = layer.PreActivation.Shape.Last;
            var scales = _scales.Slice(channelBase * batch, _guesses * batch);
            var scaled = _scaled.Slice(0, guess.Length);
            var summed = _summed.Slice(0, guess.Length / _guesses);
            // Σ_g d_{g,b} u_{g,b}: scale each example's rows by its scalar, then sum the G channels.
            backend.ScaleRows(guess, scales, scaled, accumulate: false);
            backend.SumRows(scaled, summed, accumulate: false);
            // ΔW_i = Sᵀ X_i with S the summed, scaled guesses ([B·rows, n]) and X_i the layer input ([B·rows, in]).
            int inputs = layer.Input.Shape.Last, rows = batch * rowsPerExample;
            backend.Gemm(Tensors.Transpose.Yes, Tensors.Transpose.No, width, inputs, rows, 1f, summed, width,
                _plan.Value(layer.Input), inputs, 0f, _gradients[layer.Weight.Id], inputs);
            if (layer.Bias is not null) backend.SumRows(summed, _gradients[layer.Bias.Id], accumulate: false);
        }
        return (_gradient, _plan.MeanLoss());
    }

    /// <summary>The channels of a layer's seed that carry its G guesses.</summary>
    private View GuessSlice(View seed, int layer)
    {
        if (_guesser.Mode == TangentMode.Joint) return seed;
        int perChannel = seed.Length / (_plan.Model.Layers.Length * _guesses);
        return seed.Slice(layer * _guesses * perChannel, _guesses * perChannel);
    }

}

/// <summary>The compiled <see cref="DirectionalDescent"/> and <see cref="CosineMatchedDescent"/>.</summary>
internal sealed class DirectionalEstimator : GradientEstimator
{
    private readonly Plan _plan;
    private readonly BackpropEstimator? _oracle;
    private readonly double? _cosine;
    private readonly int _guesses;
    private readonly Node[] _parameters;
    private readonly View _gradient, _direction, _orthogonal;
    private readonly View[] _gradients;
    private readonly ParameterLayout _layout;
    private readonly float[] _lossTangent;

    public DirectionalEstimator(ParameterStore parameters, int batchSize, int guesses, double? cosine)
    {
        if (guesses < 1) throw new ArgumentOutOfRangeException(nameof(guesses), $"At least one guess per step; got {guesses}.");
        var model = parameters.Model;
        _guesses = guesses;
        _cosine = cosine;
        _parameters = [.. model.Parameters];
        _layout = ParameterLayout.Of(model);
        _plan = Plan.Compile(parameters, new PlanOptions(batchSize)
        {
            TangentCount = guesses,
            // Directions are drawn from their key each run when no oracle shapes them (memory: never stored twice).
            Seeds = [.. _parameters.Select(p => new TangentSeed(p, cosine is null ? new RandomKey(0, (ulong)p.Id) : null))],
            ReuseBuffers = true,
        });
        _oracle = cosine is null ? null : new BackpropEstimator(parameters, batchSize);
        var backend = parameters.Backend;
        _gradient = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        _gradients = _layout.Slices(model, _gradient);
        if (cosine is not null)
        {
            _direction = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
            _orthogonal = new View(backend.Allocate(Math.Max(1, parameters.All.Length)), 0, parameters.All.Length);
        }
        _lossTangent = new float[guesses * batchSize];
    }

    public override Plan Plan => _plan;

    public override void SetBatch(ReadOnlySpan<float> features, ReadOnlySpan<float> labels)
    {
        base.SetBatch(features, labels);
        _oracle?.SetBatch(features, labels);
    }

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        var backend = _plan.Backend;
        int batch = _plan.BatchSize;
        if (_cosine is null)
            foreach (var p in _parameters) _plan.SetSeedGenerator(p, key.Derive((ulong)p.Id));
        else
            WriteCosineMatchedDirections(key);
        _plan.ForwardJvp();
        backend.CopyToHost(_plan.Tangent(_plan.Model.Loss), _lossTangent);
        backend.Fill(0f, _gradient);
        for (int k = 0; k < _guesses; k++)
        {
            // g·v_k = (1/B) Σ_b ℓ̇_{k,b}; ĝ = (1/G) Σ_k (g·v_k) v_k.
            double directional = 0;
            for (int b = 0; b < batch; b++) directional += _lossTangent[k * batch + b];
            float weight = (float)(directional / batch / _guesses);
            foreach (var p in _parameters)
                backend.Axpby(weight, _plan.Seed(p).Channel(k, p.Shape.ElementCount), 1f, _gradients[p.Id]);
        }
        return (_gradient, _plan.MeanLoss());
    }

    /// <summary>y_k = √N (θ ĝ + √(1−θ²) r̂_k) with r̂_k ⟂ g, written into the parameter seeds.</summary>
    private void WriteCosineMatchedDirections(RandomKey key)
    {
        var backend = _plan.Backend;
        var (g, _) = _oracle!.Estimate(key);
        double n = g.Length, gNorm = Math.Sqrt(backend.SumOfSquares(g));
        double theta = _cosine!.Value, sine = Math.Sqrt(Math.Max(0, 1 - theta * theta));
        for (int k = 0; k < _guesses; k++)
        {
            backend.FillNormal(key.Derive((ulong)k), 0, 0f, 1f, _orthogonal);
            if (gNorm > 0) backend.Axpby((float)(-backend.Dot(_orthogonal, g) / (gNorm * gNorm)), g, 1f, _orthogonal);
            double rNorm = Math.Sqrt(backend.SumOfSquares(_orthogonal));
            backend.Fill(0f, _direction);
            if (gNorm > 0) backend.Axpby((float)(Math.Sqrt(n) * theta / gNorm), g, 1f, _direction);
            if (rNorm > 0) backend.Axpby((float)(Math.Sqrt(n) * sine / rNorm), _orthogonal, 1f, _direction);
            foreach (var (p, offset) in _layout.Entries)
                backend.Copy(_direction.Slice(offset, p.Shape.ElementCount), _plan.Seed(p).Channel(k, p.Shape.ElementCount));
        }
    }
}
