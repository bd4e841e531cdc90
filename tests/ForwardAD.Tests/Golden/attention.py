#!/usr/bin/env python3
"""Golden values for multi-head causal self-attention (issue 13, CausalSelfAttentionOp).

Regenerate (deterministic; CPU, float64, fixed seed; about a second):
    /usr/bin/python3 tests/ForwardAD.Tests/Golden/attention.py > tests/ForwardAD.Tests/Golden/attention.json
The script checks itself before writing anything: every JVP against float64 central differences, every VJP against
its JVP through <w, JVP(v)> = <VJP(w), v>, and that every float32 written reads back bit-exactly.

The op (PyTorch 1.13 has no F.scaled_dot_product_attention, so it is written out):
    q, k, v: [B, T, D]; head h owns columns h*dh .. (h+1)*dh - 1, dh = D / H;
    S = Q_h K_h^T / sqrt(dh), S[i, j] = -inf for j > i; P = softmax(S, dim=-1); O_h = P V_h; heads merged back to [B, T, D].

Cases: a (B=2, T=5, D=6, H=2: dh=3 odd), b (T=1: one position attends to itself only, B=1, D=4, H=2), c (B=2, T=4, D=9,
H=3), d (one head, dh=5, B=3, T=3), e (B=1, T=7, D=8, H=4, inputs scaled by 2: peaked softmax rows).

JSON: {"attention": [{"name", "config": {"heads"}, "inputs": {"q", "k", "v"}, "output",
        "jvp": {"tangents": {"q", "k", "v"}, "output"}, "vjp": {"cotangent", "gradients": {"q", "k", "v"}}}]}
An array is {"shape": [...], "data": [row-major values in the C# layout, which is PyTorch's here]}. Inputs, tangents and
cotangents are exact float32 values (read them as float32); results are float64 computed from those float32 values.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

torch.manual_seed(13)


def attention(q, k, v, heads):
    batch, length, width = q.shape
    dh = width // heads
    split = lambda x: x.reshape(batch, length, heads, dh).permute(0, 2, 1, 3)  # [B, H, T, dh]
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh)
    mask = torch.ones(length, length, dtype=torch.bool).triu(1)
    p = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    return (p @ split(v)).permute(0, 2, 1, 3).reshape(batch, length, width)


def rand32(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(torch.float32)


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


def case(name, batch, length, width, heads, scale=1.0):
    inputs = {n: rand32(batch, length, width, scale=scale) for n in "qkv"}
    tangents = {n: rand32(batch, length, width) for n in "qkv"}
    cotangent = rand32(batch, length, width)
    x = {n: t.double() for n, t in inputs.items()}
    out = attention(x["q"], x["k"], x["v"], heads)

    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(x[n], tangents[n].double()) for n in "qkv"}
        jvp = fwAD.unpack_dual(attention(duals["q"], duals["k"], duals["v"], heads)).tangent

    leaves = {n: x[n].clone().requires_grad_(True) for n in "qkv"}
    attention(leaves["q"], leaves["k"], leaves["v"], heads).backward(cotangent.double())
    gradients = {n: leaves[n].grad for n in "qkv"}

    # Self-checks: the JVP against central differences (float64, ε = 1e-6: truncation ~1e-12), the VJP against the JVP.
    eps = 1e-6
    plus = attention(*(x[n] + eps * tangents[n].double() for n in "qkv"), heads)
    minus = attention(*(x[n] - eps * tangents[n].double() for n in "qkv"), heads)
    assert torch.allclose((plus - minus) / (2 * eps), jvp, rtol=1e-6, atol=1e-7), name
    left = (cotangent.double() * jvp).sum()
    right = sum((gradients[n] * tangents[n].double()).sum() for n in "qkv")
    assert abs(left - right) <= 1e-10 * (1 + abs(left)), (name, left, right)

    return {
        "name": name,
        "config": {"heads": heads},
        "inputs": {n: f32(t) for n, t in inputs.items()},
        "output": f64(out),
        "jvp": {"tangents": {n: f32(t) for n, t in tangents.items()}, "output": f64(jvp)},
        "vjp": {"cotangent": f32(cotangent), "gradients": {n: f64(g) for n, g in gradients.items()}},
    }


cases = [
    case("a_B2_T5_D6_H2", 2, 5, 6, 2),
    case("b_T1", 1, 1, 4, 2),
    case("c_B2_T4_D9_H3", 2, 4, 9, 3),
    case("d_one_head_dh5", 3, 3, 5, 1),
    case("e_peaked_T7_H4", 1, 7, 8, 4, scale=2.0),
]


def render(obj, indent=0):
    pad = " " * indent
    if isinstance(obj, dict) and set(obj) == {"shape", "data"}:
        return '{"shape": %s, "data": %s}' % (json.dumps(obj["shape"]), obj["data"])
    if isinstance(obj, dict):
        body = ",\n".join(pad + " " + json.dumps(k) + ": " + render(v, indent + 1) for k, v in obj.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(obj, list):
        return "[\n" + ",\n".join(pad + " " + render(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


text = render({"torch": torch.__version__, "attention": cases})
json.loads(text)  # well-formed
sys.stdout.write(text + "\n")
