"""Run by ``tests/test_accelerate.py`` under ``torchrun`` with 2 CPU processes.

Each process fits the same estimators through one ``Accelerator`` (distributed
data parallel over gloo) and writes what it ended with to ``<out>/rank<i>.json``;
the test compares the processes.
"""

import json
import sys

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from sktransfer import FineTunedClassifier, TabularPretrainer


def weights_digest(module):
    return [float(p.detach().double().sum()) for p in module.parameters()]


def main(out):
    accelerator = Accelerator(cpu=True)
    rng = np.random.RandomState(0)
    X = rng.normal(size=(240, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                           nn.Linear(16, 3))
    before = {k: v.clone() for k, v in source.state_dict().items()}
    result = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type)}

    # early stopping with a patience that ends training long before max_epochs:
    # every process must stop at the same epoch, or the others would hang
    clf = FineTunedClassifier(
        model=source, freeze_depth=1, lr=0.05, max_epochs=200, early_stopping=True,
        n_iter_no_change=3, validation_fraction=0.25, random_state=0, accelerator=accelerator,
    ).fit(X, y)
    result["clf"] = {
        "n_iter": clf.n_iter_, "weights": weights_digest(clf.module_),
        "valid_loss": [row["valid_loss"] for row in clf.history_],
        "accuracy": clf.score(X, y), "module": type(clf.module_).__name__,
        "device": clf.device_,
    }
    result["source_unchanged"] = all(torch.equal(before[k], v)
                                     for k, v in source.state_dict().items())

    pre = TabularPretrainer(hidden_layer_sizes=(16,), max_epochs=4, batch_size=32,
                            random_state=0, accelerator=accelerator).fit(X)
    result["pretrainer"] = {"weights": weights_digest(pre.encoder_),
                            "train_loss": [row["train_loss"] for row in pre.history_]}

    # LoRA adapters and Co-Tuning's source head (used inside the forward pass by a
    # hook on the head): every trainable parameter is synchronised
    adapted = FineTunedClassifier(
        model=source, adapter="lora", adapter_rank=2, penalty="co_tuning", alpha=1.0,
        max_epochs=3, random_state=0, accelerator=accelerator,
    ).fit(X, y)
    result["adapted"] = {"weights": weights_digest(adapted.module_),
                         "module": sorted(adapted.module_.state_dict())}

    try:
        FineTunedClassifier(model=source, unfreeze_every=1, max_epochs=2,
                            accelerator=accelerator).fit(X, y)
        result["unfreeze_error"] = None
    except ValueError as exc:
        result["unfreeze_error"] = str(exc)

    with open(f"{out}/rank{accelerator.process_index}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
