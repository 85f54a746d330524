"""FineTunedClassifier / FineTunedRegressor: freezing, penalties, transfer, sklearn tools."""

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, split_model

from .conftest import InterruptAt, few_labels, make_cnn

CPU = {"device": "cpu"}


def bn_cnn(n_classes=5):
    """Sequential blocks: conv | bn-relu | conv | bn-relu-pool-flatten | linear-relu | head."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(4), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32), nn.ReLU(),
        nn.Linear(32, n_classes),
    )


@pytest.fixture(scope="module")
def bn_source(digits):
    from .conftest import train_plain

    net = bn_cnn()
    return train_plain(net, digits["X_source"][:1000], digits["y_source"][:1000], epochs=3)


def block_states(module):
    """Per block, a copy of its state dict (parameters and BatchNorm buffers)."""
    return [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in module.blocks]


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- freezing ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_frozen_blocks_bit_identical_and_bn_stats_fixed(bn_source, digits, depth):
    before = block_states(split_model(copy.deepcopy(bn_source)))
    X, y = digits["X_target"][:200], digits["y_target"][:200]
    clf = FineTunedClassifier(model=bn_source, freeze_depth=depth, max_epochs=3, lr=1e-2,
                              backbone_lr_scale=1.0, random_state=0, **CPU).fit(X, y)
    after = block_states(clf.module_)
    assert len(after) == 5
    for i in range(depth):
        assert same_state(before[i], after[i]), f"frozen block {i} changed"
    for i in range(depth, 5):
        if before[i]:
            assert not same_state(before[i], after[i]), f"unfrozen block {i} did not move"
    frozen = [p for b in clf.module_.blocks[:depth] for p in b.parameters()]
    assert all(not p.requires_grad for p in frozen)


def test_last_batch_of_one_sample_does_not_break_batchnorm(bn_source, digits):
    X, y = digits["X_target"][:33], digits["y_target"][:33]  # 33 = 32 + 1
    est = FineTunedClassifier(model=bn_source, batch_size=32, max_epochs=2, random_state=0,
                              **CPU).fit(X, y)
    assert est.n_iter_ == 2


def test_freeze_all_trains_only_the_head(bn_source, digits):
    before = block_states(split_model(copy.deepcopy(bn_source)))
    clf = FineTunedClassifier(model=bn_source, freeze_depth="all", max_epochs=3,
                              random_state=0, **CPU)
    clf.fit(digits["X_target"][:150], digits["y_target"][:150])
    assert clf.freeze_depth_ == 5
    assert all(same_state(b, a) for b, a in zip(before, block_states(clf.module_)))


def test_user_model_never_mutated(bn_source, digits):
    state = copy.deepcopy(bn_source.state_dict())
    flags = [p.requires_grad for p in bn_source.parameters()]
    training = bn_source.training
    FineTunedClassifier(model=bn_source, freeze_depth=2, max_epochs=2, random_state=0,
                        **CPU).fit(digits["X_target"][:100], digits["y_target"][:100])
    assert same_state(state, bn_source.state_dict())
    assert flags == [p.requires_grad for p in bn_source.parameters()]
    assert bn_source.training == training
    assert isinstance(bn_source[-1], nn.Linear) and bn_source[-1].out_features == 5


def test_optimizer_groups_leave_frozen_out_and_scale_backbone(bn_source, digits):
    seen = {}

    class Spy(Callback):
        def on_train_begin(self, net, **kwargs):
            seen["groups"] = [
                (g["lr"], {id(p) for p in g["params"]}) for g in net.optimizer_.param_groups
            ]
            seen["module"] = net.module_

    clf = FineTunedClassifier(model=bn_source, freeze_depth=2, lr=0.01, backbone_lr_scale=0.1,
                              penalty="l2_sp", max_epochs=1, random_state=0,
                              net_kwargs={"callbacks": [Spy()]}, **CPU)
    clf.fit(digits["X_target"][:64], digits["y_target"][:64])
    module = seen["module"]
    head_ids = {id(p) for p in module.head.parameters()}
    backbone_ids = {id(p) for b in module.blocks[2:] for p in b.parameters()}
    frozen_ids = {id(p) for b in module.blocks[:2] for p in b.parameters()}
    groups = dict((frozenset(ids), lr) for lr, ids in seen["groups"])
    assert groups[frozenset(head_ids)] == pytest.approx(0.01)
    assert groups[frozenset(backbone_ids)] == pytest.approx(0.001)
    assert not frozen_ids & set().union(*[ids for _, ids in seen["groups"]])


# -- every fit starts from the pretrained weights ------------------------------


def test_refit_starts_again_from_pretrained(source_cnn, digits):
    X, y = digits["X_target"], digits["y_target"]
    params = {"model": source_cnn, "max_epochs": 3, "random_state": 0, **CPU}
    first = FineTunedClassifier(**params).fit(X[:100], y[:100]).predict_proba(X[300:])
    est = FineTunedClassifier(**params).fit(X[100:200], y[100:200])
    est.fit(X[:100], y[:100])
    np.testing.assert_array_equal(est.predict_proba(X[300:]), first)


def test_same_seed_same_predictions_and_different_seed_differs(source_cnn, digits):
    X, y = digits["X_target"][:150], digits["y_target"][:150]
    make = lambda s: FineTunedClassifier(model=source_cnn, max_epochs=3, dropout=0.2,  # noqa
                                         random_state=s, **CPU).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(make(3), make(3))
    assert not np.array_equal(make(3), make(4))


# -- penalties -------------------------------------------------------------------


def _distance_to_source(est, source):
    ref = split_model(copy.deepcopy(source))
    return sum(
        (p - q).pow(2).sum().item()
        for b_new, b_ref in zip(est.module_.blocks, ref.blocks)
        for p, q in zip(b_new.parameters(), b_ref.parameters())
    ) ** 0.5


def test_l2_sp_pulls_towards_pretrained(source_cnn, digits):
    X, y = digits["X_target"][:200], digits["y_target"][:200]
    dist = []
    for alpha in [0.0, 1.0, 100.0]:
        est = FineTunedClassifier(model=source_cnn, freeze_depth=0, penalty="l2_sp", alpha=alpha,
                                  lr=3e-3,
                                  backbone_lr_scale=1.0, max_epochs=8, random_state=0, **CPU)
        dist.append(_distance_to_source(est.fit(X, y), source_cnn))
    assert dist[0] > dist[1] > dist[2] > 0


def test_alpha_zero_equals_no_penalty(source_cnn, digits):
    X, y = digits["X_target"][:150], digits["y_target"][:150]
    probas = [
        FineTunedClassifier(model=source_cnn, penalty=p, alpha=0.0, max_epochs=3,
                            random_state=0, **CPU).fit(X, y).predict_proba(X)
        for p in (None, "l2_sp", "l2", "l1")
    ]
    for proba in probas[1:]:
        np.testing.assert_array_equal(probas[0], proba)


def test_l2_and_l1_shrink_weights(source_cnn, digits):
    X, y = digits["X_target"][:150], digits["y_target"][:150]

    def norm(penalty, alpha, p):
        est = FineTunedClassifier(model=source_cnn, penalty=penalty, alpha=alpha, lr=3e-3,
                                  backbone_lr_scale=1.0, max_epochs=5, random_state=0, **CPU)
        params = [q for q in est.fit(X, y).module_.parameters()]
        return sum(q.abs().pow(p).sum().item() for q in params)

    assert norm("l2", 1.0, 2) < norm(None, 0.0, 2)
    assert norm("l1", 0.1, 1) < norm(None, 0.0, 1)


def test_penalty_only_in_training_loss(source_cnn, digits):
    X, y = digits["X_target"][:200], digits["y_target"][:200]
    est = FineTunedClassifier(model=source_cnn, freeze_depth=0, penalty="l2", alpha=10.0,
                              max_epochs=2,
                              early_stopping=True, validation_fraction=0.25, random_state=0,
                              **CPU).fit(X, y)
    first = est.history_[0]
    # R = 1/2 ||theta||^2 of the whole net is large: it shows in train_loss only
    assert first["train_loss"] > 50
    assert first["valid_loss"] < 10


# -- heads -----------------------------------------------------------------------


def test_new_head_sized_from_y_and_mlp_head(source_cnn, digits):
    X, y = digits["X_target"][:120], digits["y_target"][:120]
    y3 = y % 3
    est = FineTunedClassifier(model=source_cnn, head_hidden_sizes=(16,), dropout=0.1,
                              max_epochs=1, random_state=0, **CPU).fit(X, y3)
    linears = [m for m in est.module_.head.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [16, 3]
    assert est.predict_proba(X).shape == (120, 3)


def test_reuse_head(source_cnn, digits):
    X, y = digits["X_target"][:120], digits["y_target"][:120]
    est = FineTunedClassifier(model=source_cnn, reuse_head=True, freeze_depth="all", lr=0.0 + 1e-12,
                              penalty=None, max_epochs=1, random_state=0, **CPU).fit(X, y)
    torch.testing.assert_close(est.module_.head.weight, source_cnn[-1].weight)
    with pytest.raises(ValueError, match="reuse_head=True needs the pretrained head to output 3"):
        FineTunedClassifier(model=source_cnn, reuse_head=True, max_epochs=1, **CPU).fit(
            X, y % 3)


# -- labels, targets, inputs ------------------------------------------------------


@pytest.mark.parametrize("kind", ["str", "bool", "int"])
def test_any_labels(source_cnn, digits, kind):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    labels = {"str": np.where(y > 7, "high", "low"), "bool": y > 7, "int": y * 10}[kind]
    est = FineTunedClassifier(model=source_cnn, max_epochs=2, random_state=0, **CPU)
    est.fit(X, labels)
    assert set(est.classes_) == set(np.unique(labels))
    assert set(est.predict(X)) <= set(est.classes_)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_regressor_1d_and_2d_targets(tabular_source):
    X, net = tabular_source["X_source"][:300], tabular_source["net"]
    y = tabular_source["y_source"][:300]
    reg = FineTunedRegressor(model=net, max_epochs=5, random_state=0, **CPU)
    assert reg.fit(X, y[:, 0]).predict(X).shape == (300,)
    assert reg.n_outputs_ == 1
    reg.fit(X, y[:, :3])
    assert reg.predict(X).shape == (300, 3) and reg.n_outputs_ == 3
    # the 1-D fit learns the 1-D target (no (n,) vs (n, 1) broadcasting)
    reg = FineTunedRegressor(model=net, max_epochs=30, lr=3e-3, random_state=0, **CPU)
    assert reg.fit(X, y[:, 0]).score(X, y[:, 0]) > 0.5


def test_dataframe_input(tabular_source):
    X = pd.DataFrame(tabular_source["X_target"][:200],
                     columns=[f"c{i}" for i in range(20)])
    y = tabular_source["y_target"][:200]
    est = FineTunedClassifier(model=tabular_source["net"], max_epochs=3, random_state=0,
                              **CPU).fit(X, y)
    assert list(est.feature_names_in_) == list(X.columns)
    with pytest.warns(UserWarning, match="feature names"):
        from_array = est.predict(X.to_numpy())
    np.testing.assert_array_equal(est.predict(X), from_array)


def test_early_stopping_stops_and_records_valid_loss(source_cnn, digits):
    X, y = digits["X_target"][:300], digits["y_target"][:300]
    est = FineTunedClassifier(model=source_cnn, early_stopping=True, n_iter_no_change=2,
                              lr=3e-2, max_epochs=200, random_state=0, **CPU).fit(X, y)
    assert est.n_iter_ < 200
    assert all("valid_loss" in row and "train_loss" in row for row in est.history_)
    assert [row["epoch"] for row in est.history_] == list(range(1, est.n_iter_ + 1))


def test_early_stopping_restores_the_best_epoch(source_cnn, digits):
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    from sktransfer._base import seed_from_random_state

    X, y = digits["X_target"][:300], digits["y_target"][:300]
    est = FineTunedClassifier(model=source_cnn, early_stopping=True, n_iter_no_change=3,
                              validation_fraction=0.2, lr=5e-2, max_epochs=60,
                              random_state=0, **CPU).fit(X, y)
    valid_losses = [row["valid_loss"] for row in est.history_]
    assert np.argmin(valid_losses) < len(valid_losses) - 1  # it stopped after the best
    # the same split the estimator made (seeded by random_state)
    _, valid_idx = train_test_split(np.arange(300), test_size=0.2, stratify=y,
                                    random_state=seed_from_random_state(0))
    restored = log_loss(y[valid_idx], est.predict_proba(X[valid_idx]), labels=est.classes_)
    assert restored == pytest.approx(min(valid_losses), rel=1e-4)


def test_sgd_with_momentum(source_cnn, digits):
    seen = {}

    class Spy(Callback):
        def on_train_begin(self, net, **kwargs):
            seen["opt"] = net.optimizer_

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    est = FineTunedClassifier(model=source_cnn, freeze_depth=0, optimizer="sgd", momentum=0.8,
                              lr=0.05,
                              weight_decay=1e-4, max_epochs=5, random_state=0,
                              net_kwargs={"callbacks": [Spy()]}, **CPU).fit(X, y)
    assert isinstance(seen["opt"], torch.optim.SGD)
    assert {g["momentum"] for g in seen["opt"].param_groups} == {0.8}
    assert {g["weight_decay"] for g in seen["opt"].param_groups} == {1e-4}
    assert est.history_[-1]["train_loss"] < est.history_[0]["train_loss"]


def test_net_kwargs_callbacks_add_to_ours(tabular_source):
    calls = []

    class Count(Callback):
        def on_epoch_begin(self, net, **kwargs):
            calls.append(len(net.history))

    X, y = tabular_source["X_source"][:100], tabular_source["y_source"][:100, 0] * 1e30
    est = FineTunedRegressor(model=tabular_source["net"], lr=10.0, max_epochs=3,
                             net_kwargs={"callbacks": [Count()]}, **CPU)
    # our divergence check still runs next to the user's callback
    with pytest.raises(FloatingPointError, match="smaller lr"):
        est.fit(X, y)
    assert calls


@pytest.mark.parametrize("net_kwargs, message", [
    ({"lr": 0.1}, "controls through its parameter 'lr': pass lr=..."),
    ({"max_epochs": 3}, "parameter 'max_epochs'"),
    ({"optimizer__weight_decay": 1.0}, "parameter 'weight_decay'"),
    ({"module__width": 4}, "drop the pretrained weights"),
    ({"train_split": None}, "'train_split', which FineTunedRegressor sets itself"),
    ({"iterator_train__collate_fn": None}, "sets itself"),
    ({"max_epoch": 3}, "'max_epoch', which is not an argument of skorch's NeuralNet"),
    ({"iterator_train__num_wrkers": 2}, "DataLoader takes no argument 'num_wrkers'"),
    ({"optimizer__bettas": (0.9, 0.99)}, "AdamW takes no argument 'bettas'"),
    ({"criterion__deltta": 1.0}, "MSELoss takes no argument 'deltta'"),
    ({"criterion": nn.HuberLoss, "criterion__deltta": 1.0},
     "HuberLoss takes no argument 'deltta'"),
])
def test_net_kwargs_never_override_parameters_silently(tabular_source, net_kwargs, message):
    X, y = tabular_source["X_source"][:40], tabular_source["y_source"][:40, 0]
    est = FineTunedRegressor(model=tabular_source["net"], max_epochs=1, net_kwargs=net_kwargs,
                             **CPU)
    with pytest.raises(ValueError, match=message):
        est.fit(X, y)


def test_net_kwargs_configure_the_criterion_and_the_optimizer(tabular_source):
    X, y = tabular_source["X_source"][:200], tabular_source["y_source"][:200, 0] * 10
    kw = dict(model=tabular_source["net"], max_epochs=2, random_state=0, penalty=None, **CPU)
    mse = FineTunedRegressor(**kw).fit(X, y)
    huber = FineTunedRegressor(**kw, net_kwargs={"criterion": nn.HuberLoss,
                                                 "criterion__delta": 0.5}).fit(X, y)
    # the Huber loss of the same first-epoch errors is far smaller than their MSE
    assert huber.history_[0]["train_loss"] < 0.5 * mse.history_[0]["train_loss"]
    betas = FineTunedRegressor(**kw, net_kwargs={"optimizer__betas": (0.5, 0.9)}).fit(X, y)
    assert not np.array_equal(betas.predict(X), mse.predict(X))


def test_default_split_in_wrong_order_names_split_model(digits):
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 5)  # declared first, used last
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU())

        def forward(self, x):
            return self.head(self.body(x))

    with pytest.raises(ValueError, match="split_model"):
        FineTunedClassifier(model=Swapped(), max_epochs=1, **CPU).fit(
            digits["X_target"][:20], digits["y_target"][:20])
    with pytest.raises(ValueError, match="cannot process X"):  # a real layout problem
        FineTunedClassifier(model=Swapped(), max_epochs=1, **CPU).fit(
            np.zeros((20, 7), np.float32), digits["y_target"][:20])


def test_verbose_prints_epoch_table(source_cnn, digits, capsys):
    FineTunedClassifier(model=source_cnn, max_epochs=2, verbose=1, random_state=0,
                        **CPU).fit(digits["X_target"][:64], digits["y_target"][:64])
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out
    FineTunedClassifier(model=source_cnn, max_epochs=2, verbose=0, random_state=0,
                        **CPU).fit(digits["X_target"][:64], digits["y_target"][:64])
    assert capsys.readouterr().out == ""


# -- sklearn model selection --------------------------------------------------------


def test_grid_search_pipeline_freeze_depth_by_alpha(tabular_source):
    X, y = tabular_source["X_target"][:240], tabular_source["y_target"][:240]
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()),
                  ("net", FineTunedClassifier(model=tabular_source["net"], penalty="l2_sp",
                                              max_epochs=5, random_state=0, **CPU))]),
        {"net__freeze_depth": [0, 1, "all"], "net__alpha": [1e-4, 1.0]},
        cv=3, n_jobs=2,
    )
    search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 6 and np.all(np.isfinite(scores))
    # the refitted best pipeline holds a network frozen as its best parameters say
    best = search.best_estimator_.named_steps["net"]
    assert best.freeze_depth_ == {0: 0, 1: 1, "all": 2}[search.best_params_["net__freeze_depth"]]
    assert best.alpha == search.best_params_["net__alpha"]


def test_cross_val_score_regressor(tabular_source):
    X, y = tabular_source["X_source"][:300], tabular_source["y_source"][:300, 0]
    scores = cross_val_score(
        FineTunedRegressor(model=tabular_source["net"], max_epochs=5, random_state=0, **CPU),
        X, y, cv=3)
    assert np.all(np.isfinite(scores))


def test_clone_shares_the_read_only_pretrained_module(source_cnn):
    est = FineTunedClassifier(model=source_cnn, alpha=0.5)
    twin = clone(est)
    assert twin.model is source_cnn and twin.alpha == 0.5


def test_pickle_round_trip(source_cnn, digits):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    est = FineTunedClassifier(model=source_cnn, max_epochs=2, random_state=0, **CPU).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))


# -- chaining: source estimator -> target estimator ----------------------------------


def test_chaining_source_regressor_to_target_classifier(tabular_source):
    Xs, ys = tabular_source["X_source"], tabular_source["y_source"]
    source = FineTunedRegressor(
        model=lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32),
                                    nn.ReLU(), nn.Linear(32, 4)),
        penalty=None, lr=3e-3, backbone_lr_scale=1.0, max_epochs=15, random_state=0, **CPU,
    ).fit(Xs, ys)
    source_state = copy.deepcopy(source.module_.state_dict())
    Xt, yt = tabular_source["X_target"][:200], tabular_source["y_target"][:200]
    target = FineTunedClassifier(model=source, freeze_depth=1, max_epochs=3, random_state=0,
                                 **CPU).fit(Xt, yt)
    assert target.blocks_ == source.blocks_
    # the first block is the source's fine-tuned block, frozen; the source is untouched
    torch.testing.assert_close(target.module_.blocks[0][0].weight,
                               source.module_.blocks[0][0].weight, rtol=0, atol=0)
    assert same_state(source_state, source.module_.state_dict())
    # a fitted source survives clone (GridSearchCV clones the target estimator)
    search = GridSearchCV(target, {"freeze_depth": [1, 2]}, cv=2).fit(Xt, yt)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_grid_search_over_fitted_sources(tabular_source):
    """Grid values are cloned, and a clone is unfitted: FrozenEstimator keeps each
    fitted source as it is, and the unwrapped form says so."""
    from sklearn.exceptions import NotFittedError
    from sklearn.frozen import FrozenEstimator

    Xs, ys = tabular_source["X_source"][:600], tabular_source["y_source"][:600]
    sources = [FineTunedRegressor(
        model=lambda: nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)),
        penalty=None, backbone_lr_scale=1.0, max_epochs=3, random_state=seed, **CPU,
    ).fit(Xs, ys) for seed in (0, 1)]
    Xt, yt = tabular_source["X_target"][:120], tabular_source["y_target"][:120]
    target = FineTunedClassifier(model=sources[0], max_epochs=2, random_state=0, **CPU)
    search = GridSearchCV(target, {"model": [FrozenEstimator(s) for s in sources]}, cv=2,
                          error_score="raise").fit(Xt, yt)
    for i, source in enumerate(sources):
        direct = cross_val_score(clone(target).set_params(model=source), Xt, yt, cv=2)
        np.testing.assert_array_equal(
            [search.cv_results_[f"split{k}_test_score"][i] for k in range(2)], direct)
    with pytest.raises(NotFittedError, match=r"unfitted FineTunedRegressor.*FrozenEstimator"):
        GridSearchCV(target, {"model": sources}, cv=2, error_score="raise").fit(Xt, yt)


# -- the real transfer test ---------------------------------------------------------


def test_fine_tuning_beats_training_from_scratch(source_cnn, digits):
    """Digits 0-4 -> 5-9 with 10 labels per class, averaged over 3 seeds."""
    gains = []
    for seed in range(3):
        X, y, X_test, y_test = few_labels(digits["X_target"], digits["y_target"], 10, seed)
        common = {"max_epochs": 40, "lr": 3e-3, "batch_size": 16, "random_state": seed,
                  "backbone_lr_scale": 1.0, **CPU}
        scratch = FineTunedClassifier(model=lambda: make_cnn(5), penalty=None,
                                      **common).fit(X, y)
        tuned = FineTunedClassifier(model=source_cnn, penalty="l2_sp", alpha=1e-2,
                                    **common).fit(X, y)
        gains.append(tuned.score(X_test, y_test) - scratch.score(X_test, y_test))
    assert np.mean(gains) > 0.03, gains


def test_feature_baseline_sanity(source_cnn, digits):
    """The fine-tuned model is at least as good as a linear model on its frozen features."""
    from sktransfer import FeatureExtractorTransformer

    X, y, X_test, y_test = few_labels(digits["X_target"], digits["y_target"], 10, 0)
    fx = Pipeline([("fx", FeatureExtractorTransformer(model=source_cnn, **CPU)),
                   ("lr", LogisticRegression(max_iter=2000))]).fit(X, y)
    tuned = FineTunedClassifier(model=source_cnn, freeze_depth="all", max_epochs=60, lr=1e-2,
                                batch_size=16, random_state=0, **CPU).fit(X, y)
    assert tuned.score(X_test, y_test) > fx.score(X_test, y_test) - 0.1


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_rejected(source_cnn, digits, bad):
    X = digits["X_target"][:20].copy()
    X[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        FineTunedClassifier(model=source_cnn, max_epochs=1, **CPU).fit(X, digits["y_target"][:20])


def test_one_class_rejected(source_cnn, digits):
    with pytest.raises(ValueError, match="single class"):
        FineTunedClassifier(model=source_cnn, **CPU).fit(digits["X_target"][:10], np.ones(10))


def test_wrong_shape_at_predict(tabular_source, source_cnn, digits):
    est = FineTunedClassifier(model=tabular_source["net"], max_epochs=1, **CPU).fit(
        tabular_source["X_target"][:50], tabular_source["y_target"][:50])
    with pytest.raises(ValueError, match="X has 19 features"):
        est.predict(tabular_source["X_target"][:5, :19])
    img = FineTunedClassifier(model=source_cnn, max_epochs=1, **CPU).fit(
        digits["X_target"][:20], digits["y_target"][:20])
    with pytest.raises(ValueError, match=r"\(1, 12, 12\)"):
        img.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_model_that_does_not_fit_the_data(tabular_source, digits):
    with pytest.raises(ValueError, match="cannot process X"):
        FineTunedClassifier(model=tabular_source["net"], **CPU).fit(
            digits["X_target"][:20].reshape(20, -1), digits["y_target"][:20])


@pytest.mark.parametrize("params, error, match", [
    ({"freeze_depth": 6}, ValueError, "model has 3 blocks"),
    ({"freeze_depth": -1}, ValueError, r"'freeze_depth' .* must be an int in the range \[0, inf"),
    ({"freeze_depth": "some"}, ValueError,
     r"'freeze_depth' .* or a str among \{'a(ll|uto)', 'a(ll|uto)'\}"),
    ({"freeze_depth": 1.5}, TypeError, r"'freeze_depth' .*Got 1\.5 instead"),
    ({"freeze_depth": True}, TypeError, "freeze_depth must be an int or 'all', got bool"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"penalty": "l3"}, ValueError, "penalty"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"head_hidden_sizes": (0,)}, ValueError, "head_hidden_sizes"),
    ({"device": "tpu"}, ValueError, "device"),
])
def test_bad_hyperparameters(source_cnn, digits, params, error, match):
    est = FineTunedClassifier(model=source_cnn, max_epochs=1, **{**CPU, **params})
    with pytest.raises(error, match=match):
        est.fit(digits["X_target"][:20], digits["y_target"][:20])


def test_early_stopping_too_few_samples_per_class(source_cnn, digits):
    X, y, _, _ = few_labels(digits["X_target"], digits["y_target"], 2, 0)
    with pytest.raises(ValueError, match="validation_fraction"):
        FineTunedClassifier(model=source_cnn, early_stopping=True, **CPU).fit(X, y)


def test_diverging_fit_names_epoch_and_lr(tabular_source):
    X, y = tabular_source["X_source"][:200], tabular_source["y_source"][:200, 0] * 1e30
    with pytest.raises(FloatingPointError, match="epoch 1.*smaller lr"):
        FineTunedRegressor(model=tabular_source["net"], lr=10.0, max_epochs=3, **CPU).fit(X, y)


def test_random_state_seeds_a_factory_built_model(digits):
    X, y = digits["X_target"][:80], digits["y_target"][:80]
    probas = [
        FineTunedClassifier(model=lambda: make_cnn(5), max_epochs=2, random_state=s,
                            **CPU).fit(X, y).predict_proba(X)
        for s in (7, 7, 8)
    ]
    np.testing.assert_array_equal(probas[0], probas[1])
    assert not np.allclose(probas[0], probas[2])


def test_history_separates_data_loss_from_penalty(source_cnn, digits):
    X, y = digits["X_target"][:100], digits["y_target"][:100]
    est = FineTunedClassifier(model=source_cnn, penalty="l2", alpha=1.0, max_epochs=2,
                              random_state=0, **CPU).fit(X, y)
    for row in est.history_:
        assert row["train_data_loss"] < row["train_loss"]
    est = FineTunedClassifier(model=source_cnn, penalty=None, max_epochs=2,
                              random_state=0, **CPU).fit(X, y)
    for row in est.history_:
        assert row["train_data_loss"] == pytest.approx(row["train_loss"])


def test_list_blocks_of_a_fitted_estimator_knows_its_input(source_cnn, digits):
    from sktransfer import list_blocks

    est = FineTunedClassifier(model=source_cnn, max_epochs=1, random_state=0, **CPU).fit(
        digits["X_target"][:40], digits["y_target"][:40])
    blocks = list_blocks(est)
    assert list(blocks["output_shape"]) == [(16, 6, 6), (288,), (64,)]


def test_keyboard_interrupt_keeps_the_last_completed_epoch(source_cnn, digits):
    X, y = digits["X_target"][:128], digits["y_target"][:128]
    params = dict(model=source_cnn, max_epochs=5, batch_size=32, random_state=0, **CPU)
    two_epochs = FineTunedClassifier(**{**params, "max_epochs": 2}).fit(X, y)
    with pytest.warns(UserWarning, match="during epoch 3.*weights of epoch 2"):
        stopped = FineTunedClassifier(
            **params, net_kwargs={"callbacks": [InterruptAt(3, 2)]}).fit(X, y)
    assert stopped.n_iter_ == 2
    np.testing.assert_array_equal(stopped.predict_proba(X), two_epochs.predict_proba(X))


@pytest.mark.parametrize("name, depth", [("source_cnn", 0), ("bn_source", 0),
                                         ("bn_source", 2)])
def test_keyboard_interrupt_in_first_epoch_keeps_the_start(name, depth, digits, request):
    source = request.getfixturevalue(name)  # with BatchNorm: running statistics restored
    # (depth 2: the first BatchNorm, not run on kept outputs, left out of the snapshot)
    X, y = digits["X_target"][:128], digits["y_target"][:128]
    with pytest.warns(UserWarning, match="no epoch was completed"):
        est = FineTunedClassifier(model=source, freeze_depth=depth, max_epochs=3, batch_size=32,
                                  random_state=0, net_kwargs={"callbacks": [InterruptAt(1, 3)]},
                                  **CPU).fit(X, y)
    assert est.n_iter_ == 0
    before = split_model(copy.deepcopy(source))
    for b_new, b_ref in zip(est.module_.blocks, before.blocks):
        assert same_state(b_new.state_dict(), b_ref.state_dict())


def test_same_random_state_same_search_results_for_any_n_jobs(tabular_source):
    X, y = tabular_source["X_target"][:150], tabular_source["y_target"][:150]
    est = FineTunedClassifier(model=tabular_source["net"], max_epochs=3, random_state=0, **CPU)
    grid = {"freeze_depth": [0, "all"], "alpha": [1e-3, 1.0]}
    results = [
        GridSearchCV(est, grid, cv=2, n_jobs=n_jobs, scoring="neg_log_loss").fit(X, y)
        for n_jobs in (1, 2)
    ]
    np.testing.assert_allclose(results[0].cv_results_["mean_test_score"],
                               results[1].cv_results_["mean_test_score"], rtol=1e-5)
    assert results[0].best_params_ == results[1].best_params_


@pytest.mark.parametrize("params", [
    {"penalty": "l2_sp", "alpha": 0.3},
    {"penalty": "l2", "alpha": 0.3},
    {"penalty": "l1", "alpha": 0.01},
    {"penalty": "l2_sp", "alpha": 0.3, "unfreeze_every": 1, "freeze_depth": 0},
    {"penalty": "l2_sp", "alpha": 0.3, "freeze_depth": 1, "optimizer": "sgd"},
])
def test_penalty_gradient_added_directly_equals_autograd(source_cnn, digits, monkeypatch,
                                                         params):
    """The fast path (R's gradient added after backward, no graph) takes the same
    steps as differentiating ``loss + alpha * R`` with autograd."""
    from sktransfer._net import TransferNet

    X, y = digits["X_target"][:96], digits["y_target"][:96]
    kw = dict(model=source_cnn, max_epochs=3, lr=3e-3, backbone_lr_scale=1.0,
              random_state=0, **CPU, **params)
    direct = FineTunedClassifier(**kw).fit(X, y)
    monkeypatch.setattr(TransferNet, "_penalty_by_autograd", True)
    graph = FineTunedClassifier(**kw).fit(X, y)
    np.testing.assert_allclose(direct.predict_proba(X), graph.predict_proba(X),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([r["train_loss"] for r in direct.history_],
                               [r["train_loss"] for r in graph.history_], rtol=1e-5)


def test_blocks_waiting_to_be_unfrozen_get_no_penalty_step(source_cnn, digits):
    """With gradual unfreezing, a block still frozen must not move, even with the
    penalty and AdamW's weight decay (which would act on any parameter with a
    gradient)."""
    X, y = digits["X_target"][:64], digits["y_target"][:64]
    est = FineTunedClassifier(model=source_cnn, penalty="l2_sp", alpha=1.0, weight_decay=0.1,
                              unfreeze_every=5, max_epochs=2, random_state=0, **CPU).fit(X, y)
    ref = split_model(copy.deepcopy(source_cnn))
    for b_new, b_ref in zip(est.module_.blocks, ref.blocks):
        for p, q in zip(b_new.parameters(), b_ref.parameters()):
            assert torch.equal(p, q)  # only the head trained in these 2 epochs


def test_the_shared_base_is_abstract():
    from sktransfer._finetune import _BaseFineTuned

    with pytest.raises(TypeError, match="abstract"):
        _BaseFineTuned()


# -- label smoothing -----------------------------------------------------------------


class RecordSmoothing(Callback):
    """Records the label smoothing of the criterion the net trains with."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, net, **kwargs):
        self.seen.append(net.criterion_.label_smoothing)


