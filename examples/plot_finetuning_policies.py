"""
Fine-tuning policies with few labels: which ones help, and by how much?
========================================================================

:class:`~sktransfer.FineTunedClassifier` has a handful of *policies* on top
of plain fine-tuning, each a single parameter:

* ``layer_decay``: layer-wise learning-rate decay, the blocks near the input
  (the most general features) learn slower than the top block;
* ``lr_schedule="warmup_cosine"``: a short linear warm-up, then a cosine
  decay of the learning rate to zero;
* ``lr_schedule="onecycle"``: the one-cycle schedule, per batch;
* ``unfreeze_every``: gradual unfreezing, the new head trains alone first,
  then the pretrained blocks are unfrozen one by one from the top;
* ``augment``: a function applied to every training batch (here, a random
  shift of the images by one pixel);
* ``class_weight="balanced"``: for a labelled set where a class is rare.

Which of them help depends on the data, the budget of labels and the
network, so rather than trusting folklore we measure them. A small CNN is
pretrained with sktransfer on the digits 0-4 and fine-tuned on 10 labelled
images of each of the digits 5-9 (the set-up of
:ref:`sphx_glr_auto_examples_plot_digits_transfer.py`), once per policy,
on the same labelled images and with the same seed. This is repeated for
several random draws of the labelled images: the spread over the draws tells
how large a difference must be before it means anything.

Everything runs on scikit-learn's bundled digits, nothing is downloaded. The
script takes about a minute on two CPU cores; ``SKTRANSFER_EXAMPLE_FAST=1``
(or ``--fast``) makes a shorter version with fewer draws and epochs.
"""

# %%
# Settings
# --------
# Fast mode exists for continuous integration: it checks that the script
# runs; with 3 draws and fewer epochs its numbers are much noisier.

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
from sklearn.metrics import balanced_accuracy_score, recall_score
from skorch.callbacks import Callback
from tqdm import tqdm

from sktransfer import FineTunedClassifier
from sktransfer.datasets import load_shifted_digits, make_digits_cnn, split_per_class

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv

if FAST:
    N_DRAWS = 3  # random draws of the labelled set
    PRETRAIN_EPOCHS, EPOCHS = 5, 20
else:
    N_DRAWS = 20
    PRETRAIN_EPOCHS, EPOCHS = 15, 40
LABELS_PER_CLASS = 10
# the imbalanced labelled set: one class (a different one in each draw) has
# 3x fewer labels than the others
MAJORITY, MINORITY = 12, 4

# The baseline: fine-tune every block with the L2-SP penalty, the settings of
# the digits transfer example. backbone_lr_scale=1.0: the pretrained blocks
# learn at the head's rate ``lr`` (layer_decay then scales them down further).
BASELINE = {"penalty": "l2_sp", "alpha": 1e-2, "freeze_depth": 0, "lr": 3e-3,
            "backbone_lr_scale": 1.0, "max_epochs": EPOCHS, "batch_size": 16}
# The network and its batches are tiny: one thread is as fast as several, and
# it does not slow to a crawl when the CPU is shared (a larger model on a
# dedicated machine would keep torch's default).
torch.set_num_threads(1)

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)

plt.rcParams.update({"font.size": 12, "axes.titlesize": 14, "legend.fontsize": 11})
print(f"{'fast' if FAST else 'full'} mode: {N_DRAWS} draws of the labelled set, "
      f"{EPOCHS} epochs per fit; figures go to {OUTPUT_DIR}")

# %%
# Source and target tasks
# -----------------------
# Each 8x8 digit is pasted at a random position on a 12x12 canvas, so that
# the target task needs what a CNN learns on the source task (stroke detectors
# that work wherever the digit is). Source: digits 0-4, three shifted copies of
# each training image. Target: digits 5-9, one shifted copy; half of it is a
# pool the labelled images are drawn from, the other half the test set
# (:func:`sktransfer.datasets.load_shifted_digits`).

