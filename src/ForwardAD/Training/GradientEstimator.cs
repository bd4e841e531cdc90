using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Distributed;
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

    /// <summary>What is left to do across ranks with <see cref="Estimate"/>'s gradient when the estimator was compiled for a
    /// share of the batch (<see cref="BatchShard"/>; with the whole batch there is nothing to do either way).</summary>
    public virtual EstimateExchange Exchange => EstimateExchange.SumShares;
}

/// <summary>How the ranks of a data-parallel step combine their estimates (docs/design.md §7).</summary>
public enum EstimateExchange
{
    /// <summary>Each rank returns its share Σ_{b∈shard} ĝ_b / B; the all-reduce sum over ranks is the estimate
    /// (backprop, activation guesses, DFA, GrAPE).</summary>
    SumShares,

    /// <summary>The estimator already exchanged what it needed (directional descent: the K JVP scalars), and every rank
    /// returns the same estimate: nothing more is sent.</summary>
    Agreed,
}

/// <summary>The exact gradient of the mean loss by the backward pass: the oracle every guess is compared with. As a
/// side plan (cosines, cosine-matched directions) it must not update running statistics a second time in a step:
/// pass updatesRunningStatistics = false.</summary>
public sealed class BackpropEstimator : GradientEstimator
{
    private readonly float _share;

    /// <summary>The oracle for a whole batch of <paramref name="batchSize"/> examples in this process.</summary>
    /// <param name="parameters">The parameters whose gradient is computed.</param>
    /// <param name="batchSize">Examples per batch.</param>
    /// <param name="updatesRunningStatistics">Whether its forward pass updates batch norm's running statistics: false for a
    /// side plan that runs beside the training step.</param>
    public BackpropEstimator(ParameterStore parameters, int batchSize, bool updatesRunningStatistics = true)
        : this(parameters, BatchShard.Whole(batchSize), updatesRunningStatistics) { }

    /// <summary>For a shard of the batch: the gradient of this shard's mean loss times B_r/B, its share of the batch's.
    /// <paramref name="releaseBuffers"/>: the plan keeps only what the backward pass reads (PlanOptions.ReuseBuffers), as
    /// autograd does: the training estimator's choice; an oracle whose plan others read (pull-backs, cotangents) keeps all.</summary>
    public BackpropEstimator(ParameterStore parameters, BatchShard shard, bool updatesRunningStatistics = true, bool releaseBuffers = false)
    {
        Plan = Plan.Compile(parameters, new PlanOptions(shard.Count) { Gradients = true, UpdatesRunningStatistics = updatesRunningStatistics, ReuseBuffers = releaseBuffers });
        _share = shard.IsWhole ? 1f : (float)shard.Count / shard.GlobalBatch;
    }

    /// <summary>The training plan with gradients: its <see cref="Plan.ParameterGradients"/> is the estimate.</summary>
    public override Plan Plan { get; }

    /// <summary>Forward and backward pass on the batch in the plan's inputs: g = ∇θ (1/B) Σ_b ℓ_b (times B_r/B for a shard).
    /// <paramref name="key"/> and <paramref name="step"/> are not used: backprop draws no noise.</summary>
    /// <returns>The gradient (the plan's own buffer, overwritten by the next call) and the mean loss of the batch.</returns>
    public override (View Gradient, double Loss) Estimate(RandomKey key, long step = 0)
    {
        Plan.Forward();
        Plan.Backward();
        if (_share != 1f) Plan.Backend.Scale(Plan.ParameterGradients, _share, Plan.ParameterGradients);
        return (Plan.ParameterGradients, Plan.MeanLoss());
    }
}
