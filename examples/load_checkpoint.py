#!/usr/bin/env python3
"""Loads a ForwardAD checkpoint into PyTorch and evaluates nothing else: it shows the format is plain safetensors.

    /usr/bin/python3 examples/load_checkpoint.py runs/digits.safetensors

With the `safetensors` package installed, `safetensors.torch.load_file(path)` gives the same tensors;
this script reads the format directly (8-byte little-endian header length, JSON header, raw float32 data)
so that it needs only torch.
"""
import json
import struct
import sys

import torch


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    body = data[8 + length:]
    tensors = {}
    for name, entry in header.items():
        assert entry["dtype"] == "F32", entry
        begin, end = entry["data_offsets"]
        tensors[name] = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.float32).reshape(entry["shape"])
    return tensors, metadata


if __name__ == "__main__":
    tensors, metadata = load(sys.argv[1])
    print(json.dumps(metadata, indent=1))
    for name, t in tensors.items():
        print(f"{name:32s} {tuple(t.shape)} mean {t.mean().item():+.5f} std {t.std().item() if t.numel() > 1 else 0:.5f}")
