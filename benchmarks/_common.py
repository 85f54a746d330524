"""Shared set-up for the benchmarks: data, timing, printing.

Every benchmark measures sktransfer and its baseline in the same process, on
the same data, and prints the ratio, so numbers from different machines are
comparable as ratios, not as seconds.
"""

import argparse
import time

import numpy as np
import torch


def parser(description):
    """The options every benchmark takes; a benchmark may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes: checks that the script runs, not a measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeat each timing and keep the fastest")
    return parser


def parse_args(description):
    return parser(description).parse_args()


def images(n, size, n_classes=10, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 3, size, size)).astype(np.float32)
    y = rng.randint(0, n_classes, size=n)
    return X, y


def resnet18(n_classes=10, seed=0):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=n_classes)


def best_time(fn, repeats=1):
    """Fastest wall-clock time of ``fn()`` over ``repeats`` runs, and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(title, rows, reference):
    """Print seconds and ratios against ``reference`` (a row name)."""
    ref = dict(rows)[reference]
    print(f"\n{title}")
    print(f"  {'method':<54} {'seconds':>8} {'ratio':>7}   (ratio = time / time of the first row)")
    for name, seconds in rows:
        print(f"  {name:<54} {seconds:8.2f} {seconds / ref:7.2f}")


def machine():
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return f"torch {torch.__version__}, {threads} threads, {dev}"


def warm_up(device="cpu"):
    """One forward/backward of resnet18 so that no timing pays for first-call set-up."""
    net = resnet18().to(device)
    x = torch.zeros((8, 3, 64, 64), device=device)
    net(x).sum().backward()
