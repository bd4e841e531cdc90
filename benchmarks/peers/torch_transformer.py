"""The benchmark transformer of the three-way comparison (issue 11), PyTorch side; torch_peer.py times its rows.

The same model on every side (ForwardAD: TransformerBenchmarks.cs, TransformerSpec "l2-h4-d128-t64"; TorchSharp:
ForwardAD.TorchSharpPeer's tf_* rows), written plainly (torch 1.13 has no F.scaled_dot_product_attention):
  tokens x, targets y [B, T] in [0, V); batch 32 sequences, T = 64, V = 256, width D = 128, 4 heads, 2 blocks, float32
  h = E[x] + P                                   token table E [V, D], learned positions P [T, D]
  per block (pre-LN, GPT-2):  a = LN1(h); h = h + proj(attention(q(a), k(a), v(a)))
                              h = h + fc2(gelu(fc1(LN2(h))))          fc1 [4D, D], exact (erf) GELU, fc2 [D, 4D]
  logits = head(LN_f(h))                         head [V, D]; LayerNorm eps 1e-5, biased variance
  loss_b = mean over the positions of example b of cross_entropy(logits_bt, y_bt) (targets -1 ignored)
Attention: head i owns columns i*dh .. (i+1)*dh - 1 of q, k, v (dh = D/H); softmax(Q_i K_i^T / sqrt(dh) + causal mask) V_i,
the mask an additive [T, T] matrix (0 on and below the diagonal, -inf above).
Initialisation as ForwardAD's ModelBuilder defaults: linear weights U(+-1/sqrt(fan_in)) with zero biases, E ~ N(0, 1),
P ~ N(0, 0.02^2), LayerNorm gamma = 1, beta = 0.
Sites (where tangents enter, as ForwardAD's Model.Sites, in this order): embed (E[x]), pos (E[x] + P), then per block ln1,
q, k, v, proj, ln2, fc1 (before the GELU), fc2, and finally ln_f and head: 4 + 8 * layers.
"""
import json
import math
import os
from collections import namedtuple

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

Config = namedtuple("Config", "layers heads width context vocabulary mlp batch")
BENCH = Config(layers=2, heads=4, width=128, context=64, vocabulary=256, mlp=4, batch=32)
EPS = 1e-5


def parameter_shapes(c=BENCH):
    """{name: shape} in ForwardAD's names and layouts (linear weights [out, in])."""
    shapes = {"embed.weight": (c.vocabulary, c.width), "pos.weight": (c.context, c.width)}
    for l in range(1, c.layers + 1):
        b = f"block{l}"
        for name, (out, fan_in) in [("ln1", (c.width, None)), ("q", (c.width, c.width)), ("k", (c.width, c.width)),
                                    ("v", (c.width, c.width)), ("proj", (c.width, c.width)), ("ln2", (c.width, None)),
                                    ("fc1", (c.mlp * c.width, c.width)), ("fc2", (c.width, c.mlp * c.width))]:
            shapes[f"{b}.{name}.weight"] = (out,) if fan_in is None else (out, fan_in)
            shapes[f"{b}.{name}.bias"] = (out,)
    shapes["ln_f.weight"] = shapes["ln_f.bias"] = (c.width,)
    shapes["head.weight"], shapes["head.bias"] = (c.vocabulary, c.width), (c.vocabulary,)
    return shapes


def make_params(requires_grad=False, c=BENCH, dtype=torch.float32):
    """{name: tensor} with ForwardAD's default initialisation (see the module's docstring)."""
    params = {}
    for name, shape in parameter_shapes(c).items():
        if name == "embed.weight":
            t = torch.randn(shape, dtype=dtype)
        elif name == "pos.weight":
            t = 0.02 * torch.randn(shape, dtype=dtype)
        elif name.endswith("bias"):
            t = torch.zeros(shape, dtype=dtype)
        elif len(shape) == 1:  # a LayerNorm's gamma
            t = torch.ones(shape, dtype=dtype)
        else:
            t = torch.empty(shape, dtype=dtype).uniform_(-shape[1] ** -0.5, shape[1] ** -0.5)
        params[name] = t.requires_grad_(requires_grad)
    return params


def make_batch(c=BENCH, batch=None):
    """Token ids x and targets y [B, T]: windows of T + 1 uniform random ids, y the inputs shifted by one."""
    window = torch.randint(0, c.vocabulary, (batch or c.batch, c.context + 1))
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def causal_mask(length, dtype=torch.float32):
    return torch.full((length, length), float("-inf"), dtype=dtype).triu(1)


def attention(q, k, v, heads, mask):
    batch, length, width = q.shape
    dh = width // heads
    split = lambda t: t.view(batch, length, heads, dh).transpose(1, 2)  # [B, H, T, dh]
    scores = split(q) @ split(k).transpose(-1, -2) * (1 / math.sqrt(dh)) + mask
    return (torch.softmax(scores, dim=-1) @ split(v)).transpose(1, 2).reshape(batch, length, width)


