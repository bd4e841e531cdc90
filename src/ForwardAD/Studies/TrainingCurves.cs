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

/// <summary>
/// Training curves of several guessers from the same initial parameters, data order and update rule (the studies of
/// Figures 4 right, 5 and 7): per epoch the <see cref="Trainer"/>'s report (losses, accuracies, mean cosine of the
/// estimate to the backprop gradient) and optional extra measures of the parameters. A run that diverges stops there;
/// its later epochs are absent (the study says so).
/// </summary>
public static class TrainingCurves
{
    /// <remarks>extra: Per-epoch measures of the parameters (null: none), the same count for every epoch.</remarks>
    /// <remarks>progress: Called after each epoch of each guesser.</remarks>
    public static List<CurvePoint> Run(Model model, IReadOnlyList<Guesser> guessers, UpdateRule rule, Dataset train, Dataset test,
        TrainingOptions options, int epochs, Func<ParameterStore, double[]>? extra = null, Func<Backend>? backend = null,
        Action<CurvePoint>? progress = null, Action<string, Exception>? diverged = null)
    {
        var points = new List<CurvePoint>();
        foreach (var guesser in guessers)
        {
            var parameters = ParameterStore.Initialize(model, backend?.Invoke() ?? new CpuBackend(), options.Seed);
            var trainer = new Trainer(guesser, rule, parameters, train, test, options);
            var initialTrain = new Evaluator(parameters, train).Evaluate();
            var initialTest = new Evaluator(parameters, test).Evaluate();
            var first = new CurvePoint(guesser.Name, 0, initialTrain.Loss, initialTrain.Accuracy, initialTest.Loss, initialTest.Accuracy,
                double.NaN, [.. extra?.Invoke(parameters) ?? []]);
            points.Add(first);
            progress?.Invoke(first);
            for (int epoch = 0; epoch < epochs; epoch++)
            {
                EpochReport report;
                try { report = trainer.RunEpoch(epoch); }
                catch (TrainingDivergedException e)
                {
                    diverged?.Invoke(guesser.Name, e);
                    break;
                }
                var point = new CurvePoint(guesser.Name, epoch + 1, report.TrainLoss, report.TrainAccuracy, report.TestLoss, report.TestAccuracy,
                    report.GlobalCosine, [.. extra?.Invoke(parameters) ?? []]);
                points.Add(point);
                progress?.Invoke(point);
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
