using System.Collections.Immutable;
using ForwardAD.Graph;
using ForwardAD.Random;

namespace ForwardAD.Autodiff;

/// <summary>
/// A tangent injected at a node: the node's tangent becomes (propagated tangent) + seed. With a
/// <see cref="Generator"/> the seed is N(0, I) drawn from that Philox stream on every run and never
/// stored (regenerate it from the key when you need it again); without one, the user writes it into
/// <see cref="Plan.Seed"/> before running.
/// </summary>
public sealed record TangentSeed(Node Node, RandomKey? Generator = null);

/// <summary>How normalisation layers run: on the batch's statistics (training) or the running ones (evaluation).</summary>
public enum PlanMode
{
    /// <summary>Batch normalisation uses the batch's statistics (coupling the examples) and, where the plan is allowed
    /// to, updates the running statistics.</summary>
    Training,
    /// <summary>Batch normalisation uses the frozen running statistics: examples stay independent.</summary>
    Evaluation,
}

/// <summary>
/// What to compile: batch size B, tangent channel count K, where tangents enter, whether the
/// backward pass (exact gradient, pull-backs) is needed, and whether buffers may be reused.
/// </summary>
public sealed record PlanOptions(int BatchSize)
{
    /// <summary>K, the batched-JVP axis: tangents are laid out [K, B, ...].</summary>
    public int TangentCount { get; init; } = 1;

    /// <summary>Where tangents enter: each seed adds a K-channel tangent at its node. Nodes no seed reaches carry symbolic-zero
    /// tangents that are never stored nor computed.</summary>
    public ImmutableArray<TangentSeed> Seeds { get; init; } = [];

    /// <summary>Compile the VJP rules: <see cref="Plan.Backward"/> and pull-backs.</summary>
    public bool Gradients { get; init; }

    /// <summary>
    /// Reuse a node's buffers once nothing the plan still runs needs them. Without gradients (a JVP): once its
    /// consumers have run, so memory is flat in depth; only the fused <see cref="Plan.ForwardJvp"/> and
    /// <see cref="Plan.Forward"/> may then run. With gradients (backprop): a value lives until its last forward consumer
    /// or the last VJP rule that reads it, a cotangent only while the backward pass needs it, as PyTorch's autograd frees
    /// them; one <see cref="Plan.Backward"/> per forward pass. Buffers that die before a parameter's gradient is first
    /// written live in that gradient's slice meanwhile (as autograd frees activations while it allocates gradients), so the
    /// parameter gradients are readable from the end of the backward pass until the next forward pass. Either way only the
    /// loss, the output, <see cref="Retain"/> nodes, the parameter gradients and the inputs' cotangents can be read
    /// afterwards, and pull-backs and parameter updates (which read forward values later) are refused.
    /// </summary>
    public bool ReuseBuffers { get; init; }

    /// <summary>Save the local derivatives (f'(x) of every activation) even without seeds or gradients:
    /// feedback alignment reads them (<see cref="Plan.Derivative"/>) after a plain forward pass.</summary>
    public bool SaveDerivatives { get; init; }

    /// <summary>Training (the default) or evaluation: batch normalisation uses the batch's statistics in training and the
    /// running statistics in evaluation.</summary>
    public PlanMode Mode { get; init; } = PlanMode.Training;

    /// <summary>In training mode, whether each forward pass updates the running statistics (once per step: the plan that
    /// makes the step's update; false for side plans such as a backprop oracle measuring cosines on the same batch).</summary>
    public bool UpdatesRunningStatistics { get; init; } = true;

    /// <summary>
    /// Let tangents cross stop-gradients (ẏ = ẋ at a <see cref="StopGradientOp"/>) instead of ending there. A
    /// stop-gradient changes how a model learns, not the function it computes; GrAPE's feedback alignment needs the
    /// Jacobian ∂y/∂h of that function (the output y with respect to a hidden site h), which a model with local losses
    /// (stop-gradients between blocks) would otherwise report as zero. The backward pass still stops at them.
    /// </summary>
    public bool TangentsCrossStopGradients { get; init; }

    /// <summary>Nodes whose value and tangent stay readable when buffers are reused.</summary>
    public ImmutableArray<Node> Retain { get; init; } = [];

    /// <summary>
    /// Real-valued inputs the plan reads from a buffer the caller binds (<see cref="Plan.BindInput"/>) instead of its own
    /// copy: the plan allocates nothing for them and copies nothing per batch, so a batch already on the backend (a
    /// pipeline filling the next batch's buffer during this step, a data set kept on the device) is read where it is.
    /// Class labels and tokens are always copied (<see cref="Plan.SetInput"/> checks them). Pull-backs and parameter
    /// updates, which keep views of the inputs, are refused on such a plan. A CUDA graph captured from the plan keeps
    /// reading the buffer bound at capture: write each batch into that buffer rather than rebinding.
    /// </summary>
    public ImmutableArray<Node> BoundInputs { get; init; } = [];
}
