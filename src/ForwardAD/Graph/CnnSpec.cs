using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// One layer of a <see cref="CnnSpec"/>. Its text form (<see cref="ToString"/>) is its token in the spec grammar
/// (<see cref="CnnSpec.Grammar"/>), in canonical form: options in a fixed order, defaults left out.
/// </summary>
public abstract record CnnLayer
{
    private protected CnnLayer() { }

    /// <summary>The per-example output shape for a per-example input shape; throws <see cref="ArgumentException"/>
    /// saying what does not fit (the spec prefixes the layer's position and token).</summary>
    internal abstract Shape OutputShape(Shape input);

    /// <summary>Adds the layer to <paramref name="builder"/> under <paramref name="name"/>.</summary>
    internal abstract Node Apply(ModelBuilder builder, string name, Node x);

    /// <summary>The node-name stem ("conv", "bn", "relu"): nodes are named stem + running number per stem.</summary>
    internal abstract string Stem { get; }

    /// <summary>The layer's token in <see cref="CnnSpec.Grammar"/>, canonical (defaults left out): parsing it gives this layer back.</summary>
    public abstract override string ToString();

    private static string Image(Shape s) => $"{s[0]}×{s[1]}×{s[2]}";

    private static void RequireImage(Shape input, string what)
    {
        if (input.Rank != 3)
            throw new ArgumentException($"{what} needs an image [H, W, C] (channels last), but its input is a vector {input}: put it before gap/flat/fc.");
    }

    private static void RequireVector(Shape input, string what)
    {
        if (input.Rank != 1)
            throw new ArgumentException($"{what} needs a vector, but its input is a {Image(input)} feature map {input}: put gap or flat before it.");
    }

    /// <summary>Output length of a window sweep: ⌊(n + 2p − k)/s⌋ + 1 (PyTorch's, without dilation or ceil mode).</summary>
    private static int Sweep(int n, int kernel, int stride, int padding) => (n + 2 * padding - kernel) / stride + 1;

    /// <summary>
    /// Convolution to <paramref name="Channels"/> output channels with a <paramref name="Kernel"/>² window. A null
    /// <paramref name="Padding"/> means <see cref="DefaultPadding"/>: ⌊K/2⌋ for odd K, which keeps H × W at stride 1 and
    /// gives ⌈H/S⌉ at stride S ("same"), and 0 for even K (no symmetric padding keeps the size). A convolution's
    /// output is a site.
    /// </summary>
    public sealed record Conv(int Channels, int Kernel = 3, int Stride = 1, int? Padding = null, int Groups = 1, bool Bias = true) : CnnLayer
    {
        /// <summary>The padding a K×K convolution gets when none is given: ⌊K/2⌋ for odd K ("same" size at stride 1), 0 for even K.</summary>
        public static int DefaultPadding(int kernel) => kernel % 2 == 1 ? kernel / 2 : 0;

        /// <summary>The padding used: <see cref="Padding"/> when given, else <see cref="DefaultPadding"/>.</summary>
        public int EffectivePadding => Padding ?? DefaultPadding(Kernel);

        internal override string Stem => "conv";

        internal override Shape OutputShape(Shape input)
        {
            if (Channels < 1) throw new ArgumentException($"a convolution needs at least 1 output channel; got {Channels}.");
            if (Kernel < 1 || Stride < 1 || EffectivePadding < 0 || Groups < 1)
                throw new ArgumentException($"a convolution needs kernel ≥ 1, stride ≥ 1, padding ≥ 0 and groups ≥ 1; got kernel {Kernel}, stride {Stride}, padding {EffectivePadding}, groups {Groups}.");
            RequireImage(input, "a convolution");
            if (input[2] % Groups != 0 || Channels % Groups != 0)
                throw new ArgumentException($"groups {Groups} must divide both the {input[2]} input channels and the {Channels} output channels.");
            int height = Sweep(input[0], Kernel, Stride, EffectivePadding), width = Sweep(input[1], Kernel, Stride, EffectivePadding);
            if (input[0] + 2 * EffectivePadding < Kernel || input[1] + 2 * EffectivePadding < Kernel)
                throw new ArgumentException($"the {Kernel}×{Kernel} kernel does not fit the {Image(input)} feature map padded by {EffectivePadding}: the image vanishes. " +
                    "Use a smaller kernel, more padding, fewer downsampling layers before it, or a larger input.");
            if ((long)Channels * Kernel * Kernel * (input[2] / Groups) > Array.MaxLength)
                throw new ArgumentException($"the weight [{Channels}, {Kernel}, {Kernel}, {input[2] / Groups}] has more elements than one tensor can hold.");
            return new Shape(height, width, Channels);
        }

