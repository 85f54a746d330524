"""The frozen outputs (``_prefix_cache.py``): computed once per sample and kept; a kept
output equals a fresh one bit for bit; what the keys hold (weights, rows, preprocessing,
depth, batch size); the memory bound; searches (folds, candidates, refit, halving)."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, clear_cache


class CountingConv(nn.Conv2d):
    """A conv that counts the samples it has seen (to see whether frozen blocks ran)."""

    calls = 0

    def forward(self, x):
        type(self).calls += len(x)
        return super().forward(x)


class CountingBlock(nn.Module):
    """Counts the samples entering the second block (a start from kept depth-1 outputs)."""

    calls = 0

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        type(self).calls += len(x)
        return self.module(x)


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


def _est(net, **params):
    # what the tests rely on is set explicitly (the defaults may change)
    # (head_init="random": the probe head would add its own pass over every block,
    # which test_the_probe_reads_the_store_too counts)
    kwargs = dict(model=net, freeze_depth=2, max_epochs=2, batch_size=32, lr=1e-2,
                  penalty="l2_sp", alpha=1e-3, head_init="random", random_state=0,
                  device="cpu")
    return FineTunedClassifier(**{**kwargs, **params})


def _fit_counting(net, X, y, **params):
    CountingConv.calls = 0
    est = _est(net, **params).fit(X, y)
    return est, CountingConv.calls


@pytest.mark.parametrize("depth", [1, 3, "all"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_kept_outputs_train_like_the_frozen_blocks_run_on_every_batch(net, digits, depth,
                                                                      early_stopping):
    X, y = digits["X_target"][:160], digits["y_target"][:160]
    params = dict(freeze_depth=depth, max_epochs=4, dropout=0.1, early_stopping=early_stopping,
                  validation_fraction=0.2)
    clear_cache()
    cached = _est(net, **params).fit(X, y)
    plain = _est(net, **params, cache_size=0).fit(X, y)
    # cache_size=0 runs the frozen blocks in other batches: float tolerance
    np.testing.assert_allclose(cached.predict_proba(X), plain.predict_proba(X),
                               rtol=1e-4, atol=1e-5)
    losses = [r["train_loss"] for r in cached.history_]
    np.testing.assert_allclose(losses, [r["train_loss"] for r in plain.history_], rtol=1e-4)


def test_a_fit_runs_the_frozen_blocks_once_per_sample(net, digits):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    _, with_cache = _fit_counting(net, X, y, max_epochs=5)
    _, without = _fit_counting(net, X, y, max_epochs=5, cache_size=0)
    # 100 rows in batches of exactly 32 (the last one padded): 128; the probe reads
    # its two samples from them
    assert with_cache == 128
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
    clear_cache()
    _est(net, freeze_depth=1, max_epochs=1, verbose=1, cache_size=1e-3).fit(X, y)
    out = capsys.readouterr().out
    assert "Frozen-prefix cache off" in out and "cache_size=0.001 MB" in out
    cached = _est(net, freeze_depth=1, max_epochs=1, verbose=1).fit(X, y)
    assert "Frozen-prefix cache on" in capsys.readouterr().out
    # trained on kept outputs of block 0, the fitted network runs from block 0 again
    assert cached.module_.start_block == 0
    module = cached.module_
    with torch.no_grad():
        logits = module.forward_head(module.forward_features(torch.as_tensor(X)))
    np.testing.assert_allclose(cached.predict_proba(X), torch.softmax(logits, 1).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_no_cache_without_frozen_blocks(net, digits, capsys):
    _est(net, freeze_depth=0, max_epochs=1, verbose=1).fit(digits["X_target"][:50],
                                                           digits["y_target"][:50])
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


# -- outputs kept per sample, across fits and predictions ---------------------------


def test_a_search_sends_each_sample_through_the_frozen_blocks_once(net, digits, capsys):
    X, y = digits["X_target"][:96], digits["y_target"][:96]
    clear_cache()
    CountingConv.calls = 0
    search = GridSearchCV(_est(net, max_epochs=1), {"alpha": [1e-3, 1e-1], "lr": [1e-3, 1e-2]},
                          cv=KFold(3)).fit(X, y)
    # 12 fits, 12 scorings and the refit: the first fit computes 64 rows (2 batches),
    # the first scoring the 32 others (without memory=, a prediction keeps nothing:
    # its memory stays bounded by batch_size), the second fit keeps those 32;
    # everything else is found kept
    assert CountingConv.calls == 64 + 32 + 32
    best = search.best_estimator_
    CountingConv.calls = 0
    best.predict(X)
    assert CountingConv.calls == 0
    # the same search with nothing kept gives the same results, bit for bit
    clear_cache()
    again = GridSearchCV(_est(net, max_epochs=1), {"alpha": [1e-3, 1e-1], "lr": [1e-3, 1e-2]},
                         cv=KFold(3)).fit(X, y)
    np.testing.assert_array_equal(again.cv_results_["mean_test_score"],
                                  search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(again.best_estimator_.predict_proba(X),
                                  best.predict_proba(X))


def test_kept_outputs_equal_fresh_ones_bit_for_bit_whatever_the_order(net, digits, tmp_path):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    fresh = _est(net).fit(X, y)
    p_fresh = fresh.predict_proba(X)  # all rows found kept by the fit
    clear_cache()
    p_cold = fresh.predict_proba(X)  # the same rows computed by the prediction
    np.testing.assert_array_equal(p_cold, p_fresh)
    CountingConv.calls = 0
    fresh.predict_proba(X)  # without memory=, predictions keep nothing
    assert CountingConv.calls == 128
    # kept by other calls (predictions keep with memory=), in other batches: reversed
    # rows, then a scattered subset
    clear_cache()
    fresh.set_params(memory=str(tmp_path))
    fresh.predict_proba(X[::-1].copy())
    fresh.predict_proba(X[::3])
    CountingConv.calls = 0
    hit = _est(net).fit(X, y)
    assert CountingConv.calls == 0
    np.testing.assert_array_equal(hit.predict_proba(X), p_fresh)
    np.testing.assert_array_equal(hit.predict_proba(X[7:9]), p_fresh[7:9])


def test_changed_weights_rows_preprocessing_or_batch_size_miss(net, digits):
    import copy

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    clear_cache()
    _fit_counting(net, X, y, freeze_depth=1)
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed[0].weight.mul_(1.5)  # the first (frozen) block's weights
    est, calls = _fit_counting(changed, X, y, freeze_depth=1)
    assert calls == 128  # every row again
    clear_cache()
    np.testing.assert_array_equal(est.predict_proba(X), _est(changed, freeze_depth=1).fit(
        X, y).predict_proba(X))
    # a source changed in place misses too (the key holds the weights, not the object)
    source = copy.deepcopy(net)
    _fit_counting(source, X, y, freeze_depth=1)
    with torch.no_grad():
        source[0].bias.add_(0.1)
    _, calls = _fit_counting(source, X, y, freeze_depth=1)
    assert calls == 128
    source[0].weight.data[3, 0, 1, 2] += 1e-6  # one value, behind autograd's back
    _, calls = _fit_counting(source, X, y, freeze_depth=1)
    assert calls == 128
    # one row differs: that row only, in one (padded) batch
    X2 = X.copy()
    X2[0, 0, 0, 0] += 0.5
    _, calls = _fit_counting(net, X2, y, freeze_depth=1)
    assert calls == 32
    _, calls = _fit_counting(net, X, y, freeze_depth=1, batch_size=16)  # in the key
    assert calls == 112


def test_changed_preprocessing_misses(digits):
    torch.manual_seed(0)
    rgb = nn.Sequential(CountingConv(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 12 * 12, 5))
    X = (np.repeat(digits["X_target"][:40], 3, axis=1).transpose(0, 2, 3, 1) * 255)
    X, y = X.astype(np.uint8), digits["y_target"][:40]

    def scale(batch):
        return batch.float() / 255

    def shift(batch):
        return batch.float() / 255 - 0.5

    clear_cache()
    for preprocess, expected in [(scale, 64), (scale, 0), (shift, 64)]:
        _, calls = _fit_counting(rgb, X, y, freeze_depth=1, preprocess=preprocess)
        assert calls == expected


def test_prediction_keys_the_fitted_networks_own_frozen_weights(net, digits):
    """A fitted network whose frozen blocks differ from the source's (as weight-space
    ensembling would make them) must not reuse the source's outputs."""
    X, y = digits["X_target"][:64], digits["y_target"][:64]
    clear_cache()
    est, _ = _fit_counting(net, X, y, freeze_depth=1)
    with torch.no_grad():
        est.module_.blocks[0].weight.data.mul_(0.5)  # behind autograd's back
    CountingConv.calls = 0
    proba = est.predict_proba(X)
    assert CountingConv.calls == 64
    module = est.module_
    with torch.no_grad():
        expected = torch.softmax(module(torch.as_tensor(X)).double(), 1).numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-6, atol=1e-7)


