using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using ForwardAD.Distributed;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>What a command writes to: plain text writers, and a Spectre console over the output writer for tables; and the
/// ranks of a data-parallel run (<c>mpiexec -n N forwardad …</c>; one process otherwise). Only rank 0 writes files.</summary>
internal sealed record CliContext(TextWriter Output, TextWriter Error, IAnsiConsole Console, bool Interactive)
{
    public Communicator Communicator { get; init; } = Communicator.SingleProcess;

    /// <summary>Rank 0 writes metrics, plots and checkpoints; the other ranks hold the same state and write nothing.</summary>
    public bool WritesFiles => Communicator.Rank == 0;

    /// <summary>How `sweep` starts its runs; null: a new process of this tool per run (tests give one that runs in process).</summary>
    public IRunLauncher? SweepLauncher { get; init; }

    /// <summary>Called by the commands that stop cleanly on Ctrl-C (train, lm, mixer-table) before their first step: the token it
    /// returns is cancelled when the user asks the run to stop, and they then stop at the next step boundary, write their
    /// checkpoint and say how to resume (<see cref="Interruption"/>). Commands that never call it end at Ctrl-C at once.</summary>
    public Func<CancellationToken> ListenForInterrupt { get; init; } = () => CancellationToken.None;

    /// <summary>The command line as run (the command first), for the resume command an interrupted run prints.</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>A context that writes nothing: for building the commands only to read their options (a replay file's
    /// check, the sweep's parser, the tests of the help).</summary>
    public static CliContext Silent() =>
        new(TextWriter.Null, TextWriter.Null, AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) }), Interactive: false);
}

/// <summary>
/// The command line: System.CommandLine parses and checks every option (types, ranges, duplicates, unknown
/// names); the commands check what depends on several options or on the data. Exit codes: 0 success,
/// 1 a data or runtime error (a bad file, a diverged run), 2 a usage error, 130 a run stopped by Ctrl-C. Errors go to stderr as one
/// "error: …" line each, without colour and without a stack trace.
/// </summary>
internal static class Cli
{
    public const string Usage = """
        forwardad COMMAND [options]

        Commands
          compare      backprop, activation perturbation, Wᵀ, DFA and GrAPE side by side on the same MLP, optimizer
                       and seed: one table, one figure (what `forwardad` alone runs; about a minute)
          train        train an MLP or a CNN with a gradient guesser (default GrAPE; the default command when the
                       first argument is an option)
          cosine       every guesser's cosine to the true gradient and 1-step effectiveness along a backprop
                       training trajectory (Figure 1 of "How to Guess a Gradient")
          grape-toy    the toy experiment of the GrAPE rebuttal: feedback rules aligning B with a fixed target
          lm           train a transformer language model on a text (the fortunes by default), any guesser
          sample       generate text from a checkpoint of `lm`
          sweep        a grid of train or lm runs (methods × learning rates × seeds × any option), one process
                       each, resumable; learning rates chosen on a validation split; CSV, Markdown (mean ± sd), a plot
          plot         draw any metrics CSV these commands wrote (PNG and SVG; every command also draws its own)
          study        the paper's studies as CSV + charts: saturation, bias-variance, sharpening, downstream,
                       spectra (`forwardad study --help`)
          mixer-table  Table 1 of "How to Guess a Gradient" on Ren et al.'s LocalMixer: end-to-end and local
                       backprop, Ren et al.'s forward gradient, mixing and Wᵀ, with and without augmentation,
                       over seeds (CSV and Markdown; resumable)

        `forwardad COMMAND --help` shows every option of a command (`--save-config FILE` and `--config FILE` save and
        replay a run's configuration); `forwardad --version` the version.
        Exit codes: 0 success, 1 data or runtime error, 2 usage error (messages on stderr), 130 interrupted
        (Ctrl-C: train, lm, mixer-table and the studies that train stop after the current step, write their
        checkpoint and print how to resume).
        """;

    public const int Success = 0, RuntimeError = 1, UsageError = 2;

    /// <summary>The tool's version: the package version and, when the build knew it, the commit (written at build time into
    /// BuildInfo by the project file, so no attribute is read at run time).</summary>
    public static string Version => BuildInfo.Version;

    private static readonly string[] CommandNames = ["compare", "train", "sweep", "cosine", "grape-toy", "lm", "sample", "plot", "study", "mixer-table"];

