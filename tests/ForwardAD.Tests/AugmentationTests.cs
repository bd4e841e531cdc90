using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Random;
using ForwardAD.Tensors;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>
/// Image augmentation (issue 14): random crop with zero padding and horizontal flip, keyed by (seed, step). Its geometry
/// (every output a shifted, possibly mirrored copy of its input with zeros outside), its determinism and zero allocation,
/// a LocalMixer run with augmentation resumed bit for bit from a checkpoint, a changed augmentation refused on resume,
/// and the CLI's mixer-table end to end on digits.
/// </summary>
public sealed class AugmentationTests() : TemporaryFolderTests("forwardad-augment-")
{
    private static float[] Images(int count, Shape shape) => Problem.Normal(5, count * shape.ElementCount, 1f);

    /// <summary>Every augmented image equals its input shifted by some (dy, dx) ∈ [−p, p]², mirrored or not, zero outside;
    /// over 64 images both flips and several offsets occur; the same key gives the same batch, another key another.</summary>
    [Fact]
    public void Each_image_is_a_shifted_possibly_mirrored_copy_with_zeros_outside()
    {
        var shape = new Shape(6, 5, 2);
        const int count = 64, padding = 2;
        var original = Images(count, shape);
        var images = (float[])original.Clone();
        var augmentation = new ImageAugmentation(padding);
        var scratch = new float[shape.ElementCount];
        augmentation.Apply(images, shape, new RandomKey(7, 1), scratch);
        var seen = new HashSet<(int, int, bool)>();
        for (int b = 0; b < count; b++)
        {
            var match = Enumerable.Range(-padding, 2 * padding + 1).SelectMany(dy => Enumerable.Range(-padding, 2 * padding + 1).SelectMany(dx => new[] { (dy, dx, false), (dy, dx, true) }))
                .Where(t => Matches(original.AsSpan(b * shape.ElementCount, shape.ElementCount), images.AsSpan(b * shape.ElementCount, shape.ElementCount), shape, t.dy, t.dx, t.Item3))
                .ToList();
            Assert.True(match.Count > 0, $"image {b} is no shifted copy of its input");
            seen.Add(match[0]);
        }
        Assert.True(seen.Any(s => s.Item3) && seen.Any(s => !s.Item3), "both flips occur");
        Assert.True(seen.Select(s => (s.Item1, s.Item2)).Distinct().Count() > 5, "several offsets occur");
        var again = (float[])original.Clone();
        augmentation.Apply(again, shape, new RandomKey(7, 1), scratch);
        Assert.Equal(images, again);
        augmentation.Apply(again = (float[])original.Clone(), shape, new RandomKey(7, 2), scratch);
        Assert.NotEqual(images, again);
    }

    private static bool Matches(ReadOnlySpan<float> input, ReadOnlySpan<float> output, Shape shape, int dy, int dx, bool flip)
    {
        int height = shape[0], width = shape[1], channels = shape[2];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                for (int c = 0; c < channels; c++)
                {
                    int sy = y + dy, sx = (flip ? width - 1 - x : x) + dx;
                    float expected = sy < 0 || sy >= height || sx < 0 || sx >= width ? 0f : input[(sy * width + sx) * channels + c];
                    if (output[(y * width + x) * channels + c] != expected) return false;
                }
        return true;
    }

    [Fact]
    public void Without_padding_or_flip_it_is_the_identity_and_it_allocates_nothing()
    {
        var shape = new Shape(4, 4, 3);
        var original = Images(8, shape);
        var images = (float[])original.Clone();
        var scratch = new float[shape.ElementCount];
        var none = new ImageAugmentation(0, HorizontalFlip: false);
        none.Apply(images, shape, new RandomKey(1, 1), scratch);
        Assert.Equal(original, images);
        var augmentation = new ImageAugmentation(2);
        Allocations.AssertNone(i => augmentation.Apply(images, shape, new RandomKey(1, (ulong)i), scratch), warmUp: 1, steps: 5, "augmentation");
    }

