"""The private skorch ``NeuralNet`` that runs fine-tuning.

The public estimators build one per ``fit`` (``_finetune.py``); skorch owns
the training loop, history and callbacks. We only override small stages:

* ``initialize_optimizer``: two parameter groups (new parameters at ``lr``,
  unfrozen pretrained blocks at ``lr * backbone_lr_scale``); frozen
  parameters are left out.
* ``_set_training``: frozen blocks stay in eval mode (BatchNorm statistics do
  not move, Dropout is off) while the rest trains.
* ``get_loss``: adds ``alpha * R(theta)`` on training batches only (its
  gradient is added after the backward pass, ``train_step_single``).
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback

from ._accelerate import unwrap_module
from ._inputs import InputData, make_batch
from ._penalties import add_gradient, penalty_and_gradient, penalty_value

__all__ = ["TransferNet", "BatchDataset", "FiniteLossCheck", "RollbackOnInterrupt",
           "identity_collate", "holdout_split", "fit_seeded", "finish_fit", "check_net_kwargs"]


def identity_collate(batch):
    """``BatchDataset`` hands out whole batches: no per-sample collation."""
    return batch


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
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net.fit(train, None)


def finish_fit(net, module, start_state):
    """After ``net.fit``: warn about an interruption, free gradients, eval mode.

    Returns ``history_`` rows: one plain dict per epoch (skorch's per-batch
    records left out, numpy floats as Python floats).
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
        {k: (float(v) if isinstance(v, np.floating) else v)
         for k, v in row.items() if k != "batches"}
        for row in net.history
    ]


class BatchDataset(torch.utils.data.Dataset):
    """A dataset that hands out whole batches (``__getitems__``): no per-sample collate.

    ``X`` is either a float32 tensor (tables and numeric arrays, already in
    memory) or an :class:`InputData` of images that are loaded and preprocessed
    batch by batch.
    """

    def __init__(self, X, y=None, preprocess=None, sample_weight=None):
        # sample_weight: float32 tensor or None; with it, batches are (X, (y, w))
        self.X = X
        self.y = y
        self.preprocess = preprocess
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.X)

    def _x(self, indices):
        if isinstance(self.X, torch.Tensor):
            return self.X[indices]
        data = self.X.data
        if isinstance(data, np.ndarray):
            sub = data[np.asarray(indices)]
        else:
            sub = [data[i] for i in indices]
        return make_batch(InputData(sub, self.X.kind), 0, len(sub), self.preprocess)

    def __getitems__(self, indices):
        indices = list(indices)
        Xb = self._x(indices)
        yb = self.y[indices] if self.y is not None else torch.zeros(len(indices))
        if self.sample_weight is not None:
            return Xb, (yb, self.sample_weight[indices])
        return Xb, yb

    def __getitem__(self, index):  # pragma: no cover - DataLoader uses __getitems__
        Xb, yb = self.__getitems__([index])
        return Xb[0], yb[0]


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
    """Stop with a clear error when the training loss becomes NaN or infinite."""

    def on_epoch_end(self, net, **kwargs):
        loss = net.history[-1].get("train_loss")
        if loss is not None and not math.isfinite(loss):
            epoch = net.history[-1, "epoch"]
            raise FloatingPointError(
                f"The training loss became {loss} at epoch {epoch}: the fit diverged. "
                f"Use a smaller lr (now {net.lr:g}) or a smaller alpha, or scale X "
                "(e.g. StandardScaler) and, for regression, y."
            )


class RollbackOnInterrupt:
    """skorch ``NeuralNet`` mixin: an interruption mid-epoch keeps the last completed epoch.

    skorch ends ``fit`` quietly on ``KeyboardInterrupt`` (its early stopping
    raises one too, at the end of an epoch). In the middle of an epoch the
    weights are half-updated; this mixin restores those of the last completed
    epoch and records the interrupted epoch in ``interrupted_epoch_``.
    """

    def _snapshot(self):
        """Copies of what an epoch can change: the optimizer's parameters, all buffers."""
        module = self.module_
        optimized = {id(p) for g in self.optimizer_.param_groups for p in g["params"]}
        state = {n: p.detach().clone() for n, p in module.named_parameters()
                 if id(p) in optimized}
        state.update({n: b.detach().clone() for n, b in module.named_buffers()})
        return state

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        super().on_train_begin(net, X=X, y=y, **kwargs)
        self.interrupted_epoch_ = None
        self._epoch_complete = True
        self._last_state = self._snapshot()

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        self._epoch_complete = False

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train, dataset_valid, **kwargs)
        self._epoch_complete = True
        self._last_state = self._snapshot()

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            # early stopping also stops with KeyboardInterrupt, at the end of an
            # epoch; an interruption in the middle of one rolls back to the last
            # completed epoch, so the model is never half-updated
            if not self._epoch_complete:
                self.interrupted_epoch_ = self.history[-1, "epoch"]
                self.history.pop()
                self.module_.load_state_dict(self._last_state, strict=False)
            raise


