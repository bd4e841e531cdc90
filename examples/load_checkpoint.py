#!/usr/bin/env python3
"""Reads a ForwardAD checkpoint (plain safetensors) and, optionally, converts it to PyTorch's layout.

    /usr/bin/python3 examples/load_checkpoint.py runs/digits.safetensors            # metadata, tensors, layout
    /usr/bin/python3 examples/load_checkpoint.py CKPT --layout                      # the same without loading data
    /usr/bin/python3 examples/load_checkpoint.py CKPT --torch-out model.pt          # a state_dict in PyTorch's layout
    /usr/bin/python3 examples/load_checkpoint.py CKPT --flat-shape 7,7,32 --first-dense fc1 --torch-out model.pt
        (a checkpoint without the cnn spec in its metadata; --flat-norms bn3,... names batch norms between the two)

The file is read directly (8-byte little-endian header length, JSON header, raw little-endian float32 data), so the
layout printout needs only the Python standard library; loading the tensors needs torch (or, without it, numpy), and
--torch-out needs torch. With the `safetensors` package, `safetensors.torch.load_file(path)` gives the same tensors in
ForwardAD's layout.

ForwardAD's layout is channels last. What differs from PyTorch's:

- a convolution weight is [Cout, kh, kw, Cin/groups]; PyTorch's nn.Conv2d weight is [Cout, Cin/groups, kh, kw]:
  permute (0, 3, 1, 2);
- `flat` flattens an H×W×C feature map in (h, w, c) order; PyTorch's nn.Flatten after an NCHW map gives (c, h, w)
  order. The first dense layer after the flatten (a hidden `fcN` or, without one, the `classifier`) therefore takes
  its inputs in another order: its weight [out, H·W·C] has its columns reordered from (h, w, c) to (c, h, w); so are
  the per-feature tensors of a batch norm between the flatten and that dense layer (weight, bias, running_mean,
  running_var);
- dense weights are [out, in] and biases [out] as in nn.Linear; batch-norm weight, bias, running_mean, running_var
  are [C] as in nn.BatchNorm2d (whose num_batches_tracked ForwardAD does not keep: this script adds it as 0).

The map's H, W, C are taken from the checkpoint's metadata when `forwardad train` wrote it (key "model", e.g.
"cnn 28x28x1 c16k3-bn-relu-p2,c32k3-bn-relu-p2,flat,fc64-relu -> 10 classes": the layers' sizes are recomputed from
the spec), or from --flat-shape H,W,C, --first-dense NAME (and --flat-norms) for a checkpoint written by the library. Entries named
"optimizer.*" and "estimator.*" (optimizer and guesser state, flat vectors in ForwardAD's parameter order) are left
out of the converted state_dict. LocalMixer and transformer checkpoints are not converted (only printed).
"""
import argparse
import json
import re
import struct
import sys


def read_header(path):
    """The tensor table, the metadata and the offset where the data section begins."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", {})
    return header, metadata, 8 + length


def load(path):
    """The tensors (torch tensors, or numpy arrays when torch is missing) in ForwardAD's layout, and the metadata."""
    header, metadata, begin = read_header(path)
    with open(path, "rb") as f:
        f.seek(begin)
        body = f.read()
    try:
        import torch

        def make(raw, shape):
            return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)
    except ImportError:
        import numpy

        def make(raw, shape):
            return numpy.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {entry['dtype']}; ForwardAD writes F32 only")
        start, end = entry["data_offsets"]
        tensors[name] = make(body[start:end], entry["shape"])
    return tensors, metadata


# ---- the CNN spec grammar of ForwardAD's CnnSpec, enough to recompute the layers' sizes and node names

