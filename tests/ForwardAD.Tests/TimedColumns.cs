namespace ForwardAD.Tests;

/// <summary>The metrics CSVs the tool writes without their timing columns: the only ones in which a resumed or replayed
/// run may differ from a straight one.</summary>
internal static class TimedColumns
{
    private static readonly string[] Names = ["tokens_per_second", "training_seconds", "examples_per_second", "wall_seconds", "seconds_per_step", "seconds"];

    /// <summary>Every line of the CSV at <paramref name="path"/>, its timing columns left out (at least one must be there:
    /// a file without any is not the CSV the caller meant).</summary>
    public static string[] Untimed(string path)
    {
        var lines = File.ReadAllLines(path);
        var header = lines[0].Split(',');
        int[] kept = [.. Enumerable.Range(0, header.Length).Where(c => !Names.Contains(header[c]))];
        Assert.True(kept.Length < header.Length, $"{path} has no timing column");
        return [.. lines.Select(line => { var cells = line.Split(','); return string.Join(',', kept.Select(c => cells[c])); })];
    }
}
