"""The one private base of every estimator that trains: it builds and runs the skorch net.

``FineTunedClassifier``/``FineTunedRegressor`` (``_finetune.py``) and
``TabularPretrainer`` (``_pretrain.py``) train a network in a private skorch
``NeuralNet``. What they share lives here, once: the validation split for
early stopping, the callbacks (loss averaging across processes, the
finite-loss check, early stopping, a progress bar), the net built from the
estimator's parameters and ``net_kwargs`` (which are checked), the seeded fit
and the history it leaves. Pickling with the network on the CPU and batched
prediction come from ``NetEstimatorMixin`` (``_base.py``), which the frozen
feature extractor shares.

A subclass says what differs through small stages, each overridable alone:

* ``_net_class``: the skorch net (``TransferNet``, ``_PretrainNet``);
* ``_criterion()``: the loss class, or ``None`` when the net computes its loss;
* ``_optimizer()``: the optimizer class and its keyword arguments;
* ``_n_epochs(n_train, auto_steps)``: the number of epochs of this fit
  (``auto_steps``: the steps ``max_epochs="auto"`` aims at, ``_make_net``'s);
* ``_scoring_callbacks()``: extra history columns (averaged across processes);
* ``_schedule_callbacks(epochs, steps_per_epoch)``: learning-rate schedules;
* ``_skorch_kwargs(dataset)``: any other skorch argument of this fit;
* ``_divergence_advice()``: what the finite-loss error suggests besides a smaller lr.

A new parameter that only changes the net passes through ``_make_net(...,
**net_params)``; a new training stage is a method of the net (``_net.py``).
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np
import torch
from skorch import NeuralNet
from sklearn.utils._param_validation import HasMethods, Interval
from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from torch import nn

from ._accelerate import SyncEpochLosses, net_class, unwrap_module
from ._base import NetEstimatorMixin
from ._device import (DEVICE_CONSTRAINT, PRECISION_CONSTRAINT, check_precision, pinned,
                      seeded_rng)
from ._net import BatchLoader, identity_collate

__all__ = ["Trainer", "FiniteLossCheck", "holdout_split", "fit_seeded", "finish_fit",
           "check_net_kwargs", "lr_scheduler", "OPTIMIZERS", "optimizer_class",
           "AUTO_SMOOTHING", "label_smoothing"]

#: the optimizers a string ``optimizer`` names
OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def optimizer_class(opt):
    """The optimizer class that ``opt`` (a name in ``OPTIMIZERS`` or a class) means."""
    cls = OPTIMIZERS[opt] if isinstance(opt, str) else opt
    # the constraints say "a class"; a subclass of Optimizer, they cannot say
    if not issubclass(cls, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be one of {sorted(OPTIMIZERS)} or a torch.optim.Optimizer "
            f"subclass (e.g. torch.optim.RMSprop), got {opt!r}."
        )
    return cls


#: ``max_epochs="auto"``: about this many optimisation steps ...
AUTO_STEPS = 500
#: ... and at least this many passes over the data
AUTO_MIN_EPOCHS = 10


def epoch_steps(n_train, batch_size):
    """``(optimisation steps per epoch, drop_last)`` of the training loader: a last
    batch of one sample is dropped (it breaks BatchNorm in training mode and has
    no negatives for a contrastive loss)."""
    drop_last = n_train % batch_size == 1 and n_train > 1
    return (n_train // batch_size if drop_last else -(-n_train // batch_size)), drop_last


def auto_epochs(n_train, batch_size, steps=AUTO_STEPS):
    """The epochs of ``max_epochs="auto"``: ``max(10, ceil(steps / steps per epoch))``.

    A fixed number of epochs gives a 25-sample fit a hundred steps and a
    6,000-sample one tens of thousands. "auto" aims at a number of steps
    instead (``steps``: ``_make_net``'s ``auto_steps``, by default
    ``AUTO_STEPS``, 500: what fine-tuning needed on the few-label tasks of
    ``benchmarks/bench_quality.py``), with at least 10 passes over a large
    training set. Steps per epoch as the training loader makes them
    (:func:`epoch_steps`).
    """
    per_epoch = max(1, epoch_steps(n_train, batch_size)[0])
    return max(AUTO_MIN_EPOCHS, -(-steps // per_epoch))


#: ``label_smoothing="auto"`` where a pretrained block trains
AUTO_SMOOTHING = 0.1


def label_smoothing(value, trains_blocks, net_kwargs):
    """``(smoothing used, skorch arguments)`` of a classifier's cross-entropy.

    ``value="auto"``: ``AUTO_SMOOTHING`` (0.1, Szegedy et al., CVPR 2016; the
    rate of timm's and DeiT's fine-tuning recipes) when ``trains_blocks``,
    0 otherwise: a head alone on frozen blocks starts as the probe, the
    optimum of the unsmoothed regularised loss, and smoothing only moves it
    away (-1.2 points on ``bench_quality.py``'s pretrain-5). Where fine-tuning
    trained blocks, it gained 0.1 to 2.6 points on every image task (5 draws,
    lr 1e-2 with warm-up; see the user guide). torch's
    ``CrossEntropyLoss(label_smoothing=...)`` does the work. A criterion that
    ``net_kwargs`` sets or configures (``criterion__label_smoothing``) wins.
    """
    kwargs = net_kwargs or {}
    if "criterion" in kwargs or "criterion__label_smoothing" in kwargs:
        if not (value == "auto" or value == 0):
            raise ValueError(
                f"label_smoothing={value!r} and net_kwargs' criterion both set the loss; "
                "set label_smoothing alone (or leave it 'auto' with your own criterion)."
            )
        return float(kwargs.get("criterion__label_smoothing", 0.0)), {}
    if value == "auto":
        value = AUTO_SMOOTHING if trains_blocks else 0.0
    return float(value), ({"criterion__label_smoothing": float(value)} if value else {})


def holdout_split(n, validation_fraction, seed, stratify=None, unit="samples"):
    """Train/validation indices for early stopping (sorted), seeded by ``seed``."""
    from sklearn.model_selection import train_test_split

    try:
        train_idx, valid_idx = train_test_split(
            np.arange(n), test_size=validation_fraction, random_state=seed, stratify=stratify,
        )
    except ValueError as exc:
        raise ValueError(
            f"early_stopping=True cannot hold out validation_fraction={validation_fraction} "
            f"of {n} {unit} ({exc}). Increase validation_fraction, pass more {unit}, or set "
            "early_stopping=False."
        ) from exc
    return np.sort(train_idx), np.sort(valid_idx)


class _Augmented(torch.utils.data.Subset):
    """Training samples whose input batches go through ``augment``."""

    def __init__(self, dataset, indices, augment):
        super().__init__(dataset, indices)
        self.augment = augment

    def __getitems__(self, indices):
        Xb, yb = super().__getitems__(indices)
        return self.augment(Xb), yb


def fit_seeded(net, dataset, train_idx, seed, device, augment=None):
    """``net.fit`` on ``dataset[train_idx]`` with torch's RNG seeded, then restored.

    ``augment`` (a callable on input batches) applies to these training samples
    only; the validation split is a separate subset.
    """
    dev = torch.device(device)
    # "cuda" without an index is the current GPU (e.g. the one a worker was pinned to)
    devices = ([torch.cuda.current_device() if dev.index is None else dev.index]
               if dev.type == "cuda" else [])
    train = (torch.utils.data.Subset(dataset, train_idx) if augment is None
             else _Augmented(dataset, train_idx, augment))
    with seeded_rng(seed, devices):
        net.fit(train, None)


def finish_fit(net, module, start_state):
    """After ``net.fit``: warn about an interruption, free gradients, eval mode.

    Returns ``history_`` rows: one plain dict per epoch (skorch's per-batch
    records left out, their number of training steps as ``steps``,
    numpy floats as Python floats).
    """
    if net.interrupted_epoch_ is not None:
        done = net.interrupted_epoch_ - 1
        warnings.warn(
            f"fit was interrupted (KeyboardInterrupt) during epoch {net.interrupted_epoch_}; "
            "the model keeps the weights of "
            + (f"epoch {done}, the last completed one." if done else
               f"the start of training ({start_state}): no epoch was completed."),
            UserWarning, stacklevel=3,
        )
    module.eval()
    for p in module.parameters():
        p.grad = None
    return [
        {**{k: (float(v) if isinstance(v, np.floating) else v)
            for k, v in row.items() if k != "batches"},
         # optimisation steps of the epoch (max_epochs="auto" budgets steps)
         "steps": sum("train_batch_size" in b for b in row.get("batches", ()))}
        for row in net.history
    ]


# skorch options that an estimator parameter sets under another name
_PARAMETER_OF = {"optimizer__lr": "lr", "optimizer__weight_decay": "weight_decay",
                 "optimizer__momentum": "momentum", "module": "model"}


def _accepts(cls, name):
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_net_kwargs(estimator, managed, optimizer, criterion):
    """Refuse ``net_kwargs`` entries that would silently override a parameter or
    sktransfer's own settings, or that no part of the net accepts (a typo).

    ``managed`` is the dict of skorch arguments the estimator sets itself.
    ``callbacks`` add to sktransfer's own; the criterion may be replaced
    (``"criterion"``) and configured (``criterion__*``) unless ``criterion`` is
    ``None`` (the net computes its loss itself).
    """
    owner = type(estimator).__name__
    params = estimator.get_params(deep=False)
    net_params = inspect.signature(NeuralNet.__init__).parameters
    net_kwargs = estimator.net_kwargs or {}
    targets = {"iterator_train": torch.utils.data.DataLoader,
               "iterator_valid": torch.utils.data.DataLoader,
               "optimizer": optimizer}
    if criterion is not None:
        targets["criterion"] = net_kwargs.get("criterion", criterion)
    for key in net_kwargs:
        param = key if key in params else _PARAMETER_OF.get(key)
        if param is not None:
            raise ValueError(
                f"net_kwargs sets {key!r}, which {owner} controls through its parameter "
                f"{param!r}: pass {param}=... to {owner} instead, and remove {key!r} from "
                "net_kwargs."
            )
        prefix, _, name = key.partition("__")
        if prefix == "module":
            raise ValueError(
                f"net_kwargs sets {key!r}: skorch would rebuild the network from its class "
                "and drop the pretrained weights. Configure the network before passing it "
                f"as model=, and remove {key!r} from net_kwargs."
            )
        free = prefix == "callbacks" or (prefix == "criterion" and criterion is not None)
        if not free and key in managed:
            raise ValueError(
                f"net_kwargs sets {key!r}, which {owner} sets itself for sktransfer to "
                "work; it cannot be changed through net_kwargs."
            )
        if name and prefix in targets and not _accepts(targets[prefix], name.split("__")[0]):
            raise ValueError(
                f"net_kwargs has {key!r}, but {getattr(targets[prefix], '__name__', prefix)} "
                f"takes no argument {name!r}: check the spelling."
            )
        if not name and key not in net_params:
            raise ValueError(
                f"net_kwargs has {key!r}, which is not an argument of skorch's NeuralNet: "
                "check the spelling. Nested options take a prefix, e.g. "
                "'iterator_train__num_workers', 'optimizer__betas', "
                "'criterion__label_smoothing'."
            )


class FiniteLossCheck(Callback):
    """Stop with a clear error when the training loss becomes NaN or infinite.

    Parameters
    ----------
    loss_name : str, default="training loss"
        How the message names the loss.
    advice : str, default="."
        What to try besides a smaller ``lr``, appended to "Use a smaller lr".
    """

    def __init__(self, loss_name="training loss", advice="."):
        self.loss_name = loss_name
        self.advice = advice

    def on_epoch_end(self, net, **kwargs):
        loss = net.history[-1].get("train_loss")
        if loss is not None and not math.isfinite(loss):
            epoch = net.history[-1, "epoch"]
            raise FloatingPointError(
                f"The {self.loss_name} became {loss} at epoch {epoch}: the fit diverged. "
                f"Use a smaller lr (now {net.lr:g}){self.advice}"
            )


def _warmup_cosine(optimizer, warmup, epochs, last_epoch=-1):
    """torch's ``LinearLR`` warm-up over ``warmup`` epochs, then ``CosineAnnealingLR`` to 0.

    Each group's rate is ``(e + 1) / (warmup + 1)`` of its own in epoch ``e <
    warmup``, then anneals from the full rate to 0 at the end of ``epochs``.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    if not warmup:
        return CosineAnnealingLR(optimizer, T_max=epochs, last_epoch=last_epoch)
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup),
         CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))],
        milestones=[warmup], last_epoch=last_epoch,
    )


