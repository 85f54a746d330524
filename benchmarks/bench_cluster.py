"""A grid search locally and on a dask LocalCluster: the cost of shipping fits.

The same ``GridSearchCV`` (an MLP source network, 4 freeze depths x 3 alphas,
cv=5: 60 fits) runs sequentially, with joblib's loky pool (``n_jobs=2``) and
on a ``dask.distributed.LocalCluster`` with 2 single-thread worker processes.
Worker processes are started (and import sktransfer) before the timings, as
they are once per session. All three must give identical scores.

It also prints what one pickled fit carries for a resnet18 source: the network
as an ``nn.Module`` (its weights travel with every fit) or as a name plus a
weights file on shared storage.

Run: ``python benchmarks/bench_cluster.py`` (``--quick`` to smoke-test). Needs
``pip install "sktransfer[dask]"``.
"""

import logging
import os
import pickle
import tempfile

import dask
import numpy as np
import torch
from joblib import Parallel, delayed, parallel_backend
from sklearn.model_selection import GridSearchCV
from torch import nn

from _common import best_time, machine, parse_args, report, resnet18

from sktransfer import FineTunedClassifier


def load_sktransfer():
    import sktransfer

    return sktransfer.__version__


def tabular(n, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    y = (np.sin(X[:, 0]) + X[:, 1] * X[:, 2] > 0).astype(int)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    return X, y, net


def search(net, X, y, epochs, n_jobs):
    est = FineTunedClassifier(model=net, max_epochs=epochs, lr=3e-3, random_state=0,
                              device="cpu")
    grid = {"freeze_depth": [0, 1, 2, "all"], "alpha": [1e-4, 1e-2, 1.0]}
    return GridSearchCV(est, grid, cv=5, n_jobs=n_jobs, refit=False).fit(X, y)


def payload_sizes():
    """Bytes of one pickled estimator: resnet18 as a module vs as name + file."""
    net = resnet18()
    as_module = len(pickle.dumps(FineTunedClassifier(model=net)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18.pth")
        torch.save(net.state_dict(), path)
        as_file = len(pickle.dumps(FineTunedClassifier(model="resnet18", weights=path)))
    return as_module, as_file


def main():
    args = parse_args(__doc__)
    from dask.distributed import Client, LocalCluster

    n, epochs = (120, 2) if args.quick else (300, 20)
    X, y, net = tabular(n)
    print(f"GridSearchCV 4x3, cv=5 (60 fits), MLP, {n} rows, {epochs} epochs; {machine()}")
    torch.set_num_threads(1)  # one thread per fit everywhere, as on dask workers
    Parallel(n_jobs=2)(delayed(load_sktransfer)() for _ in range(2))
    t_seq, seq = best_time(lambda: search(net, X, y, epochs, 1), args.repeats)
    t_loky, loky = best_time(lambda: search(net, X, y, epochs, 2), args.repeats)
    def on_dask(profile):
        # dask workers sample their threads' stacks every 10 ms (the dashboard's
        # profile); with many small torch ops that costs time: measured both ways
        with dask.config.set({"distributed.worker.profile.enabled": profile}), \
                LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                             silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            client.run(load_sktransfer)

            def run():
                with parallel_backend("dask"):
                    return search(net, X, y, epochs, -1)

            return best_time(run, args.repeats)

    t_dask, dask_result = on_dask(True)
    t_quiet, quiet = on_dask(False)
    report("Grid search", [("sequential (n_jobs=1)", t_seq), ("loky, n_jobs=2", t_loky),
                           ("dask LocalCluster, 2 workers x 1 thread", t_dask),
                           ("  the same, worker profiler off", t_quiet)],
           reference="sequential (n_jobs=1)")
    same = all(np.array_equal(seq.cv_results_["mean_test_score"], r.cv_results_["mean_test_score"])
               for r in (loky, dask_result, quiet))
    print(f"  dask / loky: {t_dask / t_loky:.2f}x ({t_quiet / t_loky:.2f}x with the worker "
          f"profiler off); identical scores: {same}")
    as_module, as_file = payload_sizes()
    print(f"\nOne pickled fit with a resnet18 source: {as_module / 2**20:.1f} MB as an "
          f"nn.Module, {as_file / 2**10:.1f} kB as model='resnet18' + a weights file "
          f"({as_module / as_file:.0f}x less to ship per fit)")


if __name__ == "__main__":
    main()
