"""The head of a fine-tuned network: a new one sized from ``y``, or the pretrained one.

:func:`attach_head` puts the head on the resolved ``BlockNet`` and says which
parameters are new for the target task (they train at ``lr``; the other ones at
``lr * backbone_lr_scale``, and ``penalty="l2_sp"`` pulls only those toward
their pretrained values). A new head reads the features the blocks give before
the pretrained head; a feature map or a sequence of tokens is pooled first
(``GlobalPool``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from torch import nn

from ._blocknet import GlobalPool

__all__ = ["attach_head", "check_hidden_sizes", "make_head"]


def check_hidden_sizes(head_hidden_sizes):
    """``head_hidden_sizes`` as a tuple of positive ints (element-wise: the
    estimator's constraints only say "array-like")."""
    hidden = tuple(head_hidden_sizes)
    for h in hidden:
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, numbers.Integral) or h < 1:
            raise ValueError(
                f"head_hidden_sizes must be positive ints, got {head_hidden_sizes!r}."
            )
    return hidden


def make_head(n_in, n_out, hidden=(), dropout=0.0, pool=False, channels_last=False):
    """A new head: ``[pool] -> ([dropout] -> Linear -> ReLU) per hidden size ->
    [dropout] -> Linear(n_out)``, PyTorch's default initialisation (seed first)."""
    layers = [GlobalPool("avg", channels_last)] if pool else []
    width = n_in
    for h in hidden:
        layers += [nn.Dropout(dropout)] if dropout else []
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers += [nn.Dropout(dropout)] if dropout else []
    layers.append(nn.Linear(width, n_out))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def attach_head(net, features, n_out, seed, *, reuse_head=False, hidden=(), dropout=0.0,
                outputs=None):
    """Give ``net`` its head for ``n_out`` outputs; return the prefixes of new parameters.

    ``features`` are the pretrained blocks' outputs for a probe batch (what
    the head reads). With ``reuse_head`` the pretrained head is kept and must
    already give ``n_out`` outputs per sample (``outputs()`` says what they are,
    for the error); otherwise a new head (:func:`make_head`) replaces it,
    initialised under ``seed``.
    """
    if reuse_head:
        if not net.has_head:
            raise ValueError(
                "reuse_head=True but the pretrained model has no head (it is an "
                "encoder); use reuse_head=False."
            )
        with torch.no_grad():
            out = net.forward_head(features)
        if out.ndim != 2 or out.shape[1] != n_out:
            raise ValueError(
                f"reuse_head=True needs the pretrained head to output {n_out} values "
                f"per sample ({outputs()}), but it outputs "
                f"{tuple(out.shape[1:])}. Use reuse_head=False for a new head."
            )
        if hidden or dropout:
            warnings.warn(
                "head_hidden_sizes and dropout are ignored when reuse_head=True.",
                UserWarning, stacklevel=4,
            )
        return ()
    # the head's input: features per sample (a map or tokens get pooled first)
    channel_axis = -1 if features.ndim == 2 or net.channels_last else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net.head = make_head(int(features.shape[channel_axis]), n_out, hidden, dropout,
                             features.ndim > 2, net.channels_last)
    net.post_head = nn.Identity()
    net.has_head = True
    net.head_name = "head (new)"
    return ("head.",)