def test_a_deeper_prefix_starts_from_kept_shallower_outputs(digits):
    torch.manual_seed(0)
    source = nn.Sequential(
        CountingConv(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        CountingBlock(nn.Conv2d(8, 8, 3, padding=1)), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))
    X, y = digits["X_target"][:64], digits["y_target"][:64]
    clear_cache()
    _fit_counting(source, X, y, freeze_depth=1)
    CountingBlock.calls = 0
    deeper, calls = _fit_counting(source, X, y, freeze_depth=2)
    assert calls == 0 and CountingBlock.calls == 64  # block 1 only, on kept block-0 outputs
    clear_cache()
    fresh, calls = _fit_counting(source, X, y, freeze_depth=2)
    assert calls == 64
    np.testing.assert_array_equal(deeper.predict_proba(X), fresh.predict_proba(X))


def test_kept_outputs_stay_within_cache_size(net, digits):
    from sktransfer._frozen_store import STORE

    X, y = digits["X_target"][:96], digits["y_target"][:96]
    clear_cache()
    one = 4 * 96 * 8 * 12 * 12  # the outputs of block 0 (the conv; BatchNorm is block 1)
    budget = 1.5 * one / 2**20
    _fit_counting(net, X, y, freeze_depth=1, cache_size=budget)
    assert STORE.nbytes == one
    _fit_counting(net, X[::-1] + 1, y[::-1], freeze_depth=1, cache_size=budget)
    assert 0 < STORE.nbytes <= budget * 2**20
    # the most recent rows were kept, the oldest evicted
    _, calls = _fit_counting(net, X[::-1] + 1, y[::-1], freeze_depth=1, cache_size=budget)
    assert calls == 0
    _, calls = _fit_counting(net, X, y, freeze_depth=1, cache_size=budget)
    assert calls > 0
    assert clear_cache() > 0 and clear_cache() == 0 and STORE.nbytes == 0


