"""
The same grid search, locally and on a dask cluster
===================================================

A transfer-learning grid search is many independent fits: here 4 freeze
depths x 3 penalty strengths x 5 folds = 60 fine-tunings of a pretrained
network. scikit-learn hands them to joblib, and joblib can hand them to a
cluster: inside ``joblib.parallel_backend("dask")`` the unchanged
:class:`~sklearn.model_selection.GridSearchCV` runs its fits on the workers
of a ``dask.distributed`` cluster, and the results are the same as the local
run's.

This script runs the search three ways and times them:

1. locally, one fit after the other (``n_jobs=1``);
2. locally, with joblib's process pool (``n_jobs=2``);
3. on a :class:`dask.distributed.LocalCluster`: two worker processes on this
   machine, standing in for a real cluster (replace it with
   ``Client("tcp://scheduler:8786")``).

On a laptop the cluster cannot beat the local process pool: same cores, plus
the cost of shipping each fit to a worker. It pays when the cluster has more
cores or GPUs than your machine. The user guide's "Scaling out" section shows
how to run on a real cluster, on GPU workers, with Ray, and how to spread one
fit over several GPUs.

Nothing is downloaded. Needs ``pip install "sktransfer[dask,plot]"``. About a
minute on two CPU cores; ``SKTRANSFER_EXAMPLE_FAST=1`` (or ``--fast``) makes it
shorter.

.. note::
   dask starts each worker as a new Python process, which imports this script
   again. The ``if __name__ == "__main__":`` guards keep the workers from
   running the searches themselves; put the same guard in your own scripts
   (notebooks need none).
"""

# %%
# Settings and data
# -----------------
# A source table with 4 numeric targets and a related target task with 200
# labelled rows, both functions of the same 6 hidden factors.

import logging
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
from joblib import Parallel, delayed, parallel_backend
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor
from sktransfer.datasets import make_tabular_transfer

FAST = os.environ.get("SKTRANSFER_EXAMPLE_FAST") == "1" or "--fast" in sys.argv
PRETRAIN_EPOCHS, MAX_EPOCHS, CV = (15, 20, 3) if FAST else (40, 30, 5)
GRID = {"net__freeze_depth": [0, 1, 2, "all"], "net__alpha": [1e-4, 1e-2, 1.0]}

try:
    OUTPUT_DIR = Path(__file__).resolve().parent / "output"
except NameError:  # run interactively, e.g. pasted into a notebook
    OUTPUT_DIR = Path("output")

# the generator of plot_grid_search_heatmap.py: 3000 source rows, 200 labelled target rows
data = make_tabular_transfer(n_source=3000, n_train=200, n_test=0, random_state=0)
X_source, y_source, X_target, y_target = data.X_source, data.y_source, data.X_train, data.y_train
N_FEATURES = X_target.shape[1]


def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def make_search(source_net, n_jobs):
    """The brief's search: freeze depth x L2-SP strength, 5-fold cross-validated."""
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("net", FineTunedClassifier(model=source_net, penalty="l2_sp", lr=3e-3,
                                    max_epochs=MAX_EPOCHS, random_state=0)),
    ])
    return GridSearchCV(pipe, GRID, cv=CV, n_jobs=n_jobs)


def load_sktransfer():
    """Run in a worker: import torch and sktransfer once (the start-up cost)."""
    import sktransfer

    return sktransfer.__version__


def timed_fit(search):
    start = time.perf_counter()
    search.fit(X_target, y_target)
    return search, time.perf_counter() - start


# %%
# Pretrain the source network
# ---------------------------
# An MLP with three hidden blocks, trained on the source table. Its network,
# ``source.module_``, is the pretrained model of the search; it travels to the
# workers inside each pickled fit.

if __name__ == "__main__":
    torch.set_num_threads(1)  # a small network: one thread per fit, as on the workers
    print(f"{'fast' if FAST else 'full'} mode: {4 * 3 * CV} fits of at most "
          f"{MAX_EPOCHS} epochs")
    source = FineTunedRegressor(model=make_mlp, penalty=None, head_init="random", freeze_depth=0,
                                lr=3e-3, max_epochs=PRETRAIN_EPOCHS, batch_size=128,
                                random_state=0)
    source.fit(StandardScaler().fit_transform(X_source), y_source)
    source_net = source.module_

