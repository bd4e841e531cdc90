using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;

namespace ForwardAD.Cli;

/// <summary>
/// The run's configuration as text: every option that influences the result, normalised (effective defaults
/// filled in, aliases resolved, options the run does not use left out), keyed by option name. It goes into the
/// checkpoint's metadata, so that resume refuses any difference, and its hash names the default metrics file
/// and marks every metrics row.
/// </summary>
internal sealed class RunConfiguration
{
    private readonly List<KeyValuePair<string, string>> _entries = [];

    public IReadOnlyList<KeyValuePair<string, string>> Entries => _entries;

    public void Add(string key, string value) => _entries.Add(new(key, value));

    public void Add(string key, float value) => Add(key, value.ToString("R", CultureInfo.InvariantCulture));

    public void Add(string key, int value) => Add(key, value.ToString(CultureInfo.InvariantCulture));

    /// <summary>A setting that runs did not record before it existed: left out at <paramref name="earlierValue"/>, the value
    /// every earlier run had, so that those runs keep their hash (metrics files) and their checkpoints still resume.</summary>
    public void AddSince(string key, string value, string earlierValue)
    {
        if (value != earlierValue) Add(key, value);
    }

    public string this[string key] => _entries.Single(e => e.Key == key).Value;

    public Dictionary<string, string> ToDictionary() => _entries.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal);

    /// <summary>The first 8 hex digits of SHA-256 over the sorted entries plus <paramref name="extra"/> (seed, batch size).</summary>
    public string Hash(params (string Key, string Value)[] extra)
    {
        var text = string.Join('\n', _entries.Select(e => (e.Key, e.Value)).Concat(extra)
            .OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"{e.Key}={e.Value}"));
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..8];
    }
}

/// <summary>The data options: source, test set or split, standardisation.</summary>
internal sealed class DataOptions(string defaultData = "digits")
{
    private static readonly string[] Schemes = ["idx", "cifar10", "cifar100"];

    /// <summary>The test split's share when no test set is given.</summary>
    private const float DefaultTestFraction = 0.2f;

    public readonly Option<string> Data = Opt.String("data", defaultData).Describe("SOURCE",
        "digits (embedded, 1,797 8×8 images); PATH.csv[.gz] (features, then an integer label per row); idx:IMAGES,LABELS " +
        "(MNIST IDX files, raw or .gz); cifar10:FILE[,FILE...] or cifar100:FILE[,FILE...] (binary batches); fashion-mnist[:DIR] " +
        "(Debian's dataset-fashion-mnist: the 60,000 training images from /usr/share/datasets/fashion-mnist, or from DIR; its " +
        "test set is then the 10,000 test images, fashion-mnist-test[:DIR], unless --test-data or --test-fraction is given). " +
        "Images come channels last: digits 8×8×1, fashion-mnist and idx: grey images H×W×1, cifar 32×32×3. An existing file " +
        "is always read as CSV, even if its name has a ':'.");
    public readonly Option<string?> TestData = Opt.OptionalString("test-data").Describe("SOURCE",
        "a separate test set in the same forms (default: split --data); its features per example and labels must fit the " +
        "training data (checked before training)");
    public readonly Option<float?> TestFraction = Opt.OptionalFloat("test-fraction", f => f is > 0 and < 1, "a number between 0 and 1 (both excluded)")
        .Describe("F", string.Create(CultureInfo.InvariantCulture, $"held-out fraction when splitting, shuffled by the seed (default {DefaultTestFraction}; not with --test-data)"));
    public readonly Option<bool> Standardize = Opt.Flag("standardize").Describe("",
        "z-score every feature with the training set's mean and standard deviation (a constant feature: std 1), applied to " +
        "train and test alike (default off)");
    public readonly Option<float?> ValidationFraction = Opt.OptionalFloat("validation-fraction", f => f is > 0 and < 1, "a number between 0 and 1 (both excluded)")
        .Describe("F", "hold out F (0 < F < 1) of the training set, shuffled by the seed, as a validation set: training uses the rest, " +
            "and every epoch also reports validation loss and accuracy (columns validation_loss, validation_accuracy of the metrics " +
            "CSV); choose hyperparameters on it, not on the test set (default: none). With --standardize, the statistics are the " +
            "remaining training examples' own");
    public readonly Option<int?> TrainExamples = Opt.OptionalInt("train-examples", 1).Describe("N",
        "train on N examples of the training set, drawn by the seed (before any validation split): quick experiments and " +
        "sweeps on a large data set; the test set stays whole (default: all)");

    /// <summary>The Philox stream of --train-examples' draw: another permutation than the splits'.</summary>
    private const ulong SubsetStream = 0x5B5E7;

    /// <summary>The Philox stream of the validation split: another permutation than the train/test split's.</summary>
    private const ulong ValidationStream = 0x7A11D;

    /// <summary>Registers the options under "Data"; with <paramref name="validation"/>, also --validation-fraction and
    /// --train-examples (train's; the commands that do not report validation metrics lack them).</summary>
    public void AddTo(DocumentedCommand command, bool validation = false) =>
        command.Section("Data", validation ? [Data, TestData, TestFraction, Standardize, ValidationFraction, TrainExamples] : [Data, TestData, TestFraction, Standardize]);

    /// <summary>The training and test sets (<see cref="LoadWithValidation"/> without a validation set).</summary>
    public (Dataset Train, Dataset Test) Load(ParseResult p, ulong seed, RunConfiguration configuration)
    {
        var (train, _, test) = Load(p, seed, configuration, validation: false);
        return (train, test);
    }

