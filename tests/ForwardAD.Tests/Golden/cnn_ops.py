#!/usr/bin/env python3
"""Golden values for the convolutional ops (issue 12): conv2d, max/avg/global pooling, batch norm, two tiny CNNs.

Regenerate (deterministic; CPU, float64, fixed seeds; takes a few seconds):
    /usr/bin/python3 tests/ForwardAD.Tests/Golden/cnn_ops.py > tests/ForwardAD.Tests/Golden/cnn_ops.json
The script also checks itself before writing anything (and fails loudly otherwise): every JVP against
float64 central differences, every VJP against its JVP through <w, JVP(v)> = <VJP(w), v>, no near-ties in
any max-pooling window, and that every float32 written below reads back bit-exactly.

What each case checks
---------------------
conv2d           forward, exact JVP (tangents on x, weight, bias) and VJP (cotangents of x, weight, bias):
                 a_3x3_s1_p1_bias      the common 3x3 "same" convolution with bias;
                 b_3x2_s2_p0_nobias    a non-square kernel, stride 2, no padding, no bias (odd H=7);
                 c_groups2             grouped convolution (Cin=4, Cout=6, groups=2: each group maps 2 -> 3);
                 d_depthwise_s2_p1     depthwise (groups = Cin = Cout = 3), stride 2, padding 1, where the last
                                       padded row and column are not reached by any window (floor mode);
                 e_1x1                 a 1x1 kernel (a per-pixel linear map) with bias;
                 f_stride2x1_pad1x0    OPTIONAL: unequal strides (2, 1) and paddings (1, 0) per axis; skip it if
                                       the C# op takes one stride and one padding for both axes.
max_pool2d       forward, JVP on x, VJP on x: k=2 s=2; k=3 s=2 p=1 (overlapping windows, padding that never wins,
                 odd H=7, W=5); k=2 s=2 on an odd size (H=5, W=7: the last row/column is dropped, floor mode).
avg_pool2d       the same on average pooling with count_include_pad=True (padded zeros count in the divisor):
                 k=2 s=2; k=3 s=1 p=1; k=2 s=2 on an odd size.
global_avg_pool  mean over H and W: [N, H, W, C] -> [N, C].
batch_norm       2d train affine / 2d train without affine / 2d eval affine / 2d eval without affine /
                 1d train affine / 1d train without affine / 1d eval affine. Running statistics before and after
                 the forward (train: momentum 0.1, unbiased variance; eval: unchanged). In training mode the
                 JVP is the exact one (forward AD through the batch statistics, which couple the examples).
tiny_cnn         [4, 8, 8, 1] -> conv3x3 p1 (4, bias) -> batchnorm2d (affine, train) -> relu -> maxpool 2
                 -> conv3x3 p1 (8, bias) -> relu -> global avg pool -> linear 8->3 -> softmax cross-entropy,
                 mean over the batch: logits, per-example losses, mean loss, gradient of the mean loss for
                 every parameter, running statistics after the forward, and a JVP (a random tangent on every
                 parameter) of the per-example losses and of the mean loss. NB conv1's bias is followed by
                 training-mode batch norm, which subtracts the batch mean per channel: the output does not
                 depend on it (only the running mean does), so its gradient is zero up to rounding (~1e-17)
                 and must be compared with an absolute tolerance.
flatten_cnn      [3, 6, 6, 2] -> conv3x3 p1 (3, bias) -> relu -> maxpool 2 -> flatten (channels-last order)
                 -> linear 27->4 -> softmax cross-entropy, mean: checks the flatten order
                 (x[h, w, c] at index (h*W + w)*C + c) together with the linear layer after it.

Layouts (the C# library's, every array below is in them; PyTorch's are converted inside this script)
------------------------------------------------------------------------------------------------------
image batch     [N, H, W, C]           (PyTorch NCHW permuted (0, 2, 3, 1))
conv weight     [Cout, kh, kw, Cin/groups]   (PyTorch [Cout, Cin/groups, kh, kw] permuted (0, 2, 3, 1))
conv bias       [Cout]
linear weight   [out, in]              (nn.Linear's layout)
batch norm      over the last axis; gamma, beta, running_mean, running_var [C]
Tangents and cotangents have the layout and shape of their primal.

JSON schema
-----------
An *array* is {"shape": [d0, d1, ...], "data": [flat row-major values in the C# layout]}.
Float32 inputs (x, parameters, tangents, cotangents, running statistics before) are exact float32 values written
in their shortest round-trip form: read them as float32 (JsonElement.GetSingle(), or GetDouble() cast to float;
both give the exact value, checked here). A float64 reference must widen that float32, not use the decimal read
as a double, which differs from the input by up to ~3e-8 relative. Results are float64 (PyTorch in float64 from
those float32 inputs, so they are exact to ~1e-16 for the float32 inputs; compare float32 results with tolerances).

{
  "torch": "<version>",
  "conv2d": [ {
      "name": str,
      "config": {"in_channels": int, "out_channels": int, "kernel": [kh, kw], "stride": [sh, sw],
                 "padding": [ph, pw], "groups": int, "bias": bool},
      "inputs":   {"x": array [N,H,W,Cin], "weight": array [Cout,kh,kw,Cin/groups], "bias": array [Cout]?},
      "output":   array [N,Ho,Wo,Cout],
      "jvp": {"tangents": {same keys and shapes as "inputs"}, "output": array (tangent of "output")},
      "vjp": {"cotangent": array (shape of "output"), "gradients": {same keys and shapes as "inputs"}}
  }, ... ],
  "max_pool2d": [ { "name", "config": {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw]},
                    "inputs": {"x"}, "output", "jvp", "vjp" }, ... ],
  "avg_pool2d": [ same as max_pool2d, config also has "count_include_pad": true ],
  "global_avg_pool": [ { "name", "config": {}, "inputs": {"x": [N,H,W,C]}, "output": [N,C], "jvp", "vjp" } ],
  "batch_norm": [ {
      "name": str,
      "config": {"dims": "2d" | "1d", "training": bool, "affine": bool, "momentum": 0.1, "eps": 1e-05},
      "inputs": {"x": array [N,H,W,C] or [N,F], "gamma": array [C]?, "beta": array [C]?},
      "running_mean_before": array [C], "running_var_before": array [C],
      "running_mean_after": array [C],  "running_var_after": array [C],
      "output", "jvp", "vjp"       (as above; the running statistics take no tangent)
  }, ... ],
  "tiny_cnn": {
      "config": {"layers": [str, ...], "momentum": 0.1, "eps": 1e-05},
      "x": array [4,8,8,1], "labels": [int, ...],
      "parameters": {"conv1.weight": [4,3,3,1], "conv1.bias": [4], "bn1.gamma": [4], "bn1.beta": [4],
                     "conv2.weight": [8,3,3,4], "conv2.bias": [8], "linear.weight": [3,8], "linear.bias": [3]},
      "running_mean_before": {"bn1": [4]}, "running_var_before": {"bn1": [4]},
      "running_mean_after": {"bn1": [4]},  "running_var_after": {"bn1": [4]},
      "logits": array [4,3], "per_example_loss": array [4], "mean_loss": float,
      "gradients": {same keys and shapes as "parameters"}     (of the mean loss),
      "jvp": {"tangents": {same keys as "parameters"}, "per_example_loss": array [4], "mean_loss": float}
  },
  "flatten_cnn": { same as tiny_cnn with "x" [3,6,6,2], labels of 3 examples, parameters "conv1.weight" [3,3,3,2],
                   "conv1.bias" [3], "linear.weight" [4,27], "linear.bias" [4]; no batch norm, so no running
                   statistics and "config" is {"layers": [...]} only }
}
"""
import json
import math
import sys

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

