namespace ForwardAD.Tests;

/// <summary>
/// A run's configuration saved with --save-config (or carried by a train or lm checkpoint) and replayed with --config
/// gives the same run, bit for bit; options given after --config take precedence; a bad file is refused naming the file
/// and the line.
/// </summary>
public sealed class ReplayTests() : TemporaryFolderTests("forwardad-replay-")
{
    private static (int Code, string Out, string Err) Run(params string[] args) => CliTests.Run(args);

    private string[] Train(string metrics) =>
        ["train", "--hidden", "8", "--epochs", "2", "--guesser", "wt", "--lr", "0.01", "--batch-size", "16", "--seed", "3", "--quiet", "--no-plot", "--metrics", PathOf(metrics)];

    [Fact]
    public void A_saved_configuration_replays_the_run_bit_for_bit_and_later_options_take_precedence()
    {
        CliTests.Succeeds([.. Train("a.csv"), "--save-config", PathOf("run.conf"), "--checkpoint", PathOf("a.safetensors")]);
        var text = File.ReadAllText(PathOf("run.conf"));
        Assert.Contains("command = train\n", text);
        Assert.Contains("guesser = wt\n", text);
        Assert.Contains("quiet = yes\n", text);
        Assert.Contains("#   optimizer = sgd", text); // a default not given: a comment, not replayed

        // The file alone (its command included), with another metrics file after it.
        CliTests.Succeeds("--config", PathOf("run.conf"), "--metrics", PathOf("b.csv"));
        Assert.Equal(TimedColumns.Untimed(PathOf("a.csv")), TimedColumns.Untimed(PathOf("b.csv")));
        // The checkpoint carries the configuration without its outputs: replayed, it is a new run with the same rows.
        CliTests.Succeeds("train", "--config", PathOf("a.safetensors"), "--metrics", PathOf("c.csv"), "--quiet", "--no-plot");
        Assert.Equal(TimedColumns.Untimed(PathOf("a.csv")), TimedColumns.Untimed(PathOf("c.csv")));
        // An option after --config wins over the file's.
        CliTests.Succeeds("--config", PathOf("run.conf"), "--epochs", "1", "--metrics", PathOf("d.csv"));
        Assert.Equal(TimedColumns.Untimed(PathOf("a.csv"))[..2], TimedColumns.Untimed(PathOf("d.csv")));
    }

