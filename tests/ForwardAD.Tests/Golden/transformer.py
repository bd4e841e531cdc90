#!/usr/bin/env python3
"""Golden values for a whole 2-layer transformer language model (issue 13): TransformerSpec(Layers: 2, Heads: 2,
Width: 8, Context: 5, Vocabulary: 11).Build(), written out in PyTorch in float64.

Regenerate (deterministic; CPU, float64, fixed seed; about a second):
    /usr/bin/python3 tests/ForwardAD.Tests/Golden/transformer.py > tests/ForwardAD.Tests/Golden/transformer.json
The script checks itself before writing anything: the JVP of the per-example losses against float64 central
differences, the gradient against the JVP through <grad L, v> = L'(v), and that every float32 written reads back
bit-exactly.

The model (GPT-2's pre-LN block; C#: src/ForwardAD/Graph/TransformerSpec.cs), per example, x and y token ids [T]:
    h = E[x] + P                                      embed.weight E [V, D], pos.weight P [T, D]
    for l in 1..L:
        a = LN1(h)                                    block{l}.ln1.weight/bias [D], eps 1e-5, biased variance
        h = h + proj(attention(q(a), k(a), v(a)))     block{l}.{q,k,v,proj}.weight [D, D] (nn.Linear's [out, in]), .bias [D]
        h = h + fc2(gelu(fc1(LN2(h))))                block{l}.fc1.weight [4D, D], fc2.weight [D, 4D]; exact (erf) GELU
    logits = head(LN_f(h))                            ln_f.weight/bias [D], head.weight [V, D], head.bias [V]
    loss_b = mean over positions t with y_bt != -1 of cross_entropy(logits_bt, y_bt)
The mean loss is (1/B) sum_b loss_b (the library's objective: a mean of per-example means, not PyTorch's token mean).
Attention: head h owns columns h*dh .. (h+1)*dh - 1 of q, k, v (dh = D/H); softmax(Q_h K_h^T / sqrt(dh) + causal mask) V_h.

Data: B = 3 examples; example 1 has the padding target -1 at position 2 (ignored: its loss is a mean over 4 positions);
example 2 repeats a token so the embedding's scatter-add sums.

JSON: {"torch", "config": {"layers", "heads", "width", "context", "vocabulary", "batch"},
       "x": [[ids] per example], "y": [[ids, -1 = ignored] per example],
       "parameters": {name: array}, "per_example_loss": array [B], "mean_loss": float, "logits": array [B, T, V],
       "gradients": {name: array} (of the mean loss),
       "jvp": {"tangents": {name: array}, "per_example_loss": array [B], "logits": array [B, T, V]}}
An array is {"shape": [...], "data": [row-major values in the C# layout, which is PyTorch's here]}. Parameters and
tangents are exact float32 values (read them as float32); results are float64 computed from those float32 values.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

torch.manual_seed(1313)
LAYERS, HEADS, WIDTH, CONTEXT, VOCAB, MLP, BATCH = 2, 2, 8, 5, 11, 4, 3
EPS = 1e-5


def rand32(*shape, scale=1.0, offset=0.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale + offset).to(torch.float32)


def parameter_shapes():
    shapes = {"embed.weight": (VOCAB, WIDTH), "pos.weight": (CONTEXT, WIDTH)}
    for l in range(1, LAYERS + 1):
        b = f"block{l}"
        shapes[f"{b}.ln1.weight"] = shapes[f"{b}.ln1.bias"] = (WIDTH,)
        for name in ("q", "k", "v"):
            shapes[f"{b}.{name}.weight"], shapes[f"{b}.{name}.bias"] = (WIDTH, WIDTH), (WIDTH,)
        shapes[f"{b}.proj.weight"], shapes[f"{b}.proj.bias"] = (WIDTH, WIDTH), (WIDTH,)
        shapes[f"{b}.ln2.weight"] = shapes[f"{b}.ln2.bias"] = (WIDTH,)
        shapes[f"{b}.fc1.weight"], shapes[f"{b}.fc1.bias"] = (MLP * WIDTH, WIDTH), (MLP * WIDTH,)
        shapes[f"{b}.fc2.weight"], shapes[f"{b}.fc2.bias"] = (WIDTH, MLP * WIDTH), (WIDTH,)
    shapes["ln_f.weight"] = shapes["ln_f.bias"] = (WIDTH,)
    shapes["head.weight"], shapes["head.bias"] = (VOCAB, WIDTH), (VOCAB,)
    return shapes


def initial(name, shape):
    """Values off every default: LN gamma = 1 + N(0, 0.3^2), beta and biases N(0, 0.2^2), weights N(0, 1/fan_in)·1.5
    (so the softmax rows and GELU inputs are neither flat nor saturated), tables N(0, 1) and N(0, 0.5^2)."""
    if ".ln" in name or name.startswith("ln_f"):
        return rand32(*shape, scale=0.3, offset=1.0) if name.endswith("weight") else rand32(*shape, scale=0.2)
    if name == "embed.weight":
        return rand32(*shape)
    if name == "pos.weight":
        return rand32(*shape, scale=0.5)
    if name.endswith("bias"):
        return rand32(*shape, scale=0.2)
    return rand32(*shape, scale=1.5 / math.sqrt(shape[1]))


def attention(q, k, v, heads):
    batch, length, width = q.shape
    dh = width // heads
    split = lambda t: t.reshape(batch, length, heads, dh).permute(0, 2, 1, 3)  # [B, H, T, dh]
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh)
    mask = torch.ones(length, length, dtype=torch.bool).triu(1)
    p = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    return (p @ split(v)).permute(0, 2, 1, 3).reshape(batch, length, width)


def model(p, x, y):
    """Per-example losses [B] and logits [B, T, V] of the parameters p (name -> tensor) on ids x, targets y [B, T]."""
    linear = lambda t, name: t @ p[f"{name}.weight"].transpose(0, 1) + p[f"{name}.bias"]
    norm = lambda t, name: F.layer_norm(t, (WIDTH,), p[f"{name}.weight"], p[f"{name}.bias"], EPS)
    h = p["embed.weight"][x] + p["pos.weight"][: x.shape[1]]
    for l in range(1, LAYERS + 1):
        b = f"block{l}"
        a = norm(h, f"{b}.ln1")
        h = h + linear(attention(linear(a, f"{b}.q"), linear(a, f"{b}.k"), linear(a, f"{b}.v"), HEADS), f"{b}.proj")
        h = h + linear(F.gelu(linear(norm(h, f"{b}.ln2"), f"{b}.fc1")), f"{b}.fc2")
    logits = linear(norm(h, "ln_f"), "head")
    per_token = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-1, reduction="none").reshape(y.shape)
    kept = (y != -1).to(logits.dtype)
    return (per_token * kept).sum(1) / kept.sum(1), logits


def f32(t):
    t = t.detach().to(torch.float32).contiguous()
    values = []
    for v in t.flatten().tolist():
        s = str(np.float32(v))
        assert math.isfinite(v) and np.float32(s) == np.float32(v) and np.float32(float(s)) == np.float32(v), (s, v)
        values.append(s)
    return {"shape": list(t.shape), "data": "[" + ", ".join(values) + "]"}


def f64(t):
    t = t.detach().to(torch.float64).contiguous()
    values = t.flatten().tolist()
    assert all(math.isfinite(v) for v in values)
    return {"shape": list(t.shape), "data": "[" + ", ".join(repr(float(v)) for v in values) + "]"}


def main():
    shapes = parameter_shapes()
    params32 = {name: initial(name, shape) for name, shape in shapes.items()}
    tangents32 = {name: rand32(*shape) for name, shape in shapes.items()}
    x = torch.randint(0, VOCAB, (BATCH, CONTEXT))
    x[2, 3] = x[2, 0]  # a repeated id: the embedding's VJP sums two rows into one
    y = torch.cat([x[:, 1:], torch.randint(0, VOCAB, (BATCH, 1))], dim=1)
    y[1, 2] = -1  # an ignored (padding) target
    names = list(shapes)
    params = {k: v.double() for k, v in params32.items()}

    losses, logits = model(params, x, y)
    mean_loss = losses.mean()

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = dict(zip(names, torch.autograd.grad(model(leaves, x, y)[0].mean(), [leaves[k] for k in names])))

    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(params[k], tangents32[k].double()) for k in names}
        dl, dz = model(duals, x, y)
        loss_tangent, logits_tangent = fwAD.unpack_dual(dl).tangent, fwAD.unpack_dual(dz).tangent

    # Self-checks: central differences (h = 1e-6: truncation ~1e-12, rounding ~1e-10) and <grad, v> = mean loss JVP.
    h = 1e-6
    plus = model({k: params[k] + h * tangents32[k].double() for k in names}, x, y)[0]
    minus = model({k: params[k] - h * tangents32[k].double() for k in names}, x, y)[0]
    err = ((plus - minus) / (2 * h) - loss_tangent).abs().max().item()
    assert err < 1e-6 * (1 + loss_tangent.abs().max().item()), ("JVP vs central differences", err)
    lhs = sum((grads[k] * tangents32[k].double()).sum() for k in names).item()
    assert abs(lhs - loss_tangent.mean().item()) < 1e-10 * (1 + abs(lhs)), ("adjoint identity", lhs, loss_tangent.mean().item())
    assert losses[1].item() != 0 and (y == -1).sum().item() == 1

    out = {
        "torch": torch.__version__,
        "config": {"layers": LAYERS, "heads": HEADS, "width": WIDTH, "context": CONTEXT, "vocabulary": VOCAB, "batch": BATCH},
        "x": x.tolist(),
        "y": y.tolist(),
        "parameters": {k: f32(v) for k, v in params32.items()},
        "per_example_loss": f64(losses),
        "mean_loss": mean_loss.item(),
        "logits": f64(logits),
        "gradients": {k: f64(grads[k]) for k in names},
        "jvp": {"tangents": {k: f32(v) for k, v in tangents32.items()}, "per_example_loss": f64(loss_tangent), "logits": f64(logits_tangent)},
    }
    sys.stdout.write(render(out) + "\n")


def render(obj, indent=0):
    pad = " " * indent
    if isinstance(obj, dict) and set(obj) == {"shape", "data"}:
        return '{"shape": %s, "data": %s}' % (json.dumps(obj["shape"]), obj["data"])
    if isinstance(obj, dict):
        body = ",\n".join(pad + " " + json.dumps(k) + ": " + render(v, indent + 1) for k, v in obj.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(obj, float):
        return repr(obj)
    return json.dumps(obj)


if __name__ == "__main__":
    main()