torch.manual_seed(12)
MOMENTUM, EPS = 0.1, 1e-5


# ----------------------------------------------------------------------------------------------------------
# Layout conversions: the C# library is channels-last; PyTorch's ops are channels-first.
def to_nchw(x):
    return x.permute(0, 3, 1, 2)


def to_nhwc(x):
    return x.permute(0, 2, 3, 1)


def conv_weight_to_torch(w):  # [Cout, kh, kw, Cin/g] -> [Cout, Cin/g, kh, kw]
    return w.permute(0, 3, 1, 2)


def rand32(*shape, scale=1.0):
    """Random normal values that are exactly float32 (the C# side reads them as its float32 inputs)."""
    return torch.randn(*shape, dtype=torch.float32) * scale


# ----------------------------------------------------------------------------------------------------------
# Writing: shortest round-trip float32 for inputs, repr (17 significant digits at most) for float64 results.
class F32:
    def __init__(self, t):
        self.t = t.detach().to(torch.float32).contiguous()


class F64:
    def __init__(self, t):
        self.t = t.detach().to(torch.float64).contiguous()


def f32_text(v):
    s = str(np.float32(v))
    assert math.isfinite(v), v
    # Read back both ways a C# reader might: as float directly, and as double then cast to float.
    assert np.float32(s) == np.float32(v) and np.float32(float(s)) == np.float32(v), (s, v)
    return s


