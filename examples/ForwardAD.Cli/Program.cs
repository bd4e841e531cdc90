// forwardad: the command-line tool of ForwardAD. `forwardad --help` lists the commands; the work is in Cli.Run,
// which tests call in-process.
return ForwardAD.Cli.Cli.Run(args, Console.Out, Console.Error, terminal: !Console.IsOutputRedirected && !Console.IsErrorRedirected);
