using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace ForwardAD.Data;

/// <summary>
/// Writes a file atomically: into a temporary file beside it, flushed to disk, then renamed over the destination, so a
/// reader never sees half a file and an interrupted write leaves the previous file as it was.
/// <para>
/// The temporary is named after its destination and its writer, <c>.{file}.{pid}.{guid}.tmp</c>, and is held open
/// exclusively (<see cref="FileShare.None"/>: an advisory <c>flock</c> on Unix, a share lock on Windows) for as long as it is
/// written. A process killed during a write (SIGKILL, a power cut) leaves its temporary behind, but the operating system
/// releases its lock. Before each write, the temporaries of the same destination that no live writer holds are removed:
/// those that are not locked and whose process no longer runs (no process has the PID, or the process with that PID
/// started after the temporary was last written), or that are not locked and have not been written for a minute (the PID
/// may belong to another PID namespace, such as another container sharing the folder). A locked temporary is never
/// removed.
/// </para>
/// </summary>
public static class AtomicWriter
{
    /// <summary>How long an unlocked temporary of a process that seems alive is kept: a writer locks its temporary at once,
    /// so only a writer of an older version (which did not lock) or of another PID namespace leaves one unlocked.</summary>
    private static readonly TimeSpan UnlockedGrace = TimeSpan.FromMinutes(1);

    /// <summary>Writes <paramref name="path"/> through a locked temporary beside it, which <paramref name="write"/> fills;
    /// the temporary is flushed to disk and renamed over <paramref name="path"/>. When <paramref name="write"/> or anything
    /// else fails, the temporary is deleted and the destination is left untouched.</summary>
    /// <exception cref="IOException"><paramref name="path"/> is a directory, or the folder cannot be written.</exception>
    public static void Write(string path, Action<FileStream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new IOException($"'{path}' is a directory, not a file.");
        var directory = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(directory);
        RemoveStaleTemporaries(full);
        var temporary = TemporaryPath(full);
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            // Renamed just after it is closed (Windows renames no open file): a writer that looks in between sees this
            // process alive and the file just written, and leaves it.
            File.Move(temporary, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temporary); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Writes <paramref name="lines"/> (UTF-8 without a byte-order mark, each ended by a new line) to
    /// <paramref name="path"/> atomically, as <see cref="Write"/> does.</summary>
    public static void WriteAllLines(string path, IEnumerable<string> lines) => Write(path, stream =>
    {
        using var writer = new StreamWriter(stream, new UTF8Encoding(false), bufferSize: 1 << 16, leaveOpen: true);
        foreach (var line in lines) writer.WriteLine(line);
    });

    /// <summary>A new temporary name for <paramref name="fullPath"/>: <c>.{file}.{pid}.{guid}.tmp</c> in its folder.</summary>
    internal static string TemporaryPath(string fullPath) =>
        Path.Combine(Path.GetDirectoryName(fullPath)!, string.Create(CultureInfo.InvariantCulture, $".{Path.GetFileName(fullPath)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp"));

    /// <summary>Removes the temporaries of <paramref name="fullPath"/> that no live writer holds (see the class remarks).
    /// Best effort: a temporary that cannot be examined or deleted is left for the next write.</summary>
    internal static void RemoveStaleTemporaries(string fullPath)
    {
        var directory = Path.GetDirectoryName(fullPath)!;
        var prefix = $".{Path.GetFileName(fullPath)}.";
        string[] candidates;
        try { candidates = Directory.GetFiles(directory, "*.tmp"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        foreach (var candidate in candidates)
        {
            var name = Path.GetFileName(candidate);
            if (name.Length <= prefix.Length + ".tmp".Length || !name.StartsWith(prefix, StringComparison.Ordinal) || !name.EndsWith(".tmp", StringComparison.Ordinal))
                continue;
            var parts = name[prefix.Length..^".tmp".Length].Split('.');
            if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid <= 0
                || parts[1].Length != 32 || !parts[1].All(char.IsAsciiHexDigit))
                continue;
            try
            {
                if (IsLocked(candidate)) continue; // a live writer holds it
                var lastWrite = File.GetLastWriteTimeUtc(candidate);
                if (!WriterMayBeRunning(pid, lastWrite) || DateTime.UtcNow - lastWrite > UnlockedGrace) File.Delete(candidate);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Another process removed or holds it; a later write tries again.
            }
        }
    }

    /// <summary>Whether another open handle holds <paramref name="path"/> exclusively (a writer that is still alive).</summary>
    private static bool IsLocked(string path)
    {
        try
        {
            using var probe = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.None);
            return false;
        }
        catch (FileNotFoundException)
        {
            throw; // gone meanwhile: nothing to remove
        }
        catch (IOException)
        {
            return true;
        }
    }

    private static bool WriterMayBeRunning(int pid, DateTime lastWriteUtc)
    {
        if (pid == Environment.ProcessId) return true;
        Process process;
        try
        {
            process = Process.GetProcessById(pid);
        }
        catch (ArgumentException)
        {
            return false; // no process has this id
        }
        using (process)
        {
            try
            {
                // Process start times are derived from the boot time with up to a second of error (Linux): the slack
                // keeps a live writer that started just before writing from ever looking like a reused PID.
                return process.StartTime.ToUniversalTime() <= lastWriteUtc + TimeSpan.FromSeconds(10);
            }
            catch (InvalidOperationException)
            {
                return false; // it has exited meanwhile
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or NotSupportedException)
            {
                return true; // cannot tell (another user's process): keep the file
            }
        }
    }
}
