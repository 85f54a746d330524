"""
A pretrained network inside a scikit-learn Pipeline with mixed column types
===========================================================================

A pretrained network does not have to be the whole model. Here it is one step
of an ordinary scikit-learn :class:`~sklearn.pipeline.Pipeline`:

.. code-block:: text

    DataFrame (numeric + categorical columns)
      -> ColumnTransformer (StandardScaler on numeric, OneHotEncoder on categorical)
      -> FeatureExtractorTransformer (frozen network pretrained on a source table)
      -> LogisticRegression

The network was pretrained on a large **source table** of customers (with
three numeric targets measured on every row); the **target task** is a yes/no
label (did the customer cancel?) known for a few hundred customers of a new
market. Because everything is a scikit-learn step, the whole chain can be
cross-validated with :func:`~sklearn.model_selection.cross_val_score`, shows
its feature names with ``set_output(transform="pandas")``, and
:class:`~sklearn.model_selection.GridSearchCV` can choose *which layer* of the
network gives the best features (``fx__layer``) together with the logistic
regression's ``C``. We compare with the same pipeline without the extractor.

The tables are synthetic, nothing is downloaded. The script runs in well
under a minute on two CPU cores; ``SKTRANSFER_EXAMPLE_FAST=1`` (or
``--fast``) makes it shorter still (a shorter pretraining, a smaller grid).
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
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

from sktransfer import FeatureExtractorTransformer, FineTunedRegressor, list_blocks
from sktransfer.plot import plot_search_heatmap

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv

N_LABELLED = 300  # labelled rows of the target task
if FAST:
    PRETRAIN_EPOCHS = 20
    CS = (0.1, 1.0)
else:
    PRETRAIN_EPOCHS = 50
    CS = (0.01, 0.1, 1.0, 10.0)
torch.set_num_threads(1)  # a tiny network: one thread is as fast and shares the CPU well

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")
OUTPUT_DIR.mkdir(parents=True, exist_ok=True)

plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "legend.fontsize": 11})
print(f"{'fast' if FAST else 'full'} mode; figures go to {OUTPUT_DIR}")

# %%
# Customer tables with numeric and categorical columns
# ----------------------------------------------------
# Each customer has 5 hidden traits (engagement, wealth, price sensitivity,
# ...). The observed columns are noisy nonlinear readings of them: 7 numeric
# columns and 3 categorical ones (``plan`` and ``channel`` follow the traits,
# ``region`` is pure noise).
#
# * source table (5000 customers): three numeric targets per customer, e.g.
#   next quarter's spend, all functions of the traits;
# * target table (a new market): a yes/no "cancelled" label that depends on
#   one trait directly and on interactions of traits that the source targets
#   also contain: that shared structure is what the network can transfer.
#   Only ``N_LABELLED`` rows are labelled; 2000 more rows are kept aside as a
#   final test set.

rng = np.random.RandomState(0)
NUMERIC = ["age", "income", "tenure", "monthly_spend", "logins", "support_calls",
           "discount_used"]
CATEGORIES = {"plan": ["basic", "plus", "pro"], "channel": ["web", "app", "store"],
              "region": ["north", "south", "east", "west"]}
N_TRAITS = 5
LOADINGS = rng.normal(size=(N_TRAITS, len(NUMERIC)))


def draw_customers(n, rng):
    """A DataFrame of ``n`` customers and their hidden traits."""
    z = rng.normal(size=(n, N_TRAITS))
    numeric = np.tanh(z) @ LOADINGS + 0.3 * rng.normal(size=(n, len(NUMERIC)))
    numeric = numeric * [10, 15, 12, 20, 5, 1.5, 3] + [45, 60, 30, 80, 20, 4, 10]
    df = pd.DataFrame(np.maximum(numeric, 0), columns=NUMERIC).round(1)
    df["support_calls"] = df["support_calls"].round()
    df["plan"] = np.array(CATEGORIES["plan"])[np.digitize(z[:, 1] + 0.5 * rng.normal(size=n),
                                                          [-0.5, 0.7])]
    df["channel"] = np.array(CATEGORIES["channel"])[
        np.digitize(z[:, 0] + 0.5 * rng.normal(size=n), [-0.3, 0.8])]
    df["region"] = rng.choice(CATEGORIES["region"], size=n)
    return df, z


source_df, z = draw_customers(5000, rng)
source_y = np.stack([np.sin(z[:, 0]) + z[:, 1] * z[:, 2], np.abs(z[:, 3]) - z[:, 4] ** 2 / 2,
                     z[:, 0] * z[:, 4] + np.cos(z[:, 2])], axis=1)
source_y = ((source_y - source_y.mean(0)) / source_y.std(0)).astype(np.float32)

target_df, z = draw_customers(N_LABELLED + 2000, rng)
churn_score = -z[:, 0] + z[:, 1] * z[:, 2] - z[:, 4] ** 2 / 2 + 0.8 * z[:, 0] * z[:, 4]
target_y = np.where(churn_score > np.median(churn_score), "cancelled", "stayed")
X, y = target_df.iloc[:N_LABELLED], target_y[:N_LABELLED]
X_test, y_test = target_df.iloc[N_LABELLED:], target_y[N_LABELLED:]
print(X.head().to_string())
print(f"\nsource: {len(source_df)} rows; target: {len(X)} labelled rows "
      f"({np.mean(y == 'cancelled'):.0%} cancelled), {len(X_test)} test rows")

# %%
# The column preprocessing
# ------------------------
# The network takes a fixed list of input columns, so the one-hot layout must
# not depend on which categories a cross-validation fold happens to contain:
# ``categories=`` is given explicitly, and an unknown category at predict time
# becomes all zeros. The scaler is refitted on whatever data the pipeline is
# fitted on; the target market's numbers are on a similar scale as the
# source's, so the network sees inputs like those it was trained on. (If they
# were not, freeze the source preprocessing with
# :class:`sklearn.frozen.FrozenEstimator` instead.)


def make_preprocessing():
    return ColumnTransformer([
        ("num", StandardScaler(), NUMERIC),
        ("cat", OneHotEncoder(categories=[CATEGORIES[c] for c in CATEGORIES],
                              handle_unknown="ignore", sparse_output=False), list(CATEGORIES)),
    ])


# %%
# Pretrain a network on the source table
# --------------------------------------
# :class:`~sktransfer.FineTunedRegressor` with an untrained MLP, no penalty and
# one learning rate for all layers is ordinary training. Its input is the
# preprocessed source table (7 scaled + 10 one-hot columns).

source_prep = make_preprocessing().fit(source_df)
source_X = source_prep.transform(source_df).astype(np.float32)
n_inputs = source_X.shape[1]


def make_mlp():
    """An untrained MLP: two hidden blocks (64 and 32 units) and a head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_inputs, 64), nn.ReLU(),
                         nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 3))


