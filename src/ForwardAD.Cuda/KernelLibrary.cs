using System.Security.Cryptography;
using System.Text;
using ForwardAD.Cuda.Interop;

namespace ForwardAD.Cuda;

/// <summary>
/// The kernels of native/*.cu, one module per family. A module comes from the fatbin CMake built
/// (&lt;family&gt;.fatbin in $FORWARDAD_CUDA_KERNELS, or native/ beside the assembly) when there is one; otherwise
/// the same source, embedded in this assembly, is compiled by NVRTC for the device's architecture with
/// --fmad=false (the random numbers must match the CPU's bit for bit) and the cubin cached on disk by the
/// SHA-256 of source, options and architecture.
/// </summary>
internal sealed class KernelLibrary : IDisposable
{
    public static readonly string[] Families = ["elementwise", "random", "reduce", "loss", "conv", "attention", "sequence"];

    private readonly List<CudaModuleHandle> _modules = [];
    private readonly Dictionary<string, IntPtr> _functions = [];

    /// <summary>Where each module came from ("fatbin PATH", "nvrtc (cached PATH)", ...), for diagnostics.</summary>
    public IReadOnlyList<string> Origins { get; }

    public unsafe KernelLibrary(int computeMajor, int computeMinor)
    {
        var origins = new List<string>();
        foreach (var family in Families)
        {
            var (image, origin) = FindFatbin(family) is { } path
                ? (File.ReadAllBytes(path), $"{family}: fatbin {path}")
                : CompileWithCache(family, computeMajor, computeMinor);
            origins.Add(origin);
            var module = new CudaModuleHandle();
            fixed (byte* pointer = image)
            {
                CudaDriver.Check(CudaDriver.cuModuleLoadData(out var handle, pointer), $"cuModuleLoadData ({family})");
                module.Attach(handle);
            }
            _modules.Add(module);
            foreach (var name in KernelNames(Source(family)))
            {
                CudaDriver.Check(CudaDriver.cuModuleGetFunction(out var function, module.DangerousGetHandle(), name), $"cuModuleGetFunction ({name})");
                _functions[name] = function;
            }
        }
        Origins = origins;
    }

    public IntPtr this[string kernel] => _functions.TryGetValue(kernel, out var f) ? f
        : throw new KeyNotFoundException($"No CUDA kernel named '{kernel}' in native/*.cu (known: {string.Join(", ", _functions.Keys)}).");

    internal static string Source(string name)
    {
        using var stream = typeof(KernelLibrary).Assembly.GetManifestResourceStream($"ForwardAD.Cuda.native.{name}{(name.EndsWith(".cuh") ? "" : ".cu")}")
            ?? throw new InvalidOperationException($"The kernel source {name} is not embedded in ForwardAD.Cuda.");
        return new StreamReader(stream).ReadToEnd();
    }

    /// <summary>The extern "C" __global__ functions a source defines.</summary>
    internal static IEnumerable<string> KernelNames(string source)
    {
        const string marker = "extern \"C\" __global__ void ";
        for (int at = source.IndexOf(marker, StringComparison.Ordinal); at >= 0; at = source.IndexOf(marker, at + 1, StringComparison.Ordinal))
        {
            int start = at + marker.Length;
            yield return source[start..source.IndexOf('(', start)].Trim();
        }
    }

    private static string? FindFatbin(string family)
    {
        var folders = new[] { Environment.GetEnvironmentVariable("FORWARDAD_CUDA_KERNELS"), Path.Combine(AppContext.BaseDirectory, "native"), AppContext.BaseDirectory };
        return folders.Where(f => !string.IsNullOrEmpty(f)).Select(f => Path.Combine(f!, family + ".fatbin")).FirstOrDefault(File.Exists);
    }

    internal static string[] CompileOptions(int major, int minor) =>
        [$"--gpu-architecture=sm_{major}{minor}", "--fmad=false", "--std=c++17", "-default-device"];

    private static (byte[] Image, string Origin) CompileWithCache(string family, int major, int minor)
    {
        var source = Source(family);
        var header = Source("common.cuh");
        var options = CompileOptions(major, minor);
        var hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join("\n", [source, header, .. options]))))[..32].ToLowerInvariant();
        var cacheFolder = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "forwardad", "kernels");
        var cached = Path.Combine(cacheFolder, $"{family}-sm{major}{minor}-{hash}.cubin");
        if (File.Exists(cached)) return (File.ReadAllBytes(cached), $"{family}: nvrtc cubin cached at {cached}");
        var image = Compile(family, source, header, options);
        try
        {
            Directory.CreateDirectory(cacheFolder);
            var temporary = cached + $".{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temporary, image);
            File.Move(temporary, cached, overwrite: true);
        }
        catch (IOException) { /* a read-only home only costs a recompilation next time */ }
        catch (UnauthorizedAccessException) { }
        return (image, $"{family}: compiled by nvrtc for sm_{major}{minor}");
    }

    private static unsafe byte[] Compile(string family, string source, string header, string[] options)
    {
        if (!NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out var reason))
            throw new InvalidOperationException($"No fatbin for the '{family}' kernels and NVRTC is unavailable ({reason}). Build them with CMake (see docs/gpu.md) or install NVRTC.");
        var handle = new NvrtcProgramHandle();
        using var pinned = new Utf8Strings([source, family + ".cu", header, "common.cuh", .. options]);
        byte** headers = stackalloc byte*[1];
        byte** names = stackalloc byte*[1];
        headers[0] = pinned[2];
        names[0] = pinned[3];
        Nvrtc.Check(Nvrtc.nvrtcCreateProgram(out var program, pinned[0], pinned[1], 1, headers, names), "nvrtcCreateProgram");
        handle.Attach(program);
        using (handle)
        {
            byte** optionPointers = stackalloc byte*[options.Length];
            for (int i = 0; i < options.Length; i++) optionPointers[i] = pinned[4 + i];
            int status = Nvrtc.nvrtcCompileProgram(program, options.Length, optionPointers);
            Nvrtc.nvrtcGetProgramLogSize(program, out var logSize);
            var log = new byte[Math.Max(1, (int)logSize)];
            fixed (byte* logPointer = log) Nvrtc.nvrtcGetProgramLog(program, logPointer);
            Nvrtc.Check(status, $"nvrtcCompileProgram ({family}.cu)", Encoding.UTF8.GetString(log).TrimEnd('\0'));
            Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(program, out var size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* pointer = cubin) Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(program, pointer), "nvrtcGetCUBIN");
            return cubin;
        }
    }

    public void Dispose()
    {
        foreach (var module in _modules) module.Dispose();
        _modules.Clear();
    }

    /// <summary>NUL-terminated UTF-8 copies of strings, pinned for the duration of a native call.</summary>
    private sealed unsafe class Utf8Strings : IDisposable
    {
        private readonly System.Runtime.InteropServices.GCHandle[] _handles;

        public Utf8Strings(string[] values) =>
            _handles = [.. values.Select(v => System.Runtime.InteropServices.GCHandle.Alloc(Encoding.UTF8.GetBytes(v + "\0"), System.Runtime.InteropServices.GCHandleType.Pinned))];

        public byte* this[int index] => (byte*)_handles[index].AddrOfPinnedObject();

        public void Dispose()
        {
            foreach (var handle in _handles) handle.Free();
        }
    }
}
