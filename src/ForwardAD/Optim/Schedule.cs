namespace ForwardAD.Optim;

/// <summary>A learning-rate schedule: the rate for a 0-based step. Immutable values; compose freely.</summary>
public abstract record Schedule
{
    private protected Schedule() { }

    public abstract float At(long step);

    public static Schedule Constant(float rate) => new ConstantSchedule(rate);

    /// <summary>rate · factor^(number of boundaries passed).</summary>
    public static Schedule Step(float rate, float factor, params long[] boundaries) => new StepSchedule(rate, factor, [.. boundaries]);

    /// <summary>rate · decay^step.</summary>
    public static Schedule Exponential(float rate, float decay) => new ExponentialSchedule(rate, decay);

    /// <summary>Linear warm-up from 0 to the peak over <paramref name="warmupSteps"/>, then cosine decay to
    /// <paramref name="finalRate"/> at <paramref name="totalSteps"/> (constant after).</summary>
    public static Schedule CosineWithWarmup(float peakRate, long warmupSteps, long totalSteps, float finalRate = 0f) =>
        new CosineSchedule(peakRate, warmupSteps, totalSteps, finalRate);

    public static implicit operator Schedule(float rate) => Constant(rate);
}

public sealed record ConstantSchedule(float Rate) : Schedule
{
    public override float At(long step) => Rate;
}

public sealed record StepSchedule(float Rate, float Factor, System.Collections.Immutable.ImmutableArray<long> Boundaries) : Schedule
{
    public override float At(long step)
    {
        float rate = Rate;
        foreach (var boundary in Boundaries)
            if (step >= boundary) rate *= Factor;
        return rate;
    }
}

public sealed record ExponentialSchedule(float Rate, float Decay) : Schedule
{
    public override float At(long step) => (float)(Rate * Math.Pow(Decay, step));
}

public sealed record CosineSchedule(float PeakRate, long WarmupSteps, long TotalSteps, float FinalRate) : Schedule
{
    public override float At(long step)
    {
        if (step < WarmupSteps) return PeakRate * (step + 1) / WarmupSteps;
        if (step >= TotalSteps) return FinalRate;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return (float)(FinalRate + 0.5 * (PeakRate - FinalRate) * (1 + Math.Cos(Math.PI * progress)));
    }
}
