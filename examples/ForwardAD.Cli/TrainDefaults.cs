using System.Globalization;
using ForwardAD.Graph;

namespace ForwardAD.Cli;

/// <summary>
/// What `train` uses for the options not given, per model family and method: one set of defaults for every model and
/// method made some of them diverge (SGD at 0.1 sends activation perturbation and Wᵀ to NaN within five steps on
/// cnn-small) and left joint-mode Wᵀ at chance on batch-norm CNNs. Chosen from measurements (docs/results.md: "Why joint-mode Wᵀ
/// fails on a batch-norm CNN, measured"):
/// <list type="bullet">
/// <item>MLP, backprop/DFA/GrAPE: SGD 0.1, batch 32, joint tangents for GrAPE (GrAPE 94.7/95.6/94.2 % on digits, seeds 1–3).</item>
/// <item>MLP, forward-gradient guessers: AdamW 1e-3, batch 32, per-layer tangents (what `compare` runs).</item>
/// <item>CNN: AdamW 1e-3, batch 64 for every method; per-layer tangents for the forward-gradient guessers and Wᵀ's and
/// k-layer downstream's guesses normalised per site (cnn-small, Fashion-MNIST, one epoch, AdamW 1e-3, batch 64, test
/// accuracy mean ± sd over seeds 1–3: Wᵀ joint 12.6 % (seed 1), joint normalised 51.0 ± 2.1 %, per-layer 76.7 ± 1.4 %,
/// per-layer normalised 79.5 ± 1.9 %; activation perturbation joint 50.4 ± 9.5 %, per-layer 75.7 ± 4.5 %); the cosine
/// measured every 50 steps (a backprop pass each time). k-layer downstream at 1e-4: at 1e-3 it diverges on the deeper
/// batch-norm CNNs (Fashion-MNIST, 3,200 images, two epochs, seed 1: train loss vgg-small 3.22 → 6.11, alexnet-small
/// 4.23 → 14.6; raw guesses alike, alexnet-small 4.06 → 5.31; at 3e-4 alexnet-small 1.97 → 2.30, rising), and at 1e-4 it
/// trains (alexnet-small 2.21 → 1.98) while cnn-small, where 1e-3 works, still learns.</item>
/// <item>LocalMixer: AdamW 1e-3, batch 64 (as `mixer-table`), joint tangents (each site's JVP of its own local loss).</item>
/// </list>
/// </summary>
internal sealed record TrainDefaults(string Family, string Optimizer, float Rate, int BatchSize, string Mode, bool Normalized, int CosineEvery)
{
    /// <summary>Methods that need no guessed direction: the exact gradient and the feedback-alignment rules.</summary>
    private static readonly string[] Exact = ["backprop", "dfa", "grape"];

    /// <summary>The guessers whose guesses are pulled back through the network (their scale then follows its ops).</summary>
    public static readonly string[] PulledBack = ["wt", "downstream"];

    /// <summary>The defaults for --model <paramref name="model"/> (as given) and the canonical guesser name.</summary>
    public static TrainDefaults For(string model, string guesser)
    {
        bool exact = Exact.Contains(guesser);
        if (model == "mlp")
            return exact
                ? new TrainDefaults("MLP", "sgd", 0.1f, 32, "joint", Normalized: false, CosineEvery: 1)
                : new TrainDefaults("MLP", "adamw", 1e-3f, 32, "per-layer", Normalized: false, CosineEvery: 1);
        if (model.StartsWith("localmixer:", StringComparison.Ordinal))
            return new TrainDefaults("LocalMixer", "adamw", 1e-3f, 64, "joint", Normalized: false, CosineEvery: 50);
        return new TrainDefaults("CNN", "adamw", guesser == "downstream" ? 1e-4f : 1e-3f, 64, exact ? "joint" : "per-layer", Normalized: PulledBack.Contains(guesser), CosineEvery: 50);
    }

    /// <summary>`lm`'s defaults (a transformer): AdamW 1e-3 for every method, as its help has always said (the run used SGD at
    /// 0.1 meanwhile); joint tangents (per-layer would be one JVP channel per each of the transformer's many sites); Wᵀ's and
    /// downstream's guesses normalised per site, since they are pulled back through LayerNorms.</summary>
    public static TrainDefaults ForLanguageModel(string guesser) =>
        new("transformer", "adamw", 1e-3f, 32, "joint", Normalized: PulledBack.Contains(guesser), CosineEvery: 50);

    /// <summary>The table of train's help: what <see cref="For"/> gives each model family and kind of method (computed, so
    /// that the help cannot say other defaults than a run takes).</summary>
    public static string Table()
    {
        (string Label, TrainDefaults Defaults)[] rows =
        [
            ("MLP, backprop/dfa/grape", For("mlp", "backprop")),
            ("MLP, other guessers", For("mlp", "activation-perturbation")),
            ("CNN, backprop/dfa/grape", For("cnn-small", "backprop")),
            ("CNN, wt", For("cnn-small", "wt")),
            ("CNN, downstream", For("cnn-small", "downstream")),
            ("CNN, other guessers", For("cnn-small", "activation-perturbation")),
            ("LocalMixer", For("localmixer:", "backprop")),
        ];
        return string.Join('\n', rows.Select(r => $"  {r.Label,-26}{r.Defaults.Options()}")) +
            "\n(joint-mode and raw Wᵀ guesses fail on batch-norm CNNs, and downstream diverges at 0.001 on vgg-small and " +
            "alexnet-small: see docs/results.md)";
    }

    /// <summary>These defaults as the options that would give them.</summary>
    public string Options() => string.Create(CultureInfo.InvariantCulture,
        $"--optimizer {Optimizer} --lr {Rate:G} --batch-size {BatchSize} --mode {Mode}{(Normalized ? " --normalize yes" : "")} --cosine-every {CosineEvery}");

    /// <summary>The defaults a run took (the options it did not give), for its banner; empty when it gave them all.</summary>
    public string Describe(string guesser, bool optimizer, bool rate, bool batch, bool mode, bool normalized, bool cosine)
    {
        var taken = new List<string>();
        if (optimizer) taken.Add(Optimizer);
        if (rate) taken.Add(string.Create(CultureInfo.InvariantCulture, $"lr {Rate:G}"));
        if (batch) taken.Add($"batch {BatchSize}");
        if (mode) taken.Add($"{Mode} tangents");
        if (normalized) taken.Add(Normalized ? "guesses normalised per site" : "guesses not normalised");
        if (cosine) taken.Add(CosineEvery == 0 ? "no cosine" : $"cosine every {CosineEvery} step{(CosineEvery == 1 ? "" : "s")}");
        return taken.Count == 0 ? "" : $"defaults for {(Family == "MLP" ? "an" : "a")} {Family} with {guesser}: {string.Join(", ", taken)} (each can be given)";
    }
}
