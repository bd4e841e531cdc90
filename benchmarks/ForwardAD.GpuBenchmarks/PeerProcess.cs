using System.ComponentModel;
using System.Diagnostics;
using System.Text.Json;

namespace ForwardAD.GpuBenchmarks;

/// <summary>What a peer run gave: its JSON result, or why there is none (exit code and the tail of its stderr).</summary>
internal sealed record PeerResult(JsonElement? Result, string? Failure)
{
    public bool Succeeded => Result is not null;
}

/// <summary>
/// Runs a peer benchmark (a separate process printing one JSON object as its last line). A peer that fails — cannot
/// start, exits non-zero, hangs, prints no JSON — is a <see cref="PeerResult"/> with the reason, never an exception: our
/// rows are still measured and printed beside "peer failed". The peer gets our environment except the library path set
/// for our CUDA libraries: PyTorch brings its own CUDA libraries, and a toolkit cuBLAS or NVRTC of another version ahead of
/// them on LD_LIBRARY_PATH (which the loader searches before a RUNPATH) can make it load the wrong one.
/// </summary>
internal static class PeerProcess
{
    /// <summary>When set, the peer's LD_LIBRARY_PATH exactly (empty: none).</summary>
    public const string LibraryPathOverride = "FORWARDAD_PEER_LD_LIBRARY_PATH";
    private const int TailLines = 20;

    public static ProcessStartInfo StartInfo(string fileName, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo(fileName, arguments) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var libraryPath = Environment.GetEnvironmentVariable(LibraryPathOverride)
            ?? WithoutCudaLibraryFolders(Environment.GetEnvironmentVariable("LD_LIBRARY_PATH"), Environment.GetEnvironmentVariable("CUDA_PATH"));
        if (string.IsNullOrEmpty(libraryPath)) start.Environment.Remove("LD_LIBRARY_PATH");
        else start.Environment["LD_LIBRARY_PATH"] = libraryPath;
        start.Environment.Remove(LibraryPathOverride);
        return start;
    }

    /// <summary>The library path without the folders added for our CUDA libraries (what .gpu/run adds, and what
    /// NativeLibraries searches): $CUDA_PATH/lib64 and /lib, /usr/local/cuda's library folders, and the
    /// site-packages/nvidia/*/lib folders of the PyTorch wheels. Everything else (a container's driver folder) stays.</summary>
    internal static string? WithoutCudaLibraryFolders(string? libraryPath, string? cudaPath)
    {
        if (string.IsNullOrEmpty(libraryPath)) return null;
        var ours = new HashSet<string>(StringComparer.Ordinal) { "/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda/targets/x86_64-linux/lib" };
        if (!string.IsNullOrEmpty(cudaPath)) { ours.Add(Path.Combine(cudaPath, "lib64")); ours.Add(Path.Combine(cudaPath, "lib")); }
        static bool IsWheelFolder(string folder) =>
            Path.GetFileName(folder) == "lib" && Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(folder)) ?? "") == "nvidia";
        var kept = libraryPath.Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Where(folder => !ours.Contains(folder.TrimEnd('/')) && !IsWheelFolder(folder.TrimEnd('/')))
            .ToArray();
        return kept.Length == 0 ? null : string.Join(':', kept);
    }

    public static PeerResult Run(ProcessStartInfo start, TimeSpan? timeout = null)
    {
        Process? process;
        try { process = Process.Start(start); }
        catch (Win32Exception e) { return Failed($"could not start {start.FileName}: {e.Message}"); }
        if (process is null) return Failed($"could not start {start.FileName}");
        using (process)
        {
            // Both pipes are drained concurrently: a peer filling its stderr pipe would otherwise block forever.
            var output = process.StandardOutput.ReadToEndAsync();
            var errors = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeout ?? TimeSpan.FromMinutes(15)))
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
                return Failed($"{start.FileName} did not finish within {(timeout ?? TimeSpan.FromMinutes(15)).TotalMinutes:F0} minutes; stderr ends with:\n{Tail(errors.Result)}");
            }
            process.WaitForExit(); // the pipes are complete only after the parameterless wait
            if (process.ExitCode != 0)
                return Failed($"{start.FileName} failed (exit code {process.ExitCode}); stderr ends with:\n{Tail(errors.Result)}");
            var last = output.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? "";
            try
            {
                using var document = JsonDocument.Parse(last);
                return new PeerResult(document.RootElement.Clone(), null);
            }
            catch (JsonException e)
            {
                return Failed($"{start.FileName} printed no JSON result as its last line ({e.Message}); stdout ends with:\n{Tail(output.Result)}\nstderr ends with:\n{Tail(errors.Result)}");
            }
        }
    }

    private static PeerResult Failed(string reason) => new(null, reason);

    private static string Tail(string text)
    {
        var lines = text.TrimEnd().Split('\n');
        return string.Join('\n', lines.Skip(Math.Max(0, lines.Length - TailLines)));
    }
}
