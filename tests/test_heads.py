"""The head of a fine-tuned network (``_heads.py``): a new one sized from y, or the
pretrained one."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, split_model
from sktransfer._blocknet import GlobalPool
from sktransfer._heads import (
    _LEGACY_OFF,
    PROBE_GRID,
    Standardize,
    attach_head,
    check_hidden_sizes,
    make_head,
    probe_head,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_make_head_layers():
    assert isinstance(make_head(6, 2), nn.Linear)
    head = make_head(6, 2, hidden=(5,), dropout=0.2, pool=True)
    kinds = [type(m) for m in head]
    assert kinds == [GlobalPool, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[2].in_features, head[2].out_features, head[5].out_features) == (6, 5, 2)


def test_a_new_head_is_sized_from_the_features_and_seeded():
    net = split_model(mlp())
    features = net.forward_features(torch.zeros(2, 4))
    assert attach_head(net, features, 5, seed=0) == ("head.",)
    assert (net.head.in_features, net.head.out_features) == (6, 5)
    assert net.head_name == "head (new)" and isinstance(net.post_head, nn.Identity)
    again = split_model(mlp())
    attach_head(again, features, 5, seed=0)
    assert torch.equal(again.head.weight, net.head.weight)


def test_a_feature_map_is_pooled_on_its_channel_axis():
    torch.manual_seed(0)
    cnn = split_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), blocks=["0"], head=None)
    features = cnn.forward_features(torch.zeros(2, 1, 6, 6))
    attach_head(cnn, features, 3, seed=0)
    assert isinstance(cnn.head[0], GlobalPool) and cnn.head[1].in_features == 4
    assert cnn(torch.zeros(2, 1, 6, 6)).shape == (2, 3)


def test_reusing_the_pretrained_head():
    net = split_model(mlp())
    pretrained_head = net.head
    features = net.forward_features(torch.zeros(2, 4))
    assert attach_head(net, features, 3, seed=0, reuse_head=True) == ()
    assert net.head is pretrained_head
    with pytest.raises(ValueError, match=r"output 2 values per sample \(2 classes\), but it "
                                         r"outputs \(3,\)"):
        attach_head(net, features, 2, seed=0, reuse_head=True, outputs=lambda: "2 classes")
    with pytest.warns(UserWarning, match="ignored when reuse_head=True"):
        attach_head(net, features, 3, seed=0, reuse_head=True, hidden=(4,))
    encoder = split_model(mlp(), blocks=["0"], head=None)
    with pytest.raises(ValueError, match="no head \\(it is an encoder\\)"):
        attach_head(encoder, features, 3, seed=0, reuse_head=True)


def test_check_hidden_sizes():
    assert check_hidden_sizes([8, 4]) == (8, 4)
    for bad in [(0,), (2.5,), (True,)]:
        with pytest.raises(ValueError, match="head_hidden_sizes must be positive ints"):
            check_hidden_sizes(bad)


# -- head_init="probe": LP-FT --------------------------------------------------------
def _features(net, X):
    with torch.no_grad():
        return net.forward_features(torch.as_tensor(X, dtype=torch.float32)).numpy()


def _sklearn_probe(F, y, regression=False):
    Z = StandardScaler().fit_transform(F)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if regression:
            return Z, RidgeCV(alphas=PROBE_GRID).fit(Z, y)
        folds = StratifiedKFold(min(3, np.bincount(y).min()))
        model = LogisticRegressionCV(Cs=PROBE_GRID, cv=folds, max_iter=1000,
                                     scoring="neg_log_loss", **_LEGACY_OFF)
        return Z, model.fit(Z, y)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_head_is_the_sklearn_probe(n_classes):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = rng.randint(0, n_classes, size=60)
    net = split_model(mlp())
    F = _features(net, X)
    attach_head(net, torch.as_tensor(F[:2]), n_classes, seed=0)
    l2 = probe_head(net, torch.as_tensor(F), y, classification=True)
    Z, model = _sklearn_probe(F, y)
    assert isinstance(net.head[0], Standardize)
    with torch.no_grad():
        proba = torch.softmax(net.head(torch.as_tensor(F)), dim=1).numpy()
    np.testing.assert_allclose(proba, model.predict_proba(Z), atol=1e-5)
    # the strength in the net's units: mean loss + l2/2 ||W||^2 <=> sklearn's C
    assert l2 == pytest.approx(1.0 / (float(np.ravel(model.C_)[0]) * len(y)))


def test_probe_head_for_several_outputs_is_ridge():
    rng = np.random.RandomState(1)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    Y = np.c_[X @ rng.normal(size=4), X[:, 0] ** 2].astype(np.float32)
    net = split_model(mlp())
    F = _features(net, X)
    attach_head(net, torch.as_tensor(F[:2]), 2, seed=0)
    l2 = probe_head(net, torch.as_tensor(F), Y, classification=False)
    Z, model = _sklearn_probe(F, Y, regression=True)
    with torch.no_grad():
        out = net.head(torch.as_tensor(F)).numpy()
    np.testing.assert_allclose(out, model.predict(Z), atol=1e-4)
    assert l2 == pytest.approx(2 * model.alpha_ / (len(Y) * 2))


def test_an_mlp_head_gets_a_standardised_input_and_keeps_its_random_layers():
    X = np.random.RandomState(0).normal(size=(30, 4)).astype(np.float32)
    net, random = split_model(mlp()), split_model(mlp())
    F = torch.as_tensor(_features(net, X))
    for n in (net, random):
        attach_head(n, F[:2], 3, seed=0, hidden=(5,))
    assert probe_head(net, F, np.arange(30) % 3, classification=True) == 0.0
    assert isinstance(net.head[0], Standardize)
    z = net.head[0](F)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    for a, b in zip(net.head[1:].parameters(), random.head.parameters()):
        assert torch.equal(a, b)


def _linear_scores(clf, X):
    """The fitted net's head input: the standardised penultimate features."""
    feats = torch.as_tensor(clf.module_.forward_features(torch.as_tensor(X)).detach())
    return clf.module_.head[0](feats).numpy()


