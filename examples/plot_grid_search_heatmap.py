"""
How much to freeze, how hard to regularise: a grid search and how to read it
============================================================================

Fine-tuning a pretrained network on a small target set has two knobs that
matter most:

* ``freeze_depth``: how many of the pretrained blocks stay frozen (``0``
  trains them all, ``"all"`` trains only the new head);
* ``alpha``: how strongly the L2-SP penalty pulls the trained weights back
  toward their pretrained values (``penalty="l2_sp"``, Li et al. 2018).

Both are ordinary hyper-parameters of :class:`~sktransfer.FineTunedClassifier`,
so :class:`~sklearn.model_selection.GridSearchCV` can choose them by
cross-validation on the target data, with the network inside a
:class:`~sklearn.pipeline.Pipeline`. :func:`sktransfer.plot.plot_search_heatmap`
shows the whole grid at once and :func:`sktransfer.plot.plot_learning_curves`
shows how the chosen model trained.

The source network is an MLP that sktransfer pretrains on a synthetic source
table; the target is a related classification task with 150 labelled rows.
Nothing is downloaded. The script takes well under a minute on two CPU cores;
``SKTRANSFER_EXAMPLE_FAST=1`` (or ``--fast``) makes it shorter (fewer epochs).
"""

# %%
# Settings
# --------

import os
import sys
import time
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no screen: only write the figures to files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, list_blocks
from sktransfer.datasets import make_tabular_transfer
from sktransfer.plot import plot_learning_curves, plot_search_heatmap

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv

N_LABELLED = 150
PRETRAIN_EPOCHS, MAX_EPOCHS = (20, 60) if FAST else (40, 150)
torch.set_num_threads(1)  # tiny network: one thread per process (n_jobs=2 runs two)

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)

plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 10})
print(f"{'fast' if FAST else 'full'} mode: at most {MAX_EPOCHS} epochs per fit; "
      f"figures go to {OUTPUT_DIR}")

# %%
# Source and target tables
# ------------------------
# 20 observed columns are noisy mixtures of 6 hidden factors. The source
# table (4000 rows) has 4 numeric targets, functions of the factors; the
# target task is a yes/no label that depends on some of the same functions
# (:func:`sktransfer.datasets.make_tabular_transfer`).

data = make_tabular_transfer(n_source=4000, n_train=N_LABELLED, n_test=2000, random_state=0)
X_source, y_source = data.X_source, data.y_source
X, y, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
N_FEATURES = X.shape[1]

# %%
# Pretrain the source network
# ---------------------------
# An MLP with three hidden blocks, so that ``freeze_depth`` 0, 1, 2 and
# ``"all"`` (= 3) are four different choices. Plain training is a
# :class:`~sktransfer.FineTunedRegressor` with no penalty and one learning
# rate for every layer.


def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 4))


source_scaler = StandardScaler().fit(X_source)
t0 = time.perf_counter()
source = FineTunedRegressor(model=make_mlp, penalty=None, head_init="random", freeze_depth=0,
                            lr=3e-3,
                            max_epochs=PRETRAIN_EPOCHS, batch_size=128, random_state=0)
source.fit(source_scaler.transform(X_source), y_source)
print(f"pretrained in {time.perf_counter() - t0:.1f} s; training R^2 "
      f"{source.score(source_scaler.transform(X_source), y_source):.3f}")
print(list_blocks(source)[["index", "name", "n_params", "output_shape", "frozen_by"]]
      .to_string(index=False))

# %%
# The grid search
# ---------------
# The scaler is part of the pipeline, so each cross-validation fold scales
# with its own training rows only. ``early_stopping=True`` holds out 20% of
# each training fold, stops when its loss has not improved for 15 epochs and
# keeps the best epoch; it also records the validation loss that the
# learning curves below show. ``n_jobs=2`` runs two fits at a time.

pipe = Pipeline([
    ("scale", StandardScaler()),
    ("net", FineTunedClassifier(model=source, penalty="l2_sp", lr=3e-3,
                                max_epochs=MAX_EPOCHS, batch_size=32, early_stopping=True,
                                validation_fraction=0.2, n_iter_no_change=15,
                                random_state=0)),
])
param_grid = {"net__freeze_depth": [0, 1, 2, "all"], "net__alpha": [1e-4, 1e-2, 1]}
search = GridSearchCV(pipe, param_grid, cv=3, n_jobs=2)
t0 = time.perf_counter()
search.fit(X, y)
search_time = time.perf_counter() - t0
n_fits = 3 * len(search.cv_results_["params"])
print(f"{n_fits} fits + 1 refit in {search_time:.1f} s")
print(f"best: {search.best_params_}, CV accuracy {search.best_score_:.3f}")

results = pd.DataFrame(search.cv_results_)
table = results.pivot_table(index="param_net__freeze_depth", columns="param_net__alpha",
                            values="mean_test_score", sort=False)
std_table = results.pivot_table(index="param_net__freeze_depth", columns="param_net__alpha",
                                values="std_test_score", sort=False)
print("\nmean CV accuracy (rows: freeze_depth, columns: alpha)")
print(table.to_string(float_format="{:.3f}".format))
print("\nstd over the 3 folds")
print(std_table.to_string(float_format="{:.3f}".format))

