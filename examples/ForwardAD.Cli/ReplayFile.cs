using System.CommandLine;
using System.CommandLine.Help;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ForwardAD.Data;

namespace ForwardAD.Cli;

/// <summary>
/// A run's configuration as a file that replays it: the command, every option the run was given (one "name = value"
/// per line) and, as comments, the default of every option it was not given, with the tool's version. `--save-config
/// FILE` writes one; `--config FILE` replays one, options given after it taking precedence; train's and lm's checkpoints
/// carry the same text (a checkpoint given to --config replays the run that wrote it). Only the options given are
/// replayed: a default stays the tool's, so the file never turns an unused default into a given option (which some
/// commands refuse, e.g. --k without downstream); a default that changed since the file was written is reported.
/// </summary>
internal static class ReplayFile
{
    /// <summary>The checkpoint note (<see cref="Training.Trainer.SaveCheckpoint"/>) that holds the text.</summary>
    public const string NoteKey = "replay";

    /// <summary>The notes train and lm write into their checkpoints: the run's configuration without its outputs.</summary>
    public static Dictionary<string, string> CheckpointNotes(ParseResult parse) => new() { [NoteKey] = Text(parse, outputs: false) };

    /// <summary>The options every documented command takes for this (sweep has its own --config, a grid file);
    /// <paramref name="checkpoints"/>: the command's checkpoints carry its configuration (train, lm).</summary>
    public static Option<string?> ConfigOption(bool checkpoints) => Opt.OptionalString("config").Describe("FILE",
        "replay a run: the command and options of a file written by --save-config" + (checkpoints ? ", or of this command's checkpoint" : "") +
        "; options given on the command line take precedence over the file's");

    public static Option<string?> SaveConfigOption() => Opt.OptionalString("save-config").Describe("FILE",
        "write this run's configuration to FILE first (the command, every option given, and the defaults it takes, with the " +
        "tool's version): `forwardad --config FILE` replays it");

    private static readonly string[] NotReplayed = ["--config", "--save-config"];

    /// <summary>The options of where a run writes: left out of a checkpoint's note, so that replaying a checkpoint
    /// starts a new run (at the default outputs or those given) rather than continuing or overwriting that one.</summary>
    private static readonly string[] Outputs = ["--resume", "--checkpoint", "--metrics", "--out", "--csv"];

