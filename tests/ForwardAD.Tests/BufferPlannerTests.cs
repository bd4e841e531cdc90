using FsCheck;
using FsCheck.Fluent;
using ForwardAD.Autodiff;
using ForwardAD.Backends;

namespace ForwardAD.Tests;

/// <summary>The buffer planner's contract: two requests alive at the same step never share memory, a hosted request lies
/// inside a range offered to it, 64-byte aligned, and is dead before that range's owner needs it.</summary>
public sealed class BufferPlannerTests
{
    public sealed record Request(int Length, int First, int Last);
    public sealed record Host(int Offset, int Length, int AvailableUntil);
    public sealed record Case(IReadOnlyList<Host> Hosts, IReadOnlyList<Request> Requests, int HostLength);

    private static readonly Gen<Case> Cases =
        from hostCount in Gen.Choose(0, 4)
        from hostSizes in Gen.ListOf(Gen.Choose(1, 300), hostCount)
        from gaps in Gen.ListOf(Gen.Choose(0, 40), hostCount)
        from availability in Gen.ListOf(Gen.Choose(0, 30), hostCount)
        from requests in Gen.ListOf(
            from length in Gen.OneOf(Gen.Choose(1, 20), Gen.Choose(1, 120))
            from first in Gen.Choose(-1, 25)
            from span in Gen.Choose(0, 10)
            select new Request(length, first, first + span))
        select Layout(hostSizes, gaps, availability, requests);

    private static Case Layout(IReadOnlyList<int> sizes, IReadOnlyList<int> gaps, IReadOnlyList<int> availability, IReadOnlyList<Request> requests)
    {
        var hosts = new List<Host>();
        int end = 0;
        for (int i = 0; i < sizes.Count; i++)
        {
            // Offered ranges start aligned, as Plan.Compile offers them.
            int offset = BufferPlanner.Aligned(end + gaps[i]);
            hosts.Add(new Host(offset, sizes[i], availability[i]));
            end = offset + sizes[i];
        }
        return new Case(hosts, requests, Math.Max(1, end));
    }

    private static (View[] Views, long Allocated, DeviceBuffer Host) Plan(Case c, bool reuse)
    {
        var backend = new CpuBackend();
        var planner = new BufferPlanner(reuse);
        var views = new View[c.Requests.Count];
        for (int i = 0; i < views.Length; i++)
        {
            int index = i;
            planner.Request(c.Requests[i].Length, c.Requests[i].First, c.Requests[i].Last, v => views[index] = v);
        }
        foreach (var h in c.Hosts) planner.Offer(h.Offset, h.Length, h.AvailableUntil);
        var host = backend.Allocate(c.HostLength);
        long allocated = planner.Allocate(backend, [], host);
        Assert.Equal(planner.PlannedElements(), allocated);
        return (views, allocated, host);
    }

    [Fact]
    public void No_two_live_requests_overlap_and_hosted_ones_stay_inside_their_host() =>
        Prop.ForAll(Cases.ToArbitrary(), c =>
        {
            var (views, _, hostBuffer) = Plan(c, reuse: true);
            for (int i = 0; i < views.Length; i++)
            {
                var (v, r) = (views[i], c.Requests[i]);
                Assert.Equal(r.Length, v.Length);
                if (ReferenceEquals(v.Buffer, hostBuffer))
                {
                    var host = c.Hosts.Single(h => v.Offset >= h.Offset && v.Offset < h.Offset + h.Length);
                    Assert.True(v.Offset + v.Length <= host.Offset + host.Length, $"{r} at {v.Offset} runs past its host {host}");
                    Assert.True(r.Last < host.AvailableUntil, $"{r} outlives its host {host}");
                    Assert.Equal(0, v.Offset % BufferPlanner.Alignment);
                }
                for (int j = 0; j < i; j++)
                {
                    var (w, s) = (views[j], c.Requests[j]);
                    bool alive = r.First <= s.Last && s.First <= r.Last;
                    bool shared = ReferenceEquals(v.Buffer, w.Buffer) && v.Offset < w.Offset + w.Length && w.Offset < v.Offset + v.Length;
                    Assert.False(alive && shared, $"{r} at {v.Offset} and {s} at {w.Offset} are alive together in the same memory");
                }
            }
        }).Check(PropertyConfig.Fixed(300));

    [Fact]
    public void Without_reuse_every_request_has_its_own_buffer() =>
        Prop.ForAll(Cases.ToArbitrary(), c =>
        {
            var (views, allocated, hostBuffer) = Plan(c, reuse: false);
            Assert.DoesNotContain(views, v => ReferenceEquals(v.Buffer, hostBuffer));
            Assert.Equal(c.Requests.Count, views.Select(v => v.Buffer).Distinct().Count());
            Assert.Equal(c.Requests.Sum(r => (long)r.Length), allocated);
        }).Check(PropertyConfig.Fixed(100));

    /// <summary>Pieces of a split host merge back once their tenants are dead: a later request as large as the whole host
    /// still lives in it (a small request split it first), and so do two that follow a merge side by side.</summary>
    [Fact]
    public void A_split_host_is_whole_again_once_its_tenants_are_dead()
    {
        var c = new Case([new Host(0, 4096, AvailableUntil: 100)],
            [new Request(16, 0, 1), new Request(100, 2, 3), new Request(4096, 5, 6), new Request(2000, 8, 9), new Request(2000, 8, 9)], 4096);
        var (views, allocated, _) = Plan(c, reuse: true);
        Assert.Equal(0, allocated);
        Assert.Equal(0, views[2].Offset);
        Assert.Equal(new[] { 0, 2000 }, views.Skip(3).Select(v => v.Offset).Order().ToArray());
    }

    /// <summary>A host holds as many live requests as fit in it side by side (each starting on a 16-float boundary), so one
    /// large gradient slice takes several activations at once, and only what does not fit is allocated.</summary>
    [Fact]
    public void A_large_host_holds_several_live_requests_at_once()
    {
        var c = new Case([new Host(0, 4 * 64, AvailableUntil: 10)],
            [new Request(60, 0, 5), new Request(64, 1, 6), new Request(50, 2, 7), new Request(64, 3, 8), new Request(64, 4, 9)], 4 * 64);
        var (views, allocated, _) = Plan(c, reuse: true);
        Assert.Equal(new[] { 0, 64, 128, 192 }, views.Take(4).Select(v => v.Offset).Order().ToArray());
        Assert.Equal(64, allocated);
    }
}