    /// <summary>The training, validation (null without --validation-fraction) and test sets; the command must have
    /// registered the option (<see cref="AddTo"/> with validation).</summary>
    public (Dataset Train, Dataset? Validation, Dataset Test) LoadWithValidation(ParseResult p, ulong seed, RunConfiguration configuration) =>
        Load(p, seed, configuration, validation: true);

    /// <summary>
    /// Carves the last ⌈<paramref name="fraction"/>·N⌉ examples of a seeded permutation of <paramref name="train"/> as
    /// a validation set: the two parts are disjoint, cover the training set, and depend on the seed alone.
    /// </summary>
    internal static (Dataset Train, Dataset Validation) CarveValidation(Dataset train, float fraction, ulong seed, string source)
    {
        // In decimal: the fraction as typed (0.15, not the float 0.15000000596…), so ⌈0.15 · 200⌉ is 30, not 31.
        int held = (int)Math.Ceiling((decimal)fraction * train.Count);
        if (held < 1 || held >= train.Count)
            throw new InvalidDataException($"--data {source}: the {train.Count} training examples cannot be split with --validation-fraction {fraction.ToString(CultureInfo.InvariantCulture)} into non-empty training and validation sets.");
        var order = Dataset.Permutation(train.Count, new ForwardAD.Random.RandomKey(seed, ValidationStream));
        return (train.Subset(order[..^held], train.Name), train.Subset(order[^held..], $"{train.Name} (validation)"));
    }

    /// <summary>
    /// Loads the training and test sets and checks that they fit each other, all before any model exists:
    /// a mismatching test set is reported naming its file, not after an epoch of training.
    /// </summary>
    private (Dataset Train, Dataset? Validation, Dataset Test) Load(ParseResult p, ulong seed, RunConfiguration configuration, bool validation)
    {
        if (p.Given(TestFraction) && p.Given(TestData))
            throw new UsageException("--test-fraction and --test-data cannot be used together: --test-fraction splits --data, --test-data replaces the split. Drop one.");
        var source = p.GetValue(Data)!;
        var testSource = p.GetValue(TestData);
        // Fashion-MNIST comes with its own test set: the benchmark's numbers are on it, not on a split of the training set.
        if (testSource is null && !p.Given(TestFraction) && FashionDirectory(source) is { } directory)
            testSource = directory == FashionMnist.DefaultDirectory ? FashionTest : $"{FashionTest}:{directory}";
        var data = LoadSource("--data", source, classes: null);
        Dataset train, test;
        if (testSource is not null)
        {
            train = data;
            test = LoadSource("--test-data", testSource, classes: data.Classes);
            if (test.FeatureSize != train.FeatureSize)
                throw new InvalidDataException($"--test-data {testSource}: {test.FeatureSize} features per example, but the training data ({source}) has {train.FeatureSize}. Give a test set of the same kind as --data.");
            if (test.Classes > train.Classes)
                throw new InvalidDataException($"--test-data {testSource}: {test.Classes} classes, but the training data ({source}) has {train.Classes}; the model would have no output for the extra classes.");
            test = test with { Classes = train.Classes };
            configuration.Add("data", Normalize(source));
            configuration.Add("test-data", Normalize(testSource));
        }
        else
        {
            float fraction = p.GetValue(TestFraction) ?? DefaultTestFraction;
            int held = (int)Math.Ceiling(fraction * data.Count);
            if (held < 1 || held >= data.Count)
                throw new InvalidDataException($"--data {source}: {data.Count} examples cannot be split with --test-fraction {fraction.ToString(CultureInfo.InvariantCulture)} into non-empty training and test sets.");
            (train, test) = data.Split(fraction, seed);
            configuration.Add("data", Normalize(source));
            configuration.Add("test-data", string.Create(CultureInfo.InvariantCulture, $"split {fraction:R}"));
        }
        // A seeded draw of N training examples (recorded only when given: other runs keep their hash), before the validation
        // split, so that --train-examples N --validation-fraction F trains on N·(1 − F).
        int? examples = validation ? p.GetValue(TrainExamples) : null;
        if (examples is int n)
        {
            if (n > train.Count)
                throw new UsageException($"--train-examples {n}: the training set of {source} has only {train.Count} examples. Give at most {train.Count}, or drop the option to use them all.");
            var order = Dataset.Permutation(train.Count, new ForwardAD.Random.RandomKey(seed, SubsetStream));
            train = train.Subset(order[..n], $"{train.Name} ({n} drawn)");
        }
        configuration.AddSince("train-examples", examples?.ToString(CultureInfo.InvariantCulture) ?? "all", "all");
        // Carved before the standardisation statistics: the validation examples then inform training in no way.
        Dataset? heldOut = null;
        float? validationFraction = validation ? p.GetValue(ValidationFraction) : null;
        if (validationFraction is float carved) (train, heldOut) = CarveValidation(train, carved, seed, source);
        bool standardize = p.GetValue(Standardize);
        if (standardize)
        {
            var (mean, deviation) = train.FeatureStatistics();
            (train, test) = (train.Standardize(mean, deviation), test.Standardize(mean, deviation));
            heldOut = heldOut?.Standardize(mean, deviation);
        }
        configuration.Add("standardize", standardize ? "yes" : "no");
        // Recorded only when on: runs without a validation set keep their hash (metrics files) and checkpoints.
        configuration.AddSince("validation", heldOut is null ? "none" : string.Create(CultureInfo.InvariantCulture, $"split {validationFraction:R} of the training set"), "none");
        return (train, heldOut, test);
    }

    /// <summary>One line for the banner: what was loaded from where.</summary>
    public static string Describe(RunConfiguration c) =>
        $"{c["data"]} | {c["test-data"]}" + (c["standardize"] == "yes" ? " | standardized" : "");

