"""Frozen outputs: computed once per sample, kept, and looked up.

A grid search fits the same frozen blocks to overlapping rows again and again:
every fold shares most of its training rows with the others, every
candidate's ``score`` runs the test fold through them, and the refit uses all
rows. The frozen blocks' output for a row depends only on the blocks (their
structure and weights), the row, the preprocessing and how the computation
runs (device, batch size, data type, threads), so it is kept **per row** and
any later fit, ``predict``, ``score`` or ``transform`` on that row reuses it.

Keys (:func:`table_keys`, :func:`row_keys`): a row's output is found under
the fingerprint of everything but the row (a SHA-256 chain over the input
kind and shape, the preprocessing, device, batch size, dtype and torch
version, then each frozen block's structure and weights, the weights through
a CRC-32 of each tensor (:func:`_update_with_tensor`): read every time, never
assumed, so a source network changed in place misses, and so does a
fine-tuned network whose "frozen" blocks were changed after the fit) and a
SHA-256 of the row's bytes (of a text's UTF-8). The chain gives the
fingerprint of every shallower depth for free, so depth ``k + 1`` starts from
kept depth-``k`` outputs when they exist. Image files are never kept (they
may change on disk). The preprocessing enters by its ``repr``: a content
description for torchvision's and timm's transforms, an address for a plain
function (such a function is then kept alive, so that no other one takes its
address; its outputs are shared within the process, not through the disk).

Same results (:class:`FrozenPass`): the frozen blocks always run on batches of
exactly ``batch_size`` rows (the last one padded by repeating its last row),
and so does whatever runs on kept outputs at prediction time. At a fixed
batch shape a network in eval mode computes each row on its own, so a row's
output is bit for bit the same whichever rows share its batch: a kept output
equals a fresh one, and results do not depend on the order of the fits.
Outputs computed with another torch thread count (the worker processes of a
search get fewer threads than the main one) are reused once one batch of them,
computed again here, is found identical bit for bit; otherwise they are not.

Where outputs are kept: ``_frozen_store`` (in this process within
``cache_size`` MB; on disk with ``memory``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import zlib

import numpy as np
import torch

from ._blocknet import rowwise_pre_head
from ._device import autocast, autocast_state
from ._frozen_store import STORE, Chunk, clear_cache, disk_store, to_chunk
from ._inputs import InputData, in_memory, make_batch, pad_rows, padded_to_longest

__all__ = ["table_keys", "row_keys", "FrozenPass", "clear_cache", "training_inputs",
           "frozen_then", "starting_at"]

# (table, threads the outputs were computed with, threads now) -> same bits?
_SAME_BITS = {}
# preprocessing callables known by their address only (a function's repr): kept alive
# so that no other callable takes the address (and the key) while outputs are kept
_PINNED = {}


def _describe(preprocess):
    """``repr(preprocess)``: a content description for sktransfer's and torchvision's
    preprocessing; for a plain function its address, valid in this process only."""
    text = repr(preprocess)
    if " at 0x" in text:
        inner = getattr(preprocess, "inner", preprocess)
        _PINNED.setdefault(id(inner), inner)
    return text


def _update_with_tensor(h, t):
    """Add a weight tensor to ``h``: its shape, dtype and a CRC-32 of its bytes.

    The CRC rather than the bytes themselves: every fit and every prediction
    fingerprints the frozen blocks again (resnet18: 45 MB), and CRC-32 runs
    several times faster than SHA-256. A change confined to one value (any
    burst of at most 32 bits) always changes it; other changes of a tensor
    leave it unchanged with probability 2**-32, and two different networks
    match only if every tensor does.
    """
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    if t.numel():
        crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        h.update(f"|{t.numel()}|{crc}".encode())


def table_keys(blocks, data, preprocess, batch_size, device):
    """Fingerprints of ``blocks[:1]``, ``blocks[:2]``, ... for inputs like ``data``.

    ``None`` when the outputs cannot be kept: image files (they may change on
    disk) or blocks with parameters not yet materialised (lazy layers).
    """
    if data.kind == "files":
        return None
    for block in blocks:
        for t in list(block.parameters()) + list(block.buffers()):
            if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
                return None
    h = hashlib.sha256()  # hardware-accelerated on most CPUs
    if data.kind == "text":
        row = f"text|pad_to={data.pad_to}"
    else:
        array = data.data
        row = f"{data.kind}|{array.dtype}|{tuple(array.shape[1:])}"
    # precision (issue 20): outputs computed under autocast differ, by its dtype too
    autocast = autocast_state(torch.device(device).type)
    h.update(f"sktransfer frozen outputs|torch {torch.__version__}|{row}|"
             f"{_describe(preprocess)}|"
             f"{torch.device(device)}|batch {batch_size}|{torch.get_default_dtype()}|"
             f"autocast {autocast}".encode())
    keys = []
    for block in blocks:
        h.update(repr(block).encode())  # the structure (layers and their settings)
        for name, t in block.state_dict().items():
            h.update(name.encode())
            _update_with_tensor(h, t)
        keys.append(h.copy().hexdigest()[:32])
    return keys


def row_keys(data):
    """A 16-byte hash of each row's content (``None`` for image files)."""
    if data.kind == "files":
        return None
    if data.kind == "text":
        return [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:16]
                for t in data.data]
    array = np.ascontiguousarray(data.data)
    n = len(array)
    width = array.nbytes // n
    raw = memoryview(array).cast("B")
    return [hashlib.sha256(raw[i * width:(i + 1) * width]).digest()[:16] for i in range(n)]