def _one_cycle(optimizer, total_steps, last_epoch=-1):
    """torch's ``OneCycleLR`` (Smith 2018) with each group's own rate as its peak:
    up from 1/25 of it over the first 30% of the steps, then down to 1e-4 of it.
    The optimizer's momentum is left alone."""
    from torch.optim.lr_scheduler import OneCycleLR

    return OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total_steps, pct_start=0.3, div_factor=25, final_div_factor=1e4 / 25,
        cycle_momentum=False, last_epoch=last_epoch,
    )


def lr_scheduler(schedule, epochs, steps_per_epoch):
    """A skorch ``LRScheduler`` running torch's scheduler for ``schedule`` over this fit.

    ``"cosine"`` and ``"warmup_cosine"`` step once per epoch (the warm-up spans
    10% of ``epochs``, at least one); ``"onecycle"`` steps once per batch.
    """
    from skorch.callbacks import LRScheduler

    if schedule == "onecycle":
        return LRScheduler(policy=_one_cycle, total_steps=max(1, epochs * steps_per_epoch),
                           step_every="batch", event_name=None)
    warmup = max(1, round(0.1 * epochs)) if schedule == "warmup_cosine" else 0
    return LRScheduler(policy=_warmup_cosine, warmup=warmup, epochs=epochs,
                       step_every="epoch", event_name=None)


