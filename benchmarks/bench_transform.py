"""FeatureExtractorTransformer.transform throughput vs a raw inference loop.

Both compute resnet18's pooled penultimate features (the head's input) of the
same images, in batches of 64, in eval mode without autograd.

Run: ``python benchmarks/bench_transform.py`` (``--quick`` to smoke-test).
Target (issue 5): transform >= 0.95x the raw loop's throughput (time ratio <= 1.05).
"""

import numpy as np
import torch
from torch import nn

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FeatureExtractorTransformer


def raw_loop(net, X, device):
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), 64):
            out.append(net(torch.from_numpy(X[i:i + 64]).to(device)).cpu())
    return torch.cat(out).numpy()


def main():
    args = parse_args(__doc__)
    n, size = (128, 32) if args.quick else (1024, 64)
    X, _ = images(n, size)
    print(f"transform, resnet18, {n} images {size}x{size}; {machine()}")
    warm_up(args.device)
    net = resnet18().to(args.device).eval()
    net.fc = nn.Identity()
    fx = FeatureExtractorTransformer(model=resnet18(), batch_size=64, device=args.device).fit(X)
    t_raw, a = best_time(lambda: raw_loop(net, X, args.device), args.repeats)
    t_fx, b = best_time(lambda: fx.transform(X), args.repeats)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # the same features
    report("transform", [("raw torch.inference_mode loop", t_raw),
                         ("FeatureExtractorTransformer.transform", t_fx)],
           reference="raw torch.inference_mode loop")
    print(f"  throughput: {n / t_fx:.0f} vs {n / t_raw:.0f} images/s "
          f"({t_raw / t_fx:.2f}x of the raw loop)")


if __name__ == "__main__":
    main()
