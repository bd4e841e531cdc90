namespace ForwardAD.Cuda.Tests;

/// <summary>A capture whose work fails: the capture is ended (the stream must not stay in capture mode) and the work's own
/// exception comes out, not the end-capture status it caused (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED says nothing about why).
/// A stand-in for the three driver calls makes this checkable without a GPU.</summary>
public class GraphCaptureTests
{
    private sealed class RecordingCapture(int endStatus, IntPtr partialGraph) : IStreamCapture
    {
        public List<string> Calls { get; } = [];
        public int Begin(IntPtr stream) { Calls.Add("begin"); return 0; }
        public int End(IntPtr stream, out IntPtr graph) { Calls.Add("end"); graph = partialGraph; return endStatus; }
        public void DestroyGraph(IntPtr graph) => Calls.Add($"destroy {graph}");
    }

    private const int StreamCaptureInvalidated = 901;

    [Fact]
    public void A_failing_capture_ends_the_capture_and_rethrows_the_original_error()
    {
        var capture = new RecordingCapture(StreamCaptureInvalidated, IntPtr.Zero);
        var original = new InvalidOperationException("the captured step read a scalar back");
        var thrown = Assert.Throws<InvalidOperationException>(() => CudaGraph.Record(capture, 7, () => throw original));
        Assert.Same(original, thrown);
        Assert.Equal(["begin", "end"], capture.Calls);
    }

    [Fact]
    public void A_partial_graph_left_by_a_failing_capture_is_destroyed()
    {
        var capture = new RecordingCapture(0, 1234);
        var original = new InvalidOperationException("failed inside the capture");
        Assert.Same(original, Assert.Throws<InvalidOperationException>(() => CudaGraph.Record(capture, 7, () => throw original)));
        Assert.Equal(["begin", "end", "destroy 1234"], capture.Calls);
    }

    [Fact]
    public void A_successful_capture_returns_the_graph()
    {
        var capture = new RecordingCapture(0, 42);
        int ran = 0;
        Assert.Equal(42, CudaGraph.Record(capture, 7, () => ran++));
        Assert.Equal(1, ran);
        Assert.Equal(["begin", "end"], capture.Calls);
    }
}
