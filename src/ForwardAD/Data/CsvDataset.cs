using System.Globalization;
using System.IO.Compression;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// CSV files of numbers, one example per row: the features, then the class label in the last column.
/// <list type="bullet">
/// <item><b>Delimiter.</b> Detected from the first non-blank row: a tab if it has one, else <c>;</c> if it has one,
/// else <c>,</c> (the rarer character wins, so a <c>;</c> file with decimal commas is read as <c>;</c>-separated
/// and its decimal commas are reported). Every later row must use the same delimiter; a row that does not is an
/// error naming the delimiter it uses and the one expected. Numbers use '.' as the decimal point.</item>
/// <item><b>Header.</b> The first row is a header only when none of its fields is a number (a row of names); it
/// then fixes the number of columns. A first row with some numbers and some other fields is an error (usually a
/// typo in the first example), not a header that is silently dropped.</item>
/// <item><b>Features.</b> Finite numbers; NaN, infinities and values beyond float32 are errors.</item>
/// <item><b>Labels.</b> Whole numbers 0 ≤ label &lt; <see cref="MaxClasses"/> ("3" or "3.0"); the class count is the
/// largest label + 1 (at least 2) unless given.</item>
/// </list>
/// Blank lines are skipped; a UTF-8 byte-order mark is ignored; files ending in .gz are decompressed. Every error
/// names the file, the line (1-based) and, for a bad value, the column, with what was expected.
/// </summary>
public static class CsvDataset
{
    /// <summary>
    /// The most classes a data set may have (labels 0..9,999). A larger label is almost always a column that is
    /// not a class id (a regression target, a row id) or ids that need renumbering; without this limit one such
    /// label silently builds a model with a million outputs.
    /// </summary>
    public const int MaxClasses = 10_000;

