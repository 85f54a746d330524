"""Transferability scores: rank pretrained models or layers before fine-tuning.

Each score looks at what a pretrained model produces on the *target* data
(features, class probabilities or predicted labels) together with the target
labels, and estimates how well the model will transfer, in seconds, without
training anything. Higher is better for all of them.

- :func:`logme_score`: LogME evidence of the features (classification or regression).
- :func:`h_score`: H-score of the features, optionally with shrinkage.
- :func:`leep_score`: LEEP, from the source model's class probabilities.
- :func:`nce_score`: negative conditional entropy, from its predicted labels.
- :func:`transferability_scorer`: any of the feature scores as a scikit-learn scorer.
- :func:`rank_models`: score several candidate extractors on the same data.
- :func:`domain_shift_score`: how different source and target features are.
"""

from __future__ import annotations

import inspect
import numbers

import pandas as pd
from sklearn.model_selection import check_cv
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_params
from sklearn.utils.multiclass import type_of_target

from ._transferability import (
    TransferabilityScorer,
    check_features,
    check_labels,
    check_proba,
    check_same_length,
    domain_accuracy,
    h_score_from_labels,
    leep_from_proba,
    logme_fit,
    nce_from_labels,
    score_candidate,
)

__all__ = [
    "domain_shift_score",
    "h_score",
    "leep_score",
    "logme_score",
    "nce_score",
    "rank_models",
    "transferability_scorer",
]


