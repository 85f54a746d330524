"""The frozen-prefix outputs (``_prefix_cache.py``): the cached result equals the uncached
one, faster; what the key holds; the store's budget; when the cache is used."""

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
    cached = FineTunedClassifier(model=net, freeze_depth=1, max_epochs=1, verbose=1,
                                 random_state=0, device="cpu").fit(X, y)
    assert "Frozen-prefix cache on" in capsys.readouterr().out
    # trained on cached outputs of block 0, the fitted network runs from block 0 again
    assert cached.module_.start_block == 0
    module = cached.module_
    with torch.no_grad():
        logits = module.forward_head(module.forward_features(torch.as_tensor(X)))
    np.testing.assert_allclose(cached.predict_proba(X), torch.softmax(logits, 1).numpy(),
                               rtol=1e-5, atol=1e-6)


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


# -- outputs kept between fits ---------------------------------------------------------


def _fit_counting(net, X, y, **params):
    CountingConv.calls = 0
    est = FineTunedClassifier(model=net, max_epochs=2, random_state=0, device="cpu",
                              **params).fit(X, y)
    return est, CountingConv.calls


def test_fits_with_the_same_frozen_prefix_share_its_outputs(net, digits, capsys):
    from sklearn.model_selection import GridSearchCV

    from sktransfer import clear_cache

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    first, calls_first = _fit_counting(net, X, y, freeze_depth=2, alpha=1e-3)
    again, calls_again = _fit_counting(net, X, y, freeze_depth=2, alpha=1e-3, verbose=1)
    assert calls_first >= 100 and calls_again <= 3  # the probe and the shape sample only
    assert "reused from an earlier fit" in capsys.readouterr().out
    np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    # another alpha, same prefix: a hit, and the result of a fresh computation
    other, calls_other = _fit_counting(net, X, y, freeze_depth=2, alpha=1.0)
    assert calls_other <= 3
    clear_cache()
    fresh, _ = _fit_counting(net, X, y, freeze_depth=2, alpha=1.0)
    np.testing.assert_array_equal(other.predict_proba(X), fresh.predict_proba(X))
    # a search over alpha computes the frozen blocks once per fold (and refit)
    clear_cache()
    CountingConv.calls = 0
    GridSearchCV(FineTunedClassifier(model=net, freeze_depth=2, max_epochs=1, random_state=0,
                                     device="cpu"),
                 {"alpha": [1e-3, 1e-2, 1e-1, 1.0]}, cv=2).fit(X, y)
    fits = 4 * 2 + 1
    # per fit the probe and the shape sample; the frozen blocks once per fold (50
    # samples each) and for the refit (100); the scoring of 8 fits on 50 samples
    assert CountingConv.calls <= 3 * fits + (50 + 50 + 100) + 8 * 50
    # (without the kept outputs, each of the 9 fits runs them: 8 * 50 + 100 more)


def test_changed_weights_or_data_do_not_reuse_outputs(net, digits):
    import copy

    from sktransfer import clear_cache

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    _fit_counting(net, X, y, freeze_depth=1)
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed[0].weight.mul_(1.5)  # the first (frozen) block's weights
    est, calls = _fit_counting(changed, X, y, freeze_depth=1)
    assert calls >= 100
    plain = FineTunedClassifier(model=changed, freeze_depth=1, max_epochs=2, random_state=0,
                                device="cpu", cache_size=0).fit(X, y)
    np.testing.assert_allclose(est.predict_proba(X), plain.predict_proba(X), rtol=1e-4,
                               atol=1e-5)
    X2 = X.copy()
    X2[0, 0, 0, 0] += 0.5  # one pixel differs
    _, calls = _fit_counting(net, X2, y, freeze_depth=1)
    assert calls >= 100
    _, calls = _fit_counting(net, X, y, freeze_depth=1, batch_size=16)  # batch size is in the key
    assert calls >= 100