    /// <summary>File paths as full paths (the same file from another working directory is the same data); names as they are.</summary>
    private static string Normalize(string source) =>
        source == "digits" ? source : File.Exists(source) ? Path.GetFullPath(source)
        : FashionDirectory(source) is { } directory ? (source.StartsWith(FashionTest, StringComparison.Ordinal) ? FashionTest : Fashion) +
            (directory == FashionMnist.DefaultDirectory ? "" : ":" + Path.GetFullPath(directory))
        : source;

    private const string Fashion = "fashion-mnist", FashionTest = "fashion-mnist-test";

    /// <summary>The folder of a fashion-mnist[-test][:DIR] source (the Debian folder without DIR); null for other sources.</summary>
    private static string? FashionDirectory(string source)
    {
        foreach (var name in new[] { FashionTest, Fashion })
        {
            if (source == name) return FashionMnist.DefaultDirectory;
            if (source.StartsWith(name + ":", StringComparison.Ordinal) && !File.Exists(source)) return source[(name.Length + 1)..];
        }
        return null;
    }

    /// <summary>
    /// digits, an existing file (CSV, whatever its name: a ':' in a path is not a scheme), a known scheme
    /// (idx:, cifar10:, cifar100:), else a CSV path that the loader reports as missing.
    /// </summary>
    private static Dataset LoadSource(string option, string source, int? classes)
    {
        if (source == "digits") return Digits.Load();
        if (source.Length == 0) throw new UsageException($"{option} needs a source: digits, PATH.csv, idx:IMAGES,LABELS, cifar10:FILES or cifar100:FILES.");
        if (File.Exists(source)) return CsvDataset.Load(source, classes: classes);
        if (FashionDirectory(source) is { } directory)
        {
            if (directory.Length == 0) throw new UsageException($"{option} {source}: no folder after ':'; give fashion-mnist alone for Debian's {FashionMnist.DefaultDirectory}.");
            return FashionMnist.Load(test: source.StartsWith(FashionTest, StringComparison.Ordinal), directory);
        }
        RejectDirectory(option, source);
        int colon = source.IndexOf(':');
        var kind = colon > 0 ? source[..colon] : "";
        if (Schemes.Contains(kind, StringComparer.Ordinal))
        {
            var files = source[(colon + 1)..].Split(',', StringSplitOptions.RemoveEmptyEntries);
            if (files.Length == 0) throw new UsageException($"{option} {source}: no files after '{kind}:'.");
            foreach (var file in files) RejectDirectory(option, file);
            return kind switch
            {
                "idx" when files.Length == 2 => IdxDataset.Load(files[0], files[1]),
                "idx" => throw new UsageException($"{option}: idx data needs two files, images then labels: idx:IMAGES,LABELS; got '{source}'."),
                "cifar10" => CifarDataset.Load(files, cifar100: false),
                _ => CifarDataset.Load(files, cifar100: true),
            };
        }
        if (colon > 1 && kind.All(char.IsAsciiLetterOrDigit))
            throw new UsageException($"{option}: unknown data kind '{kind}' in '{source}', and no file of that name exists. Use digits, fashion-mnist, PATH.csv, idx:IMAGES,LABELS, cifar10:FILES or cifar100:FILES.");
        return CsvDataset.Load(source, classes: classes);
    }

    private static void RejectDirectory(string option, string path)
    {
        if (Directory.Exists(path))
            throw new IOException($"{option}: '{path}' is a directory; give a data file (PATH.csv[.gz], idx:IMAGES,LABELS, cifar10:FILES or cifar100:FILES).");
    }
}

/// <summary>The model options: an MLP given by hidden widths or by depth and width, or a CNN given by a spec or a
/// ready-made name.</summary>
internal sealed class ModelOptions
{
    /// <summary>Every line two spaces in (a hole of a raw string indents only its first line by its own position).</summary>
    private static string Indent(string text) => string.Join('\n', text.Split('\n').Select(l => "  " + l.TrimEnd('\r')));

    /// <summary>Far beyond what trains in reasonable time on any machine here; a typo guard, not a memory check
    /// (that is the library's, before allocating).</summary>
    private const int MaxWidth = 1 << 24, MaxLayers = 10_000;

    public readonly Option<string> Model = Opt.String("model", "mlp").Describe("NAME",
        $"mlp, a ready-made CNN ({string.Join(", ", CnnSpec.ReadyMade.Select(r => r.Name))}) or cnn:SPEC (grammar below), or " +
        "localmixer:SPEC (Ren et al.'s LocalMixer with local losses, grammar below). CNNs and mixers need image data: digits " +
        "(8×8×1), fashion-mnist and idx: grey images (H×W×1), cifar10:/cifar100: (32×32×3)");
    public readonly Option<int[]?> Hidden = Opt.IntList("hidden", MaxWidth).Describe("W1,W2,...", "hidden layer widths ('none' for a linear model)");
    public readonly Option<int?> Layers = Opt.OptionalInt("layers", 1, MaxLayers).Describe("L", "alternatively: L weight matrices, hidden layers all of width --width");
    public readonly Option<int?> Width = Opt.OptionalInt("width", 1, MaxWidth).Describe("W", $"the hidden width with --layers (default {DefaultWidth})");
    public readonly Option<string> Activation = Opt.String("activation", "relu").Describe("NAME", "relu, tanh, gelu or identity");
    public readonly Option<string> Init = InitOption.Create();

    /// <summary>The MLP's hidden widths without --hidden or --layers: three weight matrices, "3×128".</summary>
    private static readonly int[] DefaultHidden = [DefaultWidth, DefaultWidth];

    private const int DefaultWidth = 128;

