using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using ForwardAD.Cuda.Interop;

namespace ForwardAD.Cuda.Tests;

/// <summary>The native-library resolver, checked without CUDA: when it is installed, and what it loads beside NVRTC.</summary>
public class NativeLibraryTests
{
    /// <summary>A fresh copy of the assembly in its own load context: after its module initializer has run (the runtime
    /// runs it before any code of the module), a resolver is already set, so setting another one throws. Before, the
    /// resolver was set on the first <c>TryLoad</c>, and a call that reached a <c>[LibraryImport]</c> first went without it.</summary>
    [Fact]
    public void The_resolver_is_installed_when_the_module_loads()
    {
        var context = new AssemblyLoadContext("fresh ForwardAD.Cuda", isCollectible: true);
        try
        {
            var assembly = context.LoadFromAssemblyPath(typeof(CudaBackend).Assembly.Location);
            RuntimeHelpers.RunModuleConstructor(assembly.ManifestModule.ModuleHandle);
            var error = Assert.Throws<InvalidOperationException>(() => NativeLibrary.SetDllImportResolver(assembly, (_, _, _) => IntPtr.Zero));
            Assert.Contains("resolver", error.Message, StringComparison.OrdinalIgnoreCase);
        }
        finally { context.Unload(); }
    }

    /// <summary>NVRTC dlopens its builtins by soname when it compiles; CUDA 13's pip wheels lost the $ORIGIN run path that found
    /// them beside libnvrtc, so the resolver loads them from the same folder first. Two copies of a small .NET runtime library
    /// stand in for libnvrtc and its builtins; the process's memory map shows which files were loaded.</summary>
    [Fact]
    public void Nvrtc_loaded_from_a_folder_brings_its_builtins_from_the_same_folder()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "reads /proc/self/maps");
        var folder = Directory.CreateTempSubdirectory("forwardad-nvrtc-");
        try
        {
            var standIn = Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "libSystem.IO.Compression.Native.so");
            File.Copy(standIn, Path.Combine(folder.FullName, "libnvrtc.so.13"));
            File.Copy(standIn, Path.Combine(folder.FullName, "libnvrtc-builtins.so.13.0"));
            Assert.True(NativeLibraries.TryLoadFromFolders(NativeLibraries.Nvrtc, [folder.FullName], out var handle));
            Assert.NotEqual(IntPtr.Zero, handle);
            var maps = File.ReadAllText("/proc/self/maps");
            Assert.Contains(Path.Combine(folder.FullName, "libnvrtc.so.13"), maps);
            Assert.Contains(Path.Combine(folder.FullName, "libnvrtc-builtins.so.13.0"), maps);
        }
        finally { folder.Delete(recursive: true); }
    }

    [Theory]
    [InlineData("libnvrtc.so.13", "libnvrtc-builtins.so.12.4 libnvrtc-builtins.so.13.0.48 libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.13.0")]
    [InlineData("libnvrtc.so.12", "libnvrtc-builtins.so.12.4 libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.12.4")]
    [InlineData("libnvrtc.so", "libnvrtc-builtins.so.12.4 libnvrtc-builtins.so", "libnvrtc-builtins.so")]
    [InlineData("libnvrtc.so.13", "libnvrtc-builtins.so.12.4", null)]
    [InlineData("libnvrtc.so.13", "", null)]
    [InlineData("nvrtc64_130_0.dll", "nvrtc-builtins64_120.dll nvrtc-builtins64_130.dll", "nvrtc-builtins64_130.dll")]
    public void The_builtins_matching_the_nvrtc_version_are_chosen(string nvrtc, string present, string? expected)
    {
        var folder = Directory.CreateTempSubdirectory("forwardad-builtins-");
        try
        {
            foreach (var file in present.Split(' ', StringSplitOptions.RemoveEmptyEntries)) File.WriteAllBytes(Path.Combine(folder.FullName, file), []);
            var found = NativeLibraries.BuiltinsBeside(folder.FullName, nvrtc);
            Assert.Equal(expected is null ? null : Path.Combine(folder.FullName, expected), found);
        }
        finally { folder.Delete(recursive: true); }
    }
}
