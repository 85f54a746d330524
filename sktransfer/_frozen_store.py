"""Where frozen outputs are kept: per sample, in this process and on disk (``memory``).

A frozen output is identified by two keys: the *table* (a fingerprint of
everything it depends on besides the input row: the frozen blocks' structure
and weights, the preprocessing, the device, ... computed in
``_prefix_cache.py``) and the *row* (a hash of the input row's content). Rows
are kept in *chunks*: the rows computed together in one batch.

:class:`MemoryStore` (one per process, ``STORE``) keeps chunks on the device
they were computed on, least recently used out first, within the budget of the
call that adds a chunk (``cache_size``). :class:`DiskStore` keeps chunks in a
``joblib.Memory`` location, as scikit-learn's ``Pipeline(memory=...)`` does:
under ``<location>/joblib/sktransfer/frozen/<table>/<chunk>/output.pkl``, each
chunk a joblib item written by joblib's store backend (a temporary file renamed
into place, so two processes writing the same chunk never leave a torn file)
and read back memory-mapped (``joblib.load(..., mmap_mode="r")``), so worker
processes of a search share the outputs without copying whole files.
``memory.clear()`` (or deleting the folder) removes them, and
``memory.reduce_size(bytes_limit=...)`` counts them like any joblib cache item.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np
import torch

__all__ = ["Chunk", "MemoryStore", "DiskStore", "STORE", "ResultMemo", "RESULTS",
           "disk_store", "clear_cache"]


class Chunk:
    """Rows computed together: ``rows[i]`` is the output for row key ``keys[i]``.

    ``threads`` is the torch thread count they were computed with (outputs
    computed with another count are reused only once they are checked to be
    identical, ``_prefix_cache``).
    """

    __slots__ = ("rows", "keys", "threads", "nbytes", "__weakref__")

    def __init__(self, rows, keys, threads):
        self.rows = rows
        self.keys = list(keys)
        self.threads = threads
        self.nbytes = rows.element_size() * rows.numel()


class MemoryStore:
    """Chunks of frozen outputs in this process, least recently used out first."""

    def __init__(self):
        self._lock = threading.RLock()
        self._chunks = OrderedDict()  # id(chunk) -> (table, chunk), oldest first
        self._tables = {}  # table -> {row key: (chunk, offset)}
        self._total = 0

    def locate(self, table, keys):
        """``[(chunk, offset) or None]`` for ``keys``; the chunks found become the most
        recently used. The references keep the rows alive even if evicted later."""
        with self._lock:
            index = self._tables.get(table)
            if not index:
                return [None] * len(keys)
            refs = [index.get(k) for k in keys]
            for chunk in {id(r[0]): r[0] for r in refs if r is not None}.values():
                self._chunks.move_to_end(id(chunk))
            return refs

    def add(self, table, chunk, budget_bytes):
        """Keep ``chunk`` under ``table``, evicting the least recently used chunks so
        that the store holds at most ``budget_bytes``; a chunk larger than the
        budget is not kept. Returns whether it was kept."""
        with self._lock:
            if chunk.nbytes > budget_bytes:
                return False
            while self._chunks and self._total + chunk.nbytes > budget_bytes:
                self._evict(next(iter(self._chunks)))
            self._chunks[id(chunk)] = (table, chunk)
            self._total += chunk.nbytes
            index = self._tables.setdefault(table, {})
            for offset, key in enumerate(chunk.keys):
                index[key] = (chunk, offset)
            return True

    def _evict(self, chunk_id):
        table, chunk = self._chunks.pop(chunk_id)
        self._total -= chunk.nbytes
        index = self._tables.get(table, {})
        for key in chunk.keys:
            ref = index.get(key)
            if ref is not None and ref[0] is chunk:
                del index[key]
        if not index:
            self._tables.pop(table, None)

    @property
    def nbytes(self):
        """Bytes held (the rows of every chunk)."""
        return self._total

    def __len__(self):
        return len(self._chunks)

    def clear(self):
        with self._lock:
            n = len(self._chunks)
            self._chunks.clear()
            self._tables.clear()
            self._total = 0
            return n


#: the in-process store, shared by every estimator of this process
STORE = MemoryStore()


class ResultMemo:
    """Small results computed from frozen outputs (a linear probe's coefficients),
    kept for the next fit that asks with the same arguments.

    In a grid search the candidates that differ only in training settings (``lr``,
    ``alpha``, ...) fit the same probe on the same fold; this keeps the last
    ``size`` results in this process, keyed by ``joblib.hash`` of the function's
    name and arguments (arrays by content), and, with a ``memory`` location, in
    ``memory.cache`` as scikit-learn's ``Pipeline`` caches its transformers, so
    that the workers of ``n_jobs=2`` share them too. A result is the function's
    own for the same arguments: reusing it changes nothing, bit for bit.
    """

    def __init__(self, size=32):
        self._lock = threading.Lock()
        self._items = OrderedDict()
        self.size = size

    def __call__(self, function, *args, memory=None):
        import joblib

        key = joblib.hash((function.__module__, function.__qualname__, args))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # joblib.Memory(location=None).cache calls the function, as Pipeline's memory
        compute = function if memory is None else _check_memory(memory).cache(function)
        result = compute(*args)
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return result

    def __len__(self):
        return len(self._items)

    def clear(self):
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n


#: results of this process computed from frozen outputs (the probes), see ResultMemo
RESULTS = ResultMemo()


def _check_memory(memory):
    from sklearn.utils.validation import check_memory

    return check_memory(os.fspath(memory) if isinstance(memory, os.PathLike) else memory)


def clear_cache():
    """Free the frozen outputs that sktransfer keeps in this process.

    Estimators with frozen blocks keep the blocks' outputs per sample (at
    most ``cache_size`` MB per process, on the fit's device), so that later
    fits, predictions and transforms on the same samples with the same frozen
    blocks skip computing them again: the other folds, candidates and the
    refit of a grid search; and the last few linear probes of
    ``head_init="probe"`` (a probe depends on the fold's rows, not on ``lr``
    or ``alpha``: the candidates of a search share it). Call this to release
    that memory, e.g. after a search on the GPU. Outputs kept on disk
    (``memory=``) stay there; remove them with ``memory.clear()`` or by
    deleting the folder.

    Returns
    -------
    n_freed : int
        The number of chunks (batches of kept outputs) and probes removed.

    Examples
    --------
    >>> from sktransfer import clear_cache
    >>> n = clear_cache()
    """
    return STORE.clear() + RESULTS.clear()


def disk_store(memory):
    """The :class:`DiskStore` of a ``memory`` parameter, or ``None`` (no location).

    ``memory`` is ``None``, a path (str or ``os.PathLike``) or a
    ``joblib.Memory``; scikit-learn's ``check_memory`` turns a path into a
    ``joblib.Memory``, as ``Pipeline`` does.
    """
    if memory is None:
        return None
    memory = _check_memory(memory)
    location = getattr(memory, "location", None)
    if location is None:  # joblib.Memory(location=None): nothing is kept
        return None
    if getattr(memory, "backend", "local") != "local" or not isinstance(location, str):
        raise ValueError(
            f"memory={memory!r} does not keep its items in a local folder (backend "
            f"{getattr(memory, 'backend', None)!r}); sktransfer memory-maps the frozen "
            "outputs it keeps, so pass a folder path or joblib.Memory(location=<folder>)."
        )
    return _disk_store_at(location, bool(getattr(memory, "compress", False)))


_DISK_STORES = {}


def _disk_store_at(location, compress):
    """One :class:`DiskStore` per location and process (it caches the folder's index)."""
    key = (os.path.realpath(location), compress)
    if key not in _DISK_STORES:
        _DISK_STORES[key] = DiskStore(location, compress)
    return _DISK_STORES[key]


def _chunk_id(keys, threads):
    h = hashlib.sha256(f"{threads}|".encode())
    for key in keys:
        h.update(key)
    return h.hexdigest()[:32]  # joblib counts 32-hex folders as cache items


class DiskStore:
    """Chunks of frozen outputs under a ``joblib.Memory`` location, shared by processes.

    Each process keeps an index of the chunks it has seen (row key -> chunk
    id, offset, threads) and refreshes it from the folder listing; a chunk
    that another process removed meanwhile reads as missing, and its rows are
    computed again.
    """

    def __init__(self, location, compress=False):
        from joblib import Memory

        # joblib's own store backend writes the items (atomically) and removes them
        self._backend = Memory(location, compress=compress, verbose=0).store_backend
        self.root = os.path.join(self._backend.location, "sktransfer", "frozen")
        self._mmap = None if compress else "r"  # compressed files cannot be mapped
        self._lock = threading.RLock()
        self._index = {}  # table -> {row key: [(chunk id, offset, threads), ...]}
        self._seen = {}  # table -> set of chunk ids in the index

    def _call_id(self, table, chunk_id):
        return ["sktransfer", "frozen", table, chunk_id]

    def _file(self, table, chunk_id):
        return os.path.join(self.root, table, chunk_id, "output.pkl")

    def _load(self, table, chunk_id):
        import joblib

        return joblib.load(self._file(table, chunk_id), mmap_mode=self._mmap)

    def refresh(self, table):
        """Add the chunks written (by any process) since the last refresh to the index."""
        with self._lock:
            try:
                names = os.listdir(os.path.join(self.root, table))
            except FileNotFoundError:
                return
            seen = self._seen.setdefault(table, set())
            index = self._index.setdefault(table, {})
            for chunk_id in names:
                if chunk_id in seen:
                    continue
                try:
                    item = self._load(table, chunk_id)
                    keys, threads = [bytes(k) for k in item["keys"]], int(item["threads"])
                except (OSError, EOFError, KeyError, ValueError):
                    continue  # being written (or removed): seen on a later refresh
                del item
                seen.add(chunk_id)
                for offset, key in enumerate(keys):
                    index.setdefault(key, []).append((chunk_id, offset, threads))

    def locate(self, table, keys):
        """``[list of (chunk id, offset, threads)]`` per key (empty when not on disk)."""
        index = self._index.get(table, {})
        return [index.get(k, []) for k in keys]

    def read(self, table, chunk_id, offsets):
        """The rows ``offsets`` of a chunk (a copy), or ``None`` when it is gone."""
        try:
            item = self._load(table, chunk_id)
            rows = np.array(item["outputs"][np.asarray(offsets)])
            os.utime(self._file(table, chunk_id))  # recently used, for the size bound
        except (OSError, EOFError, KeyError, ValueError):
            self._forget(table, chunk_id)
            return None
        return rows

    def _forget(self, table, chunk_id):
        with self._lock:
            self._seen.get(table, set()).discard(chunk_id)
            for refs in self._index.get(table, {}).values():
                refs[:] = [r for r in refs if r[0] != chunk_id]

    def write(self, table, keys, rows, threads):
        """Write a chunk (``rows``: CPU array) for ``keys``; visible to others at once."""
        chunk_id = _chunk_id(keys, threads)
        item = {"keys": np.array(keys, dtype=f"S{len(keys[0])}"), "threads": threads,
                "outputs": np.ascontiguousarray(rows)}
        self._backend.dump_item(self._call_id(table, chunk_id), item, verbose=0)
        with self._lock:
            seen = self._seen.setdefault(table, set())
            if chunk_id not in seen:
                seen.add(chunk_id)
                index = self._index.setdefault(table, {})
                for offset, key in enumerate(keys):
                    index.setdefault(key, []).append((chunk_id, offset, threads))

    def items(self):
        """``[(path, bytes, last access)]`` of every chunk under this location."""
        found = []
        for dirpath, _, filenames in os.walk(self.root):
            if "output.pkl" not in filenames:
                continue
            try:
                files = [os.path.join(dirpath, f) for f in filenames]
                size = sum(os.path.getsize(f) for f in files)
                last = os.path.getatime(os.path.join(dirpath, "output.pkl"))
            except OSError:
                continue  # removed meanwhile
            found.append((dirpath, size, last))
        return found

    def nbytes(self):
        """Bytes on disk of every sktransfer chunk under this location."""
        return sum(size for _, size, _ in self.items())

    def prune(self, budget_bytes):
        """Remove the least recently used chunks until they take at most ``budget_bytes``."""
        items = self.items()
        total = sum(size for _, size, _ in items)
        if total <= budget_bytes:
            return 0
        removed = 0
        for path, size, _ in sorted(items, key=lambda item: item[2]):
            if total <= budget_bytes:
                break
            table, chunk_id = os.path.relpath(path, self.root).split(os.sep)[:2]
            # rmtree(ignore_errors=True): another process may remove it at the same time
            self._backend.clear_item(self._call_id(table, chunk_id))
            self._forget(table, chunk_id)
            total -= size
            removed += 1
        return removed


def to_chunk(rows_np, keys, threads, device):
    """A :class:`Chunk` on ``device`` from rows read from disk."""
    return Chunk(torch.from_numpy(rows_np).to(device), keys, threads)