    /// <summary>The CNN and LocalMixer grammars and the ready-made CNNs, after the options.</summary>
    private static readonly string Grammars =
        $"CNN (--model cnn:SPEC or a ready-made name; its activations are in the spec)\n{Indent(CnnSpec.Grammar)}\n  Ready-made:\n" +
        $"{Indent(string.Join("\n", CnnSpec.ReadyMade.Select(r => $"  {r.Name,-15}{r.Purpose}:\n    {r.Layers}")))}\n" +
        $"LocalMixer (--model localmixer:SPEC; guessers then take each site's JVP of its own block's local loss)\n{Indent(LocalMixerSpec.Grammar)}";

    /// <summary>Registers the options; <paramref name="ownModel"/>: the MLP a command builds when no MLP option is given, if
    /// not the usual 3×128 (a study's own network).</summary>
    public void AddTo(DocumentedCommand command, string? ownModel = null)
    {
        command.Section("Model", [Model]);
        command.Section($"MLP (--model mlp; without --hidden or --layers: {ownModel ?? $"--hidden {string.Join(",", DefaultHidden)}, 3 weight matrices, \"3×128\""})",
            [Hidden, Layers, Width, Activation]);
        command.Section("Initialisation (MLP and CNN)", [Init], Grammars);
    }

    /// <summary>The model for the training data's features and classes; its description goes into the configuration
    /// (so into the run hash and the checkpoint's metadata, which resume compares).</summary>
    public Graph.Model Build(ParseResult p, Dataset data, RunConfiguration configuration)
    {
        var name = p.GetValue(Model)!;
        if (name == "mlp")
        {
            var mlp = BuildMlp(p, data);
            configuration.Add("model", Describe(mlp));
            return mlp.Build(InitOption.Read(p, Init, configuration));
        }
        bool custom = name.StartsWith("cnn:", StringComparison.Ordinal), mixer = name.StartsWith("localmixer:", StringComparison.Ordinal);
        if (!custom && !mixer && !CnnSpec.ReadyMade.Any(r => r.Name == name))
            throw new UsageException($"Unknown model '{name}' for --model. Use {Opt.List(["mlp", .. CnnSpec.ReadyMade.Select(r => r.Name), "cnn:SPEC", "localmixer:SPEC"])}.");
        foreach (var option in new Option[] { Hidden, Layers, Width, Activation })
            if (p.Given(option))
                throw new UsageException($"{option.Name} applies only to --model mlp; this run uses --model {name}. Drop {option.Name}: a CNN's layers and activations are in its spec.");
        var input = data.FeatureShape.Rank switch
        {
            3 => data.FeatureShape,
            2 => new Tensors.Shape(data.FeatureShape[0], data.FeatureShape[1], 1), // a grey image without its channel axis
            _ => throw new UsageException($"--model {name} needs image data, but the features of {data.Name} are {(data.FeatureShape.Rank == 1 ? "a vector" : "of shape")} {data.FeatureShape}. " +
                "A CNN takes channels-last images [H, W, C]: digits, fashion-mnist, idx: (grey images) or cifar10:/cifar100:; a CSV's rows are vectors: use --model mlp."),
        };
        if (mixer)
        {
            var mixerSpec = ParseMixer(name, input, data.Classes);
            configuration.Add("model", Describe(mixerSpec));
            return mixerSpec.Build(InitOption.Read(p, Init, configuration));
        }
        CnnSpec spec;
        try { spec = custom ? CnnSpec.Parse(name["cnn:".Length..], input, data.Classes) : CnnSpec.Named(name, input, data.Classes); }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            throw new UsageException($"--model {name}: {e.Message}");
        }
        configuration.Add("model", Describe(spec));
        return spec.Build(InitOption.Read(p, Init, configuration));
    }

    private MlpSpec BuildMlp(ParseResult p, Dataset data)
    {
        if (p.Given(Hidden) && (p.Given(Layers) || p.Given(Width)))
            throw new UsageException($"--hidden and {(p.Given(Layers) ? "--layers" : "--width")} cannot be used together: give the hidden widths as a list (--hidden 128,128) or as depth and width (--layers 3 --width 128).");
        if (p.Given(Width) && !p.Given(Layers))
            throw new UsageException("--width needs --layers (the number of weight matrices); for explicit widths use --hidden W1,W2,....");
        ElementwiseFunction activation;
        try { activation = ElementwiseFunction.Parse(p.GetValue(Activation)!); }
        catch (ArgumentException e) { throw new UsageException($"--activation: {e.Message}"); }
        int[] hidden = p.GetValue(Layers) is int depth
            ? [.. Enumerable.Repeat(p.GetValue(Width) ?? DefaultWidth, depth - 1)]
            : p.Given(Hidden) ? p.GetValue(Hidden) ?? [] : DefaultHidden;
        // A weight matrix is one tensor: its element count must fit an array (2³¹ − 1). Checked here so that the
        // error names the option; whether the whole model fits in memory is the library's check.
        int[] widths = [data.FeatureSize, .. hidden, data.Classes];
        for (int i = 0; i + 1 < widths.Length; i++)
            if ((long)widths[i] * widths[i + 1] > Array.MaxLength)
                throw new UsageException($"{(p.Given(Layers) ? "--width" : "--hidden")}: the {widths[i]}×{widths[i + 1]} weight matrix of layer {i + 1} would have {(long)widths[i] * widths[i + 1]:N0} elements, more than one tensor can hold ({Array.MaxLength:N0}). Use smaller widths.");
        return new MlpSpec(data.FeatureSize, [.. hidden], data.Classes, activation);
    }

    /// <summary>The LocalMixer of "localmixer:SPEC" for this input; a bad spec is a usage error naming the token.</summary>
    public static LocalMixerSpec ParseMixer(string name, Tensors.Shape input, int classes)
    {
        try { return LocalMixerSpec.Parse(name["localmixer:".Length..], input, classes); }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            throw new UsageException($"--model {name}: {e.Message}");
        }
    }

    public static string Describe(LocalMixerSpec spec) =>
        string.Create(CultureInfo.InvariantCulture, $"localmixer {spec.Input[0]}x{spec.Input[1]}x{spec.Input[2]} {spec} -> {spec.Classes} classes");

    public static string Describe(MlpSpec spec) =>
        $"mlp {spec.Inputs}-{string.Join("-", spec.HiddenWidths.Append(spec.Outputs))} {spec.Activation.Name}";

    /// <summary>The input, the canonical spec (a ready-made name resolved: a changed definition is another model) and
    /// the class count.</summary>
    public static string Describe(CnnSpec spec) =>
        string.Create(CultureInfo.InvariantCulture, $"cnn {spec.Input[0]}x{spec.Input[1]}x{spec.Input[2]} {spec} -> {spec.Classes} classes");
}

