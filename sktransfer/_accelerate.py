"""Many devices for one fit: skorch's ``AccelerateMixin`` over Hugging Face ``accelerate``.

An estimator's ``accelerator`` parameter (``None``, an ``accelerate.Accelerator``
or a dict of its keyword arguments) switches its private skorch net to a
subclass with ``AccelerateMixin``: the accelerator places the network and the
batches, wraps the network for distributed data parallel training when the
script runs under ``accelerate launch`` (or ``torchrun``) with several
processes, and applies mixed precision. Nothing changes for the rest of the
estimator: the fitted network is unwrapped again, on the accelerator's device.
"""

from __future__ import annotations

import functools

import torch
from skorch.callbacks import Callback

from ._base import resolve_device

__all__ = ["resolve_accelerator", "net_class", "accelerated", "unwrap_module",
           "SyncEpochLosses", "check_single_process_only", "compute_device", "silent"]


def _accelerator_cls():
    try:
        from accelerate import Accelerator
    except ImportError as exc:
        raise ImportError(
            "accelerator=... needs Hugging Face accelerate, which is not installed. "
            "Install it with: pip install 'sktransfer[accelerate]' (or pip install "
            "accelerate), or leave accelerator=None."
        ) from exc
    return Accelerator


def resolve_accelerator(accelerator, device):
    """``(accelerator or None, device string)`` for one fit.

    ``accelerator`` is ``None`` (plain skorch on ``device``), an
    ``accelerate.Accelerator``, or a dict of ``Accelerator`` keyword arguments
    (built here, at fit time, so that the estimator stays cheap to clone and
    pickle). With an accelerator, ``device`` must be ``"auto"`` or the
    accelerator's own device: the accelerator places the network.
    """
    if accelerator is None:
        return None, resolve_device(device)
    if isinstance(accelerator, dict):
        Accelerator = _accelerator_cls()
        try:
            accelerator = Accelerator(**accelerator)
        except TypeError as exc:
            raise TypeError(
                f"accelerator={accelerator!r} is not a valid set of keyword arguments for "
                f"accelerate.Accelerator ({exc}); e.g. accelerator={{'mixed_precision': "
                "'bf16'}, or pass an Accelerator instance."
            ) from exc
        except ValueError as exc:
            raise ValueError(
                f"accelerate.Accelerator(**{accelerator!r}) failed: {exc}"
            ) from exc
    else:
        Accelerator = _accelerator_cls()
        # the estimators' constraints can only ask for an object with prepare() and
        # backward(): the class itself needs accelerate, an optional dependency
        if not isinstance(accelerator, Accelerator):
            raise TypeError(
                "accelerator must be None, an accelerate.Accelerator or a dict of its "
                f"keyword arguments, got {type(accelerator).__name__} {accelerator!r}."
            )
    if not accelerator.device_placement:
        raise ValueError(
            "accelerator has device_placement=False, but sktransfer lets the accelerator "
            "place the network and the batches; create it with "
            "Accelerator(device_placement=True) (the default)."
        )
    acc_device = accelerator.device
    if device != "auto":
        wanted = torch.device(resolve_device(device))
        if wanted.type == "cuda" and wanted.index is None and acc_device.type == "cuda":
            wanted = acc_device  # "cuda": whichever GPU the accelerator was given
        if wanted != acc_device:
            raise ValueError(
                f"device={device!r} but the accelerator runs on {str(acc_device)!r}; with "
                "an accelerator leave device='auto' (it places the network), or create "
                "the accelerator for that device (e.g. Accelerator(cpu=True))."
            )
    return accelerator, str(acc_device)


