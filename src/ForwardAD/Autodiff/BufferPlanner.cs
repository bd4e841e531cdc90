using ForwardAD.Backends;

namespace ForwardAD.Autodiff;

/// <summary>
/// Assigns logical buffers with lifetimes [first step, last step] to physical buffers, reusing a
/// physical buffer once its previous occupant is dead (a greedy interval colouring, best fit by
/// size). With reuse off every request gets its own buffer. Peak memory of a JVP then stays flat
/// in depth: a layer's value and tangent die once the next layer has consumed them.
/// </summary>
internal sealed class BufferPlanner(bool reuse)
{
    private sealed record Lifetime(int Length, int First, int Last, Action<View> Assign);

    private readonly List<Lifetime> _requests = [];

    /// <summary>Requests a buffer alive from step <paramref name="first"/> to step <paramref name="last"/> inclusive.</summary>
    public void Request(int length, int first, int last, Action<View> assign)
    {
        if (length > 0) _requests.Add(new Lifetime(length, first, last, assign));
    }

    /// <summary>Float elements the physical buffers will hold, known before anything is allocated.</summary>
    public long PlannedElements() => Assign().Sum(p => (long)p.Capacity);

    /// <summary>Allocates the physical buffers on the backend, adds them to <paramref name="owned"/> (what the plan gives
    /// back when disposed) and hands each request its view. Returns the number of float elements allocated.</summary>
    public long Allocate(Backend backend, List<DeviceBuffer> owned)
    {
        long total = 0;
        foreach (var (capacity, _, tenants) in Assign())
        {
            var buffer = backend.Allocate(capacity);
            owned.Add(buffer);
            total += capacity;
            foreach (var tenant in tenants) tenant.Assign(new View(buffer, 0, tenant.Length));
        }
        return total;
    }

    private List<(int Capacity, int FreeAfter, List<Lifetime> Tenants)> Assign()
    {
        var physical = new List<(int Capacity, int FreeAfter, List<Lifetime> Tenants)>();
        foreach (var request in reuse ? _requests.OrderBy(r => r.First).ThenByDescending(r => r.Length).ToList() : _requests)
        {
            int best = -1;
            if (reuse)
                for (int i = 0; i < physical.Count; i++)
                {
                    if (physical[i].FreeAfter >= request.First) continue;
                    if (best < 0 || Fit(physical[i].Capacity, request.Length) < Fit(physical[best].Capacity, request.Length)) best = i;
                }
            if (best < 0)
            {
                physical.Add((request.Length, request.Last, [request]));
                continue;
            }
            var (capacity, _, tenants) = physical[best];
            tenants.Add(request);
            physical[best] = (Math.Max(capacity, request.Length), Math.Max(request.Last, physical[best].FreeAfter), tenants);
        }
        return physical;

        // Prefer a buffer that is already large enough and wastes least; growing one costs its growth.
        static long Fit(int capacity, int length) => capacity >= length ? capacity - length : 4L * (length - capacity);
    }
}