/// <summary>--init: how the dense and convolution layers start (<see cref="InitScheme"/>).</summary>
internal static class InitOption
{
    public static Option<string> Create() => Opt.Choice("init", InitScheme.Torch.Name, "initialisation", [.. InitScheme.All.Select(s => s.Name)])
        .Describe("NAME", $"{InitScheme.Torch.Name}: weights and biases U(±1/√fan_in) as nn.Linear and nn.Conv2d; {InitScheme.TorchZeroBias.Name}: " +
            "the same weights, zero biases (the only scheme before --init existed: give it to resume a checkpoint from then)");

    /// <summary>The chosen scheme, recorded in the configuration except at torch-zero-bias (see <see cref="RunConfiguration.AddSince"/>).</summary>
    public static InitScheme Read(ParseResult p, Option<string> option, RunConfiguration configuration)
    {
        var scheme = InitScheme.Named(p.GetValue(option)!);
        configuration.AddSince("init", scheme.Name, earlierValue: InitScheme.TorchZeroBias.Name);
        return scheme;
    }
}

/// <summary>The gradient-estimate options: guesser and its knobs, DFA/GrAPE feedback. <paramref name="defaultMode"/>: the
/// tangent mode when --mode is absent (compare runs per-layer, the better mode for activation guessers on digits).</summary>
internal sealed class GuesserOptions(string defaultMode = "joint")
{
    public static readonly string[] Names =
        ["backprop", "directional", "activation-perturbation", "ap", "wt", "downstream", "mixing", "self-sharpening", "wt-power", "cosine-matched", "dfa", "grape", "ren"];

    private static readonly string[] WithMode = ["activation-perturbation", "wt", "downstream", "mixing", "self-sharpening", "wt-power", "grape", "ren"];
    private static readonly string[] WithGuesses = ["directional", "activation-perturbation", "wt", "downstream", "mixing", "self-sharpening", "wt-power", "cosine-matched", "ren"];

    public readonly Option<string> Mode = Opt.Choice("mode", defaultMode, "mode", "joint", "per-layer").Describe("joint|per-layer",
        "one tangent channel for all layers, or one per layer");
    public readonly Option<int> Guesses = Opt.Int("guesses", 1, min: 1, max: 1 << 16).Describe("G", "guesses averaged per step");
    public readonly Option<int> K = Opt.Int("k", 2, min: 1, max: 1 << 16).Describe("K", "layers for 'downstream'");
    public readonly Option<float> Power = Opt.Float("power", 0f, _ => true, "a number").Describe("P", "singular-value power for 'wt-power'");
    public readonly Option<float> Cosine = Opt.Float("cosine", 0.1f, c => c is > 0 and <= 1, "a number in (0, 1]").Describe("C", "target cosine for 'cosine-matched', in (0, 1]");
    public readonly Option<string> FeedbackInit = Opt.Choice("feedback-init", "xavier", "feedback initialisation", "xavier", "kaiming", "gaussian")
        .Describe("NAME", "how DFA's and GrAPE's feedback matrices start: xavier, kaiming or gaussian");
    public readonly Option<string> GrapeRule = Opt.Choice("grape-rule", "original", "GrAPE rule", "original", "original-no-noise", "alt1", "alt2")
        .Describe("NAME", "the feedback rule: original, original-no-noise, alt1 or alt2");
    public readonly Option<float> GrapeLr = Opt.Float("grape-lr", 0.01f, v => v >= 0, "a number ≥ 0").Describe("ETA", "η_B of the feedback rule, ≥ 0");
    public readonly Option<float> GrapeDecay = Opt.Float("grape-decay", 1f, v => v > 0, "a number > 0").Describe("D", "η_B multiplied by D > 0 every step (1: constant)");
    public readonly Option<float> GrapeNoise = Opt.Float("grape-noise", 1e-3f, v => v >= 0, "a number ≥ 0").Describe("S", "noise scale of the original rule, ≥ 0");
    public readonly Option<YesNoAnswer?> GrapeRenormalize = Opt.YesNo("grape-renormalize").Describe("yes|no",
        "keep ‖B‖ at its initial value (default yes for original and original-no-noise, no for alt1/alt2)");
    public readonly Option<YesNoAnswer?> GrapeAverage = Opt.YesNo("grape-average").Describe("yes|no", "cumulative moving average of J̃ over steps (default yes)");
    public readonly Option<string> GrapePlacement = Opt.Choice("grape-placement", "h", "GrAPE placement", "h", "a")
        .Describe("h|a", "tangent on the hidden output h_l or the pre-activation a_l");
    public readonly Option<YesNoAnswer?> Normalize = Opt.YesNo("normalize").Describe("yes|no",
        "rescale each site's guess to rms 1 per example, for 'wt' and 'downstream' (default no)");