data = load_shifted_digits(n_per_class=None)  # sktransfer.datasets, made locally
X_source, y_source = data.X_source, data.y_source
X_source_test, y_source_test = data.X_source_test, data.y_source_test
X_pool, y_pool, X_test, y_test = data.X_pool, data.y_pool, data.X_test, data.y_test
TARGET_CLASSES = np.unique(y_pool)
print(f"source: {len(X_source)} training images of digits 0-4; target: a pool of "
      f"{len(X_pool)} images of digits 5-9 to draw labels from, {len(X_test)} test images")

# %%
# Pretrain a CNN on the source task
# ---------------------------------
# A :class:`~sktransfer.FineTunedClassifier` whose ``model`` is a factory of
# an *untrained* network, with no penalty and one learning rate for all
# layers, is plain supervised training; the network is the small CNN of
# :func:`sktransfer.datasets.make_digits_cnn` (three blocks and a head). The
# fitted ``source_clf`` is then the ``model=`` of every fine-tuned estimator below.

t0 = time.perf_counter()
source_clf = FineTunedClassifier(
    model=make_digits_cnn, penalty=None, head_init="random", freeze_depth=0, lr=3e-3,
    backbone_lr_scale=1.0,
    max_epochs=PRETRAIN_EPOCHS, batch_size=64, random_state=0,
).fit(X_source, y_source)
print(f"pretrained in {time.perf_counter() - t0:.1f} s; accuracy on held-out source "
      f"digits: {source_clf.score(X_source_test, y_source_test):.3f}")

# %%
# The policies
# ------------
# The augmentation is a plain function of the batch: a float32 tensor of
# shape ``(n, 1, 12, 12)``. It shifts each image by -1, 0 or +1 pixel in each
# direction with :func:`torch.roll`; what leaves one side comes back on the
# other. Only the outermost rows and columns can wrap around, and they hold
# little of the digits' ink (printed below), so the artefact is small.
# The offsets come from torch's random number generator, which ``fit`` seeds
# from ``random_state``: the same seed gives the same shifts, so a fit with
# augmentation is as reproducible as one without (checked below).


def random_shift(batch, max_shift=1):
    """Roll each image of the batch by a random offset of up to ``max_shift`` pixels."""
    offsets = torch.randint(-max_shift, max_shift + 1, (len(batch), 2))
    return torch.stack([
        torch.roll(image, shifts=(int(dy), int(dx)), dims=(-2, -1))
        for image, (dy, dx) in zip(batch, offsets)
    ])


border = np.ones((12, 12), dtype=bool)
border[1:-1, 1:-1] = False
print(f"ink on the outermost rows and columns of the canvas: "
      f"{100 * X_pool[:, 0, border].sum() / X_pool.sum():.1f}% of the total")

