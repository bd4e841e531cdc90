using System.Runtime.InteropServices;

namespace ForwardAD.Cli;

/// <summary>
/// Ctrl-C (SIGINT) during train, lm or a study that trains: the first one asks the run to stop at the next step boundary (the token given to
/// the trainer), so that it can write its checkpoint and metrics and say how to resume; a second one ends the process at
/// once, as Ctrl-C always did. Exit code 130 either way (128 + SIGINT, what shells report for an interrupted command).
/// Only a command that listens (<see cref="Listen"/>) stops cooperatively: in any other, Ctrl-C ends the process at once.
/// </summary>
internal sealed class Interruption : IDisposable
{
    public const int ExitCode = 130;

    private readonly CancellationTokenSource _requested = new();
    private readonly PosixSignalRegistration _registration;
    private volatile bool _listening;

    /// <summary>Handles SIGINT for the life of this object (the process's entry point holds it: the handler is the
    /// process's, not a test's).</summary>
    public Interruption()
    {
        _registration = PosixSignalRegistration.Create(PosixSignal.SIGINT, context =>
        {
            // Nobody listening, or the second one: the default handling ends the process.
            if (!_listening || _requested.IsCancellationRequested) return;
            context.Cancel = true;
            _requested.Cancel();
        });
    }

    /// <summary>Called by a command that stops cleanly when the token is cancelled: from now on the first Ctrl-C cancels it.</summary>
    public CancellationToken Listen()
    {
        _listening = true;
        return _requested.Token;
    }

    public void Dispose()
    {
        _registration.Dispose();
        _requested.Dispose();
    }

    /// <summary>The line an interrupted run prints on stderr: where it stopped, and the command that continues it, which
    /// is <paramref name="arguments"/> (the command and its options as given) with --resume PATH in place of any
    /// --checkpoint or --resume (a resumed run keeps writing the checkpoint it resumed from).</summary>
    public static string Message(long step, int? epoch, string? checkpoint, IReadOnlyList<string> arguments)
    {
        var where = $"interrupted at step {step}{(epoch is int e ? $" (epoch {e})" : "")}";
        if (checkpoint is null) return $"{where}: no checkpoint was written (give --checkpoint PATH to make runs resumable)";
        // The command is every word before the first option: `study bias-variance` takes its options after both words.
        int words = 1;
        while (words < arguments.Count && !arguments[words].StartsWith('-')) words++;
        var options = new List<string>();
        for (int i = words; i < arguments.Count; i++)
        {
            var argument = arguments[i];
            if (argument is "--checkpoint" or "--resume") { i++; continue; }
            if (argument.StartsWith("--checkpoint=", StringComparison.Ordinal) || argument.StartsWith("--resume=", StringComparison.Ordinal)) continue;
            options.Add(argument);
        }
        var command = string.Join(' ', new[] { "forwardad" }.Concat(arguments.Take(words)).Concat(["--resume", checkpoint]).Concat(options).Select(Quoted));
        return $"{where}: checkpoint {checkpoint}; resume with: {command}";
    }

    /// <summary>An argument as a POSIX shell reads it back: as it is when it has no character the shell would interpret,
    /// otherwise in single quotes.</summary>
    private static string Quoted(string argument) =>
        argument.Length > 0 && argument.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=,+@%".Contains(c))
            ? argument
            : "'" + argument.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
}