        internal override Node Apply(ModelBuilder builder, string name, Node x) =>
            builder.Conv2d(name, x, Channels, Kernel, Stride, EffectivePadding, Groups, Bias);

        /// <summary>"c" + channels + "k" + kernel, then s (stride), p (padding), g (groups) and b0 (no bias) where they differ
        /// from the defaults, as in "c64k3s2".</summary>
        public override string ToString()
        {
            var text = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"c{Channels}k{Kernel}"));
            if (Stride != 1) text.Append(CultureInfo.InvariantCulture, $"s{Stride}");
            if (EffectivePadding != DefaultPadding(Kernel)) text.Append(CultureInfo.InvariantCulture, $"p{EffectivePadding}");
            if (Groups != 1) text.Append(CultureInfo.InvariantCulture, $"g{Groups}");
            if (!Bias) text.Append("b0");
            return text.ToString();
        }
    }

    /// <summary>Max (<paramref name="Average"/> false) or average pooling over <paramref name="Kernel"/>² windows; a null
    /// <paramref name="Stride"/> is the kernel (non-overlapping windows, PyTorch's default); padding ≤ K/2.</summary>
    public sealed record Pool(int Kernel, int? Stride = null, int Padding = 0, bool Average = false) : CnnLayer
    {
        /// <summary>The stride used: <see cref="Stride"/> when given, else the kernel size (non-overlapping windows).</summary>
        public int EffectiveStride => Stride ?? Kernel;

        internal override string Stem => Average ? "avgpool" : "maxpool";

        internal override Shape OutputShape(Shape input)
        {
            string what = Average ? "average pooling" : "max pooling";
            if (Kernel < 1 || EffectiveStride < 1 || Padding < 0 || 2 * Padding > Kernel)
                throw new ArgumentException($"{what} needs kernel ≥ 1, stride ≥ 1 and 0 ≤ padding ≤ kernel/2; got kernel {Kernel}, stride {EffectiveStride}, padding {Padding}.");
            RequireImage(input, what);
            if (input[0] + 2 * Padding < Kernel || input[1] + 2 * Padding < Kernel)
                throw new ArgumentException($"the {Kernel}×{Kernel} window does not fit the {Image(input)} feature map (padding {Padding}): the image vanishes. " +
                    "Remove a pooling or strided layer before it, use a smaller window, or a larger input.");
            return new Shape(Sweep(input[0], Kernel, EffectiveStride, Padding), Sweep(input[1], Kernel, EffectiveStride, Padding), input[2]);
        }

        internal override Node Apply(ModelBuilder builder, string name, Node x) => Average
            ? builder.AvgPool2d(name, x, Kernel, EffectiveStride, Padding)
            : builder.MaxPool2d(name, x, Kernel, EffectiveStride, Padding);

        /// <summary>"p" (max) or "a" (average) + kernel, then s (stride) and p (padding) where they differ from the defaults,
        /// as in "p3s2".</summary>
        public override string ToString()
        {
            var text = new StringBuilder(string.Create(CultureInfo.InvariantCulture, $"{(Average ? 'a' : 'p')}{Kernel}"));
            if (EffectiveStride != Kernel) text.Append(CultureInfo.InvariantCulture, $"s{EffectiveStride}");
            if (Padding != 0) text.Append(CultureInfo.InvariantCulture, $"p{Padding}");
            return text.ToString();
        }
    }

    /// <summary>Global average pooling: [H, W, C] → [C].</summary>
    public sealed record GlobalAvgPool : CnnLayer
    {
        internal override string Stem => "gap";
        internal override Shape OutputShape(Shape input)
        {
            RequireImage(input, "global average pooling");
            return new Shape(input[2]);
        }
        internal override Node Apply(ModelBuilder builder, string name, Node x) => builder.GlobalAvgPool(name, x);
        /// <summary>"gap".</summary>
        public override string ToString() => "gap";
    }

    /// <summary>[H, W, C] → [H·W·C] in channels-last order.</summary>
    public sealed record Flatten : CnnLayer
    {
        internal override string Stem => "flatten";
        internal override Shape OutputShape(Shape input)
        {
            RequireImage(input, "flatten");
            return new Shape(input.ElementCount);
        }
        internal override Node Apply(ModelBuilder builder, string name, Node x) => builder.Flatten(name, x);
        /// <summary>"flat".</summary>
        public override string ToString() => "flat";
    }

    /// <summary>Batch normalisation over the channels (the last axis) of an image or a vector; with a scale and shift
    /// when <paramref name="Affine"/> (then its output is a site); <paramref name="FrozenStatistics"/>: normalised by the
    /// running statistics in training too, which keeps the examples of a batch independent (per-example guesses).</summary>
    public sealed record BatchNorm(bool Affine = true, bool FrozenStatistics = false) : CnnLayer
    {
        internal override string Stem => "bn";
        internal override Shape OutputShape(Shape input) => input;
        internal override Node Apply(ModelBuilder builder, string name, Node x) =>
            builder.BatchNorm(name, x, Affine, frozenStatistics: FrozenStatistics);
        /// <summary>"bn", with "f" for frozen statistics and "0" without the affine scale and shift ("bnf0").</summary>
        public override string ToString() => "bn" + (FrozenStatistics ? "f" : "") + (Affine ? "" : "0");
    }

    /// <summary>An elementwise activation (relu, tanh, gelu).</summary>
    public sealed record Activation(ElementwiseFunction Function) : CnnLayer
    {
        internal override string Stem => Function.Name;
        internal override Shape OutputShape(Shape input)
        {
            if (Function is IdentityFunction) throw new ArgumentException("the identity is not an activation layer; leave it out.");
            return input;
        }
        internal override Node Apply(ModelBuilder builder, string name, Node x) => builder.Activation(name, x, Function);
        /// <summary>The function's name: "relu", "tanh" or "gelu".</summary>
        public override string ToString() => Function.Name;
    }

    /// <summary>A hidden dense layer of <paramref name="Units"/> units on a vector (no activation: the next layer's token
    /// gives it). Its output is a site.</summary>
    public sealed record Dense(int Units) : CnnLayer
    {
        internal override string Stem => "fc";
        internal override Shape OutputShape(Shape input)
        {
            if (Units < 1) throw new ArgumentException($"a dense layer needs at least 1 unit; got {Units}.");
            RequireVector(input, "a dense layer");
            if ((long)Units * input[0] > Array.MaxLength)
                throw new ArgumentException($"the {Units}×{input[0]} weight has more elements than one tensor can hold.");
            return new Shape(Units);
        }
        internal override Node Apply(ModelBuilder builder, string name, Node x) => builder.Dense(name, x, Units, ElementwiseFunction.Identity).Output;
        /// <summary>"fc" and the unit count, as in "fc128".</summary>
        public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"fc{Units}");
    }
}