def site_names(c=BENCH):
    return ["embed", "pos"] + [f"block{l}.{n}" for l in range(1, c.layers + 1)
                               for n in ("ln1", "q", "k", "v", "proj", "ln2", "fc1", "fc2")] + ["ln_f", "head"]


def losses(p, x, y, c=BENCH, mask=None, site=None):
    """Per-example mean cross-entropy [B] of the parameters p (name -> tensor) on ids x and targets y [B, T].
    site(i, s, op_input) -> s, when given, sees every site's output s with the input of its op (the token ids for the
    embedding; None for the positions and the LayerNorms, whose parameter VJPs need only s) and returns what the network
    continues with (s plus a dual offset, for instance)."""
    site = site or (lambda i, s, op_input: s)
    mask = causal_mask(c.context, p["head.weight"].dtype) if mask is None else mask
    count = iter(range(4 + 8 * c.layers))
    linear = lambda t, name: site(next(count), F.linear(t, p[f"{name}.weight"], p[f"{name}.bias"]), t)
    norm = lambda t, name: site(next(count), F.layer_norm(t, (c.width,), p[f"{name}.weight"], p[f"{name}.bias"], EPS), None)
    h = site(next(count), F.embedding(x, p["embed.weight"]), x)
    h = site(next(count), h + p["pos.weight"][: x.shape[1]], None)
    for l in range(1, c.layers + 1):
        b = f"block{l}"
        a = norm(h, f"{b}.ln1")
        q, k, v = linear(a, f"{b}.q"), linear(a, f"{b}.k"), linear(a, f"{b}.v")
        h = h + linear(attention(q, k, v, c.heads, mask), f"{b}.proj")
        h = h + linear(F.gelu(linear(norm(h, f"{b}.ln2"), f"{b}.fc1")), f"{b}.fc2")
    logits = linear(norm(h, "ln_f"), "head")
    per_token = F.cross_entropy(logits.reshape(-1, c.vocabulary), y.reshape(-1), ignore_index=-1, reduction="none").view(y.shape)
    kept = (y != -1).to(per_token.dtype)
    return (per_token * kept).sum(1) / kept.sum(1)


def tangent_shapes(c=BENCH, batch=None):
    b, t, d = batch or c.batch, c.context, c.width
    widths = {"ln1": d, "q": d, "k": d, "v": d, "proj": d, "ln2": d, "fc1": c.mlp * d, "fc2": d, "ln_f": d, "head": c.vocabulary,
              "embed": d, "pos": d}
    return [(b, t, widths[n.split(".")[-1]]) for n in site_names(c)]


def make_tangents(c=BENCH, batch=None, dtype=torch.float32):
    """Per-example tangents N(0, I) on every site."""
    return [torch.randn(shape, dtype=dtype) for shape in tangent_shapes(c, batch)]


def dual_site(tangents):
    """A site callback adding dual(0, u_i) to site i: the tangent of every later value gains the JVP of u_i."""
    return lambda i, s, op_input: s + fwAD.make_dual(torch.zeros_like(s), tangents[i])