# %%
# Locally: one fit at a time, then joblib's process pool
# ------------------------------------------------------

if __name__ == "__main__":
    sequential, t_sequential = timed_fit(make_search(source_net, n_jobs=1))
    # joblib keeps its worker processes for the session: start them (and import
    # torch there) once, and time the search apart from that start-up
    start = time.perf_counter()
    Parallel(n_jobs=2)(delayed(load_sktransfer)() for _ in range(2))
    t_pool_startup = time.perf_counter() - start
    pool, t_pool = timed_fit(make_search(source_net, n_jobs=2))
    print(f"n_jobs=1: {t_sequential:.1f} s   n_jobs=2 (loky): {t_pool:.1f} s "
          f"(+ {t_pool_startup:.1f} s to start the worker processes)")
    print("best:", sequential.best_params_, f"accuracy {sequential.best_score_:.3f}")

# %%
# On a dask cluster
# -----------------
# ``LocalCluster`` starts a scheduler and two worker processes on this
# machine, one thread each (one fit at a time per worker: sktransfer runs one
# fit at a time per process anyway, since torch's random generators are shared
# by the threads of a process). For a real cluster, replace the two lines that
# make ``cluster`` and ``client`` by ``client = Client("tcp://scheduler:8786")``.
# ``n_jobs=-1`` lets joblib use every worker thread of the cluster.

if __name__ == "__main__":
    from dask.distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.run(load_sktransfer)
        t_startup = time.perf_counter() - start
        with parallel_backend("dask"):
            on_dask, t_dask = timed_fit(make_search(source_net, n_jobs=-1))
    print(f"cluster start-up: {t_startup:.1f} s   search on the cluster: {t_dask:.1f} s")

# %%
# Same results, whatever ran the fits
# -----------------------------------
# Every fit is seeded by ``random_state`` and starts from the same pretrained
# weights, so the cluster's cross-validation scores are identical to the local
# ones, and so is the chosen model.

if __name__ == "__main__":
    results = pd.DataFrame({
        "freeze_depth": [p["net__freeze_depth"] for p in sequential.cv_results_["params"]],
        "alpha": [p["net__alpha"] for p in sequential.cv_results_["params"]],
        "local n_jobs=1": sequential.cv_results_["mean_test_score"],
        "local n_jobs=2": pool.cv_results_["mean_test_score"],
        "dask cluster": on_dask.cv_results_["mean_test_score"],
    })
    print(results.round(4).to_string(index=False))
    same = (np.array_equal(results["local n_jobs=1"], results["dask cluster"])
            and np.array_equal(results["local n_jobs=1"], results["local n_jobs=2"]))
    print("identical scores:", same)
    print("same best parameters:", sequential.best_params_ == on_dask.best_params_)

# %%
# Timings
# -------
# Wall-clock time of each search on this machine, once the worker processes
# run (starting them is paid once per session, not per search).

if __name__ == "__main__":
    fig, ax = plt.subplots(figsize=(7, 3))
    names = ["local, n_jobs=1", "local, n_jobs=2 (loky)", "dask LocalCluster, 2 workers"]
    times = [t_sequential, t_pool, t_dask]
    bars = ax.barh(names, times, color=["#999999", "#4c72b0", "#dd8452"])
    ax.bar_label(bars, labels=[f"{t:.1f} s (speed-up {t_sequential / t:.1f}x)" for t in times],
                 padding=3)
    ax.set_xlabel("seconds for the whole grid search")
    ax.set_xlim(0, max(times) * 1.6)
    ax.invert_yaxis()
    ax.set_title(f"{4 * 3 * CV} fine-tunings, same results every way")
    fig.tight_layout()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUTPUT_DIR / "cluster_grid_search.png", dpi=120)
    print(f"figure written to {OUTPUT_DIR}")
    if matplotlib.get_backend().lower() != "agg":
        plt.show()
