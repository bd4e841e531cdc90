using ForwardAD.Backends;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Tests;

/// <summary>Monte-Carlo expectations of guessers: many estimates on one batch, their mean and spread, and the
/// 5-standard-error check every expectation test uses.</summary>
internal static class GuessSampling
{
    /// <summary>Draws <paramref name="samples"/> estimates with keys (seed, 0).Derive(s); the model state (running
    /// statistics) is restored before each, so that every sample sees the same model. Returns the mean and the sample
    /// standard deviation per component.</summary>
    public static (double[] Mean, double[] Std) Sample(Problem problem, Guesser guesser, int batch, int samples, ulong seed)
    {
        var estimator = guesser.Compile(problem.Parameters, batch);
        estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        var state = problem.Parameters.State.ToArray();
        double[]? sum = null, squares = null;
        for (int s = 0; s < samples; s++)
        {
            CpuBackend.Span(problem.Parameters.State).CopyFrom(state);
            var estimate = estimator.Estimate(new RandomKey(seed, 0).Derive((ulong)s)).Gradient.ToArray();
            sum ??= new double[estimate.Length];
            squares ??= new double[estimate.Length];
            for (int j = 0; j < estimate.Length; j++) { sum[j] += estimate[j]; squares[j] += (double)estimate[j] * estimate[j]; }
        }
        CpuBackend.Span(problem.Parameters.State).CopyFrom(state);
        var mean = sum!.Select(v => v / samples).ToArray();
        return (mean, [.. squares!.Select((v, j) => Math.Sqrt(Math.Max(0, v / samples - mean[j] * mean[j]) * samples / (samples - 1)))]);
    }

    /// <summary>|mean − expected| ≤ 5 standard errors (+ float32 rounding) per component: a false failure has odds ~6e-7 each.</summary>
    public static void AssertWithinStandardErrors(double[] expected, double[] mean, double[] std, int samples, string what)
    {
        for (int j = 0; j < expected.Length; j++)
        {
            double bound = 5 * std[j] / Math.Sqrt(samples) + 1e-6 * (1 + Math.Abs(expected[j]));
            if (Math.Abs(mean[j] - expected[j]) > bound)
                throw new Xunit.Sdk.XunitException($"{what}: component {j} mean {mean[j]:G6}, expected {expected[j]:G6} (5 standard errors = {bound:G3}).");
        }
    }

    /// <summary>Every guesser kind by a short name, for theories that run all of them on a model family.</summary>
    public static TheoryData<string> GuesserNames => new()
    {
        "backprop", "activation-perturbation", "activation-perturbation per-layer", "weight-transpose", "downstream-2", "mixing",
        "self-sharpening", "directional", "dfa", "grape",
    };

    public static Guesser Named(string name) => name switch
    {
        "backprop" => Guessers.Backprop,
        "activation-perturbation" => Guessers.ActivationPerturbation(),
        "activation-perturbation per-layer" => Guessers.ActivationPerturbation(TangentMode.PerLayer, 2),
        "weight-transpose" => Guessers.WeightTranspose(),
        "downstream-2" => Guessers.Downstream(2),
        "mixing" => Guessers.ActivationMixing(),
        "self-sharpening" => Guessers.SelfSharpening(),
        "directional" => Guessers.DirectionalDescent(2),
        "dfa" => Guessers.Dfa(),
        "grape" => Guessers.Grape(new GrapeOptions()),
        // Each site's JVP of its own block's losses (models with local losses, the LocalMixer).
        "activation-perturbation local" => (ActivationGuesser)Guessers.ActivationPerturbation() with { Loss = SiteLoss.Local },
        "weight-transpose local" => (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local },
        "mixing local" => (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local },
        // Ren et al.'s per-(token, group) block JVPs of the local losses (models that declare their blocks, the LocalMixer).
        "ren" => Guessers.RenActivationPerturbation(),
        "ren per-layer" => Guessers.RenActivationPerturbation(TangentMode.PerLayer, 2),
        "weight-transpose blocks" => (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local, LocalBlocks = true },
        "mixing blocks" => (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local, LocalBlocks = true },
        // Ren et al.'s placement (after each LayerNorm, before its ReLU) and exact heads, with other guesses in place of the noise.
        "weight-transpose ren" => (ActivationGuesser)Guessers.WeightTranspose() with { Loss = SiteLoss.Local, LocalBlocks = true, Placement = GuessPlacement.Normalized, ExactLast = true },
        "mixing ren" => (ActivationGuesser)Guessers.ActivationMixing() with { Loss = SiteLoss.Local, LocalBlocks = true, Placement = GuessPlacement.Normalized, ExactLast = true },
        "ren at sites" => Guessers.RenActivationPerturbation(placement: GuessPlacement.Site, exactLast: false),
        _ => throw new ArgumentException($"No guesser named '{name}'.", nameof(name)),
    };

    /// <summary>The guesser compiles on the problem's model, estimates a finite, non-zero gradient, and its AdamW training
    /// steps allocate nothing after two warm-up steps.</summary>
    public static void AssertTrainsWithoutAllocating(Problem problem, string name, int batch) =>
        AssertTrainsWithoutAllocating(problem, Named(name), name, batch);

    /// <summary>As above for any guesser value (<paramref name="name"/> labels the messages).</summary>
    public static void AssertTrainsWithoutAllocating(Problem problem, Guesser guesser, string name, int batch)
    {
        var estimator = guesser.Compile(problem.Parameters, batch);
        var optimizer = new Optimizer(Optimizers.AdamW(1e-3f), problem.Parameters);
        var (x, y) = (problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        void Step(int i)
        {
            estimator.SetBatch(x, y);
            var (gradient, loss) = estimator.Estimate(new RandomKey(1, (ulong)i), i);
            optimizer.Step(new UpdateInputs(i, loss, default), gradient);
        }
        estimator.SetBatch(x, y);
        var first = estimator.Estimate(new RandomKey(9, 9)).Gradient.ToArray();
        Assert.All(first, v => Assert.True(float.IsFinite(v), $"{name}: a non-finite estimate"));
        Assert.Contains(first, v => v != 0);
        Allocations.AssertNone(Step, warmUp: 2, steps: 3, $"{name}'s training step");
    }

    /// <summary>The parameter estimate a guesser makes from given site cotangents ([B, ...] per site, in site order): the
    /// sites' own VJP rules, the same linear map the estimators use.</summary>
    public static double[] ParametersFrom(Problem problem, Autodiff.Plan plan, IReadOnlyList<float[]> siteCotangents)
    {
        var store = problem.Parameters;
        var destination = new View(store.Backend.Allocate(store.All.Length), 0, store.All.Length);
        var update = plan.CreateParameterUpdate([.. problem.Model.Sites.Select(s => s.Node)], destination);
        for (int i = 0; i < siteCotangents.Count; i++)
        {
            var view = new View(store.Backend.Allocate(siteCotangents[i].Length), 0, siteCotangents[i].Length);
            store.Backend.CopyFromHost(siteCotangents[i], view);
            update.Write(i, view);
        }
        return [.. destination.ToArray().Select(v => (double)v)];
    }
}