def f64_text(v):
    assert math.isfinite(v), v
    return repr(float(v))


def write(obj, out, indent=0):
    pad = " " * indent
    if isinstance(obj, (F32, F64)):
        fmt = f32_text if isinstance(obj, F32) else f64_text
        data = ", ".join(fmt(v) for v in obj.t.flatten().tolist())
        out.write('{"shape": %s, "data": [%s]}' % (json.dumps(list(obj.t.shape)), data))
    elif isinstance(obj, dict):
        out.write("{\n")
        items = list(obj.items())
        for i, (k, v) in enumerate(items):
            out.write(pad + " " + json.dumps(k) + ": ")
            write(v, out, indent + 1)
            out.write(",\n" if i + 1 < len(items) else "\n")
        out.write(pad + "}")
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        out.write("[\n")
        for i, v in enumerate(obj):
            out.write(pad + " ")
            write(v, out, indent + 1)
            out.write(",\n" if i + 1 < len(obj) else "\n")
        out.write(pad + "]")
    elif isinstance(obj, float):
        out.write(f64_text(obj))
    else:
        out.write(json.dumps(obj))


# ----------------------------------------------------------------------------------------------------------
# The harness: forward, exact JVP (forward AD), VJP (reverse AD), each checked before it is written.
def dot(a, b):
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def op_case(name, config, fn, inputs, make_state=None):
    """fn(inputs in the C# layout, float64; state) -> output in the C# layout. make_state() gives a fresh copy of
    the running statistics (or None), so the forward, JVP and VJP each start from the same state."""
    names = list(inputs)
    xs = {k: v.double() for k, v in inputs.items()}
    state = make_state() if make_state else None
    out = fn(xs, state)
    tangents = {k: rand32(*v.shape) for k, v in inputs.items()}

    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(xs[k], tangents[k].double()) for k in names}
        out_tangent = fwAD.unpack_dual(fn(duals, make_state() if make_state else None)).tangent

    leaves = {k: v.clone().requires_grad_() for k, v in xs.items()}
    out_r = fn(leaves, make_state() if make_state else None)
    cotangent = rand32(*out.shape)
    grads = torch.autograd.grad(out_r, [leaves[k] for k in names], cotangent.double())
    grads = dict(zip(names, grads))

    # Checks: JVP against central differences (float64, h = 1e-6: error O(h^2) plus rounding O(eps/h) ~ 1e-10),
    # and the adjoint identity <w, J v> = <J^T w, v>.
    h = 1e-6
    plus = fn({k: xs[k] + h * tangents[k].double() for k in names}, make_state() if make_state else None)
    minus = fn({k: xs[k] - h * tangents[k].double() for k in names}, make_state() if make_state else None)
    fd = (plus - minus) / (2 * h)
    err = (fd - out_tangent).abs().max().item()
    assert err < 1e-6 * (1 + out_tangent.abs().max().item()), (name, "JVP vs central differences", err)
    lhs, rhs = dot([cotangent], [out_tangent]), dot([grads[k] for k in names], [tangents[k] for k in names])
    assert abs(lhs - rhs) < 1e-10 * (1 + abs(lhs)), (name, "adjoint identity", lhs, rhs)

    case = {
        "name": name,
        "config": config,
        "inputs": {k: F32(v) for k, v in inputs.items()},
        "output": F64(out),
        "jvp": {"tangents": {k: F32(v) for k, v in tangents.items()}, "output": F64(out_tangent)},
        "vjp": {"cotangent": F32(cotangent), "gradients": {k: F64(v) for k, v in grads.items()}},
    }
    return case, state


# ----------------------------------------------------------------------------------------------------------
# 1. conv2d
def conv_fn(stride, padding, groups):
    def fn(v, _):
        y = F.conv2d(to_nchw(v["x"]), conv_weight_to_torch(v["weight"]), v.get("bias"),
                     stride=stride, padding=padding, groups=groups)
        return to_nhwc(y)
    return fn