def _subset(data, idx):
    if isinstance(data.data, np.ndarray):
        return InputData(data.data[np.asarray(idx)], data.kind, data.pad_to)
    return InputData([data.data[i] for i in idx], data.kind, data.pad_to)


class FrozenPass:
    """The outputs of blocks ``0..depth-1`` of ``module`` for the rows of ``data``.

    :meth:`run` finds the rows kept by earlier calls (in this process, then
    on disk with ``memory``), computes the others in batches of exactly
    ``batch_size`` rows and keeps them. ``computed`` counts the rows sent
    through frozen blocks (padding included), ``reused`` the rows found.
    """

    def __init__(self, module, depth, data, preprocess, device, *, batch_size, cache_size,
                 memory=None, keep=True, tables=False):
        self.module, self.depth, self.data = module, depth, data
        self.preprocess, self.device, self.batch_size = preprocess, device, batch_size
        self.budget = cache_size * 2**20
        self.threads = torch.get_num_threads()
        self.keep = keep  # keep the rows computed here (else only look kept ones up)
        self.tables = table_keys(module.blocks[:depth], data, preprocess, batch_size,
                                 device) if tables is False else tables
        self.keys = row_keys(data) if self.tables else None
        self.disk = disk_store(memory) if self.tables else None
        self.computed = self.reused = 0
        self.needed_bytes = None

    # -- lookups --------------------------------------------------------------------
    def _table(self, level):
        # in this process, outputs computed with another thread count are kept apart
        return f"{self.tables[level - 1]}-t{self.threads}"

    def _find(self, level, rows, refs, verify):
        """Fill ``refs[i]`` (chunk, offset) for rows ``i`` kept at ``level``."""
        found = STORE.locate(self._table(level), [self.keys[i] for i in rows])
        for i, ref in zip(rows, found):
            refs[i] = ref
        if self.disk is None:
            return
        table = self.tables[level - 1]
        rows = [i for i in rows if refs[i] is None]
        if not rows:
            return
        self.disk.refresh(table)
        usable, unchecked = {}, {}
        for i, candidates in zip(rows, self.disk.locate(table, [self.keys[i] for i in rows])):
            for chunk_id, offset, threads in candidates:
                same = threads == self.threads or _SAME_BITS.get((table, threads, self.threads))
                if same:
                    usable[i] = (chunk_id, offset)
                    break
            else:
                if candidates and verify and (table, candidates[0][2], self.threads) \
                        not in _SAME_BITS:
                    unchecked.setdefault(candidates[0][2], []).append((i, candidates[0]))
        for threads, items in unchecked.items():
            if self._check_threads(table, threads, items[:self.batch_size], refs):
                usable.update({i: c[:2] for i, c in items if refs[i] is None})
        self._read(level, usable, refs)

    def _read(self, level, usable, refs):
        """Read rows ``{i: (chunk id, offset)}`` from disk into this process's store."""
        by_chunk = {}
        for i, (chunk_id, offset) in usable.items():
            by_chunk.setdefault(chunk_id, []).append((i, offset))
        for chunk_id, items in by_chunk.items():
            rows = self.disk.read(self.tables[level - 1], chunk_id, [o for _, o in items])
            if rows is None:
                continue  # removed meanwhile: computed again
            chunk = to_chunk(rows, [self.keys[i] for i, _ in items], self.threads, self.device)
            STORE.add(self._table(level), chunk, self.budget)
            for j, (i, _) in enumerate(items):
                refs[i] = (chunk, j)

    def _check_threads(self, table, threads, items, refs):
        """Compute rows kept with ``threads`` threads again, now; same bits -> reuse them."""
        rows = [i for i, _ in items]
        out = self._compute(rows, 0, refs)  # kept under this thread count, refs filled
        stored = {}
        for i, (chunk_id, offset, _) in items:
            stored.setdefault(chunk_id, []).append((i, offset))
        same = True
        for chunk_id, pairs in stored.items():
            old = self.disk.read(table, chunk_id, [o for _, o in pairs])
            if old is None:
                return False
            new = out[[rows.index(i) for i, _ in pairs]].cpu().numpy()
            same = same and np.array_equal(old, new)
        _SAME_BITS[(table, threads, self.threads)] = same
        return same

    # -- computing ------------------------------------------------------------------
    def _inputs(self, rows, level, refs_at_level):
        if level == 0:
            pad = self.batch_size - len(rows) if self.tables is not None else 0
            idx = list(rows) + [rows[-1]] * pad
            return make_batch(_subset(self.data, idx), 0, len(idx), self.preprocess).to(
                self.device, non_blocking=True)
        return pad_rows(self._gather([refs_at_level[i] for i in rows]), self.batch_size)

    def _compute(self, rows, level, refs, start_refs=None):
        """Run rows (at most ``batch_size``) from ``level`` to ``depth``; keep them and
        fill ``refs``. Returns the padded output batch."""
        x = self._inputs(rows, level, start_refs)
        out = self.module.forward_features(x, stop=self.depth, start=level)
        self.computed += len(x)
        if self.tables is not None:
            valid = out[:len(rows)]
            chunk = Chunk(valid.clone() if len(rows) < len(out) else valid,
                          [self.keys[i] for i in rows], self.threads)
            if self.keep:
                STORE.add(self._table(self.depth), chunk, self.budget)
            if self.keep and self.disk is not None:
                self.disk.write(self.tables[self.depth - 1], chunk.keys,
                                chunk.rows.cpu().numpy(), self.threads)
            for j, i in enumerate(rows):
                refs[i] = (chunk, j)
        return out

    def _gather(self, refs):
        first = refs[0][0].rows
        out = torch.empty((len(refs), *first.shape[1:]), dtype=first.dtype, device=first.device)
        by_chunk = {}
        for pos, (chunk, offset) in enumerate(refs):
            by_chunk.setdefault(id(chunk), (chunk, [], []))
            by_chunk[id(chunk)][1].append(pos)
            by_chunk[id(chunk)][2].append(offset)
        for chunk, positions, offsets in by_chunk.values():
            out[positions] = chunk.rows[offsets]
        return out

    # -- the pass -------------------------------------------------------------------
    def run(self, finish=None, out_device=None, max_bytes=None):
        """``finish(outputs)`` for every row (``finish=None``: the outputs), on ``out_device``.

        ``finish`` receives batches of exactly ``batch_size`` rows. With
        ``max_bytes``, returns ``None`` (and sets ``needed_bytes``) when the
        outputs of all rows would take more.
        """
        with _on_device(self.module.blocks[:self.depth], self.device):
            return self._run(finish, out_device, max_bytes)

    def _run(self, finish, out_device, max_bytes):
        n = len(self.data)
        refs = [None] * n
        starts = {}  # row -> (level, ref) for rows kept at a shallower depth
        if self.tables is not None:
            self._find(self.depth, range(n), refs, verify=True)
            for level in range(self.depth - 1, 0, -1):
                missing = [i for i in range(n) if refs[i] is None and i not in starts]
                if not missing:
                    break
                partial = [None] * n
                self._find(level, missing, partial, verify=False)
                starts.update({i: (level, partial[i]) for i in missing if partial[i] is not None})
        found = [i for i in range(n) if refs[i] is not None]
        self.reused = len(found)
        self._result = None
        if found and not self._fits(refs[found[0]][0].rows, n, max_bytes):
            return None
        by_level = {}
        for i in range(n):
            if refs[i] is None:
                by_level.setdefault(starts.get(i, (0, None))[0], []).append(i)
        for level, rows in sorted(by_level.items(), reverse=True):
            start_refs = {i: starts[i][1] for i in rows} if level else None
            if self.disk is not None:  # workers of a search: each its own order
                random.Random(os.getpid()).shuffle(rows)
            while rows:
                batch, rows = rows[:self.batch_size], rows[self.batch_size:]
                out = self._compute(batch, level, refs, start_refs)
                if self._result is None and not self._fits(out, n, max_bytes):
                    return None
                self._emit(batch, out, finish, out_device)
                for i in batch:  # emitted: the store (within budget) keeps them, not us
                    refs[i] = None
                if self.disk is not None and rows:  # picked up from other processes
                    self._find(self.depth, rows, refs, verify=False)
                    done = [i for i in rows if refs[i] is not None]
                    found += done
                    self.reused += len(done)
                    rows = [i for i in rows if refs[i] is None]
        for s in range(0, len(found), self.batch_size):
            batch = found[s:s + self.batch_size]
            x = self._gather([refs[i] for i in batch])
            self._emit(batch, pad_rows(x, self.batch_size) if finish else x, finish, out_device)
        if self.disk is not None and self.computed:
            self.disk.prune(self.budget)  # the folder holds at most cache_size MB too
        return self._result

    def _fits(self, rows, n, max_bytes):
        self.needed_bytes = n * rows[0].numel() * rows.element_size()
        return max_bytes is None or self.needed_bytes <= max_bytes

    def _emit(self, rows, out, finish, out_device):
        part = (finish(out) if finish is not None else out)[:len(rows)]
        if self._result is None:
            device = out_device if out_device is not None else part.device
            self._result = torch.empty((len(self.data), *part.shape[1:]), dtype=part.dtype,
                                       device=device)
        self._result[rows] = part.to(self._result.device)


