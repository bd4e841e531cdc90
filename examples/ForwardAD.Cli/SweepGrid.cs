using System.Collections.Immutable;
using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace ForwardAD.Cli;

/// <summary>One axis of a sweep: an option of the swept command (without its dashes) and the values it takes, in the order given.</summary>
internal sealed record SweepAxis(string Name, ImmutableArray<string> Values);

/// <summary>
/// One run of a sweep: its values on every axis (in axis order), the full command line it runs (train or lm), and its folder
/// name: a readable slug of the values and a hash of the whole command line, so that the same run always lands in the
/// same folder (resume) and a changed base command never reuses an old result.
/// </summary>
internal sealed record SweepRun(int Index, ImmutableArray<(string Axis, string Value)> Values, ImmutableArray<string> Arguments, string Folder)
{
    /// <summary>"guesser=dfa lr=0.001 seed=2": the run in progress lines and tables.</summary>
    public string Label => Values.IsEmpty ? "(base command)" : string.Join(' ', Values.Select(v => $"{v.Axis}={v.Value}"));

    public string? ValueOf(string axis) => Values.FirstOrDefault(v => v.Axis == axis).Value;
}

/// <summary>
/// What a sweep runs: the grid's axes and the base command line (train or lm). Built from --grid options, a config
/// file, or both; checked against the command's own options before anything runs (every run's command line is parsed
/// by its parser, so a bad value is reported with its run before the first process starts).
/// </summary>
internal sealed class SweepGrid
{
    /// <summary>Options the sweep sets itself for every run (each run's outputs live in its own folder).</summary>
    public static readonly string[] Owned = ["metrics", "checkpoint", "resume"];

    private SweepGrid(IReadOnlyList<SweepAxis> axes, IReadOnlyList<string> command, IReadOnlySet<string> switches)
    {
        Axes = [.. axes];
        Command = [.. command];
        _switches = switches;
    }

    /// <summary>The axes that are switches (--augment): a value 'yes' gives the bare option, 'no' leaves it out.</summary>
    private readonly IReadOnlySet<string> _switches;

    public ImmutableArray<SweepAxis> Axes { get; }

    /// <summary>The base arguments, starting with the command's name ("train", "lm").</summary>
    public ImmutableArray<string> Command { get; }

    public int RunCount => Axes.Aggregate(1, (n, a) => n * a.Values.Length); // at most MaxRuns: checked by Create

    /// <summary>
    /// Parses "NAME=V1,V2,...": values are separated by commas, or by semicolons when the list holds one (a value with
    /// commas of its own: hidden=128,128;64,64). <paramref name="where"/> prefixes errors ("--grid", "FILE, line 3").
    /// </summary>
    public static SweepAxis ParseAxis(string text, string where)
    {
        int equals = text.IndexOf('=');
        if (equals < 0)
            throw new UsageException($"{where}: '{text}' is not NAME=V1,V2,... (an option of the swept command without its dashes, '=', then its values), e.g. lr=1e-3,3e-3.");
        var name = text[..equals].Trim();
        if (name.StartsWith('-')) name = name.TrimStart('-');
        if (name.Length == 0) throw new UsageException($"{where}: '{text}' has no option name before '='.");
        var list = text[(equals + 1)..];
        var values = list.Split(list.Contains(';') ? ';' : ',', StringSplitOptions.TrimEntries);
        if (values.Any(v => v.Length == 0))
            throw new UsageException($"{where}: '{text}' has an empty value; list the values of {name} separated by commas (or by semicolons when a value holds commas).");
        if (values.Distinct(StringComparer.Ordinal).Count() != values.Length)
            throw new UsageException($"{where}: '{text}' lists a value of {name} twice; list each once.");
        return new SweepAxis(name, [.. values]);
    }

    /// <summary>A sweep's settings read from a config file: its axes, its command line (null when absent), and the
    /// optional select-by and tune lines.</summary>
    public sealed record ConfigFile(List<SweepAxis> Axes, List<string>? Command, string? SelectBy, string? Tune);

    public const string ConfigHelp = """
        Config file (--config FILE): one setting per line, '#' starts a comment, blank lines are skipped:
          grid NAME = V1, V2, ...     an axis, as --grid NAME=V1,V2,... (any number of lines, in axis order)
          command = train OPTIONS     the base command line, train or lm and its options (split at spaces; "..." or
                                      '...' keep spaces)
          select-by = METRIC          as --select-by
          tune = NAME[,NAME]          as --tune
        Example:
          # four methods, three rates, three seeds, on a validation split of digits' training set
          grid guesser = backprop, wt, dfa, grape
          grid lr = 0.03, 0.1, 0.3
          grid seed = 1, 2, 3
          command = train --data digits --epochs 10 --validation-fraction 0.1
        """;