def conv_case(name, n, h, w, cin, cout, kernel, stride, padding, groups, bias):
    inputs = {"x": rand32(n, h, w, cin),
              "weight": rand32(cout, kernel[0], kernel[1], cin // groups, scale=1 / math.sqrt(kernel[0] * kernel[1] * cin // groups))}
    if bias:
        inputs["bias"] = rand32(cout, scale=0.5)
    config = {"in_channels": cin, "out_channels": cout, "kernel": list(kernel), "stride": list(stride),
              "padding": list(padding), "groups": groups, "bias": bias}
    return op_case(name, config, conv_fn(stride, padding, groups), inputs)[0]


conv2d = [
    conv_case("a_3x3_s1_p1_bias", 2, 5, 5, 3, 4, (3, 3), (1, 1), (1, 1), 1, True),
    conv_case("b_3x2_s2_p0_nobias", 2, 7, 6, 2, 3, (3, 2), (2, 2), (0, 0), 1, False),
    conv_case("c_groups2", 2, 5, 4, 4, 6, (3, 3), (1, 1), (1, 1), 2, True),
    conv_case("d_depthwise_s2_p1", 2, 6, 6, 3, 3, (3, 3), (2, 2), (1, 1), 3, True),
    conv_case("e_1x1", 2, 4, 3, 3, 5, (1, 1), (1, 1), (0, 0), 1, True),
    conv_case("f_stride2x1_pad1x0", 2, 6, 5, 2, 3, (3, 3), (2, 1), (1, 0), 1, True),
]


# ----------------------------------------------------------------------------------------------------------
# 2-4. pooling
def check_no_ties(x, kernel, stride, padding, after_relu=False):
    """Max pooling's derivative is undefined at ties; make sure every window's winner is clear (by 1e-3).
    After a relu, windows of zeros tie harmlessly (relu' = 0 there, so value, JVP and VJP do not depend on the
    choice); only windows with a positive maximum are checked. x: [N, H, W, C]."""
    xp = F.pad(to_nchw(fwAD.unpack_dual(x).primal.detach().double()),
               (padding[1], padding[1], padding[0], padding[0]), value=-math.inf)
    windows = xp.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).flatten(-2)
    top2 = windows.topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]
    if after_relu:
        gap = gap[top2[..., 0] > 0]
    assert gap.min().item() > 1e-3, "near-tie in a max-pooling window: change the seed"


def max_pool_case(name, n, h, w, c, kernel, stride, padding):
    x = rand32(n, h, w, c)
    check_no_ties(x, kernel, stride, padding)
    fn = lambda v, _: to_nhwc(F.max_pool2d(to_nchw(v["x"]), kernel, stride, padding))
    config = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding)}
    return op_case(name, config, fn, {"x": x})[0]


def avg_pool_case(name, n, h, w, c, kernel, stride, padding):
    fn = lambda v, _: to_nhwc(F.avg_pool2d(to_nchw(v["x"]), kernel, stride, padding, count_include_pad=True))
    config = {"kernel": list(kernel), "stride": list(stride), "padding": list(padding), "count_include_pad": True}
    return op_case(name, config, fn, {"x": rand32(n, h, w, c)})[0]


max_pool2d = [
    max_pool_case("k2_s2", 2, 4, 6, 3, (2, 2), (2, 2), (0, 0)),
    max_pool_case("k3_s2_p1_odd", 2, 7, 5, 2, (3, 3), (2, 2), (1, 1)),
    max_pool_case("k2_s2_odd_floor", 2, 5, 7, 2, (2, 2), (2, 2), (0, 0)),
]
avg_pool2d = [
    avg_pool_case("k2_s2", 2, 4, 6, 3, (2, 2), (2, 2), (0, 0)),
    avg_pool_case("k3_s1_p1", 2, 5, 4, 2, (3, 3), (1, 1), (1, 1)),
    avg_pool_case("k2_s2_odd_floor", 2, 5, 7, 2, (2, 2), (2, 2), (0, 0)),
]
global_avg_pool = [
    op_case("n3_h4_w5_c3", {}, lambda v, _: v["x"].mean(dim=(1, 2)), {"x": rand32(3, 4, 5, 3)})[0],
]


# ----------------------------------------------------------------------------------------------------------
# 5. batch norm over the last axis
def bn_apply(x, gamma, beta, rm, rv, training):
    """x: [N, H, W, C] or [N, F] in the C# layout; statistics per last-axis channel (PyTorch's F.batch_norm)."""
    if x.dim() == 4:
        return to_nhwc(F.batch_norm(to_nchw(x), rm, rv, gamma, beta, training, MOMENTUM, EPS))
    return F.batch_norm(x, rm, rv, gamma, beta, training, MOMENTUM, EPS)


