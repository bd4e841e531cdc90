using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Ren et al.'s LocalMixer ("Scaling Forward Gradient With Local Losses", ICLR 2023, §4 and their reference code
/// google-research/local_forward_gradient): an MLP-Mixer for channels-last images <see cref="Input"/> [H, W, C] whose blocks
/// each learn from their own grouped local loss, with a stop-gradient between blocks.
/// <list type="bullet">
/// <item>Patch embedding: a convolution with kernel = stride = <see cref="Patch"/> to <see cref="Width"/> channels, read as
/// P = (H/patch)·(W/patch) tokens [P, Width], then LayerNorm (no affine, as theirs) and ReLU.</item>
/// <item>Block: a = LN(h); token mixing t = ReLU(LN(W_tok a + b)) (a linear map across the P tokens, or, with
/// <see cref="TokenHidden"/> &gt; 0, two with a hidden token count, as MLP-Mixer); channel mixing
/// c = ReLU(LN(t W₁ᵀ + b₁)) to <see cref="Expansion"/>·Width channels, then the group-wise linear layer (each of the
/// <see cref="Groups"/> groups its own weights) back to Width, LayerNorm within each group; out = ReLU(that + h).
/// As in their code, every linear output is normalised before its ReLU, and the groups stay apart from the group-wise
/// layer to the block's output, so a group's local loss sees its own channels only.</item>
/// <item>Local loss per block: the block's output averaged over tokens, each group's channels classified by the group's
/// own linear head, the cross-entropy averaged over groups (<see cref="GroupedSoftmaxCrossEntropyOp"/>).</item>
/// <item>Stop-gradient before every block but the first (the patch embedding belongs to block 1) and before the final
/// head: token average, LayerNorm, a linear classifier ("classifier"), the network's prediction and main loss "loss".</item>
/// </list>
/// Inputs "x" (not differentiable) and labels "y". <see cref="ToString"/> is the text form <see cref="Parse"/> reads.
/// </summary>
public sealed record LocalMixerSpec(Shape Input, int Patch, int Width, int Blocks, int Groups, int Classes, int Expansion = 1, int TokenHidden = 0)
{
    public const string Grammar = """
        A LocalMixer spec is options separated by '-', in any order (p, d, b and g are required):
          p<N>   patch size: N×N patches, kernel = stride = N (must divide the image height and width)
          d<N>   width: channels of every token
          b<N>   blocks, each with its own local loss
          g<N>   channel groups (must divide the width): each group has its own weights and local head
          e<N>   channel-mixing expansion: hidden channels = N·width (default 1, Ren et al.'s)
          t<N>   token-mixing hidden tokens (default 0: one linear map across the tokens, Ren et al.'s)
        Example: p4-d64-b2-g4 (28×28 images: 49 tokens of 64 channels, 2 blocks, 4 groups of 16 channels)
        """;

    /// <summary>Tokens per example: (H/patch)·(W/patch).</summary>
    public int Tokens => Input[0] / Patch * (Input[1] / Patch);

