"""
Transfer learning with few labels: scratch vs frozen features vs fine-tuning
============================================================================

A small convolutional network learns to read the digits 0-4 (the *source*
task). Does what it learned help to read the digits 5-9 (the *target* task)
when only a handful of target images are labelled? On the same held-out
target test set we compare, for 5 to 50 labelled images per class:

* the same CNN **trained from scratch** on the few target labels;
* the pretrained CNN as a frozen **feature extractor**
  (:class:`~sktransfer.FeatureExtractorTransformer`) followed by a logistic
  regression, in a scikit-learn :class:`~sklearn.pipeline.Pipeline`;
* **fine-tuning** the pretrained CNN (:class:`~sktransfer.FineTunedClassifier`)
  with its defaults: a head that starts as a logistic-regression probe, the
  L2-SP penalty, and ``freeze_depth="auto"``, ``lr="auto"``: each ``fit``
  chooses by 3-fold cross-validation on its labelled images between that
  probe and fine-tuning every block at a learning rate of 3e-3 or 1e-2.

Everything runs on scikit-learn's bundled digits, so nothing is downloaded.
The script takes a few minutes on two CPU cores; set the environment variable
``SKTRANSFER_EXAMPLE_FAST=1`` (or pass ``--fast``) for a version that runs in
under a minute with fewer label budgets, epochs and grid points.
"""

# %%
# Settings
# --------
# The fast mode exists for continuous integration: it checks that the script
# runs, its numbers are noisier (one draw of the labelled set, fewer epochs).

import os
import sys
import time
from functools import partial
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no screen: only write the figures to files

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from sktransfer import FeatureExtractorTransformer, FineTunedClassifier, list_blocks
from sktransfer.datasets import load_shifted_digits, make_digits_cnn, split_per_class

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv

if FAST:
    BUDGETS = (5, 25)  # labelled images per target class
    N_REPEATS = 1  # draws of the labelled set per budget
    PRETRAIN_EPOCHS, EPOCHS = 5, 20
    LAYERS, CS = (1, 2), (1.0,)
else:
    BUDGETS = (5, 10, 25, 50)
    N_REPEATS = 3
    PRETRAIN_EPOCHS, EPOCHS = 15, 40
    LAYERS, CS = (1, 2), (0.1, 1.0, 10.0)

# Training from scratch gets plain supervised settings that work well for this
# CNN (tuned for it). Fine-tuning keeps sktransfer's defaults: a head that
# starts as a logistic-regression probe on the pretrained features, and
# ``max_epochs="auto"`` (about 500 optimisation steps however few the labels).
SCRATCH_TRAINING = {"lr": 3e-3, "backbone_lr_scale": 1.0, "max_epochs": EPOCHS,
                    "batch_size": 16, "head_init": "random", "freeze_depth": 0}
N_JOBS = 2  # parallel fits inside GridSearchCV
# The network and its batches are tiny: one thread per process is as fast as
# several, and it does not slow to a crawl when the CPU is shared (a larger
# model on a dedicated machine would keep torch's default).
torch.set_num_threads(1)

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)

plt.rcParams.update({"font.size": 12, "axes.titlesize": 14, "legend.fontsize": 11})
print(f"{'fast' if FAST else 'full'} mode: label budgets {BUDGETS}, {N_REPEATS} draw(s) "
      f"each, {EPOCHS} epochs; figures go to {OUTPUT_DIR}")

# %%
# Source and target tasks
# -----------------------
# Each 8x8 digit is pasted at a random position on a 12x12 canvas. On centred
# digits, raw pixels are already as good as any learned features, so there is
# nothing to transfer. Shifted digits need what a CNN learns on the source
# task: stroke detectors that work wherever the digit is.
#
# * source: digits 0-4, three shifted copies of each training image, and a
#   held-out source test set to check the pretraining;
# * target: digits 5-9, one shifted copy; half of it is a pool the labelled
#   images are drawn from, the other half is the test set of every comparison.
#
# :func:`sktransfer.datasets.load_shifted_digits` builds both from
# scikit-learn's bundled digits.

data = load_shifted_digits(n_per_class=None)  # the labelled images are drawn below
X_source, y_source = data.X_source, data.y_source
X_source_test, y_source_test = data.X_source_test, data.y_source_test
X_pool, y_pool, X_test, y_test = data.X_pool, data.y_pool, data.X_test, data.y_test
print(f"source: {len(X_source)} training images of digits 0-4 "
      f"({len(X_source_test)} held out)")
