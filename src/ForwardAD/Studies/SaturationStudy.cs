using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Guessing;
using ForwardAD.Random;
using ForwardAD.Training;

namespace ForwardAD.Studies;

/// <summary>One point of the saturation curve: the cosine of the mean of <see cref="Guesses"/> estimates to the true gradient.</summary>
public sealed record SaturationPoint(string Guesser, int Guesses, double Cosine);

/// <summary>
/// Figure 4 (left) of "How to Guess a Gradient": on one fixed batch, the mean of n estimates of a guesser against the
/// true gradient g, for n = 2, 4, …, <c>maxGuesses</c>. An unbiased guesser's mean tends to g (cosine → 1, roughly as
/// √(n/(n + N_eff))); a biased one's tends to E[ĝ] = C g and its cosine saturates at cos(C g, g).
/// The n estimates are drawn in chunks of G guesses (one estimator per G, at most <see cref="MaxChunk"/>): the running
/// sum reaches every power of two exactly, each chunk with fresh keys.
/// </summary>
public static class SaturationStudy
{
    /// <summary>The most guesses G one estimator averages; larger n are reached by summing chunks.</summary>
    public const int MaxChunk = 128;

    /// <remarks>guessers: Each method as a factory of its guesser averaging G guesses per estimate.</remarks>
    /// <remarks>progress: Told each finished method's name.</remarks>
    /// <remarks>cancellationToken: Checked before each chunk of guesses: once cancelled, the study stops with
    /// <see cref="OperationCanceledException"/>.</remarks>
    public static List<SaturationPoint> Run(ParameterStore parameters, ReadOnlySpan<float> features, ReadOnlySpan<float> labels, int batchSize,
        IReadOnlyList<Func<int, Guesser>> guessers, int maxGuesses, ulong seed, IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        if (maxGuesses < 2 || (maxGuesses & (maxGuesses - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(maxGuesses), $"The largest number of guesses must be a power of two ≥ 2; got {maxGuesses}.");
        var backend = parameters.Backend;
        var oracle = new BackpropEstimator(parameters, batchSize, updatesRunningStatistics: false);
        oracle.SetBatch(features, labels);
        var exact = oracle.Estimate(default).Gradient.ToHost(backend);
        var points = new List<SaturationPoint>();
        var sum = new double[exact.Length];
        var host = new float[exact.Length];
        for (int method = 0; method < guessers.Count; method++)
        {
            var estimators = new Dictionary<int, GradientEstimator>();
            string name = guessers[method](1).Name;
            Array.Clear(sum);
            int done = 0, call = 0;
            for (int target = 2; target <= maxGuesses; target *= 2)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int chunk = Math.Min(target - done, MaxChunk);
                if (!estimators.TryGetValue(chunk, out var estimator))
                {
                    estimator = guessers[method](chunk).Compile(parameters, batchSize);
                    estimator.SetBatch(features, labels);
                    estimators[chunk] = estimator;
                }
                while (done < target)
                {
                    var key = new RandomKey(seed, 0x5A7).Derive((ulong)method).Derive((ulong)call++);
                    backend.CopyToHost(estimator.Estimate(key).Gradient, host);
                    for (int j = 0; j < host.Length; j++) sum[j] += (double)host[j] * chunk; // each estimate averages its chunk
                    done += chunk;
                }
                points.Add(new SaturationPoint(name, target, Cosine(sum, exact)));
            }
            progress?.Report(name);
        }
        return points;
    }

    private static double Cosine(double[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { dot += a[i] * b[i]; aa += a[i] * a[i]; bb += (double)b[i] * b[i]; }
        return aa == 0 || bb == 0 ? 0 : dot / Math.Sqrt(aa * bb);
    }

    internal static float[] ToHost(this View view, Backend backend)
    {
        var host = new float[view.Length];
        backend.CopyToHost(view, host);
        return host;
    }
}