    private Option[] GrapeOnly => [GrapeRule, GrapeLr, GrapeDecay, GrapeNoise, GrapeRenormalize, GrapeAverage, GrapePlacement];

    /// <summary>Registers the options under "Gradient estimate" and "Feedback alignment", after <paramref name="guesser"/>
    /// (the command's own --guesser, whose default is the command's). <paramref name="perModel"/>: where the command's help
    /// states the defaults of --mode and --normalize when they depend on the model and method (train, lm).
    /// <paramref name="fixedMethods"/>: the command runs its own methods (compare): only the options that apply to them.</summary>
    public void AddTo(DocumentedCommand command, Option<string>? guesser = null, string? perModel = null, bool fixedMethods = false)
    {
        if (perModel is not null)
        {
            Mode.Description = $"one tangent channel for all layers, or one per layer (default: {perModel})";
            Normalize.Description = $"rescale each site's guess to rms 1 per example, for 'wt' and 'downstream' (default: {perModel})";
        }
        if (fixedMethods)
        {
            command.Section("Methods", [Mode, Guesses, Normalize]);
            command.Section("Feedback alignment (DFA and GrAPE)", [FeedbackInit, .. GrapeOnly], "(--mode joint|per-layer also chooses GrAPE's tangent channels.)");
            return;
        }
        command.Section("Gradient estimate", guesser is null ? [Mode, Guesses, K, Power, Cosine, Normalize] : [guesser, Mode, Guesses, K, Power, Cosine, Normalize]);
        command.Section("Feedback alignment (--guesser dfa or grape)", [FeedbackInit, .. GrapeOnly],
            "(--mode joint|per-layer also chooses GrAPE's tangent channels.) An option that the chosen guesser does not use " +
            "(--k without downstream, --grape-* without grape, …) is an error rather than silently ignored.");
    }

    /// <summary>A command's --guesser, with <paramref name="fallback"/> as its default, offering every guesser but
    /// <paramref name="excluded"/> (lm has no LocalMixer, so no ren).</summary>
    public static Option<string> GuesserOption(string fallback, params string[] excluded)
    {
        string[] names = [.. Names.Where(n => !excluded.Contains(n))];
        return Opt.Choice("guesser", fallback, "guesser", names).Describe("NAME",
            string.Join(", ", names.Where(n => n != "ap").Select(n => n switch
            {
                "activation-perturbation" => "activation-perturbation (ap)",
                "ren" => "ren (Ren et al.'s local forward gradient: LocalMixer only)",
                _ => n,
            })));
    }

    public static string Canonical(string name) => name == "ap" ? "activation-perturbation" : name;

    /// <summary>True for the guessers that --mode applies to.</summary>
    public static bool UsesMode(string name) => WithMode.Contains(name);

    /// <summary>Options that only some guessers use must not be given for a run where none of them does.</summary>
    public void RejectUnused(ParseResult p, IReadOnlyCollection<string> guessers)
    {
        void Require(Option option, string[] users)
        {
            if (p.Given(option) && !guessers.Any(users.Contains))
                throw new UsageException($"{option.Name} applies only to {Opt.List([.. users.Select(u => "--guesser " + u)])}; this run uses {Opt.List([.. guessers])}. Drop {option.Name}.");
        }
        Require(K, ["downstream"]);
        Require(Power, ["wt-power"]);
        Require(Cosine, ["cosine-matched"]);
        Require(Normalize, TrainDefaults.PulledBack);
        Require(FeedbackInit, ["dfa", "grape"]);
        foreach (var option in GrapeOnly) Require(option, ["grape"]);
    }

    /// <summary>The guesser <paramref name="name"/> (canonical) with its options; what it uses goes into <paramref name="configuration"/>
    /// (null: not recorded). <paramref name="defaults"/>: the tangent mode and normalisation when --mode and --normalize are
    /// absent (null: --mode's own default, no normalisation).</summary>
    public Guesser Build(ParseResult p, string name, ulong seed, RunConfiguration? configuration, TrainDefaults? defaults = null)
    {
        var modeName = p.Given(Mode) || defaults is null ? p.GetValue(Mode)! : defaults.Mode;
        var mode = modeName == "per-layer" ? TangentMode.PerLayer : TangentMode.Joint;
        bool normalized = p.Answer(Normalize) ?? defaults?.Normalized ?? false;
        int guesses = p.GetValue(Guesses);
        configuration?.Add("guesser", name);
        if (WithMode.Contains(name)) configuration?.Add("mode", modeName);
        // Recorded only when on: a run from before --normalize existed had none and resumes as it was.
        if (TrainDefaults.PulledBack.Contains(name)) configuration?.AddSince("normalize", normalized ? "yes" : "no", earlierValue: "no");
        if (WithGuesses.Contains(name)) configuration?.Add("guesses", guesses);
        switch (name)
        {
            case "backprop": return Guessers.Backprop;
            case "directional": return Guessers.DirectionalDescent(guesses);
            case "activation-perturbation": return Guessers.ActivationPerturbation(mode, guesses);
            case "wt": return Guessers.WeightTranspose(mode, guesses, normalized);
            case "downstream":
                int k = p.GetValue(K);
                configuration?.Add("k", k);
                return Guessers.Downstream(k, mode, guesses, normalized);
            case "mixing": return Guessers.ActivationMixing(mode, guesses);
            case "self-sharpening": return Guessers.SelfSharpening(mode, guesses);
            case "wt-power":
                float power = p.GetValue(Power);
                configuration?.Add("power", power);
                return Guessers.WeightTransposePower(power, mode, guesses);
            case "cosine-matched":
                float cosine = p.GetValue(Cosine);
                configuration?.Add("cosine", cosine);
                return Guessers.CosineMatched(cosine, guesses);
            // Noise after each LayerNorm, per-(token, group) JVP scalars of each block's local loss, exact heads: the
            // estimator of mixer-table's forward-gradient column, for a LocalMixer trained with train.
            case "ren": return Guessers.RenActivationPerturbation(mode, guesses);
            case "dfa": return Guessers.Dfa(FeedbackInitialization(p, configuration), seed);
            case "grape":
                var init = FeedbackInitialization(p, configuration);
                return Guessers.Grape(Grape(p, mode, configuration), init, seed);
            default: throw new UsageException($"Unknown guesser '{name}'. Use {Opt.List(Names)}.");
        }
    }