def test_successive_halving_over_max_epochs(net, digits):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = digits["X_target"][:96], digits["y_target"][:96]
    clear_cache()
    CountingConv.calls = 0
    search = HalvingGridSearchCV(
        _est(net, freeze_depth="all", max_epochs=1),
        {"alpha": [1e-4, 1e-2], "lr": [1e-3, 3e-3, 1e-2, 3e-2]}, cv=KFold(3),
        resource="max_epochs", min_resources=1, max_resources=4, factor=2,
        random_state=0).fit(X, y)
    assert search.n_resources_ == [1, 2, 4]
    assert search.best_estimator_.max_epochs == 4
    assert search.best_estimator_.n_iter_ == 4
    # the first fold's test rows twice (its scoring keeps nothing), then every
    # iteration, fit and scoring reuses the rows
    assert CountingConv.calls == 128


def test_successive_halving_random_search_over_max_epochs(net, digits):
    from scipy.stats import loguniform
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    X, y = digits["X_target"][:96], digits["y_target"][:96]
    clear_cache()
    CountingConv.calls = 0
    search = HalvingRandomSearchCV(
        _est(net, freeze_depth="all", max_epochs=1),
        {"alpha": loguniform(1e-4, 1e-1), "lr": loguniform(1e-3, 3e-2)}, n_candidates=4,
        cv=KFold(3), resource="max_epochs", min_resources=1, max_resources=3, factor=3,
        random_state=0).fit(X, y)
    assert search.n_resources_ == [1, 3]
    assert search.n_candidates_ == [4, 2]
    assert search.best_estimator_.n_iter_ == 3
    assert CountingConv.calls == 128  # as above


