using ForwardAD.Backends;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Studies;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>The studies' measures on matrices with known answers, and every `study` command end to end on a tiny
/// configuration: exit code, the CSV's columns, a PNG and an SVG of the chart's size.</summary>
public sealed class StudyTests() : TemporaryFolderTests("forwardad-study-")
{
    [Fact]
    public void Singular_values_of_known_matrices()
    {
        // 3×2 with orthogonal columns of norms 3 and 4.
        Assert.Equal([4, 3], Spectra.SingularValues([3, 0, 0, 4, 0, 0], 3, 2), new Tolerance(1e-12));
        // Its transpose (2×3) has the same singular values.
        Assert.Equal([4, 3], Spectra.SingularValues([3, 0, 0, 0, 4, 0], 2, 3), new Tolerance(1e-12));
        // A rank-one u vᵀ: σ₁ = ‖u‖‖v‖ = 5·√2, σ₂ = 0.
        var sigma = Spectra.SingularValues([3, 3, 4, 4], 2, 2);
        Assert.Equal(5 * Math.Sqrt(2), sigma[0], 10);
        Assert.Equal(0, sigma[1], 6);
        double p = 4.0 / 7, q = 3.0 / 7;
        Assert.Equal(Math.Exp(-(p * Math.Log(p) + q * Math.Log(q))), Spectra.EffectiveRank([3, 0, 0, 4, 0, 0], 3, 2), 12);
        Assert.Equal(1, Spectra.EffectiveRank([3, 3, 4, 4], 2, 2), 6);
        Assert.Equal(3, Spectra.EffectiveRank([2, 0, 0, 0, 2, 0, 0, 0, 2], 3, 3), 12);
    }

    [Fact]
    public void Explained_variance_of_known_clouds()
    {
        // ±a e₁ and ±b e₂ (mean 0): variances a²/2 and b²/2 along the axes: [a²/(a²+b²), 1].
        const float a = 3, b = 1;
        const double aa = a * a, bb = b * b;
        var explained = Spectra.ExplainedVariance([a, 0, -a, 0, 0, b, 0, -b], 4, 2);
        Assert.Equal([aa / (aa + bb), 1.0], explained, new Tolerance(1e-12));
        // Three points on a line through (1, 1, 1) with an offset: one component explains everything; 3 samples give 3 entries.
        explained = Spectra.ExplainedVariance([1, 2, 3, 2, 3, 4, 3, 4, 5], 3, 3);
        Assert.Equal(1, explained[0], 10);
        Assert.Equal(3, explained.Length);
        // More features than samples: the sample Gram is used; 2 samples span one direction.
        explained = Spectra.ExplainedVariance([1, 0, 0, 0, 0, 1, 0, 0], 2, 4);
        Assert.Equal([1.0, 1.0], explained, new Tolerance(1e-12));
    }

    private sealed class Tolerance(double bound) : IEqualityComparer<double>
    {
        public bool Equals(double x, double y) => Math.Abs(x - y) <= bound;
        public int GetHashCode(double obj) => 0;
    }

