using System.Text.RegularExpressions;
using ForwardAD.Backends;
using ForwardAD.Cuda.Distributed;
using ForwardAD.Cuda.Interop;
using ForwardAD.Distributed;

namespace ForwardAD.Cuda.Tests;

/// <summary>The NCCL communicator on one GPU, one rank (the single-process communicator as bootstrap). Over one rank a sum
/// leaves the data as it is, so the out-of-place forms are used where they show more: the destination must become the
/// source, which checks the pointers, the offsets and the counts handed to NCCL. Skips without a GPU (as every CUDA test)
/// and, with the reason, without libnccl.so.2.</summary>
public sealed class NcclTests(CudaFixture fixture) : IClassFixture<CudaFixture>
{
    private NcclCommunicator Open()
    {
        var backend = fixture.Require();
        Assert.SkipUnless(NcclCommunicator.IsAvailable(out var reason), $"NCCL is not installed, so the NCCL tests skip: {reason}");
        return NcclCommunicator.Create(backend, Communicator.SingleProcess);
    }

    [Fact]
    public void One_rank_initialises_and_reports_the_library_version()
    {
        using var nccl = Open();
        Assert.Equal(0, nccl.Rank);
        Assert.Equal(1, nccl.Size);
        Assert.True(nccl.IsOpen);
        Assert.Matches(new Regex(@"^NCCL 2\.\d+\.\d+$"), nccl.Name);
        Nccl.Check(Nccl.ncclGetVersion(out var code), "ncclGetVersion");
        Assert.Equal(Nccl.DecodeVersion(code), nccl.Version);
        Assert.Equal(Communicator.SingleProcess.Timeout, nccl.Timeout);
    }

    [Fact]
    public void An_all_reduce_over_one_rank_leaves_a_device_buffer_unchanged()
    {
        using var nccl = Open();
        var backend = nccl.Backend;
        var values = Host.Normal(11, 1000);
        var buffer = backend.Upload(values);

        nccl.AllReduceSumOnDevice(buffer, buffer); // in place, what the public path runs on several ranks
        Assert.Equal(values, buffer.ToArray());

        var before = nccl.Traffic;
        nccl.AllReduceSum(backend, buffer); // one rank: the base class counts it and leaves it
        Assert.Equal(values, buffer.ToArray());
        Assert.Equal(1000L * sizeof(float), (nccl.Traffic - before).ReducedBytes);
    }

    [Fact]
    public void An_out_of_place_all_reduce_over_one_rank_copies_the_source_slice()
    {
        using var nccl = Open();
        var backend = nccl.Backend;
        var values = Host.Normal(12, 1000);
        var source = backend.Upload(values);
        var destination = backend.Upload(new float[1000]);

        nccl.AllReduceSumOnDevice(source.Slice(100, 300), destination.Slice(500, 300));
        var result = destination.ToArray();
        Assert.Equal(values[100..400], result[500..800]);
        Assert.All(result[..500], value => Assert.Equal(0f, value));
        Assert.All(result[800..], value => Assert.Equal(0f, value));
    }

    [Fact]
    public void A_broadcast_from_rank_0_reaches_the_destination()
    {
        using var nccl = Open();
        var backend = nccl.Backend;
        var values = Host.Normal(13, 257);
        var source = backend.Upload(values);
        var destination = backend.Upload(new float[257]);

        nccl.BroadcastOnDevice(source, destination, root: 0);
        Assert.Equal(values, destination.ToArray());
        nccl.BroadcastOnDevice(destination, destination, root: 0); // in place
        Assert.Equal(values, destination.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => nccl.BroadcastOnDevice(source, destination, root: 1));

        // Host buffers go through the bootstrap.
        Assert.Equal("from rank 0", nccl.BroadcastText("from rank 0"));
        Span<double> sum = [1.5, -2];
        nccl.AllReduceSum(sum);
        Assert.Equal([1.5, -2], sum.ToArray());
        nccl.Barrier();
    }

    [Fact]
    public void Buffers_of_another_backend_are_refused_by_name()
    {
        using var nccl = Open();
        var cpu = new CpuBackend();
        var host = new View(cpu.Allocate(4));
        var device = nccl.Backend.Upload(new float[4]);
        var error = Assert.Throws<ArgumentException>(() => nccl.AllReduceSumOnDevice(host, device));
        Assert.Contains(cpu.Name, error.Message);
        Assert.Throws<ArgumentException>(() => nccl.AllReduceSumOnDevice(device, device.Slice(0, 3)));
    }

