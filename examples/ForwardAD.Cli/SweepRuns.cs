using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.ExceptionServices;
using System.Text;
using System.Text.Json;

namespace ForwardAD.Cli;

/// <summary>How a run ended: its exit code and the last lines it wrote to stderr.</summary>
internal sealed record RunExit(int ExitCode, IReadOnlyList<string> ErrorTail);

/// <summary>
/// Starts one run of a sweep and waits for its end. The sweep's own is <see cref="ProcessLauncher"/> (one operating-system
/// process per run: a crash, a leak or an out-of-memory ends that run alone); tests substitute one that runs in process.
/// </summary>
internal interface IRunLauncher
{
    /// <summary>Runs the command line <paramref name="arguments"/> ("train …", "lm …") to its end, its stdout and stderr written to
    /// <paramref name="logPath"/>, using at most <paramref name="threads"/> threads for its computations.</summary>
    RunExit Run(IReadOnlyList<string> arguments, string logPath, int threads);
}

/// <summary>Runs each command line as a new process of this same tool.</summary>
internal sealed class ProcessLauncher(string fileName, IReadOnlyList<string> prefix) : IRunLauncher
{
    /// <summary>Lines of stderr kept for the result record (the whole of it is in the log).</summary>
    public const int TailLines = 20;

    public string FileName => fileName;

    /// <summary>
    /// The tool as this process was started: its own executable (the apphost, or the installed tool's shim), or, when
    /// started as <c>dotnet forwardad.dll</c>, dotnet with the same assembly (which .NET reports as the first command-line
    /// argument).
    /// </summary>
    public static ProcessLauncher ForThisProcess()
    {
        var path = Environment.ProcessPath ?? throw new NotSupportedException("sweep cannot tell which executable runs this tool (no process path), so it cannot start its runs.");
        return Path.GetFileNameWithoutExtension(path) == "dotnet"
            ? new ProcessLauncher(path, [Environment.GetCommandLineArgs()[0]])
            : new ProcessLauncher(path, []);
    }

    public RunExit Run(IReadOnlyList<string> arguments, string logPath, int threads)
    {
        var start = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        foreach (var argument in prefix.Concat(arguments)) start.ArgumentList.Add(argument);
        // The backend's threads follow OpenBLAS's count (CpuBackend.Threads): N runs of T threads fill N·T cores, no more.
        start.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        start.Environment["NO_COLOR"] = "1";
        var tail = new Queue<string>();
        using var log = new StreamWriter(logPath, append: false, new UTF8Encoding(false));
        void Write(string? line, bool error)
        {
            if (line is null) return;
            lock (log)
            {
                log.WriteLine(line);
                if (!error) return;
                tail.Enqueue(line);
                if (tail.Count > TailLines) tail.Dequeue();
            }
        }
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => Write(e.Data, error: false);
        process.ErrorDataReceived += (_, e) => Write(e.Data, error: true);
        try { process.Start(); }
        catch (System.ComponentModel.Win32Exception e)
        {
            // Recorded as the run's failure (with the executable's name), not thrown: the sweep's outputs list it.
            var message = $"could not start {fileName}: {e.Message}";
            Write(message, error: true);
            return new RunExit(-1, [message]);
        }
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        // Without a timeout, WaitForExit also waits until both streams are read to their end.
        process.WaitForExit();
        lock (log) return new RunExit(process.ExitCode, [.. tail]);
    }
}

/// <summary>
/// The record of a finished run, <c>result.json</c> in its folder, written at its end through a temporary file renamed
/// into place: a run interrupted before it has none, and is run again. Status ok: it exited with 0 and its metrics CSV
/// holds at least one evaluation (an epoch of train, an evaluation step of lm); anything else is failed, with its exit
/// code and its last lines of stderr.
/// </summary>
internal sealed record RunRecord(string Status, int ExitCode, ImmutableArray<string> Arguments, ImmutableArray<(string Axis, string Value)> Values,
    DateTimeOffset Started, double WallSeconds, ImmutableArray<string> ErrorTail)
{
    public const string Ok = "ok", Failed = "failed", FileName = "result.json";
    private const string Format = "forwardad-sweep-run/1";

    public bool Succeeded => Status == Ok;

    /// <summary>The last line of stderr that says something (the "error: …" line, normally), or "".</summary>
    public string Reason => ErrorTail.LastOrDefault(l => l.StartsWith("error:", StringComparison.Ordinal)) ?? ErrorTail.LastOrDefault(l => l.Trim().Length > 0) ?? "";

    public void Write(string path)
    {
        using var buffer = new MemoryStream();
        // Relaxed escaping: a readable file ('+' in a time, non-ASCII in an error line stay as they are); never HTML.
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("format", Format);
            json.WriteString("status", Status);
            json.WriteNumber("exit_code", ExitCode);
            json.WriteStartObject("grid");
            foreach (var (axis, value) in Values) json.WriteString(axis, value);
            json.WriteEndObject();
            json.WriteStartArray("arguments");
            foreach (var argument in Arguments) json.WriteStringValue(argument);
            json.WriteEndArray();
            json.WriteString("started", Started.ToString("O", CultureInfo.InvariantCulture));
            json.WriteNumber("wall_seconds", Math.Round(WallSeconds, 3));
            json.WriteStartArray("stderr_tail");
            foreach (var line in ErrorTail) json.WriteStringValue(line);
            json.WriteEndArray();
            json.WriteEndObject();
        }
        AtomicFile.WriteAllLines(path, [Encoding.UTF8.GetString(buffer.ToArray())]);
    }

    /// <summary>The record at <paramref name="path"/>, or null when there is none or it cannot be read (<paramref name="problem"/>
    /// says why: the run is then run again).</summary>
    public static RunRecord? TryRead(string path, out string? problem)
    {
        problem = null;
        if (!File.Exists(path)) return null;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = document.RootElement;
            if (root.GetProperty("format").GetString() != Format) throw new InvalidDataException($"format is not {Format}");
            var started = DateTimeOffset.Parse(root.GetProperty("started").GetString()!, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind);
            return new RunRecord(
                root.GetProperty("status").GetString() switch { Ok => Ok, Failed => Failed, var s => throw new InvalidDataException($"status '{s}' is neither {Ok} nor {Failed}") },
                root.GetProperty("exit_code").GetInt32(),
                [.. root.GetProperty("arguments").EnumerateArray().Select(a => a.GetString()!)],
                [.. root.GetProperty("grid").EnumerateObject().Select(p => (p.Name, p.Value.GetString()!))],
                started,
                root.GetProperty("wall_seconds").GetDouble(),
                [.. root.GetProperty("stderr_tail").EnumerateArray().Select(a => a.GetString()!)]);
        }
        catch (Exception e) when (e is JsonException or InvalidDataException or KeyNotFoundException or InvalidOperationException or FormatException or IOException)
        {
            problem = $"{path}: unreadable ({e.Message})";
            return null;
        }
    }
}