    /// <summary>
    /// Runs the tool on <paramref name="args"/>. <paramref name="terminal"/>: both streams are an interactive
    /// terminal, so colour and a live progress bar are welcome (never when redirected or under NO_COLOR).
    /// </summary>
    public static int Run(string[] args, TextWriter output, TextWriter error, bool terminal = false, Communicator? communicator = null, IRunLauncher? sweepLauncher = null,
        Func<CancellationToken>? listenForInterrupt = null)
    {
        communicator ??= Communicator.SingleProcess;
        // Ranks other than 0 print nothing but their own errors: the run's output is rank 0's.
        if (communicator.Rank != 0) (output, terminal) = (TextWriter.Null, false);
        bool colour = terminal && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NO_COLOR"));
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = colour ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = colour ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
            Out = new AnsiConsoleOutput(output),
        });
        // Redirected output (files, CI logs): no 80-column default and no wrapping of long lines mid-phrase; tables still
        // size themselves to their content.
        if (!terminal) console.Profile.Width = Math.Max(console.Profile.Width, 1000);
        var context = new CliContext(output, error, console, terminal && console.Profile.Capabilities.Interactive) { Communicator = communicator, SweepLauncher = sweepLauncher };

        if (args is ["--version"] or ["version"])
        {
            output.WriteLine($"forwardad {Version}");
            return Success;
        }
        // --config FILE: the file's command and options, then the command line's (which take precedence).
        try { args = ReplayFile.Expand(args, error); }
        catch (Exception e) when (e is UsageException) { return Fail(communicator.Rank == 0 ? error : TextWriter.Null, UsageError, e.Message); }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException) { return Fail(communicator.Rank == 0 ? error : TextWriter.Null, RuntimeError, e.Message); }
        args = args switch
        {
            [] => ["compare"],
            ["help"] => ["--help"],
            ["help", var command, ..] => [command, "--help"],
            [var first, ..] when first.StartsWith("--", StringComparison.Ordinal) && first != "--help" => ["train", .. args],
            _ => args,
        };
        // Data parallel: every rank must run the same command line (a rank with other options would call other exchanges,
        // or the same ones at other times); checked before anything else, so that every rank then parses the same
        // arguments and fails alike on a usage error, which rank 0 alone says.
        var usageError = communicator.Rank == 0 ? error : TextWriter.Null;
        if (communicator.Size > 1)
        {
            try { RunAgreement.Require(communicator, new Dictionary<string, string> { ["the command line"] = string.Join(' ', args) }, "command line"); }
            catch (RunMismatchException e) { return Fail(usageError, UsageError, e.Message); }
            if (args[0] is not ("train" or "lm" or "compare") && !args.Contains("--help"))
                return Fail(usageError, UsageError, $"'{args[0]}' runs in one process; start it without mpiexec. Data-parallel commands: train, lm, compare.");
        }
        if (!args[0].StartsWith('-') && !CommandNames.Contains(args[0]))
            return Fail(usageError, UsageError, $"Unknown command '{args[0]}'. Commands: {string.Join(", ", CommandNames)}. See 'forwardad --help'.");

        context = context with { ListenForInterrupt = listenForInterrupt ?? (() => CancellationToken.None), Arguments = args };
        var root = Build(context);
        var parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        var commandName = parse.CommandResult.Command is RootCommand ? "" : parse.CommandResult.Command.Name + " ";
        try
        {
            // An option given twice: said as such (the parser's own words count its values instead).
            if (parse.Action is not HelpTextAction && parse.Errors.Count > 0
                && args.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=')[0]).GroupBy(a => a).FirstOrDefault(g => g.Count() > 1
                       && parse.CommandResult.Command.Options.FirstOrDefault(o => o.Name == g.Key) is { Arity.MaximumNumberOfValues: <= 1 }) is { } twice)
            {
                usageError.WriteLine($"error: {twice.Key} is given twice; give it once.");
                usageError.WriteLine($"See 'forwardad {commandName}--help'.");
                return UsageError;
            }
            if (parse.Action is not HelpTextAction && parse.Errors.Count > 0)
            {
                foreach (var e in parse.Errors) usageError.WriteLine($"error: {e.Message}");
                usageError.WriteLine($"See 'forwardad {commandName}--help'.");
                return UsageError;
            }
            // --save-config: the file is claimed for the run's life like any output (a second run given it is refused
            // before it writes), then written before the command starts.
            using var configLock = parse.Action is not HelpTextAction && context.WritesFiles
                && parse.CommandResult.Command.Options.FirstOrDefault(o => o.Name == "--save-config") is Option<string?> save
                && parse.GetValue(save) is { } configFile ? SaveConfiguration(parse, configFile) : null;
            return parse.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null });
        }
        catch (UsageException e)
        {
            // A usage error found while running (in the data, a file) may be this rank's alone: end the job.
            if (communicator.Size > 1) return FailAlone(communicator, error, UsageError, e.Message);
            error.WriteLine($"error: {e.Message}");
            error.WriteLine($"See 'forwardad {commandName}--help'.");
            return UsageError;
        }
        catch (Exception e) when (e is CommunicationException or TrainingDivergedException && communicator.Size > 1)
        {
            // Thrown on every rank together (ranks that differ, a checkpoint rank 0 could not write, a rank that stopped
            // answering, a loss that every rank sees diverge: it is the batch's, summed over the ranks): rank 0 says it once.
            return Fail(communicator.Rank == 0 ? error : TextWriter.Null, RuntimeError, e.Message);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException
                                      or NotSupportedException or TrainingDivergedException or CommunicationException)
        {
            return communicator.Size == 1 ? Fail(error, RuntimeError, e.Message) : FailAlone(communicator, error, RuntimeError, e.Message);
        }
        catch (OutOfMemoryException)
        {
            const string Message = "out of memory: the model or the data does not fit. Use smaller widths, fewer layers or a smaller batch.";
            return communicator.Size == 1 ? Fail(error, RuntimeError, Message) : FailAlone(communicator, error, RuntimeError, Message);
        }
    }

    /// <summary>Claims <paramref name="path"/> and writes the configuration of the run <paramref name="parse"/> describes
    /// there (<see cref="ReplayFile"/>); the lock is held until the run ends.</summary>
    private static OutputLock SaveConfiguration(ParseResult parse, string path)
    {
        if (Directory.Exists(path)) throw new IOException($"--save-config {path}: is a directory; give a file path.");
        var claim = OutputLock.Acquire($"{parse.CommandResult.Command.Name} (configuration {path})", ("--save-config", path));
        try { AtomicFile.WriteAllLines(path, [ReplayFile.Text(parse).TrimEnd('\n')]); }
        catch
        {
            claim.Dispose();
            throw;
        }
        return claim;
    }

    /// <summary>An error that may be this rank's alone (its own file, its own device or memory): says which rank, then ends
    /// the whole job, since the other ranks may be waiting for this one in an exchange.</summary>
    private static int FailAlone(Communicator communicator, TextWriter error, int code, string message)
    {
        var text = $"rank {communicator.Rank} of {communicator.Size}: {message}";
        if (communicator is MpiCommunicator mpi) mpi.Abort($"error: {text}", code);
        return Fail(error, code, text);
    }

    private static int Fail(TextWriter error, int code, string message)
    {
        error.WriteLine($"error: {message}");
        return code;
    }

    private static RootCommand Build(CliContext context)
    {
        var root = new RootCommand("forwardad: training and studying neural networks with forward-mode gradients.");
        root.Directives.Clear(); // no [diagram]/[suggest] tokens: an argument in brackets is just an argument
        root.SetAction(_ => { context.Output.WriteLine(Usage); return Success; });
        foreach (var command in new DocumentedCommand[] { CompareCommand.Create(context), TrainCommand.Create(context), SweepCommand.Create(context),
            CosineCommand.Create(context), GrapeToyCommand.Create(context), LanguageModelCommands.CreateLm(context), LanguageModelCommands.CreateSample(context),
            PlotCommand.Create(context), StudyCommands.Create(context), MixerTableCommand.Create(context) })
        {
            root.Add(command);
            // Every command that runs something can save its configuration and replay one; sweep's --config is its grid
            // file, which already replays a whole sweep, and plot redraws a file (its argument, which a replay would lack).
            foreach (var runs in (DocumentedCommand[])[command, .. command.Subcommands.OfType<DocumentedCommand>()])
                if (runs.Name is not ("sweep" or "plot") && runs.Subcommands.Count == 0)
                    runs.Section("Configuration", [ReplayFile.ConfigOption(checkpoints: runs.Name is "train" or "lm"), ReplayFile.SaveConfigOption()]);
        }
        var help = new HelpTextAction(context.Output);
        foreach (var option in root.Options.OfType<HelpOption>()) option.Action = help;
        return root;
    }

    /// <summary>Every command of the tool, for the tests that check each one's help (the context is only captured).</summary>
    internal static IEnumerable<DocumentedCommand> Commands(CliContext context)
    {
        foreach (var command in Build(context).Subcommands.OfType<DocumentedCommand>())
        {
            yield return command;
            foreach (var sub in command.Subcommands.OfType<DocumentedCommand>()) yield return sub;
        }
    }

    /// <summary>Prints the help of the command being parsed, generated from its options (<see cref="DocumentedCommand.Help"/>).</summary>
    private sealed class HelpTextAction(TextWriter output) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            output.WriteLine(parseResult.CommandResult.Command is DocumentedCommand command ? command.Help() : Usage);
            return Success;
        }
    }
}
