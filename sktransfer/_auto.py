"""``freeze_depth="auto"``: the linear probe or fine-tuning, chosen by cross-validation;
with ``lr="auto"``, fine-tuning at two learning rates.

Which of the two transfers better depends on the pair of tasks, not on the
data size: on ``bench_quality.py``'s tables (targets close to linear in the
pretrained features) the probe (``freeze_depth="all"``) beat fine-tuning every
block by 2 to 9 points, on its image tasks fine-tuning beat the probe by 2 to
38. The fit answers the question the way ``LogisticRegressionCV`` chooses its
``C``: scikit-learn's ``GridSearchCV`` over ``freeze_depth`` in ``(0, "all")``
on the training rows (3 stratified folds, shuffled with the fit's seed, scored
with the estimator's own ``score``), then a refit of the chosen one on all
rows. The choice follows the one-standard-error rule (Breiman et al., 1984;
Hastie et al., *Elements of Statistical Learning*, 7.10): the simpler model,
the probe, unless fine-tuning beats it by more than one standard error of the
per-fold differences; with a few dozen rows the fold scores are noisy, and on
``bench_quality.py`` the plain larger mean picked fine-tuning on 2 of 10
synth-reg draws (R^2 0.725 against the probe's 0.742), the rule on 1 (0.733),
while the image tasks where fine-tuning wins by 15 to 40 points kept it. The
rule is ``GridSearchCV``'s ``refit`` callable, as in scikit-learn's example
"Balance model complexity and cross-validated score". The folds' probes read
the frozen-output store, so the probe candidate costs little; each
fine-tuning fold costs about two thirds of a fit.

``lr="auto"`` (the default) adds a second fine-tuning candidate: how far the
pretrained weights should move depends on the pair of tasks too. Every
``"auto"`` rate warms up over a tenth of the epochs, then anneals
(``lr_schedule="warmup_cosine"``, unless ``lr_schedule`` is set). On
``bench_quality.py``'s image tasks, whose sources were trained on other
classes, fine-tuning at 1e-2 beat 3e-3 by up to 3.5 points; on its tables,
where the pretrained features are close to what the target needs, it lost
1.3 to 5.4 (R^2 0.60 against 0.66 on synth-reg, 0.86 against 0.89 on
pretrain-5). The candidates are fine-tuning at 3e-3 and at 1e-2, and the
probe; the fine-tuning candidate with the larger mean fold score then meets
the probe under the one-standard-error rule. With an explicit
``freeze_depth`` no folds run and ``lr="auto"`` is the lower rate, 3e-3 with
the warm-up, for three times ``max_epochs="auto"``'s steps (1,500, not 500)
where a pretrained block trains: about as far as the higher rate's 500 steps
would move the weights, at a rate that is safer where nothing chooses
between the two (a head alone on frozen blocks keeps 500). Fine-tuning every
block that way (``freeze_depth=0``) gained +2.4, +2.5 and +1.0 points on the
digits at 5, 10 and 30 labels per class, +0.5 and +0.4 on digits-bn and +0.7
on shifted-25 against 500 steps, and lost 0.0 to 2.1 on the tables, where
the probe beats any fine-tuning (1e-2 for 500 steps lost 1.3 to 5.4 there).
A ``GridSearchCV`` over ``freeze_depth`` x ``alpha`` went from 0.830 / 0.894
to 0.875 / 0.929 on the digits at 5 / 10 labels per class (plain skorch from
scratch: 0.823 / 0.904; over 10 draws 0.883 / 0.918 against 0.839 / 0.889),
in about 2.5x its time (60 s against 25 s a search at 5 per class, two
runs on 2 shared cores). Inside the search the rates are numbers with 500
steps each: with 1,500 there (or 1,000), the folds chose fine-tuning on a
synth-reg draw where the probe was 12 (11) points of R^2 better. Put ``lr``
in your search to choose it.
"""

from __future__ import annotations

import numpy as np
from joblib import parallel_config
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, KFold

from ._heads import class_folds
from ._trainer import AUTO_STEPS

__all__ = ["AUTO_DEPTHS", "AUTO_LRS", "AUTO_SCHEDULE", "AUTO_SET_DEPTH_STEPS",
           "one_standard_error", "fit_auto_depth"]

