using ForwardAD.Autodiff;
using ForwardAD.Backends;
using ForwardAD.Tensors;

namespace ForwardAD.Graph;

/// <summary>
/// Multi-head causal self-attention, fused: inputs q, k, v [T, D] per example (the outputs of three projections, which
/// are sites), output [T, D]. Head h owns columns h·dh..(h+1)·dh − 1 of q, k, v and of the output (dh = D/H), so the
/// heads are split and merged by leading dimensions, without a reshape. Per example and head:
/// S = Q Kᵀ/√dh with S[i, j] = −∞ for j &gt; i, P = softmax_rows(S), O = P V.
/// <para>JVP (product rule; softmax JVP ṗ = p ⊙ (ṡ − ⟨p, ṡ⟩) row-wise, docs/design.md §2 attention):
/// Ṡ = (Q̇ Kᵀ + Q K̇ᵀ)/√dh, Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇. Masked entries need no mask of their own: P is 0
/// there, so Ṗ is too.</para>
/// <para>VJP: P̄ = Ō Vᵀ, V̄ = Pᵀ Ō, S̄ = P ⊙ (P̄ − rowsum(P ⊙ P̄)) (0 where masked), Q̄ = S̄ K/√dh, K̄ = S̄ᵀ Q/√dh.</para>
/// <para>Memory: the forward pass saves P, B·H·T² floats, as the auxiliary buffer (without derivatives it is written to the
/// scratch instead); the rules take one more B·H·T² of scratch for Ṡ/Ṗ (JVP) or P̄/S̄ (VJP), reused channel by channel.
/// Nothing of size K·B·H·T² is ever held. (A tiled forward + JVP that never forms a [T, T] matrix is the fused-kernel
/// alternative; not done here.)</para>
/// <para>Any of q̇, k̇, v̇ (and of q̄, k̄, v̄) may be a symbolic zero; q, k and v may be the same node (cotangents then add
/// in input order, q first).</para>
/// </summary>
public sealed record CausalSelfAttentionOp(int Heads) : Op
{
    /// <summary>"causal-self-attention".</summary>
    public override string Kind => "causal-self-attention";

    internal override (Shape Shape, bool IsBatched) InferShape(string name, IReadOnlyList<Node> inputs)
    {
        RequireInputs(name, inputs, 3, 3);
        if (Heads < 1) throw new ArgumentException($"Node '{name}': attention needs at least one head; got {Heads}.");
        var q = inputs[0];
        if (!q.IsBatched || q.Shape.Rank != 2)
            throw new ShapeMismatchException(name, "a batched sequence [T, D] for q", q.ToString(), "Attention reads sequences: [positions, width] per example.");
        for (int i = 1; i < 3; i++)
            if (!inputs[i].IsBatched || inputs[i].Shape != q.Shape)
                throw new ShapeMismatchException(name, $"{(i == 1 ? "k" : "v")} {q.Shape} like q", inputs[i].ToString(), "q, k and v must have the same [T, D] shape.");
        if (q.Shape[1] % Heads != 0)
            throw new ShapeMismatchException(name, $"a width divisible by {Heads} heads", q.Shape.ToString(),
                $"Each head takes D/heads columns; choose a width that is a multiple of {Heads}, or another number of heads.");
        return (q.Shape, true);
    }

    /// <summary>P [B, H, T, T].</summary>
    internal override int AuxiliaryElements(Node node, IReadOnlyList<Node> nodes, int batchSize) => (int)Square(node, batchSize);

    /// <summary>One [B, H, T, T] buffer: P when the forward pass saves nothing, Ṡ/Ṗ in the JVP, P̄/S̄ in the VJP (one channel at a time).</summary>
    internal override long ScratchElements(Node node, IReadOnlyList<Node> nodes, int batchSize, int channels) => Square(node, batchSize);

    private long Square(Node node, int batchSize) => (long)batchSize * Heads * node.Shape[0] * node.Shape[0];

    /// <summary>The sizes of one call: B, T, D, dh, 1/√dh.</summary>
    private readonly record struct Geometry(int Batch, int Length, int Width, int HeadWidth, float Scale)
    {
        /// <summary>Elements of one example's sequence, T·D (the stride between examples of q, k, v, O and their tangents).</summary>
        public int Sequence => Length * Width;
        /// <summary>Elements of one example's [H, T, T] block of P.</summary>
        public int Block(int heads) => heads * Length * Length;
    }

