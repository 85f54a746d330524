"""
Pretraining on a table with missing cells
=========================================

Real tables have holes. A :class:`~sktransfer.TabularPretrainer` takes them
as they are: with ``method="masked"`` a missing cell is a cell that is always
masked (replaced by an observed value of its column from another row, with no
loss on it), the statistics of the standardisation ignore it, and the encoder
fills it with the column's mean; an estimator built on the pretrainer
(``model=pre``) accepts NaN in the columns the pretrainer saw with NaN.

We take scikit-learn's digits as a 64-column table (constant columns
included, as it comes), remove 10 % and then 30 % of the cells at random
(training and test rows alike), pretrain on all training rows without their
labels, and label 10 rows per class. On the same held-out rows we compare:

* **pretrainer + fine-tuning**: a masked pretrainer fitted on the rows with
  their holes, then a :class:`~sktransfer.FineTunedClassifier` on it, with
  ``freeze_depth`` chosen by a :class:`~sklearn.model_selection.GridSearchCV`
  on the labelled rows (NaN go straight in);
* **impute, then pretrainer + fine-tuning**: the same, on mean-imputed rows
  (what native missing-cell handling is measured against);
* **SimpleImputer + HistGradientBoostingClassifier** and **SimpleImputer +
  MLPClassifier** (scikit-learn's MLP, on standardised columns), and, for
  reference, gradient boosting with its own native NaN handling.

Nothing is downloaded. The full run takes several minutes on two CPU cores;
set ``SKTRANSFER_EXAMPLE_FAST=1`` (or pass ``--fast``) for a version that runs
in about a minute (one draw of the labelled rows, fewer epochs).
"""

# %%
# Settings
# --------

import os
import sys
import time

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no screen: only write the figures to files

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier, TabularPretrainer

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv

MISSING_RATES = (0.1, 0.3)
PER_CLASS = 10  # labelled rows per class
if FAST:
    N_DRAWS, PRETRAIN_EPOCHS, EPOCHS, HIDDEN = 1, 15, 20, (128, 128)
else:
    N_DRAWS, PRETRAIN_EPOCHS, EPOCHS, HIDDEN = 3, 100, 50, (256, 256)
TRAINING = {"lr": 3e-3, "backbone_lr_scale": 1.0, "max_epochs": EPOCHS, "batch_size": 16}
torch.set_num_threads(1)  # tiny networks: one thread is as fast, and robust when shared

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
print(f"{'fast' if FAST else 'full'} mode: {N_DRAWS} draw(s) of the labelled rows, "
      f"{PRETRAIN_EPOCHS} pretraining epochs")

# %%
# The table, with holes
# ---------------------
# A quarter of the rows is held out for testing. Cells go missing at random,
# independently of their value, in every row.

digits = load_digits()
X_full, X_test_full, y_pool, y_test = train_test_split(
    digits.data / 16, digits.target, test_size=0.25, stratify=digits.target,
    random_state=0,
)


def punch_holes(X, rate, seed):
    rng = np.random.RandomState(seed)
    return np.where(rng.uniform(size=X.shape) < rate, np.nan, X)


print(f"{len(X_full)} unlabeled training rows, {len(X_test_full)} test rows, "
      f"{X_full.shape[1]} columns, {(X_full.std(axis=0) == 0).sum()} of them constant")

# %%
# The contenders
# --------------
# Each function returns an unfitted estimator for one draw (``seed``) of the
# labelled rows. The two pretrainers are fitted once per missing rate, on all
# training rows, without labels.


def fine_tuned(pretrainer, seed):
    clf = FineTunedClassifier(model=pretrainer, random_state=seed, **TRAINING)
    return GridSearchCV(clf, {"freeze_depth": [0, "all"]}, cv=3)


def contenders(pre_nan, pre_imputed, imputer):
    return {
        "pretrainer + fine-tuning": lambda seed: fine_tuned(pre_nan, seed),
        "impute, then pretrainer + fine-tuning": lambda seed: make_pipeline(
            imputer, fine_tuned(pre_imputed, seed)),
        "SimpleImputer + HistGradientBoosting": lambda seed: make_pipeline(
            SimpleImputer(), HistGradientBoostingClassifier(random_state=seed)),
        "SimpleImputer + MLPClassifier": lambda seed: make_pipeline(
            SimpleImputer(), StandardScaler(),
            MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=1000, random_state=seed)),
        "HistGradientBoosting (native NaN)": lambda seed: HistGradientBoostingClassifier(
            random_state=seed),
    }