def bn_case(name, shape, training, affine):
    c = shape[-1]
    x = rand32(*shape) * 1.5 + 0.3
    inputs = {"x": x}
    if affine:
        inputs["gamma"] = 1 + rand32(c, scale=0.3)
        inputs["beta"] = rand32(c, scale=0.5)
    rm0 = rand32(c, scale=0.5)
    rv0 = (torch.rand(c, dtype=torch.float32) * 1.5 + 0.5)
    make_state = lambda: (rm0.double().clone(), rv0.double().clone())
    fn = lambda v, s: bn_apply(v["x"], v.get("gamma"), v.get("beta"), s[0], s[1], training)
    config = {"dims": "2d" if len(shape) == 4 else "1d", "training": training, "affine": affine,
              "momentum": MOMENTUM, "eps": EPS}
    case, (rm1, rv1) = op_case(name, config, fn, inputs, make_state)
    # The running-statistics update, written out (PyTorch semantics): unbiased variance, momentum 0.1.
    xd = x.double().reshape(-1, c)
    if training:
        expect_m = (1 - MOMENTUM) * rm0.double() + MOMENTUM * xd.mean(0)
        expect_v = (1 - MOMENTUM) * rv0.double() + MOMENTUM * xd.var(0, unbiased=True)
    else:
        expect_m, expect_v = rm0.double(), rv0.double()
    assert torch.allclose(rm1, expect_m, rtol=1e-12, atol=1e-12) and torch.allclose(rv1, expect_v, rtol=1e-12, atol=1e-12)
    ordered = {k: case[k] for k in ("name", "config", "inputs")}
    ordered.update({"running_mean_before": F32(rm0), "running_var_before": F32(rv0),
                    "running_mean_after": F64(rm1), "running_var_after": F64(rv1)})
    ordered.update({k: case[k] for k in ("output", "jvp", "vjp")})
    return ordered


batch_norm = [
    bn_case("2d_train_affine", (3, 3, 4, 4), True, True),
    bn_case("2d_train_noaffine", (3, 3, 4, 4), True, False),
    bn_case("2d_eval_affine", (2, 3, 3, 4), False, True),
    bn_case("2d_eval_noaffine", (2, 3, 3, 4), False, False),
    bn_case("1d_train_affine", (6, 5), True, True),
    bn_case("1d_train_noaffine", (6, 5), True, False),
    bn_case("1d_eval_affine", (6, 5), False, True),
]


# ----------------------------------------------------------------------------------------------------------
# 6. two tiny CNNs, with softmax cross-entropy and integer labels, mean over the batch
def model_case(layers, x, labels, params, forward, with_bn):
    """forward(x, params, state) -> logits; state = (running_mean, running_var) of bn1, or None."""
    xd = x.double()
    make_state = (lambda: (torch.zeros(params["bn1.gamma"].shape[0], dtype=torch.float64),
                           torch.ones(params["bn1.gamma"].shape[0], dtype=torch.float64))) if with_bn else (lambda: None)
    leaves = {k: v.double().requires_grad_() for k, v in params.items()}
    state = make_state()
    logits = forward(xd, leaves, state)
    per_example = F.cross_entropy(logits, labels, reduction="none")
    mean = per_example.mean()
    grads = dict(zip(leaves, torch.autograd.grad(mean, list(leaves.values()))))

    tangents = {k: rand32(*v.shape) for k, v in params.items()}
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(v.double(), tangents[k].double()) for k, v in params.items()}
        pe = F.cross_entropy(forward(xd, duals, make_state()), labels, reduction="none")
        pe_t = fwAD.unpack_dual(pe).tangent
        mean_t = fwAD.unpack_dual(pe.mean()).tangent

    # Checks: the mean loss's JVP is <gradient, tangent>, and the per-example JVPs against central differences.
    assert abs(mean_t.item() - dot(grads.values(), tangents.values()).item()) < 1e-10
    h = 1e-6
    fd = (F.cross_entropy(forward(xd, {k: v.double() + h * tangents[k].double() for k, v in params.items()}, make_state()), labels, reduction="none")
          - F.cross_entropy(forward(xd, {k: v.double() - h * tangents[k].double() for k, v in params.items()}, make_state()), labels, reduction="none")) / (2 * h)
    assert (fd - pe_t).abs().max().item() < 1e-6, "model JVP vs central differences"

    out = {"config": {"layers": layers, "momentum": MOMENTUM, "eps": EPS} if with_bn else {"layers": layers},
           "x": F32(x), "labels": labels.tolist(),
           "parameters": {k: F32(v) for k, v in params.items()}}
    if with_bn:
        fresh = make_state()
        out.update({"running_mean_before": {"bn1": F32(fresh[0])}, "running_var_before": {"bn1": F32(fresh[1])},
                    "running_mean_after": {"bn1": F64(state[0])}, "running_var_after": {"bn1": F64(state[1])}})
    out.update({"logits": F64(logits), "per_example_loss": F64(per_example), "mean_loss": mean.item(),
                "gradients": {k: F64(v) for k, v in grads.items()},
                "jvp": {"tangents": {k: F32(v) for k, v in tangents.items()},
                        "per_example_loss": F64(pe_t), "mean_loss": mean_t.item()}})
    return out


