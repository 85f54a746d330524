"""Shared fixtures: small networks that the tests pretrain themselves (no downloads)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch.callbacks import Callback
from torch import nn

# One intra-op thread: the tests' networks are tiny, and with two threads every
# small op waits at a barrier for a thread the scheduler may have put aside. On
# 2 cores with 2 other busy processes, tests/test_auto.py took over 380 s with
# two threads and 20 s with one; the idle full suite takes the same time either
# way (260 s against 262 s).
torch.set_num_threads(1)


def make_cnn(n_classes=5):
    """A small CNN for 12x12 one-channel images: 3 blocks + head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 3 * 3, 64), nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def shifted_digits(images, copies, seed, size=12):
    """Place each 8x8 digit at a random position on a size x size canvas.

    Digits that are not centred make the task need what a CNN learns on a
    source task (stroke detectors that do not care where the digit is), and
    make raw pixels a weak representation: a realistic transfer set-up.
    """
    rng = np.random.RandomState(seed)
    out = np.zeros((len(images) * copies, 1, size, size), np.float32)
    for c in range(copies):
        offsets = rng.randint(0, size - 8 + 1, size=(len(images), 2))
        for i, (a, b) in enumerate(offsets):
            out[c * len(images) + i, 0, a:a + 8, b:b + 8] = images[i]
    return out


def few_labels(X, y, per_class, seed):
    """``per_class`` random samples of each class, and the rest (a held-out set)."""
    rng = np.random.RandomState(seed)
    idx = np.concatenate([
        rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)
    ])
    rest = np.setdiff1d(np.arange(len(y)), idx)
    return X[idx], y[idx], X[rest], y[rest]


def train_plain(net, X, y, epochs=40, lr=3e-3, seed=0, loss="ce"):
    """Plain full-batch Adam loop, used only to pretrain source networks for the tests."""
    torch.manual_seed(seed)
    X = torch.as_tensor(X, dtype=torch.float32)
    y = torch.as_tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X)).split(128):
            opt.zero_grad()
            loss_fn(net(X[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    return net


@pytest.fixture(scope="session")
def digits():
    """Shifted digits (n, 1, 12, 12) in [0, 1]: source = classes 0-4 (3 shifted
    copies of each image), target = classes 5-9 (one shifted copy)."""
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    y = d.target
    src = y < 5
    return {
        "X_source": shifted_digits(images[src], 3, seed=0),
        "y_source": np.tile(y[src], 3),
        "X_target": shifted_digits(images[~src], 1, seed=1),
        "y_target": y[~src],
    }


@pytest.fixture(scope="session")
def source_cnn(digits):
    """A CNN pretrained on digits 0-4 (the source task)."""
    torch.manual_seed(0)
    net = make_cnn(5)
    return train_plain(net, digits["X_source"], digits["y_source"], epochs=15)


def tiny_mlp():
    """Factory for the sklearn common checks: a lazily sized input layer (any
    number of features) in front of layers with fixed (seeded) weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    )


@pytest.fixture(scope="session")
def tabular_source():
    """A source table and a related target table sharing a latent structure.

    The source task (regression of 8 latent factors' nonlinear functions) and the
    target task (a classification of a different function of the same factors)
    share the first layers' useful representation.
    """
    rng = np.random.RandomState(0)
    n_features, n_latent = 20, 6
    mixing = rng.normal(size=(n_latent, n_features))

    def draw(n):
        z = rng.normal(size=(n, n_latent))
        X = np.tanh(z) @ mixing + 0.1 * rng.normal(size=(n, n_features))
        return X.astype(np.float32), z

    X_src, z_src = draw(3000)
    y_src = np.stack([np.sin(z_src[:, 0]) + z_src[:, 1] ** 2, z_src[:, 2] * z_src[:, 3],
                      np.abs(z_src[:, 4]), z_src[:, 5] ** 3 / 3], axis=1).astype(np.float32)
    X_tgt, z_tgt = draw(1200)
    y_tgt = ((np.sin(z_tgt[:, 0]) + z_tgt[:, 2] * z_tgt[:, 3]) > 0.3).astype(int)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                        nn.Linear(32, y_src.shape[1]))
    train_plain(net, X_src, y_src, epochs=60, loss="mse")
    return {"net": net, "X_target": X_tgt, "y_target": y_tgt, "X_source": X_src,
            "y_source": y_src}


class InterruptAt(Callback):
    """Simulates Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, net, training=False, **kwargs):
        row = net.history[-1]
        if training and len(net.history) == self.epoch and len(row["batches"]) == self.batch:
            raise KeyboardInterrupt
