"""``freeze_depth="auto"`` (``_auto.py``): the probe or fine-tuning, chosen by
cross-validation on the training rows, then refitted on all of them."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor
from sktransfer._auto import one_standard_error
from sktransfer._base import seed_from_random_state

FAST = {"max_epochs": 5, "batch_size": 16, "device": "cpu"}


def _linear_target_task(seed, noise=0.5):
    """A random MLP and a target linear in its penultimate features plus noise: the probe
    (RidgeCV) recovers it; fine-tuning every block on 60 rows fits the noise."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(),
                        nn.Linear(16, 1))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 10)).astype(np.float32)
    with torch.no_grad():
        Z = net[:4](torch.from_numpy(X)).numpy()
    y = Z @ rng.normal(size=16) + noise * rng.normal(size=400)
    return net, X, y


def test_auto_keeps_the_probe_where_fine_tuning_overfits():
    net, X, y = _linear_target_task(0)
    auto = FineTunedRegressor(model=net, random_state=0, max_epochs=40).fit(X[:60], y[:60])
    assert auto.get_params()["freeze_depth"] == "auto"  # the default, unchanged by fit
    assert auto.freeze_depth_ == 2  # both blocks frozen: the probe
    assert auto.freeze_depth_scores_["all"] > auto.freeze_depth_scores_[0]
    tuned = FineTunedRegressor(model=net, freeze_depth=0, random_state=0,
                               max_epochs=40).fit(X[:60], y[:60])
    assert auto.score(X[60:], y[60:]) > tuned.score(X[60:], y[60:]) + 0.02


def test_auto_fine_tunes_where_the_source_features_are_poor(digits, source_cnn):
    X, y = digits["X_target"][:300], digits["y_target"][:300]
    auto = FineTunedClassifier(model=source_cnn, random_state=0, **FAST).fit(X, y)
    assert auto.freeze_depth_ == 0
    assert auto.freeze_depth_scores_[0] > auto.freeze_depth_scores_["all"]
    assert not np.array_equal(auto.module_.blocks[0][0].weight.detach(),
                              source_cnn[0].weight.detach())  # the blocks trained


CANDIDATES = {"ft-low": {"freeze_depth": 0, "lr": 3e-3, "lr_schedule": "warmup_cosine"},
              "ft-high": {"freeze_depth": 0, "lr": 1e-2, "lr_schedule": "warmup_cosine"},
              "probe": {"freeze_depth": "all", "lr": 3e-3, "lr_schedule": "warmup_cosine"}}


def test_auto_is_cross_validation_then_the_refit_of_the_winner(digits, source_cnn):
    X, y = digits["X_target"][:120], digits["y_target"][:120]
    auto = FineTunedClassifier(model=source_cnn, random_state=3, **FAST).fit(X, y)
    seed = seed_from_random_state(3)
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    scores = {}
    for name, params in CANDIDATES.items():
        est = FineTunedClassifier(model=source_cnn, random_state=3, **params, **FAST)
        scores[name] = cross_val_score(est, X, y, cv=folds)
    assert auto.lr_scores_ == pytest.approx({3e-3: scores["ft-low"].mean(),
                                             1e-2: scores["ft-high"].mean()}, abs=1e-12)
    tuned = max(("ft-low", "ft-high"), key=lambda name: scores[name].mean())
    assert auto.freeze_depth_scores_ == pytest.approx(
        {0: scores[tuned].mean(), "all": scores["probe"].mean()}, abs=1e-12)
    gain = scores[tuned] - scores["probe"]  # fine-tuning only if it wins by a standard error
    best = tuned if gain.mean() > gain.std(ddof=1) / np.sqrt(3) else "probe"
    refit = FineTunedClassifier(model=source_cnn, random_state=3, **CANDIDATES[best],
                                **FAST).fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(X), refit.predict_proba(X))
    assert (auto.freeze_depth_, auto.lr_, auto.lr_schedule_) == (
        refit.freeze_depth_, refit.lr_, refit.lr_schedule_)
    assert auto.get_params()["lr"] == "auto"  # the parameter, unchanged by fit


def test_auto_lr_takes_the_higher_rate_where_the_source_must_move(digits, source_cnn):
    # the source CNN knows digits 0-4 only: on 5-9 fine-tuning at 1e-2 beats 3e-3 in
    # the folds, and the refit trains at that rate, warmed up and annealed
    X, y = digits["X_target"][:150], digits["y_target"][:150]
    auto = FineTunedClassifier(model=source_cnn, random_state=0, max_epochs=15,
                               device="cpu").fit(X, y)
    assert auto.lr_scores_[1e-2] > auto.lr_scores_[3e-3]
    assert (auto.freeze_depth_, auto.lr_, auto.lr_schedule_) == (0, 1e-2, "warmup_cosine")
    rates = [row["lr"] for row in auto.history_]
    assert rates[0] < 1e-2 / 2 and max(rates) == pytest.approx(1e-2)  # the warm-up


