"""Adaptation methods beyond ``freeze_depth``: what trains, and what happens after training.

One fit's choices live in an :class:`Adaptation`, made by :func:`adapt` once
the network has its new head and its first ``freeze_depth`` blocks are frozen:

* which blocks train: blocks ``freeze_depth..`` or exactly ``train_blocks``
  (surgical fine-tuning, Lee et al., ICLR 2023), :func:`check_train_blocks`;
* which of their parameters train, ``train_params``: all of them, the biases
  (BitFit, Ben Zaken et al., ACL 2022) or the normalisation layers
  (:func:`set_trainable`);
* LoRA adapters (Hu et al., ICLR 2022) on their Linear, Conv and
  MultiheadAttention layers, through peft, merged into the weights after
  training (:func:`inject_lora`), so that a fitted model needs no peft;
* WiSE-FT (Wortsman et al., CVPR 2022): after training, the pretrained
  weights that moved end at ``(1 - wise) * theta_s + wise * theta_ft``
  (:func:`interpolate`); frozen tensors stay bit for bit;
* Co-Tuning's source head (You et al., NeurIPS 2020): the pretrained head
  trains next to the new one (``module.source_head``, dropped after training)
  toward the category relationship computed here before training
  (:func:`source_relationship`); the loss is in ``_penalties.py``.
  ``penalty="auto"`` is Co-Tuning wherever it can run, L2-SP elsewhere
  (:func:`fit_penalty`).

The BatchNorm policy (``bn``) is a training mode: ``TransferNet._set_training``
calls :func:`freeze_batchnorm`.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ._device import seeded_rng
from ._penalties import auto_alpha, category_relationship

#: the fine-tuning estimators' parameters of the adaptation methods, constrained here
#: (``train_blocks``'s indices are checked against the model in check_train_blocks)
ADAPT_CONSTRAINTS = {
    "train_blocks": ["array-like", None],
    "train_params": [StrOptions({"all", "bias", "norm"})],
    "adapter": [StrOptions({"lora"}), None],
    "adapter_rank": [Interval(numbers.Integral, 1, None, closed="left")],
    "adapter_alpha": [Interval(numbers.Real, 0, None, closed="neither")],
    "bn": [StrOptions({"train", "frozen"})],
    "wise": [Interval(numbers.Real, 0, 1, closed="both")],
}
#: the estimator parameters that :func:`adapt` takes
ADAPT_PARAMS = ("freeze_depth", "unfreeze_every", *ADAPT_CONSTRAINTS)

__all__ = ["ADAPT_CONSTRAINTS", "ADAPT_PARAMS", "Adaptation", "adapt", "check_train_blocks", "set_trainable", "freeze_batchnorm",
           "inject_lora", "interpolate", "fit_penalty", "source_relationship",
           "is_adapter_param"]

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                nn.LocalResponseNorm, getattr(nn, "RMSNorm", nn.LayerNorm))


def _is_norm(module):
    # torch's own, and the many libraries' own (timm's LayerNorm2d, Hugging Face's
    # T5LayerNorm / LlamaRMSNorm, ...), which all say so in their class name
    return isinstance(module, _NORM_LAYERS) or "norm" in type(module).__name__.lower()


def is_adapter_param(name):
    """Whether the parameter ``name`` belongs to a LoRA adapter (peft's ``lora_*``)."""
    return ".lora_" in name or name.startswith("lora_")


def check_train_blocks(train_blocks, freeze_depth, n_blocks, unfreeze_every=None):
    """The indices of the blocks that train, ascending.

    ``freeze_depth`` is the estimator's parameter, ``n_blocks`` the number of
    blocks. Without ``train_blocks`` the blocks from ``freeze_depth`` up train
    (``"all"``: none). ``train_blocks`` (negative indices count from the end)
    replaces ``freeze_depth``; both at once, or with gradual unfreezing, raise.
    """
    if train_blocks is None:
        first = n_blocks if isinstance(freeze_depth, str) else int(freeze_depth)
        return list(range(first, n_blocks))
    if isinstance(freeze_depth, str) or freeze_depth != 0:
        raise ValueError(
            f"train_blocks={list(train_blocks)!r} and freeze_depth={freeze_depth!r} both say "
            "which blocks train: set freeze_depth=0 with train_blocks (exactly those blocks "
            "and the head train), or train_blocks=None with freeze_depth."
        )
    if unfreeze_every is not None:
        raise ValueError(
            f"unfreeze_every={unfreeze_every!r} unfreezes blocks from the top down, which a "
            f"set of blocks (train_blocks={list(train_blocks)!r}) is not; use freeze_depth "
            "for gradual unfreezing, or set unfreeze_every=None."
        )
    blocks = []
    for b in train_blocks:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Integral):
            raise TypeError(
                f"train_blocks must hold block indices (ints), got {b!r} in {train_blocks!r}."
            )
        if not -n_blocks <= b < n_blocks:
            raise ValueError(
                f"train_blocks holds {b}, out of range: the model has {n_blocks} blocks, so "
                f"use indices in 0..{n_blocks - 1} (or -{n_blocks}..-1 from the end; see "
                "sktransfer.list_blocks(model))."
            )
        blocks.append(int(b) % n_blocks)
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"train_blocks names a block twice: {list(train_blocks)!r}.")
    return sorted(blocks)


