using System.Globalization;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;

namespace ForwardAD.Cli;

/// <summary>The options shared by the commands: data, model, guesser, update rule.</summary>
internal static class RunSpec
{
    public const string DataHelp = """
        Data
          --data SOURCE             digits (embedded, default); PATH.csv[.gz] (features, then an integer label
                                    per row); idx:IMAGES,LABELS (MNIST IDX files, raw or .gz);
                                    cifar10:FILE[,FILE...] or cifar100:FILE[,FILE...] (binary batches)
          --test-data SOURCE        a separate test set in the same forms (default: split --data)
          --test-fraction F         held-out fraction when splitting, shuffled by the seed (default 0.2)
        """;

    public const string ModelHelp = """
        Model (an MLP; the defaults give 3 weight matrices, "3×128")
          --hidden W1,W2,...        hidden layer widths (default 128,128; 'none' for a linear model)
          --layers L --width W      alternatively: L weight matrices, hidden layers all of width W
          --activation NAME         relu (default), tanh, gelu, identity
        """;

    public const string GuesserHelp = """
        Gradient estimate
          --guesser NAME            backprop (default), directional, activation-perturbation (ap), wt,
                                    downstream, mixing, self-sharpening, wt-power, cosine-matched
          --mode joint|per-layer    one tangent channel for all layers, or one per layer (default joint)
          --guesses G               guesses averaged per step (default 1)
          --k K                     layers for 'downstream' (default 2)
          --power P                 singular-value power for 'wt-power' (default 0)
          --cosine C                target cosine for 'cosine-matched' (default 0.1)
        Feedback alignment (--guesser dfa or grape)
          --feedback-init NAME      xavier (default), kaiming, gaussian
          --grape-rule NAME         original (default), original-no-noise, alt1, alt2
          --grape-lr ETA            η_B of the feedback rule (default 0.01)
          --grape-decay D           η_B multiplied by D every step (default 1: constant)
          --grape-noise S           noise scale of the original rule (default 0.001)
          --grape-renormalize yes|no  keep ‖B‖ at its initial value (default yes for original, no for alt1/alt2)
          --grape-average yes|no    cumulative moving average of J̃ over steps (default yes)
          --grape-placement h|a     tangent on the hidden output h_l (default) or the pre-activation a_l
          (--mode joint|per-layer also chooses GrAPE's tangent channels; default joint)
        """;

    public const string RuleHelp = """
        Update rule
          --optimizer NAME          sgd (default), momentum, nesterov, adam, adamw, stable-adamw
          --lr RATE                 learning rate (default 0.1 for sgd/momentum/nesterov, 0.001 for the Adam family)
          --momentum M              for momentum/nesterov (default 0.9)
          --weight-decay L          decoupled weight decay for adamw/stable-adamw (default 0.01)
          --clip C                  clip the estimate to global norm C first (default: off)
          --schedule NAME           constant (default), step, exponential, cosine
          --warmup N                warm-up steps for 'cosine' (default 0)
          --decay D                 factor for 'step' (every quarter of the run) and per-epoch factor for 'exponential' (default 0.5)
        """;

    public const string DeviceHelp = """
        Device
          --device cpu|cuda[:N]     where to train (default cpu; cuda needs an NVIDIA driver, cuBLAS and NVRTC)
          --tf32                    allow TF32 tensor-core GEMMs on CUDA (faster, less exact; default off)
        """;

    /// <summary>The backend the options ask for; a CUDA request without a usable GPU is an error that says why.</summary>
    public static Backend Device(Options options)
    {
        var device = options.String("device", "cpu");
        bool tf32 = options.Flag("tf32");
        if (device == "cpu") return new CpuBackend();
        if (!device.StartsWith("cuda", StringComparison.Ordinal))
            throw new UsageException($"--device must be cpu or cuda[:N]; got '{device}'.");
        int ordinal = device.Length > 5 && int.TryParse(device[5..], out var n) ? n : 0;
        var cuda = ForwardAD.Cuda.CudaBackend.TryCreate(out var reason, ordinal)
            ?? throw new UsageException($"--device {device}: {reason}");
        cuda.UseTf32 = tf32;
        return cuda;
    }