/// <summary>Where a run's files live: <c>OUT/runs/FOLDER/</c> with metrics.csv, run.log and result.json.</summary>
internal sealed record RunPaths(string Folder)
{
    public static RunPaths Of(string output, SweepRun run) => new(Path.GetFullPath(Path.Combine(output, "runs", run.Folder)));

    public string Metrics => Path.Combine(Folder, "metrics.csv");
    public string Log => Path.Combine(Folder, "run.log");
    public string Record => Path.Combine(Folder, RunRecord.FileName);
}

/// <summary>Runs a sweep's pending runs, <c>parallel</c> at a time, in grid order, and records each as it ends.</summary>
internal static class SweepExecution
{
    /// <summary>
    /// The record of a run that finished with status ok on an earlier sweep for the same command line (and whose
    /// metrics are still there); null: it must run (never run, interrupted, failed, or its files are gone).
    /// </summary>
    public static RunRecord? Finished(SweptCommand command, string output, SweepRun run, out string? problem)
    {
        var paths = RunPaths.Of(output, run);
        var record = RunRecord.TryRead(paths.Record, out problem);
        if (record is null || !record.Succeeded) return null;
        if (!record.Arguments.SequenceEqual(run.Arguments))
        {
            problem = $"{paths.Record}: recorded for another command line; run again";
            return null;
        }
        if (MetricsProblem(command, paths.Metrics) is { } missing)
        {
            problem = $"{paths.Record}: {missing}; run again";
            return null;
        }
        return record;
    }

    /// <summary>Runs <paramref name="runs"/> on <paramref name="parallel"/> threads, each launching one run at a time, in
    /// the order given; <paramref name="finished"/> is called (from those threads) as each run's record is written.</summary>
    public static void Execute(SweptCommand command, IReadOnlyList<SweepRun> runs, string output, IRunLauncher launcher, int parallel, int threads, Action<SweepRun, RunRecord> finished)
    {
        var queue = new ConcurrentQueue<SweepRun>(runs);
        Exception? failure = null;
        var workers = Enumerable.Range(0, Math.Max(1, Math.Min(parallel, runs.Count))).Select(_ => new Thread(() =>
        {
            try
            {
                while (Volatile.Read(ref failure) is null && queue.TryDequeue(out var run))
                    finished(run, RunOne(command, run, output, launcher, threads));
            }
            catch (Exception e)
            {
                // The sweep's own failure (its disk, its folder), not a run's: stop taking runs and report it.
                Interlocked.CompareExchange(ref failure, e, null);
            }
        }) { IsBackground = true, Name = "sweep run" }).ToList();
        foreach (var worker in workers) worker.Start();
        foreach (var worker in workers) worker.Join();
        if (failure is not null) ExceptionDispatchInfo.Throw(failure);
    }

    private static RunRecord RunOne(SweptCommand command, SweepRun run, string output, IRunLauncher launcher, int threads)
    {
        var paths = RunPaths.Of(output, run);
        Directory.CreateDirectory(paths.Folder);
        // A stale record (a failed attempt) must not outlive this attempt if it is interrupted, nor its metrics.
        File.Delete(paths.Record);
        File.Delete(paths.Metrics);
        var started = DateTimeOffset.Now;
        var watch = Stopwatch.StartNew();
        List<string> arguments = [.. run.Arguments, "--metrics", paths.Metrics];
        if (!SweepGrid.Mentions(arguments, "no-plot")) arguments.Add("--no-plot"); // the sweep draws its own figure
        var exit = launcher.Run(arguments, paths.Log, threads);
        double seconds = watch.Elapsed.TotalSeconds;
        var tail = exit.ErrorTail.ToImmutableArray();
        string status = RunRecord.Ok;
        if (exit.ExitCode != 0) status = RunRecord.Failed;
        else if (MetricsProblem(command, paths.Metrics) is { } problem)
        {
            status = RunRecord.Failed;
            tail = tail.Add($"error: the run exited with 0 but {problem}");
        }
        var record = new RunRecord(status, exit.ExitCode, run.Arguments, run.Values, started, seconds, tail);
        record.Write(paths.Record);
        return record;
    }

    /// <summary>Why <paramref name="metrics"/> is not a usable metrics CSV of <paramref name="command"/> (null when it is).</summary>
    private static string? MetricsProblem(SweptCommand command, string metrics)
    {
        try
        {
            return command.ReadCurves(metrics).Points == 0 ? $"{metrics} holds no {command.Progress}" : null;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return e.Message;
        }
    }
}