def parse_cnn_layers(spec):
    """(kind, options) per token of a CNN spec: conv, pool, gap, flat, bn, act, fc."""
    layers = []
    for token in re.split(r"[-,]", spec.strip()):
        token = token.strip().lower()
        if token in ("gap", "flat"):
            layers.append((token, {}))
        elif token in ("bn", "bn0", "bnf", "bnf0"):
            layers.append(("bn", {}))
        elif token in ("relu", "tanh", "gelu"):
            layers.append(("act", {"stem": token}))
        elif re.fullmatch(r"fc\d+", token):
            layers.append(("fc", {"units": int(token[2:])}))
        else:
            m = re.fullmatch(r"([cpa])(\d+)((?:[kspgb]\d+)*)", token)
            if not m:
                raise ValueError(f"CNN spec {spec!r}: token {token!r} is not in the grammar")
            options = {k: int(v) for k, v in re.findall(r"([kspgb])(\d+)", m.group(3))}
            first = int(m.group(2))
            if m.group(1) == "c":
                kernel = options.get("k", 3)
                layers.append(("conv", {"channels": first, "kernel": kernel, "stride": options.get("s", 1),
                                        "padding": options.get("p", kernel // 2 if kernel % 2 else 0)}))
            else:
                layers.append(("pool", {"kernel": first, "stride": options.get("s", first), "padding": options.get("p", 0),
                                        "stem": "avgpool" if m.group(1) == "a" else "maxpool"}))
    return layers


def cnn_flatten(model_description):
    """For a "cnn HxWxC SPEC -> N classes" description: ((H, W, C) at the flatten, the first dense layer after it,
    the batch norms between them), or None when the spec has no flatten."""
    m = re.fullmatch(r"cnn (\d+)x(\d+)x(\d+) (\S+) -> \d+ classes", model_description.strip())
    if not m:
        return None
    shape = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    counts, flat_shape, norms = {}, None, []

    def name(stem):
        counts[stem] = counts.get(stem, 0) + 1
        return f"{stem}{counts[stem]}"

    def sweep(n, kernel, stride, padding):
        return (n + 2 * padding - kernel) // stride + 1

    for kind, o in parse_cnn_layers(m.group(4)):
        stem = {"conv": "conv", "gap": "gap", "flat": "flatten", "bn": "bn", "fc": "fc"}.get(kind, o.get("stem"))
        node = name(stem)
        if kind == "conv":
            shape = (sweep(shape[0], o["kernel"], o["stride"], o["padding"]),
                     sweep(shape[1], o["kernel"], o["stride"], o["padding"]), o["channels"])
        elif kind == "pool":
            shape = (sweep(shape[0], o["kernel"], o["stride"], o["padding"]),
                     sweep(shape[1], o["kernel"], o["stride"], o["padding"]), shape[2])
        elif kind == "gap":
            shape = (shape[2],)
        elif kind == "flat":
            flat_shape = shape
            shape = (shape[0] * shape[1] * shape[2],)
        elif kind == "bn" and flat_shape is not None:
            norms.append(node)
        elif kind == "fc" and flat_shape is not None:
            return flat_shape, node, norms
    return (flat_shape, "classifier", norms) if flat_shape is not None else None


def hwc_to_chw_order(h, w, c):
    """index[j] = the (h, w, c)-order position of the j-th feature in (c, h, w) order."""
    return [(y * w + x) * c + k for k in range(c) for y in range(h) for x in range(w)]


def conversion_plan(header, metadata, flat_shape=None, first_dense=None, flat_norms=None):
    """What to do with each tensor to get PyTorch's layout: {name: (action, detail)}, the reorder and notes."""
    notes, reorder, norms = [], None, list(flat_norms or [])
    model = metadata.get("model", "")
    if flat_shape is None and model.startswith("cnn "):
        found = cnn_flatten(model)
        if found:
            flat_shape, spec_dense, spec_norms = found
            first_dense = first_dense or spec_dense
            norms = norms or spec_norms
    if flat_shape is not None:
        if first_dense is None:
            raise ValueError("--flat-shape needs --first-dense NAME (the dense layer after the flatten, e.g. fc1 or classifier)")
        reorder = (tuple(flat_shape), first_dense)
        notes.append(f"flatten of the {flat_shape[0]}x{flat_shape[1]}x{flat_shape[2]} map: {first_dense}.weight columns "
                     f"(and {', '.join(norms) or 'no batch norm'} between) reordered from (h, w, c) to (c, h, w)")
    elif model.startswith(("localmixer", "transformer")):
        notes.append(f"model '{model}': conversion to PyTorch's layout is not implemented for it")
    plan = {}
    for name, entry in header.items():
        rank = len(entry["shape"])
        if name.startswith(("optimizer.", "estimator.")):
            plan[name] = ("drop", "optimizer/estimator state, ForwardAD's flat order")
        elif rank == 4 and name.endswith(".weight"):
            plan[name] = ("permute", "[Cout, kh, kw, Cin] -> [Cout, Cin, kh, kw]")
        elif reorder and name == f"{reorder[1]}.weight":
            plan[name] = ("columns", "input columns (h, w, c) -> (c, h, w)")
        elif reorder and any(name.startswith(n + ".") for n in norms):
            plan[name] = ("features", "features (h, w, c) -> (c, h, w)")
        else:
            plan[name] = ("keep", "same layout")
    return plan, reorder, notes


def to_pytorch(tensors, metadata, flat_shape=None, first_dense=None, flat_norms=None):
    """A state_dict in PyTorch's layout (torch tensors), for a model built as the CNN spec says with nn.Conv2d,
    nn.BatchNorm2d/1d, nn.MaxPool2d/AvgPool2d, nn.Flatten and nn.Linear under ForwardAD's node names."""
    import torch
    header = {n: {"shape": list(t.shape)} for n, t in tensors.items()}
    plan, reorder, _ = conversion_plan(header, metadata, flat_shape, first_dense, flat_norms)
    index = torch.tensor(hwc_to_chw_order(*reorder[0])) if reorder else None
    out = {}
    for name, t in tensors.items():
        action = plan[name][0]
        t = torch.as_tensor(t)
        if action == "drop":
            continue
        if action == "permute":
            t = t.permute(0, 3, 1, 2)
        elif action == "columns":
            t = t[:, index]
        elif action == "features":
            t = t[index]
        out[name] = t.contiguous()
        if name.endswith(".running_var"):
            out[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--layout", action="store_true", help="print the metadata, the tensor table and the conversion plan only (no data read)")
    parser.add_argument("--flat-shape", help="H,W,C of the feature map a flatten flattens (when the metadata has no cnn spec)")
    parser.add_argument("--first-dense", help="name of the dense layer after that flatten (fc1, classifier, ...)")
    parser.add_argument("--flat-norms", help="batch norms between that flatten and the dense layer (bn3,...), reordered too")
    parser.add_argument("--torch-out", help="write a state_dict in PyTorch's layout here (torch.save)")
    args = parser.parse_args()
    flat_shape = tuple(int(v) for v in args.flat_shape.split(",")) if args.flat_shape else None
    if flat_shape is not None and len(flat_shape) != 3:
        parser.error("--flat-shape takes H,W,C")

    header, metadata, _ = read_header(args.checkpoint)
    print(json.dumps(metadata, indent=1))
    norms = args.flat_norms.split(",") if args.flat_norms else None
    plan, _, notes = conversion_plan(header, metadata, flat_shape, args.first_dense, norms)
    for note in notes:
        print("note:", note)
    if args.layout:
        for name, entry in header.items():
            action, detail = plan[name]
            print(f"{name:32s} {str(tuple(entry['shape'])):22s} to PyTorch: {action} ({detail})")
        return
    tensors, _ = load(args.checkpoint)
    for name, t in tensors.items():
        count = t.numel() if hasattr(t, "numel") else t.size
        std = float(t.std()) if count > 1 else 0.0
        print(f"{name:32s} {str(tuple(t.shape)):22s} mean {float(t.mean()):+.5f} std {std:.5f}  to PyTorch: {plan[name][0]}")
    if args.torch_out:
        import torch
        torch.save(to_pytorch(tensors, metadata, flat_shape, args.first_dense, norms), args.torch_out)
        print(f"wrote {args.torch_out} (PyTorch's layout)")


if __name__ == "__main__":
    sys.exit(main())