    /// <summary>Reads a config file (format in <see cref="ConfigHelp"/>); errors name the file and the line.</summary>
    public static ConfigFile ReadConfig(string path)
    {
        if (Directory.Exists(path)) throw new IOException($"--config {path}: is a directory; give the sweep's config file.");
        if (!File.Exists(path)) throw new FileNotFoundException($"--config {path}: the file does not exist.", path);
        var axes = new List<SweepAxis>();
        List<string>? command = null;
        string? selectBy = null, tune = null;
        var lines = File.ReadAllLines(path);
        if (lines.Length > 0 && lines[0].StartsWith("# forwardad ", StringComparison.Ordinal) && lines[0].Contains("the configuration of a", StringComparison.Ordinal))
            throw new UsageException($"--config {path} is a run's configuration (written by --save-config), not a sweep's grid file: replay it with " +
                $"forwardad --config {path}, or give a grid file (format in 'forwardad sweep --help').");
        for (int i = 0; i < lines.Length; i++)
        {
            var where = $"{path}, line {i + 1}";
            int hash = lines[i].IndexOf('#');
            var line = (hash >= 0 ? lines[i][..hash] : lines[i]).Trim();
            if (line.Length == 0) continue;
            if (line.StartsWith("grid", StringComparison.Ordinal) && line.Length > 4 && char.IsWhiteSpace(line[4]))
            {
                axes.Add(ParseAxis(line[4..].Trim(), where));
                continue;
            }
            int equals = line.IndexOf('=');
            var key = equals < 0 ? line : line[..equals].Trim();
            var value = equals < 0 ? "" : line[(equals + 1)..].Trim();
            if (equals < 0 || key is not ("command" or "select-by" or "tune"))
                throw new UsageException($"{where}: '{line}' is not a setting; expected 'grid NAME = V1, V2', 'command = train ...' (or lm ...), 'select-by = METRIC' or 'tune = NAME'.");
            if (value.Length == 0) throw new UsageException($"{where}: '{key}' has no value after '='.");
            if ((key == "command" && command is not null) || (key == "select-by" && selectBy is not null) || (key == "tune" && tune is not null))
                throw new UsageException($"{where}: '{key}' is set a second time; set it once.");
            switch (key)
            {
                case "command": command = SplitCommandLine(value, where); break;
                case "select-by": selectBy = value; break;
                default: tune = value; break;
            }
        }
        return new ConfigFile(axes, command, selectBy, tune);
    }

    /// <summary>Splits at white space; "..." and '...' keep their spaces (no escapes: a config line, not a shell).</summary>
    public static List<string> SplitCommandLine(string text, string where)
    {
        var tokens = new List<string>();
        var token = new StringBuilder();
        bool inToken = false;
        char quote = '\0';
        foreach (char c in text)
        {
            if (quote != '\0')
            {
                if (c == quote) quote = '\0';
                else token.Append(c);
            }
            else if (c is '"' or '\'') { quote = c; inToken = true; }
            else if (char.IsWhiteSpace(c))
            {
                if (inToken) tokens.Add(token.ToString());
                token.Clear();
                inToken = false;
            }
            else { token.Append(c); inToken = true; }
        }
        if (quote != '\0') throw new UsageException($"{where}: a quote ({quote}) is not closed.");
        if (inToken) tokens.Add(token.ToString());
        return tokens;
    }