#: the candidates of freeze_depth="auto": fine-tuning, then the probe (the simpler one)
AUTO_DEPTHS = (0, "all")
#: the fine-tuning rates of lr="auto" (the first one outside freeze_depth="auto"'s search)
AUTO_LRS = (3e-3, 1e-2)
#: their schedule where lr_schedule is None
AUTO_SCHEDULE = "warmup_cosine"
#: max_epochs="auto"'s steps where lr="auto" is not searched (a set freeze_depth): the lower
#: rate for as long as it takes to move about as far as the higher one's AUTO_STEPS
AUTO_SET_DEPTH_STEPS = 3 * AUTO_STEPS


def one_standard_error(cv_results):
    """``GridSearchCV`` ``refit`` callable: the candidates are fine-tuning ones, then the
    probe (last). The index of the fine-tuning candidate with the largest mean fold
    score if its fold scores beat the probe's by more than one standard error of
    the paired differences, of the probe otherwise."""
    n = sum(1 for k in cv_results if k.startswith("split") and k.endswith("_test_score"))
    folds = np.array([cv_results[f"split{i}_test_score"] for i in range(n)])
    best = int(np.argmax(folds[:, :-1].mean(axis=0)))
    gain = folds[:, best] - folds[:, -1]
    return best if gain.mean() > gain.std(ddof=1) / np.sqrt(n) else folds.shape[1] - 1


def _candidates(estimator):
    """The parameter grid of the search: fine-tuning (at each rate of ``lr="auto"``),
    then the probe. ``lr="auto"``'s rates are spelt out as numbers with its schedule
    (``_BaseFineTuned._lr_schedule``), so that every candidate runs
    ``max_epochs="auto"``'s 500 steps (``lr="auto"`` itself is a set depth's: 3x as
    many)."""
    tune, probe = ({"freeze_depth": [depth]} for depth in AUTO_DEPTHS)
    if not isinstance(estimator.lr, str):
        return [tune, probe]
    schedule = [estimator._lr_schedule()]  # a numeric lr would keep a constant rate
    tuned = [{**tune, "lr": [rate], "lr_schedule": schedule} for rate in AUTO_LRS]
    return tuned + [{**probe, "lr": [AUTO_LRS[0]], "lr_schedule": schedule}]


def _folds(estimator, y, seed):
    """3 shuffled folds (stratified for a classifier, fewer when a class is that small),
    or ``None`` when the rows are too few to compare anything (fine-tune then)."""
    if is_classifier(estimator) and np.ndim(y) == 1:
        return class_folds(y, seed)
    return KFold(3, shuffle=True, random_state=seed) if len(y) >= 6 else None


def fit_auto_depth(estimator, X, data, y, sample_weight, seed):
    """Fit ``estimator`` (``freeze_depth="auto"``) with the depth (and, with
    ``lr="auto"``, the rate) chosen by cross-validation; returns it with the
    chosen fit's attributes, ``freeze_depth_scores_`` (depth -> mean fold score;
    fine-tuning's is its best rate's) and, with ``lr="auto"``, ``lr_scores_``
    (fine-tuning's rate -> mean fold score).

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
    if cv is None:  # fine-tuning, as at a set depth (lr="auto": 3e-3 for 1,500 steps)
        best = candidate.fit(X, y, **params)
        depths, rates = {0: np.nan}, {AUTO_LRS[0]: np.nan}
    else:
        search = GridSearchCV(candidate, _candidates(estimator), cv=cv,
                              refit=one_standard_error, error_score="raise")
        # the folds in this thread: on a dask or Ray backend joblib would send them to the
        # cluster's workers, busy with the user's own search (as the probe's folds)
        with parallel_config(backend="sequential"):
            search.fit(X, y, **params)
        best = search.best_estimator_
        means = search.cv_results_["mean_test_score"]
        depths = {0: float(np.max(means[:-1])), "all": float(means[-1])}
        rates = dict(zip(AUTO_LRS, map(float, means[:-1])))
    own = estimator.get_params(deep=False)
    estimator.__dict__.update({k: v for k, v in best.__dict__.items() if k not in own})
    estimator.freeze_depth_scores_ = depths
    if isinstance(estimator.lr, str):
        estimator.lr_scores_ = rates
    return estimator