    public static (Dataset Train, Dataset Test, string Description) LoadData(Options options, ulong seed)
    {
        var source = options.String("data", "digits");
        var testSource = options.OptionalString("test-data");
        float fraction = options.Float("test-fraction", 0.2f);
        var data = Load(source);
        if (testSource is not null) return (data, Load(testSource), $"{source} | {testSource}");
        var (train, test) = data.Split(fraction, seed);
        return (train, test, $"{source} split {fraction.ToString(CultureInfo.InvariantCulture)}");
    }

    private static Dataset Load(string source)
    {
        if (source == "digits") return Digits.Load();
        int colon = source.IndexOf(':');
        if (colon > 1)
        {
            var kind = source[..colon];
            var files = source[(colon + 1)..].Split(',', StringSplitOptions.RemoveEmptyEntries);
            return kind switch
            {
                "idx" when files.Length == 2 => IdxDataset.Load(files[0], files[1]),
                "idx" => throw new UsageException($"idx data needs two files, images then labels: idx:IMAGES,LABELS; got '{source}'."),
                "cifar10" => CifarDataset.Load(files, cifar100: false),
                "cifar100" => CifarDataset.Load(files, cifar100: true),
                _ => throw new UsageException($"Unknown data kind '{kind}' in '{source}'. Use digits, PATH.csv, idx:IMAGES,LABELS, cifar10:FILES or cifar100:FILES."),
            };
        }
        return CsvDataset.Load(source);
    }

    public static MlpSpec Model(Options options, Dataset data)
    {
        var activation = ParseActivation(options.String("activation", "relu"));
        var layers = options.OptionalString("layers");
        if (layers is not null)
        {
            int depth = options.Int("layers", 3, min: 1), width = options.Int("width", 128, min: 1);
            return MlpSpec.Uniform(data.FeatureSize, depth, width, data.Classes, activation);
        }
        var hidden = options.IntList("hidden", "128,128");
        return new MlpSpec(data.FeatureSize, [.. hidden], data.Classes, activation);
    }

    public static string Describe(MlpSpec spec) =>
        $"mlp {spec.Inputs}-{string.Join("-", spec.HiddenWidths.Append(spec.Outputs))} {spec.Activation.Name}";

    public static Guesser Guesser(Options options, string fallback = "backprop") => Guesser(options.String("guesser", fallback), options);

    public static Guesser Guesser(string name, Options options)
    {
        var mode = options.String("mode", "joint") switch
        {
            "joint" => TangentMode.Joint,
            "per-layer" => TangentMode.PerLayer,
            var m => throw new UsageException($"--mode must be joint or per-layer; got '{m}'."),
        };
        int guesses = options.Int("guesses", 1, min: 1);
        return name switch
        {
            "backprop" => Guessers.Backprop,
            "directional" => Guessers.DirectionalDescent(guesses),
            "activation-perturbation" or "ap" => Guessers.ActivationPerturbation(mode, guesses),
            "wt" => Guessers.WeightTranspose(mode, guesses),
            "downstream" => Guessers.Downstream(options.Int("k", 2, min: 1), mode, guesses),
            "mixing" => Guessers.ActivationMixing(mode, guesses),
            "self-sharpening" => Guessers.SelfSharpening(mode, guesses),
            "wt-power" => Guessers.WeightTransposePower(options.Float("power", 0f), mode, guesses),
            "cosine-matched" => Guessers.CosineMatched(options.Float("cosine", 0.1f), guesses),
            "dfa" => Guessers.Dfa(FeedbackInit(options), Seed(options)),
            "grape" => Guessers.Grape(Grape(options, mode), FeedbackInit(options), Seed(options)),
            _ => throw new UsageException($"Unknown guesser '{name}'. Use backprop, directional, activation-perturbation, wt, downstream, mixing, self-sharpening, wt-power, cosine-matched, dfa or grape."),
        };
    }

    private static ulong Seed(Options options) => (ulong)options.Int("seed", 1, min: 0);

    private static FeedbackInitialization FeedbackInit(Options options) => options.String("feedback-init", "xavier") switch
    {
        "xavier" => FeedbackInitialization.XavierUniform,
        "kaiming" => FeedbackInitialization.KaimingUniform,
        "gaussian" => FeedbackInitialization.Gaussian,
        var n => throw new UsageException($"--feedback-init must be xavier, kaiming or gaussian; got '{n}'."),
    };

