"""The private skorch ``NeuralNet`` pieces: batches, interruption, and ``TransferNet``.

skorch owns the training loop, history and callbacks; sktransfer's nets only
override small stages. Every net that trains (``TransferNet`` here,
``_PretrainNet`` in ``_pretrain.py``) gets its batches from a
:class:`BatchDataset` and keeps the last completed epoch on an interruption
(:class:`RollbackOnInterrupt`). The estimators build their net in
``_trainer.Trainer._make_net``.

``TransferNet`` (fine-tuning) overrides, each in its own method:

* ``initialize_optimizer``: parameter groups: new parameters (the head) at
  ``lr``; unfrozen pretrained blocks at ``lr * backbone_lr_scale``, one group
  per block when ``layer_decay`` scales them by depth; frozen parameters are
  left out.
* ``on_epoch_begin``: gradual unfreezing (``unfreeze_every``) and the
  ``trainable_from`` / ``lr`` history columns.
* ``_set_training``: frozen blocks stay in eval mode (BatchNorm statistics do
  not move, Dropout is off) while the rest trains; with ``bn="frozen"`` the
  BatchNorm layers of the trained blocks too.
* ``get_loss``: the (sample-weighted) data loss, plus ``alpha * R(theta)`` on
  training batches only (``penalty_term``; the gradient of a penalty on the
  parameters is added after the backward pass, ``train_step_single``; a
  penalty on the features, ``"bss"`` or ``"co_tuning"``, reads the head's
  input, which a forward hook captures, and goes through autograd).

Which parameters of the trained blocks train (``train_params``, LoRA
adapters) is set by ``_adapt.adapt`` before the net is built; gradual
unfreezing applies the same choice to each block it unfreezes.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNet

from ._accelerate import unwrap_module
from ._adapt import freeze_batchnorm, is_adapter_param, set_trainable
from ._blocknet import pool_features
from ._blocks import keep_frozen_in_eval, set_trainable_from, unfreeze_depth
from ._device import MixedPrecision
from ._inputs import InputData, make_batch
from ._penalties import (
    FEATURE_PENALTIES,
    add_gradient,
    bss_penalty,
    co_tuning_loss,
    penalty_and_gradient,
    penalty_value,
)

__all__ = ["TransferNet", "BatchDataset", "BatchLoader", "RollbackOnInterrupt",
           "identity_collate"]


def identity_collate(batch):
    """``BatchDataset`` hands out whole batches: no per-sample collation."""
    return batch


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
            sub = data[indices.numpy()]
        else:
            sub = [data[i] for i in indices.tolist()]
        return make_batch(InputData(sub, self.X.kind), 0, len(sub), self.preprocess)

    def __getitems__(self, indices):
        # one index tensor for X, y and the weights (torch converts a list at each use)
        indices = torch.as_tensor(indices)
        Xb = self._x(indices)
        yb = self.y[indices] if self.y is not None else torch.zeros(len(indices))
        if self.sample_weight is not None:
            return Xb, (yb, self.sample_weight[indices])
        return Xb, yb

    def __getitem__(self, index):  # pragma: no cover - DataLoader uses __getitems__
        Xb, yb = self.__getitems__([index])
        return Xb[0], yb[0]


class BatchLoader:
    """skorch's ``iterator_train`` over a :class:`BatchDataset` (or a ``Subset`` of one):
    the batches of ``torch.utils.data.DataLoader(dataset, batch_size, shuffle,
    drop_last)`` in one process, from the same draws of torch's generator, without
    its per-batch machinery.

    A ``DataLoader`` without worker processes spends tens of microseconds per
    batch outside the dataset (a sampler yielding Python ints that a fetcher
    collects into a list, a profiler range), as much as a linear head's whole
    training step on the CPU; a ``BatchDataset`` cuts a batch with one index
    tensor and needs none of it. ``collate_fn`` is accepted for
    ``DataLoader``'s signature: batches come whole (:func:`identity_collate`).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False,
                 collate_fn=None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self):
        n, size = len(self.dataset), self.batch_size
        return n // size if self.drop_last else -(-n // size)

    def __iter__(self):
        n = len(self.dataset)
        # DataLoader draws a base seed (for worker processes) from torch's generator,
        # then RandomSampler the seed of its own generator: the same two draws give
        # the same order, and leave the generator where DataLoader leaves it
        torch.empty((), dtype=torch.int64).random_()
        if self.shuffle:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        dataset = self.dataset
        if type(dataset) is torch.utils.data.Subset:  # one index tensor into the data
            order, dataset = torch.as_tensor(dataset.indices)[order], dataset.dataset
        else:  # e.g. a Subset subclass: the indices as DataLoader passes them
            order = order.tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield dataset.__getitems__(order[start:start + self.batch_size])