def draw_labelled(seed):
    rng = np.random.RandomState(seed)
    return np.concatenate([
        rng.choice(np.flatnonzero(y_pool == c), PER_CLASS, replace=False)
        for c in np.unique(y_pool)
    ])


# %%
# Run the comparison
# ------------------
# For each missing rate: punch the holes, pretrain, then fit every contender
# on the same labelled rows of each draw and score it on the same test rows.

rows = []
for rate in MISSING_RATES:
    X_pool = punch_holes(X_full, rate, seed=1)
    X_test = punch_holes(X_test_full, rate, seed=2)
    pretrain = {"hidden_layer_sizes": HIDDEN, "max_epochs": PRETRAIN_EPOCHS,
                "random_state": 0}
    t0 = time.perf_counter()
    pre_nan = TabularPretrainer(**pretrain).fit(X_pool)
    imputer = FrozenEstimator(SimpleImputer().fit(X_pool))  # the pool's column means
    pre_imputed = TabularPretrainer(**pretrain).fit(imputer.transform(X_pool))
    print(f"\n{rate:.0%} missing: {np.isnan(X_pool).mean():.1%} of the training cells; "
          f"two pretrainers fitted in {time.perf_counter() - t0:.0f} s")
    for seed in range(N_DRAWS):
        idx = draw_labelled(seed)
        for name, make in contenders(pre_nan, pre_imputed, imputer).items():
            t0 = time.perf_counter()
            est = make(seed).fit(X_pool[idx], y_pool[idx])
            rows.append({"missing": f"{rate:.0%}", "method": name, "draw": seed,
                         "accuracy": est.score(X_test, y_test),
                         "fit time (s)": time.perf_counter() - t0})
results = pd.DataFrame(rows)

# %%
# Results
# -------
# Mean test accuracy over the draws of the labelled rows (and its standard
# deviation); the fit time excludes pretraining.

table = (results.groupby(["missing", "method"], sort=False)
         .agg(accuracy=("accuracy", "mean"), std=("accuracy", "std"),
              fit_s=("fit time (s)", "mean"))
         .reset_index().rename(columns={"fit_s": "fit time (s)"}))
table["std"] = table["std"].fillna(0.0)
with pd.option_context("display.width", 120):
    print(table.to_string(index=False, float_format="{:.3f}".format))

fig, ax = plt.subplots(figsize=(10, 5))
methods = list(dict.fromkeys(table["method"]))
width = 0.8 / len(methods)
for i, method in enumerate(methods):
    part = table[table["method"] == method]
    ax.bar(np.arange(len(MISSING_RATES)) + (i - (len(methods) - 1) / 2) * width,
           part["accuracy"], width, yerr=part["std"], capsize=3, label=method)
ax.set_xticks(np.arange(len(MISSING_RATES)), [f"{r:.0%} of cells missing"
                                              for r in MISSING_RATES])
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1)
ax.set_title(f"Digits table with missing cells, {PER_CLASS} labels per class")
ax.legend(loc="lower left", fontsize=9)
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "tabular_missing_values.png", dpi=110)

# %%
# Summary
# -------
# Every sentence is computed from the numbers above. A gap counts only when it
# is larger than 1 point and than the spread over the draws.

acc = table.pivot(index="missing", columns="method", values="accuracy")
std = table.pivot(index="missing", columns="method", values="std")
print("\nSummary")
for missing in acc.index:
    ours = "pretrainer + fine-tuning"
    for other in methods:
        if other == ours:
            continue
        gap = acc.loc[missing, ours] - acc.loc[missing, other]
        noise = max(std.loc[missing, ours], std.loc[missing, other], 0.01)
        verdict = "ahead of" if gap > noise else "behind" if gap < -noise else "level with"
        print(f"- {missing} missing: {ours} ({acc.loc[missing, ours]:.3f}) is {verdict} "
              f"{other} ({acc.loc[missing, other]:.3f}), {100 * gap:+.1f} points.")

# %%
# What to take away
# -----------------
# Missing cells need no imputation step in front of a pretrainer or of the
# estimators built on it, and a search over fine-tuning settings runs on the
# table as it is. Whether pretraining pays depends, as without holes, on the
# number of unlabelled rows and of labels; read the summary above for this
# table, and run the same comparison on your own data before relying on it.

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
