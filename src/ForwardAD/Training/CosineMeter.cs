using ForwardAD.Autodiff;
using ForwardAD.Backends;

namespace ForwardAD.Training;

/// <summary>
/// Sums cos(estimate, exact gradient) over measured steps, per site (its op's parameters together: a dense layer's
/// weight and bias) in <see cref="Graph.Model.Sites"/> order and over all parameters; reductions on the backend, nothing
/// allocated per measurement.
/// </summary>
internal sealed class CosineMeter
{
    private readonly ParameterStore _parameters;
    private readonly (int Offset, int Length)[][] _siteSlices;
    private readonly double[] _sums;

    public CosineMeter(ParameterStore parameters)
    {
        _parameters = parameters;
        var model = parameters.Model;
        var layout = ParameterLayout.Of(model);
        _siteSlices = [.. model.Sites.Select(site => site.Parameters
            .Select(p => layout.Entries.Single(e => e.Parameter == p)).Select(e => (e.Offset, e.Parameter.Shape.ElementCount)).ToArray())];
        _sums = new double[model.Sites.Length + 1];
    }

    public int Measured { get; private set; }

    /// <summary>The running sums (per site, then global) and <see cref="Measured"/>: a checkpoint taken within a stretch
    /// of steps records them, so that the resumed stretch reports the means the uninterrupted one does.</summary>
    public IReadOnlyList<double> Sums => _sums;

    public void Restore(ReadOnlySpan<double> sums, int measured)
    {
        if (sums.Length != _sums.Length) throw new ArgumentException($"{sums.Length} cosine sums for {_sums.Length} (the sites and the global one).", nameof(sums));
        sums.CopyTo(_sums);
        Measured = measured;
    }

    public void Clear()
    {
        Array.Clear(_sums);
        Measured = 0;
    }

    public void Add(View estimate, View exact)
    {
        var backend = _parameters.Backend;
        double allDot = 0, allEstimate = 0, allExact = 0;
        for (int i = 0; i < _siteSlices.Length; i++)
        {
            double dot = 0, ee = 0, gg = 0;
            foreach (var (offset, length) in _siteSlices[i])
            {
                var a = estimate.Slice(offset, length);
                var b = exact.Slice(offset, length);
                dot += backend.Dot(a, b);
                ee += backend.SumOfSquares(a);
                gg += backend.SumOfSquares(b);
            }
            _sums[i] += ee == 0 || gg == 0 ? 0 : dot / Math.Sqrt(ee * gg);
            (allDot, allEstimate, allExact) = (allDot + dot, allEstimate + ee, allExact + gg);
        }
        _sums[^1] += allEstimate == 0 || allExact == 0 ? 0 : allDot / Math.Sqrt(allEstimate * allExact);
        Measured++;
    }

    /// <summary>Mean per site, then the global mean last: 1 for an exact estimator, NaN when nothing was measured.</summary>
    public double[] Means(bool exactGradient) => [.. _sums.Select(sum => exactGradient ? 1.0 : Measured == 0 ? double.NaN : sum / Measured)];
}