def tiny_forward(x, p, state):
    h = F.conv2d(to_nchw(x), conv_weight_to_torch(p["conv1.weight"]), p["conv1.bias"], padding=1)
    h = F.batch_norm(h, state[0], state[1], p["bn1.gamma"], p["bn1.beta"], True, MOMENTUM, EPS)
    h = torch.relu(h)
    check_no_ties(to_nhwc(h), (2, 2), (2, 2), (0, 0), after_relu=True)
    h = F.max_pool2d(h, 2)
    h = torch.relu(F.conv2d(h, conv_weight_to_torch(p["conv2.weight"]), p["conv2.bias"], padding=1))
    h = h.mean(dim=(2, 3))
    return h @ p["linear.weight"].T + p["linear.bias"]


tiny_params = {
    "conv1.weight": rand32(4, 3, 3, 1, scale=1 / 3), "conv1.bias": rand32(4, scale=0.5),
    "bn1.gamma": 1 + rand32(4, scale=0.3), "bn1.beta": rand32(4, scale=0.5),
    "conv2.weight": rand32(8, 3, 3, 4, scale=1 / 6), "conv2.bias": rand32(8, scale=0.5),
    "linear.weight": rand32(3, 8, scale=1 / math.sqrt(8)), "linear.bias": rand32(3, scale=0.5),
}
tiny_x = rand32(4, 8, 8, 1)
tiny_cnn = model_case(
    ["conv2d 1->4 k3 s1 p1 bias", "batchnorm2d 4 affine train", "relu", "maxpool2d k2 s2",
     "conv2d 4->8 k3 s1 p1 bias", "relu", "global_avg_pool", "linear 8->3", "softmax_cross_entropy mean"],
    tiny_x, torch.tensor([0, 2, 1, 2]), tiny_params, tiny_forward, True)


def flatten_forward(x, p, _):
    h = torch.relu(F.conv2d(to_nchw(x), conv_weight_to_torch(p["conv1.weight"]), p["conv1.bias"], padding=1))
    check_no_ties(to_nhwc(h), (2, 2), (2, 2), (0, 0), after_relu=True)
    h = to_nhwc(F.max_pool2d(h, 2))           # channels-last before flattening: index (h*W + w)*C + c
    return h.reshape(h.shape[0], -1) @ p["linear.weight"].T + p["linear.bias"]


flatten_params = {
    "conv1.weight": rand32(3, 3, 3, 2, scale=1 / math.sqrt(18)), "conv1.bias": rand32(3, scale=0.5),
    "linear.weight": rand32(4, 27, scale=1 / math.sqrt(27)), "linear.bias": rand32(4, scale=0.5),
}
flatten_x = rand32(3, 6, 6, 2)
flatten_cnn = model_case(
    ["conv2d 2->3 k3 s1 p1 bias", "relu", "maxpool2d k2 s2", "flatten", "linear 27->4", "softmax_cross_entropy mean"],
    flatten_x, torch.tensor([3, 0, 1]), flatten_params, flatten_forward, False)

write({
    "torch": torch.__version__,
    "conv2d": conv2d,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "global_avg_pool": global_avg_pool,
    "batch_norm": batch_norm,
    "tiny_cnn": tiny_cnn,
    "flatten_cnn": flatten_cnn,
}, sys.stdout)
sys.stdout.write("\n")
