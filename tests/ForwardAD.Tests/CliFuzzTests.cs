using System.Diagnostics;

namespace ForwardAD.Tests;

/// <summary>
/// Seeded fuzzing of the command line, in process through the tool's entry point: mutated argument vectors
/// (unknown names, empty and out-of-range values, duplicated and dropped tokens, odd model specs and data
/// sources) must each end in exit code 0, 1 or 2 with a one-line "error: …" on stderr for 1 and 2 — never an
/// unhandled exception or a stack trace. Runs stay tiny (a 4-unit MLP, one epoch) so that the whole test takes
/// seconds; the output options are fixed and appended last, so nothing is written outside a temporary folder (and
/// --no-plot on most lines).
/// </summary>
public sealed class CliFuzzTests() : TemporaryFolderTests("forwardad-clifuzz-")
{
    private static readonly string[] TrainOptions =
    [
        "--guesser", "--mode", "--guesses", "--k", "--power", "--cosine", "--feedback-init", "--grape-rule", "--grape-lr",
        "--grape-decay", "--grape-noise", "--grape-renormalize", "--grape-average", "--grape-placement", "--optimizer", "--lr",
        "--momentum", "--weight-decay", "--clip", "--schedule", "--warmup", "--decay", "--hidden", "--layers", "--width",
        "--activation", "--data", "--test-data", "--test-fraction", "--standardize", "--seed", "--epochs", "--batch-size",
        "--cosine-every", "--quiet", "--device", "--tf32", "--resume",
        // not options
        "--epochz", "--", "-x", "--hidden-", "--LR", "---lr", "--lr=", "-h",
    ];

    private static readonly string[] NumericOptions =
    [
        "--guesses", "--k", "--power", "--cosine", "--grape-lr", "--grape-decay", "--grape-noise", "--lr", "--momentum", "--weight-decay",
        "--clip", "--warmup", "--decay", "--layers", "--test-fraction", "--seed", "--epochs", "--batch-size", "--cosine-every",
        "--size", "--steps", "--seeds", "--noise",
    ];

    private static readonly string[] ToyOptions = ["--size", "--steps", "--seeds", "--lr", "--decay", "--noise", "--bogus"];

    private static readonly string[] Numbers =
        ["", " ", "-1", "0", "1", "2", "3", "0.5", "-0.5", "1e-3", "NaN", "-Infinity", "Infinity", "1e40", "-1e40", "99999999999", "2147483648", "abc", "0x10", "1,5", "½"];

    private static readonly string[] Names =
    [
        "backprop", "ap", "wt", "directional", "downstream", "mixing", "self-sharpening", "wt-power", "cosine-matched", "dfa", "grape",
        "per-layer", "joint", "xavier", "gaussian", "alt1", "alt2", "original-no-noise", "h", "a", "yes", "no", "maybe",
        "sgd", "momentum", "nesterov", "adam", "adamw", "stable-adamw", "constant", "step", "exponential", "cosine",
        "relu", "tanh", "gelu", "identity", "softmax", "cpu", "cuda", "cuda:7", "cuda:x", "gpu", "--quiet", "train",
    ];

    private static readonly string[] ModelSpecs =
        ["4", "4,4", "3,2,3", "none", "", "0", "-4", "4,,4", ",", "4,", "4,a", "4;4", " 4", "4.5", "1e3", "99999999999", "46341,46341", "2147483647", "16000000,16000000"];

    private string[] Sources() =>
    [
        "digits", "", "foo:bar", "idx:", "idx:a", $"idx:{Folder},{Folder}", "cifar10:", $"cifar10:{Path.Combine(Folder, "none.bin")}",
        Path.Combine(Folder, "missing.csv"), Folder, Path.Combine(Folder, "tiny:1.csv"), Path.Combine(Folder, "narrow.csv"),
        Path.Combine(Folder, "ragged.csv"), Path.Combine(Folder, "empty.csv"), "C:\\data.csv",
    ];