class TransferNet(RollbackOnInterrupt, NeuralNet):
    """skorch ``NeuralNet`` with freezing, two learning rates and a penalty.

    Parameters (beyond skorch's)
    ----------------------------
    freeze_depth : int
        Blocks ``0..freeze_depth-1`` are frozen (already ``requires_grad=False``).
    penalty : {None, "l2", "l1", "l2_sp"}
    alpha : float
    backbone_lr_scale : float
    new_prefixes : tuple of str
        Parameter-name prefixes of parameters created for the target task.
    """

    def __init__(self, module, *args, freeze_depth=0, penalty=None, alpha=0.0,
                 backbone_lr_scale=1.0, layer_decay=None, new_prefixes=("head.",),
                 weighted=False, unfreeze_every=None, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.unfreeze_every = unfreeze_every
        self._depth = freeze_depth
        self.layer_decay = layer_decay
        self.weighted = weighted
        self.freeze_depth = freeze_depth
        self.penalty = penalty
        self.alpha = alpha
        self.backbone_lr_scale = backbone_lr_scale
        self.new_prefixes = new_prefixes

    def _is_new(self, name):
        return name.startswith(tuple(self.new_prefixes))

    def initialize_module(self):
        super().initialize_module()
        # after skorch moved the module to the device (in _initialize_module) the
        # anchors are taken lazily on the first loss computation; reset them here
        self._anchor_state = None
        return self

    def _penalty_params(self):
        if self._anchor_state is None:
            pretrained, anchors, new = [], [], []
            for name, p in unwrap_module(self.module_).named_parameters():
                if not p.requires_grad:
                    continue
                if self._is_new(name):
                    new.append(p)
                else:
                    pretrained.append(p)
                    anchors.append(p.detach().clone())
            self._anchor_state = (pretrained, anchors, new)
        return self._anchor_state

    def initialize_optimizer(self, triggered_directly=None):
        """Parameter groups: new parameters at ``lr``; pretrained ones at
        ``lr * backbone_lr_scale``, times ``layer_decay ** i`` for the block ``i``
        places below the top block when ``layer_decay`` is set. Frozen
        parameters are left out."""
        module = unwrap_module(self.module_)
        n_blocks = len(module.blocks)
        base = self.lr * self.backbone_lr_scale
        groups = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if self._is_new(name):
                key, lr = "new", self.lr
            elif self.layer_decay is not None and name.startswith("blocks."):
                block = int(name.split(".")[1])
                key, lr = block, base * self.layer_decay ** (n_blocks - 1 - block)
            else:
                key, lr = "pretrained", base
            groups.setdefault(key, {"params": [], "lr": lr})["params"].append(p)
        kwargs = self.get_params_for("optimizer")
        kwargs.setdefault("lr", self.lr)
        self.optimizer_ = self.optimizer(list(groups.values()), **kwargs)
        # anchors must be the pretrained values *before* any step
        # (with gradual unfreezing, every block that will train is still trainable here)
        self._anchor_state = None
        if self.penalty is not None:
            self._penalty_params()
        return self

    # -- gradual unfreezing -------------------------------------------------------
    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self._training_mode = None  # the module's mode is unknown until set
        self._depth = self.freeze_depth
        super().on_train_begin(net, X=X, y=y, **kwargs)

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        if self.unfreeze_every:
            # head alone for unfreeze_every epochs, then one more block from the top
            # every unfreeze_every epochs, down to freeze_depth
            epoch = len(self.history)
            blocks = unwrap_module(self.module_).blocks
            depth = max(self.freeze_depth, len(blocks) - (epoch - 1) // self.unfreeze_every)
            if depth != self._depth:
                for i, block in enumerate(blocks):
                    if i >= self.freeze_depth:
                        block.requires_grad_(i >= depth)
                self._depth = depth
                self._training_mode = None  # newly (un)frozen blocks change mode
        self.history.record("trainable_from", self._depth)
        # the largest group's rate (the head's) as this epoch starts, schedules included
        self.history.record("lr", max(g["lr"] for g in self.optimizer_.param_groups))

    def _set_training(self, training=True):
        # skorch calls this on every step; walking a large module's tree each time
        # costs more than a small head's step, so switch only when the mode changes
        if getattr(self, "_training_mode", None) is training:
            return
        super()._set_training(training)
        if training:
            for block in unwrap_module(self.module_).blocks[: self._depth]:
                block.eval()
        self._training_mode = training

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if self.weighted:  # y_true = (y, sample weights); the criterion has reduction="none"
            y, w = y_true
            per_sample = super().get_loss(y_pred, y, X=X, training=training)
            per_sample = per_sample.reshape(len(per_sample), -1).mean(dim=1)
            w = w.to(per_sample.device)
            loss = (per_sample * w).sum() / w.sum().clamp_min(1e-12)
        else:
            loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training:
            self.history.record_batch("train_data_loss", loss.item())
        if training and self.penalty is not None and self.alpha > 0:
            if self._penalty_by_autograd:
                reg = penalty_value(self.penalty, *self._penalty_params())
            else:
                # R's gradient is added after the backward pass (train_step_single);
                # R itself, without a graph, only joins the reported objective
                reg, *self._penalty_grad = penalty_and_gradient(
                    self.penalty, *self._penalty_params())
            if reg is not None:
                loss = loss + self.alpha * reg
        return loss

    #: Under accelerate the penalty goes through autograd: its backward rescales
    #: the loss (mixed precision, gradient accumulation), which a gradient added
    #: by hand would miss.
    _penalty_by_autograd = False
    _penalty_grad = None

    def train_step_single(self, batch, **fit_params):
        step = super().train_step_single(batch, **fit_params)
        if self._penalty_grad is not None:
            params, grads = self._penalty_grad
            self._penalty_grad = None
            add_gradient(params, grads, self.alpha)
        return step
