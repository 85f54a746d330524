"""Frozen-prefix outputs kept between fits, keyed by content.

A grid search over ``alpha`` (or ``lr``, ``penalty``, ...) fits the same frozen
blocks to the same training fold again and again. Their outputs only depend on
the frozen blocks' weights and structure, the input data, the preprocessing,
the batch size and the device, so a fit whose frozen prefix matches an earlier
fit's reuses its outputs instead of running the blocks again. The key is a hash
of those contents, not object identities, so clones and unpickled copies (one
per joblib task) hit too, and a source network changed in place misses.

Entries are kept in a least-recently-used store of at most ``cache_size`` MB
(the budget of the fit that adds an entry) per process; :func:`clear_cache`
frees them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch

__all__ = ["prefix_key", "lookup", "store", "clear_cache"]

_STORE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _update_with_tensor(h, t):
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def prefix_key(blocks, data, preprocess, batch_size, device):
    """A hash of everything the frozen blocks' outputs depend on, or ``None`` when
    the inputs cannot be fingerprinted (image files may change on disk)."""
    if data.kind == "files":
        return None
    h = hashlib.sha256()  # hardware-accelerated on most CPUs
    for block in blocks:
        h.update(repr(block).encode())  # the structure (layers and their settings)
        for name, t in block.state_dict().items():
            h.update(name.encode())
            _update_with_tensor(h, t)
    if data.kind == "text":  # strings: their UTF-8 bytes, each with its length
        h.update(f"text|{len(data.data)}|{data.pad_to}".encode())
        for text in data.data:
            raw = text.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
    else:
        array = np.ascontiguousarray(data.data)
        h.update(f"{data.kind}|{array.dtype}|{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    h.update(repr(preprocess).encode())
    # the thread count too: on the CPU it can change the order of float sums
    h.update(f"|{batch_size}|{device}|{torch.get_num_threads()}".encode())
    return h.hexdigest()


def lookup(key):
    """The stored outputs for ``key`` (marked as recently used), or ``None``."""
    if key is None:
        return None
    with _LOCK:
        value = _STORE.get(key)
        if value is not None:
            _STORE.move_to_end(key)
        return value


def store(key, outputs, budget_bytes):
    """Keep ``outputs`` under ``key``, evicting the least recently used entries so
    that the store holds at most ``budget_bytes``."""
    if key is None:
        return
    size = outputs.element_size() * outputs.numel()
    with _LOCK:
        _STORE.pop(key, None)
        if size > budget_bytes:
            return
        while _STORE and _total() + size > budget_bytes:
            _STORE.popitem(last=False)
        _STORE[key] = outputs


def _total():
    return sum(t.element_size() * t.numel() for t in _STORE.values())


def clear_cache():
    """Free the frozen-prefix outputs that sktransfer keeps between fits.

    Fine-tuning estimators with frozen blocks keep their outputs on the
    training data (at most ``cache_size`` MB per process, on the fit's device)
    so that later fits with the same frozen blocks and data, as in a grid
    search over ``alpha``, skip computing them again. Call this to release that
    memory, e.g. after a search on the GPU.

    Returns
    -------
    n_freed : int
        The number of entries removed.

    Examples
    --------
    >>> from sktransfer import clear_cache
    >>> n = clear_cache()
    """
    with _LOCK:
        n = len(_STORE)
        _STORE.clear()
    return n
