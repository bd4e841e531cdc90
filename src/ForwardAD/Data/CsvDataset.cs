using System.Globalization;
using System.IO.Compression;
using ForwardAD.Tensors;

namespace ForwardAD.Data;

/// <summary>
/// CSV files of numbers, one example per row: the features, then the class label in the last
/// column (a whole number ≥ 0). A header row is skipped when its first field is not a number.
/// Files ending in .gz are decompressed. Every error names the file, the line and what was expected.
/// </summary>
public static class CsvDataset
{
    public static Dataset Load(string path, float featureScale = 1f, int? classes = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Data file '{path}' does not exist.", path);
        using var stream = File.OpenRead(path);
        using var reader = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)
            ? new StreamReader(new GZipStream(stream, CompressionMode.Decompress))
            : new StreamReader(stream);
        return Parse(reader, path, featureScale, classes);
    }

    public static Dataset Parse(TextReader reader, string source, float featureScale = 1f, int? classes = null)
    {
        var features = new List<float>();
        var labels = new List<float>();
        int width = -1, lineNumber = 0;
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            lineNumber++;
            if (line.Length == 0) continue;
            var fields = line.Split(',');
            if (width < 0 && !float.TryParse(fields[0], NumberStyles.Float, CultureInfo.InvariantCulture, out _)) continue; // header
            if (width < 0)
            {
                if (fields.Length < 2) throw new InvalidDataException($"{source}, line {lineNumber}: a row needs at least one feature and a label; found {fields.Length} field.");
                width = fields.Length;
            }
            else if (fields.Length != width)
                throw new InvalidDataException($"{source}, line {lineNumber}: {fields.Length} fields, but the first row has {width} (features then a label). The file is ragged.");
            for (int j = 0; j < width; j++)
            {
                if (!float.TryParse(fields[j], NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || !float.IsFinite(value))
                    throw new InvalidDataException($"{source}, line {lineNumber}, column {j + 1}: '{fields[j]}' is not a finite number.");
                if (j < width - 1) features.Add(value * featureScale);
                else
                {
                    if (value < 0 || value != MathF.Floor(value))
                        throw new InvalidDataException($"{source}, line {lineNumber}: the label (last column) must be a whole number ≥ 0; got '{fields[j]}'.");
                    labels.Add(value);
                }
            }
        }
        if (labels.Count == 0) throw new InvalidDataException($"{source}: no data rows.");
        int found = (int)labels.Max() + 1;
        int classCount = classes ?? Math.Max(found, 2);
        if (found > classCount)
            throw new InvalidDataException($"{source}: label {found - 1} is out of range for {classCount} classes.");
        return new Dataset(Path.GetFileName(source), new Shape(width - 1), classCount, [.. features], [.. labels]);
    }
}

/// <summary>
/// The embedded default data set: 1,797 handwritten digits, 8×8 grey levels 0..16 scaled to [0, 1],
/// labels 0..9 (UCI "Optical Recognition of Handwritten Digits", Alpaydin &amp; Kaynak 1998, CC BY 4.0,
/// as redistributed with scikit-learn). No download needed.
/// </summary>
public static class Digits
{
    public static Dataset Load()
    {
        using var stream = typeof(Digits).Assembly.GetManifestResourceStream("ForwardAD.Data.digits.csv.gz")
            ?? throw new InvalidOperationException("The embedded digits data set is missing from the ForwardAD assembly.");
        using var reader = new StreamReader(new GZipStream(stream, CompressionMode.Decompress));
        return CsvDataset.Parse(reader, "digits.csv.gz (embedded)", featureScale: 1f / 16f, classes: 10) with { Name = "digits" };
    }
}