def jvp_k1(p, x, y, tangents, c=BENCH, mask=None):
    """Per-example JVPs of the losses with the tangents on every site: one forward_ad dual pass (call under no_grad)."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(losses(p, x, y, c, mask, dual_site(tangents))).tangent


def parameter_vjp(p, x, site_inputs, site_outputs, cotangents, c=BENCH):
    """{name: gradient} of every parameter from (estimated) cotangents g at the sites, through each op's own parameter VJP:
    embedding dE = scatter-add of g over the token ids; positions dP = sum_b g; LayerNorm dgamma = sum g * xhat,
    dbeta = sum g over (B, T) with xhat = (s - beta) / gamma; linear dW = g^T a, db = sum g over (B, T)."""
    grads = {}
    for i, name in enumerate(site_names(c)):
        g = cotangents[i]
        if name == "embed":
            grads["embed.weight"] = torch.zeros_like(p["embed.weight"]).index_add_(0, x.reshape(-1), g.reshape(-1, c.width))
        elif name == "pos":
            grads["pos.weight"] = g.sum(0)
        elif name.split(".")[-1] in ("ln1", "ln2", "ln_f"):
            xhat = (site_outputs[i] - p[f"{name}.bias"]) / p[f"{name}.weight"]
            grads[f"{name}.weight"], grads[f"{name}.bias"] = (g * xhat).sum((0, 1)), g.sum((0, 1))
        else:
            flat = g.reshape(-1, g.shape[-1])
            grads[f"{name}.weight"], grads[f"{name}.bias"] = flat.t() @ site_inputs[i].reshape(-1, site_inputs[i].shape[-1]), flat.sum(0)
    return grads


def ap_step(p, opt, x, y, c=BENCH, mask=None):
    """One activation-perturbation step written with forward_ad (the PyTorch side of our tf_ap_adamw row): fresh tangents
    u_i ~ N(0, I) on every site, one dual pass, per-example JVPs d_b = dl_b / B, site estimates d_b u_{i,b}, each turned
    into parameter gradients by its op's VJP (parameter_vjp), then the optimizer's step."""
    with torch.no_grad():
        tangents, inputs, outputs = [], [], []

        def site(i, s, op_input):
            u = torch.randn_like(s)
            tangents.append(u)
            inputs.append(None if op_input is None else fwAD.unpack_dual(op_input).primal)
            outputs.append(fwAD.unpack_dual(s).primal)
            return s + fwAD.make_dual(torch.zeros_like(s), u)

        with fwAD.dual_level():
            d = fwAD.unpack_dual(losses(p, x, y, c, mask, site)).tangent / x.shape[0]
        estimates = [u * d.view(-1, 1, 1) for u in tangents]
        for name, grad in parameter_vjp(p, x, inputs, outputs, estimates, c).items():
            p[name].grad = grad
    opt.step()


def check():
    """Correctness guard of the PyTorch transformer (float64). (1) On tests/ForwardAD.Tests/Golden/transformer.json (the
    parameters and batch that ForwardAD's TransformerTests match, with a padding target): losses equals the golden
    per-example losses and autograd's gradient of their mean equals the golden gradients, so this peer computes the model
    that ForwardAD computes. (2) On a small model with parameters off their defaults: parameter_vjp of the exact site
    cotangents (autograd's gradient of the mean loss with respect to zero offsets on the sites) equals autograd's
    parameter gradient, so the AP step's update path is backprop's when its estimate is exact. (3) The forward_ad
    per-example JVP equals float64 central differences of the losses along the site tangents. Returns the worst errors."""
    worst = {}
    golden_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "ForwardAD.Tests", "Golden", "transformer.json")
    with open(golden_path) as f:
        golden = json.load(f)
    g = golden["config"]
    c = Config(g["layers"], g["heads"], g["width"], g["context"], g["vocabulary"], 4, g["batch"])
    array = lambda a, dtype=torch.float64: torch.tensor(a["data"], dtype=dtype).view(a["shape"]).double()
    # The parameters are float32 values written in their shortest form: read them as float32, then widen.
    p = {name: array(a, torch.float32).requires_grad_(True) for name, a in golden["parameters"].items()}
    x, y = torch.tensor(golden["x"]), torch.tensor(golden["y"])
    got = losses(p, x, y, c)
    want = array(golden["per_example_loss"])
    worst["golden per-example losses (relative)"] = ((got - want).abs().max() / want.abs().max()).item()
    grads = torch.autograd.grad(got.mean(), list(p.values()))
    worst["golden gradients (relative)"] = max(((a - array(golden["gradients"][name])).abs().max() / (1 + array(golden["gradients"][name]).abs().max())).item()
                                               for name, a in zip(p, grads))

    torch.manual_seed(1)
    c = Config(layers=2, heads=2, width=8, context=6, vocabulary=13, mlp=4, batch=3)
    p = make_params(c=c, dtype=torch.float64)
    for name, t in p.items():  # off the defaults: every term of every VJP counts
        t += (0.3 if len(t.shape) == 1 else 0.5 / math.sqrt(t.shape[-1])) * torch.randn_like(t)
        t.requires_grad_(True)
    x, y = make_batch(c)
    x[2, 4] = x[2, 1]  # a repeated id: the embedding's VJP sums two rows into one
    offsets = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in tangent_shapes(c)]
    inputs, outputs = [], []

    def record(i, s, op_input):
        inputs.append(None if op_input is None else op_input.detach())
        outputs.append(s.detach())
        return s + offsets[i]

    loss = losses(p, x, y, c, site=record).mean()
    grads = torch.autograd.grad(loss, list(p.values()) + offsets)
    exact = dict(zip(p, grads[:len(p)]))
    via_vjp = parameter_vjp({k: v.detach() for k, v in p.items()}, x, inputs, outputs, grads[len(p):], c)
    assert set(via_vjp) == set(exact), set(exact) ^ set(via_vjp)
    worst["parameter VJP vs autograd (relative)"] = max(((via_vjp[k] - exact[k]).abs().max() / exact[k].abs().max()).item() for k in exact)
    worst["gradient norm: VJP path / autograd"] = (torch.sqrt(sum((a * a).sum() for a in via_vjp.values())) /
                                                  torch.sqrt(sum((b * b).sum() for b in exact.values()))).item()

    detached = {k: v.detach() for k, v in p.items()}
    tangents = make_tangents(c, dtype=torch.float64)
    with torch.no_grad():
        jvp = jvp_k1(detached, x, y, tangents, c)
        eps = 1e-6
        shifted = lambda sign: losses(detached, x, y, c, site=lambda i, s, _: s + sign * eps * tangents[i])
        central = (shifted(1) - shifted(-1)) / (2 * eps)
    worst["forward_ad JVP vs central differences (relative)"] = ((jvp - central).abs().max() / (1 + jvp.abs().max())).item()
    return worst
