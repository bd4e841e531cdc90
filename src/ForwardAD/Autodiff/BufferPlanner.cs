using ForwardAD.Backends;

namespace ForwardAD.Autodiff;

/// <summary>
/// Assigns logical buffers with lifetimes [first step, last step] to physical buffers, reusing a
/// physical buffer once its previous occupant is dead (a greedy interval colouring, best fit by
/// size). With reuse off every request gets its own buffer. Peak memory of a JVP then stays flat
/// in depth: a layer's value and tangent die once the next layer has consumed them.
/// Memory that another owner only needs from some step on (a parameter gradient's slice, written by the backward pass)
/// can be offered as a host (<see cref="Offer"/>): requests that die before that step live in it first, as autograd's
/// freed activations make room for the gradients.
/// </summary>
internal sealed class BufferPlanner(bool reuse)
{
    private sealed record Lifetime(int Length, int First, int Last, Action<View> Assign);

    /// <summary>A physical buffer: allocated (Offset null; its tenants at 0), or the range [Offset, Offset + Capacity) of
    /// offered range <c>Host</c> in the host buffer, free before step AvailableUntil, fixed in size; each tenant at its own
    /// offset there (pieces of one offered range split and merge, <see cref="Assign"/>).</summary>
    private sealed record Physical(int Capacity, int FreeAfter, List<(Lifetime Request, int Offset)> Tenants, int? Offset = null,
        int AvailableUntil = int.MaxValue, int Host = -1);

    /// <summary>Hosted buffers start on multiples of 16 floats (64 bytes: vector loads, and on CUDA the alignment of its
    /// own allocations, which cuBLAS's aligned kernels use).</summary>
    public const int Alignment = 16;

    /// <summary>The first multiple of <see cref="Alignment"/> at or after <paramref name="elements"/>.</summary>
    public static int Aligned(int elements) => (elements + Alignment - 1) / Alignment * Alignment;

    private readonly List<Lifetime> _requests = [];
    private readonly List<(int Offset, int Length, int AvailableUntil)> _hosts = [];

    /// <summary>Requests a buffer alive from step <paramref name="first"/> to step <paramref name="last"/> inclusive.</summary>
    public void Request(int length, int first, int last, Action<View> assign)
    {
        if (length > 0) _requests.Add(new Lifetime(length, first, last, assign));
    }

    /// <summary>Offers elements [offset, offset + length) of the host buffer given to <see cref="Allocate"/> to requests
    /// whose last step is before <paramref name="availableUntil"/> (with reuse only).</summary>
    public void Offer(int offset, int length, int availableUntil)
    {
        if (reuse && length > 0) _hosts.Add((offset, length, availableUntil));
    }

    /// <summary>Float elements the physical buffers will hold, known before anything is allocated (hosted ones excluded).</summary>
    public long PlannedElements() => Assign().Where(p => p.Offset is null).Sum(p => (long)p.Capacity);

    /// <summary>Allocates the physical buffers on the backend, adds them to <paramref name="owned"/> (what the plan gives
    /// back when disposed), places hosted requests in <paramref name="host"/> and hands each request its view. Returns the
    /// number of float elements allocated.</summary>
    public long Allocate(Backend backend, List<DeviceBuffer> owned, DeviceBuffer? host = null)
    {
        long total = 0;
        foreach (var physical in Assign())
        {
            if (physical.Offset is { } offset)
            {
                var hostBuffer = host ?? throw new InvalidOperationException("Hosted requests need the host buffer.");
                foreach (var (tenant, at) in physical.Tenants) tenant.Assign(new View(hostBuffer, at, tenant.Length));
                continue;
            }
            var buffer = backend.Allocate(physical.Capacity);
            owned.Add(buffer);
            total += physical.Capacity;
            foreach (var (tenant, _) in physical.Tenants) tenant.Assign(new View(buffer, 0, tenant.Length));
        }
        return total;
    }

    /// <summary>
    /// Requests in order of their first step, each into the best free physical buffer or a new one. A piece of an offered
    /// range larger than its request is split (the request takes its aligned front, the rest stays a piece), so one
    /// gradient's slice holds several buffers at once; before each request, adjacent pieces of one range that are all free
    /// by then merge back, so a later, larger request still finds the whole range. Both are safe because the requests come
    /// in order of their first step: a piece free before this request's first step is free for every later one.
    /// </summary>
    private List<Physical> Assign()
    {
        var physical = _hosts.Select((h, index) => new Physical(h.Length, -1, [], h.Offset, h.AvailableUntil, index)).ToList();
        foreach (var request in reuse ? _requests.OrderBy(r => r.First).ThenByDescending(r => r.Length).ToList() : _requests)
        {
            int best = -1;
            if (reuse)
            {
                MergeFreePieces(physical, request.First);
                for (int i = 0; i < physical.Count; i++)
                {
                    var p = physical[i];
                    if (p.FreeAfter >= request.First) continue;
                    if (p.Offset is not null && (request.Last >= p.AvailableUntil || request.Length > p.Capacity)) continue;
                    if (best < 0 || Better(p, physical[best], request.Length)) best = i;
                }
            }
            if (best < 0)
            {
                physical.Add(new Physical(request.Length, request.Last, [(request, 0)]));
                continue;
            }
            var chosen = physical[best];
            chosen.Tenants.Add((request, chosen.Offset ?? 0));
            int used = Aligned(request.Length);
            if (chosen.Offset is { } offset && chosen.Capacity - used >= Alignment)
            {
                physical[best] = chosen with { Capacity = used, FreeAfter = Math.Max(request.Last, chosen.FreeAfter) };
                physical.Add(new Physical(chosen.Capacity - used, chosen.FreeAfter, [], offset + used, chosen.AvailableUntil, chosen.Host));
                continue;
            }
            physical[best] = chosen with { Capacity = Math.Max(chosen.Capacity, request.Length), FreeAfter = Math.Max(request.Last, chosen.FreeAfter) };
        }
        return physical;

        // A host first (its memory is there anyway), then the buffer that is already large enough and wastes least; growing
        // one costs its growth.
        static bool Better(Physical candidate, Physical best, int length) =>
            (candidate.Offset is not null) != (best.Offset is not null) ? candidate.Offset is not null : Fit(candidate.Capacity, length) < Fit(best.Capacity, length);

        static long Fit(int capacity, int length) => capacity >= length ? capacity - length : 4L * (length - capacity);
    }

    /// <summary>Merges runs of adjacent pieces of one offered range that are all free before step <paramref name="first"/>
    /// into one piece (its tenants keep their offsets).</summary>
    private static void MergeFreePieces(List<Physical> physical, int first)
    {
        var free = Enumerable.Range(0, physical.Count)
            .Where(i => physical[i].Offset is not null && physical[i].FreeAfter < first)
            .OrderBy(i => physical[i].Host).ThenBy(i => physical[i].Offset).ToList();
        var merged = new bool[physical.Count];
        for (int start = 0; start < free.Count;)
        {
            int end = start + 1;
            var run = physical[free[start]];
            while (end < free.Count && physical[free[end]] is var next && next.Host == run.Host && next.Offset == run.Offset + run.Capacity)
            {
                run = run with { Capacity = run.Capacity + next.Capacity, FreeAfter = Math.Max(run.FreeAfter, next.FreeAfter), Tenants = [.. run.Tenants, .. next.Tenants] };
                merged[free[end++]] = true;
            }
            physical[free[start]] = run;
            start = end;
        }
        for (int i = physical.Count - 1; i >= 0; i--)
            if (merged[i]) physical.RemoveAt(i);
    }
}
