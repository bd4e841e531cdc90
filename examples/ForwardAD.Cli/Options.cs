using System.Globalization;

namespace ForwardAD.Cli;

/// <summary>A minimal GNU-style option parser: --name value, --name=value and --flag; unknown options are errors.</summary>
internal sealed class Options
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public Options(IEnumerable<string> args, IReadOnlySet<string> flags)
    {
        using var e = args.GetEnumerator();
        while (e.MoveNext())
        {
            var arg = e.Current;
            if (!arg.StartsWith("--", StringComparison.Ordinal)) throw new UsageException($"Unexpected argument '{arg}'. Options start with --.");
            var name = arg[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) (name, value) = (name[..eq], name[(eq + 1)..]);
            else if (!flags.Contains(name))
            {
                if (!e.MoveNext()) throw new UsageException($"Option --{name} needs a value.");
                value = e.Current;
            }
            _values[name] = value;
        }
    }

    public bool Flag(string name) { _used.Add(name); return _values.ContainsKey(name); }

    public string String(string name, string fallback) { _used.Add(name); return _values.TryGetValue(name, out var v) && v is not null ? v : fallback; }

    public string? OptionalString(string name) { _used.Add(name); return _values.TryGetValue(name, out var v) ? v : null; }

    public int Int(string name, int fallback, int min = int.MinValue)
    {
        var text = String(name, fallback.ToString(CultureInfo.InvariantCulture));
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) || value < min)
            throw new UsageException($"--{name} must be an integer ≥ {min}; got '{text}'.");
        return value;
    }

    public float Float(string name, float fallback)
    {
        var text = String(name, fallback.ToString(CultureInfo.InvariantCulture));
        if (!float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !float.IsFinite(value))
            throw new UsageException($"--{name} must be a number; got '{text}'.");
        return value;
    }

    public int[] IntList(string name, string fallback)
    {
        var text = String(name, fallback);
        if (text is "" or "none") return [];
        return text.Split(',').Select(part => int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v > 0
            ? v : throw new UsageException($"--{name} must be a comma-separated list of positive integers; got '{text}'.")).ToArray();
    }

    /// <summary>Throws for options given but never read (typos).</summary>
    public void RejectUnknown()
    {
        var unknown = _values.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0) throw new UsageException($"Unknown option(s): {string.Join(", ", unknown.Select(u => "--" + u))}. See --help.");
    }
}

internal sealed class UsageException(string message) : Exception(message);
