"""Shared pieces of the PyTorch peers: the benchmark MLP's parameters and the timing loop."""
import statistics
import time

import torch

INPUTS, WIDTH, CLASSES, BATCH = 3072, 1024, 10, 512


def make_params(depth, requires_grad=False):
    """nn.Linear's default initialisation for depth weight matrices: 3072 → 1024 … → 10."""
    sizes = [INPUTS] + [WIDTH] * (depth - 1) + [CLASSES]
    params = []
    for i in range(depth):
        w = torch.empty(sizes[i + 1], sizes[i]).uniform_(-sizes[i] ** -0.5, sizes[i] ** -0.5)
        params += [w.requires_grad_(requires_grad), torch.zeros(sizes[i + 1], requires_grad=requires_grad)]
    return params


def timeit(fn, repeats, warmup=2):
    """Median wall time of fn over repeats calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