print(f"target: a pool of {len(X_pool)} images of digits 5-9 to draw labels from, "
      f"{len(X_test)} test images")

fig, axes = plt.subplots(2, 8, figsize=(10, 3.6))
for ax, img, lab in zip(axes[0], X_source, y_source):
    ax.imshow(img[0], cmap="gray_r")
    ax.set_title(str(lab))
for ax, img, lab in zip(axes[1], X_pool, y_pool):
    ax.imshow(img[0], cmap="gray_r")
    ax.set_title(str(lab))
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("source", fontsize=12)
axes[1, 0].set_ylabel("target", fontsize=12)
fig.suptitle("Digits at random positions on a 12x12 canvas")
fig.tight_layout(h_pad=1.5)
fig.savefig(OUTPUT_DIR / "digits_transfer_samples.png", dpi=120)

# %%
# Pretrain a CNN on the source task
# ---------------------------------
# sktransfer also trains the source model: a :class:`~sktransfer.FineTunedClassifier`
# whose ``model`` is a factory of an *untrained* network, with no penalty and
# one learning rate for all layers, is plain supervised training. The factory,
# :func:`sktransfer.datasets.make_digits_cnn`, returns a plain ``nn.Sequential``
# (conv-pool, conv-pool, a 64-unit linear layer, a 5-class head) with initial
# weights seeded by its ``random_state``; the estimator's ``random_state``
# seeds the new head, the shuffling of the batches and the rest.

t0 = time.perf_counter()
source_clf = FineTunedClassifier(
    model=make_digits_cnn, penalty=None, head_init="random", freeze_depth=0, lr=3e-3,
    max_epochs=PRETRAIN_EPOCHS, batch_size=64, random_state=0,
).fit(X_source, y_source)
print(f"pretrained in {time.perf_counter() - t0:.1f} s; accuracy on held-out source "
      f"digits: {source_clf.score(X_source_test, y_source_test):.3f}")

# %%
# The fitted ``source_clf`` is itself a valid ``model=`` for the target
# estimators below. :func:`~sktransfer.list_blocks` shows its blocks, i.e.
# what each ``freeze_depth`` freezes and which ``layer`` a feature
# extractor can return. Parameter-free layers (ReLU, pooling, flatten) join
# the block before them, hence names such as ``"3-6"`` (children 3 to 6).

blocks = list_blocks(source_clf, input_shape=(1, 12, 12))
print(blocks.to_string(index=False))
print("head:", blocks.attrs["head"])

# %%
# The three contenders
# --------------------
# Each function returns an unfitted scikit-learn estimator for one draw
# (``seed``) of the labelled set. Hyper-parameters of the two transfer
# methods are chosen by 3-fold cross-validation on the labelled images only:
# the test set is never used for any choice.


def from_scratch(seed):
    """The same CNN, randomly initialised, trained on the target labels only."""
    return FineTunedClassifier(model=partial(make_digits_cnn, random_state=seed), penalty=None,
                               random_state=seed, **SCRATCH_TRAINING)


def frozen_features(seed):
    """Frozen pretrained blocks as features, then a logistic regression.

    ``layer`` picks the block whose output is used: 1 is the last
    convolutional block (288 features), 2 the penultimate layer (64).
    """
    pipe = Pipeline([
        ("features", FeatureExtractorTransformer(model=source_clf)),
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(max_iter=5000)),
    ])
    grid = {"features__layer": LAYERS, "logreg__C": CS}
    return GridSearchCV(pipe, grid, cv=3, n_jobs=N_JOBS)


def fine_tuned(seed):
    """Fine-tune the pretrained CNN with a new head, nothing set but the seed.

    The source is a classifier, so ``penalty="auto"`` (the default) is
    Co-Tuning: its head keeps training next to the new one, toward the source
    classes each target class resembles. ``freeze_depth="auto"`` and
    ``lr="auto"`` (the defaults) run the cross-validation inside ``fit``: the
    probe (every block frozen), or every block fine-tuned at 3e-3 or at 1e-2,
    each with a warm-up and cosine annealing. ``freeze_depth_``, ``lr_`` and
    ``penalty_`` say which. No outer search is needed; a
    ``GridSearchCV`` over ``alpha`` or the adaptation methods can still wrap it.
    """
    clf = FineTunedClassifier(model=source_clf, random_state=seed)
    if FAST:
        clf.set_params(max_epochs=EPOCHS)
    return clf


