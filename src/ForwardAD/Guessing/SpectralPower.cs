namespace ForwardAD.Guessing;

/// <summary>
/// M = V diag(σ^q) Vᵀ for W (m×n, row-major) with WᵀW = V diag(σ²) Vᵀ: the symmetric factor that turns
/// Wᵀ = V Σ Uᵀ into V Σ^{q+1} Uᵀ. Cyclic Jacobi eigenvalue iteration in double (Golub &amp; Van Loan §8.5),
/// exact to round-off for the layer widths the spectrum study uses.
/// </summary>
internal static class SpectralPower
{
    public static void Matrix(ReadOnlySpan<float> w, int m, int n, float q, double[] gram, double[] vectors, double[] values, Span<float> result)
    {
        // A = WᵀW.
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++)
            {
                double sum = 0;
                for (int r = 0; r < m; r++) sum += (double)w[r * n + i] * w[r * n + j];
                gram[i * n + j] = gram[j * n + i] = sum;
            }
        JacobiEigen(gram, n, vectors, values);
        double largest = values.Max();
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int k = 0; k < n; k++)
                {
                    // Singular values below round-off of the largest count as zero (σ^q would blow up for q < 0).
                    if (values[k] <= largest * 1e-12) continue;
                    sum += vectors[i * n + k] * Math.Pow(values[k], q / 2.0) * vectors[j * n + k];
                }
                result[i * n + j] = (float)sum;
            }
    }

    /// <summary>Eigen-decomposition of the symmetric matrix a (destroyed): eigenvalues in values,
    /// eigenvectors in the columns of vectors.</summary>
    internal static void JacobiEigen(double[] a, int n, double[] vectors, double[] values)
    {
        Array.Clear(vectors);
        for (int i = 0; i < n; i++) vectors[i * n + i] = 1;
        for (int sweep = 0; sweep < 60; sweep++)
        {
            double off = 0, total = 0;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                {
                    double v = a[i * n + j] * a[i * n + j];
                    total += v;
                    if (i != j) off += v;
                }
            if (off <= 1e-30 * total) break;
            for (int p = 0; p < n - 1; p++)
                for (int q = p + 1; q < n; q++)
                {
                    double apq = a[p * n + q];
                    if (Math.Abs(apq) < 1e-300) continue;
                    double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                    double t = Math.Sign(theta == 0 ? 1 : theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double akp = a[k * n + p], akq = a[k * n + q];
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double apk = a[p * n + k], aqk = a[q * n + k];
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double vkp = vectors[k * n + p], vkq = vectors[k * n + q];
                        vectors[k * n + p] = c * vkp - s * vkq;
                        vectors[k * n + q] = s * vkp + c * vkq;
                    }
                }
        }
        for (int i = 0; i < n; i++) values[i] = Math.Max(0, a[i * n + i]);
    }
}
