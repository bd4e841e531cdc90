"""Shared pieces of the PyTorch peers: the benchmark MLP's parameters and the timing loop."""
import statistics
import time

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

INPUTS, WIDTH, CLASSES, BATCH = 3072, 1024, 10, 512


def make_params(depth, requires_grad=False):
    """nn.Linear's default initialisation for depth weight matrices: 3072 → 1024 … → 10."""
    sizes = [INPUTS] + [WIDTH] * (depth - 1) + [CLASSES]
    params = []
    for i in range(depth):
        w = torch.empty(sizes[i + 1], sizes[i]).uniform_(-sizes[i] ** -0.5, sizes[i] ** -0.5)
        params += [w.requires_grad_(requires_grad), torch.zeros(sizes[i + 1], requires_grad=requires_grad)]
    return params


def timeit(fn, repeats, warmup=2):
    """Median wall time of fn over repeats calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def forward_ad_ap_step(params, opt, x, y):
    """One activation-perturbation step written with torch.autograd.forward_ad (the PyTorch side of our AP row):
    fresh tangents u_i ~ N(0, I) on every pre-activation, one dual pass, per-example JVPs d_b = dl_b/B, estimates
    dW_i = (d * u_i)^T x_i and db_i = sum_b d_b u_i, then the optimizer's step."""
    depth = len(params) // 2
    with torch.no_grad():
        tangents = [torch.randn(x.shape[0], params[2 * i].shape[0], device=x.device) for i in range(depth)]
        inputs = []
        with fwAD.dual_level():
            h = x
            for i in range(depth):
                inputs.append(fwAD.unpack_dual(h).primal)
                s = F.linear(h, params[2 * i], params[2 * i + 1])
                s = s + fwAD.make_dual(torch.zeros_like(s), tangents[i])
                h = torch.relu(s) if i < depth - 1 else s
            d = fwAD.unpack_dual(F.cross_entropy(h, y, reduction="none")).tangent / x.shape[0]
        for i in range(depth):
            scaled = tangents[i] * d[:, None]
            params[2 * i].grad = scaled.t() @ inputs[i]
            params[2 * i + 1].grad = scaled.sum(0)
    opt.step()
