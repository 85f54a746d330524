"""
torchvision models and their weights: by name, downloaded, or from a local file
===============================================================================

Any torchvision classification architecture can be the ``model=`` of the
sktransfer estimators, by name (``model="resnet18"``). Its weights come from

* ``weights="DEFAULT"`` (or ``"IMAGENET1K_V1"``, ...): torchvision's pretrained
  weights, downloaded once into torchvision's cache folder;
* ``weights="/path/to/file.pth"``: a local state-dict file, e.g. the same
  file downloaded on another machine, or weights you trained and saved with
  ``torch.save(net.state_dict(), path)``;
* ``weights=None``: random initial weights (useful for testing a pipeline).

This example shows the blocks of a ResNet-18 with
:func:`~sktransfer.list_blocks`, then uses it on a small image task (which of
two photos does a 64x64 crop come from?) with
:class:`~sktransfer.FeatureExtractorTransformer` and
:class:`~sktransfer.FineTunedClassifier` (``freeze_depth="all"``: only a new
head is trained).

**Offline** (no network and nothing in the cache), the ImageNet part cannot
run: sktransfer raises :class:`~sktransfer.WeightsUnavailableError`, which
names the file to fetch and how to pass it as a local path. The script
catches it, prints what to do, and goes on with the local-file part, which
always runs (it saves and reloads a randomly initialised ResNet-18). Images
are sklearn's two bundled sample photos, nothing else is downloaded. It runs
in well under a minute on two CPU cores; ``SKTRANSFER_EXAMPLE_FAST=1`` (or
``--fast``) uses fewer crops.
"""

# %%
# Settings
# --------

import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no screen: only write the figures to files

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.models import ResNet18_Weights

from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    WeightsUnavailableError,
    list_blocks,
)

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv
N_CROPS = 20 if FAST else 40  # crops per photo and per split (train / test)
SIZE = 64  # pixels: small, so that a ResNet-18 runs quickly on a CPU
torch.set_num_threads(1)  # small inputs: one thread is about as fast, and shares the CPU

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
plt.rcParams.update({"font.size": 12, "axes.titlesize": 13})
print(f"{'fast' if FAST else 'full'} mode: {N_CROPS} crops per photo and split, "
      f"{SIZE}x{SIZE} pixels; figures go to {OUTPUT_DIR}")

# %%
# The blocks of a ResNet-18
# -------------------------
# ``freeze_depth=k`` freezes the first ``k`` blocks; ``layer`` of a feature
# extractor names the block whose output it returns. Listing the blocks
# needs no weights (the architecture is enough); ``input_shape`` gives the
# output shape of each block for our 64x64 images.

blocks = list_blocks("resnet18", input_shape=(3, SIZE, SIZE))
print(blocks.to_string(index=False))
print("head:", blocks.attrs["head"])

# %%
# A small image task
# ------------------
# Random crops of sklearn's two sample photos (a temple in China, a flower),
# each crop 128x128 pixels shrunk to 64x64; the label is the photo it comes
# from. Training crops come from the left 60% of each photo and test crops
# from the right 40%, so no test crop overlaps a training crop.

photos = load_sample_images()
names = [Path(f).stem for f in photos.filenames]
rng = np.random.RandomState(0)


def crops(image, n, x_range):
    """``n`` random 128x128 crops with their left edge in ``x_range``, as 64x64 uint8."""
    out = []
    for _ in range(n):
        top = rng.randint(0, image.shape[0] - 128)
        left = rng.randint(*x_range)
        patch = Image.fromarray(image[top:top + 128, left:left + 128])
        out.append(np.asarray(patch.resize((SIZE, SIZE), Image.BILINEAR)))
    return out


width = photos.images[0].shape[1]
split = int(0.6 * width)
X_train = np.stack([c for img in photos.images for c in crops(img, N_CROPS, (0, split - 128))])
X_test = np.stack([c for img in photos.images for c in crops(img, N_CROPS, (split, width - 128))])
y_train = np.repeat(names, N_CROPS)
y_test = np.repeat(names, N_CROPS)
print(f"{len(X_train)} training and {len(X_test)} test crops, shape {X_train.shape[1:]}, "
      f"dtype {X_train.dtype}")