    /// <summary>
    /// Checks the grid against the swept command's options (<paramref name="swept"/>: its parser, for its option names
    /// and arities) and the base command line, and normalises the command to start with the command's name.
    /// </summary>
    public static SweepGrid Create(IReadOnlyList<SweepAxis> axes, IReadOnlyList<string> command, Command swept)
    {
        var name = swept.Name;
        var commandLine = command.ToList();
        if (commandLine.Count == 0) commandLine.Add(name);
        // As on the command line itself, options without a command are train's (SweptCommand.For then gave train's parser).
        if (commandLine[0].StartsWith("--", StringComparison.Ordinal)) commandLine.Insert(0, name);
        if (commandLine[0] != name)
            throw new UsageException($"this sweep runs '{name}'; the command after '--' is '{commandLine[0]}'. Give '{name}' and its options.");
        var options = swept.Options.Where(o => o.Name.StartsWith("--", StringComparison.Ordinal)).ToDictionary(o => o.Name[2..], StringComparer.Ordinal);
        // A run's command line is the sweep's to make: a replay file would hide options from the grid, and each run's
        // configuration is already in the sweep's folder.
        foreach (var replay in new[] { "config", "save-config" })
            if (Mentions(commandLine, replay))
                throw new UsageException($"--{replay} cannot be among a sweep's run options. Give the shared options after '--' (or in the sweep's grid file: " +
                    "forwardad sweep --config FILE, format in 'forwardad sweep --help'); each run's command line is in its folder under --out.");
        foreach (var owned in Owned)
            if (Mentions(commandLine, owned))
                throw new UsageException($"--{owned} is set by the sweep (each run writes into its own folder under --out); drop it from the {name} arguments.");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var axis in axes)
        {
            if (!options.TryGetValue(axis.Name, out var option) || axis.Name == "help")
                throw new UsageException($"grid axis '{axis.Name}': {name} has no option --{axis.Name}. Axes are {name} options without their dashes (guesser, lr, seed, batch-size, model, …; see 'forwardad {name} --help').");
            if (Owned.Contains(axis.Name)) throw new UsageException($"grid axis '{axis.Name}': --{axis.Name} is set by the sweep for every run; it cannot be an axis.");
            if (!seen.Add(axis.Name)) throw new UsageException($"grid axis '{axis.Name}' is given twice; give each axis once, with all its values.");
            if (Mentions(commandLine, axis.Name))
                throw new UsageException($"--{axis.Name} is both a grid axis and in the {name} arguments; drop one of them.");
            if (option.Arity.MaximumNumberOfValues == 0)
                foreach (var value in axis.Values)
                    if (FlagValue(value) is null)
                        throw new UsageException($"grid axis '{axis.Name}': --{axis.Name} is a switch; its values are yes or no (got '{value}').");
        }
        double runs = axes.Aggregate(1.0, (n, a) => n * a.Values.Length);
        if (runs > MaxRuns) throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"the grid has {runs:N0} runs; that is surely a mistake (at most {MaxRuns:N0})."));
        return new SweepGrid(axes, commandLine, axes.Where(a => options[a.Name].Arity.MaximumNumberOfValues == 0).Select(a => a.Name).ToHashSet(StringComparer.Ordinal));
    }

    /// <summary>A typo guard (an axis pasted twice over), far above what a sweep of runs can finish.</summary>
    private const int MaxRuns = 100_000;

    /// <summary>True when the command line gives --<paramref name="name"/> (alone or as --name=value / --name:value).</summary>
    public static bool Mentions(IEnumerable<string> commandLine, string name) =>
        commandLine.Any(t => t == "--" + name || t.StartsWith($"--{name}=", StringComparison.Ordinal) || t.StartsWith($"--{name}:", StringComparison.Ordinal));

    private static bool? FlagValue(string value) => value switch
    {
        "yes" or "true" or "on" => true,
        "no" or "false" or "off" => false,
        _ => null,
    };

    /// <summary>
    /// Every run of the grid: the cartesian product of the axes, the first axis varying slowest (as nested loops in the
    /// order given), each run's command line the base command followed by its axis values, and its folder name.
    /// </summary>
    public List<SweepRun> Expand()
    {
        var runs = new List<SweepRun>(RunCount);
        var index = new int[Axes.Length];
        for (int r = 0; r < RunCount; r++)
        {
            var values = Axes.Select((a, i) => (a.Name, a.Values[index[i]])).ToImmutableArray();
            var arguments = Command.ToList();
            foreach (var (name, value) in values)
            {
                if (!_switches.Contains(name)) arguments.AddRange(["--" + name, value]);
                else if (FlagValue(value) == true) arguments.Add("--" + name);
            }
            runs.Add(new SweepRun(r, values, [.. arguments], FolderName(values, arguments)));
            // The next combination: the last axis varies fastest.
            for (int i = Axes.Length - 1; i >= 0; i--)
            {
                if (++index[i] < Axes[i].Values.Length) break;
                index[i] = 0;
            }
        }
        return runs;
    }

    /// <summary>"guesser-dfa_lr-0.001_seed-2-1a2b3c4d": readable values (characters other than letters, digits and
    /// . + - become _; at most 60 of them), then 8 hex digits of SHA-256 over the whole command line.</summary>
    public static string FolderName(IEnumerable<(string Axis, string Value)> values, IReadOnlyList<string> arguments)
    {
        var slug = new StringBuilder();
        foreach (var (axis, value) in values)
        {
            if (slug.Length > 0) slug.Append('_');
            foreach (char c in $"{axis}-{value}") slug.Append(char.IsAsciiLetterOrDigit(c) || c is '.' or '+' or '-' ? c : '_');
        }
        var text = slug.Length == 0 ? "run" : slug.ToString(0, Math.Min(60, slug.Length));
        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join('\0', arguments))))[..8];
        return $"{text}-{hash}";
    }

    /// <summary>The sweep command line that reproduces this grid (without --config: the grid spelled out).</summary>
    public string Reproduction(string folder, string? selectBy, IReadOnlyList<string> tune)
    {
        var parts = new List<string> { "forwardad", "sweep", "--out", folder };
        foreach (var axis in Axes)
            parts.AddRange(["--grid", $"{axis.Name}={string.Join(axis.Values.Any(v => v.Contains(',')) ? ';' : ',', axis.Values)}"]);
        if (selectBy is not null) parts.AddRange(["--select-by", selectBy]);
        if (!tune.SequenceEqual(SweepCommand.DefaultTune)) parts.AddRange(["--tune", string.Join(',', tune)]);
        parts.Add("--");
        parts.AddRange(Command);
        return string.Join(' ', parts.Select(Quote));
    }

    /// <summary>A word as a POSIX shell reads it: as is when it holds only safe characters, else in single quotes.</summary>
    public static string Quote(string word) =>
        word.Length > 0 && word.All(c => char.IsAsciiLetterOrDigit(c) || "-_.,:=/+@%".Contains(c)) ? word : "'" + word.Replace("'", "'\\''") + "'";

    public override string ToString() => string.Join(" × ", Axes.Select(a => $"{a.Values.Length} {a.Name}")) is { Length: > 0 } text
        ? string.Create(CultureInfo.InvariantCulture, $"{text} = {RunCount} runs") : "1 run";
}
