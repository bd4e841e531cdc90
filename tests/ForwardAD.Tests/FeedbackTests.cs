using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

public class FeedbackTests
{
    private const int Rows = 6, Outputs = 4;

    /// <summary>A context for one 6×4 feedback matrix with a given target and the pre-update row cosines.</summary>
    private static (FeedbackContext Context, CpuBackend Backend) Context(float[] feedback, float[] target)
    {
        var backend = new CpuBackend();
        View Make(float[] values) { var v = new View(backend.Allocate(values.Length)); backend.CopyFromHost(values, v); return v; }
        var b = Make(feedback);
        var g = Make(target);
        var cosines = new View(backend.Allocate(Rows));
        // g̃ rescaled to ‖B‖, as the estimator does.
        double scale = Math.Sqrt(backend.SumOfSquares(b) / backend.SumOfSquares(g));
        backend.Scale(g, (float)scale, g);
        backend.RowCosines(g, b, Outputs, cosines);
        var context = new FeedbackContext(backend, b, g, cosines, new View(backend.Allocate(feedback.Length)), new View(backend.Allocate(Rows)),
            Outputs, Math.Sqrt(backend.SumOfSquares(b)));
        return (context, backend);
    }

    private static float[] Random(int seed, int n) => Problem.Normal(seed, n, 1f);

    private static double[] Row(float[] m, int i) => m.Skip(i * Outputs).Take(Outputs).Select(v => (double)v).ToArray();
    private static double Dot(double[] a, double[] b) => a.Zip(b, (x, y) => x * y).Sum();

    /// <summary>Alternative 1: B_i ← B_i − η(1 − c_i)B_i + η c_i g̃_i. The component of row i orthogonal to g̃_i is scaled by
    /// exactly 1 − η(1 − c_i): the pull only adds along g̃_i.</summary>
    [Fact]
    public void Alternative_one_shrinks_the_orthogonal_component_by_exactly_one_minus_eta_times_one_minus_c()
    {
        var b = Random(1, Rows * Outputs);
        var (context, backend) = Context(b, Random(2, Rows * Outputs));
        var target = context.Target.ToArray();
        var c = context.RowCosines.ToArray();
        const float eta = 0.1f;
        FeedbackRules.Alternative1(eta).Apply(context, 0, default);
        var after = context.Feedback.ToArray();
        for (int i = 0; i < Rows; i++)
        {
            var t = Row(target, i);
            double tt = Dot(t, t);
            double[] Orthogonal(double[] v) { double p = Dot(v, t) / tt; return v.Select((x, j) => x - p * t[j]).ToArray(); }
            var before = Orthogonal(Row(b, i));
            var now = Orthogonal(Row(after, i));
            double factor = 1 - eta * (1 - c[i]);
            for (int j = 0; j < Outputs; j++) JvpTests.AssertClose(factor * before[j], now[j], $"row {i} component {j}", 1e-5);
        }
    }

    [Fact]
    public void Renormalisation_keeps_the_initial_frobenius_norm()
    {
        var (context, backend) = Context(Random(3, Rows * Outputs), Random(4, Rows * Outputs));
        double initial = Math.Sqrt(backend.SumOfSquares(context.Feedback));
        var rule = FeedbackRules.Original(0.3f, noise: 0.05f);
        for (int step = 0; step < 20; step++)
        {
            backend.RowCosines(context.Target, context.Feedback, Outputs, context.RowCosines);
            rule.Apply(context, step, new RandomKey(1, (ulong)step));
            JvpTests.AssertClose(initial, Math.Sqrt(backend.SumOfSquares(context.Feedback)), $"step {step}", 1e-6);
        }
    }

