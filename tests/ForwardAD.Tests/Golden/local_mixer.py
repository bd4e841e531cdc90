"""Golden values for LocalMixerTests.Local_loss_gradients_match_pytorch (issue 14).

The tiny LocalMixer of LocalMixerTests.TinySpec (4x4x2 images, patch 2 -> 4 tokens, width 4, 2 groups, expansion 2,
2 blocks, 3 classes) written with plain torch ops in ForwardAD's layouts (channels last; conv weights [Cout, kh, kw, Cin/G];
dense weights [out, in]; token mixing [P', P]). Nothing random: parameters, images and labels come from fixed formulas and
are dumped. Stop-gradients are detach(). The objective is the sum over the losses (block1.loss, block2.loss, loss) of their
batch means; its gradient for every parameter is dumped with every per-example loss.

Run: /usr/bin/python3 local_mixer.py > local_mixer.json
"""
import json
import math
import torch

torch.set_default_dtype(torch.float64)
B, H, W, CIN, PATCH, WIDTH, GROUPS, CLASSES, EXPANSION, BLOCKS = 3, 4, 4, 2, 2, 4, 2, 3, 2, 2
P = (H // PATCH) * (W // PATCH)

shapes = {"patch.weight": (WIDTH, PATCH, PATCH, CIN), "patch.bias": (WIDTH,)}
for i in range(1, BLOCKS + 1):
    n = f"block{i}"
    shapes.update({
        f"{n}.token.weight": (P, P), f"{n}.token.bias": (P,),
        f"{n}.channel1.weight": (EXPANSION * WIDTH, WIDTH), f"{n}.channel1.bias": (EXPANSION * WIDTH,),
        f"{n}.channel2.weight": (WIDTH, 1, 1, EXPANSION * WIDTH // GROUPS), f"{n}.channel2.bias": (WIDTH,),
        f"{n}.head.weight": (GROUPS * CLASSES, 1, 1, WIDTH // GROUPS), f"{n}.head.bias": (GROUPS * CLASSES,),
    })
shapes.update({"classifier.weight": (CLASSES, WIDTH), "classifier.bias": (CLASSES,)})

params = {}
for j, (name, shape) in enumerate(shapes.items()):
    count = math.prod(shape)
    values = [0.6 * math.sin(0.37 * i + 1.1 * j + 0.3) for i in range(count)]
    params[name] = torch.tensor(values).reshape(shape).requires_grad_(True)

x = torch.tensor([math.cos(0.21 * i) + 0.1 * math.sin(1.7 * i) for i in range(B * H * W * CIN)]).reshape(B, H, W, CIN)
y = torch.tensor([0, 2, 1])


def layer_norm(t):
    return torch.nn.functional.layer_norm(t, (t.shape[-1],), eps=1e-5)


def grouped_linear(t, weight, bias, groups):
    # t [..., C], weight [out, 1, 1, C/G]: group g maps t[..., g*C/G:(g+1)*C/G] to outputs g*out/G:(g+1)*out/G.
    c, out = t.shape[-1], weight.shape[0]
    w = weight.reshape(groups, out // groups, c // groups)
    tg = t.reshape(*t.shape[:-1], groups, c // groups)
    return torch.einsum("...gc,goc->...go", tg, w).reshape(*t.shape[:-1], out) + bias


def grouped_cross_entropy(logits, labels):
    # logits [B, G, classes]: the mean over groups of each group's cross-entropy
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, labels[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)
    return (lse - picked).mean(dim=1)


# Patch embedding: kernel = stride = PATCH, channels last -> [B, P, WIDTH]
conv = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), params["patch.weight"].permute(0, 3, 1, 2), params["patch.bias"], stride=PATCH)
h = torch.relu(layer_norm(conv.permute(0, 2, 3, 1).reshape(B, P, WIDTH)))
losses = {}
for i in range(1, BLOCKS + 1):
    n = f"block{i}"
    inp = h if i == 1 else h.detach()
    a = layer_norm(inp)
    t = torch.einsum("qp,bpc->bqc", params[f"{n}.token.weight"], a) + params[f"{n}.token.bias"][None, :, None]
    t = torch.relu(layer_norm(t))
    c1 = torch.relu(layer_norm(t @ params[f"{n}.channel1.weight"].T + params[f"{n}.channel1.bias"]))
    c2 = grouped_linear(c1, params[f"{n}.channel2.weight"], params[f"{n}.channel2.bias"], GROUPS)
    c2 = layer_norm(c2.reshape(B, P, GROUPS, WIDTH // GROUPS)).reshape(B, P, WIDTH)
    h = torch.relu(c2 + inp)
    pooled = h.mean(dim=1)
    logits = grouped_linear(pooled, params[f"{n}.head.weight"], params[f"{n}.head.bias"], GROUPS).reshape(B, GROUPS, CLASSES)
    losses[f"{n}.loss"] = grouped_cross_entropy(logits, y)
features = layer_norm(h.detach().mean(dim=1))
prediction = features @ params["classifier.weight"].T + params["classifier.bias"]
losses["loss"] = torch.nn.functional.cross_entropy(prediction, y, reduction="none")

objective = sum(l.mean() for l in losses.values())
objective.backward()


def flat(t):
    return [float(v) for v in t.detach().reshape(-1)]


json.dump({
    "batch": B,
    "x": flat(x),
    "y": [float(v) for v in y],
    "parameters": {k: flat(v) for k, v in params.items()},
    "losses": {k: flat(v) for k, v in losses.items()},
    "gradients": {k: flat(v.grad) for k, v in params.items()},
}, __import__("sys").stdout, indent=1)
