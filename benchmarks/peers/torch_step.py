#!/usr/bin/env python3
"""PyTorch peer for the training-step benchmark (issue 3).

Same MLP as torch_mlp.py (depth 6, width 1024, input 3072, 10 classes, batch 512, float32, ReLU).
Rows, each a whole training step with AdamW (lr 1e-3, weight decay 0.01):
  backprop_adamw   forward, backward, AdamW
  forward_ad_ap    activation perturbation written with torch.autograd.forward_ad: fresh tangents
                   u_i ~ N(0, I) on every pre-activation, one dual pass, per-example JVPs
                   d_b = dl_b/B, estimates dW_i = (d * u_i)^T x_i and db_i = sum_b d_b u_i, AdamW
Run: /usr/bin/python3 benchmarks/peers/torch_step.py [--quick]; prints one JSON object.
"""
import json
import sys

import torch
import torch.nn.functional as F

from peer_common import BATCH, CLASSES, INPUTS, forward_ad_ap_step, make_params, timeit

torch.set_num_threads(2)
torch.manual_seed(0)
DEPTH = 6


def main():
    repeats = 3 if "--quick" in sys.argv else 10
    x = torch.randn(BATCH, INPUTS)
    y = torch.randint(0, CLASSES, (BATCH,))
    rows = {}

    params = make_params(DEPTH, requires_grad=True)
    sizes = [INPUTS] + [p.shape[0] for p in params[0::2]]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

    def backprop_step():
        opt.zero_grad(set_to_none=True)
        h = x
        for i in range(DEPTH):
            s = F.linear(h, params[2 * i], params[2 * i + 1])
            h = torch.relu(s) if i < DEPTH - 1 else s
        F.cross_entropy(h, y).backward()
        opt.step()

    rows["backprop_adamw"] = timeit(backprop_step, repeats)

    params2 = make_params(DEPTH, requires_grad=True)
    opt2 = torch.optim.AdamW(params2, lr=1e-3, weight_decay=0.01)

    rows["forward_ad_ap"] = timeit(lambda: forward_ad_ap_step(params2, opt2, x, y), repeats)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