    /// <summary>The original rule only rescales rows: a row exactly orthogonal to its target keeps its direction (cosine 0)
    /// without noise, and leaves it with noise.</summary>
    [Fact]
    public void An_orthogonal_row_moves_only_with_noise()
    {
        var target = Random(5, Rows * Outputs);
        var feedback = Random(6, Rows * Outputs);
        // Make row 0 exactly orthogonal to its target: [t1, −t0, t3, −t2] ⟂ [t0, t1, t2, t3].
        feedback[0] = target[1]; feedback[1] = -target[0]; feedback[2] = target[3]; feedback[3] = -target[2];
        foreach (var noise in new[] { 0f, 0.05f })
        {
            var (context, backend) = Context(feedback, target);
            Assert.Equal(0f, context.RowCosines.ToArray()[0], 6);
            var direction = Row(feedback, 0);
            var rule = FeedbackRules.Original(0.2f, noise);
            for (int step = 0; step < 10; step++)
            {
                backend.RowCosines(context.Target, context.Feedback, Outputs, context.RowCosines);
                rule.Apply(context, step, new RandomKey(9, (ulong)step));
            }
            var row = Row(context.Feedback.ToArray(), 0);
            double cosine = Dot(row, direction) / Math.Sqrt(Dot(row, row) * Dot(direction, direction));
            double toTarget = Dot(row, Row(target, 0)) / Math.Sqrt(Dot(row, row) * Dot(Row(target, 0), Row(target, 0)));
            if (noise == 0)
            {
                Assert.InRange(cosine, 1 - 1e-6, 1 + 1e-6);
                Assert.InRange(toTarget, -1e-6, 1e-6);
            }
            else Assert.True(cosine < 0.9999 && Math.Abs(toTarget) > 1e-3, $"with noise the row should move: cos to start {cosine}, to target {toTarget}");
        }
    }

    /// <summary>DFA with B_1 = J_1ᵀ = W_2ᵀ on a network with one hidden layer is backprop: same update, to float rounding.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void Dfa_with_the_true_feedback_is_backprop_on_one_hidden_layer(int activation)
    {
        var problem = Problem.RandomMlp(31, Problem.Activations[activation], 5, widths: [7], inputs: 4, outputs: 3);
        var estimator = (FeedbackEstimator)Guessers.Dfa().Compile(problem.Parameters, 5);
        var w2 = problem.Parameters.ToArray(problem.Model.Sites[1].Weight()); // [3, 7]
        var transposed = new float[7 * 3];
        for (int o = 0; o < 3; o++) for (int n = 0; n < 7; n++) transposed[n * 3 + o] = w2[o * 7 + n];
        problem.Parameters.Backend.CopyFromHost(transposed, estimator.Feedback(0));
        estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        var dfa = estimator.Estimate(default).Gradient.ToArray();
        var oracle = new BackpropEstimator(problem.Parameters, 5);
        oracle.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        var exact = oracle.Estimate(default).Gradient.ToArray();
        for (int j = 0; j < exact.Length; j++) JvpTests.AssertClose(exact[j], dfa[j], $"component {j}", 1e-5);
    }

