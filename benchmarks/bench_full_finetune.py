"""Full fine-tuning (freeze_depth=0) on resnet18: sktransfer vs a hand-written loop.

Both train every parameter with AdamW, batch size 32, shuffled, on the same
512 images 64x64 for the same number of epochs. sktransfer adds skorch's
bookkeeping (history, callbacks) and the loss-is-finite check; with
``penalty="l2_sp"`` (the default) it also computes the penalty on every step,
reported on its own row.

Run: ``python benchmarks/bench_full_finetune.py`` (``--quick`` to smoke-test).
Target (issue 5): sktransfer (penalty=None) <= 1.10x the hand-written loop per epoch.
"""

import torch
from torch import nn

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FineTunedClassifier


def hand_written(X, y, epochs, device):
    net = resnet18().to(device).train()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(Xt)).split(32):
            xb, yb = Xt[idx].to(device), yt[idx].to(device)
            opt.zero_grad()
            loss_fn(net(xb), yb).backward()
            opt.step()
    return net


def sktransfer_fit(penalty):
    def fit(X, y, epochs, device):
        return FineTunedClassifier(
            model=resnet18(), freeze_depth=0, penalty=penalty, backbone_lr_scale=1.0,
            lr=1e-3, max_epochs=epochs, batch_size=32, random_state=0, device=device,
        ).fit(X, y)
    return fit


def main():
    args = parse_args(__doc__)
    n, size, epochs = (96, 32, 1) if args.quick else (512, 64, 2)
    X, y = images(n, size)
    print(f"Full fine-tuning, resnet18, {n} images {size}x{size}, {epochs} epochs; {machine()}")
    warm_up(args.device)
    rows = []
    for name, fn in [("hand-written torch loop", hand_written),
                     ("sktransfer, penalty=None", sktransfer_fit(None)),
                     ("sktransfer, penalty='l2_sp' (default)", sktransfer_fit("l2_sp"))]:
        seconds, _ = best_time(lambda: fn(X, y, epochs, args.device), args.repeats)
        rows.append((name, seconds / epochs))
    report("Seconds per epoch", rows, reference=rows[0][0])


if __name__ == "__main__":
    main()
