"""Grid searches on a cluster: joblib's dask and Ray backends run the fits on workers.

Each test starts a real local cluster (separate worker processes, loopback
only), runs the same search as locally, and checks that the fits ran in the
workers and that every result equals the local run's.
"""

import os

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FeatureExtractorTransformer, FineTunedClassifier

GRID = {"net__freeze_depth": [0, 1, "all"], "net__alpha": [1e-3, 1e-1]}


def _search(source, n_jobs=None):
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("net", FineTunedClassifier(model=source, penalty="l2_sp", max_epochs=8,
                                    batch_size=32, lr=3e-3, random_state=0, device="cpu")),
    ])
    # a second metric reports the process each fit was scored in
    scoring = {"accuracy": "accuracy", "pid": lambda est, X, y: os.getpid()}
    return GridSearchCV(pipe, GRID, cv=3, scoring=scoring, refit="accuracy", n_jobs=n_jobs)


@pytest.fixture(scope="module")
def target(tabular_source):
    X, y = tabular_source["X_target"][:240], tabular_source["y_target"][:240]
    return X, y


@pytest.fixture(scope="module")
def local_search(tabular_source, target):
    return _search(tabular_source["net"]).fit(*target)


def _pids(search):
    return {int(v) for k, vals in search.cv_results_.items()
            if k.startswith("split") and k.endswith("_test_pid") for v in vals}


def _check_same_as_local(remote, local, X, worker_pids=None):
    assert _pids(local) == {os.getpid()}
    pids = _pids(remote)
    if worker_pids is not None:
        assert pids <= set(worker_pids), f"fits ran in {pids}, workers are {worker_pids}"
    assert os.getpid() not in pids, "fits ran in the test process, not on the cluster"
    for key in ("mean_test_accuracy", "std_test_accuracy", "rank_test_accuracy"):
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key],
                                      err_msg=key)
    for i in range(3):
        key = f"split{i}_test_accuracy"
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key])
    assert list(remote.cv_results_["params"]) == list(local.cv_results_["params"])
    assert remote.best_params_ == local.best_params_
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))


def test_grid_search_on_dask_local_cluster(tabular_source, target, local_search,
                                           patient_dask):
    import distributed

    X, y = target
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        worker_pids = client.run(os.getpid).values()
        with parallel_backend("dask"):
            remote = _search(tabular_source["net"], n_jobs=-1).fit(X, y)
            # a pipeline with the frozen feature extractor runs there as well
            pipe = Pipeline([("features", FeatureExtractorTransformer(
                tabular_source["net"], device="cpu")),
                ("clf", LogisticRegression(max_iter=500))])
            remote_cv = cross_val_score(pipe, X, y, cv=3, n_jobs=-1)
    _check_same_as_local(remote, local_search, X, worker_pids)
    assert len(_pids(remote)) == 2, "both workers should have run fits"
    np.testing.assert_array_equal(remote_cv, cross_val_score(pipe, X, y, cv=3))
    # the estimator in the test process was never touched by the workers' fits
    assert not hasattr(remote.estimator.named_steps["net"], "module_")


def _fit_concurrency_probe(distributed):
    """A worker plugin that records, from each worker's own state machine, the most
    fit tasks it ever ran at once, and whether each fit task waited for a resource.

    The worker's ``state.executing`` (and ``long_running``, for tasks that seceded)
    holds a task from the moment it takes its thread and resources until its
    function has returned, cancelled or not; every change to it is followed by a
    transition of that task, so reading it at each transition gives the exact
    maximum. (The scheduler's task stream cannot: its start/stop times are shifted
    by the worker's estimate of the scheduler's clock offset, re-measured at every
    heartbeat, so back-to-back tasks on a busy machine appear to overlap by the
    jitter of that estimate.)
    """

    class FitConcurrency(distributed.WorkerPlugin):
        name = "sktransfer-fit-concurrency"

        def setup(self, worker):
            self.worker = worker
            self.max_running = 0
            self.fits = set()
            self.constrained = set()

        def transition(self, key, start, finish, **kwargs):
            if "_fit_and_score" not in str(key):
                return
            self.fits.add(key)
            if finish == "constrained":
                self.constrained.add(key)
            state = self.worker.state
            running = [ts for ts in state.executing | state.long_running
                       if "_fit_and_score" in str(ts.key)]
            self.max_running = max(self.max_running, len(running))

    def report(dask_worker):
        plugin = dask_worker.plugins[FitConcurrency.name]
        out = {"max_running": plugin.max_running, "fits": len(plugin.fits),
               "constrained": len(plugin.constrained)}
        plugin.setup(dask_worker)  # start counting again
        return out

    return FitConcurrency(), report


@pytest.fixture
def patient_dask():
    """Generous connection timeouts: on a loaded machine workers start slowly."""
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    with dask.config.set({"distributed.comm.timeouts.connect": "180s",
                          "distributed.comm.timeouts.tcp": "180s"}):
        yield


def test_dask_workers_with_threads_and_gpu_resources(tabular_source, target, local_search,
                                                     patient_dask):
    """Workers with several threads (dask's default on a big machine) still give
    the local results: a process runs one fit at a time. With the documented GPU
    recipe (workers declare GPU=1, fits ask for it) the scheduler itself never
    runs two fits on one worker at once."""
    import distributed

    X, y = target
    plugin, report = _fit_concurrency_probe(distributed)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  resources={"GPU": 1}) as cluster, \
            distributed.Client(cluster) as client:
        client.register_plugin(plugin)
        with parallel_backend("dask"):
            threaded = _search(tabular_source["net"], n_jobs=-1).fit(X, y)
        without_resources = client.run(report)
        with parallel_backend("dask", resources={"GPU": 1}):
            one_per_gpu = _search(tabular_source["net"], n_jobs=-1).fit(X, y)
        with_resources = client.run(report)
    _check_same_as_local(threaded, local_search, X)
    _check_same_as_local(one_per_gpu, local_search, X)
    # the probe sees concurrent fits where they happen: without the resource
    # request a worker with 2 threads runs 2 fit tasks at once (the second waits
    # for sktransfer's per-process lock)
    assert sum(r["fits"] for r in without_resources.values()) > 0
    assert max(r["max_running"] for r in without_resources.values()) >= 2, without_resources
    # with it, every fit task reached its worker with the GPU restriction (it waited
    # in the "constrained" state for the GPU), and no worker ever ran two at once
    assert sum(r["fits"] for r in with_resources.values()) > 0, with_resources
    for worker, r in with_resources.items():
        assert r["constrained"] == r["fits"], (worker, r)
        assert r["max_running"] == 1, f"two fits ran at once on {worker}: {r}"


def test_threads_in_one_process_give_reproducible_results(tabular_source, target,
                                                          local_search, monkeypatch):
    import sktransfer._base

    monkeypatch.setattr(sktransfer._base, "_warned_threads", False)
    X, y = target
    with pytest.warns(UserWarning, match="one fit at a time per process"), \
            parallel_backend("threading", n_jobs=3):
        threaded = _search(tabular_source["net"], n_jobs=3).fit(X, y)
    # the lock keeps torch's shared random generators to one fit at a time
    np.testing.assert_array_equal(threaded.cv_results_["mean_test_accuracy"],
                                  local_search.cv_results_["mean_test_accuracy"])
    assert threaded.best_params_ == local_search.best_params_


def test_grid_search_on_ray(tabular_source, target, local_search):
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = target
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        register_ray()
        with parallel_backend("ray"):
            remote = _search(tabular_source["net"], n_jobs=-1).fit(X, y)
    finally:
        ray.shutdown()
    _check_same_as_local(remote, local_search, X)