    [Fact]
    public void A_language_model_checkpoint_replays_its_run()
    {
        var text = PathOf("verse.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Range(0, 200).Select(i => $"to be or not to be {i % 7}\n")));
        string[] lm = ["lm", "--text", text, "--model", "transformer:l1-h2-d16-t16", "--guesser", "ap", "--batch-size", "4", "--steps", "6", "--eval-every", "3",
            "--validation-windows", "8", "--cosine-every", "2", "--quiet", "--no-plot"];
        CliTests.Succeeds([.. lm, "--metrics", PathOf("a.csv"), "--checkpoint", PathOf("lm.safetensors")]);
        CliTests.Succeeds("--config", PathOf("lm.safetensors"), "--metrics", PathOf("b.csv"));
        Assert.Equal(TimedColumns.Untimed(PathOf("a.csv")), TimedColumns.Untimed(PathOf("b.csv")));
    }

    [Fact]
    public void Bad_configurations_are_refused_naming_the_file_and_the_line()
    {
        var file = PathOf("x.conf");
        // A file that is not a configuration is a data error (exit 1); a wrong use of --config a usage error (exit 2).
        File.WriteAllText(file, "command = train\nepochz = 3\n");
        Assert.Contains("line 2: `train` has no option --epochz", CliTests.Fails(1, "--config", file));
        File.WriteAllText(file, "command = train\nepochs 3\n");
        Assert.Contains("line 2: 'epochs 3' is not a setting", CliTests.Fails(1, "--config", file));
        File.WriteAllText(file, "command = train\nquiet = maybe\n");
        Assert.Contains("--quiet is a switch; give yes or no", CliTests.Fails(1, "--config", file));
        File.WriteAllText(file, "command = nonsense\n");
        Assert.Contains("'nonsense' is not a command", CliTests.Fails(1, "--config", file));
        File.WriteAllText(file, "");
        Assert.Contains("no 'command = …' line", CliTests.Fails(1, "--config", file));
        File.WriteAllBytes(file, [0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10, 0, 0, 0, 13]);
        var binary = CliTests.Fails(1, "--config", file);
        Assert.Contains("not a configuration", binary);
        Assert.DoesNotContain("PNG", binary);
        File.WriteAllText(file, "command = train\nepochs = 1\n");
        Assert.Contains("--config is given twice", CliTests.Fails(2, "--config", file, "--config", file));
        Assert.Contains("'--save-config'", CliTests.Fails(2, "plot", PathOf("m.csv"), "--save-config", PathOf("p.conf"))); // plot redraws; nothing to replay
        // A sweep's runs take their options from the sweep, not from a replay file.
        Assert.Contains("--config cannot be among a sweep's run options", CliTests.Fails(2, "sweep", "--grid", "seed=1,2", "--dry-run", "--out", PathOf("sw"), "--", "train", "--config", file));
        Assert.Contains("--save-config cannot be among a sweep's run options", CliTests.Fails(2, "sweep", "--save-config", PathOf("s.conf"), "--dry-run", "--out", PathOf("sw")));
        File.WriteAllText(file, "command = train\nepochs = 1\n");
        Assert.Contains("is the configuration of `train`, not of `lm`", CliTests.Fails(2, "lm", "--config", file));
        Assert.Contains("does not exist", CliTests.Fails(1, "--config", PathOf("missing.conf")));
        Assert.Contains("--config needs a file", CliTests.Fails(2, "--config"));
        // A checkpoint without a configuration to replay (a bare safetensors file) says so.
        ForwardAD.Data.SafeTensors.Write(PathOf("bare.safetensors"), [new ForwardAD.Data.NamedTensor("w", [1], [1f])], new Dictionary<string, string>());
        Assert.Contains("holds no configuration to replay", CliTests.Fails(1, "--config", PathOf("bare.safetensors")));
    }

    /// <summary>The saved configuration is an output like the others: while a run holds it, another run given the same
    /// --save-config is refused before writing anything, and the first run's file is intact.</summary>
    [Fact]
    public void A_configuration_file_in_use_by_a_run_is_not_overwritten()
    {
        var file = PathOf("held.conf");
        File.WriteAllText(file, "command = train\nepochs = 7\n");
        using (ForwardAD.Cli.OutputLock.Acquire("a run in this test", ("--save-config", file)))
        {
            var (code, _, error) = Run([.. Train("x.csv"), "--save-config", file]);
            Assert.Equal(1, code);
            Assert.Contains($"--save-config {file} is in use by another run", error);
            Assert.Equal("command = train\nepochs = 7\n", File.ReadAllText(file));
            Assert.False(File.Exists(PathOf("x.csv")));
        }
        CliTests.Succeeds([.. Train("x.csv"), "--save-config", file]);
        Assert.Contains("epochs = 2", File.ReadAllText(file));
    }

    [Fact]
    public void A_default_that_changed_since_the_file_was_written_is_reported()
    {
        var file = PathOf("old.conf");
        File.WriteAllText(file, $"command = train\nhidden = 8\nepochs = 1\nquiet = yes\nno-plot = yes\nmetrics = {PathOf("m.csv")}\n#   seed = 7\n#   batch-size = 32\n");
        var (code, _, error) = Run("--config", file);
        Assert.Equal(0, code);
        Assert.Contains("--seed defaulted to 7", error);
        Assert.Contains("give --seed 7", error);
        Assert.DoesNotContain("--batch-size", error);
    }
}