# %%
# The heatmap
# -----------
# How to read it:
#
# * each cell is the **mean accuracy over the 3 validation folds** of one
#   ``(freeze_depth, alpha)`` pair; the red outline marks the pair the search
#   picked (``best_params_``), the one refitted on all 150 rows;
# * **down the rows**, more of the network is frozen: the top row fine-tunes
#   every block, the bottom row (``all``) trains only the new head on frozen
#   pretrained features. If the bottom row is as good as the top, the
#   pretrained features are already what the target needs; if the top is
#   better, the target needs the blocks to adapt;
# * **across the columns**, ``alpha`` grows: at ``1e-4`` the trainable blocks
#   may drift freely from their pretrained values, at ``1`` they are held
#   close to them (and the new head's weights are kept small). In the
#   ``all`` row only the head trains, so ``alpha`` acts on the head alone;
# * the colour scale spans only the observed range: compare the numbers with
#   the fold-to-fold standard deviations printed above before reading much
#   into neighbouring cells of similar colour.

ax = plot_search_heatmap(search, x="alpha", y="freeze_depth")
ax.set_xlabel("alpha (strength of the L2-SP penalty)")
ax.set_ylabel("freeze_depth (blocks frozen)")
ax.set_title(f"3-fold CV accuracy, {N_LABELLED} labelled rows (best outlined)")
ax.figure.tight_layout()
ax.figure.savefig(OUTPUT_DIR / "grid_search_heatmap.png", dpi=120)

# %%
# Learning curves of the chosen model
# -----------------------------------
# ``plot_learning_curves(search)`` reads ``history_`` of the refitted best
# pipeline's network. The solid line is the training loss (which includes the
# penalty ``alpha * R(theta)``), the dashed line the loss on the 20% held out
# for early stopping, and the star the epoch whose weights were kept. For
# contrast, the worst cell of the grid is refitted on the same rows. A wide
# gap between a low training loss and the validation loss is overfitting.
# The validation loss comes from only 30 rows, and a lower loss does not
# always mean a higher accuracy: the grid search ranks by accuracy.

worst = results.loc[results["mean_test_score"].idxmin(), "params"]
worst_pipe = clone(pipe).set_params(**worst).fit(X, y)


def describe(params):
    return ", ".join(f"{k.split('__')[-1]}={v}" for k, v in params.items())


curves = {f"best ({describe(search.best_params_)})": search,
          f"worst ({describe(worst)})": worst_pipe}
ax = plot_learning_curves(curves)
ax.set_ylabel("cross-entropy loss")
ax.figure.set_size_inches(8, 5)
ax.figure.tight_layout()
ax.figure.savefig(OUTPUT_DIR / "grid_search_learning_curves.png", dpi=120)

# %%
# Summary
# -------
# Computed from the numbers above. With 150 rows and 3 folds, each
# validation fold has 50 rows: one misclassified row is 2 points of accuracy,
# so cells closer than the fold-to-fold standard deviation are not really
# different.

best_net, worst_net = search.best_estimator_[-1], worst_pipe[-1]
best_std = results.loc[search.best_index_, "std_test_score"]
below = results[results["mean_test_score"] < search.best_score_ - best_std]
by_depth = table.max(axis=1)
print("\nSummary")
print(f"- The search picked {describe(search.best_params_)} with CV accuracy "
      f"{search.best_score_:.3f} ± {best_std:.3f} (std over the folds). "
      f"{len(results) - 1 - len(below)} of the other {len(results) - 1} cells are within "
      "one std of it, so the choice among those is largely the luck of the folds.")
within = results.drop(index=below.index.union([search.best_index_]))
if len(within) and len(within) <= len(below):
    print("  Within one std of the best: "
          + "; ".join(describe(p) for p in within["params"]) + ".")
elif len(below):
    print("  More than one std below the best: "
          + "; ".join(describe(p) for p in below["params"]) + ".")
print("- Best accuracy per freeze_depth (over alpha): "
      + ", ".join(f"{d}: {v:.3f}" for d, v in by_depth.items())
      + f"; the whole grid spans {table.min().min():.3f} to {table.max().max():.3f}.")
spread_alpha = table.max(axis=1) - table.min(axis=1)
d_max = spread_alpha.idxmax()
print(f"- alpha matters most at freeze_depth={d_max} ({100 * spread_alpha[d_max]:.1f} points "
      f"between its best alpha={table.loc[d_max].idxmax():g} and worst "
      f"alpha={table.loc[d_max].idxmin():g}); elsewhere at most "
      f"{100 * spread_alpha.drop(d_max).max():.1f} points.")


def curve_facts(net):
    """(best epoch, its validation loss, its training loss) from ``history_``."""
    valid = np.array([row["valid_loss"] for row in net.history_])
    k = int(np.argmin(valid))
    return k + 1, valid[k], net.history_[k]["train_loss"]


for name, net in (("best", best_net), ("worst", worst_net)):
    epoch, v, t = curve_facts(net)
    print(f"- Learning curve, {name}: {net.n_iter_} epochs run (at most {MAX_EPOCHS}); lowest "
          f"validation loss {v:.3f} at epoch {epoch}, where the training loss was {t:.3f}.")
print(f"- On {len(X_test)} held-out rows: best {search.score(X_test, y_test):.3f}, "
      f"worst cell {worst_pipe.score(X_test, y_test):.3f}.")
print(f"\nFigures written to {OUTPUT_DIR}")

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
