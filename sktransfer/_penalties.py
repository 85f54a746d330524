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

Two ways to the same step: :func:`penalty_value` builds ``R`` in the autograd
graph (used under Hugging Face accelerate, whose backward rescales the loss);
:func:`penalty_and_gradient` computes ``R`` and its gradient directly, with
fused multi-tensor operations and no graph, for the training step to add to
the gradients after the backward pass: on a large network that saves most of
what the penalty costs.
"""

from __future__ import annotations

import torch

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


@torch.no_grad()
def penalty_and_gradient(kind, pretrained, anchors, new):
    """``(R, params, grads)``: the penalty and its gradient, without autograd.

    Only parameters that train now (``requires_grad``) count: with gradual
    unfreezing, blocks still frozen get no gradient (and so no optimizer step).
    ``R`` is ``None`` when there is nothing to penalise. The caller adds
    ``alpha * grads[i]`` to ``params[i].grad``.
    """
    keep = [i for i, p in enumerate(pretrained) if p.requires_grad]
    pretrained = [pretrained[i] for i in keep]
    new = [p for p in new if p.requires_grad]
    if kind == "l1":
        params = pretrained + new
        if not params:
            return None, [], []
        value = torch.stack(torch._foreach_norm(params, 1)).sum()
        return value, params, list(torch._foreach_sign(params))
    if kind == "l2_sp":
        # pretrained parameters: theta - theta_s; new ones: theta (as for "l2")
        grads = (list(torch._foreach_sub(pretrained, [anchors[i] for i in keep]))
                 if pretrained else [])
        params, grads = pretrained + new, grads + [p.detach() for p in new]
    else:  # "l2"
        params = pretrained + new
        grads = [p.detach() for p in params]
    if not params:
        return None, [], []
    value = 0.5 * torch.stack(torch._foreach_norm(grads, 2)).pow(2).sum()
    return value, params, grads


@torch.no_grad()
def add_gradient(params, grads, alpha):
    """``p.grad += alpha * g`` for each pair (``p.grad = alpha * g`` when unset)."""
    have = [i for i, p in enumerate(params) if p.grad is not None]
    if have:
        torch._foreach_add_([params[i].grad for i in have], [grads[i] for i in have],
                            alpha=alpha)
    for i, p in enumerate(params):
        if p.grad is None:
            p.grad = grads[i].mul(alpha)
