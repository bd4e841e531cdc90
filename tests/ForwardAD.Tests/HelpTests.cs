using System.CommandLine;
using System.CommandLine.Help;
using ForwardAD.Cli;

namespace ForwardAD.Tests;

/// <summary>
/// Every command's help is generated from its options: each option it accepts is in the help with its description,
/// and each default the help shows is the one the parser fills in (so help and run cannot drift apart).
/// </summary>
public sealed class HelpTests
{
    private static IEnumerable<DocumentedCommand> Commands() => Cli.Cli.Commands(CliContext.Silent());

    public static TheoryData<string> CommandNames() => [.. Commands().Select(c => c.Parents.OfType<DocumentedCommand>().Any() ? $"study {c.Name}" : c.Name)];

    private static DocumentedCommand Named(string name) =>
        Commands().Single(c => (c.Parents.OfType<DocumentedCommand>().Any() ? $"study {c.Name}" : c.Name) == name);

    [Theory]
    [MemberData(nameof(CommandNames))]
    public void Every_option_a_command_accepts_is_in_its_help_with_its_default(string name)
    {
        var command = Named(name);
        var help = command.Help();
        var documented = command.Sections.SelectMany(s => s.Options).ToList();
        foreach (var option in command.Options.Where(o => o is not HelpOption))
        {
            Assert.Contains(option, documented);
            Assert.False(string.IsNullOrWhiteSpace(option.Description), $"{name} {option.Name} has no description");
            Assert.Contains($"\n  {option.Name}", help);
        }
        Assert.Equal(documented.Count, documented.Distinct().Count());
        // The default shown is the option's own, the value the parser fills in when the option is absent.
        foreach (var option in documented.Where(o => o.HasDefaultValue && !o.Description!.Contains("(default", StringComparison.Ordinal)))
        {
            var shown = HelpText.DefaultText(option);
            if (shown is null) continue;
            Assert.Contains($"(default {shown})", Flattened(HelpText.Describe(option)));
        }
        Assert.DoesNotContain("issue", help, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void The_help_is_what_the_tool_prints_and_the_defaults_tables_are_the_runs()
    {
        var (code, output, _) = CliTests.Run("train", "--help");
        Assert.Equal(0, code);
        Assert.Equal(Named("train").Help(), output.TrimEnd('\n'));
        // train's table of defaults per model is computed from the defaults a run takes.
        var cnnDownstream = TrainDefaults.For("vgg-small", "downstream");
        Assert.Contains($"CNN, downstream           {cnnDownstream.Options()}", output);
        Assert.Contains("--optimizer adamw --lr 0.0001", cnnDownstream.Options());
        // lm's help states the optimizer lm runs with when none is given (it once said AdamW while runs used SGD).
        var lmHelp = CliTests.Run("lm", "--help").Out;
        var lm = TrainDefaults.ForLanguageModel("backprop");
        Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"(default: {lm.Optimizer}, lr {lm.Rate})"), Flattened(lmHelp));
        Assert.DoesNotContain("(default sgd", Flattened(lmHelp));
        Assert.Contains("--steps N", lmHelp);
        Assert.Contains("(default 2000)", Flattened(lmHelp));
        // A study's help lists its own options and the ones all studies share.
        var saturation = CliTests.Run("study", "saturation", "--help").Out;
        Assert.Contains("--max-guesses N", saturation);
        Assert.Contains("--out DIR", saturation);
        Assert.Contains("\n  saturation", CliTests.Run("study", "--help").Out);
    }

    /// <summary>The text with its line wrapping undone (a default may be wrapped onto the next line).</summary>
    private static string Flattened(string text) => System.Text.RegularExpressions.Regex.Replace(text, @"\s*\n\s*", " ");
}
