"""Regularisers R(theta) for ``min L(theta) + alpha * R(theta)``.

All are sums over the *trainable* parameters (frozen blocks are left out:
they do not move, so they would only add a constant):

* ``"l2"``:    R = 1/2 * sum ||theta||^2
* ``"l1"``:    R = sum |theta|
* ``"l2_sp"``: R = 1/2 * sum_{pretrained} ||theta - theta_s||^2
  + 1/2 * sum_{new head} ||theta||^2   (Li, Grandvalet & Davoine, ICML 2018)

``theta_s`` are the pretrained values at the start of ``fit``. ``L`` is the
mean loss over the samples of a mini-batch, so ``alpha`` weighs the
regulariser against a per-sample loss, once per optimisation step.
"""

from __future__ import annotations

import torch

PENALTIES = (None, "l2", "l1", "l2_sp")


def _sq(params):
    return torch.stack([p.pow(2).sum() for p in params]).sum() if params else None


def penalty_value(kind, pretrained, anchors, new):
    """The penalty ``R`` (a scalar tensor) or ``None`` when there is nothing to penalise.

    Parameters
    ----------
    kind : {"l2", "l1", "l2_sp"}
    pretrained : list of Parameter
        Trainable parameters that come from the pretrained model.
    anchors : list of Tensor
        Their pretrained values ``theta_s`` (same order), for ``"l2_sp"``.
    new : list of Parameter
        Trainable parameters created for the target task (the new head).
    """
    terms = []
    if kind == "l2":
        params = pretrained + new
        if params:
            terms.append(0.5 * _sq(params))
    elif kind == "l1":
        params = pretrained + new
        if params:
            terms.append(torch.stack([p.abs().sum() for p in params]).sum())
    elif kind == "l2_sp":
        if pretrained:
            terms.append(0.5 * torch.stack(
                [(p - a).pow(2).sum() for p, a in zip(pretrained, anchors)]
            ).sum())
        if new:
            terms.append(0.5 * _sq(new))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
