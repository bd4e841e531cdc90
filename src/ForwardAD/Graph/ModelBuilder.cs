using System.Collections.Immutable;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>Handles to the nodes of one dense layer made by <see cref="ModelBuilder.Dense"/>: input x, weight W, bias b,
/// pre-activation s = W x + b (the site) and output σ(s) (s itself for the identity). A convenience of the builder;
/// estimators never see it: they work on <see cref="Model.Sites"/>.</summary>
public sealed record DenseLayer(Node Input, Node Weight, Node? Bias, Node PreActivation, Node Output, ElementwiseFunction Activation);

/// <summary>
/// Builds a <see cref="Model"/> node by node. The builder only wires: each op's own shape rule infers and
/// checks the output shape, so a mismatch throws <see cref="ShapeMismatchException"/> at build time naming the
/// node and both shapes. <see cref="Build"/> derives the sites from the graph.
/// </summary>
public sealed class ModelBuilder
{
    private readonly List<Node> _nodes = [];
    private readonly HashSet<string> _names = [];
    private readonly HashSet<int> _markedSites = [];

    /// <summary>A builder whose dense and convolution layers start as <paramref name="init"/> says
    /// (<see cref="InitScheme.Torch"/>, PyTorch's own defaults, when null).</summary>
    public ModelBuilder(InitScheme? init = null) => Init = init ?? InitScheme.Torch;

    /// <summary>How <see cref="Dense"/> and <see cref="Conv2d"/> draw weights and biases not given explicitly.</summary>
    public InitScheme Init { get; }

    /// <summary>The nodes added so far, in the order added (a topological order: a node's inputs come before it).</summary>
    public IReadOnlyList<Node> Nodes => _nodes;

    /// <summary>Per-example real-valued input of the given shape, e.g. [64], [3, 32, 32], [T, D].</summary>
    public Node Input(string name, Shape shape, bool differentiable = true) => AddNode(name, new InputOp(differentiable), [], shape, batched: true);

