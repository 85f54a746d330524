"""Where frozen outputs are kept (``_frozen_store.py``): the in-process store's
least-recently-used bound, the on-disk store under a ``joblib.Memory`` location
(atomic writes, memory-mapped reads, size bound, joblib's own clean-up), and
estimators sharing outputs through it across processes and thread counts."""

import os

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold
from torch import nn

from sktransfer import FineTunedClassifier, clear_cache
from sktransfer._frozen_store import STORE, Chunk, DiskStore, MemoryStore, disk_store

KEYS = [bytes([i]) * 16 for i in range(8)]


def _chunk(value, keys, rows_per_key=1):
    return Chunk(torch.full((len(keys), 64), float(value)), keys, threads=1)  # 256 B a row


def test_memory_store_keeps_recently_used_chunks_within_the_budget():
    store = MemoryStore()
    a, b, c = _chunk(1, KEYS[:2]), _chunk(2, KEYS[2:4]), _chunk(3, KEYS[4:6])  # 512 B each
    assert store.add("t", a, 1024) and store.add("t", b, 1024)
    refs = store.locate("t", [KEYS[1], KEYS[7]])
    assert refs[0] == (a, 1) and refs[1] is None  # "a" is now the most recently used
    store.add("t", c, 1024)  # over budget: the least recently used ("b") goes
    assert store.locate("t", [KEYS[2]]) == [None]
    assert store.locate("t", [KEYS[0], KEYS[4]]) == [(a, 0), (c, 0)]
    assert store.nbytes == 1024 and len(store) == 2
    assert not store.add("t", _chunk(4, KEYS), 1024)  # larger than the budget: not kept
    assert store.locate("other table", [KEYS[0]]) == [None]
    assert store.clear() == 2 and store.nbytes == 0


def test_disk_store_round_trip_memory_mapped_and_atomic(tmp_path):
    disk = DiskStore(str(tmp_path))
    rows = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    disk.write("table", KEYS[:4], rows, threads=2)
    disk.write("table", KEYS[:4], rows, threads=2)  # the same chunk again: one item
    (item,) = disk.items()
    # the joblib layout: <location>/joblib/sktransfer/frozen/<table>/<chunk>/output.pkl
    assert item[0].startswith(os.path.join(str(tmp_path), "joblib", "sktransfer", "frozen"))
    loaded = joblib.load(os.path.join(item[0], "output.pkl"), mmap_mode="r")
    assert isinstance(loaded["outputs"], np.memmap)  # read without loading the file
    assert not [f for f in os.listdir(item[0]) if f != "output.pkl"]  # no temporary left
    other = DiskStore(str(tmp_path))  # another process: finds it after a refresh
    assert other.locate("table", KEYS[2:3]) == [[]]
    other.refresh("table")
    ((chunk_id, offset, threads),) = other.locate("table", KEYS[2:3])[0]
    assert (offset, threads) == (2, 2)
    np.testing.assert_array_equal(other.read("table", chunk_id, [2, 0]), rows[[2, 0]])
    joblib.Memory(str(tmp_path), verbose=0).clear(warn=False)  # joblib's own clean-up
    assert other.read("table", chunk_id, [0]) is None  # gone: read as missing
    assert other.locate("table", KEYS[2:3]) == [[]] and other.items() == []


def test_disk_store_size_bound_drops_least_recently_used(tmp_path):
    import time

    disk = DiskStore(str(tmp_path))
    rows = np.zeros((2, 1000), np.float32)
    for i in range(3):
        disk.write("t", KEYS[2 * i:2 * i + 2], rows + i, threads=1)
        time.sleep(0.05)
    ((first, _, _),) = disk.locate("t", KEYS[:1])[0]
    disk.read("t", first, [0])  # the oldest becomes the most recently used
    one = disk.nbytes() // 3
    assert disk.prune(2 * one + 10) == 1
    assert disk.nbytes() <= 2 * one + 10
    assert disk.locate("t", KEYS[2:3]) == [[]]  # the chunk used least recently went
    assert disk.locate("t", KEYS[:1])[0] and disk.locate("t", KEYS[4:5])[0]
    # joblib sees the chunks as cache items: reduce_size applies to them too
    memory = joblib.Memory(str(tmp_path), verbose=0)
    assert len(memory.store_backend.get_items()) == 2
    memory.reduce_size(bytes_limit=one + 10)
    assert len(disk.items()) == 1


def test_memory_parameter_forms(tmp_path):
    from pathlib import Path

    assert disk_store(None) is None
    assert disk_store(joblib.Memory(None)) is None
    a = disk_store(str(tmp_path))
    assert disk_store(Path(tmp_path)) is a  # one store (and index) per folder and process
    assert disk_store(joblib.Memory(str(tmp_path), verbose=0)) is a


# -- estimators sharing kept outputs through the disk ------------------------------------


