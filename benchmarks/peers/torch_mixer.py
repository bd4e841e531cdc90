#!/usr/bin/env python3
"""PyTorch peer for one LocalMixer training step (issue 14); ForwardAD's side: `ForwardAD.Benchmarks mixer-step`.

The same model as LocalMixerSpec p4-d64-b2-g4 on 28x28x1 images (Fashion-MNIST size), 10 classes, batch 64, float32:
patch embedding (conv 4x4 stride 4 -> 49 tokens x 64) -> LayerNorm -> ReLU; per block: LayerNorm, token mixing
(49x49) -> LayerNorm -> ReLU, dense 64->64 -> LayerNorm -> ReLU, group-wise linear (4 groups) -> per-group LayerNorm,
+ residual -> ReLU; local loss: token average -> per-group head -> cross-entropy averaged over groups; stop-gradient
(detach) between blocks and before the final head (token average -> LayerNorm -> linear 10). Adam (lr 1e-3).
Rows:
  mixer_backprop_adam  forward, backward through every loss (the stop-gradients keep each block local), Adam
  mixer_ap_adam        Ren et al.'s activation perturbation with torch.autograd.forward_ad: fresh N(0, I) tangents on
                       every site (patch, token, channel1, channel2, heads, classifier outputs), one dual pass; detach()
                       drops tangents, so each loss's per-example JVP d_b (divided by B) sees only its own block's
                       tangents; the site cotangents d_b u_b become parameter updates by each op's own VJP
                       (torch.autograd.grad of the op re-run on its saved input: one extra pass over the parameterised
                       ops, which ForwardAD does not need), then Adam
Run: /usr/bin/python3 benchmarks/peers/torch_mixer.py [--quick] [--threads N]; prints one JSON object.
"""
import json
import sys

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from peer_common import timeit

IMAGE, PATCH, WIDTH, GROUPS, CLASSES, BLOCKS, BATCH = 28, 4, 64, 4, 10, 2, 64
P = (IMAGE // PATCH) ** 2


def make_params():
    def uniform(shape, fan_in):
        return torch.empty(shape).uniform_(-fan_in ** -0.5, fan_in ** -0.5).requires_grad_(True)

    params = {"patch.weight": uniform((WIDTH, 1, PATCH, PATCH), PATCH * PATCH), "patch.bias": torch.zeros(WIDTH, requires_grad=True)}
    for i in range(1, BLOCKS + 1):
        n = f"block{i}"
        params.update({
            f"{n}.token.weight": uniform((P, P), P), f"{n}.token.bias": torch.zeros(P, requires_grad=True),
            f"{n}.channel1.weight": uniform((WIDTH, WIDTH), WIDTH), f"{n}.channel1.bias": torch.zeros(WIDTH, requires_grad=True),
            f"{n}.channel2.weight": uniform((GROUPS, WIDTH // GROUPS, WIDTH // GROUPS), WIDTH // GROUPS),
            f"{n}.channel2.bias": torch.zeros(WIDTH, requires_grad=True),
            f"{n}.head.weight": uniform((GROUPS, CLASSES, WIDTH // GROUPS), WIDTH // GROUPS),
            f"{n}.head.bias": torch.zeros(GROUPS * CLASSES, requires_grad=True),
        })
    params.update({"classifier.weight": uniform((CLASSES, WIDTH), WIDTH), "classifier.bias": torch.zeros(CLASSES, requires_grad=True)})
    return params


def ln(t):
    return F.layer_norm(t, (t.shape[-1],))


def grouped(t, w, b):
    g, o, c = w.shape
    return torch.einsum("...gc,goc->...go", t.reshape(*t.shape[:-1], g, c), w).reshape(*t.shape[:-1], g * o) + b


def losses(params, x, y, site):
    """Every per-example loss; site(name, op, input) computes a site's output s = op(input) and returns what the network
    continues with (s itself, or s with a tangent)."""
    s = site("patch", lambda v: F.conv2d(v, params["patch.weight"], params["patch.bias"], stride=PATCH), x)
    h = torch.relu(ln(s.flatten(2).transpose(1, 2)))
    out = []
    for i in range(1, BLOCKS + 1):
        n = f"block{i}"
        inp = h if i == 1 else h.detach()
        t = site(f"{n}.token", lambda v, n=n: torch.einsum("qp,bpc->bqc", params[f"{n}.token.weight"], v) + params[f"{n}.token.bias"][None, :, None], ln(inp))
        t = torch.relu(ln(t))
        c1 = torch.relu(ln(site(f"{n}.channel1", lambda v, n=n: F.linear(v, params[f"{n}.channel1.weight"], params[f"{n}.channel1.bias"]), t)))
        c2 = site(f"{n}.channel2", lambda v, n=n: grouped(v, params[f"{n}.channel2.weight"], params[f"{n}.channel2.bias"]), c1)
        c2 = ln(c2.reshape(BATCH, P, GROUPS, WIDTH // GROUPS)).reshape(BATCH, P, WIDTH)
        h = torch.relu(c2 + inp)
        logits = site(f"{n}.head", lambda v, n=n: grouped(v, params[f"{n}.head.weight"], params[f"{n}.head.bias"]), h.mean(1)).reshape(BATCH, GROUPS, CLASSES)
        out.append(F.cross_entropy(logits.transpose(1, 2), y[:, None].expand(BATCH, GROUPS), reduction="none").mean(1))
    out.append(F.cross_entropy(site("classifier", lambda v: F.linear(v, params["classifier.weight"], params["classifier.bias"]), ln(h.detach().mean(1))), y, reduction="none"))
    return out


def main():
    quick = "--quick" in sys.argv
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    repeats = 3 if quick else 10
    x = torch.randn(BATCH, 1, IMAGE, IMAGE)
    y = torch.arange(BATCH) % CLASSES
    rows = {}

    params = make_params()
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def backprop_step():
        opt.zero_grad(set_to_none=True)
        sum(l.mean() for l in losses(params, x, y, lambda name, op, v: op(v))).backward()
        opt.step()

    rows["mixer_backprop_adam"] = timeit(backprop_step, repeats)

    params2 = make_params()
    opt2 = torch.optim.Adam(params2.values(), lr=1e-3)

    def ap_step():
        sites = {}
        with torch.no_grad(), fwAD.dual_level():
            def site(name, op, v):
                s = op(v)
                u = torch.randn_like(fwAD.unpack_dual(s).primal)
                sites[name] = (op, fwAD.unpack_dual(v).primal, u)
                return s + fwAD.make_dual(torch.zeros_like(u), u)
            d = [fwAD.unpack_dual(l).tangent / BATCH for l in losses(params2, x, y, site)]
        # Each site's JVP is of its block's loss (the patch belongs to block 1, the classifier to the main loss); the site
        # cotangent d_b u_b goes through the op's own parameter VJP (the op re-run on its saved input, inside autograd).
        index = {name: (len(d) - 1 if name == "classifier" else 0 if name == "patch" else int(name[5]) - 1) for name in sites}
        outputs, cotangents = [], []
        for name, (op, v, u) in sites.items():
            outputs.append(op(v))
            cotangents.append(u * d[index[name]].reshape(-1, *([1] * (u.dim() - 1))))
        grads = torch.autograd.grad(outputs, list(params2.values()), cotangents)
        for p, g in zip(params2.values(), grads):
            p.grad = g
        opt2.step()

    rows["mixer_ap_adam"] = timeit(ap_step, repeats)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
