"""Transferability scores: each against a slow direct computation, then behaviour."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from sktransfer import FeatureExtractorTransformer
from sktransfer._transferability import logme_fit
from sktransfer.metrics import (
    domain_shift_score,
    h_score,
    leep_score,
    logme_score,
    nce_score,
    rank_models,
    transferability_scorer,
)

# (n_samples, n_features): fewer samples than features, more, and square
SHAPES = [(25, 60), (70, 8), (30, 30)]


def make_case(n, d, seed=0, n_classes=3):
    """Features, a noisy linear regression target and labels that depend on features."""
    rng = np.random.RandomState(seed)
    F = rng.normal(size=(n, d))
    y_reg = F[:, :3] @ np.array([1.0, -2.0, 0.5]) + 0.7 * rng.normal(size=n)
    y_cls = (F[:, :4] @ rng.normal(size=(4, n_classes)) + rng.normal(size=(n, n_classes))
             ).argmax(axis=1)
    return F, y_reg, y_cls


# --------------------------------------------------------------------------- LogME
def dense_log_evidence(F, y, alpha, beta):
    """log N(y | 0, I / beta + F F^T / alpha) with a dense N x N covariance."""
    n = len(y)
    cov = np.eye(n) / beta + F @ F.T / alpha
    return multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y)


def targets_of(y, regression):
    if regression:
        return y.reshape(len(y), -1)
    return (y[:, None] == np.unique(y)[None, :]).astype(float)


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_logme_matches_dense_gaussian_evidence(n, d, task):
    F, y_reg, y_cls = make_case(n, d)
    y = y_reg if task == "regression" else y_cls
    score, evidence, alpha, beta, is_reg = logme_fit(F, y)
    assert is_reg == (task == "regression")
    Y = targets_of(y, is_reg)
    assert len(evidence) == Y.shape[1]
    for j in range(Y.shape[1]):
        ref = dense_log_evidence(F, Y[:, j], alpha[j], beta[j])
        assert evidence[j] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert score == pytest.approx(np.mean(evidence) / n, rel=1e-12)
    assert logme_score(F, y) == score


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_logme_alpha_beta_are_a_stationary_maximum(n, d, task):
    F, y_reg, y_cls = make_case(n, d, seed=1)
    y = y_reg if task == "regression" else y_cls
    _, evidence, alpha, beta, is_reg = logme_fit(F, y)
    Y = targets_of(y, is_reg)
    s_max = np.linalg.eigvalsh(F @ F.T).max()
    n_interior = 0
    for j in range(Y.shape[1]):
        best = dense_log_evidence(F, Y[:, j], alpha[j], beta[j])
        for fa in (0.99, 1.0, 1.01):
            for fb in (0.99, 1.0, 1.01):
                other = dense_log_evidence(F, Y[:, j], alpha[j] * fa, beta[j] * fb)
                assert other <= best + 1e-9 * abs(best)
        t = alpha[j] / beta[j] / s_max
        if t > 1e7:  # maximum at alpha -> inf (features ignored): the limit y ~ N(0, I / beta)
            limit = multivariate_normal(np.zeros(n), np.sum(Y[:, j] ** 2) / n).logpdf(Y[:, j])
            assert evidence[j] == pytest.approx(limit.sum(), rel=1e-6)
            continue
        assert t > 1e-11
        n_interior += 1
        # the paper's fixed-point equations hold at (alpha, beta), computed densely in D
        A = alpha[j] * np.eye(d) + beta[j] * F.T @ F
        m = beta[j] * np.linalg.solve(A, F.T @ Y[:, j])
        gamma = d - alpha[j] * np.trace(np.linalg.inv(A))
        assert alpha[j] == pytest.approx(gamma / (m @ m), rel=1e-6)
        assert beta[j] == pytest.approx((n - gamma) / np.sum((Y[:, j] - F @ m) ** 2), rel=1e-6)
    assert n_interior >= 1


def test_logme_counts_the_zero_eigenvalues_when_n_below_d():
    # Zero feature columns add zero eigenvalues to F^T F and change nothing in
    # y ~ N(0, I / beta + F F^T / alpha); a formula that drops their
    # (D - k) log(alpha) term from log det A would change.
    F, y_reg, y_cls = make_case(20, 15)
    wide = np.hstack([F, np.zeros((20, 200))])
    for y in (y_reg, y_cls):
        assert logme_score(wide, y) == pytest.approx(logme_score(F, y), rel=1e-9)
    # and the isotropic prior makes it invariant to rotations of the features
    q, _ = np.linalg.qr(np.random.RandomState(0).normal(size=(15, 15)))
    assert logme_score(F @ q, y_cls) == pytest.approx(logme_score(F, y_cls), rel=1e-9)


def test_logme_targets_auto_and_multioutput():
    F, y_reg, y_cls = make_case(60, 6)
    assert logme_score(F, y_cls) == logme_score(F, y_cls, regression=False)
    assert logme_score(F, y_cls.astype(str)) == pytest.approx(logme_score(F, y_cls))
    assert logme_score(F, y_reg) == logme_score(F, y_reg, regression=True)
    assert logme_score(F, y_cls, regression=True) != logme_score(F, y_cls)
    Y2 = np.column_stack([y_reg, -2 * y_reg + 1.0])
    both = logme_score(F, Y2)
    assert both == pytest.approx(np.mean([logme_score(F, Y2[:, 0]), logme_score(F, Y2[:, 1])]))
    assert np.isfinite(logme_score(np.zeros((60, 4)), y_cls))  # dead layer: finite, low


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.RandomState(0)
    n = 300
    z = rng.normal(size=(n, 3))
    noise = rng.normal(size=(n, 16))
    informative = np.hstack([z, rng.normal(size=(n, 13))])
    y_cls = (z @ [1.0, -1.0, 0.5] > 0).astype(int)
    y_reg = np.sin(z[:, 0]) + z[:, 1] + 0.1 * rng.normal(size=n)
    assert logme_score(informative, y_cls) > logme_score(noise, y_cls) + 0.05
    assert logme_score(informative, y_reg) > logme_score(noise, y_reg) + 0.1
    shuffled = rng.permutation(y_cls)
    assert logme_score(informative, shuffled) < logme_score(informative, y_cls) - 0.05


# --------------------------------------------------------------------------- H-score
def class_means_per_sample(F, y):
    G = np.empty_like(F)
    for c in np.unique(y):
        G[y == c] = F[y == c].mean(axis=0)
    return G


@pytest.mark.parametrize("n, d", SHAPES)
def test_h_score_matches_cov_pinv_formula(n, d):
    F, _, y = make_case(n, d)
    G = class_means_per_sample(F, y)
    ref = np.trace(np.linalg.pinv(np.cov(F, rowvar=False), rcond=1e-10) @ np.cov(G, rowvar=False))
    assert h_score(F, y) == pytest.approx(ref, rel=1e-7)
    if n <= d:  # features in general position span every centred direction
        assert h_score(F, y) == pytest.approx(len(np.unique(y)) - 1, rel=1e-7)


@pytest.mark.parametrize("n, d", SHAPES)
def test_h_score_shrinkage_matches_ledoit_wolf_formula(n, d):
    F, _, y = make_case(n, d, seed=2)
    lw = LedoitWolf().fit(F)
    G = class_means_per_sample(F, y)
    cov_g = np.cov(G, rowvar=False, bias=True)
    ref = (1 - lw.shrinkage_) * np.trace(np.linalg.inv(lw.covariance_) @ cov_g)
    assert h_score(F, y, shrinkage=True) == pytest.approx(ref, rel=1e-7)
    # 0 when Ledoit-Wolf shrinks fully (shrinkage_ == 1), as for (30, 30) here
    assert 0 <= h_score(F, y, shrinkage=True) < len(np.unique(y)) - 1


# --------------------------------------------------------------------------- LEEP, NCE
def leep_loop(P, y):
    n, n_z = P.shape
    labels = sorted(set(y))
    joint = {(a, z): sum(P[i, z] for i in range(n) if y[i] == a) / n
             for a in labels for z in range(n_z)}
    pz = [sum(joint[a, z] for a in labels) for z in range(n_z)]
    total = 0.0
    for i in range(n):
        total += np.log(sum(joint[y[i], z] / pz[z] * P[i, z] for z in range(n_z)))
    return total / n


@pytest.mark.parametrize("n, n_source", [(40, 7), (15, 30)])
def test_leep_matches_loop(n, n_source):
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(n, n_source)) * 2
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.choice(["a", "b", "c"], size=n)
    assert leep_score(P, y) == pytest.approx(leep_loop(P, list(y)), rel=1e-10)
    assert leep_score(P.astype(np.float32), y) == pytest.approx(leep_loop(P, list(y)), rel=1e-5)


def nce_count(z, y):
    n = len(y)
    pair, zc = Counter(zip(z, y)), Counter(z)
    return sum(c / n * np.log(c / zc[zz]) for (zz, _), c in pair.items())


def test_nce_matches_counting():
    rng = np.random.RandomState(0)
    z = rng.choice(["cat", "dog", "car", "sky"], size=80)
    y = np.where(z == "cat", 0, rng.randint(3, size=80))
    assert nce_score(z, y) == pytest.approx(nce_count(list(z), list(y)), rel=1e-12)
    assert nce_score(y, y) == 0.0
    assert nce_score(z, y) > nce_score(rng.permutation(z), y)


# --------------------------------------------------------------------------- scorer
def layered_net():
    """Block 0 keeps every input (as +x and -x after ReLU); block 1 keeps only the
    noise columns 2..5, so only block 0 carries the target, which uses x0 + x1."""
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                        nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.cat([torch.eye(6), -torch.eye(6)]))
        net[0].bias.zero_()
        pick = torch.zeros(8, 12)
        for row, col in enumerate([2, 3, 4, 5, 8, 9, 10, 11]):
            pick[row, col] = 1.0
        net[2].weight.copy_(pick)
        net[2].bias.zero_()
    return net


@pytest.fixture(scope="module")
def layered_data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.mark.parametrize("refit", [True, False])
@pytest.mark.parametrize("metric", ["logme", "h_score", "h_score_shrinkage"])
def test_scorer_in_grid_search_over_layer(layered_data, refit, metric):
    X, y = layered_data
    search = GridSearchCV(
        FeatureExtractorTransformer(model=layered_net(), device="cpu"),
        {"layer": [1, 0]}, scoring=transferability_scorer(metric),
        cv=StratifiedKFold(3, shuffle=True, random_state=0), refit=refit,
    ).fit(X, y)
    assert search.best_params_ == {"layer": 0}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    if refit:
        assert search.transform(X).shape == (150, 12)


def test_scorer_on_pipeline_and_direct_call(layered_data):
    X, y = layered_data
    fx = FeatureExtractorTransformer(model=layered_net(), layer=0, device="cpu").fit(X)
    scorer = transferability_scorer("logme")
    assert scorer(fx, X, y) == pytest.approx(logme_score(fx.transform(X), y))
    pipe = make_pipeline(fx, LogisticRegression()).fit(X, y)  # no transform: uses pipe[:-1]
    assert scorer(pipe, X, y) == pytest.approx(scorer(fx, X, y))
    assert "logme" in repr(scorer)
    assert transferability_scorer(logme_score, regression=True)(fx, X, X[:, 0]) == (
        pytest.approx(logme_score(fx.transform(X), X[:, 0])))


def test_scorer_unstratified_folds_fail_with_a_clear_error(layered_data):
    X, y = layered_data
    order = np.argsort(y, kind="stable")
    search = GridSearchCV(FeatureExtractorTransformer(model=layered_net(), device="cpu"),
                          {"layer": [0]}, scoring=transferability_scorer(),
                          cv=KFold(2), error_score="raise")
    with pytest.raises(ValueError, match="single class.*StratifiedKFold"):
        search.fit(X[order][:100], y[order][:100])


# --------------------------------------------------------------------------- rank_models
def test_rank_models_sorted_dataframe(layered_data):
    X, y = layered_data
    candidates = {
        "noise": FunctionTransformer(lambda X: np.random.RandomState(1).normal(size=(len(X), 5))),
        "block1": FeatureExtractorTransformer(model=layered_net(), layer=1, device="cpu"),
        "block0": FeatureExtractorTransformer(model=layered_net(), layer=0, device="cpu"),
    }
    ranking = rank_models(candidates, X, y)
    assert isinstance(ranking, pd.DataFrame)
    assert list(ranking.columns) == ["name", "score", "seconds", "n_features"]
    assert ranking["name"].iloc[0] == "block0"
    assert ranking["score"].is_monotonic_decreasing
    assert (ranking["seconds"] > 0).all()
    assert dict(zip(ranking["name"], ranking["n_features"])) == {"block0": 12, "block1": 8,
                                                                 "noise": 5}
    assert not hasattr(candidates["block0"], "module_")  # fitted clones, not the inputs

    ranking_cv = rank_models(list(candidates.items())[1:], X, y, metric="h_score", cv=3)
    assert list(ranking_cv["name"]) == ["block0", "block1"]
    assert "score_std" in ranking_cv.columns

    fitted = {"block0": candidates["block0"].fit(X)}
    assert rank_models(fitted, X, y, prefit=True)["score"].iloc[0] == pytest.approx(
        ranking["score"].iloc[0])


# --------------------------------------------------------------------------- domain shift
def test_domain_shift_score_range():
    rng = np.random.RandomState(0)
    source = rng.normal(size=(300, 5))
    same = domain_shift_score(source, rng.normal(size=(400, 5)), random_state=0)
    assert 0.0 <= same < 0.3
    shifted, acc = domain_shift_score(source, rng.normal(loc=3.0, size=(250, 5)),
                                      random_state=0, return_accuracy=True)
    assert shifted > 1.9 and acc > 0.97
    assert shifted == pytest.approx(2 * (2 * acc - 1))
    again = domain_shift_score(source, rng.normal(size=(400, 5)), random_state=0, cv=3)
    assert 0.0 <= again <= 2.0


# --------------------------------------------------------------------------- bad input
F_OK = np.random.RandomState(0).normal(size=(10, 3))
Y_OK = np.array([0, 1] * 5)
P_OK = np.full((10, 2), 0.5)


@pytest.mark.parametrize("call, error, match", [
    (lambda: logme_score(np.where(F_OK > 1, np.nan, F_OK), Y_OK), ValueError,
     "features.*NaN.*impute"),
    (lambda: logme_score(np.full((10, 3), np.inf), Y_OK), ValueError, "features.*infinity"),
    (lambda: logme_score(np.zeros((0, 3)), []), ValueError, "features.*at least 2 samples"),
    (lambda: logme_score(F_OK[:1], Y_OK[:1]), ValueError, "features.*at least 2 samples"),
    (lambda: logme_score(F_OK[:, 0], Y_OK), ValueError, r"reshape\(-1, 1\)"),
    (lambda: logme_score(F_OK, Y_OK[:9]), ValueError, "features has 10 samples but y has 9"),
    (lambda: logme_score(F_OK, np.zeros(10, int)), ValueError, "single class"),
    (lambda: logme_score(F_OK, np.full(10, 0.5)), ValueError, "constant"),
    (lambda: logme_score(F_OK, Y_OK, regression="yes"), ValueError,
     r"The 'regression' parameter of logme_score must be a str among \{'auto'\} or an "
     r"instance of 'bool'.*Got 'yes' instead"),
    (lambda: logme_score(F_OK, np.r_[Y_OK[:9], np.nan]), ValueError, "y contains NaN"),
    (lambda: h_score(F_OK, np.linspace(0, 1, 10)), ValueError, "class labels.*regression=True"),
    (lambda: h_score(F_OK, Y_OK[:8]), ValueError, "features has 10 samples but y has 8"),
    (lambda: h_score(F_OK, ["a"] * 10), ValueError, "single class"),
    (lambda: leep_score(F_OK[:, :2], Y_OK), ValueError, "negative values.*softmax"),
    (lambda: leep_score(np.abs(F_OK), Y_OK), ValueError, "rows must sum to 1.*softmax"),
    (lambda: leep_score(P_OK[:9], Y_OK), ValueError, "source_proba has 9 samples but y has 10"),
    (lambda: nce_score(Y_OK[:9], Y_OK), ValueError, "source_labels has 9 samples but y has 10"),
    (lambda: nce_score(Y_OK, np.ones(10)), ValueError, "single class"),
    (lambda: nce_score(np.linspace(0, 1, 10), Y_OK), ValueError, "source_labels must hold"),
    (lambda: domain_shift_score(F_OK, F_OK[:, :2]), ValueError, "extract both"),
    (lambda: domain_shift_score(F_OK, F_OK, cv=20), ValueError, "cv=20"),
    (lambda: transferability_scorer("accuracy"), ValueError,
     r"The 'metric' parameter of transferability_scorer must be a str among .* or a callable"),
    (lambda: transferability_scorer("logme", shrinkage=True), TypeError, "keyword"),
    (lambda: transferability_scorer()(LogisticRegression().fit(F_OK, Y_OK), F_OK, Y_OK),
     TypeError, "no transform"),
    (lambda: rank_models({}, F_OK, Y_OK), ValueError, "non-empty"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