def test_the_probe_reads_the_store_too(digits):
    """head_init="probe" needs every block's outputs for the training rows: they go
    through the store, so a grid search computes them once per sample."""
    torch.manual_seed(0)
    source = nn.Sequential(
        CountingConv(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))
    X, y = digits["X_target"][:64], digits["y_target"][:64]
    clear_cache()
    _, first = _fit_counting(source, X, y, freeze_depth=0, head_init="probe", max_epochs=1)
    _, again = _fit_counting(source, X, y, freeze_depth="all", head_init="probe", alpha=1e-2)
    assert first >= 64 and again == 0  # the probe's pass, and the frozen blocks', kept
    clear_cache()


def _pooling_source(pre_head):
    """Two conv blocks, ``pre_head`` (named layers), a linear head on 8 channels."""
    from collections import OrderedDict

    from sktransfer import split_model

    torch.manual_seed(0)
    layers = OrderedDict([("conv1", CountingConv(1, 8, 3, padding=1)), ("relu1", nn.ReLU()),
                          ("conv2", nn.Conv2d(8, 8, 3, padding=1)), ("relu2", nn.ReLU()),
                          *pre_head, ("fc", nn.Linear(8, 5))])
    return split_model(nn.Sequential(layers), blocks=[["conv1", "relu1"], ["conv2", "relu2"]],
                       head="fc", pre_head=[name for name, _ in pre_head])


@pytest.mark.parametrize("head_init", ["random", "probe"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_head_alone_trains_on_features_pooled_once_like_pooled_every_batch(
        digits, monkeypatch, head_init, early_stopping):
    """Every block frozen and a row-wise pre_head (pooling, flatten): it runs once per
    row, not on every batch of every epoch, and the fit is the same bit for bit."""
    import sktransfer._prefix_cache as prefix_cache

    calls = []
    pool_forward = nn.AdaptiveAvgPool2d.forward
    monkeypatch.setattr(nn.AdaptiveAvgPool2d, "forward",
                        lambda self, x: calls.append(len(x)) or pool_forward(self, x))
    source = _pooling_source([("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten())])
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    params = dict(freeze_depth="all", max_epochs=4, head_init=head_init,
                  early_stopping=early_stopping, validation_fraction=0.2)
    clear_cache()
    once = _est(source, **params).fit(X, y)
    # the 100 rows pooled once; the probe, training and validation batches read them
    assert sum(calls) == 100
    monkeypatch.setattr(prefix_cache, "rowwise_pre_head", lambda net: False)
    calls.clear()
    clear_cache()
    every = _est(source, **params).fit(X, y)
    assert sum(calls) >= 4 * 80
    np.testing.assert_array_equal(once.predict_proba(X), every.predict_proba(X))
    assert [r["train_loss"] for r in once.history_] == [r["train_loss"] for r in every.history_]
    assert once.module_.start_block == 0


def test_only_a_rowwise_pre_head_runs_once():
    from sktransfer._blocknet import GlobalPool, rowwise_pre_head

    def pre_head(*modules):
        return _pooling_source([(f"p{i}", m) for i, m in enumerate(modules)])

    assert rowwise_pre_head(pre_head(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    assert rowwise_pre_head(pre_head(nn.ReLU(), GlobalPool("avg")))
    # dropout trains differently; an unknown module may too; a hook sees every batch
    assert not rowwise_pre_head(pre_head(GlobalPool("avg"), nn.Dropout(0.2)))
    assert not rowwise_pre_head(pre_head(CountingBlock(GlobalPool("avg"))))
    hooked = nn.AdaptiveAvgPool2d(1)
    hooked.register_forward_hook(lambda *args: None)
    assert not rowwise_pre_head(pre_head(hooked, nn.Flatten()))
