using System.Globalization;
using System.Xml.Linq;
using ForwardAD.Cli;

namespace ForwardAD.Tests;

/// <summary>
/// What the figures say: a title naming the run, whole-number ticks on epoch and step axes, legends by layer name,
/// accuracy in percent; and `forwardad plot` on the CSV of mixer-table, drawing what the command draws. (The studies'
/// CSVs are redrawn in <see cref="StudyTests"/>, where the studies run.)
/// </summary>
public sealed class PlotKindsTests() : TemporaryFolderTests("forwardad-plot-kinds-")
{
    /// <summary>The texts of an SVG: titles, axis labels, tick labels, legend entries.</summary>
    private static List<string> Texts(string svg) =>
        [.. XDocument.Load(svg).Descendants().Where(e => e.Name.LocalName == "text").Select(e => e.Value.Trim())];

    /// <summary>The tick labels along x of a figure of one row of panels: the numbers lowest in the image (the y axes'
    /// labels sit higher, beside their axis).</summary>
    private static List<string> XTicks(string svg)
    {
        var numbers = XDocument.Load(svg).Descendants().Where(e => e.Name.LocalName == "text")
            .Select(e => (Text: e.Value.Trim(), Match: System.Text.RegularExpressions.Regex.Match((string?)e.Attribute("transform") ?? "", @"^translate\(\S+ (\S+)\)$")))
            .Where(t => t.Match.Success && double.TryParse(t.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
            .Select(t => (t.Text, Y: double.Parse(t.Match.Groups[1].Value, CultureInfo.InvariantCulture))).ToList();
        double bottom = numbers.Max(n => n.Y);
        return [.. numbers.Where(n => n.Y == bottom).Select(n => n.Text).Distinct()];
    }

    private static string I(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>An lm CSV of three evaluations at steps 1, 2, 3: the legend names the sites by layer (cosine_block1.q is
    /// block1.q, not "site 1"), the step axis ticks whole numbers only, accuracy is in percent, and the title names the run:
    /// the file and, since its name lacks it, the configuration hash of the run column.</summary>
    [Fact]
    public void Lm_figure_names_the_run_and_the_layers_and_ticks_whole_steps()
    {
        var csv = PathOf("tiny-lm.csv");
        File.WriteAllLines(csv,
        [
            "step,train_bits_per_char,validation_bits_per_char,validation_accuracy,cosine_global,tokens_per_second,training_seconds,run,cosine_block1.q,cosine_head,exchanged_bytes_per_step",
            .. Enumerable.Range(1, 3).Select(s => $"{s},{I(4.0 / s)},{I(4.2 / s)},{I(0.3 + 0.1 * s)},{I(0.1 * s)},1000,{s},0123abcd,{I(0.05 * s)},{I(0.2)},0"),
        ]);
        var (png, svg, kind) = MetricsPlots.Draw(csv);
        Assert.Equal("lm", kind);
        CliTests.AssertFigure(PathOf("tiny-lm"), columns: 3, rows: 1);
        Assert.Equal(PathOf("tiny-lm.png"), png);
        var texts = Texts(svg);
        Assert.Contains("lm: tiny-lm (configuration 0123abcd)", texts);
        Assert.Contains("block1.q", texts);
        Assert.Contains("head", texts);
        Assert.DoesNotContain(texts, t => t.StartsWith("site ", StringComparison.Ordinal));
        Assert.Contains("accuracy (%)", texts);
        Assert.Contains(texts, t => t is "50" or "55" or "60"); // accuracies 40–60 %, not 0.4–0.6
        Assert.Equal(["1", "2", "3"], XTicks(svg)); // not 1.5, 2.5 between the steps
    }

    /// <summary>train's default file name already holds the configuration hash: the title does not repeat it.</summary>
    [Fact]
    public void Train_figure_title_is_the_run_name_once()
    {
        var csv = PathOf("train-grape-seed1-feed42.csv");
        var reports = Enumerable.Range(0, 2).Select(e => new Training.EpochReport(e, 1.0 / (e + 1), 0.5, 1.0, 0.5, [0.1], 0.15, 1000, TimeSpan.FromSeconds(1))).ToList();
        MetricsFile.Write(csv, reports, "feed42", ["layer1"], []);
        var texts = Texts(MetricsPlots.Draw(csv).Svg);
        Assert.Contains("train: train-grape-seed1-feed42", texts);
    }

    /// <summary>A training-curve study's CSV, one epoch: the epoch axis has whole-number ticks (no 0.5), the accuracy chart
    /// is in percent, and the file draws as its own study even though bias-variance and downstream share the columns.</summary>
    [Fact]
    public void Study_curves_tick_whole_epochs_and_draw_accuracy_in_percent()
    {
        foreach (var study in new[] { "downstream", "bias-variance" })
        {
            var csv = PathOf($"{study}.csv");
            File.WriteAllLines(csv,
            [
                MetricsPlots.StudyCurvesHeader,
                .. new[] { "activation perturbation (per-layer)", "2-layer downstream" }.SelectMany(g => Enumerable.Range(0, 2).Select(e =>
                    $"{study},\"{g}\",{e},{I(2.0 - e)},{I(0.42 + 0.2 * e)},{I(2.1 - e)},{I(0.41 + 0.2 * e)},{(e == 0 ? "NaN" : "0.3")}")),
            ]);
            var (files, kind) = MetricsPlots.DrawAll(csv);
            Assert.Equal($"study {study}", kind);
            Assert.Equal(2, files.Count);
            foreach (var (_, svg) in files)
            {
                var texts = Texts(svg);
                Assert.Contains($"study {study}: {Path.GetFileName(Folder)}/{study}", texts); // the folder (--out) and the file
                var ticks = XTicks(svg);
                Assert.Contains("1", ticks);
                Assert.All(ticks, t => Assert.DoesNotContain(".", t)); // not 0.2, 0.5 between the epochs
            }
        }
        var accuracy = Texts(PathOf("downstream-accuracy.svg"));
        Assert.Contains("test accuracy (%)", accuracy);
        Assert.Contains(accuracy, t => t is "50" or "55" or "60"); // 41–61 %, not 0.41–0.61
        Assert.True(File.Exists(PathOf("bias-variance-cosine.png")));
    }

    /// <summary>mixer-table draws its table as a figure (test accuracy in percent and cosine per method, a series per
    /// augmentation mode), titled with the table's configuration hash, variant, epochs and seeds; `plot` on its CSV draws the same figure.</summary>
    [Fact]
    public void Mixer_table_draws_its_csv_and_plot_redraws_it()
    {
        var prefix = PathOf("table");
        var (code, output, error) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p2-d8-b1-g2", "--methods", "backprop,ap", "--augment-modes", "off",
            "--epochs", "1", "--batch-size", "32", "--train-examples", "64", "--out", prefix, "--quiet");
        Assert.True(code == 0, error + output);
        Assert.Contains(prefix + ".png", output);
        CliTests.AssertFigure(prefix, columns: 2, rows: 1);
        var texts = Texts(prefix + ".svg");
        // The configuration hash of the CSV's run column, then what the rows say of the table.
        Assert.Contains(texts, t => System.Text.RegularExpressions.Regex.IsMatch(t, @"^mixer-table: table \(configuration [0-9a-f]{8}; variant ren; 1 epoch\(s\); seeds 1\)$"));
        Assert.Contains("backprop", texts); // the methods label the x axis
        Assert.Contains("ap", texts);
        Assert.Contains("test accuracy (%)", texts);

        var (redrawn, redrawnOutput, redrawnError) = CliTests.Run("plot", prefix + ".csv", "--out", PathOf("again"));
        Assert.True(redrawn == 0, redrawnError);
        Assert.Contains("mixer-table metrics", redrawnOutput);
        CliTests.AssertFigure(PathOf("again"), columns: 2, rows: 1);
        Assert.Equal(File.ReadAllBytes(prefix + ".png"), File.ReadAllBytes(PathOf("again.png")));
    }

    /// <summary>sweep.csv and summary.csv draw the sweep's figure: per configuration (the runs over the seeds) the mean test
    /// accuracy per epoch, from each ok run's metrics.csv in the folder sweep.csv names; a failed run is left out.</summary>
    [Fact]
    public void Sweep_csvs_draw_the_sweeps_figure_from_the_runs()
    {
        var sweep = PathOf("sweep");
        string Run(string name, double accuracy)
        {
            var reports = Enumerable.Range(0, 3).Select(e => new Training.EpochReport(e, 1.0, 0.5, 1.0, accuracy + 0.1 * e, [0.1], 0.15, 1000, TimeSpan.FromSeconds(1))).ToList();
            MetricsFile.Write(Path.Combine(sweep, "runs", name, "metrics.csv"), reports, name, ["layer1"], []);
            return Path.Combine("runs", name);
        }
        File.WriteAllLines(Path.Combine(sweep, "sweep.csv"),
        [
            "guesser,seed,status,exit_code,epochs,train_accuracy,test_loss,test_accuracy,best_epoch,validation_accuracy_at_best_epoch,test_accuracy_at_best_epoch,wall_seconds,error,folder",
            $"ap,1,ok,0,3,0.7,1,0.6,,,,1.00,,{Run("ap-1", 0.40)}",
            $"ap,2,ok,0,3,0.7,1,0.62,,,,1.00,,{Run("ap-2", 0.42)}",
            $"wt,1,ok,0,3,0.7,1,0.5,,,,1.00,,{Run("wt-1", 0.30)}",
            "wt,2,failed,1,0,,,,,,,0.50,error: diverged,runs/wt-2",
        ]);
        File.WriteAllLines(Path.Combine(sweep, "summary.csv"),
        [
            "guesser,runs,ok,failed,seeds,test_accuracy_mean,test_accuracy_sd,selected",
            "ap,2,2,0,1 2,0.61,0.01,",
            "wt,2,1,1,1,0.5,NaN,",
        ]);
        foreach (var (file, kind) in new[] { ("sweep.csv", "sweep"), ("summary.csv", "sweep summary") })
        {
            var stem = PathOf($"redrawn-{kind.Replace(' ', '-')}");
            var (code, output, error) = CliTests.Run("plot", Path.Combine(sweep, file), "--out", stem);
            Assert.True(code == 0, error);
            Assert.Contains($"{kind} metrics", output);
            Assert.Equal((MetricsPlots.PanelWidth + 140, MetricsPlots.PanelHeight + Plots.Figure.TitleHeight), PlotTests.PngSize(stem + ".png"));
            var texts = Texts(stem + ".svg");
            Assert.Contains($"{kind}: sweep/{Path.GetFileNameWithoutExtension(file)}", texts);
            Assert.Contains("guesser=ap (n=2)", texts);
            Assert.Contains("guesser=wt (n=1)", texts); // the failed seed left out
            Assert.Contains("test accuracy (%)", texts);
            Assert.All(XTicks(stem + ".svg"), t => Assert.DoesNotContain(".", t));
        }
    }

    /// <summary>The training-curve studies' CSVs written before their study column (as in docs/studies) still draw, each as
    /// its study, told apart by what only its rows hold.</summary>
    [Fact]
    public void Study_csvs_without_the_study_column_still_draw_as_their_study()
    {
        const string header = "guesser,epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine";
        string Rows(string guesser) => $"\"{guesser}\",0,2,0.1,2,0.1,NaN\n\"{guesser}\",1,1,0.5,1,0.5,0.3\n";
        foreach (var (study, content) in new[]
        {
            ("bias-variance", header + "\n" + Rows("directional descent") + Rows("cosine-matched to Wᵀ (per-layer)")),
            ("downstream", header + "\n" + Rows("activation perturbation (per-layer)") + Rows("1-layer downstream (per-layer)")),
            ("sharpening", header + ",first_layer_effective_rank\n" + string.Join('\n', Rows("backprop").Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l + ",5")) + "\n"),
        })
        {
            var csv = PathOf($"earlier-{study}.csv");
            File.WriteAllText(csv, content);
            var (code, output, error) = CliTests.Run("plot", csv);
            Assert.True(code == 0, error);
            Assert.Contains($"study {study} metrics", output);
        }
    }
}
