"""Head-only training (freeze_depth="all") on resnet18: sktransfer vs the alternatives.

Baselines, all on the same 512 images 64x64 (random weights; the speed does not
depend on them), AdamW, batch size 32:

* skorch ``NeuralNetClassifier`` + ``Freezer`` (everything but ``fc`` frozen):
  the obvious recipe, which runs the frozen backbone forward on every batch;
* a hand-written torch loop that computes the backbone once and trains the
  head on the features: the limit any implementation can reach.

Run: ``python benchmarks/bench_head_only.py`` (``--quick`` to smoke-test).
Target (issue 5): sktransfer <= 1.25x the hand-written limit.
"""

import torch
from torch import nn

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FineTunedClassifier, clear_cache


def skorch_freezer(X, y, epochs, device):
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Freezer

    net = NeuralNetClassifier(
        resnet18(), criterion=nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=1e-3,
        max_epochs=epochs, batch_size=32, train_split=None, device=device, verbose=0,
        callbacks=[Freezer(lambda name: not name.startswith("fc."))],
        iterator_train__shuffle=True,
    )
    return net.fit(X, y)


def hand_written_cached(X, y, epochs, device):
    net = resnet18().to(device).eval()
    head, net.fc = net.fc, nn.Identity()
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    with torch.no_grad():
        feats = torch.cat([net(Xt[i:i + 32]) for i in range(0, len(Xt), 32)])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), device=device).split(32):
            opt.zero_grad()
            loss_fn(head(feats[idx]), yt[idx]).backward()
            opt.step()
    return head


def sktransfer_fit(X, y, epochs, device):
    # every timed fit computes its frozen outputs: none kept from an earlier repeat
    clear_cache()
    return FineTunedClassifier(
        model=resnet18(), freeze_depth="all", penalty=None, head_init="random", lr=1e-3,
        max_epochs=epochs,
        batch_size=32, random_state=0, device=device,
    ).fit(X, y)


def main():
    args = parse_args(__doc__)
    n, size = (128, 32) if args.quick else (512, 64)
    X, y = images(n, size)
    print(f"Head-only training, resnet18, {n} images {size}x{size}; {machine()}")
    warm_up(args.device)
    for epochs in ((2,) if args.quick else (10, 30)):
        rows = []
        for name, fn in [
            ("hand-written loop, backbone computed once", hand_written_cached),
            ("sktransfer FineTunedClassifier(freeze_depth='all')", sktransfer_fit),
            ("skorch NeuralNetClassifier + Freezer", skorch_freezer),
        ]:
            seconds, _ = best_time(lambda: fn(X, y, epochs, args.device), args.repeats)
            rows.append((name, seconds))
        report(f"{epochs} epochs", rows, reference=rows[0][0])
        ratio = rows[2][1] / rows[1][1]
        print(f"  sktransfer is {ratio:.1f}x faster than skorch + Freezer")


if __name__ == "__main__":
    main()