    [Theory]
    [InlineData(4, "[0, 3]")]
    [InlineData(-1, "[0, 3]")]
    public void A_padding_the_image_cannot_take_is_rejected(int padding, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => new ImageAugmentation(padding).Validate(new Shape(4, 6, 1)));
        Assert.Contains(message, e.Message);
        Assert.Contains("[H, W, C]", Assert.Throws<ArgumentException>(() => new ImageAugmentation().Validate(new Shape(16))).Message);
    }

    private static (Trainer Trainer, ParameterStore Store) MixerTrainer(ImageAugmentation? augmentation)
    {
        var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 160).ToArray(), "digits-160").Split(0.25, 3);
        var model = new LocalMixerSpec(new Shape(8, 8, 1), Patch: 2, Width: 8, Blocks: 2, Groups: 2, Classes: 10).Build();
        var store = ParameterStore.Initialize(model, new CpuBackend(), 3);
        var guesser = (ActivationGuesser)Guessers.ActivationPerturbation() with { Loss = SiteLoss.Local };
        return (new Trainer(guesser, Optimizers.Adam(3e-3f), store, train, test, new TrainingOptions(16, 3) { CosineEvery = 2, Augmentation = augmentation }), store);
    }

    /// <summary>A LocalMixer trained with Ren et al.'s activation perturbation and augmentation: three epochs straight equal two,
    /// a checkpoint, a fresh trainer resumed from it, and one more, bit for bit (parameters, optimizer state through them, test
    /// loss, cosine). The augmentation really acts (the run differs from one without), and a resume without it is refused.</summary>
    [Fact]
    public void A_run_with_augmentation_resumes_bit_for_bit()
    {
        var augmentation = new ImageAugmentation(2);
        var description = new Dictionary<string, string> { ["model"] = "localmixer 8x8x1 p2-d8-b2-g2", ["guesser"] = "ap local" };
        var (straight, straightStore) = MixerTrainer(augmentation);
        var reports = Enumerable.Range(0, 3).Select(e => straight.RunEpoch(e)).ToList();
        var (plain, plainStore) = MixerTrainer(null);
        for (int e = 0; e < 3; e++) plain.RunEpoch(e);
        Assert.NotEqual(plainStore.All.ToArray(), straightStore.All.ToArray());

        var (first, _) = MixerTrainer(augmentation);
        first.RunEpoch(0);
        first.RunEpoch(1);
        var path = Path.Combine(Folder, "mixer.safetensors");
        first.SaveCheckpoint(path, description);
        var (resumed, resumedStore) = MixerTrainer(augmentation);
        resumed.Resume(path, description);
        var last = resumed.RunEpoch(2);
        Assert.Equal(straightStore.All.ToArray(), resumedStore.All.ToArray());
        Assert.Equal(reports[2].TestLoss, last.TestLoss);
        Assert.Equal(reports[2].GlobalCosine, last.GlobalCosine);

        var (without, _) = MixerTrainer(null);
        var refused = Assert.Throws<CheckpointMismatchException>(() => without.Resume(path, description));
        Assert.Contains("augmentation", refused.Message);
    }

    /// <summary>The CLI's Table-1 command on digits (tiny Ren et al. mixer, three columns, both rows, two seeds): exit 0, the CSV
    /// has a row per run with its variant and seed, the Markdown table a row per augmentation mode with mean ± sd and a legend
    /// saying what each column is; --variant blocks builds the other construction; a bad spec or a contradicting variant is a
    /// usage error naming the token.</summary>
    [Fact]
    public void Mixer_table_writes_csv_and_markdown()
    {
        var prefix = Path.Combine(Folder, "table");
        var (code, output, error) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p2-d8-b2-g2", "--methods", "backprop,local-backprop,ap", "--epochs", "1",
            "--batch-size", "32", "--train-examples", "256", "--crop-padding", "1", "--seeds", "2", "--out", prefix, "--quiet");
        Assert.True(code == 0, error + output);
        var csv = File.ReadAllLines(prefix + ".csv");
        Assert.Equal(1 + 3 * 2 * 2, csv.Length);
        Assert.StartsWith("variant,augment,method,seed,epochs,", csv[0]);
        Assert.Contains(csv, l => l.StartsWith("ren,on,ap,2,1,", StringComparison.Ordinal));
        Assert.Contains(csv, l => l.StartsWith("ren,off,backprop,1,1,", StringComparison.Ordinal));
        var md = File.ReadAllText(prefix + ".md");
        Assert.Contains("| augmentation | Backprop, end to end | Backprop, local losses | AP |", md);
        Assert.Contains("| crop + flip |", md);
        Assert.Contains(" ± ", md);
        Assert.Contains("n = 2", md);
        Assert.Contains("- Backprop, end to end: backprop of the main loss only", md);
        Assert.Contains("exact local gradients", md);

        var (blocks, blocksOutput, blocksError) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p2-d8-b1-g2", "--variant", "blocks", "--methods", "ap",
            "--augment-modes", "off", "--epochs", "2", "--batch-size", "32", "--train-examples", "128", "--out", prefix);
        Assert.True(blocks == 0, blocksError + blocksOutput);
        // Without --quiet each epoch's line counts the epochs done of all and estimates the time left, until the last.
        Assert.Contains("[1/2 epochs; about ", blocksOutput);
        Assert.Contains("[2/2 epochs]", blocksOutput);
        // The cosine per site, named by its layer, beside the global one.
        Assert.Contains("cos global ", blocksOutput);
        Assert.Contains("(per site: patch ", blocksOutput);
        Assert.StartsWith("blocks,off,ap,1,2,", File.ReadAllLines(prefix + ".csv")[1]);
        Assert.Contains("p2-d8-b1-g2-blocks (blocks construction)", File.ReadAllText(prefix + ".md"));

        var (bad, _, message) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p3-d8-b1-g2", "--out", prefix);
        Assert.Equal(2, bad);
        Assert.Contains("p3 must divide the image's height 8", message);
        var (contradiction, _, contradicts) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p2-d8-b1-g2-blocks", "--variant", "ren", "--out", prefix);
        Assert.Equal(2, contradiction);
        Assert.Contains("--variant ren contradicts", contradicts);
        var (ablation, _, refused) = CliTests.Run("mixer-table", "--data", "digits", "--mixer", "p2-d8-b1-g2", "--variant", "blocks", "--methods", "ap,ap-noisy-heads", "--out", prefix);
        Assert.Equal(2, ablation);
        Assert.Contains("an ablation of Ren et al.'s estimator", refused);
    }

    /// <summary>`train` with --model localmixer:SPEC, a local-loss guesser and --augment runs; the configuration records the
    /// local losses and the augmentation; --crop-padding without --augment and a bad mixer token are usage errors.</summary>
    [Fact]
    public void Train_takes_a_local_mixer_with_augmentation()
    {
        var metrics = Path.Combine(Folder, "train.csv");
        var (code, output, error) = CliTests.Run("train", "--data", "digits", "--model", "localmixer:p2-d8-b1-g2", "--guesser", "ap", "--augment", "--crop-padding", "1",
            "--epochs", "1", "--quiet", "--metrics", metrics, "--optimizer", "adam", "--lr", "0.003");
        Assert.True(code == 0, error + output);
        Assert.True(File.Exists(metrics));
        var (bad, _, message) = CliTests.Run("train", "--data", "digits", "--model", "localmixer:p2-d8-b1-g2", "--crop-padding", "1", "--quiet");
        Assert.Equal(2, bad);
        Assert.Contains("--crop-padding applies only with --augment", message);
        (bad, _, message) = CliTests.Run("train", "--data", "digits", "--model", "localmixer:p2-d8-b1-g3", "--quiet");
        Assert.Equal(2, bad);
        Assert.Contains("g3 must divide the width d8", message);
    }
}
