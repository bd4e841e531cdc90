#!/usr/bin/env python3
"""PyTorch side of the three-way comparison (issue 11): ForwardAD, TorchSharp and PyTorch, alternately.

The same MLP as every side (depth 6, width 1024, input 3072, 10 classes, batch 512, float32, ReLU, nn.Linear's
initialisation) and the same statistic: single calls after two warm-up calls, median and minimum, plus the
process CPU time per wall time over the timed calls.
Rows:  forward            logits and per-example cross-entropy, no autograd
       jvp_k1             torch.autograd.forward_ad, a per-example tangent on every pre-activation
       jvp_k16            the same for K = 16 tangents through functorch.vmap(jvp)
       backprop           forward + backward of the mean loss
       backprop_adamw     a whole training step with AdamW (lr 1e-3, weight decay 0.01)
       forward_ad_ap      activation perturbation with forward_ad + AdamW (torch_step.py's row)
and the same for the benchmark CNN of torch_cnn.py (32x32x3, batch 128; issue 12):
       cnn_forward, cnn_jvp_k1 (forward_ad, a per-example tangent on every site), cnn_backprop, cnn_backprop_adamw,
       cnn_ap_adamw (forward_ad activation perturbation; conv weight gradients by aten.convolution_backward)
and for the benchmark transformer of torch_transformer.py (l2-h4-d128-t64, vocabulary 256, batch 32 sequences):
       tf_forward, tf_jvp_k1 (forward_ad, a per-example tangent on every site), tf_backprop, tf_backprop_adamw,
       tf_ap_adamw (forward_ad activation perturbation; parameter gradients by each op's VJP)
--check: the CNN's and the transformer's correctness guards (torch_cnn.check, torch_transformer.check) instead of timing;
exit 1 when one fails.
Run: /usr/bin/python3 benchmarks/peers/torch_peer.py --threads N [--repeats R] [--rows a,b]; prints one JSON object.
Set OPENBLAS_NUM_THREADS=N as well: Debian's OpenBLAS sizes its own pool (torch.set_num_threads does not reach it).
"""
import argparse
import json
import statistics
import time

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from functorch import jvp, vmap

import torch_cnn
import torch_transformer
from peer_common import BATCH, CLASSES, INPUTS, forward_ad_ap_step, make_params
from torch_mlp import forward  # the same forward (and tangent injection) as the issue-2 peer; its depth is len(params) // 2

DEPTH = 6


def plain_losses(params, x, y, offsets):
    h = x
    for i in range(DEPTH):
        s = F.linear(h, params[2 * i], params[2 * i + 1]) + offsets[i]
        h = torch.relu(s) if i < DEPTH - 1 else s
    return F.cross_entropy(h, y, reduction="none")


def measure(fn, repeats):
    for _ in range(2):
        fn()
    samples = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"median": statistics.median(samples), "min": min(samples), "cpu_per_wall": cpu / wall}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rows", default=None)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--memory", default=None, help="a row: print the peak resident memory one call adds instead")
    parser.add_argument("--cnn-layout", choices=["auto", "nchw", "nhwc"], default="auto",
                        help="memory format of the CNN rows: NCHW (PyTorch's default), channels_last, or auto: each row in the "
                             "layout measured faster for it (torch_cnn.DEFAULT_LAYOUTS)")
    parser.add_argument("--check", action="store_true", help="run the CNN's and the transformer's correctness guards instead of timing")
    args = parser.parse_args()
    if args.check:
        torch.set_num_threads(args.threads)
        failed = False
        for model, guard in [("CNN", torch_cnn.check), ("transformer", torch_transformer.check)]:
            worst = guard()
            for name, value in worst.items():
                print(f"{model} {name}: {value:.3e}")
            # float64 throughout: the VJP path (and the transformer against its float64 golden values) agrees with autograd
            # to rounding (~1e-15 relative), the gradient-norm ratio is 1 to the same; central differences with eps = 1e-6
            # carry O(eps^2) truncation plus ~1e-10 cancellation error.
            ok = all(abs(v - 1 if "norm" in k else v) < (1e-9 if "central" not in k else 1e-6) for k, v in worst.items())
            print(f"{model} check " + ("passed" if ok else "FAILED"))
            failed |= not ok
        raise SystemExit(1 if failed else 0)
    global DEPTH
    DEPTH = args.depth
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = set(args.rows.split(",")) if args.rows else None
    x = torch.randn(BATCH, INPUTS)
    y = torch.arange(BATCH) % CLASSES
    params = make_params(DEPTH)
    sizes = [p.shape[0] for p in params[0::2]]
    tangents = [torch.randn(BATCH, n) for n in sizes]
    rows = {}

    def want(name):
        return only is None or name in only

    if args.memory is not None:
        # Peak resident memory a call adds beyond the parameters and inputs: VmHWM after two calls minus VmRSS before
        # (the peak reset just before).
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
        grad_params = make_params(DEPTH, requires_grad=True)
        def backprop():
            for p in grad_params:
                p.grad = None
            forward(grad_params, x, y).mean().backward()
        def dual_pass():
            with torch.no_grad(), fwAD.dual_level():
                return fwAD.unpack_dual(forward(params, x, y, tangents)).tangent
        call = {"backprop": backprop, "jvp_k1": dual_pass}[args.memory]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM: the peak of the calls below, not of the set-up's temporaries
        baseline = status("VmRSS:")
        call()
        call()
        print(json.dumps({"memory": {"row": args.memory, "depth": DEPTH, "peak_bytes": status("VmHWM:") - baseline}}))
        return

    if want("forward"):
        with torch.no_grad():
            rows["forward"] = measure(lambda: forward(params, x, y), args.repeats)
    if want("jvp_k1"):
        def dual_pass():
            with fwAD.dual_level():
                return fwAD.unpack_dual(forward(params, x, y, tangents)).tangent
        with torch.no_grad():
            rows["jvp_k1"] = measure(dual_pass, args.repeats)
    if want("jvp_k16"):
        many = [torch.randn(16, BATCH, n) for n in sizes]
        zeros = [torch.zeros(BATCH, n) for n in sizes]
        one = lambda *u: jvp(lambda *o: plain_losses(params, x, y, o), tuple(zeros), tuple(u))[1]
        with torch.no_grad():
            rows["jvp_k16"] = measure(lambda: vmap(one)(*many), args.repeats)
    if want("backprop"):
        grad_params = make_params(DEPTH, requires_grad=True)
        def backprop():
            for p in grad_params:
                p.grad = None
            forward(grad_params, x, y).mean().backward()
        rows["backprop"] = measure(backprop, args.repeats)
    if want("backprop_adamw"):
        step_params = make_params(DEPTH, requires_grad=True)
        opt = torch.optim.AdamW(step_params, lr=1e-3, weight_decay=0.01)
        def step():
            opt.zero_grad(set_to_none=True)
            forward(step_params, x, y).mean().backward()
            opt.step()
        rows["backprop_adamw"] = measure(step, args.repeats)
    if want("forward_ad_ap"):
        ap_params = make_params(DEPTH, requires_grad=True)
        opt2 = torch.optim.AdamW(ap_params, lr=1e-3, weight_decay=0.01)
        rows["forward_ad_ap"] = measure(lambda: forward_ad_ap_step(ap_params, opt2, x, y), args.repeats)
    layouts = cnn_rows(rows, want, args.repeats, args.cnn_layout)
    transformer_rows(rows, want, args.repeats)
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "cnn_layout": layouts, "rows": rows}))


