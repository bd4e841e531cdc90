using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace ForwardAD.Cli;

/// <summary>
/// Typed, range-checked options on top of System.CommandLine. Every option parses its own text so that a bad
/// value is reported as "--name must be …; got '…'" (the library's default names the CLR type), and every
/// string option refuses a value that is itself an option (<c>--data --quiet</c> would otherwise read
/// "--quiet" as the data source).
/// </summary>
internal static class Opt
{
    public static Option<int> Int(string name, int fallback, int min, int max = int.MaxValue) =>
        new("--" + name) { DefaultValueFactory = _ => fallback, CustomParser = r => ParseInt(r, name, min, max) };

    /// <summary>An integer option whose absence matters (a conflict or a default that depends on others).</summary>
    public static Option<int?> OptionalInt(string name, int min, int max = int.MaxValue) =>
        new("--" + name) { CustomParser = r => ParseInt(r, name, min, max) };

    /// <summary>A finite float that satisfies <paramref name="valid"/>, described by <paramref name="requirement"/> ("a number > 0").</summary>
    public static Option<float> Float(string name, float fallback, Func<float, bool> valid, string requirement) =>
        new("--" + name) { DefaultValueFactory = _ => fallback, CustomParser = r => ParseFloat(r, name, valid, requirement) };

    public static Option<float?> OptionalFloat(string name, Func<float, bool> valid, string requirement) =>
        new("--" + name) { CustomParser = r => ParseFloat(r, name, valid, requirement) };

    /// <summary>One of a fixed set of names; <paramref name="what"/> names the kind of thing in the error ("guesser").</summary>
    public static Option<string> Choice(string name, string fallback, string what, params string[] allowed) =>
        new("--" + name)
        {
            DefaultValueFactory = _ => fallback,
            CustomParser = r =>
            {
                var text = Text(r, name);
                if (text is null || allowed.Contains(text, StringComparer.Ordinal)) return text ?? fallback;
                r.AddError($"Unknown {what} '{text}' for --{name}. Use {List(allowed)}.");
                return fallback;
            },
        };

    /// <summary>One of a fixed set of names, or null when absent (the default depends on other options).</summary>
    public static Option<string?> OptionalChoice(string name, string what, params string[] allowed) =>
        new("--" + name)
        {
            CustomParser = r =>
            {
                var text = Text(r, name);
                if (text is null || allowed.Contains(text, StringComparer.Ordinal)) return text;
                r.AddError($"Unknown {what} '{text}' for --{name}. Use {List(allowed)}.");
                return null;
            },
        };

    public static Option<string> String(string name, string fallback) =>
        new("--" + name) { DefaultValueFactory = _ => fallback, CustomParser = r => Text(r, name) ?? fallback };

    public static Option<string?> OptionalString(string name) => new("--" + name) { CustomParser = r => Text(r, name) };

    public static Option<bool> Flag(string name) => new("--" + name) { Arity = ArgumentArity.Zero };

    /// <summary>yes/no (also true/false, on/off); null when absent, so that the default can depend on other options. Not an
    /// Option&lt;bool?&gt;: System.CommandLine gives a bool option the next word only when it reads as a bool, so "--x no"
    /// was refused as an unknown argument 'no'. Read it with <see cref="Answer"/>.</summary>
    public static Option<YesNoAnswer?> YesNo(string name) =>
        new("--" + name)
        {
            CustomParser = r => Text(r, name) switch
            {
                "yes" or "true" or "on" => YesNoAnswer.Yes,
                "no" or "false" or "off" => YesNoAnswer.No,
                null => null,
                var v => Error<YesNoAnswer?>(r, $"--{name} must be yes or no; got '{v}'.", null),
            },
        };

    /// <summary>A yes/no option's value: true, false, or null when it was not given.</summary>
    public static bool? Answer(this ParseResult result, Option<YesNoAnswer?> option) => result.GetValue(option) switch
    {
        YesNoAnswer.Yes => true,
        YesNoAnswer.No => false,
        _ => null,
    };

    /// <summary>Positive integers separated by commas, each at most <paramref name="max"/>; "none" or "" is the empty list.</summary>
    public static Option<int[]?> IntList(string name, int max) =>
        new("--" + name)
        {
            Arity = ArgumentArity.ExactlyOne,
            CustomParser = r =>
            {
                var text = Text(r, name);
                if (text is null) return null;
                if (text is "" or "none") return [];
                var parts = text.Split(',');
                var values = new int[parts.Length];
                for (int i = 0; i < parts.Length; i++)
                    if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out values[i]) || values[i] < 1 || values[i] > max)
                        return Error<int[]?>(r, $"--{name} must be a comma-separated list of integers from 1 to {max} (or 'none'); got '{text}'.", null);
                return values;
            },
        };

    /// <summary>"1 epoch", "2 epochs": a count with its noun, singular for one.</summary>
    public static string Count(int count, string noun) => count == 1 ? $"1 {noun}" : string.Create(CultureInfo.InvariantCulture, $"{count} {noun}s");

    public static string List(IReadOnlyList<string> names) =>
        names.Count == 1 ? names[0] : $"{string.Join(", ", names.Take(names.Count - 1))} or {names[^1]}";

    /// <summary>True when the option was given on the command line (not filled in by its default).</summary>
    public static bool Given(this ParseResult result, Option option) => result.GetResult(option) is { Implicit: false };

    public static bool Given(this CommandResult result, Option option) => result.GetResult(option) is { Implicit: false };

    private static string? Text(ArgumentResult r, string name)
    {
        if (r.Tokens.Count == 0) return null;
        var text = r.Tokens[0].Value;
        if (text.StartsWith("--", StringComparison.Ordinal))
            return Error<string?>(r, $"--{name} needs a value; got the option '{text}' instead.", null);
        return text;
    }

    private static int ParseInt(ArgumentResult r, string name, int min, int max)
    {
        var text = Text(r, name);
        if (text is null) return min;
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max) return value;
        return Error(r, max == int.MaxValue
            ? $"--{name} must be an integer ≥ {min}; got '{text}'."
            : $"--{name} must be an integer from {min} to {max}; got '{text}'.", min);
    }

    private static float ParseFloat(ArgumentResult r, string name, Func<float, bool> valid, string requirement)
    {
        var text = Text(r, name);
        if (text is null) return 0;
        if (float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && float.IsFinite(value) && valid(value)) return value;
        // NaN and ±∞ parse as floats but are no setting; say so rather than blame the sign.
        if (float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && !float.IsFinite(value))
            return Error(r, $"--{name} must be a finite number; got '{text}'.", 0f);
        return Error(r, $"--{name} must be {requirement}; got '{text}'.", 0f);
    }

    private static T Error<T>(ArgumentResult r, string message, T placeholder)
    {
        r.AddError(message);
        return placeholder;
    }
}

/// <summary>The word of a yes/no option.</summary>
internal enum YesNoAnswer { No, Yes }

/// <summary>A mistake in the command line: reported without a stack trace, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);
