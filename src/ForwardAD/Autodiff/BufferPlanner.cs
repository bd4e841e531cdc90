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

    /// <summary>A physical buffer: allocated (Host null), or the range [Offset, Offset + Capacity) of the host buffer, free
    /// before step AvailableUntil, fixed in size.</summary>
    private sealed record Physical(int Capacity, int FreeAfter, List<Lifetime> Tenants, int? Offset = null, int AvailableUntil = int.MaxValue);

    /// <summary>Hosted buffers start on 64-byte boundaries (16 floats), as allocated ones do.</summary>
    public const int Alignment = 16;

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
                // A tenant placed before the host was split may be longer than what is left of it (it was dead by then).
                var hostBuffer = host ?? throw new InvalidOperationException("Hosted requests need the host buffer.");
                foreach (var tenant in physical.Tenants) tenant.Assign(new View(hostBuffer, offset, tenant.Length));
                continue;
            }
            var buffer = backend.Allocate(physical.Capacity);
            owned.Add(buffer);
            total += physical.Capacity;
            foreach (var tenant in physical.Tenants) tenant.Assign(new View(buffer, 0, tenant.Length));
        }
        return total;
    }

    private List<Physical> Assign()
    {
        var physical = _hosts.Select(h => new Physical(h.Length, -1, [], h.Offset, h.AvailableUntil)).ToList();
        foreach (var request in reuse ? _requests.OrderBy(r => r.First).ThenByDescending(r => r.Length).ToList() : _requests)
        {
            int best = -1;
            if (reuse)
                for (int i = 0; i < physical.Count; i++)
                {
                    var p = physical[i];
                    if (p.FreeAfter >= request.First) continue;
                    if (p.Offset is not null && (request.Last >= p.AvailableUntil || request.Length > p.Capacity)) continue;
                    if (best < 0 || Better(p, physical[best], request.Length)) best = i;
                }
            if (best < 0)
            {
                physical.Add(new Physical(request.Length, request.Last, [request]));
                continue;
            }
            var chosen = physical[best];
            chosen.Tenants.Add(request);
            int used = (request.Length + Alignment - 1) / Alignment * Alignment;
            if (chosen.Offset is { } offset && chosen.Capacity - used >= Alignment)
            {
                // A host larger than the request is split: the request takes its aligned front, and the rest stays a host of
                // its own, so one gradient's slice holds several buffers at once. The rest counts as busy as long as the whole
                // host was (an earlier tenant may have used it).
                physical[best] = chosen with { Capacity = used, FreeAfter = Math.Max(request.Last, chosen.FreeAfter) };
                physical.Add(new Physical(chosen.Capacity - used, chosen.FreeAfter, [], offset + used, chosen.AvailableUntil));
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
}
