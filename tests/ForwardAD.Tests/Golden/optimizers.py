#!/usr/bin/env python3
"""Golden values for the update rules, from PyTorch's own optimizers.

Run: /usr/bin/python3 tests/ForwardAD.Tests/Golden/optimizers.py > tests/ForwardAD.Tests/Golden/optimizers.json
Ten parameters, a fixed sequence of six gradients (independent of the parameters, so any
optimizer can replay them), and the parameters after every step for each optimizer.
StableAdamW is not in PyTorch 1.13: its reference is written out below from Wortsman et al. 2023,
Algorithm 2 (AdamW with Adafactor-style update clipping per tensor).
"""
import json
import math

import torch

torch.manual_seed(0)
N, STEPS = 10, 6
theta0 = torch.randn(N, dtype=torch.float32)
grads = [torch.randn(N, dtype=torch.float32) * (i + 1) for i in range(STEPS)]


def run(make_optimizer, clip=None, scheduler=None):
    p = torch.nn.Parameter(theta0.clone())
    opt = make_optimizer([p])
    sched = scheduler(opt) if scheduler else None
    out = []
    for g in grads:
        p.grad = g.clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p], clip)
        opt.step()
        if sched:
            sched.step()
        out.append(p.detach().clone().tolist())
    return out


def stable_adamw(lr=1e-2, wd=0.1, b1=0.9, b2=0.99, eps=1e-6):
    theta = theta0.clone().double()
    m = torch.zeros(N, dtype=torch.float64)
    v = torch.zeros(N, dtype=torch.float64)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        # Clipping is per parameter tensor: the test model's weight is theta[0:8], its bias theta[8:10].
        eta = torch.empty(N, dtype=torch.float64)
        for lo, hi in ((0, 8), (8, 10)):
            rms = math.sqrt((g[lo:hi] ** 2 / torch.clamp(vhat[lo:hi], min=eps * eps)).mean().item())
            eta[lo:hi] = lr / max(1.0, rms)
        theta = theta - eta * mhat / (vhat.sqrt() + eps) - lr * wd * theta
        out.append(theta.float().tolist())
    return out


def cosine_warmup(step, peak=0.1, warmup=2, total=6, final=0.0):
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total:
        return final
    progress = (step - warmup) / max(1, total - warmup)
    return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))


golden = {
    "theta0": theta0.tolist(),
    "grads": [g.tolist() for g in grads],
    "sgd": run(lambda ps: torch.optim.SGD(ps, lr=0.1)),
    "momentum": run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "nesterov": run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    "adam": run(lambda ps: torch.optim.Adam(ps, lr=0.01)),
    "adamw": run(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    "clipped_sgd": run(lambda ps: torch.optim.SGD(ps, lr=0.1), clip=1.0),
    "step_sgd": run(lambda ps: torch.optim.SGD(ps, lr=0.1), scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    "exponential_sgd": run(lambda ps: torch.optim.SGD(ps, lr=0.1), scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8)),
    "cosine_sgd": run(lambda ps: torch.optim.SGD(ps, lr=1.0), scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: cosine_warmup(s))),
    "stable_adamw": stable_adamw(),
    "torch": torch.__version__,
}
print(json.dumps(golden))