# Every policy keeps the baseline's ``lr`` and ``max_epochs``, which suit a
# constant rate; a schedule often does better with its own, higher peak rate
# or more epochs. Tuning each policy (e.g. with GridSearchCV, as in the grid
# search example) would be a fairer, slower comparison; here we measure what
# switching one parameter on does, all else equal.
#
# 3 pretrained blocks: with unfreeze_every=k the head trains alone for k
# epochs, then blocks 2, 1 and 0 join one by one; all train from epoch 3k + 1.
UNFREEZE_EVERY = max(1, EPOCHS // 8)
BASE = "baseline (L2-SP)"
POLICIES = {
    BASE: {},
    "+ layer_decay=0.7": {"layer_decay": 0.7},
    '+ lr_schedule="warmup_cosine"': {"lr_schedule": "warmup_cosine"},
    '+ lr_schedule="onecycle"': {"lr_schedule": "onecycle"},
    f"+ unfreeze_every={UNFREEZE_EVERY}": {"unfreeze_every": UNFREEZE_EVERY},
    "+ augment (random 1-pixel shift)": {"augment": random_shift},
}
# class imbalance: same baseline, on a labelled set where one class is rare
IMBALANCED = {
    "imbalanced, class_weight=None": {"class_weight": None},
    'imbalanced, class_weight="balanced"': {"class_weight": "balanced"},
}
NO_WEIGHT, BALANCED = IMBALANCED


def make_estimator(policy, seed):
    return FineTunedClassifier(model=source_clf, random_state=seed,
                               **{**BASELINE, **policy})


def draw_labelled(counts, seed):
    """``counts[c]`` labelled images of each target class ``c``, from the pool."""
    X_lab, _, y_lab, _ = split_per_class(X_pool, y_pool, counts, random_state=seed)
    return X_lab, y_lab


# %%
# Run the comparison
# ------------------
# In each draw every policy sees the same labelled images and the same
# ``random_state`` (new head, order of the batches), so the differences between
# policies are not blurred by those choices. The imbalanced set of a draw has
# 12 images of each class except one, with 4; the rare class changes from draw
# to draw, so that the result does not hinge on one digit being easy or hard.
# On it we report the *balanced* accuracy (the mean of the per-class recalls)
# and the recall of the rare class. The test set itself is balanced (about 90
# images of each digit), so there accuracy and balanced accuracy nearly agree.

rows = []
fitted = {}
n_runs = N_DRAWS * (len(POLICIES) + len(IMBALANCED))
with tqdm(total=n_runs, desc="fits", unit="run") as progress:
    for seed in range(N_DRAWS):
        X_lab, y_lab = draw_labelled(dict.fromkeys(TARGET_CLASSES, LABELS_PER_CLASS), seed)
        rare = TARGET_CLASSES[seed % len(TARGET_CLASSES)]
        counts = {c: MINORITY if c == rare else MAJORITY for c in TARGET_CLASSES}
        X_imb, y_imb = draw_labelled(counts, seed)
        runs = [(name, policy, X_lab, y_lab, "accuracy") for name, policy in POLICIES.items()]
        runs += [(name, policy, X_imb, y_imb, "balanced accuracy")
                 for name, policy in IMBALANCED.items()]
        for name, policy, X_fit, y_fit, metric in runs:
            progress.set_postfix_str(f"draw {seed}: {name}")
            est = make_estimator(policy, seed)
            t0 = time.perf_counter()
            est.fit(X_fit, y_fit)
            fit_time = time.perf_counter() - t0
            y_pred = est.predict(X_test)
            rows.append({
                "policy": name,
                "draw": seed,
                "metric": metric,
                "score": (np.mean(y_pred == y_test) if metric == "accuracy"
                          else balanced_accuracy_score(y_test, y_pred)),
                "rare-class recall": (recall_score(y_test, y_pred, labels=[rare],
                                                   average="macro")
                                      if name in IMBALANCED else np.nan),
                "fit time (s)": fit_time,
                "training accuracy": est.score(X_fit, y_fit),
            })
            fitted[name, seed] = est
            progress.update()

results = pd.DataFrame(rows)

# %%
# Results
# -------
# ``mean`` and ``std`` are over the draws of the labelled set. ``vs ref`` is
# the paired difference with the reference (the baseline; for the imbalanced
# set, ``class_weight=None``), averaged over the draws, ``± its std`` over
# the draws, and ``wins`` how many draws the policy beat the reference in.
# Because each draw gives both the same images and seed, the paired
# difference usually varies less than the accuracies themselves; a difference
# that is not larger than its own draw-to-draw std is noise.

REFERENCE = {**dict.fromkeys(POLICIES, BASE), **dict.fromkeys(IMBALANCED, NO_WEIGHT)}
scores = results.pivot(index="draw", columns="policy", values="score")
diffs = pd.DataFrame({name: scores[name] - scores[REFERENCE[name]] for name in scores})

table = (
    results.groupby("policy", sort=False)
    .agg(metric=("metric", "first"), mean=("score", "mean"), std=("score", "std"),
         fit_s=("fit time (s)", "mean"))
    .reset_index()
)
table["vs ref"] = [diffs[name].mean() for name in table["policy"]]
table["± (std)"] = [diffs[name].std() for name in table["policy"]]
table["wins"] = [
    "" if REFERENCE[name] == name else f"{int((diffs[name] > 0).sum())}/{N_DRAWS}"
    for name in table["policy"]
]
table = table.fillna({"std": 0.0, "± (std)": 0.0}).rename(columns={"fit_s": "fit time (s)"})
with pd.option_context("display.width", 140, "display.max_colwidth", 40):
    print(table.to_string(index=False, float_format="{:.3f}".format))

imbalanced = results[results["policy"].isin(IMBALANCED)]
rare_recall = imbalanced.groupby("policy", sort=False)["rare-class recall"].agg(
    ["mean", "std"]).fillna(0.0)
recalls = imbalanced.pivot(index="draw", columns="policy", values="rare-class recall")
rare_diff = recalls[BALANCED] - recalls[NO_WEIGHT]
print("\nRecall of the rare class on the test set (imbalanced labelled set):")
print(rare_recall.to_string(float_format="{:.3f}".format))

# %%
# What the policies did during training
# -------------------------------------
# ``history_`` records, at each epoch, ``trainable_from`` (the first block
# that trains; 3 means only the head) and ``lr``, the head's learning rate as
# the epoch starts. The one-cycle schedule changes the rate at every batch, so
# we record the head's rate per batch with a small skorch callback,
# passed through ``net_kwargs``. The callback only reads the rates: training is
# unchanged.


class HeadRate(Callback):
    """Records the largest learning rate (the head's) at every training batch."""

    def __init__(self):
        self.rates = []

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rates.append(max(g["lr"] for g in net.optimizer_.param_groups))


unfreeze_name = next(name for name in POLICIES if "unfreeze_every" in name)
trainable_from = [row["trainable_from"] for row in fitted[unfreeze_name, 0].history_]
spans = []  # run-length: "epochs 1-5: 3" and so on
for epoch, first in enumerate(trainable_from, start=1):
    if spans and spans[-1][2] == first:
        spans[-1][1] = epoch
    else:
        spans.append([epoch, epoch, first])
print(f"{unfreeze_name}, first trainable block (3: head only): "
      + ", ".join(f"epochs {a}-{b}: {first}" if a < b else f"epoch {a}: {first}"
                  for a, b, first in spans))

X_lab, y_lab = draw_labelled(dict.fromkeys(TARGET_CLASSES, LABELS_PER_CLASS), 0)
SCHEDULES = {"constant (baseline)": None, "warmup_cosine": "warmup_cosine",
             "onecycle": "onecycle"}
lr_factor = {}
for label, schedule in SCHEDULES.items():
    spy = HeadRate()
    make_estimator({"lr_schedule": schedule, "net_kwargs": {"callbacks": [spy]}}, 0).fit(
        X_lab, y_lab)
    lr_factor[label] = np.array(spy.rates) / BASELINE["lr"]

fig, ax = plt.subplots(figsize=(7, 4))
for (label, factor), style in zip(lr_factor.items(), (":", "-", "--")):
    steps_per_epoch = len(factor) / EPOCHS
    ax.plot(np.arange(len(factor)) / steps_per_epoch, factor, style, linewidth=2.5,
            label=f"{label}: mean {factor.mean():.2f}")
ax.set_xlabel("epoch")
ax.set_ylabel("learning rate / lr")
ax.set_ylim(0, 1.5)
ax.set_yticks(np.linspace(0, 1, 6))
ax.set_title("Learning-rate schedules, per batch")
ax.grid(alpha=0.3)
ax.legend(loc="upper right")
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "finetuning_policies_schedules.png", dpi=120)

