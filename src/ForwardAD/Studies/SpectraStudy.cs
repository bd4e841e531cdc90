using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Data;
using ForwardAD.Graph;

namespace ForwardAD.Studies;

/// <summary>A site's spectra: the singular values σ_k of the Jacobian J = ∂(next sites)/∂s (mean over examples of σ_k/σ_1,
/// largest first) and the cumulative explained variance of the site's outputs h = f(s) over examples (k = 1, 2, …).</summary>
public sealed record SiteSpectrum(string Site, double[] JacobianSingularValues, double[] ExplainedVariance)
{
    /// <summary>Effective rank of the mean normalised Jacobian spectrum.</summary>
    public double JacobianEffectiveRank => Training.Metrics.EffectiveRank(JacobianSingularValues);

    /// <summary>Components needed for 90 % of the variance of h (0 without samples).</summary>
    public int ComponentsFor90Percent => Array.FindIndex(ExplainedVariance, v => v >= 0.9) + 1;
}

/// <summary>
/// Figures 2 and 7 of "How to Guess a Gradient": why Wᵀ guesses carry information (and bias) — the Jacobian between
/// consecutive sites has a fast-decaying spectrum, so J_bᵀ ε concentrates in few directions; and the activations span
/// a low-dimensional subspace, which is what activation mixing draws from. Works on any model the library builds: J_b
/// is read row by row by pulling the identity back from the next sites (the same pull-back Wᵀ uses), so residual adds,
/// convolutions and norms count as they really are.
/// </summary>
public static class SpectraStudy
{
    /// <summary>Pull-backs larger than this (next elements × site elements) are skipped: their Gram would not decompose quickly.</summary>
    public const int MaxJacobianSide = 1024;

    /// <remarks>jacobianExamples: Examples whose Jacobian spectra are averaged (the first ones of <paramref name="data"/>).</remarks>
    /// <remarks>activationExamples: Examples whose site outputs are analysed.</remarks>
    /// <remarks>progress: Told each site's spectrum as it is finished (the sites in the model's order).</remarks>
    /// <remarks>cancellationToken: Checked before each site: once cancelled, the study stops with <see cref="OperationCanceledException"/>.</remarks>
    public static List<SiteSpectrum> Run(ParameterStore parameters, Dataset data, int jacobianExamples, int activationExamples, IProgress<SiteSpectrum>? progress = null, CancellationToken cancellationToken = default)
    {
        var model = parameters.Model;
        if (jacobianExamples < 1 || activationExamples < 2 || activationExamples > data.Count || jacobianExamples > data.Count)
            throw new ArgumentException($"Use 1 … {data.Count} examples for the Jacobians and 2 … {data.Count} for the activations; got {jacobianExamples} and {activationExamples}.");
        var backend = parameters.Backend;
        var results = new List<SiteSpectrum>();

        // Activations: one forward pass over the first examples, the site outputs read back.
        var forward = Plan.Compile(parameters, new PlanOptions(activationExamples) { Mode = PlanMode.Evaluation, Retain = [.. model.Sites.Select(s => s.Output)] });
        var features = new float[activationExamples * data.FeatureSize];
        var labels = new float[activationExamples];
        data.CopyBatch(Enumerable.Range(0, activationExamples).ToArray(), features, labels);
        forward.SetInput(model["x"], features);
        forward.SetInput(model["y"], labels);
        forward.Forward();

        // Jacobians: batch 1, one pull-back per site with as many channels as the next sites have elements.
        var single = Plan.Compile(parameters, new PlanOptions(1) { SaveDerivatives = true });
        var one = new float[data.FeatureSize];
        var label = new float[1];
        foreach (var site in model.Sites)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var h = new float[activationExamples * site.ElementCount];
            backend.CopyToHost(forward.Value(site.Output), h);
            var explained = Spectra.ExplainedVariance(h, activationExamples, site.ElementCount);
            var next = site.Next.Select(j => model.Sites[j].Node).ToArray();
            int rows = next.Sum(f => f.Shape.ElementCount), columns = site.ElementCount;
            if (next.Length == 0 || Math.Min(rows, columns) > MaxJacobianSide)
            {
                results.Add(new SiteSpectrum(site.Name, [], explained));
                progress?.Report(results[^1]);
                continue;
            }
            var pullBack = single.CreatePullBack(next, site.Node, rows);
            var jacobian = new float[rows * columns];
            var target = new View(backend.Allocate(rows * columns), 0, rows * columns);
            var mean = new double[Math.Min(rows, columns)];
            for (int e = 0; e < jacobianExamples; e++)
            {
                data.CopyBatch([e], one, label);
                single.SetInput(model["x"], one);
                single.SetInput(model["y"], label);
                single.Forward();
                // Channel c carries the unit cotangent of the c-th element of the next sites (concatenated).
                int offset = 0;
                foreach (var f in next)
                {
                    int size = f.Shape.ElementCount;
                    var seed = new float[rows * size];
                    for (int c = 0; c < size; c++) seed[(offset + c) * size + c] = 1f;
                    backend.CopyFromHost(seed, pullBack.Cotangent(f));
                    offset += size;
                }
                pullBack.Run(target);
                backend.CopyToHost(target, jacobian);
                var sigma = Spectra.SingularValues(jacobian, rows, columns);
                for (int k = 0; k < sigma.Length; k++) mean[k] += sigma[0] > 0 ? sigma[k] / sigma[0] / jacobianExamples : 0;
            }
            results.Add(new SiteSpectrum(site.Name, mean, explained));
            progress?.Report(results[^1]);
        }
        return results;
    }
}