@contextlib.contextmanager
def _on_device(blocks, device):
    """The frozen blocks on ``device`` inside the block, back where they were after."""
    first = next((p for b in blocks for p in b.parameters()), None)
    if first is None or first.device == torch.device(device):
        yield
        return
    before = first.device
    for block in blocks:
        block.to(device)
    try:
        yield
    finally:
        for block in blocks:
            block.to(before)


def training_inputs(module, data, depth, preprocess, device, *, batch_size, cache_size,
                    memory=None, augment=None, verbose=0, amp=None):
    """What the trained part of the network sees: ``(X, first trained block)``.

    With frozen blocks (``depth > 0``) and room in ``cache_size`` MB, their
    outputs on ``data`` (found kept, or computed once: :class:`FrozenPass`)
    and training starts at block ``depth``; when every block is frozen and
    the ``pre_head`` is row-wise (:func:`~sktransfer._blocknet.rowwise_pre_head`:
    pooling, flatten), its outputs, and training starts at ``depth + 1`` (the
    head alone, without pooling every batch again); otherwise the raw input
    (:func:`~sktransfer._inputs.in_memory`), run through the frozen blocks on
    every batch. ``augment`` turns this off (the frozen blocks must see the
    augmented inputs). ``amp``: the autocast dtype of the fit (``None``:
    float32); the outputs are computed under it (and keyed by it) and kept in
    the dtype they come out in, as the trained blocks would receive them
    without the store (bfloat16 halves it).
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
    with torch.no_grad(), autocast(device, amp):
        frozen = FrozenPass(module, depth, data, preprocess, device, batch_size=batch_size,
                            cache_size=cache_size, memory=memory)
        outputs = frozen.run(out_device=device, max_bytes=cache_size * 2**20)
        start = depth
        if (outputs is not None and depth == len(module.blocks)
                and type(module.pre_head) is not torch.nn.Identity and rowwise_pre_head(module)):
            # only the head trains and the pooling before it is the same in training
            # and eval mode, row by row: pool once, not on every batch of every epoch
            outputs = torch.cat([module.pre_head(outputs[i:i + batch_size])
                                 for i in range(0, len(outputs), batch_size)])
            start = depth + 1  # BlockNet.forward_features: x is the pre_head's output
    if outputs is None:
        if verbose:
            print(
                f"Frozen-prefix cache off: the outputs of the {depth} frozen blocks "
                f"need {frozen.needed_bytes / 2**20:.0f} MB > cache_size={cache_size} MB; "
                "the frozen blocks run on every batch instead."
            )
        return raw, 0
    if verbose:
        size = frozen.needed_bytes / 2**20
        reused = (f"{frozen.reused} reused from an earlier fit or prediction, "
                  if frozen.reused else "")
        print(
            f"Frozen-prefix cache on: outputs of the {depth} frozen blocks for {len(data)} "
            f"samples ({size:.1f} MB): {reused}{len(data) - frozen.reused} computed once; "
            + (f"training starts at block {depth}." if start == depth else
               "only the head trains, on them after the pre_head (pooling, run once).")
        )
    return outputs, start


def frozen_then(module, data, depth, preprocess, device, finish, *, batch_size, cache_size,
                memory=None):
    """``finish(outputs of blocks 0..depth-1)`` for every row of ``data`` (float32 on the
    CPU), with kept frozen outputs reused (prediction, transform); ``None`` when they
    are not kept for such input (files, texts, nothing frozen, ``cache_size=0``): then
    the caller runs the network itself.

    The rows computed here are kept only with ``memory`` (the user asked for a
    store): without it a prediction's memory stays bounded by ``batch_size``, not
    by ``len(X)``. Rows go in segments of 16 batches, so that the per-row
    bookkeeping (keys, references) is bounded too.
    """
    if depth == 0 or cache_size == 0 or data.kind in ("files", "text"):
        return None
    tables = table_keys(module.blocks[:depth], data, preprocess, batch_size, device)
    if tables is None:
        return None
    out, step = None, 16 * batch_size
    for start in range(0, len(data), step):
        part = InputData(data.data[start:start + step], data.kind, data.pad_to)
        frozen = FrozenPass(module, depth, part, preprocess, device, batch_size=batch_size,
                            cache_size=cache_size, memory=memory, keep=memory is not None,
                            tables=tables)
        with torch.no_grad():
            result = frozen.run(finish=lambda x: finish(x).to(torch.float32),
                                out_device="cpu")
        if out is None:
            out = torch.empty((len(data), *result.shape[1:]), dtype=torch.float32)
        out[start:start + len(result)] = result
    return out


@contextlib.contextmanager
def starting_at(module, start):
    """Inside the block, ``module`` (a ``BlockNet``) runs from block ``start``: its
    input is the cached output of the frozen blocks before it (``start =
    len(blocks) + 1``: of every block and the ``pre_head``)."""
    module.start_block = start
    try:
        yield module
    finally:
        module.start_block = 0
