using System.CommandLine;
using System.Globalization;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Guessing;
using ForwardAD.Training;
using Spectre.Console;

namespace ForwardAD.Cli;

internal static class CosineCommand
{
    private const string DefaultGuessers = "directional,ap,wt,downstream,mixing,self-sharpening,backprop";

    private sealed class Options
    {
        public readonly DataOptions Data = new();
        public readonly ModelOptions Model = new();
        public readonly GuesserOptions Guesser = new();
        public readonly RuleOptions Rule = new();
        public readonly Option<string> Guessers = Opt.String("guessers", DefaultGuessers).Describe("LIST",
            "comma-separated guesser names; --mode, --guesses, --k, --power and --cosine apply to them as in train");
        public readonly Option<int> Epochs = Opt.Int("epochs", 5, min: 1, max: 1_000_000).Describe("N", "epochs of the backprop trajectory");
        public readonly Option<int> BatchSize = Opt.Int("batch-size", 32, min: 1).Describe("B", "examples per step");
        public readonly Option<int> Every = Opt.Int("every", 10, min: 1).Describe("N", "measure every N-th step");
        public readonly Option<int> Seed = Opt.Int("seed", 1, min: 0).Describe("S", "seed of initialisation, split, shuffling and every guess");
        public readonly Option<string?> Csv = Opt.OptionalString("csv").Describe("PATH",
            "every measurement (default runs/cosine-seed<S>.csv); beside it its plot (.png and .svg: cosine and 1-step effectiveness per guesser over the steps)");
        public readonly Option<bool> NoPlot = Opt.Flag("no-plot").Describe("", "write no plot");
    }

    public static DocumentedCommand Create(CliContext context)
    {
        var o = new Options();
        var command = new DocumentedCommand("cosine", "The paper's Figure 1 measurement.", "forwardad cosine [options]")
        {
            Summary =
                "Trains with backprop (the trajectory) and, every N-th step, gives each guesser the same batch and reports its cosine " +
                "to the true gradient and its 1-step effectiveness: the loss reduction of one step along the guess relative to one " +
                "backprop step, each at its best step size from {1e-5, 1e-4, 1e-3, 1e-2, 1e-1}. Prints mean ± std per guesser and " +
                "writes every measurement to a CSV. Shows a progress bar on a terminal, otherwise a line per epoch with the steps " +
                "done of all and the time left.",
        };
        o.Data.AddTo(command);
        o.Model.AddTo(command);
        o.Guesser.AddTo(command, o.Guessers);
        o.Rule.AddTo(command);
        command.Section("Trajectory", [o.Epochs, o.BatchSize, o.Every, o.Seed, o.Csv, o.NoPlot]);
        command.SetAction(p => Run(p, o, context));
        return command;
    }

    private static int Run(ParseResult p, Options o, CliContext context)
    {
        var console = context.Console;
        ulong seed = (ulong)p.GetValue(o.Seed);
        int epochs = p.GetValue(o.Epochs), batch = p.GetValue(o.BatchSize), every = p.GetValue(o.Every);
        var names = p.GetValue(o.Guessers)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(GuesserOptions.Canonical).ToList();
        if (names.Count == 0) throw new UsageException($"--guessers needs at least one guesser name: {Opt.List(GuesserOptions.Names)}.");
        foreach (var name in names)
            if (!GuesserOptions.Names.Contains(name))
                throw new UsageException($"Unknown guesser '{name}' in --guessers. Use {Opt.List(GuesserOptions.Names)}.");
        o.Guesser.RejectUnused(p, names);
        var configuration = new RunConfiguration();
        var (train, _) = o.Data.Load(p, seed, configuration);
        if (batch > train.Count)
            throw new UsageException($"--batch-size {batch} is larger than the training set ({train.Count} examples): no full batch to train on.");
        var model = o.Model.Build(p, train, configuration);
        var guessers = names.Select(n => o.Guesser.Build(p, n, seed, configuration: null)).ToList();
        var (rule, ruleDescription) = o.Rule.Build(p, train.Count / batch, epochs, configuration: null);
        var csv = p.GetValue(o.Csv) ?? Path.Combine("runs", $"cosine-seed{seed}.csv");
        if (Directory.Exists(csv)) throw new IOException($"--csv {csv}: is a directory; give a file path.");

        var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed);
        var study = new CosineStudy(parameters, guessers, rule, train, batch, seed);
        console.MarkupLineInterpolated($"[bold]ForwardAD[/] cosine: {DataOptions.Describe(configuration)}, {configuration["model"]}, trajectory backprop {ruleDescription}, batch {batch}, {epochs} epochs, every {every} steps, seed {seed}");
        List<CosineSample> samples = [];
        if (context.Interactive)
            console.Progress().Start(progress =>
            {
                var task = progress.AddTask("trajectory");
                samples = study.Run(epochs, every, (done, total) => { task.MaxValue = total; task.Value = done; });
            });
        else
        {
            // Not a terminal: a line per epoch of the trajectory, counting the steps done of all with the time left.
            long stepsPerEpoch = train.Count / batch;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            samples = study.Run(epochs, every, (done, total) =>
            {
                if (done % stepsPerEpoch != 0 && done != total) return;
                string left = SweepCommand.TimeLeft(watch.Elapsed, (int)done, (int)total);
                console.MarkupLineInterpolated($"  epoch {(done + stepsPerEpoch - 1) / stepsPerEpoch}/{epochs} measured [[{done}/{total} steps{left}]]");
            });
        }

        WriteSummary(console, CosineStudy.Summarize(samples), csv);

        AtomicFile.WriteAllLines(csv, samples.Select(s => string.Join(',', s.Epoch + 1, s.Step, $"\"{s.Guesser}\"",
            s.Cosine.ToString("G6", CultureInfo.InvariantCulture), s.Effectiveness.ToString("G6", CultureInfo.InvariantCulture)))
            .Prepend("epoch,step,guesser,cosine,effectiveness"));
        console.MarkupLineInterpolated($"measurements in {csv}");
        if (!p.GetValue(o.NoPlot))
        {
            var (png, svg, _) = MetricsPlots.Draw(csv);
            console.MarkupLineInterpolated($"plot in {png} and {svg}");
        }
        return Cli.Success;
    }

    /// <summary>The summary table, sized to the console (<see cref="ConsoleTable"/>): on a narrow one the sample counts go
    /// first, then the effectiveness, which <paramref name="csv"/> keeps.</summary>
    internal static void WriteSummary(IAnsiConsole console, IReadOnlyList<CosineSummary> summaries, string csv)
    {
        List<TableColumnSpec> columns = [new("guesser"), new("cosine to ∇L (mean ± std)"), new("1-step effectiveness (mean ± std)", DropOrder: 2), new("samples", DropOrder: 1)];
        var rows = summaries.Select(s => new[] { s.Guesser, string.Create(CultureInfo.InvariantCulture, $"{s.CosineMean:F4} ± {s.CosineStd:F4}"),
            string.Create(CultureInfo.InvariantCulture, $"{s.EffectivenessMean:F4} ± {s.EffectivenessStd:F4}"), s.Samples.ToString(CultureInfo.InvariantCulture) }).ToList();
        var (table, dropped) = ConsoleTable.Build(columns, rows, console.Profile.Width);
        console.Write(table);
        if (ConsoleTable.DroppedNote(dropped, csv) is { } note) console.WriteLine(note);
    }
}