    /// <summary>Loads a CSV file (or a gzip-compressed one, by its .gz ending); see the type's notes for the format.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="IOException">The path is a directory, or reading failed.</exception>
    /// <exception cref="InvalidDataException">The contents are not a valid data set; the message says where and why.</exception>
    public static Dataset Load(string path, float featureScale = 1f, int? classes = null)
    {
        const string expected = "a CSV file (.csv or .csv.gz)";
        DataFile.CheckIsFile(path, expected);
        // A .gz file is decompressed whole first: GZipStream alone would let a cut file load with rows missing.
        using var stream = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)
            ? new MemoryStream(DataFile.ReadAllBytes(path, expected))
            : (Stream)File.OpenRead(path);
        using var reader = new StreamReader(stream);
        return Parse(reader, path, featureScale, classes);
    }

    /// <summary>Parses CSV text; <paramref name="source"/> names it in errors. See the type's notes for the format.</summary>
    public static Dataset Parse(TextReader reader, string source, float featureScale = 1f, int? classes = null)
    {
        if (classes is { } given && given is < 2 or > MaxClasses)
            throw new ArgumentOutOfRangeException(nameof(classes), given, $"{source}: the class count must be 2..{MaxClasses}.");
        if (!float.IsFinite(featureScale) || featureScale == 0)
            throw new ArgumentOutOfRangeException(nameof(featureScale), featureScale, $"{source}: the feature scale must be finite and non-zero.");
        var features = new List<float>();
        var labels = new List<float>();
        int width = -1, lineNumber = 0, firstRowLine = 0, largestLabel = 0;
        bool hasHeader = false;
        char delimiter = '\0';
        string? line;
        while ((line = ReadLine(reader, source, lineNumber)) is not null)
        {
            lineNumber++;
            if (lineNumber == 1) line = line.TrimStart('\uFEFF');
            if (string.IsNullOrWhiteSpace(line)) continue;
            if (delimiter == '\0') delimiter = DetectDelimiter(line);
            var fields = line.Split(delimiter);
            if (width < 0)
            {
                firstRowLine = lineNumber;
                if (fields.Length < 2)
                    throw new InvalidDataException($"{source}, line {lineNumber}: a row needs at least one feature and a label; found 1 field " +
                        $"(no ',', ';' or tab in '{Excerpt(line)}'). Separate the columns with ',', ';' or a tab.");
                width = fields.Length;
                int numbers = fields.Count(f => IsNumber(f, delimiter));
                if (numbers == 0) { hasHeader = true; continue; }
                if (numbers < fields.Length)
                {
                    int bad = Array.FindIndex(fields, f => !IsNumber(f, delimiter));
                    throw new InvalidDataException($"{source}, line {lineNumber}, column {bad + 1}: '{Excerpt(fields[bad])}' is not a number{WhyNotNumber(fields[bad], delimiter)}, " +
                        "but other fields of this first row are. A header row must be names only (no field a number) and a data row numbers only: fix the typo, or rename the header's numeric columns.");
                }
            }
            else if (fields.Length != width)
                throw new InvalidDataException($"{source}, line {lineNumber}: {fields.Length} field{(fields.Length == 1 ? "" : "s")}, but the first row has {width} " +
                    $"({(hasHeader ? "the header, " : "")}line {firstRowLine}): every row needs the same columns, the features then a label. The file is ragged." +
                    OtherDelimiter(line, delimiter, firstRowLine));
            for (int j = 0; j < width - 1; j++)
            {
                if (!float.TryParse(fields[j], NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !float.IsFinite(value * featureScale))
                    throw new InvalidDataException($"{source}, line {lineNumber}, column {j + 1}: '{Excerpt(fields[j])}' is not a finite number{WhyNotNumber(fields[j], delimiter)}.");
                features.Add(value * featureScale);
            }
            int label = ParseLabel(fields[^1], source, lineNumber, width, classes);
            largestLabel = Math.Max(largestLabel, label);
            labels.Add(label);
        }
        if (width < 0) throw new InvalidDataException($"{source}: the file is empty; expected rows of numbers, the features then a class label.");
        if (labels.Count == 0) throw new InvalidDataException($"{source}: only a header (line {firstRowLine}), no data rows.");
        int classCount = classes ?? Math.Max(largestLabel + 1, 2);
        return new Dataset(Path.GetFileName(source), new Shape(width - 1), classCount, [.. features], [.. labels]);
    }

    /// <summary>A tab if the row has one, else ';' if it has one, else ','. The rarer character wins: a ';' file
    /// may hold decimal commas, a tab file either.</summary>
    private static char DetectDelimiter(string line) => line.Contains('\t') ? '\t' : line.Contains(';') ? ';' : ',';

    private static string Name(char delimiter) => delimiter == '\t' ? "tab" : $"'{delimiter}'";

    /// <summary>Whether a field reads as a number, counting decimal commas ("1,5" in a ';' or tab file): such a row
    /// is data with a fixable format, not a header.</summary>
    private static bool IsNumber(string field, char delimiter) =>
        double.TryParse(field, NumberStyles.Float, CultureInfo.InvariantCulture, out _) || IsDecimalComma(field, delimiter);

    private static bool IsDecimalComma(string field, char delimiter) =>
        delimiter != ',' && field.Contains(',') && double.TryParse(field.Replace(',', '.'), NumberStyles.Float, CultureInfo.InvariantCulture, out _);

    /// <summary>A hint when a row holds another delimiter than the file's.</summary>
    private static string OtherDelimiter(string text, char delimiter, int firstRowLine)
    {
        foreach (var other in (ReadOnlySpan<char>)['\t', ';', ','])
            if (other != delimiter && text.Contains(other))
                return $" This line contains {Name(other)}, but the file's delimiter (detected from line {firstRowLine}) is {Name(delimiter)}: use one delimiter throughout.";
        return "";
    }

    /// <summary>Why a field is not a usable number, when there is more to say than its text.</summary>
    private static string WhyNotNumber(string field, char delimiter)
    {
        if (IsDecimalComma(field, delimiter))
            return "; decimal commas are not supported: write '.' as the decimal point (1.5, not 1,5)";
        foreach (var other in (ReadOnlySpan<char>)['\t', ';', ','])
            if (other != delimiter && field.Contains(other))
                return $"; it contains {Name(other)}, but the file's delimiter is {Name(delimiter)}: use one delimiter throughout";
        return double.TryParse(field, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            ? " (NaN, infinities and values beyond ±3.4e38 are not allowed)"
            : "";
    }

    /// <summary>The label: a whole number 0 ≤ label &lt; <see cref="MaxClasses"/> (and &lt; <paramref name="classes"/> when given).
    /// Parsed as a double so that "3.0" is accepted and "1e10" is reported as too large, not overflowed.</summary>
    private static int ParseLabel(string field, string source, int lineNumber, int column, int? classes)
    {
        string where = $"{source}, line {lineNumber}, column {column}";
        if (!double.TryParse(field, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !double.IsFinite(value))
            throw new InvalidDataException($"{where}: the label (last column) must be a whole number from 0 to {MaxClasses - 1}; got '{Excerpt(field)}'.");
        if (value < 0 || value != Math.Floor(value))
            throw new InvalidDataException($"{where}: the label (last column) must be a whole number ≥ 0; got '{Excerpt(field)}'.");
        if (value >= MaxClasses)
            throw new InvalidDataException($"{where}: label {Excerpt(field)} is too large: at most {MaxClasses} classes (labels 0..{MaxClasses - 1}) are supported. " +
                "If the labels are class ids, renumber them 0..K−1; if the last column is not a class label (a regression target, a row id), move the label to the last column.");
        int label = (int)value;
        if (classes is { } count && label >= count)
            throw new InvalidDataException($"{where}: label {label} is out of range for {count} classes.");
        return label;
    }

    /// <summary>Reads one line; a damaged gzip stream or a failing read is reported with the file and line.</summary>
    private static string? ReadLine(TextReader reader, string source, int linesRead)
    {
        try
        {
            return reader.ReadLine();
        }
        catch (InvalidDataException e) // from a GZipStream the caller passed
        {
            throw new InvalidDataException($"{source}, line {linesRead + 1}: not a valid gzip file, or a damaged one ({e.Message}).", e);
        }
        catch (IOException e)
        {
            throw new IOException($"{source}, line {linesRead + 1}: reading failed ({e.Message}).", e);
        }
    }

    /// <summary>A field as shown in a message: at most 40 characters, so a damaged file cannot flood the terminal.</summary>
    private static string Excerpt(string text) => text.Length <= 40 ? text : text[..37] + "...";
}

/// <summary>
/// The embedded default data set: 1,797 handwritten digits, 8×8 grey levels 0..16 scaled to [0, 1] (feature shape
/// [8, 8, 1], channels last),
/// labels 0..9 (UCI "Optical Recognition of Handwritten Digits", Alpaydin &amp; Kaynak 1998, CC BY 4.0,
/// as redistributed with scikit-learn). No download needed.
/// </summary>
public static class Digits
{
    /// <summary>Decompresses and parses the embedded copy: 1,797 examples, features [8, 8, 1] in [0, 1], 10 classes.</summary>
    /// <exception cref="InvalidOperationException">The embedded resource is missing or not 64 features per example.</exception>
    public static Dataset Load()
    {
        using var stream = typeof(Digits).Assembly.GetManifestResourceStream("ForwardAD.Data.digits.csv.gz")
            ?? throw new InvalidOperationException("The embedded digits data set is missing from the ForwardAD assembly.");
        using var reader = new StreamReader(new GZipStream(stream, CompressionMode.Decompress));
        // 8×8 grey images, row by row: the feature shape [8, 8, 1] lets a CNN take them as channels-last images
        // (an MLP sees the same 64 values in the same order).
        var data = CsvDataset.Parse(reader, "digits.csv.gz (embedded)", featureScale: 1f / 16f, classes: 10);
        if (data.FeatureSize != 64) throw new InvalidOperationException($"The embedded digits data set has {data.FeatureSize} features per example; expected 8×8 = 64.");
        return data with { Name = "digits", FeatureShape = new Shape(8, 8, 1) };
    }
}