class RollbackOnInterrupt:
    """skorch ``NeuralNet`` mixin: an interruption mid-epoch keeps the last completed epoch.

    skorch ends ``fit`` quietly on ``KeyboardInterrupt`` (its early stopping
    raises one too, at the end of an epoch). In the middle of an epoch the
    weights are half-updated; this mixin restores those of the last completed
    epoch and records the interrupted epoch in ``interrupted_epoch_``.
    """

    def _snapshot(self):
        """Keep copies of what an epoch can change: the optimizer's parameters and all
        buffers (but those of the blocks a fit on kept frozen outputs never runs,
        before ``start_block``). The copies are made once and refreshed in place after each epoch
        (one fused copy; the tensors are listed once per fit, since training
        changes them in place), unless gradual unfreezing changed what trains."""
        names, buffers = self._snapshot_tensors
        live = [(names[id(p)], p) for g in self.optimizer_.param_groups for p in g["params"]
                if id(p) in names] + buffers
        kept = self._last_state
        if kept is None or list(kept) != [n for n, _ in live]:
            self._last_state = {n: t.detach().clone() for n, t in live}
        elif live:
            with torch.no_grad():
                torch._foreach_copy_(list(kept.values()), [t.detach() for _, t in live])

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        super().on_train_begin(net, X=X, y=y, **kwargs)
        self.interrupted_epoch_ = None
        self._epoch_complete = True
        module = self.module_
        inner = unwrap_module(module)
        start = getattr(inner, "start_block", 0)
        unrun = {id(b) for block in getattr(inner, "blocks", [])[:start] for b in block.buffers()}
        self._snapshot_tensors = ({id(p): n for n, p in module.named_parameters()},
                                  [(n, b) for n, b in module.named_buffers() if id(b) not in unrun])
        self._last_state = None
        self._snapshot()

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        self._epoch_complete = False

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train, dataset_valid, **kwargs)
        self._epoch_complete = True
        self._snapshot()

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


