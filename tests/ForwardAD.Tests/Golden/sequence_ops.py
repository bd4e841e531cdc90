#!/usr/bin/env python3
"""Golden values for the sequence ops (issue 13): LayerNorm (affine and not), RMSNorm (written out: torch 1.13 has no
nn.RMSNorm), token embedding, learned positional embedding, sequence cross-entropy with ignored positions, and both GELUs.

Regenerate (deterministic; CPU, float64, fixed seed):
    /usr/bin/python3 tests/ForwardAD.Tests/Golden/sequence_ops.py > tests/ForwardAD.Tests/Golden/sequence_ops.json

Every case has float32-exact inputs (drawn in float32, computed in float64), the forward output, a JVP (tangents on every
differentiable input, torch.autograd.functional.jvp) and a VJP (a cotangent of the output, torch.autograd.functional.vjp),
in the C# layouts: sequences [B, T, D] batch-first, logits [B, T, V], token ids [B, T] as numbers (padding -1), tables
[V, D] and [maxLength, D]. The script checks each JVP against the VJP through <w, J v> = <J^T w, v> before writing.
An array is {"shape": [...], "data": [flat row-major values]}.

Cases
-----
layer_norm   affine B=2 T=3 D=5 (gamma, beta off their defaults); not affine B=3 T=1 D=7 (T = 1, odd width). eps 1e-5.
rms_norm     y = x / sqrt(mean(x^2) + eps) * gamma: affine B=2 T=3 D=5; not affine B=2 T=1 D=7.
embedding    ids [2, 4] over V=6 with repeated ids (the VJP adds them), D=3: output, JVP along a table tangent, table gradient.
position     x [2, 3, 4] + P[:3] with P [5, 4] (maxLength 5 > T 3: the gradient of P's last rows is 0).
sequence_ce  logits [3, 4, 5]; targets with ignored positions (-1): example 0 none ignored, example 1 two, example 2 all
             (loss 0, zero gradient). Per-example loss = mean over kept positions of -log softmax(z_t)[y_t]
             (F.cross_entropy(reduction="mean", ignore_index=-1) per example). JVP along a logit tangent; VJP of a
             per-example cotangent [3].
gelu         x on a grid in [-6, 6]: exact GELU (approximate="none") and tanh GELU, values and derivatives.
"""
import json
import torch
import torch.nn.functional as F
from torch.autograd.functional import jvp, vjp

torch.manual_seed(20240613)
EPS = 1e-5


def f32(*shape, scale=1.0, shift=0.0):
    """N(shift, scale^2) drawn and rounded in float32, returned exactly as float64."""
    return (torch.randn(*shape, dtype=torch.float32) * scale + shift).double()


def arr(t):
    t = t.detach().double().contiguous()
    return {"shape": list(t.shape), "data": [float(v) for v in t.reshape(-1).tolist()]}


def case(name, fn, inputs, extra=None):
    """fn(*tensors) -> output; inputs: dict name -> float64 tensor (float32-exact)."""
    names = list(inputs)
    xs = tuple(inputs[n] for n in names)
    out = fn(*xs)
    tangents = tuple(f32(*x.shape) for x in xs)
    _, tangent_out = jvp(fn, xs, tangents)
    cot = f32(*out.shape)
    _, grads = vjp(fn, xs, cot)
    left = float((cot * tangent_out).sum())
    right = sum(float((g * t).sum()) for g, t in zip(grads, tangents))
    assert abs(left - right) <= 1e-10 * (1 + abs(left)), (name, left, right)
    result = {
        "name": name,
        "inputs": {n: arr(x) for n, x in zip(names, xs)},
        "output": arr(out),
        "jvp": {"tangents": {n: arr(t) for n, t in zip(names, tangents)}, "output": arr(tangent_out)},
        "vjp": {"cotangent": arr(cot), "gradients": {n: arr(g) for n, g in zip(names, grads)}},
    }
    if extra:
        result.update(extra)
    return result


def rms_norm(x, gamma=None):
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)
    return y * gamma if gamma is not None else y


golden = {"torch": torch.__version__, "eps": EPS}

golden["layer_norm"] = [
    case("affine_b2_t3_d5", lambda x, g, b: F.layer_norm(x, (5,), g, b, EPS),
         {"x": f32(2, 3, 5, scale=2.0, shift=0.5), "gamma": f32(5, scale=0.5, shift=1.0), "beta": f32(5, scale=0.3)}),
    case("plain_b3_t1_d7", lambda x: F.layer_norm(x, (7,), None, None, EPS), {"x": f32(3, 1, 7, shift=-1.0)}),
]
golden["rms_norm"] = [
    case("affine_b2_t3_d5", rms_norm, {"x": f32(2, 3, 5, scale=2.0, shift=0.5), "gamma": f32(5, scale=0.5, shift=1.0)}),
    case("plain_b2_t1_d7", rms_norm, {"x": f32(2, 1, 7)}),
]

ids = torch.tensor([[0, 3, 3, 5], [2, 0, 3, 1]])
golden["embedding"] = [
    case("v6_d3", lambda table: F.embedding(ids, table), {"table": f32(6, 3)}, {"ids": arr(ids.double())}),
]

golden["position"] = [
    case("t3_max5_d4", lambda x, p: x + p[:3].unsqueeze(0), {"x": f32(2, 3, 4), "table": f32(5, 4)}),
]

targets = torch.tensor([[1, 4, 0, 2], [3, -1, -1, 0], [-1, -1, -1, -1]])


def sequence_ce(z):
    losses = []
    for b in range(z.shape[0]):
        keep = targets[b] != -1
        if keep.any():
            losses.append(F.cross_entropy(z[b][keep], targets[b][keep], reduction="mean"))
        else:
            losses.append(z[b].sum() * 0.0)
    return torch.stack(losses)


golden["sequence_ce"] = [
    case("b3_t4_v5_ignored", sequence_ce, {"logits": f32(3, 4, 5, scale=1.5)}, {"targets": arr(targets.double()), "ignore_index": -1}),
]

grid = torch.linspace(-6, 6, 97, dtype=torch.float32).double().requires_grad_(True)
gelus = {}
for approximate in ["none", "tanh"]:
    y = F.gelu(grid, approximate=approximate)
    (d,) = torch.autograd.grad(y.sum(), grid)
    gelus[approximate] = {"x": arr(grid), "y": arr(y), "derivative": arr(d)}
golden["gelu"] = gelus

for family in ["layer_norm", "rms_norm", "embedding", "position", "sequence_ce"]:
    for c in golden[family]:
        for group in [c["inputs"], c["jvp"]["tangents"], {"w": c["vjp"]["cotangent"]}]:
            for a in group.values():
                for v in a["data"]:
                    assert float(torch.tensor(v, dtype=torch.float32).double()) == v, (family, v)

print(json.dumps(golden, indent=1))