    /// <summary>Per-example class index in [0, classes).</summary>
    public Node ClassLabels(string name, int classes)
    {
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), $"Labels '{name}' need at least 2 classes; got {classes}.");
        return AddNode(name, new ClassLabelsOp(classes), [], Shape.Scalar, batched: true);
    }

    /// <summary>A trainable tensor of <paramref name="shape"/> (not batched: one value shared by the batch; tangents
    /// [K, ...shape]), drawn by <paramref name="initializer"/> when a parameter store is created.</summary>
    /// <exception cref="ArgumentException">The name is empty or already taken.</exception>
    public Node Parameter(string name, Shape shape, Initializer initializer) => AddNode(name, new ParameterOp(initializer), [], shape, batched: false);

    /// <summary>Untrained model state (running statistics): stored and checkpointed with the parameters, never trained.</summary>
    public Node State(string name, Shape shape, Initializer initializer) => AddNode(name, new StateOp(initializer), [], shape, batched: false);

    /// <summary>Applies any non-leaf op to earlier nodes of this builder; the op's shape rule gives the output shape.
    /// Every named method below is this with its op.</summary>
    public Node Apply(string name, Op op, params ReadOnlySpan<Node> inputs)
    {
        if (op.IsLeaf) throw new ArgumentException($"Node '{name}': leaves are made by Input, ClassLabels, Tokens, Parameter and State, not applied.", nameof(op));
        foreach (var input in inputs) CheckOwn(input);
        var list = inputs.ToArray();
        var (shape, batched) = op.InferShape(name, list);
        return AddNode(name, op, [.. list.Select(n => n.Id)], shape, batched);
    }

    /// <summary>s = x Wᵀ + b over x's last axis. W must be [out, in] with in = x's last dimension, b [out].</summary>
    public Node Linear(string name, Node x, Node weight, Node? bias) =>
        bias is null ? Apply(name, new LinearOp(), x, weight) : Apply(name, new LinearOp(), x, weight, bias);

    /// <summary>
    /// A dense layer with its own parameters: weight [width, in] drawn by <paramref name="weightInit"/>
    /// (<see cref="Init"/>'s weight when null: nn.Linear's default U(±1/√in)), bias [width] as <see cref="Init"/> says
    /// (U(±1/√in) as nn.Linear, or zeros), then the activation. Its pre-activation is a site.
    /// </summary>
    public DenseLayer Dense(string name, Node x, int width, ElementwiseFunction activation, Initializer? weightInit = null, bool bias = true)
    {
        if (width <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"Layer '{name}' needs a positive width; got {width}.");
        int fanIn = x.Shape.Last;
        var w = Parameter($"{name}.weight", new Shape(width, fanIn), weightInit ?? Init.Weight(fanIn));
        var b = bias ? Parameter($"{name}.bias", new Shape(width), Init.Bias(fanIn)) : null;
        var s = Linear(name, x, w, b);
        var output = activation is IdentityFunction ? s : Activation($"{name}.{activation.Name}", s, activation);
        return new DenseLayer(x, w, b, s, output, activation);
    }

    /// <summary>
    /// A 2-D convolution with its own parameters over a channels-last image x [H, W, C]: weight [outChannels, kernel,
    /// kernel, C/groups] drawn by <paramref name="weightInit"/> (<see cref="Init"/>'s weight when null: nn.Conv2d's default
    /// U(±1/√fan_in) with fan_in = C/groups·kernel², the elements of one output channel's filter), bias [outChannels] as
    /// <see cref="Init"/> says with the same fan_in (none when <paramref name="bias"/> is false). Its output is a site.
    /// </summary>
    public Node Conv2d(string name, Node x, int outChannels, int kernel, int stride = 1, int padding = 0, int groups = 1, bool bias = true, Initializer? weightInit = null)
    {
        if (outChannels <= 0 || kernel <= 0)
            throw new ArgumentOutOfRangeException(nameof(outChannels), $"Convolution '{name}' needs positive output channels and kernel size; got {outChannels} channels, kernel {kernel}.");
        if (x.Shape.Rank != 3)
            throw new ShapeMismatchException(name, "a batched image [H, W, C] (channels last)", x.ToString(), "Reshape flat data to [H, W, C] first.");
        if (groups < 1 || x.Shape[2] % groups != 0)
            throw new ArgumentOutOfRangeException(nameof(groups), $"Convolution '{name}': groups must divide the {x.Shape[2]} input channels; got {groups}.");
        int fanIn = x.Shape[2] / groups * kernel * kernel;
        var w = Parameter($"{name}.weight", new Shape(outChannels, kernel, kernel, x.Shape[2] / groups), weightInit ?? Init.Weight(fanIn));
        var op = new Conv2dOp(stride, padding, groups);
        return bias ? Apply(name, op, x, w, Parameter($"{name}.bias", new Shape(outChannels), Init.Bias(fanIn))) : Apply(name, op, x, w);
    }

    /// <summary>Max pooling of [H, W, C] over kernel × kernel windows (stride = kernel when null).</summary>
    public Node MaxPool2d(string name, Node x, int kernel, int? stride = null, int padding = 0) => Apply(name, new MaxPool2dOp(kernel, stride ?? kernel, padding), x);

    /// <summary>Average pooling of [H, W, C] over kernel × kernel windows (stride = kernel when null; padding counts as zeros).</summary>
    public Node AvgPool2d(string name, Node x, int kernel, int? stride = null, int padding = 0) => Apply(name, new AvgPool2dOp(kernel, stride ?? kernel, padding), x);

    /// <summary>[H, W, C] → [C]: the mean of each channel over positions.</summary>
    public Node GlobalAvgPool(string name, Node x) => Apply(name, new GlobalAvgPoolOp(), x);

    /// <summary>Any per-example shape → [elements], in channels-last row-major order.</summary>
    public Node Flatten(string name, Node x) => Reshape(name, x, new Shape(x.Shape.ElementCount));

    /// <summary>
    /// Batch normalisation of x's last axis (channels) with running statistics as model state (mean 0, variance 1 at
    /// first) and, when <paramref name="affine"/>, a scale γ (ones) and shift β (zeros), which make its output a site.
    /// <paramref name="frozenStatistics"/> normalises with the running statistics in training too (examples stay
    /// independent: what per-example guesses need); see <see cref="BatchNormOp"/>.
    /// </summary>
    public Node BatchNorm(string name, Node x, bool affine = true, float momentum = 0.1f, float epsilon = 1e-5f, bool frozenStatistics = false)
    {
        var channels = new Shape(x.Shape.Last);
        var mean = State($"{name}.running_mean", channels, Initializer.Zeros);
        var variance = State($"{name}.running_var", channels, new ConstantInitializer(1f));
        var op = new BatchNormOp(momentum, epsilon, frozenStatistics);
        if (!affine) return Apply(name, op, x, mean, variance);
        return Apply(name, op, x, mean, variance, Parameter($"{name}.weight", channels, new ConstantInitializer(1f)), Parameter($"{name}.bias", channels, Initializer.Zeros));
    }

    /// <summary>y = f(x) elementwise; JVP ẏ = f'(x) ⊙ ẋ. Throws <see cref="ArgumentException"/> when the name is taken or
    /// <paramref name="x"/> belongs to another builder.</summary>
    public Node Activation(string name, Node x, ElementwiseFunction function) => Apply(name, new ElementwiseOp(function), x);

    /// <summary>y = a + b (residual connections); throws <see cref="ShapeMismatchException"/> unless the shapes are equal.</summary>
    public Node Add(string name, Node a, Node b) => Apply(name, new AddOp(), a, b);

    /// <summary>The same elements as <paramref name="x"/> in the per-example shape <paramref name="target"/> (flatten an image
    /// [H, W, C] to [H·W·C] before a dense layer); throws <see cref="ShapeMismatchException"/> when the element counts differ.</summary>
    public Node Reshape(string name, Node x, Shape target) => Apply(name, new ReshapeOp(target), x);

    /// <summary>The value of x with no derivative through it (tangents and cotangents stop here): the boundary
    /// between blocks trained by local losses.</summary>
    public Node StopGradient(string name, Node x) => Apply(name, new StopGradientOp(), x);

    /// <summary>Per-example softmax cross-entropy of logits [C] against class labels with C classes.</summary>
    public Node SoftmaxCrossEntropy(string name, Node logits, Node labels) => Apply(name, new SoftmaxCrossEntropyOp(), logits, labels);

    /// <summary>Per-example mean squared error between a prediction and a target of the same shape.</summary>
    public Node MeanSquaredError(string name, Node prediction, Node target) => Apply(name, new MeanSquaredErrorOp(), prediction, target);

    // ---- attention (issue 13) ---------------------------------------------------------------------------------

    /// <summary>
    /// Multi-head causal self-attention of sequences q, k, v [T, D] (usually three projections, each a site) with
    /// <paramref name="heads"/> heads of D/heads columns each: softmax(Q Kᵀ/√dh + causal mask) V per head, heads merged back
    /// into [T, D]. Saves the attention probabilities, B·heads·T² floats; see <see cref="CausalSelfAttentionOp"/>.
    /// </summary>
    public Node CausalSelfAttention(string name, Node q, Node k, Node v, int heads) => Apply(name, new CausalSelfAttentionOp(heads), q, k, v);
    // ---- Sequence ops (issue 13): tokens, embeddings, LayerNorm/RMSNorm, sequence cross-entropy -------------------------

    /// <summary>Per-example token ids [length] in [0, vocabulary), or <paramref name="padding"/> (negative: no token there).
    /// Not differentiable; fed with <see cref="Autodiff.Plan.SetInput"/>, which checks every id.</summary>
    public Node Tokens(string name, int length, int vocabulary, int padding = -1)
    {
        if (length < 1 || vocabulary < 1)
            throw new ArgumentOutOfRangeException(nameof(length), $"Tokens '{name}' need a positive length and vocabulary; got length {length}, vocabulary {vocabulary}.");
        if (padding >= 0) throw new ArgumentOutOfRangeException(nameof(padding), $"Tokens '{name}': the padding id must be negative (no token takes it); got {padding}. " +
            "To ignore a vocabulary id in a loss, pass it as the loss's ignore index instead.");
        return AddNode(name, new TokensOp(length, vocabulary, padding), [], new Shape(length), batched: true);
    }

    /// <summary>A token embedding with its own table [V, width] (PyTorch's nn.Embedding init N(0, 1) when null): ids [T] →
    /// [T, width]. Its output is a site.</summary>
    public Node Embedding(string name, Node tokens, int width, Initializer? init = null)
    {
        if (tokens.Op is not TokensOp t) throw new ArgumentException($"Embedding '{name}' looks up ids from Tokens(); got {tokens}.", nameof(tokens));
        if (width < 1) throw new ArgumentOutOfRangeException(nameof(width), $"Embedding '{name}' needs a positive width; got {width}.");
        return Apply(name, new EmbeddingOp(), tokens, Parameter($"{name}.weight", new Shape(t.Vocabulary, width), init ?? new NormalInitializer(1f)));
    }

    /// <summary>x [T, D] + P[:T] with a learned table P [maxLength, D] (N(0, 0.02²) when null, as GPT-2). Its output is a site.</summary>
    public Node PositionalEmbedding(string name, Node x, int maxLength, Initializer? init = null)
    {
        if (x.Shape.Rank != 2) throw new ShapeMismatchException(name, "a batched sequence [T, D]", x.ToString(), "Positional embeddings add one row per position.");
        if (maxLength < x.Shape[0])
            throw new ArgumentOutOfRangeException(nameof(maxLength), $"Positional embedding '{name}': maxLength {maxLength} is shorter than the sequence ({x.Shape[0]}).");
        return Apply(name, new AddPositionOp(), x, Parameter($"{name}.weight", new Shape(maxLength, x.Shape[1]), init ?? new NormalInitializer(0.02f)));
    }

    /// <summary>LayerNorm over x's last axis, each row on its own; with <paramref name="affine"/>, γ (ones) and β (zeros)
    /// [D], which make its output a site.</summary>
    public Node LayerNorm(string name, Node x, bool affine = true, float epsilon = 1e-5f)
    {
        var op = new LayerNormOp(epsilon);
        if (!affine) return Apply(name, op, x);
        var width = new Shape(x.Shape.Last);
        return Apply(name, op, x, Parameter($"{name}.weight", width, new ConstantInitializer(1f)), Parameter($"{name}.bias", width, Initializer.Zeros));
    }

    /// <summary>RMSNorm over x's last axis, each row on its own; with <paramref name="affine"/>, γ (ones) [D], which makes its
    /// output a site.</summary>
    public Node RmsNorm(string name, Node x, bool affine = true, float epsilon = 1e-5f) =>
        affine ? Apply(name, new RmsNormOp(epsilon), x, Parameter($"{name}.weight", new Shape(x.Shape.Last), new ConstantInitializer(1f)))
               : Apply(name, new RmsNormOp(epsilon), x);

    /// <summary>Per-example mean over the positions whose target is not <paramref name="ignoreIndex"/> (nor padding) of the
    /// cross-entropy of logits [T, V] against target tokens [T]; see <see cref="SequenceCrossEntropyOp"/>.</summary>
    public Node SequenceCrossEntropy(string name, Node logits, Node targets, int ignoreIndex = -1) =>
        Apply(name, new SequenceCrossEntropyOp(ignoreIndex), logits, targets);

    // ---- LocalMixer (issue 14): token mixing, group-wise linear layers, grouped local losses -------------------------

    /// <summary>Token mixing of x [P, C]: y = W x + b 1ᵀ per example with its own W [<paramref name="tokens"/>, P] (the
    /// builder's <see cref="Init"/> weights, U(±1/√P) as nn.Linear, when null) and, unless <paramref name="bias"/> is false,
    /// b [tokens], starting at zero under every scheme (the LocalMixer's published results were measured so). Its output is
    /// a site; see <see cref="TokenMixingOp"/>.</summary>
    public Node TokenMixing(string name, Node x, int tokens, bool bias = true, Initializer? weightInit = null)
    {
        if (tokens < 1) throw new ArgumentOutOfRangeException(nameof(tokens), $"Token mixing '{name}' needs at least one output token; got {tokens}.");
        if (x.Shape.Rank != 2) throw new ShapeMismatchException(name, "a batched token matrix [P, C]", x.ToString(), "Reshape patches to [tokens, channels] first.");
        var w = Parameter($"{name}.weight", new Shape(tokens, x.Shape[0]), weightInit ?? Init.Weight(x.Shape[0]));
        return bias ? Apply(name, new TokenMixingOp(), x, w, Parameter($"{name}.bias", new Shape(tokens), Initializer.Zeros))
                    : Apply(name, new TokenMixingOp(), x, w);
    }

    /// <summary>
    /// A group-wise linear layer over x's last axis (any rank): the C channels split into <paramref name="groups"/> groups of
    /// C/G, each mapped by its own weight [outputs/G, C/G] (and bias) to its own outputs/G channels. Built as a grouped 1×1
    /// convolution over x viewed as [rows, 1, C] (weight [outputs, 1, 1, C/G], nn.Conv2d's default init), so it reuses the
    /// convolution's rules and kernels; the convolution node (named <paramref name="name"/>) is the site, and the result is
    /// reshaped back to x's shape with the last axis <paramref name="outputs"/>.
    /// </summary>
    public Node GroupedLinear(string name, Node x, int outputs, int groups, bool bias = true)
    {
        int channels = x.Shape.Last;
        if (groups < 1 || channels % groups != 0 || outputs % groups != 0)
            throw new ArgumentOutOfRangeException(nameof(groups), $"Grouped linear '{name}': groups ({groups}) must divide both the {channels} input channels and the {outputs} outputs.");
        int rows = x.Shape.ElementCount / channels;
        var image = Reshape($"{name}.rows", x, new Shape(rows, 1, channels));
        var s = Conv2d(name, image, outputs, kernel: 1, groups: groups, bias: bias);
        return Reshape($"{name}.out", s, x.Shape.WithLast(outputs));
    }

    /// <summary>Non-overlapping <paramref name="patch"/> × <paramref name="patch"/> patches of an image x [H, W, C] as tokens
    /// [P, patch·patch·C]; see <see cref="PatchesOp"/>.</summary>
    public Node Patches(string name, Node x, int patch) => Apply(name, new PatchesOp(patch), x);

    /// <summary>The mean over groups of the softmax cross-entropy of logits [G, classes] against one class label per example;
    /// see <see cref="GroupedSoftmaxCrossEntropyOp"/>.</summary>
    public Node GroupedSoftmaxCrossEntropy(string name, Node logits, Node labels) => Apply(name, new GroupedSoftmaxCrossEntropyOp(), logits, labels);

    /// <summary>Makes a differentiable, batched node a site even though no parameterised op makes it (the outputs of
    /// parameterised ops are sites without asking). A guess can then enter there; its update goes to the parameters
    /// of the op that makes it, if any.</summary>
    public Node MarkSite(Node node)
    {
        CheckOwn(node);
        if (!node.IsBatched || !node.Op.IsDifferentiable || node.Op is PerExampleLossOp)
            throw new ArgumentException($"{node} cannot be a site: a site is a differentiable, batched activation (not a parameter, label, stop-gradient or loss).", nameof(node));
        _markedSites.Add(node.Id);
        return node;
    }

    /// <summary>
    /// Freezes the model: <paramref name="loss"/> is the main per-example loss (reported, and the error DFA
    /// projects), <paramref name="localLosses"/> further per-example losses (one per block, say); the training
    /// objective is the sum of all of them. Sites are derived here.
    /// </summary>
    public Model Build(Node loss, Node output, IEnumerable<Node>? localLosses = null)
    {
        CheckOwn(loss); CheckOwn(output);
        ImmutableArray<Node> losses = [loss, .. localLosses ?? []];
        foreach (var l in losses)
        {
            CheckOwn(l);
            if (l.Op is not PerExampleLossOp)
                throw new ArgumentException($"The loss must be a loss node (softmax cross-entropy or mean squared error); got {l}.");
        }
        if (losses.Distinct().Count() != losses.Length) throw new ArgumentException("A loss is listed twice.", nameof(localLosses));
        var nodes = _nodes.ToImmutableArray();
        return new Model(nodes, loss, output, losses, DeriveSites(nodes, losses));
    }

    /// <summary>Sites: outputs of parameterised ops and marked nodes, in topological order, with their next sites
    /// and the losses they reach, found by walking the consumers of each.</summary>
    private ImmutableArray<Site> DeriveSites(ImmutableArray<Node> nodes, ImmutableArray<Node> losses)
    {
        var consumers = nodes.Select(_ => new List<int>()).ToArray();
        foreach (var node in nodes)
            foreach (var input in node.Inputs) consumers[input].Add(node.Id);
        var siteNodes = nodes.Where(n => _markedSites.Contains(n.Id) ||
            (!n.Op.IsLeaf && n.Op.IsDifferentiable && n.Op is not PerExampleLossOp && n.Inputs.Any(i => nodes[i].IsParameter))).ToList();
        var siteIndex = siteNodes.Select((n, i) => (n.Id, i)).ToDictionary(p => p.Id, p => p.i);
        var isLoss = losses.Select(l => l.Id).ToHashSet();

        var sites = ImmutableArray.CreateBuilder<Site>(siteNodes.Count);
        foreach (var s in siteNodes)
        {
            var parameters = s.Inputs.Select(i => nodes[i]).Where(n => n.IsParameter).ToImmutableArray();
            var only = consumers[s.Id].Count == 1 ? nodes[consumers[s.Id][0]] : null;
            var activation = only?.Op is ElementwiseOp ? only : null;
            // Next sites: walk consumers until a site; derivative paths only (no stop-gradient, labels or losses beyond).
            var next = new SortedSet<int>();
            var reachedLosses = new SortedSet<int>();
            var seen = new HashSet<int>();
            var stack = new Stack<(int Id, bool PastSite)>();
            foreach (var c in consumers[s.Id]) stack.Push((c, false));
            while (stack.Count > 0)
            {
                var (id, pastSite) = stack.Pop();
                if (!seen.Add(id * 2 + (pastSite ? 1 : 0)) || !nodes[id].Op.IsDifferentiable) continue;
                if (isLoss.Contains(id)) reachedLosses.Add(id);
                bool isSite = siteIndex.TryGetValue(id, out int index);
                if (isSite && !pastSite) next.Add(index);
                foreach (var c in consumers[id]) stack.Push((c, pastSite || isSite));
            }
            sites.Add(new Site(sites.Count, s, parameters, activation, [.. next], [.. reachedLosses.Select(id => nodes[id])]));
        }
        return sites.MoveToImmutable();
    }

    private Node AddNode(string name, Op op, ImmutableArray<int> inputs, Shape shape, bool batched)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("Every node needs a non-empty name.", nameof(name));
        if (!_names.Add(name)) throw new ArgumentException($"A node named '{name}' already exists; names must be unique.", nameof(name));
        var node = new Node(_nodes.Count, name, op, inputs, shape, batched);
        _nodes.Add(node);
        return node;
    }

    private void CheckOwn(Node node)
    {
        if (node.Id < 0 || node.Id >= _nodes.Count || !ReferenceEquals(_nodes[node.Id], node))
            throw new ArgumentException($"Node {node} does not belong to this builder.");
    }
}