/// <summary>
/// A convolutional classifier for channels-last images <see cref="Input"/> = [H, W, C]: the <see cref="Layers"/>, then a
/// dense classifier to <see cref="Classes"/> logits (always added, named "classifier"), trained with softmax
/// cross-entropy. <see cref="Build"/> gives a model with input "x" (not differentiable), labels "y", loss "loss" and the
/// logits as output, as <see cref="MlpSpec.Build"/> does. The layers must leave a vector for the classifier (end with
/// gap, flat, or a hidden fc layer with its activation). <see cref="ToString"/> is the canonical spec text, which
/// <see cref="Parse"/> reads back to the same layers; <see cref="Grammar"/> describes it.
/// </summary>
public sealed record CnnSpec(Shape Input, ImmutableArray<CnnLayer> Layers, int Classes)
{
    /// <summary>The spec grammar as shown to users: every layer token with its options and defaults, and an example.
    /// Parse errors print it.</summary>
    public const string Grammar = """
        A CNN spec is a list of layers separated by '-' or ',' (both separate; ',' conventionally ends a block):
          c<N>[k<K>][s<S>][p<P>][g<G>][b0]   convolution to N channels: K×K kernel (default 3), stride S (default 1),
                                             padding P (default K/2 for odd K: "same" size at stride 1, ⌈H/S⌉ at
                                             stride S; 0 for even K), G groups dividing the input and output channels
                                             (default 1; G = channels is depthwise), b0: no bias
          p<K>[s<S>][p<P>]                   max pooling over K×K windows, stride S (default K), padding P ≤ K/2 (default 0)
          a<K>[s<S>][p<P>]                   average pooling, the same options
          gap                                global average pooling: [H, W, C] → [C]
          flat                               flatten: [H, W, C] → [H·W·C]
          bn | bn0 | bnf | bnf0              batch normalisation over channels: with scale and shift (bn) or without
                                             (bn0); f: frozen statistics (running statistics in training too)
          relu | tanh | gelu                 activation
          fc<N>                              hidden dense layer of N units, on a vector (after gap or flat)
        The classifier (a dense layer to the class count) is added after the last layer, which must leave a vector.
        Example: c32k3-bn-relu-p2,c64k3-bn-relu-p2,gap
        """;

