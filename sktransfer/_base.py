"""Shared estimator pieces: one fit at a time, devices, seeds, pickling, batched
prediction, and (for the estimators built on a pretrained network) model
resolution and input probing.

``NetEstimatorMixin`` serves every estimator holding a fitted network (the
three transfer estimators and ``TabularPretrainer``); ``TransferEstimatorMixin``
adds what the estimators built on a pretrained ``model`` share. The estimators
that train add ``_trainer.Trainer``.
"""

from __future__ import annotations

import copy
import functools
import numbers
import threading
import warnings

import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ._blocks import check_split_matches
from ._device import DEVICE_CONSTRAINT, autocast, autocast_dtype, resolve_device, seeded_rng
from ._inputs import ImagePreprocess, image_mode, iter_batches, make_batch, pad_rows
from ._weights import MODEL_CONSTRAINTS, resolve_model

# DEVICE_CONSTRAINT and resolve_device live in _device.py; imported from here too
__all__ = ["NetEstimatorMixin", "TransferEstimatorMixin", "DEVICE_CONSTRAINT", "resolve_device",
           "seed_from_random_state", "unchanged_on_error", "one_fit_at_a_time"]

# torch's random generators (and a GPU) are shared by all threads of a process
_FIT_LOCK = threading.RLock()
_warned_threads = False


def one_fit_at_a_time(fit):
    """Decorate ``fit`` so that one process runs one fit at a time, whatever the threads.

    A fit seeds torch's global random generators (initial head, shuffling,
    dropout); two fits in threads of one process (joblib's threading backend, a
    dask worker with several threads) would draw from the same generators, so
    neither would be reproducible, and on a GPU they would fight over its
    memory. A second thread waits for the first fit to end, with a warning (once
    per process) that says how to get parallel fits: processes.
    """
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        global _warned_threads
        if not _FIT_LOCK.acquire(blocking=False):
            if not _warned_threads:
                _warned_threads = True
                warnings.warn(
                    f"{type(self).__name__}.fit waits for another fit running in this process "
                    f"(thread {threading.current_thread().name!r}): sktransfer runs one fit at "
                    "a time per process, because torch's random generators (and a GPU) are "
                    "shared by all threads, so concurrent fits would not be reproducible. For "
                    "parallel fits use processes: joblib's default loky backend, or dask "
                    "workers with one thread each (dask worker --nworkers N --nthreads 1; "
                    "LocalCluster(threads_per_worker=1)).",
                    UserWarning, stacklevel=3,
                )
            _FIT_LOCK.acquire()
        try:
            return fit(self, *args, **kwargs)
        finally:
            _FIT_LOCK.release()

    return wrapper


def unchanged_on_error(fit):
    """Decorate ``fit`` so that a call that raises leaves the estimator as it was.

    Validation sets some attributes (``n_features_in_``, ``classes_``, ...) before
    a later step can fail (one class in ``y``, a bad ``freeze_depth``, a model
    that cannot process ``X``); without this, a fitted estimator would be left
    half-updated and predict wrongly. Attributes are replaced, never mutated in
    place, during ``fit``, so restoring the attribute dict is enough.
    """
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    return wrapper


def seed_from_random_state(random_state):
    """A torch seed (int) drawn from a scikit-learn ``random_state``."""
    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    return int(rng.randint(0, 2**31 - 1))


def _runs(model, sample):
    """Whether ``model`` (in eval mode, without autograd) accepts ``sample``."""
    if model is None:
        return False
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    except Exception:  # noqa: BLE001 - only the yes/no answer matters here
        return False
    finally:
        model.train(was_training)
    return True


class NetEstimatorMixin:
    """Every estimator that holds a fitted torch network: pickles hold it on the CPU,
    and prediction runs batch by batch.

    Subclasses have a ``batch_size`` parameter and set ``device_`` in ``fit``.
    """

    #: fitted attributes that hold a network (moved to the CPU in a pickle)
    _fitted_modules = ("module_",)

    def __getstate__(self):
        # pickles hold the network on the CPU, so they load on machines without CUDA
        # a copy: on Python >= 3.11 the base returns the live __dict__ itself
        state = dict(super().__getstate__())
        if getattr(self, "device_", "cpu") == "cpu":
            return state
        for name in self._fitted_modules:
            if state.get(name) is not None:
                state[name] = copy.deepcopy(state[name]).to("cpu")
                state["device_"] = "cpu"
        return state

    def _map_batches(self, data, fn, preprocess=None, pad=False):
        """``fn`` over ``data`` batch by batch (eval, inference mode) into one array.

        The output (float32, on the CPU) is allocated once from the first batch
        and filled in place: memory stays bounded by ``batch_size`` plus the
        result, and no list of per-batch pieces fragments the heap. ``pad``: a
        short last batch is padded to ``batch_size`` rows, so that a row's output
        does not depend on the rows predicted with it (the fine-tuners'
        predictions; BLAS rounds differently for other shapes). ``fn`` runs
        under autocast in the estimator's ``precision`` where this device has it
        (float32 elsewhere, e.g. a GPU fit unpickled on a CPU).

        On a GPU each batch's result comes back through pinned memory without
        blocking, and is written out one batch later: the host prepares the next
        batch while the GPU computes this one (a blocking copy per batch would
        wait for the GPU every time, and the GPU for the host).
        """
        device = self.device_
        dtype = autocast_dtype(getattr(self, "precision", "32"), device, strict=False)
        overlap = torch.device(device).type == "cuda"
        out, start, pending = None, 0, None
        with torch.inference_mode(), autocast(device, dtype):
            for batch in iter_batches(data, self.batch_size, preprocess, device):
                if pad and isinstance(batch, torch.Tensor):
                    part = fn(pad_rows(batch, self.batch_size))[:len(batch)]
                else:
                    part = fn(batch)
                if out is None:
                    out = torch.empty((len(data), *part.shape[1:]), dtype=torch.float32)
                if not (overlap and part.is_cuda):
                    out[start:start + len(part)] = part.to("cpu", torch.float32)
                else:
                    host = torch.empty(part.shape, dtype=torch.float32, pin_memory=True)
                    host.copy_(part.float(), non_blocking=True)
                    # the stream that runs the copy, on the estimator's GPU
                    done = torch.cuda.current_stream(part.device).record_event()
                    if pending is not None:
                        _write(out, *pending)
                    pending = (host, done, start)
                start += len(part)
            if pending is not None:
                _write(out, *pending)
        return out