    /// <summary>
    /// Feedback per site, whatever its shape: a dense layer over the last axis of a [2, 3] input makes a [2, 4] site
    /// (8 elements per example), flattened before the head. B ∈ R^{8 × o}; with B = J_hᵀ = W_headᵀ (h = relu(s)
    /// flattened) DFA is backprop again.
    /// </summary>
    [Fact]
    public void Dfa_feedback_covers_a_site_of_any_shape()
    {
        var builder = new ModelBuilder();
        var x = builder.Input("x", new Shape(2, 3), differentiable: false);
        var h = builder.Dense("rows", x, 4, ElementwiseFunction.Tanh).Output;
        var flat = builder.Reshape("flat", h, new Shape(8));
        var logits = builder.Dense("head", flat, 3, ElementwiseFunction.Identity).Output;
        var model = builder.Build(builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", 3)), logits);
        var problem = Problem.From(model, 32, 5);
        var estimator = (FeedbackEstimator)Guessers.Dfa().Compile(problem.Parameters, 5);
        Assert.Equal(8 * 3, estimator.Feedback(0).Length);
        var head = problem.Parameters.ToArray(model["head.weight"]); // [3, 8]
        var transposed = new float[8 * 3];
        for (int o = 0; o < 3; o++) for (int n = 0; n < 8; n++) transposed[n * 3 + o] = head[o * 8 + n];
        problem.Parameters.Backend.CopyFromHost(transposed, estimator.Feedback(0));
        estimator.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
        var dfa = estimator.Estimate(default).Gradient.ToArray();
        var oracle = new BackpropEstimator(problem.Parameters, 5);
        oracle.SetBatch(problem.Inputs[model["x"].Id], problem.Inputs[model["y"].Id]);
        var exact = oracle.Estimate(default).Gradient.ToArray();
        for (int j = 0; j < exact.Length; j++) JvpTests.AssertClose(exact[j], dfa[j], $"component {j}", 1e-5);
    }

    /// <summary>
    /// Sequence models share one B_l ∈ R^{D × V} over the T positions (a whole-sequence B would be (T·D) × (T·V)). With
    /// B = W_headᵀ at the LayerNorm site that feeds the per-position head, δ at every position is the exact cotangent, so
    /// DFA's estimate for the LayerNorm's γ, β (and the head's exact error) equals backprop's.
    /// </summary>
    [Fact]
    public void Dfa_on_a_sequence_model_shares_feedback_over_positions()
    {
        const int T = 4, V = 7, D = 5, batch = 3;
        var builder = new ModelBuilder();
        var x = builder.Tokens("x", T, V);
        var y = builder.Tokens("y", T, V);
        var h = builder.LayerNorm("ln", builder.Embedding("embed", x, D));
        var logits = builder.Dense("head", h, V, ElementwiseFunction.Identity).Output;
        var model = builder.Build(builder.SequenceCrossEntropy("loss", logits, y), logits);
        var store = ParameterStore.Initialize(model, new CpuBackend(), 3);
        store.Set(model["ln.weight"], Problem.Normal(5, D, 0.5f).Select(v => 1 + v).ToArray());
        store.Set(model["ln.bias"], Problem.Normal(6, D, 0.5f));
        var rng = new System.Random(9);
        var tokens = Enumerable.Range(0, batch * T).Select(_ => (float)rng.Next(V)).ToArray();
        var targets = Enumerable.Range(0, batch * T).Select(_ => (float)rng.Next(V)).ToArray();
        var estimator = (FeedbackEstimator)Guessers.Dfa().Compile(store, batch);
        Assert.Equal(D * V, estimator.Feedback(0).Length); // embed
        Assert.Equal(D * V, estimator.Feedback(1).Length); // ln
        var head = store.ToArray(model["head.weight"]); // [V, D]
        var transposed = new float[D * V];
        for (int o = 0; o < V; o++) for (int n = 0; n < D; n++) transposed[n * V + o] = head[o * D + n];
        store.Backend.CopyFromHost(transposed, estimator.Feedback(1));
        estimator.SetBatch(tokens, targets);
        var dfa = estimator.Estimate(default).Gradient.ToArray();
        var oracle = new BackpropEstimator(store, batch);
        oracle.SetBatch(tokens, targets);
        var exact = oracle.Estimate(default).Gradient.ToArray();
        var layout = ParameterLayout.Of(model);
        foreach (var name in new[] { "ln.weight", "ln.bias", "head.weight", "head.bias" })
        {
            var (_, offset) = layout.Entries.Single(e => e.Parameter.Name == name);
            for (int j = 0; j < model[name].Shape.ElementCount; j++)
                JvpTests.AssertClose(exact[offset + j], dfa[offset + j], $"{name}[{j}]", 1e-5);
        }
    }

    /// <summary>
    /// E[J̃_l] = J_l: with a rule that leaves B alone, the cumulative moving average after T steps is the mean of T
    /// estimates (1/B) Σ_b (J_b δ_b)δ_bᵀ. Var of element (i, j) per step is (1/B²) Σ_b (‖J_b[i]‖² + J_b[i,j]²), so the mean
    /// must lie within 5 standard errors of the batch-mean Jacobian, computed exactly by pull-backs.
    /// </summary>
    [Theory]
    [InlineData(TangentPlacement.HiddenOutput)]
    [InlineData(TangentPlacement.PreActivation)]
    public void The_moving_average_of_the_jacobian_estimate_approaches_the_jacobian(TangentPlacement placement)
    {
        const int batch = 16, steps = 20000;
        var problem = Problem.RandomMlp(41, ElementwiseFunction.Tanh, batch, widths: [5, 4], inputs: 3, outputs: 3);
        var model = problem.Model;
        var options = new GrapeOptions { Rule = new FeedbackChain([]), Mode = TangentMode.PerLayer, Placement = placement };
        var estimator = (FeedbackEstimator)Guessers.Grape(options).Compile(problem.Parameters, batch);
        var x = problem.Inputs[model["x"].Id];
        var y = problem.Inputs[model["y"].Id];
        estimator.SetBatch(x, y);
        for (int t = 0; t < steps; t++) estimator.Estimate(new RandomKey(5, (ulong)t), t);
        var averages = estimator.StateBuffers.Where(b => b.Name.StartsWith("jacobian")).Select(b => b.Buffer.ToArray()).ToArray();

        var oracle = Plan.Compile(problem.Parameters, new PlanOptions(batch) { Gradients = true });
        oracle.SetInput(model["x"], x);
        oracle.SetInput(model["y"], y);
        oracle.Forward();
        for (int l = 0; l < 2; l++)
        {
            var layer = model.Sites[l];
            var node = placement == TangentPlacement.PreActivation ? layer.Node : layer.Output;
            int n = node.Shape.Last;
            var perExample = new double[batch, 3, n]; // J_b[k, i]
            var pullBack = oracle.CreatePullBack([model.Output], node);
            for (int k = 0; k < 3; k++)
            {
                var unit = new float[batch * 3];
                for (int b = 0; b < batch; b++) unit[b * 3 + k] = 1;
                CpuBackend.Span(pullBack.Cotangent(model.Output)).CopyFrom(unit);
                pullBack.Run();
                var rows = pullBack.Cotangent(node).ToArray();
                for (int b = 0; b < batch; b++) for (int i = 0; i < n; i++) perExample[b, k, i] = rows[b * n + i];
            }
            for (int i = 0; i < n; i++)
                for (int k = 0; k < 3; k++)
                {
                    double exact = 0, variance = 0;
                    for (int b = 0; b < batch; b++)
                    {
                        exact += perExample[b, k, i] / batch;
                        double rowNorm = Enumerable.Range(0, n).Sum(j => perExample[b, k, j] * perExample[b, k, j]);
                        variance += (rowNorm + perExample[b, k, i] * perExample[b, k, i]) / (batch * batch);
                    }
                    double bound = 5 * Math.Sqrt(variance / steps) + 1e-6;
                    double mean = averages[l][i * 3 + k]; // J̄ᵀ is stored n × o
                    Assert.True(Math.Abs(mean - exact) <= bound, $"layer {l + 1} J[{k},{i}]: mean {mean:G5}, exact {exact:G5}, bound {bound:G3}");
                }
        }
    }

    [Fact]
    public void Grape_steps_allocate_nothing()
    {
        var problem = Problem.RandomMlp(3, ElementwiseFunction.Relu, 8, widths: [16, 16], inputs: 10, outputs: 4);
        foreach (var mode in new[] { TangentMode.Joint, TangentMode.PerLayer })
        {
            var estimator = Guessers.Grape(new GrapeOptions { Mode = mode, Rule = FeedbackRules.Alternative1(Schedule.Exponential(0.1f, 0.99f), 1e-3f, true) }).Compile(problem.Parameters, 8);
            estimator.SetBatch(problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
            Allocations.AssertNone(t => estimator.Estimate(new RandomKey(1, (ulong)t), t), warmUp: 2, steps: 4, $"GrAPE ({mode})");
        }
    }
}
