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

    /// <summary>A byte model's sample need not be UTF-8 (an untrained model at a high temperature draws almost any
    /// byte): the text, and what `forwardad sample` prints, is valid UTF-8 all the same, each invalid sequence U+FFFD.</summary>
    [Fact]
    public async Task A_sample_whose_bytes_are_not_utf8_prints_valid_utf8()
    {
        var store = ParameterStore.Initialize(Tiny.Build(), new CpuBackend(), 1);
        var sampler = new TextSampler(store);
        var strict = new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        var bytes = sampler.SampleBytes("ab", 200, 50, 3);
        Assert.Throws<System.Text.DecoderFallbackException>(() => strict.GetString(bytes)); // the model's bytes are not UTF-8
        var text = sampler.Sample("ab", 200, 50, 3);
        Assert.StartsWith("ab", text);
        Assert.Contains('\uFFFD', text);
        Assert.Equal(text, strict.GetString(strict.GetBytes(text))); // encodes to valid UTF-8, and back

        var folder = Directory.CreateTempSubdirectory("forwardad-sample-").FullName;
        try
        {
            var checkpoint = Path.Combine(folder, "lm.safetensors");
            SafeTensors.Write(checkpoint, [.. store.Model.Parameters.Select(p => (p.Name, (int[])[.. p.Shape.Dimensions], (Func<float[]>)(() => store.ToArray(p))))],
                new Dictionary<string, string> { [TextSampler.SpecKey] = Tiny.ToString() });
            var (code, output, error) = CliTests.Run("sample", "--checkpoint", checkpoint, "--prompt", "ab", "--length", "200", "--temperature", "50", "--seed", "3");
            Assert.True(code == 0, error);
            Assert.Equal(text + Environment.NewLine, output);
            Assert.Equal(output, strict.GetString(strict.GetBytes(output)));
            Assert.Contains("U+FFFD", CliTests.Run("sample", "--help").Out);

            // The tool's own stdout, as bytes, under a locale whose charset is not UTF-8 (it printed Latin-1 there).
            var start = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in (string[])[Path.Combine(AppContext.BaseDirectory, "ForwardAD.Cli.dll"), "sample", "--checkpoint", checkpoint,
                "--prompt", "café ", "--length", "200", "--temperature", "50", "--seed", "3"])
                start.ArgumentList.Add(argument);
            start.Environment["LANG"] = start.Environment["LC_ALL"] = "en_US.ISO-8859-1";
            using var process = System.Diagnostics.Process.Start(start)!;
            var stdout = new MemoryStream();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
            try
            {
                var copy = process.StandardOutput.BaseStream.CopyToAsync(stdout, timeout.Token);
                var stderr = process.StandardError.ReadToEndAsync(timeout.Token);
                await process.WaitForExitAsync(timeout.Token);
                await copy;
                Assert.True(process.ExitCode == 0, await stderr);
            }
            finally { if (!process.HasExited) process.Kill(); }
            var printed = strict.GetString(stdout.ToArray()); // throws on invalid UTF-8
            Assert.StartsWith("café ", printed);
            Assert.Contains('\uFFFD', printed);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    /// <summary>A sample that ends inside a multi-byte character is given the bytes the character still needs.</summary>
    [Theory]
    [InlineData(new byte[] { 0x61 }, 0)]
    [InlineData(new byte[] { 0x61, 0xC3 }, 1)]
    [InlineData(new byte[] { 0xE2, 0x82 }, 1)]
    [InlineData(new byte[] { 0xE2, 0x82, 0xAC }, 0)]
    [InlineData(new byte[] { 0xF0 }, 3)]
    [InlineData(new byte[] { 0xF0, 0x9F, 0x98 }, 1)]
    [InlineData(new byte[] { 0x80, 0x80 }, 0)]
    [InlineData(new byte[] { 0xFF }, 0)]
    public void A_character_cut_at_the_end_is_missing_its_continuation_bytes(byte[] text, int missing) =>
        Assert.Equal(missing, TextSampler.MissingContinuations(text));

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

    /// <summary>A small structured text for the resume tests, and a model whose context fits it.</summary>
    private static readonly TextCorpus Verse = TextCorpus.FromText("verse", string.Concat(Enumerable.Range(0, 200).Select(i => $"to be or not to be {i % 7}\n")));

    private static readonly TransformerSpec Small = new(Layers: 1, Heads: 2, Width: 16, Context: 16);

    private static Dictionary<string, string> Described(bool grape) => new() { ["model"] = $"transformer {Small}", ["guesser"] = grape ? "grape" : "backprop" };

    /// <summary>Backprop with AdamW, or GrAPE (whose feedback matrices are estimator state) with SGD, measuring the cosine
    /// every other step.</summary>
    private static (LanguageModelTrainer Trainer, ParameterStore Store) NewRun(bool grape, ulong seed = 1)
    {
        var store = ParameterStore.Initialize(Small.Build(), new CpuBackend(), seed);
        Guesser guesser = grape ? Guessers.Grape(new GrapeOptions(), seed: 5) : Guessers.Backprop;
        var rule = grape ? Optimizers.Sgd(Schedule.Constant(0.05f)) : Optimizers.AdamW(Schedule.Constant(3e-3f));
        return (new LanguageModelTrainer(guesser, rule, store, Verse, new LanguageModelOptions(4, seed) { ValidationWindows = 8, CosineEvery = 2 }), store);
    }

    private static float[] Bits(ParameterStore store)
    {
        var host = new float[store.All.Length];
        store.Backend.CopyToHost(store.All, host);
        return host;
    }

    /// <summary>Everything of a report but its timings.</summary>
    private static void AssertSameReport(LanguageModelReport expected, LanguageModelReport actual)
    {
        Assert.Equal(expected.Step, actual.Step);
        Assert.Equal(expected.TrainLoss, actual.TrainLoss);
        Assert.Equal(expected.Validation, actual.Validation);
        Assert.Equal(expected.GlobalCosine, actual.GlobalCosine);
        Assert.Equal(expected.SiteCosines.ToArray(), actual.SiteCosines.ToArray());
        Assert.Equal(expected.ExchangedBytesPerStep, actual.ExchangedBytesPerStep);
    }


    /// <summary>12 steps straight (reports at 6 and 12) equal 6 steps, a checkpoint, a fresh trainer resumed from it and 6
    /// more; and equal a run cancelled 3 steps into its second stretch, checkpointed there and resumed: the parameters bit
    /// for bit, and the second report too (its loss and cosine means span the interruption).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_resumed_run_continues_bit_for_bit(bool grape)
    {
        var (straight, straightStore) = NewRun(grape);
        var reports = new[] { straight.Train(6), straight.Train(6) };
        string folder = Directory.CreateTempSubdirectory("forwardad-lm").FullName;
        try
        {
            var (first, firstStore) = NewRun(grape);
            AssertSameReport(reports[0], first.Train(6));
            var atReport = Path.Combine(folder, "at-report.safetensors");
            first.SaveCheckpoint(atReport, Small, Described(grape));
            using var cancel = new CancellationTokenSource();
            Assert.Throws<OperationCanceledException>(() => first.Train(6, new CancelAfter(cancel, 3), cancel.Token));
            Assert.Equal(9, first.Step);
            var interrupted = Path.Combine(folder, "interrupted.safetensors");
            first.SaveCheckpoint(interrupted, Small, Described(grape));

            var (fromReport, fromReportStore) = NewRun(grape);
            fromReport.Resume(atReport, Small, Described(grape));
            Assert.Equal(6, fromReport.Step);
            AssertSameReport(reports[1], fromReport.Train(6));
            Assert.Equal(Bits(straightStore), Bits(fromReportStore));

            var (fromInterruption, fromInterruptionStore) = NewRun(grape);
            fromInterruption.Resume(interrupted, Small, Described(grape));
            Assert.Equal(9, fromInterruption.Step);
            Assert.True(fromInterruption.TrainingTime > TimeSpan.Zero, "the training time before the interruption is restored");
            AssertSameReport(reports[1], fromInterruption.Train(3));
            Assert.Equal(Bits(straightStore), Bits(fromInterruptionStore));

            // The checkpoint still carries what `forwardad sample` reads.
            var (spec, sampled) = TextSampler.Load(interrupted);
            Assert.Equal(Small, spec);
            Assert.Equal(new TextSampler(firstStore).Sample("to be ", 20, 0, 1), new TextSampler(sampled).Sample("to be ", 20, 0, 1));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    /// <summary>A checkpoint of another run (seed, guesser) is refused naming every difference, and the trainer is left as
    /// it was; a classifier's checkpoint and an lm checkpoint of an earlier version (parameters only) are refused naming
    /// what they are, and a classifier's trainer refuses an lm checkpoint likewise.</summary>
    [Fact]
    public void Checkpoints_of_another_run_or_trainer_are_refused_naming_the_cause()
    {
        string folder = Directory.CreateTempSubdirectory("forwardad-lm").FullName;
        try
        {
            var (run, _) = NewRun(grape: false);
            run.Train(2);
            var path = Path.Combine(folder, "lm.safetensors");
            run.SaveCheckpoint(path, Small, Described(false));

            var (otherSeed, otherSeedStore) = NewRun(grape: false, seed: 2);
            var before = Bits(otherSeedStore);
            var seedError = Assert.Throws<CheckpointMismatchException>(() => otherSeed.Resume(path, Small, Described(false))).Message;
            Assert.Contains("seed is '1' but this run's is '2'", seedError);
            Assert.Contains("nothing was changed", seedError);
            Assert.Equal(0, otherSeed.Step);
            Assert.Equal(before, Bits(otherSeedStore));

            var (grape, _) = NewRun(grape: true);
            var guesserError = Assert.Throws<CheckpointMismatchException>(() => grape.Resume(path, Small, Described(true))).Message;
            Assert.Contains("guesser is 'backprop' but this run's is 'grape'", guesserError);
            Assert.Contains("state 'estimator.", guesserError);

            // A classifier's checkpoint, and the reverse.
            var (train, test) = Digits.Load().Subset(Enumerable.Range(0, 100).ToArray(), "digits-100").Split(0.2, 1);
            var mlpStore = ParameterStore.Initialize(new MlpSpec(64, [8], 10, ElementwiseFunction.Relu).Build(), new CpuBackend(), 1);
            var classifier = new Trainer(Guessers.Backprop, Optimizers.Sgd(Schedule.Constant(0.1f)), mlpStore, train, test, new TrainingOptions(16, 1));
            var trainPath = Path.Combine(folder, "train.safetensors");
            classifier.SaveCheckpoint(trainPath, new Dictionary<string, string>());
            Assert.Contains("this is a train checkpoint; resume it with `forwardad train --resume`",
                Assert.Throws<InvalidDataException>(() => NewRun(grape: false).Trainer.Resume(trainPath, Small, Described(false))).Message);
            Assert.Contains("this is an lm checkpoint; resume it with `forwardad lm --resume`",
                Assert.Throws<InvalidDataException>(() => classifier.Resume(path, new Dictionary<string, string>())).Message);

            // Before lm checkpoints could resume they held the parameters and the spec: sample reads them, resume says why not.
            var (old, oldStore) = NewRun(grape: false);
            var parametersOnly = Path.Combine(folder, "parameters-only.safetensors");
            SafeTensors.Write(parametersOnly, [.. oldStore.Model.Parameters.Select(p => (p.Name, (int[])[.. p.Shape.Dimensions], (Func<float[]>)(() => oldStore.ToArray(p))))],
                new Dictionary<string, string> { [TextSampler.SpecKey] = Small.ToString(), ["step"] = "0", ["seed"] = "1" });
            Assert.Equal(Small, TextSampler.Load(parametersOnly).Spec);
            Assert.Contains("saved the parameters only", Assert.Throws<InvalidDataException>(() => old.Resume(parametersOnly, Small, Described(false))).Message);
            Assert.Contains("this is an lm checkpoint", Assert.Throws<InvalidDataException>(() => classifier.Resume(parametersOnly, new Dictionary<string, string>())).Message);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
