#!/usr/bin/env python3
"""PyTorch peer for the GPU benchmark (issue 5), run on the GPU machine with its own PyTorch.

Same MLP as torch_mlp.py (depth 6, width 1024, input 3072, 10 classes, ReLU, float32, TF32 off), at the
batch given (default 512; the benchmark also asks for 8192). Rows, timed with CUDA events after warm-up:
  forward         no_grad forward and per-example cross-entropy
  jvp_k1          torch.func.jvp of the per-example loss w.r.t. offsets on every pre-activation (K = 1)
  jvp_k16         torch.func.vmap over 16 such tangents
  backprop        forward + backward
  backprop_adamw  a training step: forward, backward, torch.optim.AdamW(fused=True) (PyTorch's fastest AdamW)
  ap_adamw        an activation-perturbation step (peer_common.forward_ad_ap_step: forward AD, estimates, the same AdamW)
  gemm_gflops     torch.mm at batch x 1024 x 1024 (what cuBLAS itself reaches on the step's dominant shape)
Prints one JSON object.
"""
import json
import sys

import torch
import torch.nn.functional as F

from peer_common import forward_ad_ap_step

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
device = torch.device("cuda")
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 512
INPUTS, WIDTH, CLASSES, DEPTH = 3072, 1024, 10, 6
sizes = [INPUTS] + [WIDTH] * (DEPTH - 1) + [CLASSES]
params = []
for i in range(DEPTH):
    params += [torch.empty(sizes[i + 1], sizes[i], device=device).uniform_(-sizes[i] ** -0.5, sizes[i] ** -0.5),
               torch.zeros(sizes[i + 1], device=device)]
x = torch.randn(batch, INPUTS, device=device)
y = torch.randint(0, CLASSES, (batch,), device=device)


def loss_with_offsets(*offsets):
    h = x
    for i in range(DEPTH):
        s = F.linear(h, params[2 * i], params[2 * i + 1]) + offsets[i]
        h = torch.relu(s) if i < DEPTH - 1 else s
    return F.cross_entropy(h, y, reduction="none")


def timed(fn, repeats=20, warmup=5):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats / 1000.0


zeros = tuple(torch.zeros(batch, n, device=device) for n in sizes[1:])
tangents = tuple(torch.randn(batch, n, device=device) for n in sizes[1:])
tangents16 = tuple(torch.randn(16, batch, n, device=device) for n in sizes[1:])
rows = {}
with torch.no_grad():
    rows["forward"] = timed(lambda: loss_with_offsets(*zeros))
    rows["jvp_k1"] = timed(lambda: torch.func.jvp(loss_with_offsets, zeros, tangents))
    batched = torch.func.vmap(lambda *t: torch.func.jvp(loss_with_offsets, zeros, t)[1])
    rows["jvp_k16"] = timed(lambda: batched(*tangents16))
grads = [p.clone().requires_grad_(True) for p in params]


def backprop():
    h = x
    for i in range(DEPTH):
        s = F.linear(h, grads[2 * i], grads[2 * i + 1])
        h = torch.relu(s) if i < DEPTH - 1 else s
    torch.autograd.grad(F.cross_entropy(h, y), grads)


rows["backprop"] = timed(backprop)
adamw = torch.optim.AdamW(grads, lr=1e-3, weight_decay=0.01, fused=True)


def backprop_adamw():
    adamw.zero_grad(set_to_none=True)
    h = x
    for i in range(DEPTH):
        s = F.linear(h, grads[2 * i], grads[2 * i + 1])
        h = torch.relu(s) if i < DEPTH - 1 else s
    F.cross_entropy(h, y).backward()
    adamw.step()


rows["backprop_adamw"] = timed(backprop_adamw)
ap_params = [p.clone() for p in params]
ap_adamw = torch.optim.AdamW(ap_params, lr=1e-3, weight_decay=0.01, fused=True)
rows["ap_adamw"] = timed(lambda: forward_ad_ap_step(ap_params, ap_adamw, x, y))
a, b = torch.randn(batch, 1024, device=device), torch.randn(1024, 1024, device=device)
rows["gemm_seconds"] = timed(lambda: a @ b.t(), repeats=50)
rows["gemm_gflops"] = 2 * batch * 1024 * 1024 / rows["gemm_seconds"] / 1e9
print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "batch": batch, "rows": rows}))