def test_kept_outputs_stay_within_cache_size(net, digits):
    from sktransfer import _prefix_cache, clear_cache

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    one = 4 * 100 * 8 * 12 * 12  # the outputs of block 0 (the conv; BatchNorm is block 1)
    budget = 1.5 * one / 2**20
    _fit_counting(net, X, y, freeze_depth=1, cache_size=budget)
    _fit_counting(net, X[::-1].copy(), y[::-1].copy(), freeze_depth=1, cache_size=budget)
    assert len(_prefix_cache._STORE) == 1  # the older entry was evicted
    assert clear_cache() == 1 and clear_cache() == 0


# -- the module's pieces ----------------------------------------------------------


def _frozen_prefix():
    torch.manual_seed(0)
    from sktransfer import split_model

    return split_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                                     nn.Linear(6, 2)))


def test_the_key_follows_weights_data_batch_size_and_device():
    from sktransfer._inputs import InputData
    from sktransfer._prefix_cache import prefix_key

    bnet = _frozen_prefix()
    X = np.random.RandomState(0).normal(size=(6, 4)).astype(np.float32)
    data = InputData(X, "tabular")
    key = prefix_key(bnet.blocks[:1], data, None, 32, "cpu")
    assert key == prefix_key(_frozen_prefix().blocks[:1], InputData(X.copy(), "tabular"),
                             None, 32, "cpu")  # contents, not identities
    assert key != prefix_key(bnet.blocks[:2], data, None, 32, "cpu")
    assert key != prefix_key(bnet.blocks[:1], data, None, 16, "cpu")
    assert key != prefix_key(bnet.blocks[:1], InputData(X + 1, "tabular"), None, 32, "cpu")
    with torch.no_grad():
        bnet.blocks[0][0].weight[0, 0] += 1
    assert key != prefix_key(bnet.blocks[:1], data, None, 32, "cpu")
    # image files may change on disk: never cached
    assert prefix_key(bnet.blocks[:1], InputData(["a.png"], "files"), None, 32, "cpu") is None


def test_the_store_keeps_recently_used_entries_within_the_budget():
    from sktransfer._prefix_cache import clear_cache, lookup, store

    clear_cache()
    one = torch.zeros(256)  # 1 kB
    store("a", one, 2048)
    store("b", one, 2048)
    assert lookup("a") is one  # "a" is now the most recently used
    store("c", one, 2048)  # over budget: the least recently used ("b") goes
    assert lookup("b") is None and lookup("a") is one and lookup("c") is one
    store("huge", torch.zeros(1024), 2048)  # larger than the budget: not kept
    assert lookup("huge") is None
    assert clear_cache() == 2


def test_training_inputs_and_starting_at():
    from sktransfer._inputs import InputData
    from sktransfer._prefix_cache import clear_cache, starting_at, training_inputs

    clear_cache()
    bnet = _frozen_prefix()
    X = np.random.RandomState(0).normal(size=(6, 4)).astype(np.float32)
    data = InputData(X, "tabular")
    common = dict(batch_size=4, cache_size=1)
    raw, start = training_inputs(bnet, data, 0, None, "cpu", **common)
    assert start == 0 and torch.equal(raw, torch.as_tensor(X))  # nothing frozen
    raw, start = training_inputs(bnet, data, 1, None, "cpu", augment=lambda b: b, **common)
    assert start == 0  # augmented inputs: the frozen blocks must see them
    raw, start = training_inputs(bnet, data, 1, None, "cpu", batch_size=4, cache_size=1e-5)
    assert start == 0  # over budget
    cached, start = training_inputs(bnet, data, 1, None, "cpu", **common)
    assert start == 1
    with torch.no_grad():
        torch.testing.assert_close(cached, bnet.blocks[0](torch.as_tensor(X)))
    with pytest.raises(RuntimeError), starting_at(bnet, 1):
        assert bnet(cached).shape == (6, 2)  # runs from block 1 on the cached outputs
        raise RuntimeError
    assert bnet.start_block == 0  # reset, even when training fails
