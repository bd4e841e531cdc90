using System.Text;
using ForwardAD.Data;

namespace ForwardAD.Tests;

/// <summary>The text corpus of the language-model runs (issue 13): byte tokens, a stable split, seeded windows.</summary>
public class TextCorpusTests
{
    private static readonly string Text = string.Concat(Enumerable.Range(0, 40).Select(i => $"Line {i}: the quick brown fox jumps over the lazy dog.\n"));

    [Fact]
    public void The_split_is_the_first_90_percent_and_windows_predict_the_next_byte()
    {
        var corpus = TextCorpus.FromText("test", Text);
        var bytes = Encoding.UTF8.GetBytes(Text);
        Assert.Equal(bytes.Length * 9 / 10, corpus.TrainLength);
        Assert.Equal(bytes.Length, corpus.Train.Length + corpus.Validation.Length);
        const int batch = 3, context = 16;
        var (x, y) = (new float[batch * context], new float[batch * context]);
        corpus.TrainingBatch(7, 5, batch, context, x, y);
        for (int b = 0; b < batch; b++)
        {
            // Find the window in the training split: its bytes follow one another, each target the next input.
            var window = x.AsSpan(b * context, context).ToArray().Select(v => (byte)v).ToArray();
            int start = corpus.Train.IndexOf(window);
            Assert.True(start >= 0 && start + context < corpus.TrainLength, "a training window lies inside the training split");
            for (int t = 0; t < context; t++) Assert.Equal(bytes[start + t + 1], (byte)y[b * context + t]);
        }
        var (x2, y2) = (new float[batch * context], new float[batch * context]);
        corpus.TrainingBatch(7, 5, batch, context, x2, y2);
        Assert.Equal(x, x2); // the step alone fixes the batch (resumable)
        corpus.TrainingBatch(7, 6, batch, context, x2, y2);
        Assert.NotEqual(x, x2);
        Assert.Equal((corpus.Validation.Length - 1) / context, corpus.ValidationWindows(context));
        corpus.ValidationWindow(1, context, x.AsSpan(0, context), y.AsSpan(0, context));
        Assert.Equal(corpus.Validation[context], (byte)x[0]);
        Assert.Equal(corpus.Validation[context + 1], (byte)y[0]);
    }