def _selected(name, owner, train_params, adapter):
    if adapter is not None and is_adapter_param(name):
        return True
    if train_params == "bias":
        return name.rsplit(".", 1)[-1] == "bias"
    if train_params == "norm":
        return _is_norm(owner)
    return adapter is None  # "all": every parameter, or the adapters alone


def set_trainable(block, train_params="all", adapter=None):
    """Make exactly the chosen parameters of a trainable ``block`` trainable.

    ``train_params``: ``"all"``, ``"bias"`` (BitFit) or ``"norm"`` (the
    parameters of normalisation layers). With ``adapter``, the adapters train
    and ``train_params`` says which of the block's own parameters train too:
    ``"all"`` none of them. Returns the number of trainable elements.
    """
    n = 0
    for path, module in block.named_modules():
        for name, p in module.named_parameters(recurse=False):
            on = _selected(f"{path}.{name}" if path else name, module, train_params, adapter)
            p.requires_grad_(on)
            n += p.numel() if on else 0
    return n


def freeze_batchnorm(blocks):
    """BatchNorm layers of ``blocks`` in eval mode: they normalise with their
    running statistics and do not update them (``bn="frozen"``)."""
    for block in blocks:
        for m in block.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# --------------------------------------------------------------------------- LoRA
def _lora_targets(blocks, trained):
    """Names (relative to ``blocks``) of the layers of the trained blocks that get
    an adapter: Linear, ungrouped ConvNd and MultiheadAttention.

    Left out: grouped convolutions (peft cannot merge their adapters) and the
    Linear layers inside a MultiheadAttention (its forward reads their weights
    directly, so an adapter on them would never run; the attention itself gets
    one, peft's ``lora.MultiheadAttention``).
    """
    names = []
    for i in trained:
        inside_attention = set()
        for name, m in blocks[i].named_modules():
            full = f"{i}.{name}" if name else str(i)
            if isinstance(m, nn.MultiheadAttention):
                names.append(full)
                inside_attention.update(id(c) for c in m.modules() if c is not m)
            elif id(m) in inside_attention:
                continue
            elif isinstance(m, nn.Linear) or (
                    isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1):
                names.append(full)
    return names


def inject_lora(module, trained, rank, lora_alpha, seed):
    """Add LoRA adapters to the trained blocks of ``module`` (a ``BlockNet``), through peft.

    peft's ``inject_adapter_in_model`` would return the model and drop the
    tuner that merges the adapters back; its lowest level, ``LoraModel`` on the
    blocks' ``ModuleList`` with the layers named exactly (a regular expression,
    which peft matches in full), injects the same layers and keeps the tuner
    for :meth:`Adaptation.finish`. It works on any ``nn.Module``: no
    transformers model or config is needed. Returns the tuner, or ``None`` when
    the trained blocks have no layer to adapt.
    """
    targets = _lora_targets(module.blocks, trained)
    if not targets:
        return None
    try:
        from peft import LoraConfig, LoraModel
    except ImportError as exc:
        raise ImportError(
            "adapter='lora' needs the optional package peft, which is not installed: "
            "pip install 'sktransfer[lora]' (or pip install peft). Or pick another "
            "method: adapter=None fine-tunes the weights themselves."
        ) from exc

    config = LoraConfig(r=int(rank), lora_alpha=float(lora_alpha), lora_dropout=0.0,
                        bias="none",
                        target_modules="^(?:" + "|".join(map(re.escape, targets)) + ")$")
    with seeded_rng(seed):  # the adapters' A matrices start at random
        return LoraModel(module.blocks, config, adapter_name="default")