@validate_params(
    {"features": ["array-like"], "y": ["array-like"],
     "regression": [StrOptions({"auto"}), "boolean"]},
    prefer_skip_nested_validation=True,
)
def logme_score(features, y, *, regression="auto"):
    r"""LogME: the maximised log-evidence of a linear model on the features.

    Read more in You et al. (2021). The score is the Bayesian evidence that
    ``y`` is a linear function of ``features`` (plus Gaussian noise), maximised
    over the prior and noise precisions and divided by the number of samples.
    Higher means the features should fine-tune better on ``y``; compare scores
    on the same ``y`` only.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the target samples, e.g. from
        :class:`~sktransfer.FeatureExtractorTransformer`. Used as they are
        (no centring or scaling, as in the paper).
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels (one-hot encoded, one target per class), a multilabel
        indicator matrix, or continuous regression target(s).
    regression : "auto" or bool, default="auto"
        ``"auto"`` treats ``y`` as a regression target when
        :func:`~sklearn.utils.multiclass.type_of_target` calls it continuous,
        else as labels. Pass ``True`` for integer-valued regression targets.

    Returns
    -------
    score : float
        Mean over targets of the maximised log-evidence divided by ``n_samples``.

    See Also
    --------
    h_score : a classification-only alternative.
    transferability_scorer : use LogME in ``GridSearchCV``.

    Notes
    -----
    For one target column :math:`y \in \mathbb{R}^N` and features
    :math:`F \in \mathbb{R}^{N \times D}`, LogME assumes :math:`y = Fw + \epsilon`,
    :math:`w \sim \mathcal{N}(0, \alpha^{-1} I_D)`,
    :math:`\epsilon \sim \mathcal{N}(0, \beta^{-1} I_N)`, so
    :math:`y \sim \mathcal{N}(0, \beta^{-1} I_N + \alpha^{-1} F F^\top)`, with
    log-evidence

    .. math::

        \mathcal{L}(\alpha, \beta) = \frac{D}{2}\log\alpha + \frac{N}{2}\log\beta
        - \frac{N}{2}\log 2\pi - \frac{\beta}{2}\lVert y - Fm\rVert^2
        - \frac{\alpha}{2}\lVert m\rVert^2 - \frac{1}{2}\log\det A,

    :math:`A = \alpha I_D + \beta F^\top F`, :math:`m = \beta A^{-1} F^\top y`,
    :math:`\log\det A = \sum_{i=1}^{D}\log(\alpha + \beta\sigma_i)`, where
    :math:`\sigma_1, \dots, \sigma_D` are *all* the eigenvalues of
    :math:`F^\top F`, including the :math:`D - k` zeros when its rank
    :math:`k < D` (always when :math:`N < D`). Those contribute
    :math:`(D - k)\log\alpha` to :math:`\log\det A`, which cancels that part
    of :math:`\frac{D}{2}\log\alpha`, so with :math:`t = \alpha / \beta`

    .. math::

        \mathcal{L} = \frac{N}{2}\log\beta - \frac{N}{2}\log 2\pi
        - \frac{1}{2}\sum_{i:\,\sigma_i > 0}\log\left(1 + \frac{\sigma_i}{t}\right)
        - \frac{\beta}{2}\left(\lVert y - Fm\rVert^2 + t\lVert m\rVert^2\right).

    Implementations that sum :math:`\log(\alpha + \beta\sigma_i)` over the
    :math:`k = \min(N, D)` singular values of a thin SVD but keep
    :math:`\frac{D}{2}\log\alpha` add :math:`\frac{D-k}{2}\log\alpha` to the
    evidence when :math:`N < D`, which favours wide layers. Here appending
    all-zero feature columns leaves the score unchanged.

    The maximum over :math:`(\alpha, \beta)` satisfies the paper's fixed-point
    equations :math:`\gamma = \sum_i \sigma_i / (\sigma_i + t)`,
    :math:`\alpha = \gamma / \lVert m\rVert^2`,
    :math:`\beta = (N - \gamma) / \lVert y - Fm\rVert^2`. Iterating them from
    :math:`\alpha = \beta = 1` can take thousands of steps, so they are solved
    instead by a search over a log grid of :math:`t` (12 decades below to 8
    above the largest :math:`\sigma_i`) refined by bisection; when the maximum
    is at :math:`t \to 0` or :math:`t \to \infty` (features that interpolate or
    ignore ``y``), the finite limit is approximated at the grid's end. One
    eigendecomposition of the smaller of :math:`F^\top F` and :math:`F F^\top`
    is shared by all targets. The score is
    :math:`\frac{1}{T}\sum_{j=1}^{T}\max_{\alpha,\beta}\mathcal{L}_j / N`.

    References
    ----------
    .. [1] K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of
       Pre-trained Models for Transfer Learning", ICML 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.metrics import logme_score
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(3, size=200)
    >>> informative = np.eye(3)[y] + 0.5 * rng.normal(size=(200, 3))
    >>> noise = rng.normal(size=(200, 3))
    >>> bool(logme_score(informative, y) > logme_score(noise, y))
    True
    """
    return logme_fit(features, y, regression=regression)[0]


