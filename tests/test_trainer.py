"""The skorch-facing base of the estimators that train (``_trainer.py``).

A new estimator needs only the stages: ``TinyRegressor`` below is one, a linear
model trained through ``Trainer._make_net`` / ``Trainer._train``.
"""

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator
from skorch import NeuralNet
from torch import nn

from sktransfer._device import MixedPrecision
from sktransfer._net import BatchDataset, RollbackOnInterrupt
from sktransfer._trainer import Trainer, holdout_split, lr_scheduler


class _Net(RollbackOnInterrupt, MixedPrecision, NeuralNet):
    pass


class TinyRegressor(Trainer, BaseEstimator):
    _net_class = _Net

    def __init__(self, lr=0.05, max_epochs=30, batch_size=16, weight_decay=0.0,
                 early_stopping=False, validation_fraction=0.25, n_iter_no_change=3, tol=1e-4,
                 precision="32", verbose=0, net_kwargs=None):
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.precision = precision
        self.verbose = verbose
        self.net_kwargs = net_kwargs

    def _criterion(self):
        return nn.MSELoss

    def _divergence_advice(self):
        return " or scale y."

    def fit(self, X, y):
        dataset = BatchDataset(torch.as_tensor(X), torch.as_tensor(y).reshape(-1, 1))
        train_idx, valid_idx = self._validation_split(len(X), seed=0)
        torch.manual_seed(0)
        net = self._make_net(nn.Linear(X.shape[1], 1), dataset, train_idx, valid_idx, "cpu")
        self.net_ = net
        self.module_, self.history_ = self._train(net, dataset, train_idx, 0, "cpu",
                                                  "random initialisation")
        self.device_ = "cpu"
        return self


def data(n=64):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    return X, (X @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)


def test_a_subclass_trains_with_the_shared_callbacks():
    X, y = data()
    est = TinyRegressor().fit(X, y)
    losses = [row["train_loss"] for row in est.history_]
    assert len(losses) == 30 and losses[-1] < 0.1 * losses[0]
    names = [name for name, _ in est.net_.callbacks]
    assert names[:2] == ["sync_losses", "finite_loss"] and "early_stopping" not in names
    assert est.module_ is est.net_.module_ and not est.module_.training


def test_early_stopping_holds_out_a_validation_split_and_stops():
    X, y = data()
    est = TinyRegressor(early_stopping=True, max_epochs=200, lr=0.2).fit(X, y)
    assert all("valid_loss" in row for row in est.history_)
    assert len(est.history_) < 200
    assert est.net_.train_split is not None


def test_a_diverging_fit_names_the_epoch_the_rate_and_the_advice():
    X, y = data()
    with pytest.raises(FloatingPointError, match=r"The training loss became (nan|inf) at epoch "
                                                 r"\d+: the fit diverged\. Use a smaller lr "
                                                 r"\(now 1e\+06\) or scale y\."):
        TinyRegressor(lr=1e6).fit(X, y * 1e30)


def test_net_kwargs_are_checked_against_the_parameters():
    X, y = data()
    with pytest.raises(ValueError, match="controls through its parameter 'lr'"):
        TinyRegressor(net_kwargs={"optimizer__lr": 0.1}).fit(X, y)
    with pytest.raises(ValueError, match="sets itself"):
        TinyRegressor(net_kwargs={"iterator_train__drop_last": False}).fit(X, y)
    est = TinyRegressor(max_epochs=2, net_kwargs={"optimizer__amsgrad": True}).fit(X, y)
    assert est.net_.optimizer_.defaults["amsgrad"]


def test_a_last_batch_of_one_sample_is_dropped():
    X, y = data(33)
    est = TinyRegressor(max_epochs=1).fit(X, y)
    batches = est.net_.get_iterator(BatchDataset(torch.as_tensor(X), torch.as_tensor(y)),
                                    training=True)
    assert [len(Xb) for Xb, _ in batches] == [16, 16]


def test_holdout_split():
    train, valid = holdout_split(20, 0.25, seed=0)
    assert len(valid) == 5 and np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
    assert sorted(np.r_[train, valid].tolist()) == list(range(20))
    labels = np.repeat([0, 1], [16, 4])
    _, valid = holdout_split(20, 0.25, seed=0, stratify=labels)
    assert np.bincount(labels[valid]).tolist() == [4, 1]
    with pytest.raises(ValueError, match=r"early_stopping=True cannot hold out "
                                         r"validation_fraction=0\.01 of 20 rows.*pass more rows"):
        holdout_split(20, 0.01, seed=0, stratify=labels, unit="rows")


