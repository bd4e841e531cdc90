using ForwardAD.Guessing;

namespace ForwardAD.Studies;

/// <summary>
/// Spectral measurements of the studies (docs/design.md §2, metrics): singular values of a matrix, the cumulative
/// explained variance of a cloud of samples (PCA), the effective rank. Host code in double: a study's matrices are
/// the widths of a layer, and the eigen-decomposition is the cyclic Jacobi of <see cref="SpectralPower"/>.
/// </summary>
public static class Spectra
{
    /// <summary>Singular values of the row-major <paramref name="rows"/>×<paramref name="columns"/> matrix, largest first:
    /// square roots of the eigenvalues of the smaller Gram matrix (AᵀA or AAᵀ), min(rows, columns) of them.</summary>
    public static double[] SingularValues(ReadOnlySpan<float> matrix, int rows, int columns)
    {
        if (rows < 1 || columns < 1 || matrix.Length != rows * columns)
            throw new ArgumentException($"A {rows}×{columns} matrix needs {(long)rows * columns} values; got {matrix.Length}.", nameof(matrix));
        int k = Math.Min(rows, columns);
        var gram = new double[k * k];
        bool byColumns = columns <= rows; // AᵀA (columns × columns) when that is the smaller
        for (int i = 0; i < k; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = 0;
                if (byColumns) for (int r = 0; r < rows; r++) sum += (double)matrix[r * columns + i] * matrix[r * columns + j];
                else for (int c = 0; c < columns; c++) sum += (double)matrix[i * columns + c] * matrix[j * columns + c];
                gram[i * k + j] = gram[j * k + i] = sum;
            }
        var values = Eigenvalues(gram, k);
        return [.. values.Select(Math.Sqrt)];
    }

    /// <summary>
    /// The cumulative fraction of variance explained by the first k principal components, k = 1 … min(count, features):
    /// the samples (row-major, <paramref name="count"/> rows of <paramref name="features"/>) are centred, and the
    /// eigenvalues λ of their covariance give Σ_{i≤k} λ_i / Σ λ. The last entry is 1 (or 0 for constant samples).
    /// </summary>
    public static double[] ExplainedVariance(ReadOnlySpan<float> samples, int count, int features)
    {
        if (count < 1 || features < 1 || samples.Length != count * features)
            throw new ArgumentException($"{count} samples of {features} features need {(long)count * features} values; got {samples.Length}.", nameof(samples));
        var centred = new double[count * features];
        for (int f = 0; f < features; f++)
        {
            double mean = 0;
            for (int s = 0; s < count; s++) mean += samples[s * features + f];
            mean /= count;
            for (int s = 0; s < count; s++) centred[s * features + f] = samples[s * features + f] - mean;
        }
        // The non-zero eigenvalues of XᵀX and XXᵀ agree: decompose the smaller.
        int k = Math.Min(count, features);
        var gram = new double[k * k];
        bool byFeatures = features <= count;
        for (int i = 0; i < k; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = 0;
                if (byFeatures) for (int s = 0; s < count; s++) sum += centred[s * features + i] * centred[s * features + j];
                else for (int f = 0; f < features; f++) sum += centred[i * features + f] * centred[j * features + f];
                gram[i * k + j] = gram[j * k + i] = sum;
            }
        var values = Eigenvalues(gram, k);
        double total = values.Sum();
        var cumulative = new double[k];
        double running = 0;
        for (int i = 0; i < k; i++)
        {
            running += values[i];
            cumulative[i] = total > 0 ? Math.Min(1, running / total) : 0;
        }
        return cumulative;
    }

    /// <summary>Effective rank (Roy &amp; Vetterli 2007) of a matrix: exp of the entropy of its normalised singular values.</summary>
    public static double EffectiveRank(ReadOnlySpan<float> matrix, int rows, int columns) =>
        Training.Metrics.EffectiveRank(SingularValues(matrix, rows, columns));

    /// <summary>Eigenvalues of the symmetric k×k matrix (destroyed), largest first, clamped at 0.</summary>
    private static double[] Eigenvalues(double[] symmetric, int k)
    {
        var vectors = new double[k * k];
        var values = new double[k];
        SpectralPower.JacobiEigen(symmetric, k, vectors, values);
        Array.Sort(values, (a, b) => b.CompareTo(a));
        return values;
    }
}