def check_single_process_only(accelerator, **params):
    """Options that cannot run under distributed data parallel: clear errors."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    for name, value in params.items():
        if value is not None:
            raise ValueError(
                f"{name}={value!r} cannot be used with {accelerator.num_processes} "
                "processes: distributed data parallel registers the trainable parameters "
                "once, when training starts, so blocks unfrozen later would not be "
                f"synchronised between processes. Set {name}=None, or fit in one process."
            )


_PREPARED = ("_models", "_optimizers", "_schedulers", "_dataloaders")


class _AcceleratedFixes:
    """Fixes to skorch's ``AccelerateMixin`` (the first two show with several processes).

    * It prepares every criterion that is an ``nn.Module``; on several CPU
      processes accelerate then wraps a parameter-free loss in distributed data
      parallel, which refuses it. Only criteria with trainable parameters are
      prepared here.
    * It unwraps the network in the net's own ``on_train_end``, which runs
      before the callbacks' ``on_train_end``: early stopping's ``load_best``
      then loads the wrapped network's weights (keys ``module.*``) into the
      unwrapped one and fails. Here the unwrapping waits until the callbacks
      are done.
    * The accelerator keeps references to all it prepared; each fit's are
      dropped when the fit ends.

    (And the fine-tuning penalty goes through autograd, see ``TransferNet``.)
    """

    # accelerate's backward rescales the loss: the penalty must be in its graph
    _penalty_by_autograd = True

    def fit(self, X, y=None, **fit_params):
        # the accelerator keeps a reference to everything it prepared (network,
        # optimizer, a data loader per epoch); forget this fit's, so that a user's
        # accelerator neither holds every fit's data nor stops pickling
        accelerator = self.accelerator
        kept = {name: {id(obj) for obj in getattr(accelerator, name, ())}
                for name in _PREPARED}
        try:
            return super().fit(X, y, **fit_params)
        finally:
            for name, ids in kept.items():
                if hasattr(accelerator, name):
                    setattr(accelerator, name,
                            [obj for obj in getattr(accelerator, name) if id(obj) in ids])

    def on_train_end(self, net, X=None, y=None, **kwargs):
        unwrap, self.unwrap_after_train = self.unwrap_after_train, False
        try:
            return super().on_train_end(net, X=X, y=y, **kwargs)
        finally:
            self.unwrap_after_train = unwrap

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        try:
            return super().partial_fit(X, y, classes=classes, **fit_params)
        finally:
            if self.unwrap_after_train:
                self._unwrap_accelerator()

    def _initialize_accelerator(self):
        criteria = self._criteria
        self._criteria = [
            name for name in criteria
            if any(p.requires_grad for p in getattr(getattr(self, name + "_"), "parameters",
                                                    lambda: ())())
        ]
        try:
            return super()._initialize_accelerator()
        finally:
            self._criteria = criteria


def net_class(net_cls, accelerator, verbose):
    """The net class for one fit and the keyword arguments an accelerator adds."""
    if accelerator is None:
        return net_cls, {}
    kwargs = {"device": None, "accelerator": accelerator}
    if not verbose:
        kwargs["callbacks__print_log__sink"] = silent
    return accelerated(net_cls), kwargs


@functools.cache
def accelerated(net_cls):
    """``net_cls`` with skorch's ``AccelerateMixin`` in front (one class per net class)."""
    from skorch.hf import AccelerateMixin

    return type(f"Accelerated{net_cls.__name__}",
                (_AcceleratedFixes, AccelerateMixin, net_cls),
                {"__module__": net_cls.__module__,
                 "__doc__": f"{net_cls.__name__} trained through Hugging Face accelerate."})


def silent(text):
    """A print-log sink that prints nothing (``verbose=0`` under accelerate, whose
    own sink would print regardless of ``verbose``)."""


def unwrap_module(module):
    """The network itself, out of distributed data parallel or ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel,
                               torch.nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def compute_device(net):
    """Where the net's tensors live: the accelerator's device, else ``net.device``."""
    accelerator = getattr(net, "accelerator", None)
    return accelerator.device if accelerator is not None else net.device


class SyncEpochLosses(Callback):
    """Average the epoch losses over processes, so every process decides alike.

    Under distributed data parallel each process sees its shard of the batches,
    so its epoch-level ``train_loss`` and ``valid_loss`` differ; early stopping
    and the finite-loss check would then stop processes at different epochs and
    hang the others. This callback, placed before them, replaces each loss in
    the last history row by its mean over processes (a no-op in one process).
    """

    def __init__(self, keys=("train_loss", "valid_loss", "train_data_loss")):
        self.keys = keys

    def on_epoch_end(self, net, **kwargs):
        accelerator = getattr(net, "accelerator", None)
        if accelerator is None or accelerator.num_processes == 1:
            return
        row = net.history[-1]
        keys = [k for k in self.keys if k in row]
        values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64,
                              device=accelerator.device)
        mean = accelerator.reduce(values, reduction="mean")
        for key, value in zip(keys, mean.tolist()):
            net.history.record(key, value)
