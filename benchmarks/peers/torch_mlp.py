#!/usr/bin/env python3
"""PyTorch peer for the ForwardAD core benchmark (issue 2).

Times, on the same MLP (depth 6 = six weight matrices, width 1024, input 3072, 10 classes,
batch 512, float32) as benchmarks/ForwardAD.Benchmarks:
  forward          logits and per-example cross-entropy, no autograd
  forward_ad_k1    a torch.autograd.forward_ad dual pass with a per-example tangent on every
                   pre-activation (tangents drawn once, outside the timing, as on our side)
  forward_ad_k16   the same for K = 16 tangents through functorch.vmap(jvp)
  backprop         forward + backward (gradients of the mean loss w.r.t. every parameter)
and, for depth 6/12/24, the bytes autograd saves for the backward pass (saved-tensor hooks).

Run with Debian's interpreter: /usr/bin/python3 benchmarks/peers/torch_mlp.py [--quick]
Prints one JSON object: {"rows": {name: median_seconds}, "saved_bytes": {depth: bytes}, ...}.
"""
import json
import sys

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from peer_common import BATCH, CLASSES, INPUTS, make_params, timeit

torch.set_num_threads(2)
torch.manual_seed(0)

def forward(params, x, y, tangents=None):
    h = x
    depth = len(params) // 2
    for i in range(depth):
        s = F.linear(h, params[2 * i], params[2 * i + 1])
        if tangents is not None:
            # Tangent injection on the pre-activation: s + dual(0, u) adds u to whatever tangent s carries.
            s = s + fwAD.make_dual(torch.zeros_like(s), tangents[i])
        h = torch.relu(s) if i < depth - 1 else s
    return F.cross_entropy(h, y, reduction="none")


def main():
    quick = "--quick" in sys.argv
    repeats = 3 if quick else 10
    params = make_params(6)
    x = torch.randn(BATCH, INPUTS)
    y = torch.randint(0, CLASSES, (BATCH,))
    sizes = [p.shape[0] for p in params[0::2]]
    rows = {}

    with torch.no_grad():
        rows["forward"] = timeit(lambda: forward(params, x, y), repeats)

    tangents = [torch.randn(BATCH, n) for n in sizes]

    def dual_pass():
        with fwAD.dual_level():
            loss = forward(params, x, y, tangents)
            return fwAD.unpack_dual(loss).tangent

    with torch.no_grad():
        rows["forward_ad_k1"] = timeit(dual_pass, repeats)

    try:
        from functorch import jvp, vmap

        K = 16
        ktangents = [torch.randn(K, BATCH, n) for n in sizes]

        def loss_of_offsets(*offsets):
            h = x
            for i in range(6):
                s = F.linear(h, params[2 * i], params[2 * i + 1]) + offsets[i]
                h = torch.relu(s) if i < 5 else s
            return F.cross_entropy(h, y, reduction="none")

        zeros = tuple(torch.zeros(BATCH, n) for n in sizes)
        batched = vmap(lambda *t: jvp(loss_of_offsets, zeros, t)[1])
        with torch.no_grad():
            rows["forward_ad_k16"] = timeit(lambda: batched(*ktangents), max(3, repeats // 3), warmup=1)
    except Exception as error:  # functorch missing or unsupported: report, do not fail the run
        rows["forward_ad_k16_error"] = str(error)

    grad_params = [p.clone().requires_grad_(True) for p in params]

    def backprop():
        for p in grad_params:
            p.grad = None
        forward(grad_params, x, y).mean().backward()

    rows["backprop"] = timeit(backprop, repeats)

    saved = {}
    for depth in (6, 12, 24):
        ps = [p.requires_grad_(True) for p in make_params(depth)]
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward(ps, x, y).mean()
        saved[depth] = total[0]
        del loss

    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows, "saved_bytes": saved}))


if __name__ == "__main__":
    main()
