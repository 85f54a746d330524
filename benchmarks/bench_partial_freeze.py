"""Partial freezing (freeze_depth=3: stem, layer1, layer2) on resnet18.

sktransfer computes the frozen blocks once per fit and trains layer3, layer4
and the head on their cached outputs; skorch ``NeuralNetClassifier`` +
``Freezer`` runs the frozen blocks on every batch of every epoch.

Run: ``python benchmarks/bench_partial_freeze.py`` (``--quick`` to smoke-test).
"""

import torch
from torch import nn

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FineTunedClassifier, clear_cache

FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.")


def skorch_freezer(X, y, epochs, device):
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Freezer

    net = NeuralNetClassifier(
        resnet18(), criterion=nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=1e-3,
        max_epochs=epochs, batch_size=32, train_split=None, device=device, verbose=0,
        callbacks=[Freezer(lambda name: name.startswith(FROZEN))],
        iterator_train__shuffle=True,
    )
    return net.fit(X, y)


def sktransfer_fit(X, y, epochs, device):
    # every timed fit computes its frozen outputs: none kept from an earlier repeat
    clear_cache()
    return FineTunedClassifier(
        model=resnet18(), freeze_depth=3, penalty=None, head_init="random", lr=1e-3,
        max_epochs=epochs, batch_size=32, random_state=0, device=device,
    ).fit(X, y)


def main():
    args = parse_args(__doc__)
    n, size, epochs = (128, 32, 2) if args.quick else (512, 64, 5)
    X, y = images(n, size)
    print(f"freeze_depth=3, resnet18, {n} images {size}x{size}, {epochs} epochs; {machine()}")
    warm_up(args.device)
    rows = []
    for name, fn in [("skorch NeuralNetClassifier + Freezer", skorch_freezer),
                     ("sktransfer FineTunedClassifier(freeze_depth=3)", sktransfer_fit)]:
        seconds, _ = best_time(lambda: fn(X, y, epochs, args.device), args.repeats)
        rows.append((name, seconds))
    report("Partial freezing", rows, reference=rows[0][0])
    print(f"  sktransfer is {rows[0][1] / rows[1][1]:.1f}x faster than skorch + Freezer")


if __name__ == "__main__":
    main()
