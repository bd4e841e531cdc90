namespace ForwardAD.Tests;

/// <summary>A test class whose every test gets its own temporary folder, deleted after the test (xUnit makes one instance
/// per test and disposes it).</summary>
public abstract class TemporaryFolderTests(string prefix) : IDisposable
{
    /// <summary>The test's folder, under the system's temporary directory, named from the prefix.</summary>
    protected string Folder { get; } = Directory.CreateTempSubdirectory(prefix).FullName;

    /// <summary>A file or folder name inside <see cref="Folder"/>.</summary>
    protected string PathOf(string name) => Path.Combine(Folder, name);

    public void Dispose()
    {
        Directory.Delete(Folder, recursive: true);
        GC.SuppressFinalize(this);
    }
}
