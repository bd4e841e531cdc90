using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;

namespace ForwardAD.Tests;

/// <summary>The whole-model JVP check shared by the CNN, attention and transformer tests.</summary>
internal static class FiniteDifferences
{
    /// <summary>
    /// Seeds every node of <paramref name="seeded"/> with N(0, 1) tangents in K channels, runs the plan's fused forward and
    /// JVP, and checks the per-example losses against the float64 reference evaluator and the tangents of the losses and of
    /// the output against its central differences: ε = 1e-5 in double (truncation ~1e-10); the float32 plan is accurate to
    /// ~1e-6 relative, hence 2e-4 relative, as in the MLP test (JvpTests). Returns the plan's per-example losses.
    /// </summary>
    public static float[] AssertJvpMatchesReference(Problem problem, IReadOnlyList<Node> seeded, int channels, string label,
        int seedBase = 700, bool updatesRunningStatistics = true)
    {
        var model = problem.Model;
        int batch = problem.BatchSize;
        var plan = problem.Compile(new PlanOptions(batch)
        {
            TangentCount = channels, UpdatesRunningStatistics = updatesRunningStatistics, Seeds = [.. seeded.Select(n => new TangentSeed(n))],
        });
        var seeds = seeded.ToDictionary(n => n.Id, n => Problem.Normal(seedBase + n.Id, plan.Seed(n).Length, 1f));
        foreach (var n in seeded) CpuBackend.Span(plan.Seed(n)).CopyFrom(seeds[n.Id]);
        plan.ForwardJvp();
        var lossTangent = plan.Tangent(model.Loss).ToArray();
        var outputTangent = plan.Tangent(model.Output).ToArray();

        var reference = new ReferenceEvaluator(model, batch);
        var leaves = problem.Leaves();
        var forward = reference.Run(leaves);
        var ours = plan.Value(model.Loss).ToArray();
        for (int i = 0; i < batch; i++) JvpTests.AssertClose(forward[i], ours[i], $"{label}: loss of example {i}", 1e-5);
        int outputs = model.Output.ElementCount(batch);
        for (int k = 0; k < channels; k++)
        {
            var direction = seeds.ToDictionary(kv => kv.Key, kv => JvpTests.Channel(kv.Value, k, channels));
            const double epsilon = 1e-5;
            var plus = reference.Run(leaves, direction, epsilon);
            var outPlus = reference.Values[model.Output.Id];
            var minus = reference.Run(leaves, direction, -epsilon);
            var outMinus = reference.Values[model.Output.Id];
            for (int i = 0; i < batch; i++)
                JvpTests.AssertClose((plus[i] - minus[i]) / (2 * epsilon), lossTangent[k * batch + i], $"{label}: loss tangent k={k} b={i}");
            for (int i = 0; i < outputs; i++)
                JvpTests.AssertClose((outPlus[i] - outMinus[i]) / (2 * epsilon), outputTangent[k * outputs + i], $"{label}: output tangent k={k} i={i}");
        }
        return ours;
    }
}
