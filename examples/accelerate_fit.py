"""
One fit on several devices with ``accelerator=``
=================================================

A script to *launch*, not to run in a notebook: each process runs the whole
script, and Hugging Face ``accelerate`` splits every batch between the
processes (distributed data parallel). On a machine with 4 GPUs::

    accelerate launch --num_processes 4 examples/accelerate_fit.py

It also runs on the CPU, with two processes talking over gloo, which is how to
try it without GPUs (it is not faster there: the point is that it works)::

    torchrun --nproc_per_node 2 examples/accelerate_fit.py --cpu

or in one plain process: ``python examples/accelerate_fit.py --cpu``.

The fine-tuning is an ordinary :class:`~sktransfer.FineTunedClassifier`
with ``accelerator=`` set: the source network is pretrained on a synthetic
source table, then fine-tuned on a related target table with early stopping.
Every process ends with the same network; the main process reports and saves
it. Needs ``pip install "sktransfer[accelerate]"``. Nothing is downloaded.
(This script is shown in the gallery but not run there.)
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor


def tables(seed=0):
    """A source table (4 numeric targets) and a related target task (yes / no)."""
    rng = np.random.RandomState(seed)
    mixing = rng.normal(size=(6, 20))

    def draw(n):
        z = rng.normal(size=(n, 6))
        return (np.tanh(z) @ mixing + 0.3 * rng.normal(size=(n, 20))).astype(np.float32), z

    X_source, z = draw(4000)
    y_source = np.stack([np.sin(z[:, 0]) + z[:, 1] ** 2, z[:, 2] * z[:, 3],
                         np.abs(z[:, 4]), z[:, 5] ** 3 / 3], axis=1).astype(np.float32)
    X_target, z = draw(2400)
    score = np.sin(z[:, 0]) + z[:, 1] ** 2 + 1.5 * z[:, 2] * z[:, 3] - np.abs(z[:, 4])
    y_target = (score > np.median(score)).astype(int)
    return X_source, y_source, X_target, y_target


def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 4))


def main():
    # cpu=True: the CPU even where GPUs exist; otherwise one GPU per process
    accelerator = Accelerator(cpu="--cpu" in sys.argv)
    say = accelerator.print  # prints on the main process only
    say(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}, "
        f"device of the main process: {accelerator.device}")

    X_source, y_source, X_target, y_target = tables()
    scaler = StandardScaler().fit(X_source)
    X_source, X_target = scaler.transform(X_source), scaler.transform(X_target)
    X_train, X_test, y_train, y_test = train_test_split(
        X_target, y_target, train_size=600, random_state=0, stratify=y_target)

    # pretraining on the source table, spread over the processes as well
    start = time.perf_counter()
    source = FineTunedRegressor(model=make_mlp, penalty=None, head_init="random", freeze_depth=0,
                                lr=3e-3, max_epochs=20, batch_size=64, random_state=0,
                                accelerator=accelerator).fit(X_source, y_source)
    say(f"source pretrained in {time.perf_counter() - start:.1f} s")

    # fine-tuning: batch_size is per process, the effective batch is
    # batch_size * num_processes; early stopping stops every process at once
    start = time.perf_counter()
    clf = FineTunedClassifier(model=source, freeze_depth=1, penalty="l2_sp", alpha=1e-2,
                              lr=1e-3, batch_size=32, max_epochs=100, early_stopping=True,
                              n_iter_no_change=5, random_state=0,
                              accelerator=accelerator).fit(X_train, y_train)
    say(f"fine-tuned in {time.perf_counter() - start:.1f} s, {clf.n_iter_} epochs "
        f"(early stopping); test accuracy {clf.score(X_test, y_test):.3f}")

    # every process holds the same network: save it once
    if accelerator.is_main_process:
        path = Path(tempfile.mkdtemp()) / "finetuned.safetensors"
        clf.save_weights(path)
        say(f"saved to {path}")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