t0 = time.perf_counter()
source_net = FineTunedRegressor(
    model=make_mlp, penalty=None, head_init="random", freeze_depth=0, backbone_lr_scale=1.0,
    lr=3e-3,
    max_epochs=PRETRAIN_EPOCHS, batch_size=128, random_state=0,
).fit(source_X[:4000], source_y[:4000])
print(f"pretrained in {time.perf_counter() - t0:.1f} s; R^2 on 1000 held-out source rows: "
      f"{source_net.score(source_X[4000:], source_y[4000:]):.3f}")

# %%
# :func:`~sktransfer.list_blocks` shows what ``layer`` can name: block ``0``
# (64 units), block ``1`` (32 units, the head's input, which is also what
# ``layer=None`` returns) and ``"head"``, the pretrained head's 3 outputs
# (the source targets as predicted for the target rows).

print(list_blocks(source_net)[["index", "name", "n_params", "output_shape"]]
      .to_string(index=False))

# %%
# The pipelines
# -------------
# ``model=source_net`` is the fitted source regressor itself; the extractor
# takes a private, frozen copy of its network (``fit`` learns nothing).

with_fx = Pipeline([
    ("prep", make_preprocessing()),
    ("fx", FeatureExtractorTransformer(model=source_net, layer=None)),
    ("scale", StandardScaler()),
    ("clf", LogisticRegression(max_iter=2000)),
])
without_fx = Pipeline([
    ("prep", make_preprocessing()),
    ("clf", LogisticRegression(max_iter=2000)),
])

# %%
# ``set_output(transform="pandas")`` makes every transformer return a
# DataFrame: the column transformer names its outputs ``num__age``,
# ``cat__plan_pro``, ... and the extractor ``<layer>_<i>``: ``head_input_<i>``
# for the default ``layer=None``, ``block_0_1_<i>`` for ``layer=0`` (block
# ``0-1`` is children 0 to 1 of the ``nn.Sequential``: the first Linear and
# its ReLU).

features = with_fx[:-2].set_output(transform="pandas").fit_transform(X)
print("\nAfter the ColumnTransformer:")
print(with_fx[:1].transform(X).iloc[:3, [0, 1, 7, 8, 9]].round(2).to_string())
print(f"\nAfter the extractor: {features.shape[1]} columns, e.g.")
print(features.iloc[:3, :5].round(3).to_string())
with_fx.set_output(transform="default")
names = with_fx[:-2].set_params(fx__layer=0).fit(X).get_feature_names_out()
print(f"with layer=0: {len(names)} columns, {list(names[:3])} ... {names[-1]}")
with_fx.set_params(fx__layer=None)

# %%
# Cross-validation: does the extractor help?
# ------------------------------------------
# 5-fold cross-validation on the labelled rows, the same folds for both.

# The pipeline without the extractor is linear in the preprocessed columns;
# gradient-boosted trees on the same columns are there as a nonlinear
# reference that uses no pretraining.

cv = StratifiedKFold(5, shuffle=True, random_state=0)
boosting = Pipeline([("prep", make_preprocessing()),
                     ("clf", HistGradientBoostingClassifier(random_state=0))])
PIPELINES = {"with extractor": with_fx, "without extractor": without_fx,
             "gradient boosting (reference)": boosting}
