using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>Which construction of the LocalMixer <see cref="LocalMixerSpec"/> builds.</summary>
public enum LocalMixerVariant
{
    /// <summary>Ren et al.'s, as their released code builds it: a patch block (patch-linear, then group-wise linear; no
    /// token mixing, no residual), then mixer blocks, one head per block over the concatenated groups.</summary>
    Ren,

    /// <summary>This library's first construction: a patch convolution, then residual token-mixing blocks, each group with
    /// its own head and the cross-entropy averaged over groups.</summary>
    Blocks,
}

/// <summary>
/// The LocalMixer of Ren et al. ("Scaling Forward Gradient With Local Losses", ICLR 2023, §4), an MLP-Mixer for
/// channels-last images <see cref="Input"/> [H, W, C] whose blocks each learn from their own local loss, with a
/// stop-gradient between blocks. Two constructions (<see cref="Variant"/>); every LayerNorm has no affine parameters and
/// ε = 1e-5, every linear layer is followed by one, then (noise, in their training) and ReLU. P = (H/patch)·(W/patch)
/// tokens, d = <see cref="Width"/>, G = <see cref="Groups"/>, e = <see cref="Expansion"/>.
/// <para><b><see cref="LocalMixerVariant.Ren"/></b> (the default), read against their released code (google-research
/// <c>local_forward_gradient</c>: <c>mixer_lib.py</c> for the layer sizes, <c>train_mixer_supervised.py</c> for the network,
/// the losses and the updates, <c>spatial_avg_linear_v2.py</c> for the loss's JVP; <c>configs/supervised.py</c>, their one
/// released configuration, for the optional normalisations <c>begin_ln</c>, <c>middle_ln</c>, <c>inter_ln</c> and
/// <c>last_layer_ln</c>, all on; <c>post_linear_ln</c> on, as by default). <see cref="Blocks"/> counts their blocks, the
/// first included:</para>
/// <list type="bullet">
/// <item>Block 1 (their <c>block0</c>): the image cut into patches as tokens [P, patch²·C] (<see cref="PatchesOp"/>), LN over
/// each token's pixels, patch-linear to e·d channels, LN, ReLU ("block1.patch"); LN within each of G channel groups, the
/// group-wise linear layer to d, LN within each group, ReLU ("block1.channel2"). No token mixing, no residual.</item>
/// <item>Block i ≥ 2 (their <c>mlp_block</c>): a = LN(h) over channels; token mixing ReLU(LN(W_tok a + b)), one linear map
/// across the P tokens, normalised over each token's channels ("blockI.token"); LN, channel mixing ReLU(LN(t W₁ᵀ + b₁)) to
/// e·d ("blockI.channel1"); LN within each group, the group-wise linear layer back to d, LN within each group, plus the
/// block's input h, ReLU ("blockI.channel2", "blockI.relu").</item>
/// <item>Local loss (their <c>spatial_avg_group_linear_cross_entropy</c> with <c>same_head</c>, <c>concat_groups</c>): the
/// block output normalised within each (token, group), averaged over tokens, and <b>one</b> linear head over the
/// concatenated groups, [d] → classes ("blockI.head"); one softmax cross-entropy per example. Their loss returns that one
/// number tiled over (token, group), whose tangent is split per (token, group): ℓ̇_{p,g} = ⟨∂ℓ/∂h_{p,g}, ḣ_{p,g}⟩
/// (<see cref="Graph.LocalLossBlocks"/>).</item>
/// <item>Stop-gradient before every block but the first and before the classifier: tokens averaged, LN, linear
/// ("classifier"), the network's prediction and main loss "loss".</item>
/// </list>
/// <para>Where their noise enters and which scalars multiply it (their <c>update_forward_grad_activations</c>): after
/// each linear layer's LayerNorm, before its ReLU (before the residual add in channel2); the estimate is masked by that
/// ReLU's derivative and passed back through the LayerNorm to the linear layer's output. Declared per site as
/// <see cref="SiteBlocks.Normalized"/>: token mixing takes one JVP scalar per (example, token) (the next channel-mixing
/// layer joins a token's groups); the patch-linear layer, channel1 and both group-wise layers one per (example, token,
/// group) (a LayerNorm over all of a token's channels is before their noise, and everything after keeps the groups
/// apart). The heads and the classifier are not perturbed: they are trained with their exact local gradients (the
/// gradient of the batch-mean local loss, or of the main loss, with respect to their own weights, which needs only their
/// input and the loss's error). Their "BP" baseline is end-to-end backprop of the main loss only, no stop-gradients and
/// no local losses (<see cref="Build(InitScheme?, bool)"/> with endToEnd). What this library does not copy: their
/// initialisation (N(0, min(2/√fan_in, 0.1)²) weights, zero biases, zero classifier; ours is PyTorch's defaults unless
/// an init scheme is given), their optimiser (SGD with momentum, a classifier learning rate ×0.1, weight decay) and
/// their data pipeline.</para>
/// <para><b><see cref="LocalMixerVariant.Blocks"/></b>: a patch embedding, a convolution with kernel = stride = patch to d
/// channels read as tokens, LN and ReLU ("patch"); then <see cref="Blocks"/> residual blocks as above but without the two
/// middle LayerNorms (a = LN(h); token mixing, or, with <see cref="TokenHidden"/> &gt; 0, two token maps through a hidden
/// token count; channel1; group-wise layer; plus h; ReLU); each block's output averaged over tokens and each group's
/// channels classified by the group's own head, the cross-entropy averaged over groups
/// (<see cref="GroupedSoftmaxCrossEntropyOp"/>); stop-gradients and classifier as above.</para>
/// Inputs "x" (not differentiable) and labels "y". <see cref="ToString"/> is the text form <see cref="Parse"/> reads.
/// </summary>
public sealed record LocalMixerSpec(Shape Input, int Patch, int Width, int Blocks, int Groups, int Classes, int Expansion = 1, int TokenHidden = 0,
    LocalMixerVariant Variant = LocalMixerVariant.Ren)
{
    /// <summary>The spec grammar as shown to users: every option with its meaning and default, and an example. Parse
    /// errors print it.</summary>
    public const string Grammar = """
        A LocalMixer spec is options separated by '-', in any order (p, d, b and g are required):
          p<N>    patch size: N×N patches (must divide the image height and width)
          d<N>    width: channels of every token
          b<N>    blocks, each with its own local loss (Ren et al.'s count: the patch block is the first)
          g<N>    channel groups (must divide the width): each group's channels stay apart from the group-wise layer on
          e<N>    channel-mixing expansion: hidden channels = N·width (default 1, Ren et al.'s)
          t<N>    blocks construction only: token-mixing hidden tokens (default 0: one linear map across the tokens)
          blocks  this library's first construction (patch convolution, then b residual token-mixing blocks, a head per
                  group) instead of Ren et al.'s (patch-linear block, mixer blocks, one head per block: the default)
        Example: p4-d64-b2-g4 (28×28 images: 49 tokens of 64 channels, Ren et al.'s patch block and one mixer block,
        4 groups of 16 channels)
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
        var variant = LocalMixerVariant.Ren;
        foreach (var raw in text.Split('-'))
        {
            var token = raw.Trim().ToLowerInvariant();
            if (token.Length == 0) throw new FormatException($"LocalMixer spec '{text}': an empty option (two '-' in a row, or one at an end). Remove the extra '-'.\n{Grammar}");
            if (token == "blocks")
            {
                if (variant == LocalMixerVariant.Blocks) throw new FormatException($"LocalMixer spec '{text}': 'blocks' is given twice; keep one.");
                variant = LocalMixerVariant.Blocks;
                continue;
            }
            char letter = token[0];
            if (!"pdbget".Contains(letter))
                throw new FormatException($"LocalMixer spec '{text}': unknown option '{token}'; options are p, d, b, g, e and t followed by a number, and the word blocks.\n{Grammar}");
            if (token.Length == 1 || !token.AsSpan(1).ToString().All(char.IsAsciiDigit))
                throw new FormatException($"LocalMixer spec '{text}': option '{token}' needs a whole number after '{letter}', as in {letter}4.\n{Grammar}");
            if (!int.TryParse(token.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out int value))
                throw new FormatException($"LocalMixer spec '{text}': the number in '{token}' is too large.");
            if (!values.TryAdd(letter, value)) throw new FormatException($"LocalMixer spec '{text}': option '{letter}' is given twice; keep one '{token}'.");
        }
        foreach (char required in "pdbg")
            if (!values.ContainsKey(required))
                throw new FormatException($"LocalMixer spec '{text}': option {required}<N> is missing; add it (for example -{required}{required switch { 'p' => 4, 'd' => 64, 'b' => 2, _ => 4 }}).\n{Grammar}");
        var spec = new LocalMixerSpec(input, values['p'], values['d'], values['b'], values['g'], classes, values.GetValueOrDefault('e', 1), values.GetValueOrDefault('t', 0), variant);
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
        if (TokenHidden != 0 && Variant == LocalMixerVariant.Ren)
            throw new ArgumentException($"LocalMixer {this}: t{TokenHidden}: Ren et al.'s token mixing is one linear map across the tokens; a hidden token count belongs to the blocks construction (add -blocks) or drop t.");
        if (!Enum.IsDefined(Variant)) throw new ArgumentException($"LocalMixer: unknown variant {(int)Variant}; use LocalMixerVariant.Ren or LocalMixerVariant.Blocks.");
        if ((long)Expansion * Width * Math.Max(Width, Patch * Patch * Input[2]) > Array.MaxLength || (long)Tokens * Math.Max(Tokens, TokenHidden) > Array.MaxLength)
            throw new ArgumentException($"LocalMixer {this}: a weight would have more elements than one tensor can hold; use smaller d, e, t or a larger p.");

        static int Divisor(int n, int near) => Enumerable.Range(1, n).Where(d => n % d == 0).MinBy(d => Math.Abs(d - near));
    }

    /// <summary>The canonical spec text "pP-dD-bB-gG", then "-eE", "-tT" and "-blocks" where they differ from the defaults:
    /// <see cref="Parse"/> reads it back.</summary>
    public override string ToString()
    {
        var text = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"p{Patch}-d{Width}-b{Blocks}-g{Groups}"));
        if (Expansion != 1) text.Append(CultureInfo.InvariantCulture, $"-e{Expansion}");
        if (TokenHidden != 0) text.Append(CultureInfo.InvariantCulture, $"-t{TokenHidden}");
        if (Variant == LocalMixerVariant.Blocks) text.Append("-blocks");
        return text.ToString();
    }

    /// <summary>Node names of block <paramref name="block"/> (1-based) start with this.</summary>
    public static string BlockName(int block) => string.Create(CultureInfo.InvariantCulture, $"block{block}");

    /// <summary>
    /// The model (see the type's summary); its local losses are "block1.loss" … in block order, declared with their
    /// (token, group) blocks and where each site's noise goes (<see cref="Model.LocalLossBlocks"/>). <paramref name="init"/>:
    /// how its linear and convolution layers start (PyTorch's defaults when null). <paramref name="endToEnd"/>: the same
    /// network trained end to end, Ren et al.'s backprop baseline: no stop-gradient (an identity in its place, so every node
    /// keeps its id and every parameter its initial value) and only the main loss in the objective (the heads are built but
    /// reach no loss, so they stay as initialised).
    /// </summary>
    public Model Build(InitScheme? init = null, bool endToEnd = false)
    {
        Validate();
        return Variant == LocalMixerVariant.Ren ? BuildRen(init, endToEnd) : BuildBlocks(init, endToEnd);
    }

    /// <summary>Ren et al.'s construction (the type's summary).</summary>
    private Model BuildRen(InitScheme? init, bool endToEnd)
    {
        var b = new ModelBuilder(init);
        var x = b.Input("x", Input, differentiable: false);
        var y = b.ClassLabels("y", Classes);
        int tokens = Tokens, hidden = Expansion * Width;
        var localLosses = ImmutableArray.CreateBuilder<Node>(Blocks);
        var lossBlocks = ImmutableArray.CreateBuilder<LocalLossBlocks>(Blocks);
        Node h = b.Patches("patch.tokens", x, Patch);
        for (int i = 1; i <= Blocks; i++)
        {
            string n = BlockName(i);
            var input = i == 1 ? h : Cut(b, $"{n}.in", h, endToEnd);
            var sites = ImmutableArray.CreateBuilder<SiteBlocks>();
            Node a = b.LayerNorm($"{n}.ln", input, affine: false); // begin_ln (block 1: over each patch's pixels)
            Node channels;
            if (i == 1)
            {
                // Their block0: patch-linear, LN, ReLU. Noise after the LN: its ReLU's output goes into the group-wise layer
                // by groups, so a tangent there stays per (token, group); at the linear output the LN joins a token's groups.
                var patch = b.Dense($"{n}.patch", a, hidden, ElementwiseFunction.Identity).Output;
                var (normalized, relu) = NormRelu($"{n}.patch", patch);
                sites.Add(new SiteBlocks(patch, BlockPartition.Token) { Normalized = new NormalizedOutput(normalized, relu, BlockPartition.TokenGroup) });
                channels = relu;
            }
            else
            {
                // Token mixing across the tokens, normalised over each token's channels (their LN with swap on [B, C, P]).
                // Per token, before or after that LN: channel1 then joins the token's groups.
                var token = b.TokenMixing($"{n}.token", a, tokens);
                var (tokenNormalized, tokenRelu) = NormRelu($"{n}.token", token);
                sites.Add(new SiteBlocks(token, BlockPartition.Token) { Normalized = new NormalizedOutput(tokenNormalized, tokenRelu, BlockPartition.Token) });
                // middle_ln, then channel mixing to e·d: per token at its output (the LN after it spans all groups), per
                // (token, group) after that LN.
                var mixed = b.LayerNorm($"{n}.channel1.in.ln", tokenRelu, affine: false);
                var channel1 = b.Dense($"{n}.channel1", mixed, hidden, ElementwiseFunction.Identity).Output;
                var (normalized, relu) = NormRelu($"{n}.channel1", channel1);
                sites.Add(new SiteBlocks(channel1, BlockPartition.Token) { Normalized = new NormalizedOutput(normalized, relu, BlockPartition.TokenGroup) });
                channels = relu;
            }
            // middle_ln within each group, the group-wise layer, LN within each group, (the residual), ReLU: per (token, group)
            // everywhere from the group-wise layer on.
            var groupedInput = GroupNorm(b, $"{n}.channel2.in", channels);
            var channel2 = b.GroupedLinear($"{n}.channel2", groupedInput, Width, Groups);
            var channel2Site = b.Nodes.Single(node => node.Name == $"{n}.channel2");
            var grouped = b.LayerNorm($"{n}.channel2.ln", b.Reshape($"{n}.channel2.groups", channel2, GroupShape(Width)), affine: false);
            Node merged = b.Reshape($"{n}.channel2.merged", grouped, new Shape(tokens, Width));
            if (i > 1) merged = b.Add($"{n}.residual", merged, input);
            h = b.Activation($"{n}.relu", merged, ElementwiseFunction.Relu);
            sites.Add(new SiteBlocks(channel2Site, BlockPartition.TokenGroup) { Normalized = new NormalizedOutput(grouped, h, BlockPartition.TokenGroup) });
            // Local loss: inter_ln within each (token, group), the token average, one head over the concatenated groups.
            var features = b.Reshape($"{n}.pool.image", GroupNorm(b, $"{n}.head.in", h), new Shape(tokens, 1, Width));
            var logits = b.Dense($"{n}.head", b.GlobalAvgPool($"{n}.pool", features), Classes, ElementwiseFunction.Identity).Output;
            localLosses.Add(b.SoftmaxCrossEntropy($"{n}.loss", logits, y));
            lossBlocks.Add(new LocalLossBlocks(localLosses[^1], h, tokens, Groups, sites.ToImmutable()));
        }
        return Finish(b, h, y, localLosses.MoveToImmutable(), lossBlocks.MoveToImmutable(), endToEnd);

        (Node Normalized, Node Relu) NormRelu(string name, Node s)
        {
            var normalized = b.LayerNorm($"{name}.ln", s, affine: false);
            return (normalized, b.Activation($"{name}.relu", normalized, ElementwiseFunction.Relu));
        }
    }

    /// <summary>[P, G, channels/G]: a token's channels as its groups.</summary>
    private Shape GroupShape(int channels) => new(Tokens, Groups, channels / Groups);

    /// <summary>LayerNorm within each group of each token of x [P, C] (name.ln), back as [P, C] (name).</summary>
    private Node GroupNorm(ModelBuilder b, string name, Node x)
    {
        var normalized = b.LayerNorm($"{name}.ln", b.Reshape($"{name}.groups", x, GroupShape(x.Shape[1])), affine: false);
        return b.Reshape(name, normalized, x.Shape);
    }

    /// <summary>The boundary before a block or the classifier: a stop-gradient, or, end to end, an identity (same id).</summary>
    private static Node Cut(ModelBuilder b, string name, Node h, bool endToEnd) => endToEnd ? b.Reshape(name, h, h.Shape) : b.StopGradient(name, h);

    /// <summary>The classifier after the last block (its input cut off), and the model: every local loss in the objective, or,
    /// end to end, only the main loss.</summary>
    private Model Finish(ModelBuilder b, Node h, Node y, ImmutableArray<Node> localLosses, ImmutableArray<LocalLossBlocks> lossBlocks, bool endToEnd)
    {
        var features = b.LayerNorm("final.ln", b.GlobalAvgPool("final.pool", b.Reshape("final.image", Cut(b, "final.in", h, endToEnd), new Shape(Tokens, 1, Width))), affine: false);
        var prediction = b.Dense("classifier", features, Classes, ElementwiseFunction.Identity).Output;
        var loss = b.SoftmaxCrossEntropy("loss", prediction, y);
        return endToEnd ? b.Build(loss, prediction) : b.Build(loss, prediction, localLosses) with { LocalLossBlocks = lossBlocks };
    }

    /// <summary>The blocks construction (the type's summary).</summary>
    private Model BuildBlocks(InitScheme? init, bool endToEnd)
    {
        var b = new ModelBuilder(init);
        var x = b.Input("x", Input, differentiable: false);
        var y = b.ClassLabels("y", Classes);
        int tokens = Tokens, groupWidth = Width / Groups;
        var patches = b.Conv2d("patch", x, Width, kernel: Patch, stride: Patch);
        var patchNormalized = b.LayerNorm("patch.ln", b.Reshape("patch.tokens", patches, new Shape(tokens, Width)), affine: false);
        Node h = b.Activation("patch.relu", patchNormalized, ElementwiseFunction.Relu);
        var localLosses = ImmutableArray.CreateBuilder<Node>(Blocks);
        var lossBlocks = ImmutableArray.CreateBuilder<LocalLossBlocks>(Blocks);
        for (int i = 1; i <= Blocks; i++)
        {
            string n = BlockName(i);
            var input = i == 1 ? h : Cut(b, $"{n}.in", h, endToEnd);
            // How each site's tangent reaches h on its way to this loss (Ren et al.'s local forward gradients), at the site and
            // at its LayerNorm's output (where Ren et al. add their noise):
            // channel2 [P, C]: LayerNorm within each group, the residual add and ReLU act per (token, group): TokenGroup.
            // channel1 and token: LayerNorm over all of a token's channels, then per-token ops: Token at the site; after the
            // LayerNorm, channel1's ReLU feeds the group-wise layer by groups: TokenGroup; token mixing's feeds channel1: Token.
            // token0 and the patch embedding: a token-mixing layer follows, which mixes the tokens: Example.
            var sites = ImmutableArray.CreateBuilder<SiteBlocks>();
            if (i == 1)
                sites.Add(new SiteBlocks(patches, BlockPartition.Example) { Normalized = new NormalizedOutput(patchNormalized, h, BlockPartition.Example) });
            // Token mixing: a linear map across tokens (two with a hidden token count), each normalised over channels, ReLU.
            Node t = b.LayerNorm($"{n}.ln", input, affine: false);
            if (TokenHidden > 0)
            {
                var token0 = b.TokenMixing($"{n}.token0", t, TokenHidden);
                var (normalized0, relu0) = NormRelu($"{n}.token0", token0);
                sites.Add(new SiteBlocks(token0, BlockPartition.Example) { Normalized = new NormalizedOutput(normalized0, relu0, BlockPartition.Example) });
                t = relu0;
            }
            var token = b.TokenMixing($"{n}.token", t, tokens);
            var (tokenNormalized, tokenRelu) = NormRelu($"{n}.token", token);
            sites.Add(new SiteBlocks(token, BlockPartition.Token) { Normalized = new NormalizedOutput(tokenNormalized, tokenRelu, BlockPartition.Token) });
            // Channel mixing: dense to e·width, then the group-wise layer back to width, normalised within each group.
            var channel1 = b.Dense($"{n}.channel1", tokenRelu, Expansion * Width, ElementwiseFunction.Identity).Output;
            var (normalized1, hidden) = NormRelu($"{n}.channel1", channel1);
            sites.Add(new SiteBlocks(channel1, BlockPartition.Token) { Normalized = new NormalizedOutput(normalized1, hidden, BlockPartition.TokenGroup) });
            var channel2 = b.GroupedLinear($"{n}.channel2", hidden, Width, Groups);
            var channel2Site = b.Nodes.Single(node => node.Name == $"{n}.channel2");
            var grouped = b.LayerNorm($"{n}.channel2.ln", b.Reshape($"{n}.channel2.groups", channel2, new Shape(tokens, Groups, groupWidth)), affine: false);
            var normalized = b.Reshape($"{n}.channel2.merged", grouped, new Shape(tokens, Width));
            h = b.Activation($"{n}.relu", b.Add($"{n}.residual", normalized, input), ElementwiseFunction.Relu);
            sites.Add(new SiteBlocks(channel2Site, BlockPartition.TokenGroup) { Normalized = new NormalizedOutput(grouped, h, BlockPartition.TokenGroup) });
            // Local loss: token average, each group's own head, cross-entropy averaged over groups.
            var pooled = b.GlobalAvgPool($"{n}.pool", b.Reshape($"{n}.pool.image", h, new Shape(tokens, 1, Width)));
            var logits = b.Reshape($"{n}.head.logits", b.GroupedLinear($"{n}.head", pooled, Groups * Classes, Groups), new Shape(Groups, Classes));
            localLosses.Add(b.GroupedSoftmaxCrossEntropy($"{n}.loss", logits, y));
            lossBlocks.Add(new LocalLossBlocks(localLosses[^1], h, tokens, Groups, sites.ToImmutable()));
        }
        return Finish(b, h, y, localLosses.MoveToImmutable(), lossBlocks.MoveToImmutable(), endToEnd);

        (Node Normalized, Node Relu) NormRelu(string name, Node s)
        {
            var normalized = b.LayerNorm($"{name}.ln", s, affine: false);
            return (normalized, b.Activation($"{name}.relu", normalized, ElementwiseFunction.Relu));
        }
    }
}