    [Fact]
    public void Dispose_destroys_the_communicator()
    {
        var nccl = Open();
        var buffer = nccl.Backend.Upload([1f, 2f]);
        nccl.Dispose();
        Assert.False(nccl.IsOpen);
        Assert.Throws<ObjectDisposedException>(() => nccl.AllReduceSumOnDevice(buffer, buffer));
        nccl.Dispose(); // a second time does nothing
        // The GPU is still usable, and a new communicator can be made on it.
        using var again = NcclCommunicator.Create(nccl.Backend, Communicator.SingleProcess);
        again.AllReduceSumOnDevice(buffer, buffer);
        Assert.Equal([1f, 2f], buffer.ToArray());
    }
}

/// <summary>What can be checked without a GPU or NCCL: the refusal when the library is missing, the resolver's names, the
/// version code, and the wait for a collective (timeout, NCCL's asynchronous error, a failed stream) against a stand-in.</summary>
public sealed class NcclWithoutGpuTests
{
    [Fact]
    public void Without_libnccl_IsAvailable_names_the_missing_library()
    {
        if (NcclCommunicator.IsAvailable(out var reason))
        {
            Assert.Equal("", reason);
            Assert.Skip("NCCL loads on this machine; the missing-library path is checked where it is absent.");
        }
        Assert.Contains("libnccl.so.2", reason);
    }

    /// <summary>No CUDA backend exists without a GPU, so none is passed: the missing library is reported first (it is what
    /// to fix), through the agreement that keeps the other ranks from waiting in ncclCommInitRank.</summary>
    [Fact]
    public void Without_libnccl_Create_refuses_with_the_reason()
    {
        Assert.SkipWhen(NcclCommunicator.IsAvailable(out _), "NCCL loads on this machine; the missing-library path is checked where it is absent.");
        var error = Assert.Throws<DllNotFoundException>(() => NcclCommunicator.Create(null!, Communicator.SingleProcess));
        Assert.Contains("libnccl.so.2", error.Message);
        Assert.Contains("rank 0 of 1", error.Message);
    }

    [Fact]
    public void Create_without_a_bootstrap_is_refused()
    {
        Assert.Throws<ArgumentNullException>(() => NcclCommunicator.Create(null!, null!));
    }

    /// <summary>A stand-in file named like PyTorch's wheel copy (site-packages/nvidia/nccl/lib/libnccl.so.2) is what the
    /// resolver loads for "nccl" from a folder.</summary>
    [Fact]
    public void The_resolver_loads_libnccl_so_2_from_a_folder()
    {
        var folder = Directory.CreateTempSubdirectory("forwardad-nccl-");
        try
        {
            var standIn = Path.Combine(System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "libSystem.IO.Compression.Native.so");
            Assert.SkipUnless(File.Exists(standIn), "needs the runtime's libSystem.IO.Compression.Native.so as a stand-in (Linux)");
            File.Copy(standIn, Path.Combine(folder.FullName, "libnccl.so.2"));
            Assert.True(NativeLibraries.TryLoadFromFolders(NativeLibraries.Nccl, [folder.FullName], out var handle));
            Assert.NotEqual(IntPtr.Zero, handle);
        }
        finally { folder.Delete(recursive: true); }
    }

    [Theory]
    [InlineData(22703, 2, 27, 3)]
    [InlineData(21903, 2, 19, 3)]
    [InlineData(20900, 2, 9, 0)]
    [InlineData(2804, 2, 8, 4)]
    [InlineData(2406, 2, 4, 6)]
    public void The_version_code_is_split_as_nccl_h_builds_it(int code, int major, int minor, int patch) =>
        Assert.Equal((major, minor, patch), Nccl.DecodeVersion(code));

