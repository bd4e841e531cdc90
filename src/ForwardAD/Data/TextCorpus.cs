using System.Text;
using ForwardAD.Random;

namespace ForwardAD.Data;

/// <summary>
/// A text for character-level language modelling, tokenised as bytes (UTF-8): vocabulary 256, token = byte, so any
/// file works and "bits per character" is bits per byte (the same for ASCII text such as the fortunes). The split is
/// contiguous and stable: the first 90 % of the bytes train, the last 10 % validate (as enwik8/text8 are split),
/// so a validation window never overlaps a training one. <see cref="WithValidationFraction"/> carves a validation
/// split from the end of the training bytes; the held-out 10 % then becomes the test split, consulted only for
/// reporting (choose hyperparameters on validation, never on test). Training batches are windows of T + 1 bytes starting at
/// positions drawn from a Philox stream (seed, step): reproducible, resumable from the step alone.
/// </summary>
public sealed class TextCorpus
{
    /// <summary>Byte-level vocabulary.</summary>
    public const int Vocabulary = 256;

    /// <summary>Where Debian's `fortunes` package puts its text (the files without an extension).</summary>
    public const string FortunesFolder = "/usr/share/games/fortunes";

    private TextCorpus(string name, byte[] bytes, int trainLength, int validationLength)
    {
        Name = name;
        Bytes = bytes;
        TrainLength = trainLength;
        ValidationLength = validationLength;
    }

    private TextCorpus(string name, byte[] bytes) : this(name, bytes, HeldOutStart(bytes), bytes.Length - HeldOutStart(bytes)) { }

    /// <summary>Where the held-out last 10 % starts.</summary>
    private static int HeldOutStart(byte[] bytes) => (int)(bytes.LongLength * 9 / 10);

    /// <summary>A name for reports (e.g. the file or folder the text came from).</summary>
    public string Name { get; }
    /// <summary>The whole text as bytes (the tokens): training, then validation, then test bytes.</summary>
    public byte[] Bytes { get; }
    /// <summary>Bytes [0, TrainLength) train; the next <see cref="ValidationLength"/> validate; the rest (none unless a
    /// validation split was carved) test.</summary>
    public int TrainLength { get; }
    /// <summary>Bytes of the validation split, which follows the training bytes.</summary>
    public int ValidationLength { get; }
    /// <summary>The training bytes, [0, <see cref="TrainLength"/>).</summary>
    public ReadOnlySpan<byte> Train => Bytes.AsSpan(0, TrainLength);
    /// <summary>The validation bytes, [<see cref="TrainLength"/>, <see cref="TrainLength"/> + <see cref="ValidationLength"/>).</summary>
    public ReadOnlySpan<byte> Validation => Bytes.AsSpan(TrainLength, ValidationLength);
    /// <summary>The test split: the held-out 10 % once <see cref="WithValidationFraction"/> has carved a validation split
    /// from the training bytes; empty otherwise (the held-out part is then <see cref="Validation"/>, as it always was).</summary>
    public ReadOnlySpan<byte> Test => Bytes.AsSpan(TrainLength + ValidationLength);
    /// <summary>True when a test split exists (after <see cref="WithValidationFraction"/>).</summary>
    public bool HasTest => TrainLength + ValidationLength < Bytes.Length;

    /// <summary>
    /// The same text with the last ⌈<paramref name="fraction"/>·N⌉ of the N training bytes as the validation split
    /// (contiguous, like the held-out split: a window drawn from the rest never overlaps it) and the held-out 10 % as
    /// the test split. The training split shrinks accordingly; nothing else moves, so the test split is exactly the
    /// bytes the uncarved corpus validates on.
    /// </summary>
    public TextCorpus WithValidationFraction(double fraction)
    {
        if (!(fraction is > 0 and < 1)) throw new ArgumentOutOfRangeException(nameof(fraction), $"The validation fraction must lie in (0, 1); got {fraction}.");
        if (HasTest) throw new InvalidOperationException($"{Name}: a validation split is carved already.");
        // In decimal: the fraction as typed (0.15), not its binary neighbour, decides the rounding.
        int held = (int)Math.Ceiling((decimal)fraction * TrainLength);
        return new TextCorpus(Name, Bytes, TrainLength - held, held);
    }

