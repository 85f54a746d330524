"""Private input checks, numerics and helpers behind :mod:`sktransfer.metrics`.

``metrics.py`` holds the public functions, their documentation and their
parameter validation (``validate_params``). This module holds what they run:

* input checks that turn features, labels and probabilities into validated
  float64 arrays, with errors that name the input and the fix
  (``check_features``, ``check_labels``, ``check_proba``, ``check_same_length``);
* the numerics on those arrays: LogME's evidence (``logme_targets``,
  ``logme_evidences``, ``logme_fit``), ``h_score_from_labels``,
  ``leep_from_proba``, ``nce_from_labels``;
* the pieces of the scorer, of ``rank_models`` and of ``domain_shift_score``
  (``TransferabilityScorer``, ``transform_features``, ``score_candidate``,
  ``domain_accuracy``).
"""

from __future__ import annotations

import numbers
import time

import numpy as np
from scipy import linalg, sparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing, check_array
from sklearn.utils.multiclass import type_of_target

from ._penalties import label_joint

__all__ = [
    "TransferabilityScorer",
    "check_features",
    "check_labels",
    "check_proba",
    "check_same_length",
    "domain_accuracy",
    "h_score_from_labels",
    "leep_from_proba",
    "logme_evidences",
    "logme_fit",
    "logme_targets",
    "nce_from_labels",
    "score_candidate",
    "transform_features",
]

_LABEL_KINDS = ("binary", "multiclass")


# --------------------------------------------------------------------------- checks
def check_features(X, name="features", min_samples=2):
    """``X`` as a finite 2-D float64 array with at least ``min_samples`` rows."""
    try:
        return check_array(X, dtype=np.float64, input_name=name, ensure_2d=True,
                           ensure_min_samples=min_samples, ensure_min_features=1)
    except ValueError as exc:
        msg = str(exc)
        if "NaN" in msg or "infinity" in msg:
            fix = (f"{name} must be finite: drop or impute those rows (e.g. "
                   "sklearn.impute.SimpleImputer) before scoring. Non-finite features "
                   "usually mean the network diverged or its input was not normalised.")
        elif "sample(s)" in msg:
            fix = (f"{name} needs at least {min_samples} samples (rows, one per example); "
                   "pass more data.")
        elif "1D array" in msg:
            fix = (f"{name} must be 2-D (n_samples, n_features); for a single feature use "
                   f"{name}.reshape(-1, 1).")
        elif "feature(s)" in msg:
            fix = f"{name} has no columns; it needs at least one feature."
        elif msg.startswith("Complex data not supported"):
            msg = "Complex data not supported."  # without sklearn's dump of the array
            fix = (f"{name} must hold real numbers; pass np.real({name}) or np.abs({name}), or "
                   "the real and imaginary parts as separate columns.")
        else:
            fix = f"{name} must be a 2-D array of numbers (n_samples, n_features)."
        raise ValueError(f"{name}: {msg} {fix}") from exc


def check_same_length(a, a_name, b, b_name):
    """Raise a ``ValueError`` when ``a`` and ``b`` describe different numbers of samples."""
    if len(a) != len(b):
        raise ValueError(
            f"{a_name} has {len(a)} samples but {b_name} has {len(b)}; they must describe "
            f"the same samples, in the same order (one row of {a_name} per entry of "
            f"{b_name})."
        )


def _check_not_complex(arr, name):
    if arr.dtype.kind == "c":
        raise ValueError(
            f"Complex data not supported: {name} has the complex dtype {arr.dtype}. Pass real "
            f"labels or targets, e.g. np.real({name})."
        )


def _as_1d(y, name):
    if sparse.issparse(y):
        raise TypeError(f"{name} must be a dense 1-D array of labels, got a sparse matrix.")
    arr = np.asarray(y)
    _check_not_complex(arr, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one label per sample), got shape {arr.shape}."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} contains NaN or infinity; drop the unlabeled samples (and the matching "
            "rows of the features) before scoring."
        )
    if arr.dtype == object and any(v is None for v in arr):
        raise ValueError(f"{name} contains None; drop the unlabeled samples before scoring.")
    return arr