# --------------------------------------------------------------------------- WiSE-FT
def snapshot(module, trained, head_too):
    """Copies of the floating-point tensors that training may change: the trained
    blocks' (and the head's, when it is the pretrained one)."""
    prefixes = tuple(f"blocks.{i}." for i in trained) + (("head.",) if head_too else ())
    return {k: v.detach().clone() for k, v in module.state_dict().items()
            if k.startswith(prefixes) and v.is_floating_point()}


@torch.no_grad()
def interpolate(module, source_state, wise):
    """WiSE-FT: every tensor of ``source_state`` that training changed becomes
    ``(1 - wise) * theta_s + wise * theta_ft`` in place (``torch.lerp``).

    Tensors that did not move (frozen blocks, parameters ``train_params`` left
    out, BatchNorm statistics under ``bn="frozen"``) are not touched, so they
    stay bit-for-bit the pretrained ones.
    """
    state = module.state_dict()
    for name, source in source_state.items():
        tuned = state[name]
        if not torch.equal(tuned, source.to(tuned.device)):
            tuned.copy_(torch.lerp(source.to(tuned.device), tuned, float(wise)))


# --------------------------------------------------------------------------- Co-Tuning
def _source_head_problem(net, features, *, classification, reuse_head, source_task=None):
    """Why Co-Tuning cannot run on this fit (an error message), or ``None``."""
    if not classification:
        return ("penalty='co_tuning' translates target classes into the pretrained head's "
                "source classes: it is for FineTunedClassifier. Use another penalty for "
                "regression (e.g. 'l2_sp' or 'bss').")
    if reuse_head:
        return ("penalty='co_tuning' trains the pretrained head next to a new one; with "
                "reuse_head=True there is no new one. Set reuse_head=False, or use another "
                "penalty.")
    if not net.has_head:
        return ("penalty='co_tuning' needs the pretrained model's head over its source "
                "classes, but this model has none (an encoder). Use another penalty (e.g. "
                "'l2_sp' or 'bss').")
    if source_task == "regression":
        return ("penalty='co_tuning' needs a pretrained classification head, but the model "
                "is a fitted regressor: its outputs are values, not source classes. Use "
                "another penalty (e.g. 'l2_sp' or 'bss').")
    was_training = net.head.training
    try:  # in eval mode: a BatchNorm in the head keeps its statistics (and 2 rows work)
        with torch.no_grad():
            out = net.head.eval()(features)
    finally:
        net.head.train(was_training)
    if out.ndim != 2 or out.shape[1] < 2:
        return ("penalty='co_tuning' needs a pretrained classification head (one output per "
                f"source class), but the pretrained head outputs shape {tuple(out.shape[1:])}. "
                "Use another penalty (e.g. 'l2_sp' or 'bss').")
    return None


def fit_penalty(penalty, alpha, resolved, features, *, classification, reuse_head, trains):
    """``(penalty, alpha, source head)`` of one fit, from the estimator's ``penalty`` and
    ``alpha`` on the pretrained model ``resolved`` (``features``: two samples' head
    input; ``trains``: whether a pretrained block trains).

    ``penalty="auto"`` is ``"co_tuning"`` where it can run and a pretrained block
    trains (a classifier whose source has a classification head: torchvision, timm, a
    Hugging Face ``...ForSequenceClassification``, a fitted ``FineTunedClassifier``, a
    module whose head has two outputs or more), ``"l2_sp"`` otherwise;
    ``alpha="auto"`` is the penalty's own strength (``_penalties.auto_alpha``). The
    source head (Co-Tuning's pretrained head, or ``None``) is taken before a new head
    replaces it.
    """
    problem = None if penalty not in ("auto", "co_tuning") else _source_head_problem(
        resolved.net, features, classification=classification, reuse_head=reuse_head,
        source_task=resolved.extra.get("task"))  # a fitted sktransfer estimator's task
    if penalty == "auto":
        penalty = "co_tuning" if trains and problem is None else "l2_sp"
    alpha = auto_alpha(penalty) if isinstance(alpha, str) else float(alpha)
    if penalty != "co_tuning":
        return penalty, alpha, None
    if problem:
        raise ValueError(problem)
    return penalty, alpha, resolved.net.head


