using ForwardAD.Cli;

namespace ForwardAD.Tests;

/// <summary>The command-line tool end to end on the embedded digits: the main job, its CSV, resume, and bad input.</summary>
public sealed class CliTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("forwardad-cli-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string PathOf(string name) => Path.Combine(_folder, name);

    [Fact]
    public void Train_writes_a_metrics_row_per_epoch_and_resumes_into_the_same_file()
    {
        var metrics = PathOf("m.csv");
        var checkpoint = PathOf("c.safetensors");
        string[] common = ["--guesser", "wt", "--mode", "per-layer", "--optimizer", "adamw", "--lr", "1e-3", "--hidden", "32", "--quiet", "--metrics", metrics];
        Assert.Equal(0, TrainCommand.Run([.. common, "--epochs", "2", "--checkpoint", checkpoint]));
        Assert.Equal(3, File.ReadAllLines(metrics).Length);
        Assert.Equal(0, TrainCommand.Run([.. common, "--epochs", "3", "--resume", checkpoint]));
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(4, lines.Length);
        Assert.StartsWith("epoch,train_loss,train_accuracy,test_loss,test_accuracy,cosine_global,cosine_layer1,cosine_layer2", lines[0]);
        Assert.StartsWith("3,", lines[3]);
    }

    [Fact]
    public void Bad_options_and_files_are_usage_errors_that_name_the_problem()
    {
        Assert.Contains("--epochz", Assert.Throws<UsageException>(() => TrainCommand.Run(["--epochz", "3"])).Message);
        Assert.Contains("Unknown guesser 'magic'", Assert.Throws<UsageException>(() => TrainCommand.Run(["--guesser", "magic"])).Message);
        Assert.Contains("--epochs must be an integer", Assert.Throws<UsageException>(() => TrainCommand.Run(["--epochs", "many"])).Message);
        Assert.Contains("does not exist", Assert.Throws<FileNotFoundException>(() => TrainCommand.Run(["--data", PathOf("missing.csv")])).Message);
        File.WriteAllText(PathOf("ragged.csv"), "1,2,0\n1,1\n");
        Assert.Contains("line 2", Assert.Throws<InvalidDataException>(() => TrainCommand.Run(["--data", PathOf("ragged.csv")])).Message);
    }

    [Fact]
    public void The_toy_experiment_command_writes_every_step()
    {
        var csv = PathOf("toy.csv");
        Assert.Equal(0, GrapeToyCommand.Run(["--size", "20", "--steps", "5", "--seeds", "2", "--csv", csv]));
        // 4 rules × 5 starts × 2 seeds × (5 steps + the start) rows, plus the header.
        Assert.Equal(1 + 4 * 5 * 2 * 6, File.ReadAllLines(csv).Length);
    }
}