    private Geometry Sizes(in RuleContext c)
    {
        int length = c.Node.Shape[0], width = c.Node.Shape[1], headWidth = width / Heads;
        return new Geometry(c.BatchSize, length, width, headWidth, 1f / MathF.Sqrt(headWidth));
    }

    /// <summary>The columns of head h of a [B, T, D] sequence (a view from the head's first column on).</summary>
    private static View Head(View sequence, in Geometry g, int h) => sequence.Slice(h * g.HeadWidth, sequence.Length - h * g.HeadWidth);

    /// <summary>The [T, T] matrices of head h in a [B, H, T, T] buffer.</summary>
    private static View HeadSquare(View square, in Geometry g, int h) => square.Slice(h * g.Length * g.Length, square.Length - h * g.Length * g.Length);

    /// <summary>C_b = α·op(A_b) op(B_b) + β·C_b for every example b of one head: sequences step by T·D from one example to
    /// the next, [B, H, T, T] buffers by H·T².</summary>
    private void Batched(Backend backend, in Geometry g, Transpose ta, Transpose tb, int m, int n, int k, float alpha,
        View a, int lda, long strideA, View b, int ldb, long strideB, float beta, View c, int ldc, long strideC) =>
        backend.GemmStridedBatched(ta, tb, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, g.Batch);

    internal override void Forward(in RuleContext c, bool saveAuxiliary)
    {
        var g = Sizes(c);
        var backend = c.Backend;
        var (q, k, v, o) = (c.Input(0).Value, c.Input(1).Value, c.Input(2).Value, c.Output.Value);
        var p = saveAuxiliary ? c.Output.Auxiliary : c.Scratch.Slice(0, (int)Square(c.Node, c.BatchSize));
        var (T, D, dh, block) = (g.Length, g.Width, g.HeadWidth, g.Block(Heads));
        for (int h = 0; h < Heads; h++) // S_h = Q_h K_hᵀ/√dh into P's head blocks
            Batched(backend, g, Transpose.No, Transpose.Yes, T, T, dh, g.Scale, Head(q, g, h), D, g.Sequence, Head(k, g, h), D, g.Sequence,
                0f, HeadSquare(p, g, h), T, block);
        backend.CausalSoftmaxRows(p, T, p);
        for (int h = 0; h < Heads; h++) // O_h = P_h V_h
            Batched(backend, g, Transpose.No, Transpose.No, T, dh, T, 1f, HeadSquare(p, g, h), T, block, Head(v, g, h), D, g.Sequence,
                0f, Head(o, g, h), D, g.Sequence);
    }

    internal override void Jvp(in RuleContext c)
    {
        var g = Sizes(c);
        var backend = c.Backend;
        var (q, k, v) = (c.Input(0), c.Input(1), c.Input(2));
        var (p, dy) = (c.Output.Auxiliary, c.Output.Tangent);
        var ds = c.Scratch.Slice(0, p.Length); // Ṡ, then Ṗ in place
        var (T, D, dh, block) = (g.Length, g.Width, g.HeadWidth, g.Block(Heads));
        int channelElements = g.Batch * g.Sequence;
        bool scores = !q.Tangent.IsEmpty || !k.Tangent.IsEmpty;
        for (int channel = 0; channel < c.TangentCount; channel++)
        {
            var output = dy.Channel(channel, channelElements);
            bool written = false;
            if (scores)
            {
                for (int h = 0; h < Heads; h++)
                {
                    if (!q.Tangent.IsEmpty) // Ṡ = Q̇ Kᵀ/√dh
                        Batched(backend, g, Transpose.No, Transpose.Yes, T, T, dh, g.Scale, Head(q.Tangent.Channel(channel, channelElements), g, h), D, g.Sequence,
                            Head(k.Value, g, h), D, g.Sequence, 0f, HeadSquare(ds, g, h), T, block);
                    if (!k.Tangent.IsEmpty) // Ṡ (+)= Q K̇ᵀ/√dh
                        Batched(backend, g, Transpose.No, Transpose.Yes, T, T, dh, g.Scale, Head(q.Value, g, h), D, g.Sequence,
                            Head(k.Tangent.Channel(channel, channelElements), g, h), D, g.Sequence, q.Tangent.IsEmpty ? 0f : 1f, HeadSquare(ds, g, h), T, block);
                }
                backend.SoftmaxJvpRows(p, ds, T, ds); // Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)); 0 above the diagonal, where P is
                for (int h = 0; h < Heads; h++) // Ȯ = Ṗ V
                    Batched(backend, g, Transpose.No, Transpose.No, T, dh, T, 1f, HeadSquare(ds, g, h), T, block, Head(v.Value, g, h), D, g.Sequence,
                        0f, Head(output, g, h), D, g.Sequence);
                written = true;
            }
            if (!v.Tangent.IsEmpty)
                for (int h = 0; h < Heads; h++) // Ȯ (+)= P V̇
                    Batched(backend, g, Transpose.No, Transpose.No, T, dh, T, 1f, HeadSquare(p, g, h), T, block,
                        Head(v.Tangent.Channel(channel, channelElements), g, h), D, g.Sequence, written ? 1f : 0f, Head(output, g, h), D, g.Sequence);
        }
    }