    private static bool YesNo(Options options, string name, bool fallback) => options.String(name, fallback ? "yes" : "no") switch
    {
        "yes" or "true" or "on" => true,
        "no" or "false" or "off" => false,
        var v => throw new UsageException($"--{name} must be yes or no; got '{v}'."),
    };

    private static GrapeOptions Grape(Options options, TangentMode mode)
    {
        var ruleName = options.String("grape-rule", "original");
        float eta = options.Float("grape-lr", 0.01f), decay = options.Float("grape-decay", 1f), noise = options.Float("grape-noise", 1e-3f);
        Schedule rate = decay == 1f ? Schedule.Constant(eta) : Schedule.Exponential(eta, decay);
        bool renormalize = YesNo(options, "grape-renormalize", ruleName.StartsWith("original", StringComparison.Ordinal));
        var rule = ruleName switch
        {
            "original" => FeedbackRules.Original(rate, noise, renormalize),
            "original-no-noise" => FeedbackRules.Original(rate, 0f, renormalize),
            "alt1" => FeedbackRules.Alternative1(rate, 0f, renormalize),
            "alt2" => FeedbackRules.Alternative2(rate, 0f, renormalize),
            _ => throw new UsageException($"--grape-rule must be original, original-no-noise, alt1 or alt2; got '{ruleName}'."),
        };
        var placement = options.String("grape-placement", "h") switch
        {
            "h" => TangentPlacement.HiddenOutput,
            "a" => TangentPlacement.PreActivation,
            var p => throw new UsageException($"--grape-placement must be h or a; got '{p}'."),
        };
        return new GrapeOptions { Rule = rule, Placement = placement, Mode = mode, MovingAverage = YesNo(options, "grape-average", true), Label = ruleName };
    }

    public static (UpdateRule Rule, string Description) Rule(Options options, int stepsPerEpoch, int epochs)
    {
        var name = options.String("optimizer", "sgd");
        bool adamFamily = name.Contains("adam", StringComparison.Ordinal);
        float rate = options.Float("lr", adamFamily ? 1e-3f : 0.1f);
        float momentum = options.Float("momentum", 0.9f);
        float decay = options.Float("weight-decay", 0.01f);
        var clip = options.OptionalString("clip");
        float clipNorm = clip is null ? 0 : options.Float("clip", 1f);
        var scheduleName = options.String("schedule", "constant");
        long total = (long)stepsPerEpoch * epochs;
        float factor = options.Float("decay", 0.5f);
        Schedule schedule = scheduleName switch
        {
            "constant" => Schedule.Constant(rate),
            "step" => Schedule.Step(rate, factor, total / 4, total / 2, 3 * total / 4),
            "exponential" => Schedule.Exponential(rate, MathF.Pow(factor, 1f / Math.Max(1, stepsPerEpoch))),
            "cosine" => Schedule.CosineWithWarmup(rate, options.Int("warmup", 0, min: 0), total),
            _ => throw new UsageException($"Unknown schedule '{scheduleName}'. Use constant, step, exponential or cosine."),
        };
        UpdateRule rule = name switch
        {
            "sgd" => Optimizers.Sgd(schedule),
            "momentum" => Optimizers.Momentum(schedule, momentum),
            "nesterov" => Optimizers.Momentum(schedule, momentum, nesterov: true),
            "adam" => Optimizers.Adam(schedule),
            "adamw" => Optimizers.AdamW(schedule, decay),
            "stable-adamw" => Optimizers.StableAdamW(schedule, decay),
            _ => throw new UsageException($"Unknown optimizer '{name}'. Use sgd, momentum, nesterov, adam, adamw or stable-adamw."),
        };
        if (clip is not null) rule = new ClipByGlobalNorm(clipNorm).Then(rule);
        var description = string.Create(CultureInfo.InvariantCulture, $"{name} lr {rate} schedule {scheduleName}") +
            (name.EndsWith("adamw", StringComparison.Ordinal) ? string.Create(CultureInfo.InvariantCulture, $" wd {decay}") : "") +
            (name is "momentum" or "nesterov" ? string.Create(CultureInfo.InvariantCulture, $" momentum {momentum}") : "") +
            (clip is null ? "" : string.Create(CultureInfo.InvariantCulture, $" clip {clipNorm}"));
        return (rule, description);
    }

    private static ElementwiseFunction ParseActivation(string name)
    {
        try { return ElementwiseFunction.Parse(name); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }
}