fig, axes = plt.subplots(2, 6, figsize=(10, 4.4))
for row, (X_part, part) in enumerate(((X_train, "train"), (X_test, "test"))):
    picks = np.r_[0:3, N_CROPS:N_CROPS + 3]
    for ax, i in zip(axes[row], picks):
        ax.imshow(X_part[i])
        ax.set_title(f"{part}: {y_train[i]}", fontsize=11)
        ax.axis("off")
fig.suptitle("64x64 crops: training crops from the left of each photo, test from the right")
fig.tight_layout(h_pad=1.5)
fig.savefig(OUTPUT_DIR / "torchvision_weights_crops.png", dpi=110)

# %%
# Preprocessing
# -------------
# ``(n, H, W, C)`` uint8 arrays are images. By default (``preprocess="auto"``)
# they go through the weights' own torchvision transforms: resize to 256,
# crop to 224 and normalise with the ImageNet mean and std. We pass the same
# transform at 64 pixels instead, which is about 12x cheaper on a CPU (a
# 224-pixel input would give better ImageNet features, at that cost).

preprocess = ResNet18_Weights.DEFAULT.transforms(crop_size=SIZE, resize_size=SIZE)
print(preprocess)
accuracies = {}


def logistic_on(extractor):
    """Frozen features -> scaling -> logistic regression."""
    return Pipeline([("fx", extractor), ("scale", StandardScaler()),
                     ("clf", LogisticRegression(max_iter=2000))])


# %%
# ImageNet weights (needs a download the first time)
# --------------------------------------------------
# ``weights="DEFAULT"`` are the best ImageNet weights torchvision has for
# ResNet-18. torchvision downloads them once into its cache; without network
# access and without the file in the cache, sktransfer raises
# :class:`~sktransfer.WeightsUnavailableError` (an ``OSError``), whose
# message names the file and how to pass it as a local path.

filename = os.path.basename(ResNet18_Weights.DEFAULT.url)
try:
    t0 = time.perf_counter()
    fx = FeatureExtractorTransformer(model="resnet18", weights="DEFAULT",
                                     preprocess=preprocess).fit(X_train)
except WeightsUnavailableError as exc:
    imagenet_available = False
    print("\n" + "=" * 78)
    print("SKIPPED: the ImageNet weights of ResNet-18 are not available on this machine.")
    print(f"They are the file {filename!r} ({ResNet18_Weights.DEFAULT.url}).")
    print("To run this part, either")
    print(f"  * copy that file into torchvision's cache folder "
          f"{os.path.join(torch.hub.get_dir(), 'checkpoints')!r}, or")
    print("  * put it anywhere and pass its path:")
    print(f"      FeatureExtractorTransformer(model='resnet18', weights='/path/to/{filename}')")
    print(f"sktransfer said: {exc}")
    print("=" * 78 + "\n")
else:
    imagenet_available = True
    print(f"ImageNet weights loaded in {time.perf_counter() - t0:.1f} s; "
          f"{fx.n_features_out_} features per image from layer {fx.layer_name_!r}")
    pipe = logistic_on(FeatureExtractorTransformer(model="resnet18", weights="DEFAULT",
                                                   preprocess=preprocess))
    accuracies["ImageNet features\n+ logistic regression"] = (
        pipe.fit(X_train, y_train).score(X_test, y_test))
    clf = FineTunedClassifier(model="resnet18", weights="DEFAULT", freeze_depth="all",
                              preprocess=preprocess, lr=1e-2, max_epochs=30,
                              random_state=0)
    t0 = time.perf_counter()
    clf.fit(X_train, y_train)
    accuracies["ImageNet ResNet-18\nnew head (freeze all)"] = clf.score(X_test, y_test)
    print(f"FineTunedClassifier(freeze_depth='all') fitted in {time.perf_counter() - t0:.1f} s")

# %%
# Weights from a local file (works offline)
# -----------------------------------------
# A state-dict file is what ``torch.save(net.state_dict(), path)`` writes and
# what torchvision downloads. Passing its path as ``weights=`` builds the
# architecture named by ``model`` and loads the file into it with
# ``torch.load(weights_only=True)``: a file holding pickled code is refused.
#
# Here the file holds a *randomly initialised* ResNet-18 (``weights=None``),
# so that this part runs anywhere; with the downloaded ImageNet file the code
# is the same. We check that the file gives exactly the features of the
# network it was saved from.