    /// <summary>Parses <paramref name="text"/> (see <see cref="Grammar"/>) for the input and class count, and validates it.</summary>
    /// <exception cref="FormatException">A token is not in the grammar; the message names it and the fix.</exception>
    /// <exception cref="ArgumentException">The sizes do not fit the input; the message names the option and the fix.</exception>
    public static LocalMixerSpec Parse(string text, Shape input, int classes)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (string.IsNullOrWhiteSpace(text)) throw new FormatException($"The LocalMixer spec is empty; give at least p, d, b and g, as in p4-d64-b2-g4.\n{Grammar}");
        var values = new Dictionary<char, int>();
        foreach (var raw in text.Split('-'))
        {
            var token = raw.Trim().ToLowerInvariant();
            if (token.Length == 0) throw new FormatException($"LocalMixer spec '{text}': an empty option (two '-' in a row, or one at an end). Remove the extra '-'.\n{Grammar}");
            char letter = token[0];
            if (!"pdbget".Contains(letter))
                throw new FormatException($"LocalMixer spec '{text}': unknown option '{token}'; options are p, d, b, g, e and t followed by a number.\n{Grammar}");
            if (token.Length == 1 || !token.AsSpan(1).ToString().All(char.IsAsciiDigit))
                throw new FormatException($"LocalMixer spec '{text}': option '{token}' needs a whole number after '{letter}', as in {letter}4.\n{Grammar}");
            if (!int.TryParse(token.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out int value))
                throw new FormatException($"LocalMixer spec '{text}': the number in '{token}' is too large.");
            if (!values.TryAdd(letter, value)) throw new FormatException($"LocalMixer spec '{text}': option '{letter}' is given twice; keep one '{token}'.");
        }
        foreach (char required in "pdbg")
            if (!values.ContainsKey(required))
                throw new FormatException($"LocalMixer spec '{text}': option {required}<N> is missing; add it (for example -{required}{required switch { 'p' => 4, 'd' => 64, 'b' => 2, _ => 4 }}).\n{Grammar}");
        var spec = new LocalMixerSpec(input, values['p'], values['d'], values['b'], values['g'], classes, values.GetValueOrDefault('e', 1), values.GetValueOrDefault('t', 0));
        spec.Validate();
        return spec;
    }

    /// <summary>Throws naming the option that cannot work and what would.</summary>
    public void Validate()
    {
        if (Input.Rank != 3 || Input.Dimensions.Any(d => d < 1))
            throw new ArgumentException($"A LocalMixer needs a channels-last image input [H, W, C] with positive sizes; got {Input}.");
        if (Classes < 2) throw new ArgumentException($"A classifier needs at least 2 classes; got {Classes}.");
        if (Patch < 1 || Input[0] % Patch != 0 || Input[1] % Patch != 0)
            throw new ArgumentException($"LocalMixer {this}: p{Patch} must divide the image's height {Input[0]} and width {Input[1]}; use a divisor (for {Input[0]}×{Input[1]}: " +
                $"{string.Join(", ", Enumerable.Range(1, Math.Min(Input[0], Input[1])).Where(p => Input[0] % p == 0 && Input[1] % p == 0).Select(p => $"p{p}"))}).");
        if (Width < 1) throw new ArgumentException($"LocalMixer {this}: d{Width}: the width must be at least 1, as in d64.");
        if (Blocks < 1) throw new ArgumentException($"LocalMixer {this}: b{Blocks}: at least one block, as in b2.");
        if (Groups < 1 || Width % Groups != 0)
            throw new ArgumentException($"LocalMixer {this}: g{Groups} must divide the width d{Width} (each group takes width/groups channels); use a divisor such as g{Divisor(Width, Groups)}.");
        if (Expansion < 1) throw new ArgumentException($"LocalMixer {this}: e{Expansion}: the channel-mixing expansion must be at least 1.");
        if (TokenHidden < 0) throw new ArgumentException($"LocalMixer {this}: t{TokenHidden}: the token-mixing hidden size is 0 (one linear map) or positive.");
        if ((long)Expansion * Width * Width > Array.MaxLength || (long)Tokens * Math.Max(Tokens, TokenHidden) > Array.MaxLength)
            throw new ArgumentException($"LocalMixer {this}: a weight would have more elements than one tensor can hold; use smaller d, e, t or a larger p.");

        static int Divisor(int n, int near) => Enumerable.Range(1, n).Where(d => n % d == 0).MinBy(d => Math.Abs(d - near));
    }

    public override string ToString()
    {
        var text = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"p{Patch}-d{Width}-b{Blocks}-g{Groups}"));
        if (Expansion != 1) text.Append(CultureInfo.InvariantCulture, $"-e{Expansion}");
        if (TokenHidden != 0) text.Append(CultureInfo.InvariantCulture, $"-t{TokenHidden}");
        return text.ToString();
    }

    /// <summary>Node names of block <paramref name="block"/> (1-based) start with this.</summary>
    public static string BlockName(int block) => string.Create(CultureInfo.InvariantCulture, $"block{block}");

    /// <summary>The model (see the type's summary); its local losses are "block1.loss" … in block order. <paramref name="init"/>:
    /// how its dense and convolution layers start (PyTorch's defaults when null).</summary>
    public Model Build(InitScheme? init = null)
    {
        Validate();
        var b = new ModelBuilder(init);
        var x = b.Input("x", Input, differentiable: false);
        var y = b.ClassLabels("y", Classes);
        int tokens = Tokens, groupWidth = Width / Groups;
        var patches = b.Conv2d("patch", x, Width, kernel: Patch, stride: Patch);
        Node h = b.Activation("patch.relu", b.LayerNorm("patch.ln", b.Reshape("patch.tokens", patches, new Shape(tokens, Width)), affine: false), ElementwiseFunction.Relu);
        var localLosses = ImmutableArray.CreateBuilder<Node>(Blocks);
        var lossBlocks = ImmutableArray.CreateBuilder<LocalLossBlocks>(Blocks);
        for (int i = 1; i <= Blocks; i++)
        {
            string n = BlockName(i);
            var input = i == 1 ? h : b.StopGradient($"{n}.in", h);
            // Token mixing: a linear map across tokens (two with a hidden token count), each normalised over channels, ReLU.
            Node t = b.LayerNorm($"{n}.ln", input, affine: false);
            if (TokenHidden > 0)
                t = NormRelu($"{n}.token0", b.TokenMixing($"{n}.token0", t, TokenHidden));
            t = NormRelu($"{n}.token", b.TokenMixing($"{n}.token", t, tokens));
            // Channel mixing: dense to e·width, then the group-wise layer back to width, normalised within each group.
            var hidden = NormRelu($"{n}.channel1", b.Dense($"{n}.channel1", t, Expansion * Width, ElementwiseFunction.Identity).Output);
            var grouped = b.Reshape($"{n}.channel2.groups", b.GroupedLinear($"{n}.channel2", hidden, Width, Groups), new Shape(tokens, Groups, groupWidth));
            var normalized = b.Reshape($"{n}.channel2.merged", b.LayerNorm($"{n}.channel2.ln", grouped, affine: false), new Shape(tokens, Width));
            h = b.Activation($"{n}.relu", b.Add($"{n}.residual", normalized, input), ElementwiseFunction.Relu);
            // Local loss: token average, each group's own head, cross-entropy averaged over groups.
            var pooled = b.GlobalAvgPool($"{n}.pool", b.Reshape($"{n}.pool.image", h, new Shape(tokens, 1, Width)));
            var logits = b.Reshape($"{n}.head.logits", b.GroupedLinear($"{n}.head", pooled, Groups * Classes, Groups), new Shape(Groups, Classes));
            localLosses.Add(b.GroupedSoftmaxCrossEntropy($"{n}.loss", logits, y));
            // How each site's tangent reaches h on its way to this loss (Ren et al.'s local forward gradients):
            // channel2 [P, C]: LayerNorm within each group, the residual add and ReLU act per (token, group): TokenGroup.
            // channel1 and token: LayerNorm over all of a token's channels, then per-token ops: Token (the LayerNorm couples
            // the groups of a token; Ren et al. add their noise after it, so theirs reaches per (token, group)).
            // token0 and the patch embedding: a token-mixing layer follows, which mixes the tokens: Example.
            var sites = ImmutableArray.CreateBuilder<SiteBlocks>();
            sites.Add(new SiteBlocks(Named($"{n}.token"), BlockPartition.Token));
            sites.Add(new SiteBlocks(Named($"{n}.channel1"), BlockPartition.Token));
            sites.Add(new SiteBlocks(Named($"{n}.channel2"), BlockPartition.TokenGroup));
            lossBlocks.Add(new LocalLossBlocks(localLosses[^1], h, tokens, Groups, sites.ToImmutable()));
        }
        var features = b.LayerNorm("final.ln", b.GlobalAvgPool("final.pool", b.Reshape("final.image", b.StopGradient("final.in", h), new Shape(tokens, 1, Width))), affine: false);
        var prediction = b.Dense("classifier", features, Classes, ElementwiseFunction.Identity).Output;
        return b.Build(b.SoftmaxCrossEntropy("loss", prediction, y), prediction, localLosses.MoveToImmutable()) with { LocalLossBlocks = lossBlocks.MoveToImmutable() };

        Node Named(string name) => b.Nodes.Single(node => node.Name == name);
        Node NormRelu(string name, Node s) => b.Activation($"{name}.relu", b.LayerNorm($"{name}.ln", s, affine: false), ElementwiseFunction.Relu);
    }
}