def smoothing_fit(tabular_source, net_kwargs=None, **params):
    record = RecordSmoothing()
    X, y = tabular_source["X_target"][:120], tabular_source["y_target"][:120]
    clf = FineTunedClassifier(model=tabular_source["net"], max_epochs=3, random_state=0,
                              net_kwargs={"callbacks": [record], **(net_kwargs or {})},
                              **CPU, **params).fit(X, y)
    return clf, record.seen


def test_label_smoothing_auto_smooths_fine_tuning_and_leaves_the_probe_alone(tabular_source):
    tuned, seen = smoothing_fit(tabular_source, freeze_depth=0)
    assert tuned.label_smoothing_ == 0.1 and seen == [0.1]
    explicit, _ = smoothing_fit(tabular_source, freeze_depth=0, label_smoothing=0.1)
    unsmoothed, _ = smoothing_fit(tabular_source, freeze_depth=0, label_smoothing=0.0)
    losses = [[row["train_data_loss"] for row in c.history_] for c in (tuned, explicit, unsmoothed)]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    # every block frozen: the head stays the probe (the unsmoothed optimum)
    probe, seen = smoothing_fit(tabular_source, freeze_depth="all")
    assert probe.label_smoothing_ == 0.0 and seen == [0.0]
    moved, _ = smoothing_fit(tabular_source, freeze_depth="all", label_smoothing=0.1)
    assert not same_state(probe.module_.head.state_dict(), moved.module_.head.state_dict())


def test_label_smoothing_from_net_kwargs_and_conflicts(tabular_source):
    clf, seen = smoothing_fit(tabular_source, freeze_depth=0,
                              net_kwargs={"criterion__label_smoothing": 0.3})
    assert clf.label_smoothing_ == 0.3 and seen == [0.3]
    X, y = tabular_source["X_target"][:120], tabular_source["y_target"][:120]
    clash = FineTunedClassifier(model=tabular_source["net"], label_smoothing=0.2, **CPU,
                                net_kwargs={"criterion__label_smoothing": 0.3})
    with pytest.raises(ValueError, match="label_smoothing=0.2 and net_kwargs' criterion"):
        clash.fit(X, y)
    with pytest.raises(ValueError, match="label_smoothing"):
        FineTunedClassifier(model=tabular_source["net"], label_smoothing=1.0).fit(X, y)
