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

Two more regularisers depend on the batch's *features* rather than on the
parameters (``FEATURE_PENALTIES``); ``TransferNet`` captures the input of the
head on each training batch and adds them, always through autograd:

* ``"bss"``: batch spectral shrinkage (Chen et al., NeurIPS 2019),
  :func:`bss_penalty`: R = the sum of the squares of the ``k`` smallest
  singular values of the batch's feature matrix (the head's input);
* ``"co_tuning"``: Co-Tuning (You et al., NeurIPS 2020),
  :func:`co_tuning_loss`: the pretrained head, kept next to the new one while
  training, learns to predict ``p(z | y)``, the source classes ``z`` that the
  target label ``y`` of each sample translates to; that relationship is the
  empirical joint of LEEP (:func:`label_joint`) normalised per target class
  (:func:`category_relationship`, the paper's "direct approach").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

#: penalties computed from the batch's head-input features, not from the parameters
FEATURE_PENALTIES = ("bss", "co_tuning")
#: singular values shrunk by "bss": the paper's k = 1 (its best setting)
BSS_K = 1
#: alpha="auto": the strength of each penalty (AUTO_ALPHA[None] for the others)
AUTO_ALPHA = {"co_tuning": 1.0, None: 1e-3}


def auto_alpha(kind):
    """``alpha="auto"``'s value for the penalty ``kind``: 1.0 for ``"co_tuning"`` (a
    cross-entropy, weighed like the data loss; You et al. use 1 to 3), 1e-3 for the
    others (a sum over parameters or singular values: Li et al.'s L2-SP, Chen et
    al.'s BSS strength)."""
    return AUTO_ALPHA.get(kind, AUTO_ALPHA[None])


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


def _floats(scalars):
    """The Python floats of 0-d tensors: read one by one on the CPU (cheaper, per
    training step, than stacking them first), through one stacked copy on another
    device (one synchronisation)."""
    if scalars[0].device.type == "cpu":
        return [float(s) for s in scalars]
    return torch.stack(scalars).tolist()


@torch.no_grad()
def penalty_and_gradient(kind, pretrained, anchors, new):
    """``(R, params, grads)``: the penalty and its gradient, without autograd.

    Only parameters that train now (``requires_grad``) count: with gradual
    unfreezing, blocks still frozen get no gradient (and so no optimizer step).
    ``R`` is a Python float (it only joins the reported objective: no graph, and
    fewer tensor operations per step), ``None`` when there is nothing to
    penalise. The caller adds ``alpha * grads[i]`` to ``params[i].grad``.
    """
    keep = [i for i, p in enumerate(pretrained) if p.requires_grad]
    pretrained = [pretrained[i] for i in keep]
    new = [p for p in new if p.requires_grad]
    if kind == "l1":
        params = pretrained + new
        if not params:
            return None, [], []
        value = sum(_floats(torch._foreach_norm(params, 1)))
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
    value = 0.5 * sum(v * v for v in _floats(torch._foreach_norm(grads, 2)))
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


# --------------------------------------------------------------------------- on features
def bss_penalty(features, k=BSS_K):
    """Batch spectral shrinkage: ``sum_{i=1..k} sigma_{-i}^2`` of the features.

    ``features`` is the batch's ``(n, d)`` feature matrix; ``sigma_{-i}`` its
    ``i``-th smallest singular value (of ``min(n, d)``). Shrinking the smallest
    singular values suppresses the feature directions that the few target
    labels cannot estimate well, where negative transfer hides (Chen et al.,
    "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral Shrinkage
    for Safe Transfer Learning", NeurIPS 2019). ``torch.linalg.svdvals``: its
    gradient stays finite even for repeated singular values.
    """
    s = torch.linalg.svdvals(features.reshape(len(features), -1).float())  # descending
    return s[-k:].pow(2).sum()


def co_tuning_loss(source_logits, target_dist, weights=None):
    """Cross-entropy of the source head's predictions against ``p(z | y)`` per sample.

    ``source_logits`` ``(n, n_source)`` come from the pretrained head on the
    batch's features; ``target_dist`` ``(n, n_source)`` are the rows of
    :func:`category_relationship` for the samples' target labels. A weighted
    mean with ``weights``, as for the data loss.
    """
    logp = torch.log_softmax(source_logits.float(), dim=1)
    per_sample = -(target_dist.to(logp.device) * logp).sum(dim=1)
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample.device)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)


def label_joint(P, y_idx, n_classes=None):
    """The empirical joint ``P(y, z) = 1/n sum_{i: y_i = y} P_iz`` of target labels
    ``y`` and source classes ``z``, ``(n_classes, n_source)``.

    ``P`` holds the source model's class probabilities on the target samples,
    ``y_idx`` their encoded labels. LEEP (Nguyen et al., 2020) scores
    transferability with it (``metrics.leep_score``); Co-Tuning translates
    target labels into source classes with it (:func:`category_relationship`).
    """
    n = len(y_idx)
    n_classes = int(y_idx.max()) + 1 if n_classes is None else int(n_classes)
    onehot = sparse.csr_matrix((np.ones(n), (y_idx, np.arange(n))), shape=(n_classes, n))
    return np.asarray(onehot @ P) / n


def category_relationship(P, y_idx, n_classes):
    """``p(z | y)``: the mean source-class probabilities of each target class.

    The rows of :func:`label_joint` normalised to sum to 1 (You et al.'s
    "direct approach" to the category relationship). A class without samples
    gets a uniform row.
    """
    joint = label_joint(P, y_idx, n_classes)
    py = joint.sum(axis=1, keepdims=True)
    uniform = np.full_like(joint, 1.0 / joint.shape[1])
    return np.divide(joint, py, out=uniform, where=py > 0)
