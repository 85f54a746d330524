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

This module holds all of the frozen-prefix logic: :func:`training_inputs`
decides, for one fit, whether the frozen blocks' outputs are computed once (or
found in the store) and what the trained part of the network sees;
:func:`starting_at` runs the network from the first trained block while it
trains on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch

from ._device import autocast
from ._inputs import in_memory, iter_batches, make_batch, padded_to_longest

__all__ = ["prefix_key", "lookup", "store", "clear_cache", "training_inputs", "starting_at"]

_STORE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _update_with_tensor(h, t):
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def prefix_key(blocks, data, preprocess, batch_size, device, amp=None):
    """A hash of everything the frozen blocks' outputs depend on, or ``None`` when
    the inputs cannot be fingerprinted (image files may change on disk).

    ``amp``: the autocast dtype the outputs were computed in (``None``: float32).
    """
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
    if amp is not None:  # precision (issue 20): outputs computed under autocast differ
        h.update(f"|autocast:{amp}".encode())
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


def training_inputs(module, data, depth, preprocess, device, *, batch_size, cache_size,
                    augment=None, verbose=0, amp=None):
    """What the trained part of the network sees: ``(X, first trained block)``.

    With frozen blocks (``depth > 0``) and room in ``cache_size`` MB, their
    outputs are computed once (eval mode, batch by batch), or found in the
    store from an earlier fit, and training starts at block ``depth``;
    otherwise the raw input (:func:`~sktransfer._inputs.in_memory`), run
    through the frozen blocks on every batch. ``augment`` turns the cache off
    (the frozen blocks must see the augmented inputs). ``amp``: the autocast
    dtype of the fit (``None``: float32); the outputs are computed under it and
    kept in the dtype they come out in, as the trained blocks would receive
    them without the cache (bfloat16 halves the store).
    """
    raw = in_memory(data)
    if depth == 0 or cache_size == 0:
        return raw, 0
    if augment is not None:
        if verbose:
            print(
                "Frozen-prefix cache off: augment changes the inputs of every batch, "
                "so the frozen blocks run on every batch."
            )
        return raw, 0
    module.eval()
    data = padded_to_longest(data, preprocess)  # texts: one length for every output
    # precision (issue 20): under autocast, and the store in the outputs' own dtype
    with torch.no_grad(), autocast(device, amp):
        sample = make_batch(data, 0, 1, preprocess).to(device)
        probe = module.forward_features(sample, stop=depth)
        shape, dtype = tuple(probe.shape[1:]), probe.dtype
        n_bytes = probe.element_size() * len(data) * int(np.prod(shape))
        if n_bytes > cache_size * 2**20:
            if verbose:
                print(
                    f"Frozen-prefix cache off: the outputs of the {depth} frozen blocks "
                    f"need {n_bytes / 2**20:.0f} MB > cache_size={cache_size} MB; "
                    "the frozen blocks run on every batch instead."
                )
            return raw, 0
        # an earlier fit with the same frozen blocks on the same data (a grid
        # search over alpha, lr, ...) already computed them
        key = prefix_key(module.blocks[:depth], data, preprocess, batch_size, device, amp)
        cached = lookup(key)
        if (cached is not None and tuple(cached.shape) == (len(data), *shape)
                and cached.dtype == dtype):
            if verbose:
                print(
                    f"Frozen-prefix cache on: outputs of the {depth} frozen blocks "
                    f"reused from an earlier fit on the same data ({n_bytes / 2**20:.1f}"
                    f" MB); training starts at block {depth}."
                )
            return cached, depth
        cached = torch.empty((len(data), *shape), dtype=dtype, device=device)
        start = 0
        for batch in iter_batches(data, batch_size, preprocess, device):
            out = module.forward_features(batch, stop=depth)
            cached[start:start + len(out)] = out
            start += len(out)
        store(key, cached, cache_size * 2**20)
    if verbose:
        print(
            f"Frozen-prefix cache on: outputs of the {depth} frozen blocks computed once "
            f"({n_bytes / 2**20:.1f} MB); training starts at block {depth}."
        )
    return cached, depth


@contextlib.contextmanager
def starting_at(module, start):
    """Inside the block, ``module`` (a ``BlockNet``) runs from block ``start``: its
    input is the cached output of the frozen blocks before it."""
    module.start_block = start
    try:
        yield module
    finally:
        module.start_block = 0
