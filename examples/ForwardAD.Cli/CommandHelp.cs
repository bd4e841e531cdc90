using System.CommandLine;
using System.Globalization;
using System.Text;

namespace ForwardAD.Cli;

/// <summary>A titled group of a command's options in its help, with an optional note after them (a table of defaults,
/// what Ctrl-C does).</summary>
internal sealed record HelpSection(string Title, IReadOnlyList<Option> Options, string? Note = null);

/// <summary>
/// A command whose help is generated from its options: each option carries its own description
/// (<see cref="HelpText.Describe{TOption}"/>), and its default is read from the option itself, so the help cannot state
/// another default than the run uses. Options are registered through <see cref="Section"/>, which both adds them to
/// the command and places them in the help: an option cannot be registered without appearing there.
/// </summary>
internal sealed class DocumentedCommand(string name, string purpose, string usage) : Command(name, purpose)
{
    private readonly List<HelpSection> _sections = [];

    /// <summary>The synopsis line's left part ("forwardad train [options]"); the command's purpose follows it.</summary>
    public string Usage { get; } = usage;

    /// <summary>Prose after the synopsis: what the command does with no options.</summary>
    public string Summary { get; init; } = "";

    /// <summary>Prose after the options (exit codes, what Ctrl-C does).</summary>
    public string Footer { get; init; } = "";

    public IReadOnlyList<HelpSection> Sections => _sections;

    /// <summary>Adds <paramref name="options"/> to the command and, under <paramref name="title"/>, to its help.</summary>
    public DocumentedCommand Section(string title, IEnumerable<Option> options, string? note = null)
    {
        var list = options.ToList();
        foreach (var option in list)
        {
            if (string.IsNullOrWhiteSpace(option.Description))
                throw new InvalidOperationException($"{Name} {option.Name} has no description: give it one with Describe.");
            Add(option);
        }
        _sections.Add(new HelpSection(title, list, note));
        return this;
    }

    /// <summary>The help text, <see cref="HelpText.Width"/> columns wide.</summary>
    public string Help() => HelpText.Render(this);
}

/// <summary>Renders a <see cref="DocumentedCommand"/>'s help: the synopsis, the summary, then each section's options as
/// "--name VALUE   description (default …)", wrapped under the description column.</summary>
internal static class HelpText
{
    /// <summary>The text's width: wide enough for the option tables of the longest commands without breaking every line.</summary>
    public const int Width = 116;

    /// <summary>The column where descriptions start.</summary>
    private const int DescriptionColumn = 28;

    /// <summary>The column where a command's purpose starts after its synopsis.</summary>
    private const int SynopsisColumn = 31;

    /// <summary>Sets the option's help: <paramref name="value"/> names its value in the synopsis ("N", "PATH"; empty for a
    /// flag) and <paramref name="description"/> says what it does. The default is appended from the option itself unless
    /// the description states its own (a default that depends on other options: say "(default …" in it).</summary>
    public static TOption Describe<TOption>(this TOption option, string value, string description) where TOption : Option
    {
        option.HelpName = value;
        option.Description = description;
        return option;
    }

    /// <summary>The default as the help shows it; null for none (a flag, an option without one, an empty text).</summary>
    public static string? DefaultText(Option option)
    {
        if (!option.HasDefaultValue) return null;
        return option.GetDefaultValue() switch
        {
            null or bool or "" => null,
            float f => f.ToString("R", CultureInfo.InvariantCulture),
            double d => d.ToString("R", CultureInfo.InvariantCulture),
            IFormattable value => value.ToString(null, CultureInfo.InvariantCulture),
            var value => value.ToString(),
        };
    }

    /// <summary>One option's lines: its description with the default appended.</summary>
    public static string Describe(Option option)
    {
        var description = option.Description ?? "";
        if (DefaultText(option) is { } fallback && !description.Contains("(default", StringComparison.Ordinal))
            description += $" (default {fallback})";
        var name = string.IsNullOrEmpty(option.HelpName) ? option.Name : $"{option.Name} {option.HelpName}";
        return Hanging("  " + name, description);
    }

    public static string Render(DocumentedCommand command)
    {
        var text = new StringBuilder();
        // The purpose after the synopsis, wrapped under itself; on the next line when the synopsis is long.
        text.Append(Hanging(command.Usage, command.Description ?? "", SynopsisColumn)).Append('\n');
        if (command.Summary.Length > 0) text.Append('\n').Append(Wrap(command.Summary, "")).Append('\n');
        text.Append('\n');
        foreach (var section in command.Sections)
        {
            if (section.Title.Length > 0) text.Append(section.Title).Append('\n');
            foreach (var option in section.Options) text.Append(Describe(option)).Append('\n');
            if (section.Note is { } note) text.Append(Wrap(note, "")).Append('\n');
        }
        if (command.Footer.Length > 0) text.Append(Wrap(command.Footer, "")).Append('\n');
        if (command.Subcommands.Count > 0)
        {
            text.Append("Commands\n");
            foreach (var sub in command.Subcommands) text.Append(Hanging("  " + sub.Name, sub.Description ?? "")).Append('\n');
        }
        return text.ToString().TrimEnd('\n');
    }

    /// <summary><paramref name="head"/>, then <paramref name="body"/> wrapped from the description column (on the next
    /// line when the head reaches it).</summary>
    private static string Hanging(string head, string body, int column = DescriptionColumn)
    {
        var indent = new string(' ', column);
        var wrapped = Wrap(body, indent);
        if (head.Length <= column - 2) return head.PadRight(column) + wrapped[column..];
        return head + "\n" + wrapped;
    }

    /// <summary>Text with its own line breaks kept (a line that starts with spaces is kept as it is: a table), each
    /// paragraph line filled up to <see cref="Width"/> and indented by <paramref name="indent"/>.</summary>
    private static string Wrap(string text, string indent)
    {
        var lines = new List<string>();
        foreach (var paragraph in text.Replace("\r", "", StringComparison.Ordinal).Split('\n'))
        {
            if (paragraph.StartsWith(' ')) { lines.Add(indent + paragraph); continue; }
            var line = new StringBuilder(indent);
            foreach (var word in paragraph.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (line.Length > indent.Length && line.Length + 1 + word.Length > Width)
                {
                    lines.Add(line.ToString());
                    line.Clear().Append(indent);
                }
                if (line.Length > indent.Length) line.Append(' ');
                line.Append(word);
            }
            lines.Add(line.ToString());
        }
        return string.Join('\n', lines);
    }
}
