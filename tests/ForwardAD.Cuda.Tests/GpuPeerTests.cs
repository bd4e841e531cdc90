using System.Text.Json;
using ForwardAD.GpuBenchmarks;

namespace ForwardAD.Cuda.Tests;

/// <summary>The GPU benchmark's peer runner, with stand-in peers (shell commands): a failing peer is a reported row, not an
/// aborted benchmark, and the library path set for our CUDA libraries does not reach the peer. One class: the tests that set
/// LD_LIBRARY_PATH (in .NET's managed copy of the environment, which is what a started process inherits) run one at a time.</summary>
public class GpuPeerTests
{
    private static PeerResult Shell(string script) => PeerProcess.Run(PeerProcess.StartInfo("/bin/sh", ["-c", script]));

    [Fact]
    public void A_failing_peer_is_reported_with_the_tail_of_its_stderr()
    {
        Assert.SkipUnless(File.Exists("/bin/sh"), "needs /bin/sh for the stand-in peer");
        var result = Shell("echo '{\"partial\": 1}'; for i in $(seq 1 40); do echo \"warning line $i\" >&2; done; " +
                           "echo 'RuntimeError: CUDA error: no kernel image is available' >&2; exit 3");
        Assert.False(result.Succeeded);
        Assert.Contains("exit code 3", result.Failure);
        Assert.Contains("RuntimeError: CUDA error: no kernel image is available", result.Failure);
        Assert.DoesNotContain("warning line 1\n", result.Failure); // the tail, not the whole log
    }

    [Fact]
    public void A_peer_that_cannot_start_or_prints_no_json_is_reported()
    {
        Assert.SkipUnless(File.Exists("/bin/sh"), "needs /bin/sh for the stand-in peer");
        var missing = PeerProcess.Run(PeerProcess.StartInfo("/nonexistent/python3", ["peer.py"]));
        Assert.False(missing.Succeeded);
        Assert.Contains("/nonexistent/python3", missing.Failure);
        var garbled = Shell("echo 'not json'");
        Assert.False(garbled.Succeeded);
        Assert.Contains("not json", garbled.Failure);
    }

    [Fact]
    public void A_succeeding_peer_gives_its_last_json_line()
    {
        Assert.SkipUnless(File.Exists("/bin/sh"), "needs /bin/sh for the stand-in peer");
        var result = Shell("echo 'loading'; echo '{\"rows\": {\"forward\": 0.5}}'");
        Assert.True(result.Succeeded, result.Failure);
        Assert.Equal(0.5, result.Result!.Value.GetProperty("rows").GetProperty("forward").GetDouble());
    }

    [Fact]
    public void The_library_path_set_for_our_libraries_does_not_reach_the_peer()
    {
        Assert.SkipUnless(File.Exists("/bin/sh"), "needs /bin/sh for the stand-in peer");
        var saved = (Environment.GetEnvironmentVariable("LD_LIBRARY_PATH"), Environment.GetEnvironmentVariable(PeerProcess.LibraryPathOverride));
        try
        {
            // As .gpu/run leaves it: the machine's own entry, then the toolkit and the wheels' folders it added for us.
            Environment.SetEnvironmentVariable("LD_LIBRARY_PATH",
                "/usr/local/nvidia/lib64:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib");
            Environment.SetEnvironmentVariable(PeerProcess.LibraryPathOverride, null);
            Assert.Equal("/usr/local/nvidia/lib64", PeerLibraryPath());
            Environment.SetEnvironmentVariable(PeerProcess.LibraryPathOverride, "/opt/peer/lib");
            Assert.Equal("/opt/peer/lib", PeerLibraryPath());
            Environment.SetEnvironmentVariable("LD_LIBRARY_PATH", "/usr/local/cuda/lib64");
            Environment.SetEnvironmentVariable(PeerProcess.LibraryPathOverride, null);
            Assert.Equal("<unset>", PeerLibraryPath());
        }
        finally
        {
            Environment.SetEnvironmentVariable("LD_LIBRARY_PATH", saved.Item1);
            Environment.SetEnvironmentVariable(PeerProcess.LibraryPathOverride, saved.Item2);
        }

        static string PeerLibraryPath()
        {
            var result = Shell("printf '{\"ld\": \"%s\"}\\n' \"${LD_LIBRARY_PATH-<unset>}\"");
            Assert.True(result.Succeeded, result.Failure);
            return result.Result!.Value.GetProperty("ld").GetString()!;
        }
    }

    [Theory]
    [InlineData("/opt/cuda-13/lib64:/home/me/lib", "/opt/cuda-13", "/home/me/lib")]
    [InlineData("/usr/local/cuda/lib64/:/usr/lib/x86_64-linux-gnu", null, "/usr/lib/x86_64-linux-gnu")]
    [InlineData("/venv/lib/python3.11/site-packages/nvidia/cu13/lib", null, null)]
    [InlineData("/srv/nvidia/lib", null, "/srv/nvidia/lib")]
    [InlineData("", null, null)]
    public void Only_the_cuda_library_folders_are_removed(string libraryPath, string? cudaPath, string? expected) =>
        Assert.Equal(expected, PeerProcess.WithoutCudaLibraryFolders(libraryPath, cudaPath));
}