def _rates(callback, steps, lr=0.01):
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=lr)
    scheduler = callback.policy(optimizer, **callback.kwargs, last_epoch=-1)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(out)


def test_epoch_schedules():
    epochs = 10
    cosine = _rates(lr_scheduler("cosine", epochs, 5), epochs)
    np.testing.assert_allclose(cosine, 0.005 * (1 + np.cos(np.pi * np.arange(epochs) / epochs)))
    warm = _rates(lr_scheduler("warmup_cosine", epochs, 5), epochs)  # warm-up: 1 epoch
    np.testing.assert_allclose(warm[0], 0.01 / 2)
    np.testing.assert_allclose(warm[1:], 0.005 * (1 + np.cos(np.pi * np.arange(9) / 9)))


def test_one_cycle_per_batch():
    callback = lr_scheduler("onecycle", 4, 25)
    assert callback.step_every == "batch"
    rates = _rates(callback, 100)
    assert rates[0] == pytest.approx(0.01 / 25)
    assert rates.max() == pytest.approx(0.01) and 25 <= rates.argmax() <= 30
    assert rates[-1] == pytest.approx(1e-6)


# -- max_epochs="auto": a budget in optimisation steps ----------------------------------
def test_auto_epochs_aims_at_500_steps_and_at_least_10_epochs():
    from sktransfer._trainer import auto_epochs

    assert auto_epochs(25, 32) == 500          # one step per epoch
    assert auto_epochs(33, 32) == 500          # the last batch of one sample is dropped
    assert auto_epochs(300, 32) == 50          # 10 steps per epoch
    assert auto_epochs(10_000, 32) == 10       # a large table: 10 passes


def test_the_auto_budget_gives_the_promised_number_of_steps():
    from sktransfer import FineTunedClassifier
    from tests.conftest import tiny_mlp

    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = FineTunedClassifier(model=tiny_mlp(), batch_size=8, random_state=0,
                              device="cpu").fit(X, y)
    steps = sum(row["steps"] for row in clf.history_)
    assert (clf.max_epochs_, clf.n_iter_, steps) == (100, 100, 500)
    fixed = FineTunedClassifier(model=tiny_mlp(), batch_size=8, max_epochs=3,
                                random_state=0, device="cpu").fit(X, y)
    assert (fixed.max_epochs_, fixed.n_iter_) == (3, 3)


def test_auto_lr_at_a_set_depth_fine_tunes_for_three_times_the_auto_steps(monkeypatch):
    from sklearn.model_selection import GridSearchCV

    from sktransfer import FineTunedClassifier
    from tests.conftest import tiny_mlp

    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(int)  # far from linear in the random features

    def fit(**params):
        return FineTunedClassifier(model=tiny_mlp(), batch_size=8, random_state=0,
                                   device="cpu", **params).fit(X, y)

    def steps(clf):
        return sum(row["steps"] for row in clf.history_)

    # lr="auto" where pretrained blocks train at a set depth: 3e-3 for 1,500 steps
    assert steps(fit(freeze_depth=0)) == steps(fit(train_blocks=[1])) == 1500
    # a head alone, a numeric rate: the plain 500
    assert steps(fit(freeze_depth="all")) == steps(fit(freeze_depth=0, lr=3e-3)) == 500
    # freeze_depth="auto": its candidates spell lr="auto"'s rates as numbers (500 steps
    # each, as above), and so does the refit of the winner
    searches = []
    search_fit = GridSearchCV.fit

    def record(search, *args, **kwargs):
        searches.append(search)
        return search_fit(search, *args, **kwargs)

    monkeypatch.setattr(GridSearchCV, "fit", record)
    auto = fit()
    (search,) = searches
    assert [p["lr"] for p in search.cv_results_["params"]] == [3e-3, 1e-2, 3e-3]
    assert auto.freeze_depth_ == 0 and steps(auto) == 500


def test_early_stopping_with_the_auto_budget_is_patient_for_a_tenth_of_it():
    from sktransfer import FineTunedClassifier
    from tests.conftest import tiny_mlp

    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.randint(0, 2, size=60)  # noise: the validation loss soon stops improving
    clf = FineTunedClassifier(model=tiny_mlp(), batch_size=8, early_stopping=True,
                              validation_fraction=0.2, n_iter_no_change=2, random_state=0,
                              device="cpu").fit(X, y)
    patience = clf.max_epochs_ // 10
    assert patience > 2 and patience < clf.n_iter_ < clf.max_epochs_
    # no epoch of the last `patience` ones improved on the best loss before them
    losses = [row["valid_loss"] for row in clf.history_]
    assert min(losses[-patience:]) >= min(losses[:-patience]) * (1 - 1e-4)