def check_labels(y, name="y", min_classes=2, metric="this score"):
    """Encode 1-D class labels: returns ``(classes, y_idx)``."""
    arr = _as_1d(y, name)
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass one label per sample.")
    kind = type_of_target(arr, input_name=name)
    if kind not in _LABEL_KINDS:
        hint = ("for a regression target use logme_score(features, y, regression=True)."
                if name == "y" else
                "for predicted probabilities use their argmax (source_proba.argmax(axis=1)).")
        raise ValueError(
            f"{name} must hold class labels for {metric}, but it looks {kind!r} "
            f"(e.g. {arr[:3].tolist()}). Pass the class of each sample; {hint}"
        )
    classes, y_idx = np.unique(arr, return_inverse=True)
    if len(classes) < min_classes:
        only = classes[0].item() if hasattr(classes[0], "item") else classes[0]
        raise ValueError(
            f"{name} has a single class ({only!r}): {metric} compares how well "
            "features separate classes, so it needs at least 2. Check that y is the "
            "target of these samples (and that a cross-validation split did not leave "
            "one class in a fold: use StratifiedKFold)."
        )
    return classes, y_idx.ravel()


def _onehot(y_idx):
    """Sparse (n_samples, n_classes) indicator matrix of encoded labels."""
    n = len(y_idx)
    return sparse.csr_matrix((np.ones(n), (np.arange(n), y_idx)),
                             shape=(n, int(y_idx.max()) + 1))


# --------------------------------------------------------------------------- LogME
def _check_not_constant(Y):
    constant = np.flatnonzero(np.ptp(Y, axis=0) == 0)
    if constant.size:
        raise ValueError(
            f"y column(s) {constant.tolist()} are constant; there is nothing to predict. "
            "Remove them (or check that y is the target of these samples)."
        )


def logme_targets(y, regression, n_samples):
    """The LogME target matrix (n_samples, n_targets) and whether it is a regression.

    Labels become a sparse one-hot (one-vs-rest) matrix; continuous targets are
    used as they are.
    """
    if sparse.issparse(y):
        raise TypeError("y must be a dense array, got a sparse matrix.")
    y_arr = np.asarray(y)
    _check_not_complex(y_arr, "y")
    if y_arr.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D or 2-D, got shape {y_arr.shape}.")
    if y_arr.shape[0] == 0:
        raise ValueError("y is empty; pass one target per sample.")
    if y_arr.shape[0] != n_samples:
        check_same_length(np.empty(n_samples), "features", y_arr, "y")
    if regression == "auto":
        if y_arr.dtype.kind == "f" and not np.all(np.isfinite(y_arr)):
            raise ValueError("y contains NaN or infinity; drop those samples before scoring.")
        kind = type_of_target(y_arr, input_name="y")
        if kind in ("continuous", "continuous-multioutput"):
            regression = True
        elif kind == "multilabel-indicator":
            Y = y_arr.astype(np.float64)
            _check_not_constant(Y)
            return Y, False
        elif kind in _LABEL_KINDS:
            regression = False
        else:
            raise ValueError(
                f"regression='auto' cannot tell what y is (type_of_target gives {kind!r}). "
                "Pass regression=True for continuous targets or 1-D class labels with "
                "regression=False; score each output separately for multi-output labels."
            )
    if regression:
        Y = check_features(y_arr.reshape(n_samples, -1), name="y", min_samples=2)
        _check_not_constant(Y)
        return Y, True
    _, y_idx = check_labels(y_arr, "y", metric="logme_score")
    return _onehot(y_idx), False


