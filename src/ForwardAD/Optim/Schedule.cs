namespace ForwardAD.Optim;

/// <summary>A learning-rate schedule: the rate for a 0-based step. Immutable values; compose freely.</summary>
public abstract record Schedule
{
    private protected Schedule() { }

    /// <summary>The learning rate at the 0-based <paramref name="step"/>.</summary>
    public abstract float At(long step);

    /// <summary>The same <paramref name="rate"/> at every step (<see cref="ConstantSchedule"/>).</summary>
    public static Schedule Constant(float rate) => new ConstantSchedule(rate);

    /// <summary>rate · factor^(number of boundaries passed).</summary>
    public static Schedule Step(float rate, float factor, params long[] boundaries) => new StepSchedule(rate, factor, [.. boundaries]);

    /// <summary>rate · decay^step.</summary>
    public static Schedule Exponential(float rate, float decay) => new ExponentialSchedule(rate, decay);

    /// <summary>Linear warm-up from 0 to the peak over <paramref name="warmupSteps"/>, then cosine decay to
    /// <paramref name="finalRate"/> at <paramref name="totalSteps"/> (constant after).</summary>
    public static Schedule CosineWithWarmup(float peakRate, long warmupSteps, long totalSteps, float finalRate = 0f) =>
        new CosineSchedule(peakRate, warmupSteps, totalSteps, finalRate);

    /// <summary>A float used where a schedule is expected is a <see cref="Constant"/> schedule, so
    /// <c>Optimizers.Adam(1e-3f)</c> works.</summary>
    public static implicit operator Schedule(float rate) => Constant(rate);
}

/// <summary>η(t) = <paramref name="Rate"/> for every step.</summary>
/// <param name="Rate">The learning rate.</param>
public sealed record ConstantSchedule(float Rate) : Schedule
{
    /// <inheritdoc/>
    public override float At(long step) => Rate;
}

/// <summary>Piecewise-constant decay: η(t) = <paramref name="Rate"/> · <paramref name="Factor"/>^k, where k is the number
/// of <paramref name="Boundaries"/> b with t ≥ b.</summary>
/// <param name="Rate">The rate before the first boundary.</param>
/// <param name="Factor">The factor applied at each boundary passed (e.g. 0.1).</param>
/// <param name="Boundaries">The 0-based steps from which the next factor applies (any order).</param>
public sealed record StepSchedule(float Rate, float Factor, System.Collections.Immutable.ImmutableArray<long> Boundaries) : Schedule
{
    /// <inheritdoc/>
    public override float At(long step)
    {
        float rate = Rate;
        foreach (var boundary in Boundaries)
            if (step >= boundary) rate *= Factor;
        return rate;
    }
}

/// <summary>η(t) = <paramref name="Rate"/> · <paramref name="Decay"/>^t.</summary>
/// <param name="Rate">The rate at step 0.</param>
/// <param name="Decay">The factor per step (e.g. 0.999).</param>
public sealed record ExponentialSchedule(float Rate, float Decay) : Schedule
{
    /// <inheritdoc/>
    public override float At(long step) => (float)(Rate * Math.Pow(Decay, step));
}

/// <summary>Linear warm-up, then cosine decay: η(t) = PeakRate·(t + 1)/WarmupSteps for t &lt; WarmupSteps;
/// η(t) = FinalRate + ½(PeakRate − FinalRate)(1 + cos(π·p)), p = (t − WarmupSteps)/(TotalSteps − WarmupSteps), until
/// <paramref name="TotalSteps"/>; FinalRate from then on.</summary>
/// <param name="PeakRate">The rate at the end of the warm-up.</param>
/// <param name="WarmupSteps">Steps of linear warm-up (0 for none).</param>
/// <param name="TotalSteps">The step at which the decay reaches <paramref name="FinalRate"/>.</param>
/// <param name="FinalRate">The rate at and after <paramref name="TotalSteps"/>.</param>
public sealed record CosineSchedule(float PeakRate, long WarmupSteps, long TotalSteps, float FinalRate) : Schedule
{
    /// <inheritdoc/>
    public override float At(long step)
    {
        if (step < WarmupSteps) return PeakRate * (step + 1) / WarmupSteps;
        if (step >= TotalSteps) return FinalRate;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return (float)(FinalRate + 0.5 * (PeakRate - FinalRate) * (1 + Math.Cos(Math.PI * progress)));
    }
}
