using System.Globalization;
using System.Text.RegularExpressions;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// A decoder-only, pre-LayerNorm transformer language model (GPT-2's block): token embedding + learned positions, then
/// <see cref="Layers"/> blocks h ← h + proj(attention(q, k, v of LN₁(h))), h ← h + fc₂(GELU(fc₁(LN₂(h)))), a final
/// LayerNorm and a linear head to the vocabulary; the loss is the per-example mean cross-entropy of each position's
/// next token. Inputs "x" (tokens [T]) and targets "y" (tokens [T], the next token at each position). Every projection
/// (q, k, v, proj, fc₁, fc₂, head), the embeddings and the LayerNorms' affine parameters are sites.
/// </summary>
public sealed partial record TransformerSpec(int Layers, int Heads, int Width, int Context, int Vocabulary = 256, int MlpRatio = 4)
{
    /// <summary>The textual form used by the CLI: "l4-h4-d128-t64" (layers, heads, width, context), optionally "-v256"
    /// (vocabulary) and "-m4" (MLP width ratio). <see cref="ToString"/> writes it back.</summary>
    public const string Grammar = "l<layers>-h<heads>-d<width>-t<context>[-v<vocabulary>][-m<mlp ratio>], e.g. l4-h4-d128-t64";

    /// <summary>Reads a spec in <see cref="Grammar"/> form (case and surrounding spaces ignored; v defaults to 256, m to 4)
    /// and validates it.</summary>
    /// <exception cref="FormatException">The text does not match the grammar; the message names each part that is wrong
    /// (unknown, repeated, missing, too long or out of order).</exception>
    /// <exception cref="ArgumentException">The sizes cannot work (see <see cref="Validate"/>).</exception>
    public static TransformerSpec Parse(string text)
    {
        var match = SpecPattern().Match(text.Trim().ToLowerInvariant());
        if (!match.Success)
            throw new FormatException($"'{text}' is not a transformer spec: {Diagnose(text.Trim().ToLowerInvariant())}; expected {Grammar}.");
        int Group(string name, int fallback) => match.Groups[name].Success ? int.Parse(match.Groups[name].Value, CultureInfo.InvariantCulture) : fallback;
        var spec = new TransformerSpec(Group("l", 0), Group("h", 0), Group("d", 0), Group("t", 0), Group("v", 256), Group("m", 4));
        spec.Validate();
        return spec;
    }

    /// <summary>Why a text is not a spec, named per part: an unknown part, a size repeated, missing or longer than the
    /// grammar takes, or the parts out of order.</summary>
    private static string Diagnose(string text)
    {
        const string Letters = "lhdtvm";
        string[] names = ["layer count", "head count", "width", "context", "vocabulary", "MLP ratio"];
        int[] digits = [4, 4, 6, 6, 7, 3];
        var problems = new List<string>();
        var seen = new List<int>();
        foreach (var part in text.Split('-'))
        {
            int kind = part.Length >= 2 ? Letters.IndexOf(part[0], StringComparison.Ordinal) : -1;
            if (kind < 0 || !part[1..].All(char.IsAsciiDigit)) { problems.Add($"'{part}' is not a size (one of l, h, d, t, v, m and a number)"); continue; }
            if (seen.Contains(kind)) problems.Add($"the {names[kind]} is given twice");
            seen.Add(kind);
            if (part.Length - 1 > digits[kind]) problems.Add($"the {names[kind]} {part[1..]} has more than the {digits[kind]} digits a spec takes");
        }
        for (int kind = 0; kind < 4; kind++)
            if (!seen.Contains(kind)) problems.Add($"the {names[kind]} ({Letters[kind]}N) is missing");
        if (problems.Count == 0 && !seen.SequenceEqual(seen.Order())) problems.Add("the sizes must come in the order l, h, d, t, v, m");
        return problems.Count == 0 ? "it does not match the grammar" : string.Join("; ", problems);
    }

    [GeneratedRegex(@"^l(?<l>\d{1,4})-h(?<h>\d{1,4})-d(?<d>\d{1,6})-t(?<t>\d{1,6})(-v(?<v>\d{1,7}))?(-m(?<m>\d{1,3}))?$")]
    private static partial Regex SpecPattern();

