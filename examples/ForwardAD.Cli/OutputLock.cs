using System.Globalization;

namespace ForwardAD.Cli;

/// <summary>
/// Claims a run's output files (metrics, checkpoint, a results folder) for the life of the run, so that a second run
/// given the same outputs is refused instead of silently overwriting the first one's files. Each output gets a lock file
/// beside it (<c>PATH.lock</c>) opened exclusively: .NET takes an advisory <c>flock</c> for <see cref="FileShare.None"/>
/// on Unix (and a share lock on Windows), which the operating system releases when the process ends however it ends, so
/// a run killed by SIGKILL leaves no lock behind, only a stale file that the next run reopens. Beside it,
/// <c>PATH.lock.owner</c> names the holder (process id, start time, command) for the message a second run prints: the
/// lock file itself cannot be read while it is held (.NET locks every file it opens on Unix).
/// </summary>
internal sealed class OutputLock : IDisposable
{
    private readonly List<(string Path, FileStream Stream)> _held = [];
    private const string OwnerSuffix = ".owner";

    private OutputLock() { }

    /// <summary>Locks every given output (nulls skipped, each path once); throws <see cref="IOException"/> naming the
    /// output and the run that holds it when another live run does, having released what it took.</summary>
    public static OutputLock Acquire(string command, params (string Option, string? Path)[] outputs)
    {
        var lockSet = new OutputLock();
        try
        {
            foreach (var (option, path) in outputs.Where(o => o.Path is not null).DistinctBy(o => Path.GetFullPath(o.Path!)))
                lockSet.Take(option, path!, command);
            return lockSet;
        }
        catch
        {
            lockSet.Dispose();
            throw;
        }
    }

    private void Take(string option, string path, string command)
    {
        var full = Path.GetFullPath(path);
        var lockPath = full + ".lock";
        FileStream stream;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(lockPath)!);
            stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Held by a live run: the lock file exists and cannot be opened. No lock file after the attempt: nothing can be
            // created there (a read-only or virtual folder such as /proc), so the run could not write its outputs either.
            if (!File.Exists(lockPath))
                throw new IOException($"{option} {path}: cannot create files in {Path.GetDirectoryName(full)} ({e.Message}). " +
                    $"Give {option} a path in a folder this user can write.");
            throw new IOException($"{option} {path} is in use by another run ({Owner(lockPath)}): two runs writing the same files would " +
                $"leave only one of them. Wait for that run to end, or give this one other outputs ({option} elsewhere).");
        }
        _held.Add((lockPath, stream));
        try
        {
            File.WriteAllText(lockPath + OwnerSuffix, string.Create(CultureInfo.InvariantCulture,
                $"process {Environment.ProcessId}, started {DateTime.Now:yyyy-MM-dd HH:mm:ss}: forwardad {command}"));
        }
        catch (IOException) { } // the lock holds without its description
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>What the holder wrote beside its lock.</summary>
    private static string Owner(string lockPath)
    {
        try
        {
            var owner = File.ReadAllText(lockPath + OwnerSuffix).Trim();
            return owner.Length > 0 ? owner : "its process unknown";
        }
        catch (IOException) { return "its process unknown"; }
        catch (UnauthorizedAccessException) { return "its process unknown"; }
    }

    /// <summary>Releases the outputs and removes the lock files.</summary>
    public void Dispose()
    {
        foreach (var (path, stream) in _held)
        {
            // Delete while still holding the lock, so that no other run can have opened the file in between.
            try { File.Delete(path + OwnerSuffix); File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            stream.Dispose();
        }
        _held.Clear();
    }
}