    /// <summary>
    /// Ready-made nets, by name. Sized for this repository's 2-core CPUs: a training step at batch 64 takes a small
    /// fraction of a second. cnn-small is for 28×28×1 (Fashion-MNIST); vgg-small and alexnet-small follow GrAPE's
    /// VGG- and AlexNet-style CIFAR nets (3×3 convolutions in pairs with batch norm; 5×5 then 3×3 convolutions with
    /// overlapping 3×3/2 max pooling and two hidden dense layers), channels scaled down, for 32×32×3. Each works on
    /// any image large enough for its pooling; <c>DesignedFor</c> is the input it was sized for, so that a tool can say when
    /// it builds one for another.
    /// </summary>
    public static readonly ImmutableArray<(string Name, string Layers, string Purpose, Shape DesignedFor)> ReadyMade =
    [
        ("cnn-small", "c16k3-bn-relu-p2,c32k3-bn-relu-p2,flat,fc64-relu", "a small CNN for 28×28×1 (Fashion-MNIST): two conv blocks, a hidden dense layer", new Shape(28, 28, 1)),
        ("vgg-small", "c16k3-bn-relu-c16k3-bn-relu-p2,c32k3-bn-relu-c32k3-bn-relu-p2,c64k3-bn-relu-c64k3-bn-relu-p2,flat,fc128-relu",
            "a VGG-style net for 32×32×3: three blocks of two 3×3 convolutions with batch norm, 16-32-64 channels", new Shape(32, 32, 3)),
        ("alexnet-small", "c24k5-bn-relu-p3s2,c48k5-bn-relu-p3s2,c64k3-bn-relu-c48k3-bn-relu-c48k3-bn-relu-p3s2,flat,fc192-relu,fc96-relu",
            "an AlexNet-style net for 32×32×3: 5×5 then 3×3 convolutions with batch norm, overlapping 3×3/2 max pooling, two hidden dense layers", new Shape(32, 32, 3)),
    ];

    /// <summary>Parses <paramref name="text"/> (see <see cref="Grammar"/>) and checks it against the input and class count.</summary>
    /// <exception cref="FormatException">A token is not in the grammar; the message names it and shows the grammar.</exception>
    /// <exception cref="ArgumentException">The layers do not fit the input (a vanishing image, groups that do not divide
    /// the channels, …); the message names the layer and the sizes.</exception>
    public static CnnSpec Parse(string text, Shape input, int classes)
    {
        var spec = new CnnSpec(input, ParseLayers(text), classes);
        spec.Validate();
        return spec;
    }

    /// <summary>A ready-made net from <see cref="ReadyMade"/> for this input and class count.</summary>
    public static CnnSpec Named(string name, Shape input, int classes)
    {
        foreach (var (n, layers, _, _) in ReadyMade)
            if (n == name) return Parse(layers, input, classes);
        throw new ArgumentException($"No ready-made CNN named '{name}'. Ready-made: {string.Join(", ", ReadyMade.Select(r => r.Name))}.", nameof(name));
    }