cv_scores = {}
for name, pipe in PIPELINES.items():
    t0 = time.perf_counter()
    cv_scores[name] = cross_val_score(pipe, X, y, cv=cv)
    print(f"{name:>29}: accuracy {cv_scores[name].mean():.3f} ± {cv_scores[name].std():.3f} "
          f"(5 folds, {time.perf_counter() - t0:.1f} s)")

# %%
# Which layer? A grid search over ``fx__layer``
# ----------------------------------------------
# ``layer`` is an ordinary hyper-parameter: early layers keep more of the
# input, later ones are more specific to the source targets.

grid = {"fx__layer": [0, 1, "head"], "clf__C": list(CS)}
search = GridSearchCV(with_fx, grid, cv=cv, n_jobs=1)
t0 = time.perf_counter()
search.fit(X, y)
print(f"grid search: {len(search.cv_results_['params'])} settings x 5 folds in "
      f"{time.perf_counter() - t0:.1f} s")
res = pd.DataFrame(search.cv_results_)
by_layer = res.groupby(res["param_fx__layer"].astype(str))["mean_test_score"].max()
print("best cross-validated accuracy per layer (over C):")
print(by_layer.round(3).to_string())
print(f"best: {search.best_params_}, cross-validated accuracy {search.best_score_:.3f}")

baseline_search = GridSearchCV(without_fx, {"clf__C": list(CS)}, cv=cv).fit(X, y)

ax = plot_search_heatmap(search, x="C", y="layer")
ax.set_xlabel("LogisticRegression C")
ax.set_ylabel("extractor layer")
ax.set_title(f"5-fold CV accuracy on {N_LABELLED} labelled rows (best outlined)")
ax.figure.tight_layout()
ax.figure.savefig(OUTPUT_DIR / "feature_extraction_layer_search.png", dpi=120)

# %%
# The final check on held-out rows
# --------------------------------
# Both searches refitted their best setting on all labelled rows; the 2000
# test rows were used for nothing else.

test_with = search.score(X_test, y_test)
test_without = baseline_search.score(X_test, y_test)
test_boosting = boosting.fit(X, y).score(X_test, y_test)
print(f"test accuracy: with extractor {test_with:.3f} ({search.best_params_}), "
      f"without {test_without:.3f} ({baseline_search.best_params_}), "
      f"gradient boosting {test_boosting:.3f}")

fig, ax = plt.subplots(figsize=(8, 4.6))
names = ["gradient boosting\n(reference)", "without extractor", "with extractor"]
cv_means = [cv_scores["gradient boosting (reference)"].mean(), baseline_search.best_score_,
            search.best_score_]
tests = [test_boosting, test_without, test_with]
pos = np.arange(len(names))
ax.barh(pos + 0.2, cv_means, height=0.4, label="5-fold CV (best setting)", color="C0")
ax.barh(pos - 0.2, tests, height=0.4, label="held-out test rows", color="C1")
for p, cvm, te in zip(pos, cv_means, tests):
    ax.text(cvm + 0.005, p + 0.2, f"{cvm:.3f}", va="center", fontsize=11)
    ax.text(te + 0.005, p - 0.2, f"{te:.3f}", va="center", fontsize=11)
ax.set_yticks(pos, names)
ax.axvline(0.5, color="grey", linestyle=":", label="chance")
ax.set_xlim(0.4, 1.0)
ax.set_xlabel("accuracy")
ax.set_title("Logistic regression with and without pretrained features")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=10,
          frameon=False)
fig.tight_layout()
fig.savefig(OUTPUT_DIR / "feature_extraction_accuracy.png", dpi=120)

# %%
# Summary
# -------
# Computed from the numbers above.

diff_cv = 100 * (cv_scores["with extractor"].mean() - cv_scores["without extractor"].mean())
diff_test = 100 * (test_with - test_without)
noise = 100 * max(s.std() for s in cv_scores.values())
print("\nSummary")
print(f"- With the default layer, the extractor changes the 5-fold CV accuracy by "
      f"{diff_cv:+.1f} points (fold-to-fold std up to {noise:.1f} points).")
top2 = by_layer.sort_values(ascending=False)
close = 100 * (top2.iloc[0] - top2.iloc[1]) <= noise
print(f"- The grid search prefers layer={search.best_params_['fx__layer']!r}; per layer "
      "(best C): " + ", ".join(f"{k}: {v:.3f}" for k, v in by_layer.items())
      + (f"; layers {top2.index[0]} and {top2.index[1]} are within the fold-to-fold noise."
         if close else "."))
print(f"- On the {len(X_test)} held-out rows the tuned pipeline with the extractor is "
      f"{abs(diff_test):.1f} points {'better' if diff_test >= 0 else 'worse'} than the "
      f"tuned pipeline without it ({test_with:.3f} vs {test_without:.3f}).")
diff_gb = 100 * (test_with - test_boosting)
print(f"- Against gradient boosting on the same columns ({test_boosting:.3f}), the extractor "
      f"pipeline is {abs(diff_gb):.1f} points {'ahead' if diff_gb >= 0 else 'behind'} with "
      f"{N_LABELLED} labelled rows.")
print(f"\nFigures written to {OUTPUT_DIR}")

if "agg" not in matplotlib.get_backend().lower():
    plt.show()
