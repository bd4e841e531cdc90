namespace ForwardAD.Tests;

/// <summary>Asserts that a hot loop allocates nothing once warm, measured with the runtime's per-thread counter.</summary>
internal static class Allocations
{
    /// <summary>How much longer the second window is than the first.</summary>
    private const int SecondWindowFactor = 8;

    /// <summary>
    /// Runs <paramref name="warmUp"/> steps, then a window of <paramref name="steps"/> steps (the step index keeps
    /// counting), and passes if <see cref="GC.GetAllocatedBytesForCurrentThread"/> did not move. If it did, a second window
    /// <see cref="SecondWindowFactor"/> times as long must allocate nothing at all. Why a second window: that counter is
    /// occasionally off by stray bytes the measured code did not allocate (a rare failure of the runtime's own test of
    /// it, dotnet/runtime#63487 and #74388; seen here once in ~10 whole-suite runs and never in 200,000 steps of the
    /// same loop alone). A per-step allocation, or amortised growth (a list that doubles), allocates again in the longer
    /// window and still fails; the message gives both readings.
    /// </summary>
    public static void AssertNone(Action<int> step, int warmUp, int steps, string what)
    {
        int index = 0;
        for (; index < warmUp; index++) step(index);
        long first = Measure(steps);
        if (first == 0) return;
        long second = Measure(SecondWindowFactor * steps);
        Assert.True(second == 0,
            $"{what} allocated {first} bytes in {steps} steps after {warmUp} warm-up steps, then {second} bytes in the next {SecondWindowFactor * steps}.");

        long Measure(int count)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < count; i++, index++) step(index);
            return GC.GetAllocatedBytesForCurrentThread() - before;
        }
    }
}

/// <summary>The allocation check itself: a step that allocates fails, one that does not passes.</summary>
public class AllocationCheckTests
{
    private static object? _kept;

    [Fact]
    public void A_step_that_allocates_fails_with_every_reading()
    {
        var error = Assert.ThrowsAny<Exception>(() => Allocations.AssertNone(i => _kept = new int[i + 1], warmUp: 2, steps: 3, "the allocating step"));
        Assert.Contains("the allocating step allocated", error.Message);
        Assert.Contains("then ", error.Message);
    }

    /// <summary>Amortised growth (a list that doubles its array now and then) is caught too.</summary>
    [Fact]
    public void A_growing_list_fails()
    {
        var list = new List<int>();
        Assert.ThrowsAny<Exception>(() => Allocations.AssertNone(i => list.Add(i), warmUp: 2, steps: 3, "the growing list"));
    }

    [Fact]
    public void A_step_that_does_not_allocate_passes()
    {
        var buffer = new int[4];
        Allocations.AssertNone(i => buffer[i % 4]++, warmUp: 1, steps: 3, "the quiet step");
        Assert.NotNull(buffer);
    }
}
