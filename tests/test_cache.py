"""The frozen-prefix activation cache gives the uncached result, faster."""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor


class CountingConv(nn.Conv2d):
    """A conv that counts the samples it has seen (to see whether frozen blocks ran)."""

    calls = 0

    def forward(self, x):
        type(self).calls += len(x)
        return super().forward(x)


def counting_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        CountingConv(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 5),
    )


@pytest.fixture(scope="module")
def net():
    return counting_cnn()


@pytest.mark.parametrize("depth", [1, 3, "all"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_cached_equals_uncached(net, digits, depth, early_stopping):
    X, y = digits["X_target"][:160], digits["y_target"][:160]
    params = dict(model=net, freeze_depth=depth, max_epochs=4, lr=1e-2, batch_size=32,
                  dropout=0.1, early_stopping=early_stopping, validation_fraction=0.2,
                  random_state=0, device="cpu")
    cached = FineTunedClassifier(**params).fit(X, y)
    plain = FineTunedClassifier(**params, cache_size=0).fit(X, y)
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X),
                               rtol=1e-4, atol=1e-5)
    losses = [r["train_loss"] for r in cached.history_]
    np.testing.assert_allclose(losses, [r["train_loss"] for r in plain.history_], rtol=1e-4)


def test_cache_runs_frozen_blocks_once(net, digits):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    CountingConv.calls = 0
    FineTunedClassifier(model=net, freeze_depth=2, max_epochs=5, random_state=0,
                        device="cpu").fit(X, y)
    with_cache = CountingConv.calls
    CountingConv.calls = 0
    FineTunedClassifier(model=net, freeze_depth=2, max_epochs=5, cache_size=0, random_state=0,
                        device="cpu").fit(X, y)
    without = CountingConv.calls
    # probe (2 samples) + one pass to fill the cache, versus one pass per epoch
    assert with_cache <= 2 + 1 + 100
    assert without >= 5 * 100


def test_regressor_uses_cache_too(tabular_source):
    X, y = tabular_source["X_source"][:200], tabular_source["y_source"][:200]
    params = dict(model=tabular_source["net"], freeze_depth=1, max_epochs=3, random_state=0,
                  device="cpu")
    a = FineTunedRegressor(**params).fit(X, y).predict(X)
    b = FineTunedRegressor(**params, cache_size=0).fit(X, y).predict(X)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_over_budget_falls_back_and_says_so(net, digits, capsys):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    est = FineTunedClassifier(model=net, freeze_depth=1, max_epochs=1, verbose=1,
                              cache_size=1e-3, random_state=0, device="cpu").fit(X, y)
    out = capsys.readouterr().out
    assert "Frozen-prefix cache off" in out and "cache_size=0.001 MB" in out
    assert est.module_.start_block == 0
    FineTunedClassifier(model=net, freeze_depth=1, max_epochs=1, verbose=1, random_state=0,
                        device="cpu").fit(X, y)
    assert "Frozen-prefix cache on" in capsys.readouterr().out


def test_no_cache_without_frozen_blocks(net, digits, capsys):
    FineTunedClassifier(model=net, freeze_depth=0, max_epochs=1, verbose=1, random_state=0,
                        device="cpu").fit(digits["X_target"][:50], digits["y_target"][:50])
    assert "Frozen-prefix cache" not in capsys.readouterr().out


def test_uint8_images_are_cached_after_preprocessing(digits):
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 12 * 12, 16), nn.ReLU(), nn.Linear(16, 5))
    X = (np.repeat(digits["X_target"][:80], 3, axis=1).transpose(0, 2, 3, 1) * 255)
    X = X.astype(np.uint8)
    y = digits["y_target"][:80]
    params = dict(model=rgb, freeze_depth=1, max_epochs=3, random_state=0, device="cpu")
    a = FineTunedClassifier(**params).fit(X, y).predict_proba(X)
    b = FineTunedClassifier(**params, cache_size=0).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
