using ForwardAD.Cli;
using Spectre.Console;

// forwardad: the command-line tool of ForwardAD. `forwardad --help` lists the commands.
const string Usage = """
    forwardad COMMAND [options]

    Commands
      train      train an MLP with a gradient guesser (the default command)
      cosine     every guesser's cosine to the true gradient and 1-step effectiveness along a
                 backprop training trajectory (Figure 1 of "How to Guess a Gradient")
      grape-toy  the toy experiment of the GrAPE rebuttal: feedback rules aligning B with a fixed target

    `forwardad COMMAND --help` shows every option of a command.
    """;
// Redirected output (files, CI logs) gets wide tables instead of Spectre's 80-column default.
if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 140);
try
{
    bool commandGiven = args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal);
    var command = commandGiven ? args[0] : "train";
    var rest = commandGiven ? args[1..] : args;
    if (command == "help" || args is ["--help"] or ["-h"])
    {
        Console.WriteLine(Usage);
        return 0;
    }
    if (rest.Any(a => a is "--help" or "-h"))
    {
        Console.WriteLine(command switch { "cosine" => CosineCommand.Help, "grape-toy" => GrapeToyCommand.Help, _ => TrainCommand.Help });
        return 0;
    }
    return command switch
    {
        "train" => TrainCommand.Run(rest),
        "cosine" => CosineCommand.Run(rest),
        "grape-toy" => GrapeToyCommand.Run(rest),
        _ => throw new UsageException($"Unknown command '{command}'. Commands: train, cosine, grape-toy. See --help."),
    };
}
catch (UsageException e)
{
    AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
    return 2;
}
catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException or ForwardAD.Training.TrainingDivergedException)
{
    AnsiConsole.MarkupLineInterpolated($"[red]error:[/] {e.Message}");
    return 1;
}