    /// <summary>
    /// The English text of Debian's fortunes (about 2.6 MB): every file without an extension under
    /// <see cref="FortunesFolder"/> (the .dat indexes and .u8 links skipped), in name order, the "%" lines that separate
    /// fortunes replaced by blank lines, files joined by a blank line.
    /// </summary>
    public static TextCorpus Fortunes(string folder = FortunesFolder)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"{folder} does not exist: install the fortunes with `sudo apt-get install fortunes`, or train on any text file with --text PATH.");
        var files = Directory.GetFiles(folder).Where(f => Path.GetExtension(f).Length == 0 && !Directory.Exists(f))
            .Order(StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new InvalidDataException($"{folder} holds no fortune files (files without an extension).");
        var text = new StringBuilder();
        foreach (var file in files)
        {
            foreach (var line in File.ReadLines(file, Encoding.UTF8))
                text.Append(line == "%" ? "" : line).Append('\n');
            text.Append('\n');
        }
        return FromText($"fortunes ({files.Count} files)", text.ToString(), folder);
    }

    /// <summary>Any plain-text file (UTF-8). Empty files, files with NUL bytes and files that are not valid UTF-8 are
    /// refused with the reason: they are not text.</summary>
    public static TextCorpus Load(string path)
    {
        if (Directory.Exists(path)) throw new FileNotFoundException($"{path} is a folder; --text needs a plain-text file (one file, e.g. a .txt inside it).", path);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} does not exist; --text needs a plain-text file.", path);
        var bytes = File.ReadAllBytes(path);
        int nul = Array.IndexOf(bytes, (byte)0);
        if (nul >= 0) throw new InvalidDataException($"{path}: byte {nul} is NUL; this looks like a binary file, not text. Give a plain-text (UTF-8) file.");
        try { _ = new UTF8Encoding(false, throwOnInvalidBytes: true).GetCharCount(bytes); }
        catch (DecoderFallbackException e) { throw new InvalidDataException($"{path}: not valid UTF-8 text ({e.Message}). Give a plain-text (UTF-8) file."); }
        return Checked(Path.GetFileName(path), bytes, path);
    }

    /// <summary>A corpus from a string (tests write their own small texts).</summary>
    public static TextCorpus FromText(string name, string text, string? source = null) => Checked(name, Encoding.UTF8.GetBytes(text), source ?? name);

    private static TextCorpus Checked(string name, byte[] bytes, string source)
    {
        if (bytes.Length < 20)
            throw new InvalidDataException($"{source}: {bytes.Length} bytes of text; a language model needs at least a few windows of text to train and validate on.");
        return new TextCorpus(name, bytes);
    }

    /// <summary>Throws unless every split (train, validation, and test when there is one) holds a window of
    /// <paramref name="context"/> + 1 bytes.</summary>
    public void RequireContext(int context)
    {
        if (context < 1) throw new ArgumentOutOfRangeException(nameof(context), $"The context must be at least 1 token; got {context}.");
        if (!Holds(context))
            throw new ArgumentException($"{Name}: {Describe()} cannot hold a window of {context} + 1 bytes. Use a longer text or a shorter context.");
    }

    /// <summary>True when every split holds a window of <paramref name="context"/> + 1 bytes.</summary>
    public bool Holds(int context) =>
        Train.Length >= context + 1 && Validation.Length >= context + 1 && (!HasTest || Test.Length >= context + 1);

    /// <summary>"2,000 training and 200 validation bytes" (and "…, 250 test bytes" when there is a test split).</summary>
    public string Describe() => HasTest
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Train.Length:N0} training, {Validation.Length:N0} validation and {Test.Length:N0} test bytes")
        : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Train.Length:N0} training and {Validation.Length:N0} validation bytes");

    /// <summary>
    /// Training batch for <paramref name="step"/>: example b is the window at a start drawn from Philox (seed, step)
    /// word b (uniform over the training split's starts, by multiply-shift: bias below starts/2³²); inputs are its first
    /// T bytes, targets the next T (each byte's successor), as floats, [B, T] each.
    /// </summary>
    public void TrainingBatch(ulong seed, long step, int batch, int context, Span<float> inputs, Span<float> targets, int firstExample = 0)
    {
        RequireContext(context);
        if (inputs.Length != batch * context || targets.Length != batch * context)
            throw new ArgumentException($"Inputs and targets must hold batch × context = {batch * context} tokens; got {inputs.Length} and {targets.Length}.");
        var key = new RandomKey(seed, 0x7e47).Derive((ulong)step);
        uint starts = (uint)(TrainLength - context);
        for (int b = 0; b < batch; b++)
        {
            // Window b of the step's batch at counter firstExample + b: a data-parallel rank reads its share of the batch.
            var (bits, _, _, _) = key.Block((ulong)(firstExample + b));
            int start = (int)((ulong)bits * starts >> 32);
            Window(Bytes.AsSpan(start, context + 1), inputs.Slice(b * context, context), targets.Slice(b * context, context));
        }
    }

    /// <summary>The validation split as consecutive, non-overlapping windows (the last partial one dropped): window w
    /// starts at w·T. Every validation byte after the first of a window is predicted once.</summary>
    public int ValidationWindows(int context) => Windows(HeldOutSplit.Validation, context);

    /// <summary>Validation window <paramref name="index"/>: inputs and targets of T tokens.</summary>
    public void ValidationWindow(int index, int context, Span<float> inputs, Span<float> targets) =>
        Window(HeldOutSplit.Validation, index, context, inputs, targets);

    /// <summary>A held-out split as consecutive, non-overlapping windows of T + 1 bytes (as <see cref="ValidationWindows"/>).</summary>
    public int Windows(HeldOutSplit split, int context) => Math.Max(0, (Split(split).Length - 1) / context);

    /// <summary>Window <paramref name="index"/> of a held-out split: inputs and targets of T tokens.</summary>
    public void Window(HeldOutSplit split, int index, int context, Span<float> inputs, Span<float> targets) =>
        Window(Split(split).Slice(index * context, context + 1), inputs, targets);

    private ReadOnlySpan<byte> Split(HeldOutSplit split) => split == HeldOutSplit.Test ? Test : Validation;

    private static void Window(ReadOnlySpan<byte> window, Span<float> inputs, Span<float> targets)
    {
        for (int t = 0; t < inputs.Length; t++)
        {
            inputs[t] = window[t];
            targets[t] = window[t + 1];
        }
    }
}

/// <summary>The splits a language model is evaluated on: validation (choose on it) and test (report it).</summary>
public enum HeldOutSplit
{
    /// <summary>The validation split: the held-out 10 %, or the carved part of the training bytes after
    /// <see cref="TextCorpus.WithValidationFraction"/>. Choose hyperparameters on it.</summary>
    Validation,
    /// <summary>The test split (<see cref="TextCorpus.Test"/>): only for reporting.</summary>
    Test,
}