    /// <summary>Throws naming the size that cannot work.</summary>
    public void Validate()
    {
        if (Layers < 1 || Heads < 1 || Width < 1 || Context < 1 || Vocabulary < 2 || MlpRatio < 1)
            throw new ArgumentException($"Transformer {this}: layers, heads, width, context and MLP ratio must be at least 1 and the vocabulary at least 2.");
        if (Width % Heads != 0)
            throw new ArgumentException($"Transformer {this}: the width {Width} must be a multiple of the {Heads} heads (each head takes width/heads columns).");
    }

    /// <summary>The canonical <see cref="Grammar"/> text, "-v" and "-m" only where they differ from 256 and 4:
    /// <see cref="Parse"/> reads it back to an equal spec.</summary>
    public override string ToString() =>
        $"l{Layers}-h{Heads}-d{Width}-t{Context}{(Vocabulary != 256 ? $"-v{Vocabulary}" : "")}{(MlpRatio != 4 ? $"-m{MlpRatio}" : "")}";

    /// <summary>The model; its projections and head start as <paramref name="init"/> says (<see cref="InitScheme.Torch"/>
    /// when null), the token embedding N(0, 1) as nn.Embedding, the positions as <paramref name="positions"/> says
    /// (N(0, 0.02²) as GPT-2 by default).</summary>
    public Model Build(InitScheme? init = null, PositionInit positions = PositionInit.Gpt2)
    {
        Validate();
        var b = new ModelBuilder(init);
        var x = b.Tokens("x", Context, Vocabulary);
        var y = b.Tokens("y", Context, Vocabulary);
        var h = b.PositionalEmbedding("pos", b.Embedding("embed", x, Width), Context, positions.Initializer());
        for (int l = 1; l <= Layers; l++)
        {
            string block = $"block{l}";
            var a = b.LayerNorm($"{block}.ln1", h);
            Node Projection(string name, Node input, int width, ElementwiseFunction? activation = null) =>
                b.Dense($"{block}.{name}", input, width, activation ?? ElementwiseFunction.Identity).Output;
            var attention = b.CausalSelfAttention($"{block}.attn", Projection("q", a, Width), Projection("k", a, Width), Projection("v", a, Width), Heads);
            h = b.Add($"{block}.res1", h, Projection("proj", attention, Width));
            var hidden = Projection("fc1", b.LayerNorm($"{block}.ln2", h), MlpRatio * Width, ElementwiseFunction.Gelu);
            h = b.Add($"{block}.res2", h, Projection("fc2", hidden, Width));
        }
        var logits = b.Dense("head", b.LayerNorm("ln_f", h), Vocabulary, ElementwiseFunction.Identity).Output;
        return b.Build(b.SequenceCrossEntropy("loss", logits, y), logits);
    }
}

/// <summary>How a transformer's learned position table P [T, D] starts.</summary>
public enum PositionInit
{
    /// <summary>N(0, 0.02²), as GPT-2 (and nanoGPT) initialise their position embeddings: small next to the token
    /// embedding, so that positions start as a slight perturbation of the tokens.</summary>
    Gpt2,
    /// <summary>N(0, 1), what a PyTorch model that keeps its positions in an nn.Embedding starts with (its default init),
    /// the same scale as the token embedding.</summary>
    Embedding,
}

/// <summary>Names and initialisers of <see cref="PositionInit"/>.</summary>
public static class PositionInits
{
    /// <summary>The name a run's configuration and the CLI use: "gpt2" or "embedding".</summary>
    public static string Name(this PositionInit init) => init switch
    {
        PositionInit.Gpt2 => "gpt2",
        PositionInit.Embedding => "embedding",
        _ => throw new ArgumentOutOfRangeException(nameof(init), init, "Not a position initialisation."),
    };

    /// <summary>The choice called <paramref name="name"/> (see <see cref="Name"/>).</summary>
    public static PositionInit Parse(string name) => name switch
    {
        "gpt2" => PositionInit.Gpt2,
        "embedding" => PositionInit.Embedding,
        _ => throw new ArgumentException($"No position initialisation named '{name}'. Use gpt2 (N(0, 0.02²), the default) or embedding (N(0, 1)).", nameof(name)),
    };

    internal static Initializer Initializer(this PositionInit init) => init switch
    {
        PositionInit.Gpt2 => new NormalInitializer(0.02f),
        PositionInit.Embedding => new NormalInitializer(1f),
        _ => throw new ArgumentOutOfRangeException(nameof(init), init, "Not a position initialisation."),
    };
}
