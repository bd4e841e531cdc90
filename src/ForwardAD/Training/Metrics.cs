namespace ForwardAD.Training;

/// <summary>Measures of how good an estimate is (docs/design.md §2, "Metrics").</summary>
public static class Metrics
{
    /// <summary>cos(a, b) = a·b / (‖a‖‖b‖), in double; 0 when either is zero.</summary>
    public static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"Cosine of vectors of different lengths ({a.Length} and {b.Length}).");
        double dot = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { dot += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
        return aa == 0 || bb == 0 ? 0 : dot / Math.Sqrt(aa * bb);
    }

    /// <summary>Effective rank (Roy &amp; Vetterli 2007): exp of the Shannon entropy of the normalised singular values.</summary>
    public static double EffectiveRank(ReadOnlySpan<double> singularValues)
    {
        double total = 0;
        foreach (var s in singularValues) total += Math.Abs(s);
        if (total == 0) return 0;
        double entropy = 0;
        foreach (var s in singularValues)
        {
            double p = Math.Abs(s) / total;
            if (p > 0) entropy -= p * Math.Log(p);
        }
        return Math.Exp(entropy);
    }
}