    [Fact]
    public void Result_names_follow_nccl_h()
    {
        Assert.Equal("ncclSuccess", Nccl.ResultName(0));
        Assert.Equal("ncclRemoteError", Nccl.ResultName(6));
        Assert.Equal("ncclTimeout", Nccl.ResultName(8));
        Assert.Equal("ncclResult 42", Nccl.ResultName(42));
        var error = new NcclException("ncclAllReduce", 4, "ncclInvalidArgument: invalid argument");
        Assert.IsAssignableFrom<CudaException>(error);
        Assert.Contains("ncclAllReduce failed with 4: ncclInvalidArgument", error.Message);
    }

    private sealed class StandIn(int pollsUntilDone, int streamError = CudaDriver.ErrorNotReady, int asyncError = Nccl.Success) : ICollectiveProgress
    {
        public int Polls { get; private set; }
        public int Aborts { get; private set; }

        public int QueryStream() => ++Polls > pollsUntilDone && pollsUntilDone >= 0 ? CudaDriver.Success : streamError;
        public int GetAsyncError(out int error) { error = asyncError; return Nccl.Success; }
        public int Abort() { Aborts++; return Nccl.Success; }
        public string DescribeCuda(int status) => $"CUDA status {status}";
        public string DescribeNccl(int status) => Nccl.ResultName(status);
    }

    private static readonly CollectiveCall AllReduce = new("all-reduce", 1234, 1, 4);

    [Fact]
    public void A_collective_that_finishes_is_waited_for_and_nothing_is_aborted()
    {
        var progress = new StandIn(pollsUntilDone: 5);
        CollectiveWait.Await(progress, TimeSpan.FromSeconds(10), AllReduce);
        Assert.Equal(6, progress.Polls);
        Assert.Equal(0, progress.Aborts);

        var forever = new StandIn(pollsUntilDone: 3);
        CollectiveWait.Await(forever, Timeout.InfiniteTimeSpan, AllReduce); // a negative timeout waits for good
        Assert.Equal(0, forever.Aborts);
    }

    [Fact]
    public void A_collective_past_the_timeout_aborts_the_communicator_and_names_the_operation()
    {
        var progress = new StandIn(pollsUntilDone: -1); // never done: a rank stopped answering
        var started = System.Diagnostics.Stopwatch.StartNew();
        var error = Assert.Throws<CommunicationException>(() => CollectiveWait.Await(progress, TimeSpan.FromMilliseconds(50), AllReduce));
        Assert.True(started.Elapsed >= TimeSpan.FromMilliseconds(50));
        Assert.Equal(1, progress.Aborts);
        Assert.Contains("NCCL all-reduce of 1,234 float32 values on rank 1 of 4", error.Message);
        Assert.Contains("did not finish within 0.05 s", error.Message);
        Assert.Contains("aborted", error.Message);
    }

    [Fact]
    public void An_asynchronous_nccl_error_aborts_at_once_with_ncclGetAsyncErrors_result()
    {
        var progress = new StandIn(pollsUntilDone: -1, asyncError: Nccl.RemoteError);
        var error = Assert.Throws<CommunicationException>(() => CollectiveWait.Await(progress, TimeSpan.FromSeconds(60), AllReduce));
        Assert.Equal(1, progress.Polls);
        Assert.Equal(1, progress.Aborts);
        Assert.Contains("ncclRemoteError", error.Message);
        var inner = Assert.IsType<NcclException>(error.InnerException);
        Assert.Equal("ncclCommGetAsyncError", inner.Function);
        Assert.Equal(Nccl.RemoteError, inner.Status);
    }

    [Fact]
    public void A_failed_stream_aborts_and_carries_the_cuda_error()
    {
        const int IllegalAddress = 700;
        var progress = new StandIn(pollsUntilDone: -1, streamError: IllegalAddress);
        var error = Assert.Throws<CommunicationException>(() => CollectiveWait.Await(progress, TimeSpan.FromSeconds(60), AllReduce));
        Assert.Equal(1, progress.Aborts);
        var inner = Assert.IsType<CudaException>(error.InnerException);
        Assert.Equal("cuStreamQuery", inner.Function);
        Assert.Equal(IllegalAddress, inner.Status);
        Assert.Contains("all-reduce", error.Message);
    }

    [Fact]
    public void In_progress_is_not_an_error()
    {
        var progress = new StandIn(pollsUntilDone: 2, asyncError: Nccl.InProgress);
        CollectiveWait.Await(progress, TimeSpan.FromSeconds(10), AllReduce);
        Assert.Equal(0, progress.Aborts);
    }
}