def cnn_rows(rows, want, repeats, choice):
    """The CNN's rows (torch_cnn.py), timed as the MLP's; the model trains in every row (batch statistics, running
    averages updated), as on the other sides. Returns the layout each timed row ran in."""
    used = {}

    def setup(row):
        layout = used[row] = torch_cnn.DEFAULT_LAYOUTS[row] if choice == "auto" else choice
        torch.manual_seed(1)
        return (layout, *torch_cnn.make_batch(layout))

    if want("cnn_forward"):
        layout, x, y = setup("cnn_forward")
        params, state = torch_cnn.make_params(layout=layout)
        with torch.no_grad():
            rows["cnn_forward"] = measure(lambda: torch_cnn.losses(params, state, x, y), repeats)
    if want("cnn_jvp_k1"):
        layout, x, y = setup("cnn_jvp_k1")
        params, state = torch_cnn.make_params(layout=layout)
        tangents = torch_cnn.make_tangents(layout)
        with torch.no_grad():
            rows["cnn_jvp_k1"] = measure(lambda: torch_cnn.jvp_k1(params, state, x, y, tangents), repeats)
    if want("cnn_backprop"):
        layout, x, y = setup("cnn_backprop")
        params, state = torch_cnn.make_params(requires_grad=True, layout=layout)
        def backprop():
            for p in params:
                p.grad = None
            torch_cnn.losses(params, state, x, y).mean().backward()
        rows["cnn_backprop"] = measure(backprop, repeats)
    if want("cnn_backprop_adamw"):
        layout, x, y = setup("cnn_backprop_adamw")
        params, state = torch_cnn.make_params(requires_grad=True, layout=layout)
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        def step():
            opt.zero_grad(set_to_none=True)
            torch_cnn.losses(params, state, x, y).mean().backward()
            opt.step()
        rows["cnn_backprop_adamw"] = measure(step, repeats)
    if want("cnn_ap_adamw"):
        layout, x, y = setup("cnn_ap_adamw")
        params, state = torch_cnn.make_params(requires_grad=True, layout=layout)
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        rows["cnn_ap_adamw"] = measure(lambda: torch_cnn.ap_step(params, state, opt, x, y), repeats)
    return used


def transformer_rows(rows, want, repeats):
    """The transformer's rows (torch_transformer.py), timed as the MLP's: one batch of random tokens per row (seed 2)."""
    tt = torch_transformer

    def setup(requires_grad):
        torch.manual_seed(2)
        return tt.make_params(requires_grad), *tt.make_batch(), tt.causal_mask(tt.BENCH.context)

    if want("tf_forward"):
        params, x, y, mask = setup(False)
        with torch.no_grad():
            rows["tf_forward"] = measure(lambda: tt.losses(params, x, y, mask=mask), repeats)
    if want("tf_jvp_k1"):
        params, x, y, mask = setup(False)
        tangents = tt.make_tangents()
        with torch.no_grad():
            rows["tf_jvp_k1"] = measure(lambda: tt.jvp_k1(params, x, y, tangents, mask=mask), repeats)
    if want("tf_backprop"):
        params, x, y, mask = setup(True)
        def backprop():
            for p in params.values():
                p.grad = None
            tt.losses(params, x, y, mask=mask).mean().backward()
        rows["tf_backprop"] = measure(backprop, repeats)
    if want("tf_backprop_adamw"):
        params, x, y, mask = setup(True)
        opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.01)
        def step():
            opt.zero_grad(set_to_none=True)
            tt.losses(params, x, y, mask=mask).mean().backward()
            opt.step()
        rows["tf_backprop_adamw"] = measure(step, repeats)
    if want("tf_ap_adamw"):
        params, x, y, mask = setup(True)
        opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.01)
        rows["tf_ap_adamw"] = measure(lambda: tt.ap_step(params, opt, x, y, mask=mask), repeats)


if __name__ == "__main__":
    main()