    internal override void Vjp(in RuleContext c)
    {
        var g = Sizes(c);
        var backend = c.Backend;
        var (q, k, v) = (c.Input(0), c.Input(1), c.Input(2));
        var (p, dy) = (c.Output.Auxiliary, c.Output.Cotangent);
        var dp = c.Scratch.Slice(0, p.Length); // P̄, then S̄ in place
        var (T, D, dh, block) = (g.Length, g.Width, g.HeadWidth, g.Block(Heads));
        int channelElements = g.Batch * g.Sequence;
        bool scores = !q.Cotangent.IsEmpty || !k.Cotangent.IsEmpty;
        // Per channel, q̄ then k̄ then v̄: when q, k and v are one node, the first input's rule overwrites and the others add.
        for (int channel = 0; channel < dy.Length / channelElements; channel++)
        {
            var outputBar = dy.Channel(channel, channelElements);
            if (scores)
            {
                for (int h = 0; h < Heads; h++) // P̄ = Ō Vᵀ
                    Batched(backend, g, Transpose.No, Transpose.Yes, T, T, dh, 1f, Head(outputBar, g, h), D, g.Sequence, Head(v.Value, g, h), D, g.Sequence,
                        0f, HeadSquare(dp, g, h), T, block);
                backend.SoftmaxJvpRows(p, dp, T, dp); // S̄ = P ⊙ (P̄ − rowsum(P ⊙ P̄)), 0 where masked
                for (int h = 0; h < Heads; h++)
                {
                    if (!q.Cotangent.IsEmpty) // Q̄ = S̄ K/√dh
                        Batched(backend, g, Transpose.No, Transpose.No, T, dh, T, g.Scale, HeadSquare(dp, g, h), T, block, Head(k.Value, g, h), D, g.Sequence,
                            c.Accumulate(0) ? 1f : 0f, Head(q.Cotangent.Channel(channel, channelElements), g, h), D, g.Sequence);
                    if (!k.Cotangent.IsEmpty) // K̄ = S̄ᵀ Q/√dh
                        Batched(backend, g, Transpose.Yes, Transpose.No, T, dh, T, g.Scale, HeadSquare(dp, g, h), T, block, Head(q.Value, g, h), D, g.Sequence,
                            c.Accumulate(1) ? 1f : 0f, Head(k.Cotangent.Channel(channel, channelElements), g, h), D, g.Sequence);
                }
            }
            if (!v.Cotangent.IsEmpty)
                for (int h = 0; h < Heads; h++) // V̄ = Pᵀ Ō
                    Batched(backend, g, Transpose.Yes, Transpose.No, T, dh, T, 1f, HeadSquare(p, g, h), T, block, Head(outputBar, g, h), D, g.Sequence,
                        c.Accumulate(2) ? 1f : 0f, Head(v.Cotangent.Channel(channel, channelElements), g, h), D, g.Sequence);
        }
    }
}
