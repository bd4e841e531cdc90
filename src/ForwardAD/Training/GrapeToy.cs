using ForwardAD.Backends;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Training;

/// <summary>One trajectory of the toy experiment: mean row-cosine of B to the target after each step (index 0 = start).</summary>
public sealed record ToyTrajectory(string Rule, double Start, ulong Seed, double[] MeanRowCosine);

/// <summary>
/// The toy experiment of the GrAPE rebuttal: a fixed target matrix T (n × n, N(0, 1) entries), a feedback matrix
/// B whose rows all start at cosine c₀ to the rows of T (B_i = c₀ t̂_i + √(1 − c₀²) r̂_i with r̂_i ⟂ t_i a random
/// unit vector), and a feedback rule applied for a number of steps with g̃ = T rescaled to ‖B‖.
/// </summary>
public static class GrapeToy
{
    /// <summary>Runs <paramref name="rule"/> for <paramref name="steps"/> steps on the CPU from a B whose rows start at cosine
    /// <paramref name="start"/> to T's, and records the mean row cosine cos(g̃_i, B_i) before the first step and after each.</summary>
    /// <param name="label">The rule's name in the result.</param>
    /// <param name="rule">The feedback rule under test, applied with step index and a key derived from <paramref name="seed"/>.</param>
    /// <param name="start">c₀ in [−1, 1]: every row's starting cosine to the target.</param>
    /// <param name="seed">Seeds B's random orthogonal parts and the rule's noise.</param>
    /// <param name="size">n: T and B are n × n.</param>
    /// <param name="steps">Rule applications.</param>
    /// <param name="targetSeed">Seeds T, kept apart from <paramref name="seed"/> so that runs share one target.</param>
    /// <returns>The trajectory: <paramref name="steps"/> + 1 mean row cosines.</returns>
    public static ToyTrajectory Run(string label, FeedbackRule rule, double start, ulong seed, int size = 200, int steps = 50, ulong targetSeed = 2025)
    {
        var backend = new CpuBackend();
        int n = size;
        var target = new float[n * n];
        RandomFill.Normal(new RandomKey(targetSeed, 0x7A26E7), 0, 0f, 1f, target);
        var feedback = new float[n * n];
        var noise = new float[n];
        for (int i = 0; i < n; i++)
        {
            var t = target.AsSpan(i * n, n);
            RandomFill.Normal(new RandomKey(seed, 0xB0).Derive((ulong)i), 0, 0f, 1f, noise);
            double tt = Dot(t, t), rt = Dot(noise, t);
            for (int j = 0; j < n; j++) noise[j] -= (float)(rt / tt * t[j]);
            double tNorm = Math.Sqrt(tt), rNorm = Math.Sqrt(Dot(noise, noise)), sine = Math.Sqrt(1 - start * start);
            for (int j = 0; j < n; j++) feedback[i * n + j] = (float)(start * t[j] / tNorm + sine * noise[j] / rNorm);
        }
        View Upload(float[] values) { var v = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, v); return v; }
        var b = Upload(feedback);
        var g = Upload(target);
        var scaled = new View(backend.Allocate(n * n));
        var cosines = new View(backend.Allocate(n));
        var context = new FeedbackContext(backend, b, scaled, cosines, new View(backend.Allocate(n * n)), new View(backend.Allocate(n)), n,
            Math.Sqrt(backend.SumOfSquares(b)));
        var trajectory = new double[steps + 1];
        var host = new float[n];
        for (int step = 0; step <= steps; step++)
        {
            backend.Scale(g, (float)Math.Sqrt(backend.SumOfSquares(b) / backend.SumOfSquares(g)), scaled);
            backend.RowCosines(scaled, b, n, cosines);
            backend.CopyToHost(cosines, host);
            trajectory[step] = host.Average(v => (double)v);
            if (step < steps) rule.Apply(context, step, new RandomKey(seed, 0x7015E).Derive((ulong)step));
        }
        return new ToyTrajectory(label, start, seed, trajectory);
    }

    private static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++) sum += (double)a[i] * b[i];
        return sum;
    }
}