    private FeedbackInitialization FeedbackInitialization(ParseResult p, RunConfiguration? configuration)
    {
        var name = p.GetValue(FeedbackInit)!;
        configuration?.Add("feedback-init", name);
        return name switch
        {
            "kaiming" => Guessing.FeedbackInitialization.KaimingUniform,
            "gaussian" => Guessing.FeedbackInitialization.Gaussian,
            _ => Guessing.FeedbackInitialization.XavierUniform,
        };
    }

    private GrapeOptions Grape(ParseResult p, TangentMode mode, RunConfiguration? configuration)
    {
        var ruleName = p.GetValue(GrapeRule)!;
        float eta = p.GetValue(GrapeLr), decay = p.GetValue(GrapeDecay), noise = p.GetValue(GrapeNoise);
        if (p.Given(GrapeNoise) && ruleName != "original")
            throw new UsageException($"--grape-noise applies only to --grape-rule original; this run uses '{ruleName}'. Drop --grape-noise.");
        Schedule rate = decay == 1f ? Schedule.Constant(eta) : Schedule.Exponential(eta, decay);
        bool renormalize = p.Answer(GrapeRenormalize) ?? ruleName.StartsWith("original", StringComparison.Ordinal);
        var rule = ruleName switch
        {
            "original" => FeedbackRules.Original(rate, noise, renormalize),
            "original-no-noise" => FeedbackRules.Original(rate, 0f, renormalize),
            "alt1" => FeedbackRules.Alternative1(rate, 0f, renormalize),
            _ => FeedbackRules.Alternative2(rate, 0f, renormalize),
        };
        var placement = p.GetValue(GrapePlacement)!;
        bool average = p.Answer(GrapeAverage) ?? true;
        if (configuration is not null)
        {
            configuration.Add("grape-rule", ruleName);
            configuration.Add("grape-lr", eta);
            configuration.Add("grape-decay", decay);
            if (ruleName == "original") configuration.Add("grape-noise", noise);
            configuration.Add("grape-renormalize", renormalize ? "yes" : "no");
            configuration.Add("grape-average", average ? "yes" : "no");
            configuration.Add("grape-placement", placement);
        }
        return new GrapeOptions
        {
            Rule = rule, Mode = mode, MovingAverage = average, Label = ruleName,
            Placement = placement == "a" ? TangentPlacement.PreActivation : TangentPlacement.HiddenOutput,
        };
    }
}

/// <summary>The update-rule options: optimizer, learning rate and schedule, clipping.</summary>
internal sealed class RuleOptions
{
    public readonly Option<string> Optimizer = Opt.Choice("optimizer", "sgd", "optimizer", "sgd", "momentum", "nesterov", "adam", "adamw", "stable-adamw")
        .Describe("NAME", "sgd, momentum, nesterov, adam, adamw or stable-adamw");
    public readonly Option<float?> Lr = Opt.OptionalFloat("lr", v => v > 0, "a number > 0 (a negative rate would climb the loss)").Describe("RATE",
        string.Create(CultureInfo.InvariantCulture, $"learning rate > 0 (default {SgdRate} for sgd/momentum/nesterov, {AdamRate} for the Adam family)"));
    public readonly Option<float> Momentum = Opt.Float("momentum", 0.9f, v => v is >= 0 and < 1, "a number in [0, 1)").Describe("M", "for momentum/nesterov, in [0, 1)");
    public readonly Option<float> WeightDecay = Opt.Float("weight-decay", 0.01f, v => v >= 0, "a number ≥ 0").Describe("L", "decoupled weight decay ≥ 0 for adamw/stable-adamw");
    public readonly Option<float?> Clip = Opt.OptionalFloat("clip", v => v > 0, "a norm > 0 (−1 would reverse the estimate, 0 would freeze training)")
        .Describe("C", "clip the estimate to global norm C > 0 first (default: off)");
    public readonly Option<string> Schedule = Opt.Choice("schedule", "constant", "schedule", "constant", "step", "exponential", "cosine")
        .Describe("NAME", "constant, step, exponential or cosine");
    public readonly Option<int> Warmup = Opt.Int("warmup", 0, min: 0).Describe("N", "warm-up steps for 'cosine'");
    public readonly Option<float> Decay = Opt.Float("decay", 0.5f, v => v > 0, "a number > 0")
        .Describe("D", "factor > 0 for 'step' (every quarter of the run) and per-epoch factor for 'exponential'");

    /// <summary>Each optimizer family's usual rate when --lr is absent and no per-model default applies.</summary>
    private const float SgdRate = 0.1f, AdamRate = 1e-3f;

