// forwardad: the command-line tool of ForwardAD. `forwardad --help` lists the commands; the work is in Cli.Run,
// which tests call in-process. Started by mpiexec (`mpiexec -n N forwardad train …`), every process is one rank of a
// data-parallel run over MPI.
using ForwardAD.Distributed;

if (!MpiCommunicator.IsLaunchedByMpi)
    return ForwardAD.Cli.Cli.Run(args, Console.Out, Console.Error, terminal: !Console.IsOutputRedirected && !Console.IsErrorRedirected);

if (!MpiCommunicator.IsAvailable(out var reason))
{
    Console.Error.WriteLine($"error: started by an MPI launcher, but {reason}.");
    return ForwardAD.Cli.Cli.RuntimeError;
}
using var mpi = MpiCommunicator.Initialize();
if (Environment.GetEnvironmentVariable("FORWARDAD_COLLECTIVE_TIMEOUT") is { } seconds && double.TryParse(seconds, System.Globalization.CultureInfo.InvariantCulture, out var timeout) && timeout > 0)
    mpi.Timeout = TimeSpan.FromSeconds(timeout);
return ForwardAD.Cli.Cli.Run(args, Console.Out, Console.Error, terminal: mpi.Rank == 0 && !Console.IsOutputRedirected && !Console.IsErrorRedirected, mpi);
