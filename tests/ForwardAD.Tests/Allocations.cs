namespace ForwardAD.Tests;

/// <summary>Asserts that a hot loop allocates nothing once warm, measured with the runtime's per-thread counter.</summary>
internal static class Allocations
{
    private const int Windows = 3;

    /// <summary>
    /// Runs <paramref name="warmUp"/> steps, then up to three windows of <paramref name="steps"/> steps each (the step
    /// index keeps counting), and passes at the first window in which
    /// <see cref="GC.GetAllocatedBytesForCurrentThread"/> does not move. Why more than one window: that counter is
    /// occasionally off by stray bytes the measured code did not allocate (a rare failure of the runtime's own test of
    /// it, dotnet/runtime#63487 and #74388; seen here once in ~10 whole-suite runs and never in 200,000 steps of the
    /// same loop alone). Our steps are deterministic, so an allocation of theirs shows in every window and still fails;
    /// the message gives all readings.
    /// </summary>
    public static void AssertNone(Action<int> step, int warmUp, int steps, string what)
    {
        int index = 0;
        for (; index < warmUp; index++) step(index);
        Span<long> readings = stackalloc long[Windows];
        for (int window = 0; window < Windows; window++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < steps; i++, index++) step(index);
            readings[window] = GC.GetAllocatedBytesForCurrentThread() - before;
            if (readings[window] == 0) return;
        }
        Assert.Fail($"{what} allocated {string.Join(", then ", readings.ToArray())} bytes in {Windows} windows of {steps} steps after {warmUp} warm-up steps.");
    }
}

/// <summary>The allocation check itself: a step that allocates fails in every window, one that does not passes.</summary>
public class AllocationCheckTests
{
    private static object? _kept;

    [Fact]
    public void A_step_that_allocates_fails_with_every_reading()
    {
        var error = Assert.ThrowsAny<Exception>(() => Allocations.AssertNone(i => _kept = new int[i + 1], warmUp: 2, steps: 3, "the allocating step"));
        Assert.Contains("the allocating step allocated", error.Message);
        Assert.Contains(", then ", error.Message);
    }

    [Fact]
    public void A_step_that_does_not_allocate_passes()
    {
        var buffer = new int[4];
        Allocations.AssertNone(i => buffer[i % 4]++, warmUp: 1, steps: 3, "the quiet step");
        Assert.NotNull(buffer);
    }
}
