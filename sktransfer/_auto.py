"""``freeze_depth="auto"``: the linear probe or fine-tuning, chosen by cross-validation.

Which of the two transfers better depends on the pair of tasks, not on the
data size: on ``bench_quality.py``'s tables (targets close to linear in the
pretrained features) the probe (``freeze_depth="all"``) beat fine-tuning every
block by 2 to 9 points, on its image tasks fine-tuning beat the probe by 2 to
38. The fit answers the question the way ``LogisticRegressionCV`` chooses its
``C``: scikit-learn's ``GridSearchCV`` over ``freeze_depth`` in ``(0, "all")``
on the training rows (3 stratified folds, shuffled with the fit's seed, scored
with the estimator's own ``score``), then a refit of the chosen one on all
rows. The folds' probes read the frozen-output store, so the probe candidate
costs little; each fine-tuning fold costs about two thirds of a fit.
"""

from __future__ import annotations

import numpy as np
from joblib import parallel_config
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

__all__ = ["AUTO_DEPTHS", "fit_auto_depth"]

#: the candidates of freeze_depth="auto", in the order GridSearchCV breaks ties
AUTO_DEPTHS = (0, "all")


def _folds(estimator, y, seed):
    """3 shuffled folds (stratified for a classifier, fewer when a class is that small),
    or ``None`` when the rows are too few to compare anything (fine-tune then)."""
    if is_classifier(estimator) and np.ndim(y) == 1:
        _, counts = np.unique(np.asarray(y), return_counts=True)
        n_splits = min(3, int(counts.min()))
        return StratifiedKFold(n_splits, shuffle=True, random_state=seed) \
            if n_splits >= 2 else None
    return KFold(3, shuffle=True, random_state=seed) if len(y) >= 6 else None


def fit_auto_depth(estimator, X, data, y, sample_weight, seed):
    """Fit ``estimator`` (``freeze_depth="auto"``) with the depth chosen by
    cross-validation; returns it with the chosen fit's attributes and
    ``freeze_depth_scores_`` (candidate -> mean fold score).

    ``X``, ``y`` and ``sample_weight`` have passed the fit's validation
    (``data`` is the validated ``X``, ``y`` the validated targets): the folds
    index the user's ``X`` where it is a DataFrame, list or array (a DataFrame
    keeps its columns), the validated array otherwise. ``train_blocks``
    decides what trains by itself: then the depth is 0 and no folds run; so
    too when a class has a single sample.
    """
    if not (hasattr(X, "iloc") or isinstance(X, (list, tuple, np.ndarray))):
        X = data.data
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight)
    candidate = clone(estimator).set_params(freeze_depth=0)
    cv = None if estimator.train_blocks is not None else _folds(estimator, y, seed)
    params = {} if sample_weight is None else {"sample_weight": sample_weight}
    if cv is None:
        best, scores = candidate.fit(X, y, **params), {0: np.nan}
    else:
        search = GridSearchCV(candidate, {"freeze_depth": list(AUTO_DEPTHS)}, cv=cv,
                              error_score="raise")
        # the folds in this thread: on a dask or Ray backend joblib would send them to the
        # cluster's workers, busy with the user's own search (as the probe's folds)
        with parallel_config(backend="sequential"):
            search.fit(X, y, **params)
        best = search.best_estimator_
        scores = dict(zip(AUTO_DEPTHS, search.cv_results_["mean_test_score"]))
    own = estimator.get_params(deep=False)
    estimator.__dict__.update({k: v for k, v in best.__dict__.items() if k not in own})
    estimator.freeze_depth_scores_ = scores
    return estimator
