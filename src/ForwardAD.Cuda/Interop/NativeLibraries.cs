using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ForwardAD.Cuda.Interop;

/// <summary>
/// The assembly's one native-library resolver: maps the logical names of the <c>[LibraryImport]</c>s to the
/// versioned sonames (libcuda.so.1; cuBLAS and NVRTC 13, then 12; NCCL 2), searched in the loader's default paths,
/// then under $CUDA_PATH, /usr/local/cuda and PyTorch's nvidia wheels. Installed by the module initializer, so it is in
/// place before any code of this assembly can reach a <c>[LibraryImport]</c>.
/// </summary>
internal static class NativeLibraries
{
    public const string Driver = "cuda", CuBlas = "cublas", Nvrtc = "nvrtc", Nccl = "nccl";

    private static readonly Dictionary<string, string[]> Sonames = new()
    {
        [Driver] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"],
        [CuBlas] = ["libcublas.so.13", "libcublas.so.12", "libcublas.so", "cublas64_13.dll", "cublas64_12.dll"],
        [Nvrtc] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", "nvrtc64_130_0.dll", "nvrtc64_120_0.dll"],
        // NCCL has kept soname 2 since 2.0 and has no Windows build. PyTorch's wheel puts it in site-packages/nvidia/nccl/lib.
        [Nccl] = ["libnccl.so.2", "libnccl.so"],
    };

    /// <summary>Sets the resolver when the module loads. Registering it lazily, on the first <see cref="TryLoad"/>, left every
    /// path that reaches a binding without asking first (a user opening <c>CudaBackend.Create</c>, a handle released
    /// on the finalizer thread) to the runtime's default probing, which knows none of the versioned sonames.</summary>
#pragma warning disable CA2255 // a module initializer in a library: exactly what is wanted here, and it only registers a callback
    [ModuleInitializer]
    internal static void Install() => NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
#pragma warning restore CA2255

    /// <summary>Loads a library, or returns why it cannot (the names and folders tried).</summary>
    public static bool TryLoad(string name, out string reason)
    {
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
        return TryLoadFromFolders(name, Folders(), out handle);
    }

    /// <summary>Loads the first of the library's file names found in the folders, in order.</summary>
    internal static bool TryLoadFromFolders(string name, IEnumerable<string> folders, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        if (!Sonames.TryGetValue(name, out var files)) return false;
        foreach (var folder in folders)
            foreach (var file in files)
            {
                var candidate = Path.Combine(folder, file);
                if (!File.Exists(candidate)) continue;
                // NVRTC dlopens libnvrtc-builtins by soname when it compiles. The CUDA 13 pip wheels lost the $ORIGIN run
                // path that found it beside libnvrtc, so load it from the same folder first: the loader then hands NVRTC the
                // library already loaded under that soname. Kept loaded for the process's lifetime, like NVRTC itself.
                if (name == Nvrtc && BuiltinsBeside(folder, file) is { } builtins) NativeLibrary.TryLoad(builtins, out _);
                if (NativeLibrary.TryLoad(candidate, out handle)) return true;
            }
        return false;
    }

    /// <summary>The builtins library of the same NVRTC version in the folder, or null. libnvrtc.so.13 → libnvrtc-builtins.so.13
    /// or .so.13.* (the shortest name: the soname rather than the fully versioned file); libnvrtc.so → libnvrtc-builtins.so*;
    /// nvrtc64_130_0.dll → nvrtc-builtins64_130.dll.</summary>
    internal static string? BuiltinsBeside(string folder, string nvrtcFile)
    {
        if (!Directory.Exists(folder)) return null;
        if (nvrtcFile.StartsWith("nvrtc64_", StringComparison.Ordinal) && nvrtcFile.IndexOf('_', "nvrtc64_".Length) is var end and > 0)
        {
            var dll = Path.Combine(folder, $"nvrtc-builtins64_{nvrtcFile["nvrtc64_".Length..end]}.dll");
            return File.Exists(dll) ? dll : null;
        }
        if (!nvrtcFile.StartsWith("libnvrtc.so", StringComparison.Ordinal)) return null;
        // libnvrtc.so.13 → "libnvrtc-builtins.so.13", then that name exactly or followed by '.' (not .so.130).
        var stem = "libnvrtc-builtins.so" + nvrtcFile["libnvrtc.so".Length..];
        return Directory.EnumerateFiles(folder, stem + "*")
            .Where(path => Path.GetFileName(path) is var file && (file.Length == stem.Length || file[stem.Length] == '.'))
            .OrderBy(path => path.Length).ThenBy(path => path, StringComparer.Ordinal)
            .FirstOrDefault();
    }
}