def _logme_stats(t, s, P, mode, yy):
    """Profile quantities at ``t = alpha / beta`` (arrays broadcast over targets).

    ``mode="x"``: ``P`` holds ``x_i^2``, the squared coordinates of y in the left
    singular basis (N <= D, complete basis). ``mode="z"``: ``P`` holds ``z_i^2``,
    ``z = V^T F^T y`` in the eigenbasis of ``F^T F`` (N > D), and ``yy = ||y||^2``.
    Returns ``gamma``, ``||m||^2`` and ``q = ||y - F m||^2 + t ||m||^2``.
    """
    d = t + s
    gamma = (s / d).sum(axis=0)
    if mode == "x":
        m2 = (s * P / d**2).sum(axis=0)
        q = (P * (t / d)).sum(axis=0)
    else:
        m2 = (P / d**2).sum(axis=0)
        q = yy - (P / d).sum(axis=0)
    tiny = np.finfo(np.float64).tiny
    return gamma, m2, np.maximum(q, tiny)


def _profile_evidence(t, s, P, mode, yy, n):
    """log p(y | alpha, beta) maximised over beta for fixed t; also d/d(log t)."""
    gamma, m2, q = _logme_stats(t, s, P, mode, yy)
    evidence = (0.5 * n * np.log(n / q) - 0.5 * np.log1p(s / t).sum(axis=0)
                - 0.5 * n * (1.0 + np.log(2.0 * np.pi)))
    slope = 0.5 * (gamma - n * t * m2 / q)
    return evidence, slope, q


def logme_evidences(F, Y, *, grid_per_decade=3, n_bisect=60):
    """Maximised LogME log-evidence of each column of ``Y`` given features ``F``.

    One eigendecomposition of the smaller Gram matrix (``F^T F`` or ``F F^T``) is
    shared by all targets. Returns ``(evidence, alpha, beta)``, arrays of length
    ``n_targets``; ``evidence`` is the total log-evidence (not divided by N).
    """
    n, dim = F.shape
    if n > dim:
        s, V = linalg.eigh(F.T @ F, driver="evd", check_finite=False)
        proj = np.asarray((Y.T @ F) @ V).T          # z = V^T F^T y, (D, T)
        mode = "z"
    else:
        s, U = linalg.eigh(F @ F.T, driver="evd", check_finite=False)
        proj = np.asarray(Y.T @ U).T                 # x = U^T y, (N, T)
        mode = "x"
    s = np.clip(s, 0.0, None)[:, None]
    P = proj**2
    if sparse.issparse(Y):
        yy = np.asarray(Y.multiply(Y).sum(axis=0)).ravel()
    else:
        yy = (Y**2).sum(axis=0)
    n_targets = P.shape[1]
    s_max = float(s.max())
    if s_max <= 0.0:  # all-zero features: y ~ N(0, I / beta), alpha irrelevant (infinite)
        beta = n / yy
        evidence = 0.5 * n * np.log(beta) - 0.5 * n * (1.0 + np.log(2.0 * np.pi))
        return evidence, np.full(n_targets, np.inf), beta

    # 1. global search of the profile evidence over a log grid of t = alpha / beta
    #    (the paper's fixed-point iteration from alpha = beta = 1 can need thousands
    #    of steps, stall at a local optimum, or run off to t -> 0 or t -> inf).
    lo, hi = np.log(s_max) + np.log(1e-12), np.log(s_max) + np.log(1e8)
    grid = np.linspace(lo, hi, int(round((hi - lo) / np.log(10) * grid_per_decade)) + 1)
    ev_grid = np.empty((len(grid), n_targets))
    slope_grid = np.empty((len(grid), n_targets))
    for i, u in enumerate(grid):
        ev_grid[i], slope_grid[i], _ = _profile_evidence(np.exp(u), s, P, mode, yy, n)
    best = np.argmax(ev_grid, axis=0)
    cols = np.arange(n_targets)

    # 2. bisection on the stationarity condition (the paper's fixed-point equations
    #    alpha = gamma / ||m||^2, beta = (N - gamma) / ||y - Fm||^2) inside the
    #    grid cell next to the best grid point, on the side the slope points to.
    up = slope_grid[best, cols] > 0
    left = np.where(up, best, best - 1)
    right = left + 1
    inside = (left >= 0) & (right < len(grid))
    left_c, right_c = np.clip(left, 0, len(grid) - 1), np.clip(right, 0, len(grid) - 1)
    bracketed = inside & (slope_grid[left_c, cols] > 0) & (slope_grid[right_c, cols] <= 0)
    a, b = grid[left_c], grid[right_c]
    u = grid[best]
    if bracketed.any():
        for _ in range(n_bisect):
            mid = 0.5 * (a + b)
            _, slope, _ = _profile_evidence(np.exp(mid), s, P, mode, yy, n)
            pos = slope > 0
            a, b = np.where(pos, mid, a), np.where(pos, b, mid)
        u = np.where(bracketed, 0.5 * (a + b), u)
    t = np.exp(u)
    evidence, _, q = _profile_evidence(t, s, P, mode, yy, n)
    # keep the grid value where refinement did not help (flat or boundary optimum)
    use_grid = ev_grid[best, cols] > evidence
    t = np.where(use_grid, np.exp(grid[best]), t)
    evidence, _, q = _profile_evidence(t, s, P, mode, yy, n)
    beta = n / q
    return evidence, t * beta, beta