    [Fact]
    public void A_carved_validation_split_is_the_tail_of_the_training_bytes_and_the_held_out_part_becomes_test()
    {
        var whole = TextCorpus.FromText("test", Text);
        Assert.False(whole.HasTest);
        Assert.Equal(0, whole.Test.Length);
        Assert.Equal(0, whole.Windows(HeldOutSplit.Test, 16));
        var carved = whole.WithValidationFraction(0.15);
        // ⌈0.15 · N⌉ of the N training bytes, taken from their end; the splits tile the text in order, without overlap.
        int held = (int)Math.Ceiling(0.15m * whole.TrainLength);
        Assert.Equal((whole.TrainLength - held, held), (carved.TrainLength, carved.ValidationLength));
        Assert.True(carved.HasTest);
        Assert.Equal(whole.Bytes, (byte[])[.. carved.Train.ToArray(), .. carved.Validation.ToArray(), .. carved.Test.ToArray()]);
        Assert.Equal(whole.Train[..carved.TrainLength].ToArray(), carved.Train.ToArray());
        Assert.Equal(whole.Train[carved.TrainLength..].ToArray(), carved.Validation.ToArray());
        // The test split is exactly what the uncarved corpus validates on.
        Assert.Equal(whole.Validation.ToArray(), carved.Test.ToArray());
        // Training windows never reach into the validation split.
        const int batch = 64, context = 16;
        var (x, y) = (new float[batch * context], new float[batch * context]);
        for (int step = 0; step < 20; step++)
        {
            carved.TrainingBatch(3, step, batch, context, x, y);
            for (int b = 0; b < batch; b++)
            {
                var window = x.AsSpan(b * context, context).ToArray().Select(v => (byte)v).ToArray();
                Assert.True(carved.Train.IndexOf(window) >= 0, "a training window lies inside the shrunk training split");
            }
        }
        carved.Window(HeldOutSplit.Test, 2, context, x.AsSpan(0, context), y.AsSpan(0, context));
        Assert.Equal(carved.Test[2 * context], (byte)x[0]);
        Assert.Equal(carved.Test[2 * context + 1], (byte)y[0]);
        Assert.Equal((carved.Test.Length - 1) / context, carved.Windows(HeldOutSplit.Test, context));

        Assert.Throws<ArgumentOutOfRangeException>(() => whole.WithValidationFraction(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.WithValidationFraction(1));
        Assert.Throws<InvalidOperationException>(() => carved.WithValidationFraction(0.1));
        // A validation split too small for a window is named with every split's size.
        var tiny = whole.WithValidationFraction(0.001);
        Assert.False(tiny.Holds(context));
        Assert.Contains("validation and", Assert.Throws<ArgumentException>(() => tiny.RequireContext(context)).Message);
    }

    [Fact]
    public void Files_that_are_not_text_are_refused_with_the_reason()
    {
        string folder = Directory.CreateTempSubdirectory("forwardad-text").FullName;
        try
        {
            var empty = Path.Combine(folder, "empty.txt");
            File.WriteAllText(empty, "");
            Assert.Contains("0 bytes of text", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(empty)).Message);
            var binary = Path.Combine(folder, "data.bin");
            File.WriteAllBytes(binary, [.. Encoding.UTF8.GetBytes(Text), 0, 1, 2]);
            Assert.Contains("binary", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(binary)).Message);
            var latin1 = Path.Combine(folder, "latin1.txt");
            File.WriteAllBytes(latin1, [.. Encoding.UTF8.GetBytes(Text), 0xE9, 0x20]);
            Assert.Contains("UTF-8", Assert.Throws<InvalidDataException>(() => TextCorpus.Load(latin1)).Message);
            Assert.Throws<FileNotFoundException>(() => TextCorpus.Load(Path.Combine(folder, "missing.txt")));
            var shortText = TextCorpus.FromText("short", new string('a', 40));
            Assert.Contains("shorter context", Assert.Throws<ArgumentException>(() => shortText.RequireContext(16)).Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    /// <summary>The fortunes' format, on a stand-in folder written here (so that it runs where the package is missing): files
    /// without an extension in name order, each "%" line (the separator between fortunes) a blank line, the .dat index and
    /// .u8 links skipped, files joined by a blank line; an empty folder is refused naming it.</summary>
    [Fact]
    public void A_fortunes_folder_is_read_in_its_format()
    {
        string folder = Directory.CreateTempSubdirectory("forwardad-fortunes").FullName;
        try
        {
            File.WriteAllText(Path.Combine(folder, "b-wisdom"), "Look before you leap.\n%\nHe who hesitates is lost.\n%\n");
            File.WriteAllText(Path.Combine(folder, "a-songs"), "Row, row, row your boat\n%\nGently down the stream\n");
            File.WriteAllBytes(Path.Combine(folder, "a-songs.dat"), [0, 0, 0, 2, 0xFF, 0x25]);
            File.WriteAllText(Path.Combine(folder, "a-songs.u8"), "not read\n");
            var corpus = TextCorpus.Fortunes(folder);
            Assert.Equal("fortunes (2 files)", corpus.Name);
            Assert.Equal("Row, row, row your boat\n\nGently down the stream\n\nLook before you leap.\n\nHe who hesitates is lost.\n\n\n",
                Encoding.UTF8.GetString(corpus.Bytes));
            foreach (var file in Directory.GetFiles(folder)) File.Delete(file);
            Assert.Contains(folder, Assert.Throws<InvalidDataException>(() => TextCorpus.Fortunes(folder)).Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
        Assert.Contains("apt-get install fortunes", Assert.Throws<DirectoryNotFoundException>(() => TextCorpus.Fortunes(folder)).Message);
    }

    [Fact]
    public void The_fortunes_load_when_installed()
    {
        Assert.SkipUnless(Directory.Exists(TextCorpus.FortunesFolder), $"{TextCorpus.FortunesFolder} is missing (apt-get install fortunes).");
        var corpus = TextCorpus.Fortunes();
        Assert.InRange(corpus.Bytes.Length, 1_000_000, 10_000_000);
        Assert.DoesNotContain("\n%\n", Encoding.UTF8.GetString(corpus.Bytes[..100_000]));
    }
}