METHODS = {
    "from scratch": from_scratch,
    "frozen features + logreg": frozen_features,
    "fine-tuned (defaults)": fine_tuned,
}
SCRATCH, FEATURES, TUNED = METHODS


def chosen_by_cv(est):
    """What cross-validation chose: a search's best parameters, or what
    ``freeze_depth="auto"`` chose inside ``fit``."""
    if hasattr(est, "best_params_"):
        chosen = est.best_params_
    elif hasattr(est, "freeze_depth_scores_"):
        chosen = {"freeze_depth": est.freeze_depth_, "lr": est.lr_}
    else:
        chosen = {}
    return ", ".join(f"{k.split('__')[-1]}={v}" for k, v in chosen.items())


def draw_labelled(n_per_class, seed):
    """``n_per_class`` labelled images of each target class, from the pool."""
    X_lab, _, y_lab, _ = split_per_class(X_pool, y_pool, n_per_class, random_state=seed)
    return X_lab, y_lab


# %%
# Run the comparison
# ------------------
# Every method sees the same labelled images for a given budget and draw.
# "fit time" is the whole ``fit``, cross-validated search included; "final
# fit" is the time of the final model alone (``refit_time_`` of the search;
# for the fine-tuning defaults, whose folds run inside ``fit``, the whole fit).

rows, fitted = [], {}
n_runs = len(BUDGETS) * N_REPEATS * len(METHODS)
with tqdm(total=n_runs, desc="fits", unit="run") as progress:
    for n_per_class in BUDGETS:
        for seed in range(N_REPEATS):
            X_lab, y_lab = draw_labelled(n_per_class, seed)
            for method, make_estimator in METHODS.items():
                progress.set_postfix_str(f"{method}, {n_per_class} labels/class")
                est = make_estimator(seed)
                t0 = time.perf_counter()
                est.fit(X_lab, y_lab)
                fit_time = time.perf_counter() - t0
                rows.append({
                    "method": method,
                    "labels/class": n_per_class,
                    "draw": seed,
                    "accuracy": est.score(X_test, y_test),
                    "fit time (s)": fit_time,
                    "final fit (s)": getattr(est, "refit_time_", fit_time),
                    "chosen by CV": chosen_by_cv(est),
                })
                fitted[method, n_per_class, seed] = est
                progress.update()

results = pd.DataFrame(rows)

# %%
# Results
# -------
# Mean test accuracy over the draws of the labelled set, and its standard
# deviation: differences smaller than that are noise. The second table shows
# what cross-validation chose. With 5 labels per class each of the 3 folds
# holds fewer than 10 images, so these choices are themselves noisy.

table = (
    results.groupby(["labels/class", "method"], sort=False)
    .agg(accuracy=("accuracy", "mean"), std=("accuracy", "std"),
         fit_s=("fit time (s)", "mean"), final_s=("final fit (s)", "mean"))
    .reset_index()
    .rename(columns={"fit_s": "fit time (s)", "final_s": "final fit (s)"})
)
table["std"] = table["std"].fillna(0.0)
with pd.option_context("display.width", 120):
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print("\nHyper-parameters chosen by cross-validation:")
    chosen = results[results["chosen by CV"] != ""]
    print(chosen[["method", "labels/class", "draw", "chosen by CV"]].to_string(index=False))

# %%
# Accuracy against the number of labels
# -------------------------------------

fig, ax = plt.subplots(figsize=(7, 4.8))
for method, marker in zip(METHODS, ("o", "s", "^")):
    part = table[table["method"] == method]
    ax.errorbar(part["labels/class"], part["accuracy"], yerr=part["std"], marker=marker,
                markersize=7, capsize=4, linewidth=2, label=method)
ax.axhline(0.2, color="grey", linestyle=":", label="chance (5 classes)")
ax.set_xscale("log")
ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
ax.minorticks_off()
ax.set_ylim(0, 1)
ax.set_xlabel("labelled images per target class (log scale)")
ax.set_ylabel("test accuracy on digits 5-9")
ax.set_title("Transfer from digits 0-4 to digits 5-9")
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "digits_transfer_accuracy.png", dpi=120)