@torch.no_grad()
def source_relationship(module, dataset, indices, y, n_classes, start, batch_size):
    """``p(z | y)`` (``(n_classes, n_source)`` float32): the pretrained network's
    source-class probabilities on the training samples, averaged per target class.

    ``module`` still holds the pretrained weights and has its ``source_head``;
    ``dataset`` yields its inputs from block ``start`` on (the frozen-prefix cache).
    """
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    probs = []
    try:
        for chunk in np.array_split(np.asarray(indices), max(1, -(-len(indices) // batch_size))):
            Xb = dataset.__getitems__(chunk.tolist())[0].to(device)
            if Xb.is_floating_point():  # the frozen-prefix store may hold bf16/fp16
                Xb = Xb.float()
            logits = module.source_head(module.forward_features(Xb, start=start))
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        module.train(was_training)
    P = torch.cat(probs).double().numpy()
    y_idx = np.asarray(y)[np.asarray(indices)]
    return torch.as_tensor(category_relationship(P, y_idx, n_classes), dtype=torch.float32)


# --------------------------------------------------------------------------- one fit
@dataclass
class Adaptation:
    """What one fit trains, and what :meth:`finish` does to the network afterwards."""

    trained: list
    n_blocks: int
    train_params: str = "all"
    adapter: object = None
    bn: str = "train"
    wise: float = 1.0
    source_state: dict = field(default=None, repr=False)
    lora: object = field(default=None, repr=False)

    @property
    def prefix(self):
        """The number of leading frozen blocks (the frozen-prefix cache's depth)."""
        return self.trained[0] if self.trained else self.n_blocks

    def net_params(self):
        """The ``TransferNet`` arguments of this adaptation."""
        frozen = [i for i in range(self.prefix, self.n_blocks) if i not in self.trained]
        return {"freeze_depth": self.prefix, "frozen_blocks": tuple(frozen),
                "train_params": self.train_params, "adapter": self.adapter, "bn": self.bn}

    def finish(self, module):
        """After training: merge the adapters, apply WiSE-FT, drop Co-Tuning's source head."""
        if self.lora is not None:
            self.lora.merge_and_unload()  # in place: module.blocks holds the merged layers
            self.lora = None
        if self.source_state is not None:
            interpolate(module, self.source_state, self.wise)
            self.source_state = None
        if hasattr(module, "source_head"):
            del module.source_head
        return module


def adapt(module, *, freeze_depth, train_blocks=None, unfreeze_every=None, train_params="all",
          adapter=None, adapter_rank=8, adapter_alpha=16.0, bn="train", wise=1.0,
          pretrained_head=False, source_head=None, seed=0):
    """Set ``module`` (a ``BlockNet`` with its head, blocks below ``freeze_depth``
    already frozen) up for one fit; return its :class:`Adaptation`.

    Freezes the blocks that do not train, keeps what WiSE-FT needs, adds the
    LoRA adapters, chooses the trainable parameters and attaches Co-Tuning's
    ``source_head``. ``pretrained_head``: the head is the pretrained one
    (``reuse_head``), so WiSE-FT interpolates it too.
    """
    n_blocks = len(module.blocks)
    trained = check_train_blocks(train_blocks, freeze_depth, n_blocks, unfreeze_every)
    for i, block in enumerate(module.blocks):
        if i not in trained:
            block.requires_grad_(False)
    plan = Adaptation(trained, n_blocks, train_params, adapter, bn, float(wise))
    if plan.wise < 1.0:  # theta_s, before adapters rename the layers
        plan.source_state = snapshot(module, trained, pretrained_head)
    if adapter == "lora":
        plan.lora = inject_lora(module, trained, adapter_rank, adapter_alpha, seed)
    if train_params != "all" or adapter is not None:
        n_trainable = sum(set_trainable(module.blocks[i], train_params, adapter)
                          for i in trained)
        if trained and n_trainable == 0:
            what = ("no Linear, Conv or MultiheadAttention layer for an adapter"
                    if adapter is not None and train_params == "all" else
                    {"bias": "no bias", "norm": "no normalisation layer"}[train_params])
            raise ValueError(
                f"train_params={train_params!r}, adapter={adapter!r}: the trained blocks "
                f"{trained} have {what}, so only the head would train. Use "
                "freeze_depth='all' for that, or another train_params/adapter."
            )
    if source_head is not None:
        source_head.requires_grad_(True)
        module.source_head = source_head
    return plan
