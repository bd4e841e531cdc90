namespace ForwardAD.Cli;

/// <summary>An <see cref="IProgress{T}"/> that runs <paramref name="report"/> at once, on the reporting thread (unlike
/// <see cref="Progress{T}"/>, which posts to a synchronisation context): the command's console lines then come in the
/// order of the work, before the call returns.</summary>
internal sealed class Reported<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
