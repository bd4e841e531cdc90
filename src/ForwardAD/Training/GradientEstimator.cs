using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Random;

namespace ForwardAD.Training;

/// <summary>
/// Turns one batch into a gradient estimate over the flat parameter vector: the backprop oracle,
/// or a guesser with its JVP. Compiled once for a batch size; <see cref="Estimate"/> allocates nothing.
/// </summary>
public abstract class GradientEstimator
{
    /// <summary>The main plan of the estimator (batch size, model, parameters).</summary>
    public abstract Plan Plan { get; }

    /// <summary>Sets the batch: B × (features per example) values and B class labels.</summary>
    public virtual void SetBatch(ReadOnlySpan<float> features, ReadOnlySpan<float> labels)
    {
        Plan.SetInput(Plan.Model["x"], features);
        Plan.SetInput(Plan.Model["y"], labels);
    }

    /// <summary>Computes the estimate for the batch already in <see cref="Plan"/>'s inputs, with fresh
    /// noise from <paramref name="key"/> at training step <paramref name="step"/> (for estimators with
    /// schedules or running averages); returns the flat estimate (a view the estimator owns) and the batch's mean loss.</summary>
    public abstract (View Gradient, double Loss) Estimate(RandomKey key, long step = 0);

    /// <summary>State the estimator carries across steps (feedback matrices, running averages), with stable
    /// names: saved in checkpoints and restored bit for bit.</summary>
    public virtual IEnumerable<(string Name, View Buffer)> StateBuffers => [];
}

/// <summary>The exact gradient of the mean loss by the backward pass: the oracle every guess is compared with. As a
/// side plan (cosines, cosine-matched directions) it must not update running statistics a second time in a step:
/// pass <paramref name="updatesRunningStatistics"/> = false.</summary>
public sealed class BackpropEstimator(ParameterStore parameters, int batchSize, bool updatesRunningStatistics = true) : GradientEstimator
{
    public override Plan Plan { get; } = Plan.Compile(parameters, new PlanOptions(batchSize) { Gradients = true, UpdatesRunningStatistics = updatesRunningStatistics });

    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        Plan.Forward();
        Plan.Backward();
        return (Plan.ParameterGradients, Plan.MeanLoss());
    }
}