class TransferNet(RollbackOnInterrupt, MixedPrecision, NeuralNet):
    """skorch ``NeuralNet`` with frozen blocks, per-block learning rates and a penalty.

    Parameters (beyond skorch's)
    ----------------------------
    freeze_depth : int
        Blocks ``0..freeze_depth-1`` are frozen (already ``requires_grad=False``).
    frozen_blocks : tuple of int
        Blocks above ``freeze_depth`` that are frozen too (surgical fine-tuning).
    train_params, adapter : str, str or None
        Which parameters of a trained block train (``_adapt.set_trainable``);
        applied again to each block that gradual unfreezing unfreezes.
    bn : {"train", "frozen"}
        ``"frozen"``: the BatchNorm layers of the trained blocks stay in eval mode.
    relationship : Tensor or None
        Co-Tuning's ``p(z | y)``, ``(n_classes, n_source)``; the module has a
        ``source_head``.
    penalty : {None, "l2", "l1", "l2_sp", "bss", "co_tuning"}
        The regulariser ``R`` (``_penalties.py``).
    alpha : float
        Its strength: the training loss is ``mean loss + alpha * R(theta)``.
    backbone_lr_scale : float
        Unfrozen pretrained blocks train at ``lr * backbone_lr_scale``.
    layer_decay : float or None
        Block ``i`` places below the top block trains at
        ``lr * backbone_lr_scale * layer_decay ** i``.
    new_prefixes : tuple of str
        Parameter-name prefixes of parameters created for the target task
        (LoRA adapters are new parameters too).
    head_l2 : float or None
        A probe-initialised head's own L2 strength (``head_term``); the head is
        then left out of ``penalty``. ``None``: the head is a new parameter of
        ``penalty`` like any other.
    weighted : bool
        Whether ``y`` batches are ``(y, sample_weight)`` (the criterion then has
        ``reduction="none"``).
    unfreeze_every : int or None
        Gradual unfreezing: the head trains alone for ``unfreeze_every`` epochs,
        then one more block from the top every ``unfreeze_every`` epochs, down
        to ``freeze_depth``.
    """

    def __init__(self, module, *args, freeze_depth=0, penalty=None, alpha=0.0,
                 backbone_lr_scale=1.0, layer_decay=None, new_prefixes=("head.",),
                 weighted=False, unfreeze_every=None, frozen_blocks=(), train_params="all",
                 adapter=None, bn="train", relationship=None, head_l2=None, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.head_l2 = head_l2
        self.frozen_blocks = tuple(frozen_blocks)
        self.train_params = train_params
        self.adapter = adapter
        self.bn = bn
        self.relationship = relationship
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
        return name.startswith(tuple(self.new_prefixes)) or is_adapter_param(name)

    def initialize_module(self):
        # the feature penalties' hook goes on the module before skorch wraps it
        # (torch.compile through net_kwargs); fit_loop removes it at the end
        self._remove_capture_hook()
        if self.penalty in FEATURE_PENALTIES and self.alpha > 0:
            self._capture_head_input(unwrap_module(self.module))
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
                if self.head_l2 is not None and name.startswith("head."):
                    continue  # a probe head keeps the probe's own L2 (head_term)
                if self._is_new(name):
                    new.append(p)
                else:
                    pretrained.append(p)
                    anchors.append(p.detach().clone())
            self._anchor_state = (pretrained, anchors, new)
        return self._anchor_state

    def param_groups(self):
        """``[{"params": [...], "lr": ...}, ...]``: the optimizer's parameter groups.

        New parameters at ``lr``; pretrained ones at ``lr * backbone_lr_scale``,
        times ``layer_decay ** i`` for the block ``i`` places below the top
        block when ``layer_decay`` is set. Frozen parameters are left out.

        skorch's ``optimizer__param_groups`` would do this with glob patterns
        over the parameter names of ``net.module_``; here the groups follow the
        ``BlockNet``'s own structure instead, because those names change with
        wrappers (``torch.compile`` through ``net_kwargs={"compile": True}``
        prefixes ``_orig_mod.``; a parameter missed by every pattern would
        silently train at the head's rate), and pretrained models have
        submodules named like ours (timm's ``blocks``, ``head``).
        """
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
        return list(groups.values())

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        kwargs.setdefault("lr", self.lr)
        self.optimizer_ = self.optimizer(self.param_groups(), **kwargs)
        # anchors must be the pretrained values *before* any step
        # (with gradual unfreezing, every block that will train is still trainable here)
        self._anchor_state = None
        if self.penalty is not None and self.penalty not in FEATURE_PENALTIES:
            self._penalty_params()
        return self

    # -- gradual unfreezing -------------------------------------------------------
    # skorch's Freezer/Unfreezer (ParamMapper) flip ``requires_grad`` of parameters
    # whose names match glob patterns at a given epoch. Gradual unfreezing needs
    # more than the flip: one boundary that moves block by block, frozen blocks
    # kept in eval mode on either side of it (``_set_training`` reads it), and the
    # boundary in the history; and the names have the wrappers' prefixes (see
    # ``param_groups``). So the net moves the boundary itself, with the freezing
    # helpers of ``_blocks.py``.
    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self._training_mode = None  # the module's mode is unknown until set
        self._depth = self.freeze_depth
        super().on_train_begin(net, X=X, y=y, **kwargs)

    def _remove_capture_hook(self):
        if getattr(self, "_capture_hook", None) is not None:
            self._capture_hook.remove()
        self._capture_hook = None
        self._captured = {}

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        finally:  # the fitted module keeps no reference to the net
            self._remove_capture_hook()

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_begin(net, dataset_train, dataset_valid, **kwargs)
        if self.unfreeze_every:
            module = unwrap_module(self.module_)
            depth = unfreeze_depth(len(self.history), len(module.blocks), self.freeze_depth,
                                   self.unfreeze_every)
            if depth != self._depth:
                set_trainable_from(module, self.freeze_depth, depth)
                if self.train_params != "all" or self.adapter is not None:
                    for block in module.blocks[depth:]:
                        set_trainable(block, self.train_params, self.adapter)
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
            module = unwrap_module(self.module_)
            keep_frozen_in_eval(module, self._depth)
            for i in self.frozen_blocks:
                module.blocks[i].eval()
            if self.bn == "frozen":
                freeze_batchnorm(module.blocks)
        self._training_mode = training

    # -- the objective ------------------------------------------------------------
    def data_loss(self, y_pred, y_true, X=None, training=False):
        """The criterion's mean over the batch, weighted by the sample weights if any."""
        if not self.weighted:
            return super().get_loss(y_pred, y_true, X=X, training=training)
        # y_true = (y, sample weights); the criterion has reduction="none"
        y, w = y_true
        per_sample = super().get_loss(y_pred, y, X=X, training=training)
        per_sample = per_sample.reshape(len(per_sample), -1).mean(dim=1)
        w = w.to(per_sample.device)
        return (per_sample * w).sum() / w.sum().clamp_min(1e-12)

    def _capture_head_input(self, module):
        """A forward hook on the head of ``module`` that keeps the head's input on
        training batches (and, for Co-Tuning, the pretrained head's output on it,
        computed inside the forward pass so that distributed data parallel sees the
        source head used). The hook holds a dict and the source head, not the net:
        ``torch.compile`` traces it."""
        captured = self._captured = {}
        source_head = module.source_head if self.penalty == "co_tuning" else None

        def hook(head, args, output):
            if head.training:
                captured["x"] = args[0]
                captured["source"] = None if source_head is None else source_head(args[0])

        self._capture_hook = module.head.register_forward_hook(hook)

    def feature_penalty(self, y_true):
        """``R`` of a feature penalty on the last training batch (``None`` without one)."""
        captured = getattr(self, "_captured", None) or {}
        if "x" not in captured:
            return None
        x, source_logits = captured.pop("x"), captured.pop("source")
        if self.penalty == "bss":
            if x.ndim > 2:  # a feature map or tokens: the new head pools them the same way
                x = pool_features(x, "avg", unwrap_module(self.module_).channels_last)
            return bss_penalty(x)
        y, w = y_true if self.weighted else (y_true, None)
        relationship = self.relationship.to(source_logits.device)
        return co_tuning_loss(source_logits, relationship[y.to(relationship.device)], w)

    def penalty_term(self, y_true=None):
        """``alpha * R(theta)`` for a training batch, or ``None`` when there is none."""
        if self.penalty is None or self.alpha <= 0:
            return None
        if self.penalty in FEATURE_PENALTIES:
            reg = self.feature_penalty(y_true)
        elif self._penalty_by_autograd:
            reg = penalty_value(self.penalty, *self._penalty_params())
        else:
            # R's gradient is added after the backward pass (train_step_single);
            # R itself, without a graph, only joins the reported objective
            reg, *self._penalty_grad = penalty_and_gradient(
                self.penalty, *self._penalty_params())
        return None if reg is None else self.alpha * reg

    def head_term(self):
        """``head_l2 / 2 * ||W||^2`` on a probe head's linear weight (``head_init="probe"``).

        The probe's own regularisation, in the units of the mean loss: with the
        blocks frozen, the head's optimum stays the probe's. Through autograd:
        one small matrix.
        """
        if not self.head_l2:
            return None
        weight = unwrap_module(self.module_).head[-1].weight
        return 0.5 * self.head_l2 * weight.pow(2).sum()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = self.data_loss(y_pred, y_true, X=X, training=training)
        if training:
            self.history.record_batch("train_data_loss", loss.item())
            for term in (self.penalty_term(y_true), self.head_term()):
                if term is not None:
                    loss = loss + term
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