# --------------------------------------------------------------------------- H-score
def h_score_from_labels(F, y_idx, shrinkage=False):
    """tr(cov(f)^+ cov(E[f | y])), optionally with a Ledoit-Wolf cov(f)."""
    n, dim = F.shape
    Fc = F - F.mean(axis=0)
    counts = np.bincount(y_idx).astype(np.float64)
    means = (_onehot(y_idx).T @ Fc) / counts[:, None]   # class means of the centred features
    weights = counts / n                           # cov(E[f|y]) = sum_c w_c mu_c mu_c^T
    if shrinkage:
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf(assume_centered=True, store_precision=False).fit(Fc)
        cov_f, factor = lw.covariance_, 1.0 - lw.shrinkage_
    else:
        cov_f, factor = Fc.T @ Fc / n, 1.0
    w, V = linalg.eigh(cov_f, driver="evd", check_finite=False)
    keep = w > w.max() * max(dim, n) * np.finfo(np.float64).eps if w.max() > 0 else w > 0
    if not keep.any():
        return 0.0
    proj = (means @ V[:, keep]) / np.sqrt(w[keep])
    return float(factor * np.sum(weights * np.sum(proj**2, axis=1)))


# --------------------------------------------------------------------------- LEEP, NCE
def leep_from_proba(P, y_idx):
    """Mean log expected empirical prediction (Nguyen et al., 2020)."""
    joint = label_joint(P, y_idx)   # P(y, z), shared with Co-Tuning
    pz = joint.sum(axis=0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)   # P(y | z)
    eep = np.einsum("iz,iz->i", P, cond[y_idx])
    return float(np.mean(np.log(eep)))


def nce_from_labels(z_idx, y_idx):
    """-H(Y | Z) of the empirical joint of source labels z and target labels y."""
    n_y = int(y_idx.max()) + 1
    counts = np.bincount(z_idx * n_y + y_idx, minlength=(int(z_idx.max()) + 1) * n_y)
    joint = counts.reshape(-1, n_y) / len(y_idx)
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])))


def check_proba(P):
    """Check that ``P`` holds class probabilities; return it with rows renormalised."""
    if P.min() < 0:
        raise ValueError(
            f"source_proba has negative values (min {P.min():.3g}); LEEP needs the source "
            "model's class probabilities. If these are logits, convert them with "
            "scipy.special.softmax(logits, axis=1)."
        )
    sums = P.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if bad.size:
        raise ValueError(
            f"source_proba rows must sum to 1 (class probabilities), but {bad.size} of "
            f"{len(P)} do not (row {bad[0]} sums to {sums[bad[0]]:.6g}). If these are "
            "logits or scores, convert them with scipy.special.softmax(logits, axis=1); "
            "if they cover a subset of classes, renormalise each row."
        )
    return P / sums[:, None]