class FileCounter:
    """Forward pre-hook counting samples in a file, so that worker processes count too."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, module, args):
        with open(self.path, "a") as f:
            f.write(f"{len(args[0])}\n")

    def total(self):
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            n = sum(int(line) for line in f)
        os.remove(self.path)
        return n


def _counted_cnn(path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 5))
    counter = FileCounter(path)
    net[0].register_forward_pre_hook(counter)
    return net, counter


def _est(net, memory, **params):
    params = {"lr": 1e-2, "alpha": 1e-3, **params}
    return FineTunedClassifier(model=net, freeze_depth=2, max_epochs=1, batch_size=32,
                               penalty="l2_sp", random_state=0, device="cpu", memory=memory,
                               **params)


@pytest.fixture()
def data(digits):
    return digits["X_target"][:96], digits["y_target"][:96]


def test_outputs_on_disk_serve_another_process(tmp_path, data):
    X, y = data
    net, counter = _counted_cnn(tmp_path / "count")
    clear_cache()
    first = _est(net, str(tmp_path / "cache")).fit(X, y)
    assert counter.total() == 96
    clear_cache()  # as a new process would start: nothing in memory
    again = _est(net, joblib.Memory(str(tmp_path / "cache"), verbose=0)).fit(X, y)
    assert counter.total() == 0
    np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    assert counter.total() == 0
    assert DiskStore(str(tmp_path / "cache")).nbytes() <= 1024 * 2**20
    # the folder is bounded by cache_size too: a budget of 2.5 batches of outputs
    # (the fit then runs the frozen blocks on every batch; predictions keep rows)
    clear_cache()
    budget = 2.5 * 4 * 32 * 8 * 6 * 6
    small = _est(net, str(tmp_path / "small"), cache_size=budget / 2**20).fit(X, y)
    small.predict_proba(X)
    small.predict_proba(X[::-1] + 1)
    assert 0 < DiskStore(str(tmp_path / "small")).nbytes() <= budget


def test_outputs_from_another_thread_count_are_checked_before_reuse(tmp_path, data):
    X, y = data
    net, counter = _counted_cnn(tmp_path / "count")
    threads = torch.get_num_threads()
    clear_cache()
    try:
        torch.set_num_threads(1)  # a worker of GridSearchCV(n_jobs=2) on 2 cores
        _est(net, str(tmp_path / "same")).fit(X, y)
        _est(net, str(tmp_path / "tampered")).fit(X, y)
    finally:
        torch.set_num_threads(max(2, threads))
    counter.total()
    clear_cache()
    reference = _est(net, None).fit(X, y).predict_proba(X)
    counter.total()
    clear_cache()
    # identical bits with another thread count: one batch computed again, the rest reused
    est = _est(net, str(tmp_path / "same")).fit(X, y)
    assert counter.total() == 32
    np.testing.assert_array_equal(est.predict_proba(X), reference)
    # outputs that differ from what this process computes are not reused
    disk = DiskStore(str(tmp_path / "tampered"))
    for path, _, _ in disk.items():
        item = joblib.load(os.path.join(path, "output.pkl"))
        item["outputs"] = item["outputs"] + 1
        joblib.dump(item, os.path.join(path, "output.pkl"))
    clear_cache()
    est = _est(net, str(tmp_path / "tampered")).fit(X, y)
    assert counter.total() == 96
    np.testing.assert_array_equal(est.predict_proba(X), reference)
    torch.set_num_threads(threads)


def test_parallel_search_shares_outputs_through_the_disk(tmp_path, data):
    X, y = data
    net, counter = _counted_cnn(tmp_path / "count")
    grid = {"alpha": [1e-3, 1e-1], "lr": [1e-3, 1e-2]}
    clear_cache()
    serial = GridSearchCV(_est(net, None), grid, cv=KFold(3)).fit(X, y)
    assert counter.total() == 64 + 32 + 32  # the first scoring keeps nothing (no memory)
    clear_cache()
    parallel = GridSearchCV(_est(net, str(tmp_path / "cache")), grid, cv=KFold(3),
                            n_jobs=2).fit(X, y)
    # two workers may compute a few rows at the same time, and the refit (here, with
    # another thread count) checks one batch: far below one pass per fit (12 fits)
    assert counter.total() <= 2 * 96
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(parallel.best_estimator_.predict_proba(X),
                                  serial.best_estimator_.predict_proba(X))


def _count_probes(monkeypatch):
    import sktransfer._heads as heads

    calls = []
    fit_linear = heads._fit_linear

    def counted(*args):
        calls.append(1)
        return fit_linear(*args)

    monkeypatch.setattr(heads, "_fit_linear", counted)
    return calls


def test_candidates_that_share_a_fold_share_its_probe(tmp_path, data, monkeypatch):
    X, y = data
    calls = _count_probes(monkeypatch)
    net, _ = _counted_cnn(tmp_path / "count")
    clear_cache()
    fast = _est(net, None, lr=3e-2).fit(X, y)
    slow = _est(net, None, lr=1e-3, alpha=1e-1).fit(X, y)  # same rows: the same probe
    assert len(calls) == 1
    _est(net, None).fit(X[:80], y[:80])  # other rows: another probe
    assert len(calls) == 2
    # what was kept is what a fresh probe gives: the same predictions, bit for bit
    assert clear_cache() > 0
    fresh = _est(net, None, lr=1e-3, alpha=1e-1).fit(X, y)
    assert len(calls) == 3
    np.testing.assert_array_equal(fresh.predict_proba(X), slow.predict_proba(X))
    assert not np.array_equal(fast.predict_proba(X), slow.predict_proba(X))


def test_probes_on_disk_serve_another_process(tmp_path, data, monkeypatch):
    X, y = data
    calls = _count_probes(monkeypatch)
    net, _ = _counted_cnn(tmp_path / "count")
    clear_cache()
    first = _est(net, str(tmp_path / "cache")).fit(X, y)
    clear_cache()  # as a new process would start: nothing in memory
    again = _est(net, str(tmp_path / "cache"), lr=1e-3).fit(X, y)
    assert len(calls) == 1
    assert not np.array_equal(again.predict_proba(X), first.predict_proba(X))
    clear_cache()
    joblib.Memory(str(tmp_path / "cache"), verbose=0).clear(warn=False)
    _est(net, str(tmp_path / "cache")).fit(X, y)  # the user emptied the folder: fitted again
    assert len(calls) == 2
