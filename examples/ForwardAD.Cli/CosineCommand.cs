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

    public static readonly string Help = $"""
        forwardad cosine [options]     The paper's Figure 1 measurement.

        Trains with backprop (the trajectory) and, every N-th step, gives each guesser the same batch and
        reports its cosine to the true gradient and its 1-step effectiveness: the loss reduction of one step
        along the guess relative to one backprop step, each at its best step size from {"{"}1e-5, 1e-4, 1e-3,
        1e-2, 1e-1{"}"}. Prints mean ± std per guesser and writes every measurement to a CSV.

        {RunSpec.DataHelp}
        {RunSpec.ModelHelp}
          --guessers LIST           comma-separated guesser names (default {DefaultGuessers});
                                    --mode, --guesses, --k, --power and --cosine apply to them as in train
        {RunSpec.RuleHelp}
        Trajectory
          --epochs N                (default 5)
          --batch-size B            (default 32)
          --every N                 measure every N-th step (default 10)
          --seed S                  (default 1)
          --csv PATH                every measurement (default runs/cosine-seed<S>.csv)
        """;

    public static int Run(string[] args)
    {
        var options = new Options(args, new HashSet<string>());
        ulong seed = (ulong)options.Int("seed", 1, min: 0);
        int epochs = options.Int("epochs", 5, min: 1);
        int batch = options.Int("batch-size", 32, min: 1);
        int every = options.Int("every", 10, min: 1);
        var (train, _, dataDescription) = RunSpec.LoadData(options, seed);
        var spec = RunSpec.Model(options, train);
        var names = options.String("guessers", DefaultGuessers).Split(',', StringSplitOptions.RemoveEmptyEntries);
        var guessers = names.Select(n => RunSpec.Guesser(n.Trim(), options)).ToList();
        var (rule, ruleDescription) = RunSpec.Rule(options, train.Count / Math.Max(1, batch), epochs);
        var csv = options.String("csv", Path.Combine("runs", $"cosine-seed{seed}.csv"));
        options.RejectUnknown();

        var parameters = ParameterStore.Initialize(spec.Build(), new CpuBackend(), seed);
        var study = new CosineStudy(parameters, guessers, rule, train, batch, seed);
        AnsiConsole.MarkupLineInterpolated($"[bold]ForwardAD[/] cosine: {dataDescription}, {RunSpec.Describe(spec)}, trajectory backprop {ruleDescription}, batch {batch}, {epochs} epochs, every {every} steps, seed {seed}");
        List<CosineSample> samples = [];
        if (AnsiConsole.Profile.Capabilities.Interactive)
            AnsiConsole.Progress().Start(context =>
            {
                var task = context.AddTask("trajectory");
                samples = study.Run(epochs, every, (done, total) => { task.MaxValue = total; task.Value = done; });
            });
        else samples = study.Run(epochs, every);

        var table = new Table().AddColumns("guesser", "cosine to ∇L (mean ± std)", "1-step effectiveness (mean ± std)", "samples");
        foreach (var s in CosineStudy.Summarize(samples))
            table.AddRow(s.Guesser, $"{s.CosineMean:F4} ± {s.CosineStd:F4}", $"{s.EffectivenessMean:F4} ± {s.EffectivenessStd:F4}", s.Samples.ToString(CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(csv))!);
        var temporary = csv + ".tmp";
        File.WriteAllLines(temporary, samples.Select(s => string.Join(',', s.Epoch + 1, s.Step, $"\"{s.Guesser}\"",
            s.Cosine.ToString("G6", CultureInfo.InvariantCulture), s.Effectiveness.ToString("G6", CultureInfo.InvariantCulture)))
            .Prepend("epoch,step,guesser,cosine,effectiveness"));
        File.Move(temporary, csv, overwrite: true);
        AnsiConsole.MarkupLineInterpolated($"measurements in {csv}");
        return 0;
    }
}