# Augmentation draws from torch's seeded generator: fitting again with the same
# random_state gives the same network.
aug_name = next(name for name in POLICIES if "augment" in name)
again = clone(fitted[aug_name, 0]).fit(X_lab, y_lab)
same = np.array_equal(again.predict_proba(X_test), fitted[aug_name, 0].predict_proba(X_test))
print(f"{aug_name}: refit with the same random_state gives "
      f"{'identical' if same else 'DIFFERENT'} predictions")

# %%
# Accuracy per policy
# -------------------
# Bars: mean over the draws; error bars: the draw-to-draw std. The dashed line
# is the reference each bar is compared with.

fig, (ax_pol, ax_imb) = plt.subplots(
    1, 2, figsize=(12.5, 5.6), gridspec_kw={"width_ratios": [len(POLICIES), 2.6]},
    sharey=True,
)
pol = table.set_index("policy").loc[list(POLICIES)]
colors = ["0.55"] + [f"C{i}" for i in range(len(POLICIES) - 1)]
x = np.arange(len(POLICIES))
ax_pol.bar(x, pol["mean"], yerr=pol["std"], color=colors, capsize=5, width=0.7)
ax_pol.axhline(pol.loc[BASE, "mean"], color="0.3", linestyle="--", linewidth=1.2)
short = ["baseline\n(L2-SP)", "layer_decay\n=0.7", "warmup_cosine\nschedule",
         "onecycle\nschedule", f"unfreeze_every\n={UNFREEZE_EVERY}", "augment\n(1-px shift)"]