    /// <summary>Registers the options; <paramref name="defaults"/>: the command's own optimizer and rate when it chooses them
    /// (per model and method, or a study's rule), shown in place of the parser's.</summary>
    public void AddTo(DocumentedCommand command, string? defaults = null)
    {
        if (defaults is not null)
        {
            Optimizer.Description = $"sgd, momentum, nesterov, adam, adamw or stable-adamw (default: {defaults})";
            Lr.Description = $"learning rate > 0 (default: {defaults}; with another --optimizer, {SgdRate.ToString(CultureInfo.InvariantCulture)} for sgd/momentum/nesterov, {AdamRate.ToString(CultureInfo.InvariantCulture)} for the Adam family)";
        }
        command.Section("Update rule", [Optimizer, Lr, Momentum, WeightDecay, Clip, Schedule, Warmup, Decay]);
    }

    /// <summary>The update rule; the schedule's length (step, cosine) depends on the run's total steps, which is then recorded.</summary>
    public (UpdateRule Rule, string Description) Build(ParseResult p, int stepsPerEpoch, int epochs, RunConfiguration? configuration, TrainDefaults? defaults = null)
    {
        // Without --optimizer the defaults' optimizer and rate; with it, that optimizer's usual rate.
        var name = p.Given(Optimizer) || defaults is null ? p.GetValue(Optimizer)! : defaults.Optimizer;
        var scheduleName = p.GetValue(Schedule)!;
        if (p.Given(Warmup) && scheduleName != "cosine")
            throw new UsageException($"--warmup applies only to --schedule cosine; this run's schedule is '{scheduleName}'. Drop --warmup.");
        bool adamFamily = name.Contains("adam", StringComparison.Ordinal);
        float rate = p.GetValue(Lr) ?? (defaults is not null && name == defaults.Optimizer ? defaults.Rate : adamFamily ? AdamRate : SgdRate);
        float momentum = p.GetValue(Momentum), decay = p.GetValue(WeightDecay), factor = p.GetValue(Decay);
        float? clip = p.GetValue(Clip);
        long total = (long)stepsPerEpoch * epochs;
        Optim.Schedule schedule = scheduleName switch
        {
            "step" => Optim.Schedule.Step(rate, factor, total / 4, total / 2, 3 * total / 4),
            "exponential" => Optim.Schedule.Exponential(rate, MathF.Pow(factor, 1f / Math.Max(1, stepsPerEpoch))),
            "cosine" => Optim.Schedule.CosineWithWarmup(rate, p.GetValue(Warmup), total),
            _ => Optim.Schedule.Constant(rate),
        };
        UpdateRule rule = name switch
        {
            "momentum" => Optimizers.Momentum(schedule, momentum),
            "nesterov" => Optimizers.Momentum(schedule, momentum, nesterov: true),
            "adam" => Optimizers.Adam(schedule),
            "adamw" => Optimizers.AdamW(schedule, decay),
            "stable-adamw" => Optimizers.StableAdamW(schedule, decay),
            _ => Optimizers.Sgd(schedule),
        };
        if (clip is float c) rule = new ClipByGlobalNorm(c).Then(rule);
        if (configuration is not null)
        {
            configuration.Add("optimizer", name);
            configuration.Add("lr", rate);
            if (name is "momentum" or "nesterov") configuration.Add("momentum", momentum);
            if (name.EndsWith("adamw", StringComparison.Ordinal)) configuration.Add("weight-decay", decay);
            configuration.Add("clip", clip is float cc ? cc.ToString("R", CultureInfo.InvariantCulture) : "off");
            configuration.Add("schedule", scheduleName);
            if (scheduleName is "step" or "exponential") configuration.Add("decay", factor);
            if (scheduleName == "cosine") configuration.Add("warmup", p.GetValue(Warmup));
            // The step and cosine schedules stretch over the whole run: --epochs then changes every later rate.
            if (scheduleName is "step" or "cosine") configuration.Add("schedule-steps", total.ToString(CultureInfo.InvariantCulture));
        }
        var description = string.Create(CultureInfo.InvariantCulture, $"{name} lr {rate} schedule {scheduleName}") +
            (name.EndsWith("adamw", StringComparison.Ordinal) ? string.Create(CultureInfo.InvariantCulture, $" wd {decay}") : "") +
            (name is "momentum" or "nesterov" ? string.Create(CultureInfo.InvariantCulture, $" momentum {momentum}") : "") +
            (clip is null ? "" : string.Create(CultureInfo.InvariantCulture, $" clip {clip}"));
        return (rule, description);
    }
}

/// <summary>The device options of train.</summary>
internal sealed class DeviceOptions
{
    public readonly Option<string> Device = Opt.String("device", "cpu").Describe("cpu|cuda[:N]", "where to train (cuda needs an NVIDIA driver, cuBLAS and NVRTC)");
    public readonly Option<bool> Tf32 = Opt.Flag("tf32").Describe("", "allow TF32 tensor-core GEMMs on CUDA (faster, less exact; default off)");

    public void AddTo(DocumentedCommand command) => command.Section("Device", [Device, Tf32]);

    /// <summary>The backend the options ask for; a CUDA request without a usable GPU is an error that says why.</summary>
    public Backend Create(ParseResult p)
    {
        var device = p.GetValue(Device)!;
        if (device == "cpu") return new CpuBackend();
        int ordinal = 0;
        if (device != "cuda" && !(device.StartsWith("cuda:", StringComparison.Ordinal)
                                  && int.TryParse(device.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out ordinal)))
            throw new UsageException($"--device must be cpu, cuda or cuda:N; got '{device}'.");
        var cuda = ForwardAD.Cuda.CudaBackend.TryCreate(out var reason, ordinal)
            ?? throw new NotSupportedException($"--device {device}: {reason}"); // the option is fine; this machine lacks the GPU: a runtime error (exit 1)
        cuda.UseTf32 = p.GetValue(Tf32);
        return cuda;
    }
}