    /// <summary>The layers of a spec text, syntax only (sizes are checked with an input shape by <see cref="Validate"/>).</summary>
    /// <exception cref="FormatException">A token is not in the grammar; the message names it and shows the grammar.</exception>
    public static ImmutableArray<CnnLayer> ParseLayers(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (string.IsNullOrWhiteSpace(text)) throw new FormatException($"The CNN spec is empty; give at least one layer.\n{Grammar}");
        var tokens = text.Split(['-', ',']);
        var layers = ImmutableArray.CreateBuilder<CnnLayer>(tokens.Length);
        for (int i = 0; i < tokens.Length; i++)
        {
            var token = tokens[i].Trim();
            if (token.Length == 0)
                throw new FormatException($"CNN spec '{text}': layer {i + 1} is empty (two separators in a row, or one at an end).\n{Grammar}");
            try { layers.Add(ParseToken(token.ToLowerInvariant())); }
            catch (FormatException e)
            {
                throw new FormatException($"CNN spec '{text}', layer {i + 1} '{token}': {e.Message}\n{Grammar}", e);
            }
        }
        return layers.MoveToImmutable();
    }

    private static CnnLayer ParseToken(string token)
    {
        switch (token)
        {
            case "gap": return new CnnLayer.GlobalAvgPool();
            case "flat": return new CnnLayer.Flatten();
            case "bn": return new CnnLayer.BatchNorm();
            case "bn0": return new CnnLayer.BatchNorm(Affine: false);
            case "bnf": return new CnnLayer.BatchNorm(FrozenStatistics: true);
            case "bnf0": return new CnnLayer.BatchNorm(Affine: false, FrozenStatistics: true);
            case "relu": return new CnnLayer.Activation(ElementwiseFunction.Relu);
            case "tanh": return new CnnLayer.Activation(ElementwiseFunction.Tanh);
            case "gelu": return new CnnLayer.Activation(ElementwiseFunction.Gelu);
        }
        if (token.StartsWith("fc", StringComparison.Ordinal))
        {
            var (units, rest) = Number(token, 2, "fc needs a unit count, as in fc128");
            if (rest != token.Length) throw new FormatException($"unexpected '{token[rest..]}' after fc{units}; a dense layer is fc<N>.");
            return new CnnLayer.Dense(units);
        }
        if (token.Length > 1 && char.IsAsciiDigit(token[1]) && token[0] is 'c' or 'p' or 'a')
        {
            var (first, position) = Number(token, 1, "");
            var options = new Dictionary<char, int>();
            string allowed = token[0] == 'c' ? "kspgb" : "sp";
            while (position < token.Length)
            {
                char letter = token[position];
                if (!allowed.Contains(letter))
                    throw new FormatException($"unknown option '{letter}'; {(token[0] == 'c' ? "a convolution takes k, s, p, g and b0" : "pooling takes s and p")}.");
                if (options.ContainsKey(letter)) throw new FormatException($"option '{letter}' is given twice.");
                (options[letter], position) = Number(token, position + 1, $"option '{letter}' needs a number");
            }
            if (token[0] != 'c') return new CnnLayer.Pool(first, options.TryGetValue('s', out var s) ? s : null, options.GetValueOrDefault('p'), Average: token[0] == 'a');
            if (options.TryGetValue('b', out var bias) && bias > 1) throw new FormatException($"b{bias}: the bias option is b0 (no bias) or b1 (the default).");
            return new CnnLayer.Conv(first, options.GetValueOrDefault('k', 3), options.GetValueOrDefault('s', 1),
                options.TryGetValue('p', out var p) ? p : null, options.GetValueOrDefault('g', 1), bias != 0 || !options.ContainsKey('b'));
        }
        throw new FormatException("not a layer of the grammar.");
    }

