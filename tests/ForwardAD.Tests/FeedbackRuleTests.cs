using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;

namespace ForwardAD.Tests;

/// <summary>
/// GrAPE's feedback rules term by term (docs/design.md §2): one step of each against a float64 reference, repeated steps toward
/// a fixed target raising the alignment, and the target's direction inside the estimator. A sign flipped in any term
/// fails one of these: the shrink of misaligned rows, alternative 1's pull toward g̃, alternative 2's decay or its target
/// term (the reference step), and the target g̃ = J̄ᵀ·‖B‖/‖J̄‖ itself (the estimator test).
/// </summary>
public sealed class FeedbackRuleTests
{
    private const int Rows = 7, Outputs = 5;
    private const float Eta = 0.2f;

    /// <summary>B, g̃ rescaled to ‖B‖ (as the estimator does) and the pre-update row cosines, on the CPU backend.</summary>
    private static FeedbackContext Context(float[] feedback, float[] target, double initialNorm)
    {
        var backend = new CpuBackend();
        View Make(float[] values) { var v = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, v); return v; }
        var b = Make(feedback);
        var g = Make(target);
        backend.Scale(g, (float)Math.Sqrt(backend.SumOfSquares(b) / backend.SumOfSquares(g)), g);
        var cosines = new View(backend.Allocate(Rows));
        backend.RowCosines(g, b, Outputs, cosines);
        return new FeedbackContext(backend, b, g, cosines, new View(backend.Allocate(feedback.Length)), new View(backend.Allocate(Rows)), Outputs, initialNorm);
    }

    private static double[] Rows64(float[] m) => [.. m.Select(v => (double)v)];

    /// <summary>The rules of docs/design.md §2 in float64: c_i = cos(g̃_i, B_i), g̃ = g·‖B‖/‖g‖;
    /// original B_i(1 − η(1 − c_i)), then rescaled to the initial norm; alternative 1 B_i − η(1 − c_i)B_i + η c_i g̃_i;
    /// alternative 2 (1 − η)B + η g̃.</summary>
    private static double[] Reference(string rule, double[] b, double[] g, double initialNorm)
    {
        double Norm(double[] v) => Math.Sqrt(v.Sum(x => x * x));
        double scale = Norm(b) / Norm(g);
        var target = g.Select(x => x * scale).ToArray();
        var result = new double[b.Length];
        for (int i = 0; i < Rows; i++)
        {
            var bi = b.AsSpan(i * Outputs, Outputs).ToArray();
            var gi = target.AsSpan(i * Outputs, Outputs).ToArray();
            double c = bi.Zip(gi, (x, y) => x * y).Sum() / (Norm(bi) * Norm(gi));
            for (int j = 0; j < Outputs; j++)
                result[i * Outputs + j] = rule switch
                {
                    "original" => bi[j] * (1 - Eta * (1 - c)),
                    "alt1" => bi[j] - Eta * (1 - c) * bi[j] + Eta * c * gi[j],
                    _ => (1 - Eta) * bi[j] + Eta * gi[j],
                };
        }
        if (rule == "original")
        {
            double norm = Norm(result);
            for (int k = 0; k < result.Length; k++) result[k] *= initialNorm / norm;
        }
        return result;
    }

    private static FeedbackRule Rule(string name, float noise = 0f) => name switch
    {
        "original" => FeedbackRules.Original(Eta, noise),
        "alt1" => FeedbackRules.Alternative1(Eta, noise),
        _ => FeedbackRules.Alternative2(Eta, noise),
    };

    [Theory]
    [InlineData("original")]
    [InlineData("alt1")]
    [InlineData("alt2")]
    public void One_step_of_each_rule_matches_a_float64_reference(string rule)
    {
        for (int seed = 0; seed < 5; seed++)
        {
            var b = Problem.Normal(10 + seed, Rows * Outputs, 1f);
            var g = Problem.Normal(20 + seed, Rows * Outputs, 1f);
            // Some rows aligned, some opposed, so that c spans [−1, 1]: g row 0 = B row 0, row 1 = −B row 1.
            for (int j = 0; j < Outputs; j++) { g[j] = b[j]; g[Outputs + j] = -b[Outputs + j]; }
            double initialNorm = 1.7 * Math.Sqrt(b.Sum(x => (double)x * x));
            var context = Context(b, g, initialNorm);
            Rule(rule).Apply(context, 0, new RandomKey(1, 2));
            var expected = Reference(rule, Rows64(b), Rows64(g), initialNorm);
            var actual = context.Feedback.ToArray();
            double largest = expected.Max(Math.Abs);
            for (int k = 0; k < expected.Length; k++)
                Assert.True(Math.Abs(actual[k] - expected[k]) <= 1e-5 * largest, $"{rule}, seed {seed}, element {k}: {actual[k]} vs {expected[k]:G7}");
        }
    }

    /// <summary>Alignment to a fixed target over 60 steps, cos(vec B, vec g̃) rising at every step for every rule.
    /// Alternative 2 turns every row to its target. Alternative 1's pull is weighted by the row's cosine c_i, so a row that
    /// starts opposed (c_i &lt; 0) is pushed to −g̃_i: it aligns rows with ±g̃ (a property of the rule as written, measured
    /// here). The original rule never turns a row (its shrink keeps directions) but shrinks the misaligned ones.</summary>
    [Theory]
    [InlineData("original")]
    [InlineData("alt1")]
    [InlineData("alt2")]
    public void Each_rule_raises_the_alignment_toward_a_fixed_target(string rule)
    {
        var b = Problem.Normal(3, Rows * Outputs, 1f);
        var g = Problem.Normal(4, Rows * Outputs, 1f);
        double initialNorm = Math.Sqrt(b.Sum(x => (double)x * x));
        (double Rows, double Matrix) Alignment(float[] m)
        {
            double rows = 0, dot = 0, mm = 0, gg = 0;
            for (int i = 0; i < Rows; i++)
            {
                double d = 0, a = 0, c = 0;
                for (int j = 0; j < Outputs; j++) { int k = i * Outputs + j; d += m[k] * g[k]; a += m[k] * m[k]; c += g[k] * g[k]; }
                rows += d / Math.Sqrt(a * c) / Rows;
                dot += d; mm += a; gg += c;
            }
            return (rows, dot / Math.Sqrt(mm * gg));
        }
        var start = Alignment(b);
        var previous = start;
        var current = b;
        for (int step = 0; step < 60; step++)
        {
            var context = Context(current, g, initialNorm); // the target is fixed; c is recomputed from the current B
            Rule(rule).Apply(context, step, new RandomKey(7, (ulong)step));
            current = context.Feedback.ToArray();
            var now = Alignment(current);
            Assert.True(now.Matrix > previous.Matrix - 1e-6, $"{rule}, step {step}: matrix cosine fell from {previous.Matrix:F5} to {now.Matrix:F5}");
            previous = now;
        }
        Assert.True(previous.Matrix > start.Matrix + 0.2, $"{rule}: matrix cosine {start.Matrix:F3} → {previous.Matrix:F3}");
        var startCosines = RowCosines(b);
        var endCosines = RowCosines(current);
        switch (rule)
        {
            case "alt2": // every row turns to its target
                Assert.True(endCosines.Min() > 0.95, $"alt2: row cosines {string.Join(", ", endCosines.Select(c => c.ToString("F3")))}");
                break;
            case "alt1": // the pull is weighted by c: rows that start aligned turn to g̃, rows that start opposed to −g̃
                for (int i = 0; i < Rows; i++)
                    Assert.True(Math.Sign(startCosines[i]) * endCosines[i] > 0.95, $"alt1, row {i}: cosine {startCosines[i]:F3} → {endCosines[i]:F3}");
                break;
            default: // directions kept: the shrink only rescales rows
                for (int i = 0; i < Rows; i++) Assert.Equal(startCosines[i], endCosines[i], 4);
                break;
        }

        double[] RowCosines(float[] m) => [.. Enumerable.Range(0, Rows).Select(i =>
        {
            double d = 0, a = 0, c = 0;
            for (int j = 0; j < Outputs; j++) { int k = i * Outputs + j; d += m[k] * g[k]; a += m[k] * m[k]; c += g[k] * g[k]; }
            return d / Math.Sqrt(a * c);
        })];
    }

    /// <summary>In the estimator, g̃ points along the estimated Jacobian J̄ᵀ (not against it): with alternative 2 at η = 1
    /// one GrAPE step replaces B by g̃ = J̄ᵀ·‖B‖/‖J̄‖, so B then has cosine +1 to the moving average J̄ᵀ it holds.</summary>
    [Fact]
    public void The_target_points_along_the_estimated_jacobian()
    {
        const int batch = 8;
        var problem = Problem.RandomMlp(5, ElementwiseFunction.Tanh, batch, widths: [6, 5], inputs: 4, outputs: 3);
        var estimator = (FeedbackEstimator)Guessers.Grape(new GrapeOptions { Rule = FeedbackRules.Alternative2(1f) }, seed: 2).Compile(problem.Parameters, batch);
        estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        var norms = Enumerable.Range(0, 2).Select(l => Math.Sqrt(estimator.Feedback(l).ToArray().Sum(v => (double)v * v))).ToArray();
        estimator.Estimate(new RandomKey(3, 0), 0);
        var jacobians = estimator.StateBuffers.Where(s => s.Name.StartsWith("jacobian", StringComparison.Ordinal)).Select(s => s.Buffer.ToArray()).ToArray();
        for (int l = 0; l < 2; l++)
        {
            var feedback = estimator.Feedback(l).ToArray();
            double dot = 0, ff = 0, jj = 0;
            for (int k = 0; k < feedback.Length; k++) { dot += feedback[k] * jacobians[l][k]; ff += feedback[k] * feedback[k]; jj += jacobians[l][k] * jacobians[l][k]; }
            Assert.Equal(1.0, dot / Math.Sqrt(ff * jj), 5);
            Assert.Equal(norms[l], Math.Sqrt(ff), 4); // rescaled to B's norm
        }
    }
}