    /// <summary>The configuration of the run <paramref name="parse"/> describes, as the file's text; without
    /// <paramref name="outputs"/>, the options naming where it writes are left out (a checkpoint's note).</summary>
    public static string Text(ParseResult parse, bool outputs = true)
    {
        var command = parse.CommandResult.Command;
        var name = FullName(command);
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"# forwardad {Cli.Version}: the configuration of a `{name}` run.\n");
        text.Append("# Replay it with: forwardad --config FILE [more options, which take precedence]\n");
        text.Append(CultureInfo.InvariantCulture, $"command = {name}\n");
        var defaults = new List<string>();
        foreach (var option in command.Options.Where(o => o is not HelpOption && !NotReplayed.Contains(o.Name) && (outputs || !Outputs.Contains(o.Name))))
        {
            var key = option.Name[2..];
            if (parse.GetResult(option) is { Implicit: false } given)
                text.Append(CultureInfo.InvariantCulture, $"{key} = {Quoted(option.Arity.MaximumNumberOfValues == 0 ? "yes" : string.Join(' ', given.Tokens.Select(t => t.Value)))}\n");
            else if (HelpText.DefaultText(option) is { } fallback) defaults.Add($"#   {key} = {Quoted(fallback)}");
        }
        if (defaults.Count > 0)
            text.Append("# For reference, the parser's defaults of the options not given (not every option applies to every run, and\n" +
                        "# train and lm choose some per model and method, as the run's first lines say). A replay takes this version's\n" +
                        "# own defaults; give one above to keep it:\n").Append(string.Join('\n', defaults)).Append('\n');
        return text.ToString();
    }

    /// <summary>A value as one line: as it is, or as a JSON string when it has spaces at its ends, a '#', a quote or a
    /// control character (a prompt of a new line).</summary>
    private static string Quoted(string value) =>
        value.Length == 0 || value.Trim() != value || value.Any(c => c is '#' or '"' || char.IsControl(c)) ? JsonSerializer.Serialize(value, ReplayJson.Default.String) : value;

    /// <summary>
    /// <paramref name="args"/> with a --config FILE expanded: the file's command (which must agree with one given
    /// before it), then its options that the command line does not give, then the command line's own. Unchanged without
    /// --config, and for sweep, whose --config is its grid file. Notes (a default that changed since the file was written)
    /// go to <paramref name="notes"/>.
    /// </summary>
    public static string[] Expand(string[] args, TextWriter notes)
    {
        static bool IsConfig(string a) => a == "--config" || a.StartsWith("--config=", StringComparison.Ordinal);
        int at = Array.FindIndex(args, IsConfig);
        if (at < 0 || args is ["sweep", ..]) return args;
        if (args.Count(IsConfig) > 1) throw new UsageException("--config is given twice; give one configuration (options after it take precedence over its own).");
        string path;
        List<string> rest;
        if (args[at].StartsWith("--config=", StringComparison.Ordinal)) { path = args[at]["--config=".Length..]; rest = [.. args[..at], .. args[(at + 1)..]]; }
        else
        {
            if (at + 1 >= args.Length || args[at + 1].StartsWith("--", StringComparison.Ordinal)) throw new UsageException("--config needs a file: a configuration written by --save-config, or a checkpoint of train or lm.");
            path = args[at + 1];
            rest = [.. args[..at], .. args[(at + 2)..]];
        }
        var file = Read(path);
        // The command given before --config, if any (words that are not options, up to the first option).
        var words = rest.TakeWhile(a => !a.StartsWith('-')).ToList();
        var commandWords = file.Command.Split(' ');
        if (words.Count > 0 && !words.SequenceEqual(commandWords))
            throw new UsageException($"--config {path} is the configuration of `{file.Command}`, not of `{string.Join(' ', words)}`. Run it as forwardad --config {path}, or forwardad {file.Command} --config {path}.");
        var own = rest.Skip(words.Count).ToList();
        var given = own.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=')[0]).ToHashSet(StringComparer.Ordinal);
        var expanded = new List<string>(commandWords);
        foreach (var (key, value) in file.Options)
        {
            if (given.Contains("--" + key)) continue;
            expanded.Add("--" + key);
            if (value is not null) expanded.Add(value);
        }
        expanded.AddRange(own);
        foreach (var note in file.Notes) notes.WriteLine(note);
        return [.. expanded];
    }

    private sealed record Parsed(string Command, List<(string Key, string? Value)> Options, List<string> Notes);

    /// <summary>Reads a configuration file or the configuration note of a checkpoint; errors name the file and line.</summary>
    private static Parsed Read(string path)
    {
        if (Directory.Exists(path)) throw new IOException($"--config {path}: is a directory; give a file written by --save-config, or a checkpoint.");
        if (!File.Exists(path)) throw new FileNotFoundException($"--config {path}: the file does not exist.", path);
        string text;
        if (IsSafeTensors(path))
        {
            var (_, metadata) = SafeTensors.Read(path);
            text = metadata.GetValueOrDefault(Training.Trainer.NotePrefix + NoteKey)
                ?? throw new InvalidDataException($"--config {path}: this checkpoint holds no configuration to replay (only train and lm checkpoints of this version do). Its metadata lists the run's settings; give them as options.");
        }
        else
        {
            text = File.ReadAllText(path);
            if (text.Any(c => char.IsControl(c) && c is not ('\n' or '\r' or '\t') || c == '\uFFFD'))
                throw new InvalidDataException($"--config {path}: not a configuration (a text file written by --save-config) nor a safetensors checkpoint.");
        }
        string? command = null;
        var options = new List<(string, string?)>();
        var notes = new List<string>();
        var lines = text.Replace("\r", "", StringComparison.Ordinal).Split('\n');
        Command? known = null;
        for (int i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            var where = $"--config {path}, line {i + 1}";
            int equals = line.IndexOf('=');
            if (equals <= 0) throw new InvalidDataException($"{where}: '{line}' is not a setting; expected 'NAME = VALUE' (a file written by --save-config).");
            var key = line[..equals].Trim();
            var value = Unquoted(line[(equals + 1)..].Trim(), where);
            if (key == "command")
            {
                command = value;
                known = KnownCommand(value) ?? throw new InvalidDataException($"{where}: '{value}' is not a command of this tool.");
                continue;
            }
            if (command is null) throw new InvalidDataException($"{where}: the file must name its command first ('command = train').");
            var option = known!.Options.FirstOrDefault(o => o.Name == "--" + key)
                ?? throw new InvalidDataException($"{where}: `{command}` has no option --{key}. Remove the line, or see 'forwardad {command} --help'.");
            if (option.Arity.MaximumNumberOfValues == 0)
            {
                if (value is "yes" or "true" or "on") options.Add((key, null));
                else if (value is not ("no" or "false" or "off")) throw new InvalidDataException($"{where}: --{key} is a switch; give yes or no, not '{value}'.");
            }
            else options.Add((key, value));
        }
        if (command is null) throw new InvalidDataException($"--config {path}: no 'command = …' line: not a configuration written by --save-config.");
        // The defaults the run took, as comments: say which ones this version has changed.
        foreach (var line in lines.Select(l => l.Trim()).Where(l => l.StartsWith("#   ", StringComparison.Ordinal) && l.Contains('=', StringComparison.Ordinal)))
        {
            var body = line[1..].Trim();
            int equals = body.IndexOf('=');
            var key = body[..equals].Trim();
            string then;
            try { then = Unquoted(body[(equals + 1)..].Trim(), path); }
            catch (InvalidDataException) { continue; }
            if (options.Any(o => o.Item1 == key) || known!.Options.FirstOrDefault(o => o.Name == "--" + key) is not { } option) continue;
            if (HelpText.DefaultText(option) is { } now && now != then)
                notes.Add($"note: --{key} defaulted to {then} when {path} was written and now defaults to {now}; give --{key} {then} to replay that run exactly.");
        }
        return new Parsed(command, options, notes);
    }

    private static string Unquoted(string value, string where)
    {
        if (!value.StartsWith('"')) return value;
        try { return JsonSerializer.Deserialize(value, ReplayJson.Default.String) ?? ""; }
        catch (JsonException) { throw new InvalidDataException($"{where}: the quoted value {value} is not a valid JSON string."); }
    }

    /// <summary>The command (or study subcommand) of that name, with its options, for checking the file's lines.</summary>
    private static Command? KnownCommand(string name)
    {
        return Cli.Commands(CliContext.Silent()).FirstOrDefault(c => FullName(c) == name);
    }

    private static string FullName(Command command) =>
        string.Join(' ', command.Parents.OfType<Command>().Where(c => c is not RootCommand).Reverse().Select(c => c.Name).Append(command.Name));

    private static bool IsSafeTensors(string path)
    {
        // safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'.
        using var stream = File.OpenRead(path);
        Span<byte> head = stackalloc byte[9];
        return stream.Read(head) == 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head[..8]) < 100_000_000;
    }
}

/// <summary>Source-generated JSON for the quoted values (no reflection).</summary>
[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class ReplayJson : System.Text.Json.Serialization.JsonSerializerContext;