class Trainer(NetEstimatorMixin):
    """Private base of the estimators that train a skorch net (see the module docstring).

    Subclasses have the parameters ``lr``, ``max_epochs``, ``batch_size``,
    ``weight_decay``, ``early_stopping``, ``validation_fraction``,
    ``n_iter_no_change``, ``tol``, ``device``, ``precision``, ``verbose`` and
    ``net_kwargs``.
    """

    #: the training parameters every subclass has, constrained once
    _parameter_constraints = {
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "device": DEVICE_CONSTRAINT,
        "precision": PRECISION_CONSTRAINT,
        # an accelerate.Accelerator, or a dict of its keyword arguments; that it is
        # an Accelerator is checked in fit (accelerate is an optional dependency)
        "accelerator": [None, dict, HasMethods(["prepare", "backward"])],
        "verbose": ["verbose"],
        "net_kwargs": [dict, None],
    }
    #: the skorch ``NeuralNet`` subclass trained by ``fit``
    _net_class = None
    #: how the finite-loss error names the loss
    _loss_name = "training loss"

    # -- stages a subclass overrides -----------------------------------------------
    def _criterion(self):
        """The skorch criterion class, or ``None`` when the net computes its loss itself."""
        return None

    def _optimizer(self):
        """``(optimizer class, keyword arguments)``: AdamW with ``weight_decay``."""
        return torch.optim.AdamW, {"weight_decay": self.weight_decay}

    def _lr(self):
        """The learning rate of this fit (``lr`` as set)."""
        return self.lr

    def _n_epochs(self, n_train, auto_steps=AUTO_STEPS):
        """The number of epochs of this fit (at most: early stopping may end it sooner)."""
        if self.max_epochs == "auto":
            return auto_epochs(n_train, self.batch_size, auto_steps)
        return self.max_epochs

    def _patience(self, epochs):
        """Early stopping's patience, in epochs, for a fit of ``epochs`` epochs: with
        ``max_epochs="auto"`` an epoch of a small training set is a step or two, so
        the patience covers at least a tenth of the budget."""
        if self.max_epochs == "auto":
            return max(self.n_iter_no_change, epochs // 10)
        return self.n_iter_no_change

    def _scoring_callbacks(self):
        """``(name, callback)`` pairs recording extra history columns under ``name``."""
        return []

    def _schedule_callbacks(self, epochs, steps_per_epoch):
        """``(name, callback)`` pairs scheduling the learning rate."""
        return []

    def _skorch_kwargs(self, dataset):
        """Other skorch arguments of this fit (they count as set by sktransfer)."""
        return {}

    def _divergence_advice(self):
        """What the finite-loss error suggests besides a smaller ``lr``."""
        return "."

    # -- shared --------------------------------------------------------------------
    def _validation_split(self, n, stratify=None, seed=0, unit="samples"):
        """``(train indices, validation indices or None)`` for early stopping."""
        if not self.early_stopping:
            return np.arange(n), None
        return holdout_split(n, self.validation_fraction, seed, stratify=stratify, unit=unit)

    def _callbacks(self, epochs, steps_per_epoch):
        scoring = self._scoring_callbacks()
        # several processes (accelerate): every process sees the mean losses before
        # the finite-loss check and early stopping decide
        keys = ("train_loss", "valid_loss", *(name for name, _ in scoring))
        callbacks = [
            *scoring,
            ("sync_losses", SyncEpochLosses(keys)),
            ("finite_loss", FiniteLossCheck(self._loss_name, self._divergence_advice())),
        ]
        if self.early_stopping:
            callbacks.append(("early_stopping", EarlyStopping(
                monitor="valid_loss", patience=self._patience(epochs), threshold=self.tol,
                threshold_mode="rel", load_best=True, sink=print,  # prints only if verbose
            )))
        callbacks += self._schedule_callbacks(epochs, steps_per_epoch)
        if self.verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        return callbacks

    def _make_net(self, module, dataset, train_idx, valid_idx, device, accelerator=None,
                  auto_steps=AUTO_STEPS, **net_params):
        """The private skorch net of this fit; ``dataset`` holds all samples.

        ``auto_steps``: the optimisation steps of ``max_epochs="auto"`` in this fit.
        ``net_params`` go to the net class (``freeze_depth``, ``penalty``, ...).
        With an ``accelerator`` the net class gets skorch's ``AccelerateMixin``
        and the accelerator, not skorch, places the network.
        """
        check_precision(self.precision, device, accelerator)  # the net trains in it
        n_train = len(train_idx)
        steps, drop_last = epoch_steps(n_train, self.batch_size)
        epochs = self._n_epochs(n_train, auto_steps)
        train_split = None
        if valid_idx is not None:
            from skorch.helper import predefined_split

            train_split = predefined_split(torch.utils.data.Subset(dataset, valid_idx))
        criterion = self._criterion()
        opt_cls, opt_kwargs = self._optimizer()
        kwargs = {
            # nn.Identity when the net computes its loss itself (then not replaceable)
            "criterion": nn.Identity if criterion is None else criterion,
            "optimizer": opt_cls,
            "lr": self._lr(),
            "max_epochs": epochs,
            "batch_size": self.batch_size,
            "train_split": train_split,
            "callbacks": self._callbacks(epochs, steps),
            "iterator_train__shuffle": True,
            "iterator_train__drop_last": drop_last,
            "iterator_train__collate_fn": identity_collate,
            "iterator_valid__collate_fn": identity_collate,
            "device": device,
            # autocast (and a gradient scaler for float16): _device.MixedPrecision
            "precision": self.precision,
            "verbose": int(self.verbose),
            **{f"optimizer__{k}": v for k, v in opt_kwargs.items()},
            **self._skorch_kwargs(dataset),
        }
        if not self.verbose and accelerator is None:
            # skorch's epoch table is formatted even when not printed (AccelerateMixin
            # sets the table's sink, so it keeps the table)
            kwargs["callbacks__print_log"] = None
        check_net_kwargs(self, kwargs, opt_cls, criterion)
        if accelerator is None and pinned(device, dataset.X):
            # batches bound for a GPU come from pinned memory (the training step
            # copies them without blocking); net_kwargs may say otherwise
            kwargs["iterator_train__pin_memory"] = kwargs["iterator_valid__pin_memory"] = True
        extra = dict(self.net_kwargs or {})
        if (accelerator is None and "iterator_train__pin_memory" not in kwargs
                and not any(k.startswith("iterator_train") for k in extra)):
            # in one process, batches cut from the dataset without DataLoader's
            # per-batch machinery (accelerate shards a DataLoader; net_kwargs may
            # configure one)
            kwargs["iterator_train"] = BatchLoader
        # the user's callbacks come on top of ours (loss check, early stopping, ...)
        kwargs["callbacks"] = kwargs["callbacks"] + list(extra.pop("callbacks", None) or [])
        net_cls, accelerate_kwargs = net_class(self._net_class, accelerator, self.verbose)
        kwargs.update(accelerate_kwargs)
        kwargs.update(extra)
        return net_cls(module, **net_params, **kwargs)

    def _train(self, net, dataset, train_idx, seed, device, start_state, augment=None):
        """Fit ``net`` on ``dataset[train_idx]``, seeded; return ``(module, history rows)``.

        ``start_state`` names what the module holds before the first epoch, for
        the warning after an interruption in the first epoch.
        """
        fit_seeded(net, dataset, train_idx, seed, device, augment=augment)
        module = unwrap_module(net.module_)
        return module, finish_fit(net, module, start_state)
