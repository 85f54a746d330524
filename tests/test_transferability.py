"""The transferability numerics (``_transferability.py``), each against a slow direct
computation: LogME's evidence, H-score, LEEP, NCE."""

from collections import Counter

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf

from sktransfer._transferability import logme_fit
from sktransfer.metrics import h_score, leep_score, logme_score, nce_score

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
