#!/usr/bin/env python3
"""PyTorch's default initialisation for the layer shapes that tests/ForwardAD.Tests/InitTests.cs builds (issue 15).

Regenerate (CPU, a few seconds):
    /usr/bin/python3 tests/ForwardAD.Tests/Golden/init.py > tests/ForwardAD.Tests/Golden/init.json

Not the same random numbers (PyTorch's generator is not Philox): for each layer, torch's own fan_in, the weight
bound that kaiming_uniform_(a=sqrt(5)) uses (computed as torch.nn.init does: gain = calculate_gain('leaky_relu',
sqrt(5)), std = gain / sqrt(fan_in), bound = sqrt(3) * std), the bias bound of reset_parameters (1 / sqrt(fan_in)),
and the root mean square (about 0) and largest magnitude of weights and biases drawn by torch itself, with the
sample counts, so that the C# test can compare its own draws with tolerances from both sample sizes.

Layers (torch layout; ForwardAD's convolution weight is [Cout, kh, kw, Cin/groups], the same elements):
    linear    nn.Linear(in, out)                        weight [out, in]
    conv      nn.Conv2d(cin, cout, k, groups=g)         weight [cout, cin/g, k, k]
    embedding nn.Embedding(v, d)                        weight [v, d], N(0, 1)
    layernorm nn.LayerNorm(d)                           weight ones, bias zeros
"""
import json
import math

import torch
from torch import nn

torch.manual_seed(15)

LINEAR = [(37, 2000), (128, 300), (1, 500)]
CONV = [(6, 64, 3, 1), (6, 96, 3, 3), (12, 48, 5, 12), (3, 40, 1, 1)]


def stats(t):
    t = t.detach().double().flatten()
    return {"count": t.numel(), "rms": math.sqrt(float((t * t).mean())), "max_abs": float(t.abs().max())}


def layer(module, weight_layout):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return {
        "torch_weight_shape": list(module.weight.shape),
        "weight_layout": weight_layout,
        "fan_in": fan_in,
        "gain": gain,
        "weight_bound": math.sqrt(3.0) * gain / math.sqrt(fan_in),
        "bias_bound": 1 / math.sqrt(fan_in),
        "weight": stats(module.weight),
        "bias": stats(module.bias),
    }


out = {"linear": [], "conv": []}
for fan_in, width in LINEAR:
    entry = layer(nn.Linear(fan_in, width), "[out, in]")
    entry.update({"in": fan_in, "out": width})
    out["linear"].append(entry)
for cin, cout, k, groups in CONV:
    entry = layer(nn.Conv2d(cin, cout, k, groups=groups), "[cout, cin/groups, k, k]")
    entry.update({"in_channels": cin, "out_channels": cout, "kernel": k, "groups": groups})
    out["conv"].append(entry)
embedding = nn.Embedding(256, 64)
out["embedding"] = {"vocabulary": 256, "width": 64, **stats(embedding.weight)}
norm = nn.LayerNorm(64)
out["layernorm"] = {"width": 64, "weight": sorted(set(norm.weight.tolist())), "bias": sorted(set(norm.bias.tolist()))}
out["torch_version"] = torch.__version__
print(json.dumps(out, indent=1))