    /// <summary>The decimal number at <paramref name="start"/> and the position after it.</summary>
    private static (int Value, int Next) Number(string token, int start, string missing)
    {
        int end = start;
        while (end < token.Length && char.IsAsciiDigit(token[end])) end++;
        if (end == start) throw new FormatException($"{missing}.");
        if (!int.TryParse(token.AsSpan(start, end - start), NumberStyles.None, CultureInfo.InvariantCulture, out int value))
            throw new FormatException($"{token[start..end]} is too large.");
        return (value, end);
    }

    /// <summary>The per-example output shape of every layer, checking each against its input.</summary>
    /// <exception cref="ArgumentException">A layer does not fit; the message names it, its position and the sizes.</exception>
    public ImmutableArray<Shape> Shapes()
    {
        if (Input.Rank != 3 || Input.ElementCount == 0 || Input.Dimensions.Any(d => d < 1))
            throw new ArgumentException($"A CNN needs a channels-last image input [H, W, C] with positive sizes; got {Input}.", nameof(Input));
        if (Classes < 2) throw new ArgumentException($"A classifier needs at least 2 classes; got {Classes}.", nameof(Classes));
        if (Layers.IsDefaultOrEmpty) throw new ArgumentException("A CNN spec needs at least one layer (at least gap or flat before the classifier).", nameof(Layers));
        var shapes = ImmutableArray.CreateBuilder<Shape>(Layers.Length);
        var shape = Input;
        for (int i = 0; i < Layers.Length; i++)
        {
            try { shape = Layers[i].OutputShape(shape); }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"CNN spec '{this}' on {Input}, layer {i + 1} '{Layers[i]}' (input {shape}): {e.Message}", e);
            }
            shapes.Add(shape);
        }
        return shapes.MoveToImmutable();
    }

    /// <summary>Checks every layer's sizes and that the last leaves a vector that is not a bare linear layer.</summary>
    public void Validate()
    {
        var shapes = Shapes();
        if (shapes[^1].Rank != 1)
            throw new ArgumentException($"CNN spec '{this}' on {Input}: the last layer '{Layers[^1]}' leaves a feature map {shapes[^1]}, but the classifier " +
                "(added after the last layer) needs a vector: end with gap or flat.");
        if (Layers[^1] is CnnLayer.Dense dense)
            throw new ArgumentException($"CNN spec '{this}': the last layer '{dense}' is a hidden dense layer without an activation, so it and the classifier " +
                $"(added automatically, to the {Classes} classes) would be two linear maps in a row. Drop '{dense}' or give it an activation ('{dense}-relu').");
    }

    /// <summary>The model: the layers (nodes named conv1, bn1, relu1, maxpool1, …, fc1), then "classifier" (the logits,
    /// the output), loss "loss" (softmax cross-entropy against labels "y"); input "x", not differentiable. Convolutions and
    /// dense layers start as <paramref name="init"/> says (<see cref="InitScheme.Torch"/> when null).</summary>
    public Model Build(InitScheme? init = null)
    {
        Validate();
        var builder = new ModelBuilder(init);
        var x = builder.Input("x", Input, differentiable: false);
        Node h = x;
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var layer in Layers)
        {
            int n = counts[layer.Stem] = counts.GetValueOrDefault(layer.Stem) + 1;
            h = layer.Apply(builder, string.Create(CultureInfo.InvariantCulture, $"{layer.Stem}{n}"), h);
        }
        var logits = builder.Dense("classifier", h, Classes, ElementwiseFunction.Identity).Output;
        var loss = builder.SoftmaxCrossEntropy("loss", logits, builder.ClassLabels("y", Classes));
        return builder.Build(loss, logits);
    }

    /// <summary>The canonical spec text: ',' after each pooling layer and before gap, flat and fc, '-' elsewhere.</summary>
    public override string ToString()
    {
        if (Layers.IsDefaultOrEmpty) return "";
        var text = new StringBuilder(Layers[0].ToString());
        for (int i = 1; i < Layers.Length; i++)
        {
            bool newBlock = Layers[i - 1] is CnnLayer.Pool || Layers[i] is CnnLayer.GlobalAvgPool or CnnLayer.Flatten or CnnLayer.Dense;
            text.Append(newBlock ? ',' : '-').Append(Layers[i]);
        }
        return text.ToString();
    }
}
