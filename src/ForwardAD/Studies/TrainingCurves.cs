using System.Collections.Immutable;
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Training;

namespace ForwardAD.Studies;

/// <summary>One epoch of one guesser's run; <see cref="Extra"/> holds the study's own per-epoch measures (named by the
/// study, e.g. the first layer's effective rank). Epoch 0 is the initial model, before any step.</summary>
public sealed record CurvePoint(string Guesser, int Epoch, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy,
    double Cosine, ImmutableArray<double> Extra);

/// <summary>Where <see cref="TrainingCurves.Run"/> continues a study: the index of the curve in progress and how its
/// trainer is restored.</summary>
/// <param name="Curve">The index (into the guessers) of the curve to continue; the earlier ones are done.</param>
/// <param name="Restore">Restores that curve's freshly built trainer, typically <see cref="Trainer.Resume"/>.</param>
public sealed record CurveResume(int Curve, Action<Trainer> Restore);

/// <summary>
/// Training curves of several guessers from the same initial parameters, data order and update rule (the studies of
/// Figures 4 right, 5 and 7): per epoch the <see cref="Trainer"/>'s report (losses, accuracies, mean cosine of the
/// estimate to the backprop gradient) and optional extra measures of the parameters. A run that diverges stops there;
/// its later epochs are absent (the study says so).
/// </summary>
public static class TrainingCurves
{
    /// <remarks>extra: Per-epoch measures of the parameters (null: none), the same count for every epoch.</remarks>
    /// <remarks>progress: Told each point: after each epoch of each guesser (and each curve's initial point).</remarks>
    /// <remarks>resume: Continues a study: the curves before <see cref="CurveResume.Curve"/> are skipped (their points are
    /// the caller's), and that curve's trainer is restored by <see cref="CurveResume.Restore"/> (from a checkpoint written by
    /// <see cref="Trainer.SaveCheckpoint"/>) and runs from its <see cref="Trainer.NextEpoch"/>, without an initial point.</remarks>
    /// <remarks>started: Called with each curve's index and trainer before its first epoch (after a restore): the trainer a
    /// caller checkpoints after an epoch or a cancellation.</remarks>
    /// <remarks>cancellationToken: Given to <see cref="Trainer.RunEpoch"/>: once cancelled, the curve in progress stops at a
    /// step boundary with <see cref="OperationCanceledException"/>, its trainer consistent (see <paramref name="started"/>).</remarks>
    /// <returns>The points of the curves this call ran, in order.</returns>
    public static List<CurvePoint> Run(Model model, IReadOnlyList<Guesser> guessers, UpdateRule rule, Dataset train, Dataset test,
        TrainingOptions options, int epochs, Func<ParameterStore, double[]>? extra = null, Func<Backend>? backend = null,
        IProgress<CurvePoint>? progress = null, Action<string, Exception>? diverged = null, CurveResume? resume = null,
        Action<int, Trainer>? started = null, CancellationToken cancellationToken = default)
    {
        var points = new List<CurvePoint>();
        for (int curve = resume?.Curve ?? 0; curve < guessers.Count; curve++)
        {
            var guesser = guessers[curve];
            var parameters = ParameterStore.Initialize(model, backend?.Invoke() ?? new CpuBackend(), options.Seed);
            var trainer = new Trainer(guesser, rule, parameters, train, test, options);
            bool restored = resume is not null && curve == resume.Curve;
            if (restored) resume!.Restore(trainer);
            started?.Invoke(curve, trainer);
            if (!restored)
            {
                // Evaluations change nothing a step reads: a resumed curve, which skips them, trains as the straight one.
                var initialTrain = new Evaluator(parameters, train).Evaluate();
                var initialTest = new Evaluator(parameters, test).Evaluate();
                var first = new CurvePoint(guesser.Name, 0, initialTrain.Loss, initialTrain.Accuracy, initialTest.Loss, initialTest.Accuracy,
                    double.NaN, [.. extra?.Invoke(parameters) ?? []]);
                points.Add(first);
                progress?.Report(first);
            }
            for (int epoch = trainer.NextEpoch; epoch < epochs; epoch++)
            {
                EpochReport report;
                try { report = trainer.RunEpoch(epoch, cancellationToken: cancellationToken); }
                catch (TrainingDivergedException e)
                {
                    diverged?.Invoke(guesser.Name, e);
                    break;
                }
                var point = new CurvePoint(guesser.Name, epoch + 1, report.TrainLoss, report.TrainAccuracy, report.TestLoss, report.TestAccuracy,
                    report.GlobalCosine, [.. extra?.Invoke(parameters) ?? []]);
                points.Add(point);
                progress?.Report(point);
            }
        }
        return points;
    }

    /// <summary>The effective rank of the first site's weight (the first layer's), the measure of Figure 5.</summary>
    public static double FirstLayerEffectiveRank(ParameterStore parameters)
    {
        var weight = parameters.Model.Sites[0].Parameters[0];
        var shape = weight.Shape;
        int rows = shape[0], columns = shape.ElementCount / rows;
        return Spectra.EffectiveRank(parameters.ToArray(weight), rows, columns);
    }
}