def test_the_estimator_starts_from_the_probe_with_string_labels_and_class_weights(
        tabular_source):
    X, y = tabular_source["X_target"][:90], tabular_source["y_target"][:90]
    labels = np.array(["no", "yes"])[y]
    clf = FineTunedClassifier(model=tabular_source["net"], freeze_depth="all", lr=1e-9,
                              max_epochs=1, class_weight="balanced", random_state=0,
                              device="cpu").fit(X, labels)
    F = _features(split_model(tabular_source["net"]), X)
    Z = StandardScaler().fit(F)
    # the head's input is the features standardised with the training statistics ...
    np.testing.assert_allclose(_linear_scores(clf, X), Z.transform(F), atol=1e-4)
    # ... and its weights are LogisticRegressionCV's with the same class weights
    from sklearn.utils.class_weight import compute_sample_weight
    w = compute_sample_weight("balanced", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaler = StandardScaler().fit(F)
        model = LogisticRegressionCV(Cs=PROBE_GRID, cv=StratifiedKFold(3), max_iter=1000,
                                     scoring="neg_log_loss", **_LEGACY_OFF)
        model.fit(scaler.transform(F), labels, sample_weight=w)
    np.testing.assert_allclose(clf.predict_proba(X), model.predict_proba(scaler.transform(F)),
                               atol=1e-4)
    assert list(clf.classes_) == ["no", "yes"]


def test_head_init_random_keeps_a_plain_randomly_initialised_head(tabular_source):
    X, y = tabular_source["X_target"][:40], tabular_source["y_target"][:40]
    clf = FineTunedClassifier(model=tabular_source["net"], head_init="random", max_epochs=1,
                              random_state=0, device="cpu").fit(X, y)
    assert isinstance(clf.module_.head, nn.Linear)


def test_freezing_everything_with_a_probe_head_is_at_least_the_probe(tabular_source):
    X, y = tabular_source["X_target"], tabular_source["y_target"]
    X_train, y_train, X_test, y_test = X[:60], y[:60], X[200:], y[200:]
    F = _features(split_model(tabular_source["net"]), X)
    scaler = StandardScaler().fit(F[:60])
    _, model = _sklearn_probe(F[:60], y_train)
    probe = model.score(scaler.transform(F[200:]), y_test)
    clf = FineTunedClassifier(model=tabular_source["net"], freeze_depth="all",
                              random_state=0, device="cpu").fit(X_train, y_train)
    # the head keeps the probe's objective: training it further stays at its optimum
    assert clf.score(X_test, y_test) >= probe - 0.005
    random = FineTunedClassifier(model=tabular_source["net"], freeze_depth="all",
                                 head_init="random", random_state=0, device="cpu")
    assert clf.score(X_test, y_test) >= random.fit(X_train, y_train).score(X_test, y_test)


def test_a_probe_head_for_the_regressor(tabular_source):
    X = tabular_source["X_source"][:80]
    Y = tabular_source["y_source"][:80, :2]
    reg = FineTunedRegressor(model=tabular_source["net"], freeze_depth="all", lr=1e-9,
                             max_epochs=1, random_state=0, device="cpu").fit(X, Y)
    F = _features(split_model(tabular_source["net"]), X)
    Z, model = _sklearn_probe(F, Y, regression=True)
    np.testing.assert_allclose(reg.predict(X), model.predict(Z), atol=1e-3)
