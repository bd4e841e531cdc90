#!/usr/bin/env python3
"""Golden values for a model with a main loss, a local loss and a stop-gradient (issue 9, sites).

Run: /usr/bin/python3 tests/ForwardAD.Tests/Golden/two_losses.py > tests/ForwardAD.Tests/Golden/two_losses.json

The model (names as in SiteTests.TwoLossModel):
    s1 = x W1ᵀ + b1, h = relu(s1)                 block 1
    local = CE(h Wlᵀ + bl, y)                     block 1's local loss
    g = stop_gradient(h)                          nothing of the main loss reaches block 1 through g ...
    a = tanh(g W2ᵀ + b2), r = a + h               ... but the residual r = a + h bypasses the stop-gradient
    main = CE(r W3ᵀ + b3, y)                      the main loss
Objective L = mean_b(main) + mean_b(local); the gradients of L with respect to every parameter, computed by
PyTorch's autograd in float64 from float32 parameters and inputs.
"""
import json

import torch

torch.manual_seed(9)
B, D_IN, H, C = 4, 4, 6, 3
x = torch.randn(B, D_IN)
y = torch.tensor([0, 2, 1, 2])
shapes = {
    "block1.weight": (H, D_IN), "block1.bias": (H,),
    "local.weight": (C, H), "local.bias": (C,),
    "block2.weight": (H, H), "block2.bias": (H,),
    "head.weight": (C, H), "head.bias": (C,),
}
params32 = {name: torch.randn(*shape) * 0.7 for name, shape in shapes.items()}
params = {name: p.double().requires_grad_() for name, p in params32.items()}
p = params
xd = x.double()
h = torch.relu(xd @ p["block1.weight"].T + p["block1.bias"])
local = torch.nn.functional.cross_entropy(h @ p["local.weight"].T + p["local.bias"], y, reduction="none")
g = h.detach()
r = torch.tanh(g @ p["block2.weight"].T + p["block2.bias"]) + h
main = torch.nn.functional.cross_entropy(r @ p["head.weight"].T + p["head.bias"], y, reduction="none")
objective = main.mean() + local.mean()
objective.backward()
json.dump({
    "torch": torch.__version__,
    "x": x.flatten().tolist(),
    "y": y.tolist(),
    "parameters": {name: v.flatten().tolist() for name, v in params32.items()},
    "main_loss": main.tolist(),
    "local_loss": local.tolist(),
    "gradients": {name: v.grad.flatten().tolist() for name, v in params.items()},
}, __import__("sys").stdout, indent=1)
