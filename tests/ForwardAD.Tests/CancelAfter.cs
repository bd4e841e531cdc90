using ForwardAD.Training;

namespace ForwardAD.Tests;

/// <summary>Stops a run by cancelling its token once <paramref name="after"/> steps of a call have completed, as a Ctrl-C
/// between steps would.</summary>
internal sealed class CancelAfter(CancellationTokenSource source, int after) : IProgress<TrainingProgress>
{
    private int _steps;

    public void Report(TrainingProgress value)
    {
        if (value.Completed is null && ++_steps == after) source.Cancel();
    }
}