torch.manual_seed(0)
random_net = torchvision.models.resnet18(weights=None)
tmp_dir = tempfile.TemporaryDirectory()
path = os.path.join(tmp_dir.name, "resnet18_random.pth")
torch.save(random_net.state_dict(), path)
print(f"saved {os.path.getsize(path) / 2**20:.1f} MB to {path}")

from_file = FeatureExtractorTransformer(model="resnet18", weights=path,
                                        preprocess=preprocess).fit(X_train)
from_module = FeatureExtractorTransformer(model=random_net, preprocess=preprocess).fit(X_train)
same = np.array_equal(from_file.transform(X_test), from_module.transform(X_test))
print(f"features from the file == features from the module it was saved from: {same}")

accuracies["random ResNet-18 (file)\n+ logistic regression"] = (
    logistic_on(FeatureExtractorTransformer(model="resnet18", weights=path,
                                            preprocess=preprocess))
    .fit(X_train, y_train).score(X_test, y_test))
clf_file = FineTunedClassifier(model="resnet18", weights=path, freeze_depth="all",
                               preprocess=preprocess, lr=1e-2, max_epochs=30, random_state=0)
t0 = time.perf_counter()
clf_file.fit(X_train, y_train)
accuracies["random ResNet-18 (file)\nnew head (freeze all)"] = clf_file.score(X_test, y_test)
print(f"FineTunedClassifier(weights=path, freeze_depth='all') fitted in "
      f"{time.perf_counter() - t0:.1f} s; trainable: only the new head")

# %%
# A baseline without any network: the mean and standard deviation of each
# colour channel of the crop, then a logistic regression. It says how hard
# the task is, and what the random-weights numbers should be compared with.


def colour_stats(X):
    Xf = X.reshape(len(X), -1, 3).astype(np.float32) / 255
    return np.hstack([Xf.mean(axis=1), Xf.std(axis=1)])


baseline = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
accuracies["colour mean/std\n+ logistic regression"] = (
    baseline.fit(colour_stats(X_train), y_train).score(colour_stats(X_test), y_test))
tmp_dir.cleanup()

# %%
# Results
# -------

print("\nTest accuracy on crops from the unseen right part of each photo:")
for name, acc in accuracies.items():
    print(f"  {name.replace(chr(10), ' '):<55} {acc:.3f}")

fig, ax = plt.subplots(figsize=(8, 1.2 + 0.75 * len(accuracies)))
labels = list(accuracies)
ax.barh(range(len(labels)), [accuracies[k] for k in labels],
        color=["C2" if k.startswith("ImageNet") else "C0" if "random" in k else "C7"
               for k in labels])
for i, k in enumerate(labels):
    ax.text(accuracies[k] + 0.01, i, f"{accuracies[k]:.3f}", va="center", fontsize=11)
ax.axvline(0.5, color="grey", linestyle=":", label="chance")
ax.set_yticks(range(len(labels)), labels, fontsize=10)
ax.invert_yaxis()
ax.set_xlim(0, 1.1)
ax.set_xlabel("test accuracy")
title = "Which photo is the crop from?"
if not imagenet_available:
    title += "\n(ImageNet weights not available here: those rows skipped)"
ax.set_title(title)
ax.legend(loc="lower right", fontsize=10)
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "torchvision_weights_accuracy.png", dpi=110)

# %%
# Summary
# -------

print("\nSummary")
if imagenet_available:
    best = max(accuracies, key=accuracies.get)
    print(f"- Most accurate: {best.replace(chr(10), ' ')} ({accuracies[best]:.3f}).")
else:
    print(f"- The ImageNet part was skipped: the weights file {filename!r} is neither "
          "downloadable nor in the cache (see the message above). Nothing failed.")
rand = accuracies["random ResNet-18 (file)\n+ logistic regression"]
base = accuracies["colour mean/std\n+ logistic regression"]
if rand > base:
    verdict = ("even random convolutions beat that baseline on this easy task, so the "
               "random-weights numbers only show that the pipeline works; what pretraining "
               "adds is the difference to the ImageNet rows")
else:
    verdict = "random convolutions carry nothing that simple statistics lack"
print(f"- Random ResNet-18 features from a local file: {rand:.3f}, against {base:.3f} for "
      f"6 colour statistics: {verdict}"
      + ("" if imagenet_available else " (run where the weights can be downloaded)") + ".")
print(f"- Loading weights from a file reproduced the saved network exactly: {same}.")
print(f"\nFigures written to {OUTPUT_DIR}")

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
