using System.Reflection;
using System.Runtime.InteropServices;

namespace ForwardAD.Cuda.Interop;

/// <summary>
/// The assembly's one native-library resolver: maps the logical names of the <c>[LibraryImport]</c>s to the
/// versioned sonames (libcuda.so.1; cuBLAS and NVRTC 13, then 12), searched in the loader's default paths,
/// then under $CUDA_PATH, /usr/local/cuda and PyTorch's nvidia wheels.
/// </summary>
internal static class NativeLibraries
{
    public const string Driver = "cuda", CuBlas = "cublas", Nvrtc = "nvrtc";

    private static readonly Dictionary<string, string[]> Sonames = new()
    {
        [Driver] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"],
        [CuBlas] = ["libcublas.so.13", "libcublas.so.12", "libcublas.so", "cublas64_13.dll", "cublas64_12.dll"],
        [Nvrtc] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", "nvrtc64_130_0.dll", "nvrtc64_120_0.dll"],
    };

    private static readonly Lazy<bool> Registered = new(() =>
    {
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
        return true;
    });

    /// <summary>Loads a library, or returns why it cannot (the names and folders tried).</summary>
    public static bool TryLoad(string name, out string reason)
    {
        _ = Registered.Value;
        if (TryLoadHandle(name, out _)) { reason = ""; return true; }
        reason = $"none of {string.Join(", ", Sonames[name])} could be loaded from the default paths or {string.Join(", ", Folders())}";
        return false;
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path) =>
        TryLoadHandle(name, out var handle) ? handle : IntPtr.Zero;

    private static IEnumerable<string> Folders()
    {
        var cudaPath = Environment.GetEnvironmentVariable("CUDA_PATH");
        if (!string.IsNullOrEmpty(cudaPath)) { yield return Path.Combine(cudaPath, "lib64"); yield return Path.Combine(cudaPath, "lib"); }
        yield return "/usr/local/cuda/lib64";
        yield return "/usr/local/cuda/targets/x86_64-linux/lib";
        yield return "/usr/lib/x86_64-linux-gnu";
        foreach (var site in new[] { "/opt/torch/.venv/lib", "/usr/local/lib", "/usr/lib" })
            if (Directory.Exists(site))
                foreach (var python in Directory.EnumerateDirectories(site, "python3*"))
                    foreach (var package in new[] { "site-packages", "dist-packages" })
                    {
                        var nvidia = Path.Combine(python, package, "nvidia");
                        if (!Directory.Exists(nvidia)) continue;
                        foreach (var library in Directory.EnumerateDirectories(nvidia)) yield return Path.Combine(library, "lib");
                    }
    }

    private static bool TryLoadHandle(string name, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        if (!Sonames.TryGetValue(name, out var files)) return false;
        foreach (var file in files)
            if (NativeLibrary.TryLoad(file, out handle)) return true;
        foreach (var folder in Folders())
            foreach (var file in files)
            {
                var candidate = Path.Combine(folder, file);
                if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out handle)) return true;
            }
        return false;
    }
}
