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

/// <summary>The adjoint identity of one op with respect to its input, shared by the per-op tests (CNN, sequence, mixer ops).</summary>
internal static class Adjoint
{
    /// <summary>
    /// ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ for every pair of K tangent channels v (seeded at <paramref name="x"/>, parameter seeds cleared)
    /// and C cotangent channels w (a pull-back from <paramref name="op"/> to x): J v from the plan's JVP, Jᵀ w from the
    /// pull-back. Dot products in float64 over float32 values: agreement to ~1e-5 relative, checked at 1e-4. Leaves x's
    /// seed cleared, so the caller can go on with parameter tangents.
    /// </summary>
    public static void AssertInputAdjoint(Plan plan, Node x, Node op, IEnumerable<Node> parameters, int channels, int cotangents, string name)
    {
        var v = Problem.Normal(1, plan.Seed(x).Length, 1f);
        CpuBackend.Span(plan.Seed(x)).CopyFrom(v);
        foreach (var p in parameters) CpuBackend.Span(plan.Seed(p)).Clear();
        plan.Forward();
        plan.Jvp();
        var jv = plan.Tangent(op).ToArray();
        var pullBack = plan.CreatePullBack([op], x, cotangents);
        var w = Problem.Normal(3, pullBack.Cotangent(op).Length, 1f);
        CpuBackend.Span(pullBack.Cotangent(op)).CopyFrom(w);
        pullBack.Run();
        var jtw = pullBack.Cotangent(x).ToArray();
        int perChannel = jv.Length / channels, inputPerChannel = v.Length / channels;
        for (int c = 0; c < cotangents; c++)
            for (int k = 0; k < channels; k++)
            {
                double left = 0, right = 0;
                for (int i = 0; i < perChannel; i++) left += (double)w[c * perChannel + i] * jv[k * perChannel + i];
                for (int i = 0; i < inputPerChannel; i++) right += (double)jtw[c * inputPerChannel + i] * v[k * inputPerChannel + i];
                JvpTests.AssertClose(left, right, $"{name}: ⟨w_{c}, J v_{k}⟩ vs ⟨Jᵀ w_{c}, v_{k}⟩", 1e-4);
            }
        CpuBackend.Span(plan.Seed(x)).Clear();
    }
}
