// Uses the packages' public API only: a small MLP on the digits embedded in ForwardAD, a few epochs of Wᵀ guessing
// (a forward-gradient method) with AdamW, and a chart of the test accuracy through ForwardAD.Plots.
using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;
using ForwardAD.Guessing;
using ForwardAD.Optim;
using ForwardAD.Plots;
using ForwardAD.Training;

string chartPath = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "forwardad-consumer.png");

var (train, test) = Digits.Load().Split(0.2, seed: 1);
Model model = MlpSpec.Uniform(inputs: 64, depth: 2, width: 32, outputs: 10, ElementwiseFunction.Relu).Build();
var parameters = ParameterStore.Initialize(model, new CpuBackend(), seed: 1);
var trainer = new Trainer(Guessers.WeightTranspose(TangentMode.PerLayer), Optimizers.AdamW(1e-3f), parameters, train, test,
    new TrainingOptions(BatchSize: 32, Seed: 1));

var epochs = new List<double>();
var accuracy = new List<double>();
EpochReport? last = null;
for (int epoch = 0; epoch < 3; epoch++)
{
    last = trainer.RunEpoch(epoch);
    epochs.Add(epoch + 1);
    accuracy.Add(last.TestAccuracy);
}
if (last is null || !double.IsFinite(last.TrainLoss) || last.TestAccuracy <= 0.2)
{
    Console.Error.WriteLine($"consumer: training did not learn (train loss {last?.TrainLoss}, test accuracy {last?.TestAccuracy})");
    return 1;
}
string written = ChartFile.Save(new LineChart("Wᵀ on digits", "epoch", "test accuracy", [new Series("Wᵀ", epochs, accuracy)]), chartPath);
if (new FileInfo(written).Length == 0)
{
    Console.Error.WriteLine($"consumer: the chart {written} is empty");
    return 1;
}
Console.WriteLine($"consumer: {trainer.Step} steps of Wᵀ, train loss {last.TrainLoss:F3}, test accuracy {last.TestAccuracy:P1}; chart {written}");
return 0;