ax_pol.set_xticks(x, short, fontsize=10.5)
ax_pol.set_ylabel("test accuracy on digits 5-9")
ax_pol.set_title(f"Each policy added to the baseline, {LABELS_PER_CLASS} labels per class")

imb = table.set_index("policy").loc[list(IMBALANCED)]
x = np.arange(2)
ax_imb.bar(x - 0.2, imb["mean"], yerr=imb["std"], width=0.38, capsize=5,
           color=["0.55", "C5"], label="balanced accuracy")
ax_imb.bar(x + 0.2, rare_recall["mean"], yerr=rare_recall["std"], width=0.38, capsize=5,
           color=["0.55", "C5"], hatch="//", edgecolor="white", label="rare-class recall")
ax_imb.axhline(imb.loc[NO_WEIGHT, "mean"], color="0.3", linestyle="--", linewidth=1.2)
ax_imb.set_xticks(x, ["class_weight\n=None", 'class_weight\n="balanced"'], fontsize=10.5)
ax_imb.set_title(f"One class {MAJORITY // MINORITY}x rarer")
ax_imb.legend(loc="upper center", fontsize=10)
ax_pol.set_ylim(0, 1)
for ax in (ax_pol, ax_imb):
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
for bar, mean, std in zip(ax_pol.patches, pol["mean"], pol["std"]):
    ax_pol.text(bar.get_x() + bar.get_width() / 2, mean + std + 0.015, f"{mean:.3f}",
                ha="center", fontsize=10)
for bar, mean, std in zip(ax_imb.patches, [*imb["mean"], *rare_recall["mean"]],
                          [*imb["std"], *rare_recall["std"]]):
    ax_imb.text(bar.get_x() + bar.get_width() / 2, mean + std + 0.015, f"{mean:.2f}",
                ha="center", fontsize=10)
fig.suptitle(f"Fine-tuning policies: mean ± std over {N_DRAWS} draws of the labelled set")
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "finetuning_policies_accuracy.png", dpi=120)

# %%
# Summary
# -------
# Every sentence below is computed from the numbers above. A policy "helps"
# or "hurts" only when its mean paired difference with the reference is
# larger than the draw-to-draw std of that difference; otherwise the
# difference is called noise, whichever its sign.

stats = table.set_index("policy")


