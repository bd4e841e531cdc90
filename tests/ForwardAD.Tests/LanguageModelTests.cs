using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>Training a byte-level transformer language model on a text, validating in bits per character, saving it and
/// sampling from the checkpoint (issue 13).</summary>
public class LanguageModelTests
{
    /// <summary>A text with a clear structure: a model that learns it predicts most bytes.</summary>
    private static readonly TextCorpus Corpus = TextCorpus.FromText("abc", string.Concat(Enumerable.Range(0, 300).Select(i => $"the cat sat on mat {i % 10}. ")));

    private static readonly TransformerSpec Tiny = new(Layers: 1, Heads: 2, Width: 16, Context: 12);

    [Fact]
    public void Backprop_learns_a_structured_text_and_the_checkpoint_samples_the_same_text()
    {
        var store = ParameterStore.Initialize(Tiny.Build(), new CpuBackend(), 3);
        var trainer = new LanguageModelTrainer(Guessers.Backprop, Optimizers.AdamW(3e-3f, 0f), store, Corpus, new LanguageModelOptions(16, 1) { ValidationWindows = 64 });
        var before = trainer.Validate();
        // Uniform over 256 bytes is 8 bits; a fresh model is near that.
        Assert.InRange(before.BitsPerCharacter, 6, 12);
        var report = trainer.Train(300);
        Assert.Equal(300, report.Step);
        // The text repeats 21-byte phrases whose only surprise is the digit: well under 1.5 bits per byte once learned.
        Assert.True(report.Validation.BitsPerCharacter < 1.5, $"validation {report.Validation.BitsPerCharacter:F3} bits per character after 300 steps");
        Assert.True(report.Validation.Accuracy > 0.6, $"next-byte accuracy {report.Validation.Accuracy:P1}");

        string folder = Directory.CreateTempSubdirectory("forwardad-lm").FullName;
        try
        {
            var path = Path.Combine(folder, "lm.safetensors");
            trainer.SaveCheckpoint(path, Tiny, new Dictionary<string, string> { ["guesser"] = "backprop" });
            var (spec, loaded) = TextSampler.Load(path);
            Assert.Equal(Tiny, spec);
            string fromTrained = new TextSampler(store).Sample("the cat ", 30, 0.5, 7);
            string fromCheckpoint = new TextSampler(loaded).Sample("the cat ", 30, 0.5, 7);
            Assert.Equal(fromTrained, fromCheckpoint);
            Assert.StartsWith("the cat ", fromTrained);
            Assert.Contains(" on ", new TextSampler(loaded).Sample("the cat sat", 40, 0, 1)); // greedy continues the phrase
            Assert.NotEqual(fromTrained, new TextSampler(store).Sample("the cat ", 30, 0.5, 8));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    [Fact]
    public void Activation_perturbation_trains_a_transformer_and_measures_cosines()
    {
        var store = ParameterStore.Initialize(Tiny.Build(), new CpuBackend(), 3);
        var trainer = new LanguageModelTrainer(Guessers.ActivationPerturbation(), Optimizers.AdamW(1e-3f, 0f), store, Corpus,
            new LanguageModelOptions(8, 1) { ValidationWindows = 32, CosineEvery = 5 });
        var before = trainer.Validate();
        var report = trainer.Train(60);
        Assert.True(report.Validation.Loss < before.Loss, $"validation loss {before.Loss:F3} → {report.Validation.Loss:F3}");
        Assert.Equal(Tiny.Build().Sites.Length, report.SiteCosines.Length);
        Assert.InRange(report.GlobalCosine, 1e-4, 0.9); // a forward gradient is positively aligned, far from exact
    }

    [Fact]
    public void With_a_carved_validation_split_the_test_split_is_evaluated_as_the_uncarved_validation_was()
    {
        var options = new LanguageModelOptions(8, 1) { ValidationWindows = 8 };
        var plain = new LanguageModelTrainer(Guessers.Backprop, Optimizers.AdamW(3e-3f, 0f), ParameterStore.Initialize(Tiny.Build(), new CpuBackend(), 3), Corpus, options);
        var carved = new LanguageModelTrainer(Guessers.Backprop, Optimizers.AdamW(3e-3f, 0f), ParameterStore.Initialize(Tiny.Build(), new CpuBackend(), 3),
            Corpus.WithValidationFraction(0.2), options);
        // The same parameters on the same bytes: the test split of the carved run is the old validation split.
        Assert.Equal(plain.Validate(), carved.Evaluate(HeldOutSplit.Test));
        Assert.NotEqual(plain.Validate().Loss, carved.Validate().Loss);
        Assert.Throws<InvalidOperationException>(() => plain.Evaluate(HeldOutSplit.Test));
        // Reports carry the test evaluation only when there is a test split.
        Assert.Null(plain.Train(2).Test);
        var report = carved.Train(2);
        Assert.NotNull(report.Test);
        Assert.Equal(carved.Evaluate(HeldOutSplit.Test), report.Test);
    }

    [Fact]
    public void Checkpoints_that_are_not_language_models_and_specs_that_cannot_work_are_refused()
    {
        Assert.Contains("multiple of the 3 heads", Assert.Throws<ArgumentException>(() => TransformerSpec.Parse("l2-h3-d16-t8")).Message);
        Assert.Contains("expected l<layers>", Assert.Throws<FormatException>(() => TransformerSpec.Parse("l2-h2-d16")).Message);
        Assert.Equal("l2-h2-d16-t8-v300-m2", TransformerSpec.Parse("L2-H2-D16-T8-V300-M2").ToString());
        string folder = Directory.CreateTempSubdirectory("forwardad-lm").FullName;
        try
        {
            var path = Path.Combine(folder, "other.safetensors");
            SafeTensors.Write(path, [("w", [1], () => [1f])], new Dictionary<string, string>());
            Assert.Contains("not a language-model checkpoint", Assert.Throws<InvalidDataException>(() => TextSampler.Load(path)).Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