# %%
# Learning curves
# ---------------
# ``history_`` holds one row per epoch, with the number of optimisation steps
# it took (``steps``). The two methods run different numbers of epochs
# (fine-tuning's ``max_epochs="auto"`` budgets steps), so the curves are drawn
# against steps. Fine-tuning's ``history_`` is that of its final fit, on all
# labelled images with the settings its inner folds chose. The fine-tuning
# loss includes the small ``alpha * R(theta)`` penalty term, so it is, if
# anything, overstated; it starts low because the head starts as a probe.

CURVE_BUDGET = BUDGETS[1] if len(BUDGETS) > 2 else BUDGETS[0]


def train_curve(est):
    """(steps at the end of each epoch, training loss of each epoch)."""
    est = getattr(est, "best_estimator_", est)
    steps = np.cumsum([row["steps"] for row in est.history_])
    return steps, np.array([row["train_loss"] for row in est.history_])


curves = {method: [train_curve(fitted[method, CURVE_BUDGET, s]) for s in range(N_REPEATS)]
          for method in (SCRATCH, TUNED)}


def loss_at(runs, step):
    """Mean over the draws of the training loss of the epoch in which ``step`` falls."""
    return float(np.mean([loss[min(np.searchsorted(steps, step), len(loss) - 1)]
                          for steps, loss in runs]))


fig, ax = plt.subplots(figsize=(7, 4.8))
for (method, runs), color in zip(curves.items(), ("C0", "C2")):
    for i, (steps, loss) in enumerate(runs):
        ax.plot(steps, loss, color=color, alpha=0.6, linewidth=1.5,
                label=method if i == 0 else None)
ax.set_ylim(bottom=0)
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_xlabel("optimisation steps")
ax.set_ylabel("training loss (cross-entropy)")
ax.set_title(f"Training on {CURVE_BUDGET} labelled images per class")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "digits_transfer_learning_curves.png", dpi=120)

# %%
# Summary
# -------
# Every sentence below is computed from the numbers above.

acc = table.pivot(index="labels/class", columns="method", values="accuracy")
PHRASE = {SCRATCH: "training from scratch", FEATURES: "frozen features + logreg"}


def versus(other, n):
    """How far fine-tuning is ahead of (or behind) ``other`` at ``n`` labels/class."""
    diff = 100 * (acc.loc[n, TUNED] - acc.loc[n, other])
    side = "ahead of" if diff >= 0 else "behind"
    return (f"{abs(diff):.1f} points {side} {PHRASE[other]} "
            f"({acc.loc[n, TUNED]:.3f} vs {acc.loc[n, other]:.3f})")


def trend(other, lo, hi):
    """'shrinks', 'grows' or 'reverses' for the gap between two budgets."""
    gap_lo = acc.loc[lo, TUNED] - acc.loc[lo, other]
    gap_hi = acc.loc[hi, TUNED] - acc.loc[hi, other]
    if np.sign(gap_lo) != np.sign(gap_hi):
        return "reverses"
    return "shrinks" if abs(gap_hi) < abs(gap_lo) else "grows"


lo, hi = BUDGETS[0], BUDGETS[-1]
print("\nSummary")
for other in (SCRATCH, FEATURES):
    print(f"- With {lo} labels/class, fine-tuning is {versus(other, lo)}; with {hi} "
          f"the gap {trend(other, lo, hi)}: {versus(other, hi)}.")
best = acc.idxmax(axis=1)
print("- Most accurate per budget: "
      + "; ".join(f"{n} labels/class: {best[n]}" for n in acc.index) + ".")
if N_REPEATS > 1:
    print(f"- Over {N_REPEATS} draws of the labelled set the accuracy varies by up to "
          f"{100 * table['std'].max():.1f} points (std): smaller gaps are within noise.")

print(f"- With {CURVE_BUDGET} labels/class the mean training loss after 100 steps is "
      f"{loss_at(curves[TUNED], 100):.2f} fine-tuned vs {loss_at(curves[SCRATCH], 100):.2f} "
      "from scratch.")
times = table[table["labels/class"] == hi].set_index("method")
print(f"- Mean fit time with {hi} labels/class: "
      + ", ".join(f"{m} {times.loc[m, 'fit time (s)']:.1f} s" for m in METHODS)
      + " (cross-validated searches included).")
print(f"\nFigures written to {OUTPUT_DIR}")

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