    [Fact]
    public void Mutated_command_lines_end_in_exit_code_0_1_or_2_with_a_message()
    {
        File.WriteAllLines(Path.Combine(Folder, "tiny:1.csv"), Enumerable.Range(0, 48).Select(i => $"{i % 7},{i % 5},{i % 3}"));
        File.WriteAllLines(Path.Combine(Folder, "narrow.csv"), Enumerable.Range(0, 48).Select(i => $"{i % 7},{i % 3}"));
        File.WriteAllText(Path.Combine(Folder, "ragged.csv"), "1,2,0\n1,1\n");
        File.WriteAllText(Path.Combine(Folder, "empty.csv"), "");
        var sources = Sources();
        var random = new System.Random(20250110);
        var failures = new List<string>();
        var codes = new int[3];
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < 400; i++)
        {
            var (mutable, outputs) = (i % 10) switch
            {
                < 7 => (new List<string> { "train", "--hidden", "4", "--epochs", "1", "--quiet" }, new[] { "--metrics", Path.Combine(Folder, $"m{i}.csv") }),
                < 9 => (new List<string> { "grape-toy", "--size", "6", "--steps", "2", "--seeds", "1" }, new[] { "--csv", Path.Combine(Folder, $"t{i}.csv") }),
                _ => (new List<string> { "cosine", "--hidden", "4", "--epochs", "1", "--every", "40", "--guessers", "ap,backprop" }, new[] { "--csv", Path.Combine(Folder, $"c{i}.csv") }),
            };
            bool toy = mutable[0] == "grape-toy";
            int mutations = 1 + random.Next(2);
            for (int m = 0; m < mutations; m++)
            {
                int at = 1 + random.Next(mutable.Count);
                switch (random.Next(10))
                {
                    case 8 or 9 when !toy: // a data source
                        mutable.AddRange([random.Next(3) == 0 ? "--test-data" : "--data", sources[random.Next(sources.Length)]]);
                        break;
                    case 0 or 1: // an option with a value from the pools
                        var name = toy ? ToyOptions[random.Next(ToyOptions.Length)] : TrainOptions[random.Next(TrainOptions.Length)];
                        var pool = name switch
                        {
                            "--hidden" or "--width" => ModelSpecs,
                            "--data" or "--test-data" or "--resume" => sources,
                            _ when NumericOptions.Contains(name) => Numbers,
                            _ => Names,
                        };
                        mutable.InsertRange(Math.Min(at, mutable.Count), [name, pool[random.Next(pool.Length)]]);
                        break;
                    case 2: // a model spec
                        mutable.AddRange(random.Next(2) == 0 ? ["--hidden", ModelSpecs[random.Next(ModelSpecs.Length)]] : ["--layers", Numbers[random.Next(Numbers.Length)], "--width", ModelSpecs[random.Next(ModelSpecs.Length)]]);
                        break;
                    case 3 when mutable.Count > 1: // drop a token (a value becomes an option's value, or dangles)
                        mutable.RemoveAt(1 + random.Next(mutable.Count - 1));
                        break;
                    case 4 when mutable.Count > 1: // duplicate a token
                        int d = 1 + random.Next(mutable.Count - 1);
                        mutable.Insert(d, mutable[d]);
                        break;
                    case 5: // a number replaced
                        int n = mutable.FindIndex(1, t => t.Length > 0 && char.IsAsciiDigit(t[0]));
                        if (n > 0) mutable[n] = Numbers[random.Next(Numbers.Length)];
                        break;
                    case 6: // a garbage token
                        mutable.Insert(Math.Min(at, mutable.Count), Names[random.Next(Names.Length)]);
                        break;
                    default: // name=value form
                        mutable.Add($"{(toy ? "--steps" : "--lr")}={Numbers[random.Next(Numbers.Length)]}");
                        break;
                }
            }
            if (random.Next(20) == 0) mutable.RemoveAt(0); // no command: train is the default
            // Plots (drawn at the end of a successful run) on one line in eight: enough to fuzz them, not the cost of each.
            string[] args = [.. mutable, .. outputs, .. i % 8 == 0 ? Array.Empty<string>() : ["--no-plot"]];
            var line = string.Join(' ', args.Select(a => a.Length == 0 || a.Contains(' ') ? $"'{a}'" : a));
            try
            {
                var (code, output, error) = CliTests.Run(args);
                if (code is < 0 or > 2) failures.Add($"exit code {code}: {line}");
                else codes[code]++;
                if (code != 0 && !(error.StartsWith("error: ", StringComparison.Ordinal) && error.Trim().Length > "error: ".Length))
                    failures.Add($"exit code {code} without an error message: {line}\n{error}");
                if (error.Contains("   at ", StringComparison.Ordinal) || (error + output).Contains('\u001b'))
                    failures.Add($"stack trace or colour in the output: {line}\n{error}");
            }
            catch (Exception e)
            {
                failures.Add($"{e.GetType().Name}: {e.Message}\n  for: {line}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of 400 command lines failed:\n{string.Join("\n", failures.Take(20))}");
        // The fuzzer reaches every outcome: successful runs, data errors and usage errors.
        Assert.All(codes, c => Assert.True(c > 0, $"exit codes 0/1/2: {string.Join("/", codes)}"));
        TestContext.Current.TestOutputHelper?.WriteLine($"400 command lines in {watch.Elapsed.TotalSeconds:F1} s");
    }
}
