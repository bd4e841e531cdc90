using ForwardAD.Cli;
using Spectre.Console;

// forwardad: the command-line tool of ForwardAD. `forwardad --help` lists the commands.
try
{
    var command = args.Length == 0 || args[0].StartsWith("--", StringComparison.Ordinal) ? "train" : args[0];
    var rest = args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal) ? args[1..] : args;
    if (command is "help" || (command == "train" && rest.Length > 0 && rest[0] is "--help" or "-h") || args is ["--help"] or ["-h"])
    {
        Console.WriteLine(TrainCommand.Help);
        return 0;
    }
    return command switch
    {
        "train" => TrainCommand.Run(rest),
        _ => throw new UsageException($"Unknown command '{command}'. Commands: train. See --help."),
    };
}
catch (UsageException e)
{
    AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
    return 2;
}
catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException)
{
    AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
    return 1;
}