@validate_params(
    {"features": ["array-like"], "y": ["array-like"], "shrinkage": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def h_score(features, y, *, shrinkage=False):
    r"""H-score: how much of the features' variance is explained by the classes.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the target samples.
    y : array-like of shape (n_samples,)
        Class labels (at least 2 classes).
    shrinkage : bool, default=False
        Replace :math:`\mathrm{cov}(f)` by its Ledoit-Wolf estimate
        (:class:`~sklearn.covariance.LedoitWolf`) and scale the between-class
        covariance by ``1 - shrinkage_``, as in Ibrahim et al. (2022). Use it
        when ``n_samples`` is not much larger than ``n_features``. When the
        estimate shrinks fully (``shrinkage_ == 1``) the score is 0.

    Returns
    -------
    score : float
        :math:`\mathrm{tr}(\mathrm{cov}(f)^{+}\,\mathrm{cov}(\mathbb{E}[f \mid y]))`,
        between 0 and ``n_classes - 1`` without shrinkage.

    See Also
    --------
    logme_score : also for regression targets; more stable for small samples.

    Notes
    -----
    Both covariances are the maximum-likelihood ones (divided by ``n_samples``);
    the pseudo-inverse drops eigenvalues below
    ``max(n_samples, n_features) * eps`` times the largest. Without shrinkage,
    when ``n_samples <= n_features`` the score equals ``n_classes - 1`` for
    any features in general position (the features span every direction of the
    centred samples), so it cannot rank them: use ``shrinkage=True``.

    References
    ----------
    .. [1] Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas,
       "An Information-Theoretic Approach to Transferability in Task Transfer
       Learning", ICIP 2019.
    .. [2] S. Ibrahim, N. Ponomareva, R. Mazumder, "Newer is not always better:
       Rethinking transferability metrics, their peculiarities, stability and
       performance", ECML PKDD 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.metrics import h_score
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(3, size=200)
    >>> informative = np.eye(3)[y] + 0.5 * rng.normal(size=(200, 3))
    >>> noise = rng.normal(size=(200, 3))
    >>> bool(h_score(informative, y) > h_score(noise, y))
    True
    """
    F = check_features(features, "features")
    _, y_idx = check_labels(y, "y", metric="h_score")
    check_same_length(F, "features", y_idx, "y")
    return h_score_from_labels(F, y_idx, shrinkage=bool(shrinkage))


@validate_params(
    {"source_proba": ["array-like"], "y": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def leep_score(source_proba, y):
    r"""LEEP: log expected empirical prediction (Nguyen et al., 2020).

    Parameters
    ----------
    source_proba : array-like of shape (n_samples, n_source_classes)
        The *source* model's predicted class probabilities on the target
        samples (``predict_proba``, or a softmax of its logits). Rows must sum
        to 1 (to within 1e-3).
    y : array-like of shape (n_samples,)
        Target class labels.

    Returns
    -------
    score : float
        :math:`\frac{1}{N}\sum_i \log \sum_z \hat P(y_i \mid z)\,\theta(x_i)_z`,
        at most 0; higher is better.

    See Also
    --------
    nce_score : the same idea from hard predicted labels.

    Notes
    -----
    :math:`\hat P(y, z) = \frac{1}{N}\sum_{i: y_i = y}\theta(x_i)_z` is the
    empirical joint of target labels and source classes, and
    :math:`\hat P(y \mid z) = \hat P(y, z) / \sum_{y'} \hat P(y', z)`.

    References
    ----------
    .. [1] C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New
       Measure to Evaluate Transferability of Learned Representations",
       ICML 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.metrics import leep_score
    >>> y = np.array([0, 0, 1, 1])
    >>> proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    >>> uninformative = np.full((4, 2), 0.5)
    >>> round(leep_score(uninformative, y), 4)
    -0.6931
    >>> bool(leep_score(proba, y) > leep_score(uninformative, y))
    True
    """
    P = check_features(source_proba, "source_proba")
    _, y_idx = check_labels(y, "y", metric="leep_score")
    check_same_length(P, "source_proba", y_idx, "y")
    return leep_from_proba(check_proba(P), y_idx)


@validate_params(
    {"source_labels": ["array-like"], "y": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def nce_score(source_labels, y):
    r"""Negative conditional entropy :math:`-H(Y \mid Z)` (Tran et al., 2019).

    Parameters
    ----------
    source_labels : array-like of shape (n_samples,)
        The source model's predicted (hard) labels on the target samples, e.g.
        ``source_proba.argmax(axis=1)``. Any label type.
    y : array-like of shape (n_samples,)
        Target class labels.

    Returns
    -------
    score : float
        :math:`\sum_{y, z}\hat P(y, z)\log\hat P(y \mid z)` from the empirical
        joint counts; at most 0, and 0 when ``source_labels`` determine ``y``.

    See Also
    --------
    leep_score : the same idea from predicted probabilities.

    References
    ----------
    .. [1] A. T. Tran, C. V. Nguyen, T. Hassner, "Transferability and Hardness
       of Supervised Classification Tasks", ICCV 2019.

    Examples
    --------
    >>> from sktransfer.metrics import nce_score
    >>> nce_score(["cat", "cat", "dog", "dog"], [0, 0, 1, 1])
    0.0
    >>> round(nce_score(["cat", "cat", "cat", "cat"], [0, 0, 1, 1]), 4)
    -0.6931
    """
    _, z_idx = check_labels(source_labels, "source_labels", min_classes=1,
                            metric="nce_score")
    _, y_idx = check_labels(y, "y", metric="nce_score")
    check_same_length(z_idx, "source_labels", y_idx, "y")
    return nce_from_labels(z_idx, y_idx)


_FEATURE_METRICS = {
    "logme": (logme_score, {}),
    "h_score": (h_score, {}),
    "h_score_shrinkage": (h_score, {"shrinkage": True}),
}


_METRIC = [StrOptions(set(_FEATURE_METRICS)), callable]


def _resolve_metric(metric, kwargs):
    func, fixed = (metric, {}) if callable(metric) else _FEATURE_METRICS[metric]
    clash = set(fixed) & set(kwargs)
    if clash:
        raise ValueError(f"metric={metric!r} already sets {sorted(clash)}; do not pass them.")
    params = {**fixed, **kwargs}
    try:
        inspect.signature(func).bind(None, None, **params)
    except TypeError as exc:
        raise TypeError(f"Invalid keyword arguments for metric={metric!r}: {exc}") from exc
    except ValueError:  # builtins without a signature
        pass
    return func, params


@validate_params({"metric": _METRIC}, prefer_skip_nested_validation=True)
def transferability_scorer(metric="logme", **kwargs):
    """A scikit-learn scorer that scores an estimator's *features* with ``metric``.

    ``scorer(estimator, X, y)`` computes ``estimator.transform(X)`` (for a
    :class:`~sklearn.pipeline.Pipeline` without ``transform``, the output of
    all steps but the last) and returns ``metric(features, y, **kwargs)``.
    Pass it as ``scoring=`` to :class:`~sklearn.model_selection.GridSearchCV`
    to choose a layer or a model of a
    :class:`~sktransfer.FeatureExtractorTransformer` without fine-tuning.

    Parameters
    ----------
    metric : {"logme", "h_score", "h_score_shrinkage"} or callable, default="logme"
        The score: :func:`logme_score`, :func:`h_score`, or :func:`h_score`
        with ``shrinkage=True``; or a callable ``metric(features, y, **kwargs)``
        returning a float (higher is better).
    **kwargs : dict
        Passed to the metric (e.g. ``regression=True`` for ``"logme"``).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``.

    See Also
    --------
    rank_models : score a dict of candidate extractors in one call.

    Notes
    -----
    A transformer has no ``score`` or ``predict``, and ``GridSearchCV`` accepts
    it with this explicit scorer. The default ``refit=True`` works (it refits
    the best transformer on all of ``X``, then ``search.transform`` is
    available); refitting a frozen extractor costs only a model load. Each
    candidate is scored on the held-out folds' features. Because a transformer
    is not a classifier, an integer ``cv`` gives *unshuffled* ``KFold``: with
    sorted labels a fold can hold one class and fail; pass
    ``cv=StratifiedKFold(5, shuffle=True, random_state=0)``. A frozen extractor
    learns nothing in ``fit``, so a single split that scores all samples,
    ``cv=[(np.arange(n), np.arange(n))]``, gives the full-data score at the
    lowest cost.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn.model_selection import GridSearchCV, StratifiedKFold
    >>> from sktransfer import FeatureExtractorTransformer
    >>> from sktransfer.metrics import transferability_scorer
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(120, 6)).astype("float32")
    >>> y = (X[:, 0] > 0).astype(int)
    >>> net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
    ...                     nn.Linear(8, 2))
    >>> scorer = transferability_scorer("logme")
    >>> search = GridSearchCV(
    ...     FeatureExtractorTransformer(model=net, device="cpu"), {"layer": [0, 1]},
    ...     scoring=scorer, cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)

    The scorer scores the features of the layer each candidate extracts:

    >>> from sktransfer.metrics import logme_score
    >>> best = search.best_estimator_
    >>> bool(scorer(best, X, y) == logme_score(best.transform(X), y))
    True
    """
    func, params = _resolve_metric(metric, kwargs)
    return TransferabilityScorer(func, params, metric, kwargs)


def _is_label_target(y, metric, params):
    if metric in ("h_score", "h_score_shrinkage"):
        return True
    regression = params.get("regression", "auto")
    if regression != "auto":
        return not regression
    return type_of_target(y) in ("binary", "multiclass")


@validate_params(
    {"candidates": [dict, list], "X": ["array-like"], "y": ["array-like"],
     "metric": _METRIC, "cv": ["cv_object"], "prefit": ["boolean"],
     "metric_params": [dict, None]},
    # the candidates' fit and the metric run inside: they validate their own parameters
    prefer_skip_nested_validation=False,
)
def rank_models(candidates, X, y, *, metric="logme", cv=None, prefit=False,
                metric_params=None):
    """Score candidate feature extractors on the same data, best first.

    Parameters
    ----------
    candidates : dict of str -> transformer, or list of (str, transformer)
        For example ``{"layer2": FeatureExtractorTransformer(model=net, layer=2)}``;
        any scikit-learn transformer works.
    X : array-like, DataFrame, image array or list of image paths
        Target inputs, in the layout the candidates accept.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Target labels (or regression targets for ``"logme"``).
    metric : {"logme", "h_score", "h_score_shrinkage"} or callable, default="logme"
        As in :func:`transferability_scorer`.
    cv : None, int, cross-validation generator or iterable, default=None
        ``None`` fits each candidate on all of ``X`` and scores its features of
        ``X``. Otherwise each fold fits a clone on the training part and scores
        the held-out features; ``score`` is the mean over folds and a
        ``score_std`` column is added. An int gives stratified folds for labels.
    prefit : bool, default=False
        If True, candidates are used as already fitted (only ``cv=None``);
        otherwise each is cloned and fitted on ``X``, leaving yours untouched.
    metric_params : dict or None, default=None
        Keyword arguments for the metric (e.g. ``{"regression": True}``).

    Returns
    -------
    ranking : pandas.DataFrame
        One row per candidate, best first, columns ``name``, ``score``,
        ``seconds`` (fit + feature extraction + scoring) and ``n_features``.

    See Also
    --------
    transferability_scorer : the same scores inside ``GridSearchCV``.

    References
    ----------
    .. [1] K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of
       Pre-trained Models for Transfer Learning", ICML 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from sktransfer.metrics import rank_models
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(100, 5))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> ranking = rank_models({"first column": FunctionTransformer(lambda X: X[:, :1]),
    ...                        "last column": FunctionTransformer(lambda X: X[:, -1:])},
    ...                       X, y)
    >>> ranking["name"].tolist()
    ['first column', 'last column']
    """
    items = list(candidates.items()) if isinstance(candidates, dict) else list(candidates)
    # what the constraints cannot say: non-empty, and a list of pairs
    if not items or not all(isinstance(it, tuple) and len(it) == 2 for it in items):
        raise ValueError(
            "candidates must be a non-empty dict {name: transformer} or a list of "
            "(name, transformer) pairs."
        )
    params = dict(metric_params or {})
    scorer = transferability_scorer(metric, **params)
    if prefit and cv is not None:
        raise ValueError("prefit=True scores fitted candidates as they are; use cv=None.")
    splits = None
    if cv is not None:
        cv = check_cv(cv, y, classifier=_is_label_target(y, metric, params))
        splits = list(cv.split(X, y))
    rows = []
    for name, transformer in items:
        try:
            row = score_candidate(transformer, X, y, scorer, splits, prefit)
        except Exception as exc:
            exc.add_note(f"(while scoring candidate {name!r} in rank_models)")
            raise
        rows.append({"name": name, **row})
    columns = ["name", "score"] + (["score_std"] if splits is not None else [])
    ranking = pd.DataFrame(rows, columns=columns + ["seconds", "n_features"])
    return ranking.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


@validate_params(
    {"source_features": ["array-like"], "target_features": ["array-like"],
     "cv": [Interval(numbers.Integral, 2, None, closed="left"),
            HasMethods(["split", "get_n_splits"])],
     "random_state": ["random_state"], "return_accuracy": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def domain_shift_score(source_features, target_features, *, cv=5, random_state=None,
                       return_accuracy=False):
    r"""Proxy A-distance between source and target features.

    A logistic regression (after :class:`~sklearn.preprocessing.StandardScaler`)
    learns to tell source from target samples; its cross-validated error
    :math:`\epsilon` gives :math:`d_A = 2(1 - 2\epsilon)`. The larger set is
    subsampled to the size of the smaller, so chance accuracy is 0.5.

    Parameters
    ----------
    source_features : array-like of shape (n_source, n_features)
        Features of source-domain samples.
    target_features : array-like of shape (n_target, n_features)
        Features of target-domain samples, from the same extractor.
    cv : int or cross-validation generator, default=5
        Folds of the domain classifier (an int gives shuffled stratified folds).
    random_state : int, RandomState or None, default=None
        Seeds the subsampling and the folds.
    return_accuracy : bool, default=False
        Also return the domain classifier's cross-validated accuracy.

    Returns
    -------
    score : float
        In ``[0, 2]``: about 0 when the two sets are indistinguishable by a
        linear classifier, 2 when they are perfectly separable. Errors above
        chance (0.5) count as 0.5, so the score is never negative.
    accuracy : float
        Cross-validated accuracy of the domain classifier, only when
        ``return_accuracy=True`` (``score = 2 * (2 * accuracy - 1)`` when
        ``accuracy >= 0.5``).

    Notes
    -----
    It measures how different the *inputs* of the two tasks look, not whether
    transfer will help. Use it on inputs of the same kind of task (the same
    labels or the same target, e.g. images from another camera, customers of
    another year): a large value warns that a model trained on the source may
    meet inputs it has never seen. When source and target are different tasks
    on purpose (other classes, as digits 0-4 -> 5-9), a good representation
    *separates* them, so a high score is expected and says nothing against
    transfer; compare candidate models with :func:`logme_score` instead. Small
    values (below ~0.2) are within noise of 0 for a few hundred samples. It is
    a *linear* distinguishability, a lower bound on the true divergence.

    References
    ----------
    .. [1] S. Ben-David, J. Blitzer, K. Crammer, F. Pereira, "Analysis of
       Representations for Domain Adaptation", NeurIPS 2006.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.metrics import domain_shift_score
    >>> rng = np.random.RandomState(0)
    >>> source = rng.normal(size=(200, 4))
    >>> score = domain_shift_score(source, rng.normal(size=(200, 4)), random_state=0)
    >>> bool(score < 0.5)
    True
    >>> score, acc = domain_shift_score(source, rng.normal(loc=4, size=(300, 4)),
    ...                                 random_state=0, return_accuracy=True)
    >>> bool(score > 1.9 and acc > 0.95)
    True
    """
    S = check_features(source_features, "source_features")
    T = check_features(target_features, "target_features")
    if S.shape[1] != T.shape[1]:
        raise ValueError(
            f"source_features has {S.shape[1]} features but target_features has "
            f"{T.shape[1]}; extract both with the same model and layer."
        )
    accuracy = domain_accuracy(S, T, cv, check_random_state(random_state))
    score = 2.0 * (1.0 - 2.0 * min(1.0 - accuracy, 0.5))
    return (score, accuracy) if return_accuracy else score