def test_auto_lr_with_a_set_depth_or_schedule(digits, source_cnn):
    X, y = digits["X_target"][:60], digits["y_target"][:60]
    fixed = FineTunedClassifier(model=source_cnn, freeze_depth=0, random_state=0,
                                **FAST).fit(X, y)
    # no folds: the lower rate, warmed up over a tenth of the epochs, then annealed
    assert fixed.lr_ == 3e-3 and fixed.lr_schedule_ == "warmup_cosine"
    assert not hasattr(fixed, "lr_scores_")
    rates = [row["lr"] for row in fixed.history_]
    assert rates[0] < 3e-3 and max(rates) == pytest.approx(3e-3) and rates[-1] < 3e-3 / 2
    # a schedule set by the user is kept; so is a numeric rate's constant one
    onecycle = FineTunedClassifier(model=source_cnn, freeze_depth=0, lr_schedule="onecycle",
                                   random_state=0, **FAST).fit(X, y)
    assert (onecycle.lr_, onecycle.lr_schedule_) == (3e-3, "onecycle")
    constant = FineTunedClassifier(model=source_cnn, freeze_depth=0, lr=3e-3, random_state=0,
                                   **FAST).fit(X, y)
    assert constant.lr_schedule_ is None and {row["lr"] for row in constant.history_} == {3e-3}
    # a numeric lr: the search is over the depth only, at that rate
    numeric = FineTunedClassifier(model=source_cnn, lr=2e-3, random_state=0,
                                  **FAST).fit(X, y)
    assert numeric.lr_ == 2e-3 and not hasattr(numeric, "lr_scores_")
    # the user's schedule is both rates' schedule
    cosine = FineTunedClassifier(model=source_cnn, lr_schedule="cosine", random_state=0,
                                 **FAST).fit(X, y)
    assert cosine.lr_schedule_ == "cosine" and set(cosine.lr_scores_) == {3e-3, 1e-2}
    with pytest.raises(ValueError, match="lr"):
        FineTunedClassifier(model=source_cnn, lr="automatic").fit(X, y)


def test_one_standard_error_rule_prefers_the_probe_unless_fine_tuning_clearly_wins():
    def results(fine_tune, probe):
        return {f"split{i}_test_score": np.array([f, p])
                for i, (f, p) in enumerate(zip(fine_tune, probe))}

    assert one_standard_error(results([0.9, 0.92, 0.91], [0.6, 0.62, 0.58])) == 0
    # a larger mean, but one fold of three says the opposite: within one standard error
    assert one_standard_error(results([0.9, 0.9, 0.7], [0.8, 0.8, 0.8])) == 1
    assert one_standard_error(results([0.8, 0.8], [0.8, 0.8])) == 1  # a tie: the probe
    assert one_standard_error(results([0.81, 0.81], [0.8, 0.8])) == 0  # no spread: any gain


def test_one_standard_error_rule_with_two_rates_takes_the_better_one():
    def results(*candidates):  # fine-tuning candidates, then the probe
        return {f"split{i}_test_score": np.array(fold)
                for i, fold in enumerate(zip(*candidates))}

    low, high, probe = [0.7, 0.72, 0.71], [0.9, 0.92, 0.91], [0.6, 0.62, 0.58]
    assert one_standard_error(results(low, high, probe)) == 1
    assert one_standard_error(results(high, low, probe)) == 0
    # the better rate still has to beat the probe by a standard error
    assert one_standard_error(results(low, [0.9, 0.9, 0.7], [0.8, 0.8, 0.8])) == 2


def test_auto_without_folds_fine_tunes(digits, source_cnn):
    X, y = digits["X_target"][:60], digits["y_target"][:60]
    surgical = FineTunedClassifier(model=source_cnn, train_blocks=[1], random_state=0,
                                   **FAST).fit(X, y)
    assert surgical.train_blocks_ == [1] and np.isnan(surgical.freeze_depth_scores_[0])
    one = np.flatnonzero(y == y[0])[1:]  # the first label's class keeps a single sample
    keep = np.setdiff1d(np.arange(len(y)), one)
    single = FineTunedClassifier(model=source_cnn, random_state=0, **FAST).fit(X[keep], y[keep])
    assert single.freeze_depth_ == 0 and list(single.freeze_depth_scores_) == [0]
    assert single.lr_ == 3e-3 and list(single.lr_scores_) == [3e-3]


def test_auto_in_a_search_with_sample_weights_and_clones(digits, source_cnn):
    X, y = digits["X_target"][:60], digits["y_target"][:60]
    w = np.where(y == 5, 3.0, 1.0)
    est = FineTunedClassifier(model=source_cnn, random_state=0, **{**FAST, "max_epochs": 2})
    search = GridSearchCV(est, {"alpha": [1e-3, 1e-1]}, cv=2).fit(X, y, sample_weight=w)
    assert search.best_estimator_.freeze_depth_ in (0, len(search.best_estimator_.blocks_))
    assert clone(search.best_estimator_).get_params()["freeze_depth"] == "auto"
    with pytest.raises(ValueError, match="freeze_depth"):
        FineTunedClassifier(model=source_cnn, freeze_depth="automatic").fit(X, y)
