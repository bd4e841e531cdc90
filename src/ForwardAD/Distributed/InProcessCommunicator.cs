namespace ForwardAD.Distributed;

/// <summary>
/// Ranks that are threads of one process: for tests and for several ranks on one box without MPI. Create the group
/// with <see cref="CreateGroup"/> and give each thread its communicator. A sum adds the ranks' buffers in rank order
/// on every rank (one deterministic order, so every rank gets the same bits); a rank that does not arrive within
/// <see cref="Communicator.Timeout"/> makes the others throw <see cref="CommunicationException"/>.
/// </summary>
public sealed class InProcessCommunicator : Communicator
{
    private readonly Group _group;
    private readonly int _rank;
    private float[] _floatScratch = [];
    private double[] _doubleScratch = [];

    private InProcessCommunicator(Group group, int rank) => (_group, _rank) = (group, rank);

    /// <inheritdoc/>
    public override int Rank => _rank;
    /// <inheritdoc/>
    public override int Size => _group.Size;
    /// <summary>"threads".</summary>
    public override string Name => "threads";

    /// <summary>One communicator per rank of a new group of <paramref name="size"/> ranks.</summary>
    public static InProcessCommunicator[] CreateGroup(int size)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), $"A group has at least one rank; got {size}.");
        var group = new Group(size);
        return [.. Enumerable.Range(0, size).Select(r => new InProcessCommunicator(group, r))];
    }

    /// <inheritdoc/>
    /// <remarks>Every rank adds all ranks' buffers in rank order, so every rank gets the same bits. Throws
    /// <see cref="CommunicationException"/> when the ranks' lengths differ, a rank fails or one does not arrive in time.</remarks>
    protected override void AllReduceSumCore(Span<float> buffer) => AllReduceSum(buffer, ref _floatScratch);
    /// <inheritdoc cref="AllReduceSumCore(Span{float})"/>
    protected override void AllReduceSumCore(Span<double> buffer) => AllReduceSum(buffer, ref _doubleScratch);

    /// <summary>Every rank publishes its pinned buffer, then sums all of them in rank order into its scratch (the same
    /// order on every rank: the same bits), waits until every rank has read every buffer, and copies the sum back.</summary>
    private unsafe void AllReduceSum<T>(Span<T> buffer, ref T[] scratch) where T : unmanaged, System.Numerics.INumberBase<T>
    {
        if (scratch.Length < buffer.Length) scratch = new T[buffer.Length];
        var sum = scratch.AsSpan(0, buffer.Length);
        fixed (T* mine = buffer)
        {
            _group.Publish(_rank, (IntPtr)mine, buffer.Length);
            Arrive("an all-reduce");
            sum.Clear();
            for (int r = 0; r < Size; r++)
            {
                var (address, length) = _group.Published(r);
                if (length != buffer.Length) Fail($"all-reduce of {buffer.Length} values on rank {_rank} met {length} on rank {r}: every rank must sum the same length");
                System.Numerics.Tensors.TensorPrimitives.Add(sum, new ReadOnlySpan<T>((void*)address, length), sum);
            }
            Arrive("an all-reduce"); // every rank has read every buffer before any is overwritten
        }
        sum.CopyTo(buffer);
    }

    /// <inheritdoc/>
    /// <remarks>Throws <see cref="CommunicationException"/> when the root's length differs from this rank's, a rank fails or
    /// one does not arrive in time.</remarks>
    protected override unsafe void BroadcastCore(Span<byte> buffer, int root)
    {
        fixed (byte* mine = buffer)
        {
            _group.Publish(_rank, (IntPtr)mine, buffer.Length);
            Arrive("a broadcast");
            var (address, length) = _group.Published(root);
            if (length != buffer.Length) Fail($"broadcast of {length} bytes from rank {root} met a buffer of {buffer.Length} on rank {_rank}");
            if (_rank != root) new ReadOnlySpan<byte>((void*)address, length).CopyTo(buffer);
            Arrive("a broadcast");
        }
    }

    /// <inheritdoc/>
    protected override void BarrierCore() => Arrive("a barrier");

    private void Arrive(string operation)
    {
        try
        {
            if (!_group.Barrier.SignalAndWait(Timeout))
                Fail($"rank {_rank} of {Size} waited {Timeout.TotalSeconds:0.#} s in {operation} for the other ranks: a rank stopped answering");
        }
        catch (InvalidOperationException e) when (_group.Failure is not null)
        {
            throw new CommunicationException($"rank {_rank}: {operation} ended because another rank failed: {_group.Failure}", e);
        }
        if (_group.Failure is { } failure)
            throw new CommunicationException($"rank {_rank}: {operation} ended because another rank failed: {failure}");
    }

    private void Fail(string message)
    {
        // Say why to the group and leave its barrier, so that the other ranks stop waiting for this one and fail at once
        // (they check the failure after every barrier), instead of timing out.
        _group.Failure ??= message;
        try { _group.Barrier.RemoveParticipant(); } catch (InvalidOperationException) { }
        throw new CommunicationException(message);
    }

    /// <summary>What the ranks of one group share: a barrier and each rank's published buffer (an address pinned by its
    /// owner for the length of the operation).</summary>
    private sealed class Group(int size)
    {
        private readonly (IntPtr Address, int Length)[] _published = new (IntPtr, int)[size];
        public int Size { get; } = size;
        public Barrier Barrier { get; } = new(size);
        /// <summary>Why a rank gave up, once one has: the others throw at their next barrier.</summary>
        public volatile string? Failure;
        public void Publish(int rank, IntPtr address, int length) => _published[rank] = (address, length);
        public (IntPtr Address, int Length) Published(int rank) => _published[rank];
    }
}