    /// <summary>The saturation study reaches every power of two; the exact gradient averages to itself (cosine 1).</summary>
    [Fact]
    public void Saturation_study_measures_every_power_of_two()
    {
        var problem = Problem.RandomMlp(5, ElementwiseFunction.Relu, 2, widths: [6, 5], inputs: 4, outputs: 3);
        var points = SaturationStudy.Run(problem.Parameters, problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id], 2,
            [_ => Guessers.Backprop, g => Guessers.WeightTranspose(TangentMode.PerLayer, g)], 16, seed: 3);
        Assert.Equal([2, 4, 8, 16, 2, 4, 8, 16], points.Select(p => p.Guesses));
        Assert.All(points.Take(4), p => Assert.Equal(1, p.Cosine, 6));
        Assert.All(points.Skip(4), p => Assert.InRange(p.Cosine, -1, 1));
        Assert.Equal("Wᵀ (per-layer)", points[^1].Guesser);
    }

    /// <summary>The study reports each method as it finishes, and a cancelled token stops it before any more work.</summary>
    [Fact]
    public void Saturation_study_reports_each_method_and_stops_when_cancelled()
    {
        var problem = Problem.RandomMlp(5, ElementwiseFunction.Relu, 2, widths: [6, 5], inputs: 4, outputs: 3);
        var reported = new List<string>();
        Func<int, Guesser>[] methods = [_ => Guessers.Backprop, g => Guessers.WeightTranspose(TangentMode.PerLayer, g)];
        SaturationStudy.Run(problem.Parameters, problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id], 2, methods, 8, seed: 3,
            progress: new ForwardAD.Cli.Reported<string>(reported.Add));
        Assert.Equal(["backprop", "Wᵀ (per-layer)"], reported);
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        reported.Clear();
        Assert.Throws<OperationCanceledException>(() => SaturationStudy.Run(problem.Parameters, problem.Inputs[problem.Model["x"].Id],
            problem.Inputs[problem.Model["y"].Id], 2, methods, 8, seed: 3, progress: new ForwardAD.Cli.Reported<string>(reported.Add), cancellationToken: cancelled.Token));
        Assert.Empty(reported);
    }

    /// <summary>The cosine-matched estimate has, at every step, exactly the cosine that Wᵀ's estimate has on the same
    /// batch and parameters.</summary>
    [Fact]
    public void Cosine_matched_to_weight_transpose_has_its_cosine()
    {
        var problem = Problem.RandomMlp(6, ElementwiseFunction.Relu, 4, widths: [6, 5], inputs: 4, outputs: 3);
        var (x, y) = (problem.Inputs[problem.Model["x"].Id], problem.Inputs[problem.Model["y"].Id]);
        var wt = Guessers.WeightTranspose();
        var matched = new CosineMatchedTo(wt).Compile(problem.Parameters, 4);
        var reference = wt.Compile(problem.Parameters, 4);
        var oracle = new BackpropEstimator(problem.Parameters, 4);
        foreach (var e in new GradientEstimator[] { matched, reference, oracle }) e.SetBatch(x, y);
        var g = oracle.Estimate(default).Gradient.ToArray();
        for (ulong k = 0; k < 3; k++)
        {
            var key = new Random.RandomKey(7, k);
            var estimate = matched.Estimate(key).Gradient.ToArray();
            // The matched estimator draws Wᵀ with key.Derive(1).
            double theta = Metrics.Cosine(reference.Estimate(key.Derive(1)).Gradient.ToArray(), g);
            Assert.Equal(theta, Metrics.Cosine(estimate, g), 4);
        }
    }

    private (int Code, string Out, string Err) Study(params string[] args) =>
        CliTests.Run(["study", .. args, "--out", Folder]);

    /// <summary>The CSV's header and rows, each chart as a figure of one panel under the title naming the run, and `forwardad
    /// plot` on the CSV recognising the study and drawing the same charts again (the same file names after its --out stem).</summary>
    private void AssertCsvAndCharts(string csv, string header, params string[] charts)
    {
        var lines = File.ReadAllLines(Path.Combine(Folder, csv + ".csv"));
        Assert.Equal(header, lines[0]);
        Assert.True(lines.Length > 2, $"{csv}.csv has no rows");
        Assert.All(lines.Skip(1), l => Assert.Equal(header.Count(c => c == ','), l.Count(c => c == ',') - l.Split('"').Where((_, i) => i % 2 == 1).Sum(q => q.Count(c => c == ','))));
        foreach (var chart in charts)
        {
            CliTests.AssertFigure(Path.Combine(Folder, chart), columns: 1, rows: 1);
            Assert.Contains($"study {csv}: {Path.GetFileName(Folder)}/{csv}", File.ReadAllText(Path.Combine(Folder, chart + ".svg"))); // the title names the run
        }
        var redrawn = Path.Combine(Folder, "redrawn", csv);
        var (code, output, error) = CliTests.Run("plot", Path.Combine(Folder, csv + ".csv"), "--out", redrawn);
        Assert.True(code == 0, error);
        Assert.Contains($"study {csv} metrics", output);
        foreach (var chart in charts)
        {
            var stem = redrawn + chart[csv.Length..]; // saturation → STEM, sharpening-rank → STEM-rank
            CliTests.AssertFigure(stem, columns: 1, rows: 1);
            Assert.Equal(File.ReadAllBytes(Path.Combine(Folder, chart + ".png")), File.ReadAllBytes(stem + ".png")); // the same figure
        }
    }

    [Fact]
    public void Saturation_command_writes_csv_and_chart()
    {
        var (code, output, error) = Study("saturation", "--hidden", "8", "--pretrain-epochs", "0", "--max-guesses", "4", "--ridges", "0.1");
        Assert.True(code == 0, error);
        Assert.Contains("de-biased", output);
        AssertCsvAndCharts("saturation", "guesser,guesses,cosine", "saturation");
    }

    [Fact]
    public void Training_studies_write_csv_and_charts()
    {
        const string header = "study,guesser,epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine";
        var (code, _, error) = Study("bias-variance", "--hidden", "8", "--epochs", "1", "--batch-size", "128");
        Assert.True(code == 0, error);
        AssertCsvAndCharts("bias-variance", header, "bias-variance", "bias-variance-cosine");
        (code, _, error) = Study("sharpening", "--hidden", "8", "--epochs", "1", "--batch-size", "128", "--powers", "0,1");
        Assert.True(code == 0, error);
        AssertCsvAndCharts("sharpening", header + ",first_layer_effective_rank", "sharpening-cosine", "sharpening-rank", "sharpening-accuracy");
        (code, var output, error) = Study("downstream", "--layers", "3", "--width", "8", "--epochs", "2", "--batch-size", "128");
        Assert.True(code == 0, error);
        // A line per epoch counting the epochs done of all (3 guessers × 2 epochs) with the time left, none after the last.
        Assert.Contains("[1/6 epochs; about ", output);
        Assert.Contains("[6/6 epochs]", output);
        AssertCsvAndCharts("downstream", header, "downstream-accuracy", "downstream-cosine");
        Assert.Equal(3, File.ReadAllLines(Path.Combine(Folder, "downstream.csv")).Skip(1).Select(l => l.Split(',')[1]).Distinct().Count());
    }

    [Fact]
    public void Spectra_command_writes_csv_and_charts()
    {
        var (code, output, error) = Study("spectra", "--hidden", "8,6", "--pretrain-epochs", "0", "--examples", "16", "--jacobian-examples", "2");
        Assert.True(code == 0, error);
        Assert.Contains("layer1", output);
        AssertCsvAndCharts("spectra", "site,kind,k,value", "spectra-jacobian", "spectra-activations");
    }

    [Fact]
    public void Unknown_study_and_bad_options_are_usage_errors()
    {
        Assert.Equal(2, Study("nonsense").Code);
        Assert.Equal(2, Study("saturation", "--max-guesses", "6").Code);
        Assert.Equal(2, Study("sharpening", "--powers", "a,b").Code);
    }
}
