// forwardad: the command-line tool of ForwardAD. `forwardad --help` lists the commands; the work is in Cli.Run,
// which tests call in-process. Started by mpiexec (`mpiexec -n N forwardad train …`), every process is one rank of a
// data-parallel run over MPI.
using ForwardAD.Distributed;

// Every command prints UTF-8 (its tables use ·, – and ×; sample prints generated text), whatever the locale says.
if (Console.OutputEncoding.CodePage != System.Text.Encoding.UTF8.CodePage) Console.OutputEncoding = new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false);

if (!MpiCommunicator.IsLaunchedByMpi)
{
    // Ctrl-C stops train and lm at a step boundary with a checkpoint and a resume command; a second Ctrl-C ends at once.
    // Data-parallel ranks keep the default (they would see the signal at different steps and wait for each other).
    using var interruption = new ForwardAD.Cli.Interruption();
    return ForwardAD.Cli.Cli.Run(args, Console.Out, Console.Error, terminal: !Console.IsOutputRedirected && !Console.IsErrorRedirected, listenForInterrupt: interruption.Listen);
}

if (!MpiCommunicator.IsAvailable(out var reason))
{
    Console.Error.WriteLine($"error: started by an MPI launcher, but {reason}.");
    return ForwardAD.Cli.Cli.RuntimeError;
}
using var mpi = MpiCommunicator.Initialize();
// How long a rank waits for the others in one exchange before it ends the job (default 60 s).
if (Environment.GetEnvironmentVariable("FORWARDAD_COLLECTIVE_TIMEOUT") is { } seconds)
{
    if (!double.TryParse(seconds, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var timeout) || !(timeout > 0) || timeout > 1e7)
    {
        if (mpi.Rank == 0) Console.Error.WriteLine($"error: FORWARDAD_COLLECTIVE_TIMEOUT is '{seconds}'; expected seconds, a number > 0 (e.g. 120).");
        return ForwardAD.Cli.Cli.UsageError;
    }
    mpi.Timeout = TimeSpan.FromSeconds(timeout);
}
return ForwardAD.Cli.Cli.Run(args, Console.Out, Console.Error, terminal: mpi.Rank == 0 && !Console.IsOutputRedirected && !Console.IsErrorRedirected, mpi);