# --------------------------------------------------------------------------- scorer, ranking
def logme_fit(features, y, *, regression="auto"):
    """Validated LogME with its parameters.

    Returns ``(score, evidence, alpha, beta, is_regression)``: ``evidence``,
    ``alpha`` and ``beta`` have one entry per target column (one-hot class or
    regression output); ``evidence`` is not divided by ``n_samples``.
    """
    F = check_features(features, "features")
    Y, is_regression = logme_targets(y, regression, F.shape[0])
    evidence, alpha, beta = logme_evidences(F, Y)
    return float(np.mean(evidence) / F.shape[0]), evidence, alpha, beta, is_regression


def transform_features(estimator, X):
    """Features of ``X``: ``estimator.transform``, or all but the last step of a pipeline."""
    if hasattr(estimator, "transform"):
        return estimator.transform(X)
    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        return estimator[:-1].transform(X)
    raise TypeError(
        f"{type(estimator).__name__} has no transform method: a transferability scorer "
        "scores the features of a transformer (e.g. FeatureExtractorTransformer) or of "
        "a Pipeline's steps before its final estimator."
    )


class TransferabilityScorer:
    """``scorer(estimator, X, y)`` -> ``func(features of X, y, **params)``."""

    def __init__(self, func, params, metric, kwargs):
        self.func = func
        self.params = params
        self.metric = metric
        self.kwargs = kwargs

    def score_features(self, features, y):
        return float(self.func(features, y, **self.params))

    def __call__(self, estimator, X, y=None):
        if y is None:
            raise ValueError(
                "A transferability scorer needs the target y: pass y to fit() "
                "(e.g. GridSearchCV(...).fit(X, y))."
            )
        return self.score_features(transform_features(estimator, X), y)

    def __repr__(self):
        metric = getattr(self.metric, "__name__", self.metric)
        args = [repr(metric)] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"transferability_scorer({', '.join(args)})"


def score_candidate(transformer, X, y, scorer, splits, prefit):
    """One row of ``rank_models``: score, [score_std], seconds, n_features."""
    start = time.perf_counter()
    if splits is None:
        est = transformer if prefit else clone(transformer).fit(X, y)
        feats = transform_features(est, X)
        row = {"score": scorer.score_features(feats, y)}
    else:
        scores = []
        for train, test in splits:
            est = clone(transformer).fit(_safe_indexing(X, train), _safe_indexing(y, train))
            feats = transform_features(est, _safe_indexing(X, test))
            scores.append(scorer.score_features(feats, _safe_indexing(y, test)))
        row = {"score": float(np.mean(scores)), "score_std": float(np.std(scores))}
    row["seconds"] = time.perf_counter() - start
    row["n_features"] = int(np.shape(feats)[1])
    return row


def domain_accuracy(S, T, cv, rng):
    """Cross-validated accuracy of a scaled logistic regression telling S from T,
    after subsampling the larger set to the size of the smaller."""
    n = min(len(S), len(T))
    if len(S) > n:
        S = S[np.sort(rng.choice(len(S), n, replace=False))]
    if len(T) > n:
        T = T[np.sort(rng.choice(len(T), n, replace=False))]
    if isinstance(cv, (numbers.Integral, np.integer)) and not isinstance(cv, bool):
        if cv > n:  # cv >= 2: the caller's constraints
            raise ValueError(
                f"cv={cv} needs 2 <= cv <= {n} (the size of the smaller feature set); "
                "pass fewer folds or more samples."
            )
        cv = StratifiedKFold(int(cv), shuffle=True, random_state=rng.randint(2**31 - 1))
    Z = np.vstack([S, T])
    domain = np.repeat([0, 1], n)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(np.mean(cross_val_score(clf, Z, domain, cv=cv, scoring="accuracy")))
