using Spectre.Console;

namespace ForwardAD.Cli;

/// <summary>A column of a <see cref="ConsoleTable"/>: its header and, for a column that may be left out of a narrow
/// terminal, its rank in the order of leaving out (1 first; 0: always shown).</summary>
internal sealed record TableColumnSpec(string Header, int DropOrder = 0);

/// <summary>
/// The result tables of the commands, sized to the console: each header on one line when the table fits; otherwise
/// each header is stacked word by word (no word is ever cut), and when the table is still too wide, the optional
/// columns are left out in their order, which the returned list names (the metrics CSV keeps every column).
/// </summary>
internal static class ConsoleTable
{
    /// <summary>The table of <paramref name="rows"/> (cells in <paramref name="columns"/>' order) for a console
    /// <paramref name="width"/> columns wide, and the headers of the columns left out.</summary>
    public static (Table Table, IReadOnlyList<string> Dropped) Build(IReadOnlyList<TableColumnSpec> columns, IReadOnlyList<string[]> rows, int width)
    {
        var shown = Enumerable.Range(0, columns.Count).ToList();
        bool stacked = Width(columns, rows, shown, stacked: false) > width;
        if (stacked)
            foreach (var drop in Enumerable.Range(0, columns.Count).Where(c => columns[c].DropOrder > 0).OrderBy(c => columns[c].DropOrder))
            {
                if (Width(columns, rows, shown, stacked: true) <= width) break;
                shown.Remove(drop);
            }
        var table = new Table();
        foreach (int c in shown)
        {
            var header = Markup.Escape(columns[c].Header);
            table.AddColumn(new TableColumn(new Markup(stacked ? header.Replace(' ', '\n') : header)));
        }
        foreach (var row in rows) table.AddRow([.. shown.Select(c => Markup.Escape(row[c]))]);
        return (table, [.. Enumerable.Range(0, columns.Count).Except(shown).Select(c => columns[c].Header)]);
    }

    /// <summary>The characters a table of the <paramref name="shown"/> columns takes on a line: every column's widest
    /// cell or header line, plus a border and a space of padding on each side of every cell.</summary>
    private static int Width(IReadOnlyList<TableColumnSpec> columns, IReadOnlyList<string[]> rows, IReadOnlyList<int> shown, bool stacked) =>
        shown.Sum(c => Math.Max(stacked ? columns[c].Header.Split(' ').Max(w => w.Length) : columns[c].Header.Length,
            rows.Count == 0 ? 0 : rows.Max(r => r[c].Length)) + 3) + 1;

    /// <summary>The line under a table whose columns <paramref name="dropped"/> were left out, or null.</summary>
    public static string? DroppedNote(IReadOnlyList<string> dropped, string csv) => dropped.Count == 0 ? null
        : $"narrow terminal: {string.Join(", ", dropped)} not shown; every column is in {csv}";
}