def verdict(name):
    """One sentence on ``name`` against its reference."""
    ref = REFERENCE[name]
    diff, spread = 100 * stats.loc[name, "vs ref"], 100 * stats.loc[name, "± (std)"]
    numbers = (f"{stats.loc[name, 'mean']:.3f} vs {stats.loc[ref, 'mean']:.3f} "
               f"{stats.loc[name, 'metric']}, {diff:+.1f} ± {spread:.1f} points, "
               f"better in {stats.loc[name, 'wins']} draws")
    if N_DRAWS < 2:
        return f"{name}: {numbers}; one draw only, so no std: cannot tell from noise."
    if abs(diff) <= spread:
        return (f"{name}: no clear effect ({numbers}); the difference is within its "
                "draw-to-draw std: noise.")
    effect = "helps" if diff > 0 else "hurts"
    margin = ("more than its std, less than twice it" if abs(diff) <= 2 * spread
              else "more than twice its std")
    return f"{name}: {effect} ({numbers}; the difference is {margin})."


print("\nSummary")
for name in [*POLICIES, *IMBALANCED]:
    if name != REFERENCE[name]:
        print("- " + verdict(name))
acc_std = 100 * stats.loc[list(POLICIES), "std"]
effects = 100 * stats.loc[[name for name in POLICIES if name != BASE], "vs ref"].abs()
n_small = int((effects < acc_std.min()).sum())
print(f"- For comparison, the accuracy of one policy varies by {acc_std.min():.1f} to "
      f"{acc_std.max():.1f} points (std) from one draw of the labelled images to the "
      f"next; {n_small} of the {len(effects)} policies {'moves' if n_small == 1 else 'move'} "
      f"the mean accuracy by less than {acc_std.min():.1f} points ({effects.idxmax()} moves it "
      f"the most, {effects.max():.1f} points).")
recall_diff, recall_spread = 100 * rare_diff.mean(), 100 * rare_diff.std()
# balanced accuracy = mean of the per-class recalls: take the rare class out
n_classes = len(TARGET_CLASSES)
other_recall = ((n_classes * stats.loc[NO_WEIGHT, "mean"] - rare_recall.loc[NO_WEIGHT, "mean"])
                / (n_classes - 1))
recall_effect = ("within its draw-to-draw std: noise"
                 if N_DRAWS < 2 or abs(recall_diff) <= recall_spread
                 else ("a gain" if recall_diff > 0 else "a loss"))
print(f"- Recall of the rare class: {rare_recall.loc[NO_WEIGHT, 'mean']:.3f} with "
      f"class_weight=None, {rare_recall.loc[BALANCED, 'mean']:.3f} with \"balanced\" "
      f"({recall_diff:+.1f} ± {recall_spread:.1f} points, paired over the draws: "
      f"{recall_effect}); the other classes' mean recall is {other_recall:.3f} "
      f"(class_weight=None).")
train_acc = imbalanced.groupby("policy", sort=False)["training accuracy"].mean()
balanced_is_noise = N_DRAWS < 2 or (abs(stats.loc[BALANCED, "vs ref"])
                                    <= stats.loc[BALANCED, "± (std)"])
print(f"- On their own imbalanced labelled images the two fits reach a training accuracy "
      f"of {train_acc[NO_WEIGHT]:.3f} (None) and {train_acc[BALANCED]:.3f} (balanced)"
      + ("; with (nearly) every labelled image fitted, rare class included, the class "
         "weights have few training errors left to act on, which may be why they change "
         "the balanced accuracy so little." if min(train_acc) >= 0.98 and balanced_is_noise
         else "."))
mean_factor = {label: factor.mean() for label, factor in lr_factor.items()}
print("- Mean learning rate over training, relative to lr: "
      + ", ".join(f"{label} {f:.2f}" for label, f in mean_factor.items())
      + f", in the same {EPOCHS} epochs.")
fit_times = stats.loc[list(POLICIES), "fit time (s)"]
print(f"- Mean fit time: {fit_times.loc[BASE]:.2f} s for the baseline; slowest "
      f"{fit_times.idxmax()} at {fit_times.max():.2f} s, fastest {fit_times.idxmin()} "
      f"at {fit_times.min():.2f} s.")
if FAST:
    print("- Fast mode: few draws and epochs; run without --fast for numbers to rely on.")
print(f"\nFigures written to {OUTPUT_DIR}")

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