def _write(out, host, done, start):
    """Wait for a batch's copy to the host (``done``), then write it into ``out``."""
    done.synchronize()
    out[start:start + len(host)] = host


class TransferEstimatorMixin(NetEstimatorMixin):
    """The estimators built on a pretrained ``model``: clones share it, ``fit``
    resolves a private copy, picks the image preprocessing and probes the net.

    Subclasses have ``model``, ``weights``, ``preprocess``, ``batch_size``,
    ``device`` and ``random_state`` parameters, constrained here once.
    """

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        "preprocess": [StrOptions({"auto"}), callable, None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "random_state": ["random_state"],
    }

    def __sklearn_clone__(self):
        # The pretrained module is read-only for sktransfer (every fit works on a
        # private copy), so clones share it instead of deep-copying its weights.
        # A fitted sktransfer estimator used as the source model is shared too:
        # sklearn's clone would otherwise return it unfitted.
        model = self.model
        if isinstance(model, nn.Module) or (
            hasattr(model, "__sktransfer_model__") and not isinstance(model, type)
        ):
            params = {
                k: clone(v, safe=False)
                for k, v in self.get_params(deep=False).items()
                if k != "model"
            }
            return type(self)(model=model, **params)
        return BaseEstimator.__sklearn_clone__(self)

    def _resolve_pretrained(self, seed):
        """A private copy of the pretrained net, split into blocks.

        A factory (class or callable) is called under ``seed``, so that networks
        it initialises at random are the same for the same ``random_state``.
        """
        with seeded_rng(seed):
            return resolve_model(self.model, self.weights)

    def _preprocess_fn(self, resolved):
        """The per-image (or uint8 batch) transform: image files and PIL images
        first become the network's mode (``image_mode``), then ``preprocess``."""
        preprocess = self.preprocess
        if isinstance(preprocess, str):  # "auto", the only string the constraints allow
            preprocess = resolved.preprocess
        return ImagePreprocess(preprocess, image_mode(resolved.net))

    def _probe(self, resolved, data, preprocess, seed, frozen=None):
        """Run two samples through the net: materialise lazy layers, check the split.

        ``frozen``, when given, is called first (its errors are explained like the
        net's own): it returns ``(outputs of the frozen blocks for the first rows,
        number of frozen blocks)`` or ``None``; the two samples then start from
        those outputs instead of running through the frozen blocks again.
        Returns the head-input features of the probe batch.
        """
        net = resolved.net
        sample = make_batch(data, 0, min(2, len(data)), preprocess)
        with seeded_rng(seed):
            was_training = net.training
            net.eval()
            try:
                with torch.no_grad():
                    kept = frozen() if frozen is not None else None
                    features = (net.forward_features(sample) if kept is None
                                else net.forward_features(kept[0][:2], start=kept[1]))
            except Exception as exc:  # noqa: BLE001 - re-raised with context below
                # the children in order fail, the model itself runs: the split is wrong
                if net.split_kind == "default" and _runs(resolved.original, sample):
                    check_split_matches(net, resolved.original, sample)
                got = tuple(int(d) for d in sample.shape[1:])
                expected = resolved.input_shape
                hint = (f" The model takes samples of shape {tuple(expected)}; X gives {got}."
                        if expected is not None and tuple(expected) != got else "")
                raise ValueError(
                    f"The pretrained model ({resolved.description}) cannot process X: a batch "
                    f"of shape {tuple(sample.shape)} fails with {type(exc).__name__}: {exc}."
                    f"{hint} Check that X has the layout the model expects (number of "
                    "features, (n, C, H, W) float or (n, H, W, C) uint8 images)."
                ) from exc
            finally:
                net.train(was_training)
        check_split_matches(net, resolved.original, sample)
        if not isinstance(features, torch.Tensor):
            raise ValueError(
                f"The pretrained model ({resolved.description}) returns a "
                f"{type(features).__name__}, not a tensor, before its head; sktransfer needs "
                "one tensor per block. Wrap the block that returns several values so that it "
                "returns one, or name the blocks with sktransfer.split_model(net, blocks=[...])."
            )
        if not bool(torch.isfinite(features).all()):
            low, high = float(sample.min()), float(sample.max())
            raise ValueError(
                f"The pretrained model ({resolved.description}) gives NaN or infinite "
                f"features for the first samples of X (values of X between {low:.3g} and "
                f"{high:.3g}). Check the model's weights (are they finite?) and scale X to "
                "the range the model was trained on (e.g. StandardScaler)."
            )
        # what the network itself takes (after preprocessing), for chaining and list_blocks
        resolved.input_shape = tuple(int(d) for d in sample.shape[1:])
        return features
