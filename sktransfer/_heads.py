"""The head of a fine-tuned network: a new one sized from ``y``, or the pretrained one.

:func:`attach_head` puts the head on the resolved ``BlockNet`` and says which
parameters are new for the target task (they train at ``lr``; the other ones at
``lr * backbone_lr_scale``, and ``penalty="l2_sp"`` pulls only those toward
their pretrained values). A new head reads the features the blocks give before
the pretrained head; a feature map or a sequence of tokens is pooled first
(``GlobalPool``).

:func:`probe_head` makes the new head start where a linear probe ends (LP-FT,
Kumar et al., ICLR 2022): the head's input is standardised with the training
features' statistics (a fixed ``Standardize`` layer) and its linear layer takes
the coefficients of scikit-learn's ``LogisticRegressionCV`` / ``RidgeCV`` fitted
on those features; fine-tuning keeps the probe's own L2 strength on the head.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
try:  # joblib >= 1.3
    from joblib import parallel_config
except ImportError:  # pragma: no cover
    from joblib import parallel_backend as parallel_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from ._blocknet import GlobalPool
from ._device import seeded_rng
from ._frozen_store import RESULTS
from ._inputs import iter_batches

__all__ = ["Standardize", "add_standardize", "attach_head", "check_hidden_sizes",
           "class_folds", "has_probe_head", "head_features", "make_head", "probe_head"]

#: scikit-learn >= 1.9 changes LogisticRegressionCV's defaults: take the new ones now
_LEGACY_OFF = ({"use_legacy_attributes": False, "l1_ratios": (0.0,)}
               if "use_legacy_attributes" in LogisticRegressionCV().get_params() else {})

#: the regularisation grids of the probe: C for the classifier, alpha for the regressor
PROBE_GRID = np.logspace(-3, 3, 13)


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
    with seeded_rng(seed):
        net.head = make_head(int(features.shape[channel_axis]), n_out, hidden, dropout,
                             features.ndim > 2, net.channels_last)
    net.post_head = nn.Identity()
    net.has_head = True
    net.head_name = "head (new)"
    return ("head.",)


class Standardize(nn.Module):
    """``(x - mean) / scale`` with fixed statistics (buffers, saved with the weights).

    The head's input as scikit-learn's ``StandardScaler`` would give it: a
    constant feature gets scale 1.
    """

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.scale


def class_folds(y, seed=None):
    """The folds that choose a setting on few labelled rows: at most 3, stratified,
    no more than the smallest class has samples, shuffled with ``seed`` unless it is
    ``None``; ``None`` when a class has a single sample (nothing to compare).

    The probe's ``LogisticRegressionCV`` and ``freeze_depth="auto"`` use them.
    """
    _, counts = np.unique(np.asarray(y), return_counts=True)
    n_splits = min(3, int(counts.min()))
    if n_splits < 2:
        return None
    return StratifiedKFold(n_splits, shuffle=seed is not None, random_state=seed)


def _neg_log_loss(estimator, X, y, sample_weight=None):
    """scikit-learn's ``"neg_log_loss"`` scorer without its input checks.

    ``LogisticRegressionCV`` scores each of its 13 strengths on each fold; on a
    probe of 256 rows the checks of ``log_loss`` (labels, probabilities summing
    to one) took a third of the probe's time, and here the labels and
    probabilities come from the model itself. Same clipping as ``log_loss``.
    """
    p = estimator.predict_proba(X)[np.arange(len(y)), np.searchsorted(estimator.classes_, y)]
    losses = -np.log(np.clip(p, np.finfo(p.dtype).eps, 1.0))
    return -float(np.average(losses, weights=sample_weight))


#: a probe with at most this many feature values fits with one BLAS thread
SMALL_PROBE = 2 ** 20


def _fit_linear(Z, y, classification, n_out, weights):
    """``(coef (n_out, d), intercept (n_out,), L2 strength of the head)``.

    scikit-learn's regularised linear models, the strength chosen by their own
    cross-validation: ``LogisticRegressionCV`` (stratified folds; a fixed C=1
    when a class has a single sample) or ``RidgeCV`` (leave-one-out). The
    strength is returned in the net's terms, ``loss + l2/2 * ||W||^2`` with the
    loss a (weighted) mean over samples: ``1 / (C * sum(w))`` for the logistic
    loss, ``2 * alpha / (sum(w) * n_out)`` for the squared error averaged over
    the outputs; the optimum of fine-tuning the head alone is then the probe's.
    """
    total = float(weights.sum())
    # one BLAS thread for a small probe (threadpoolctl: scikit-learn's own dependency):
    # L-BFGS makes thousands of tiny BLAS calls, which more threads do not speed up; on a
    # busy 2-core machine, spinning BLAS threads made a 50-row digits probe take 12 s
    # instead of 0.1 s (inside joblib workers the limit is already one thread)
    limit = 1 if Z.size <= SMALL_PROBE else None
    with warnings.catch_warnings(), threadpool_limits(limits=limit, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if not classification:
            model = RidgeCV(alphas=PROBE_GRID).fit(Z, y, sample_weight=weights)
            coef = np.asarray(model.coef_).reshape(n_out, -1)
            intercept = np.asarray(model.intercept_).reshape(n_out)
            return coef, intercept, 2.0 * float(model.alpha_) / (total * n_out)
        present = np.unique(y)
        folds = class_folds(y)
        if folds is not None:
            model = LogisticRegressionCV(Cs=PROBE_GRID, cv=folds, max_iter=1000, n_jobs=1,
                                         scoring=_neg_log_loss, **_LEGACY_OFF)
            # its folds in this thread: inside a search on a dask or Ray backend, joblib
            # would send them to the cluster, whose workers are busy with the search's
            # own fits (a deadlock, seen with 2 dask workers), even with n_jobs=1
            with parallel_config(backend="sequential"):
                model.fit(Z, y, sample_weight=weights)
            C = float(np.ravel(model.C_)[0])
        else:
            C = 1.0
            model = LogisticRegression(C=C, max_iter=1000).fit(Z, y, sample_weight=weights)
    w, b = model.coef_, model.intercept_
    if len(present) == 2:  # one logit z for the second class: softmax([-z/2, z/2])
        w, b = np.vstack([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    coef = np.zeros((n_out, Z.shape[1]))
    # a class absent from the training rows (validation split) is never predicted
    intercept = np.full(n_out, float(b.min()) - 10.0)
    coef[present], intercept[present] = w, b
    return coef, intercept, 1.0 / (C * total)


def _split_head(head):
    """``([GlobalPool] or [], the other layers)`` of a new head."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    return ([layers.pop(0)] if isinstance(layers[0], GlobalPool) else []), layers


def has_probe_head(net):
    """Whether ``net``'s head was made by :func:`probe_head` (it has a ``Standardize``)."""
    return isinstance(net.head, nn.Sequential) and any(
        isinstance(m, Standardize) for m in net.head)


def add_standardize(net):
    """Give a new head the structure of a probe head (a ``Standardize`` of unit
    statistics in front), for :func:`~sktransfer._persist.load_weights` to fill."""
    pool, layers = _split_head(net.head)
    n_in = next(m for m in layers if isinstance(m, nn.Linear)).in_features
    net.head = nn.Sequential(*pool, Standardize(np.zeros(n_in), np.ones(n_in)), *layers)


def probe_head(net, features, y, *, classification, sample_weight=None, memory=None):
    """Start ``net``'s new head from a linear probe on ``features``; return its L2 strength.

    ``features`` are the pretrained network's outputs before the head for the
    training rows, ``y`` the encoded targets (class codes, or an ``(n,
    n_out)`` array). The head becomes ``[pool] -> Standardize -> ...``: a
    linear head (with its dropout, if any) takes the probe's coefficients; an
    MLP head (``head_hidden_sizes``) only gets the standardised input and keeps
    its random initialisation, since a probe fits one linear layer. Returns the
    probe's L2 strength for the head's weight (0.0 for an MLP head). The probe
    goes through :data:`~sktransfer._frozen_store.RESULTS` (and ``memory``):
    the candidates of a search that share a fold share its probe.
    """
    pool, layers = _split_head(net.head)
    with torch.no_grad():
        x = pool[0](features) if pool else features
    F = x.double().cpu().numpy()
    w = np.ones(len(F)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w * (len(w) / w.sum())  # mean 1: the net's weighted mean loss ignores their scale
    # unweighted statistics, as a Pipeline(StandardScaler(), LogisticRegression())
    # fitted with sample weights for the linear model would have them
    scaler = StandardScaler().fit(F)
    net.head = nn.Sequential(*pool, Standardize(scaler.mean_, scaler.scale_), *layers)
    if any(not isinstance(m, (nn.Linear, nn.Dropout)) for m in layers):
        return 0.0  # an MLP head: standardised input, random layers
    linear = layers[-1]
    n_out = linear.out_features
    y = np.asarray(y)
    coef, intercept, l2 = RESULTS(_fit_linear, scaler.transform(F), y if classification else
                                  y.reshape(len(y), -1), classification, n_out, w,
                                  memory=memory)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=linear.bias.dtype))
    return l2


def head_features(net, data, preprocess, device, batch_size, start=0):
    """The pretrained network's outputs before the head for every row (eval mode, no
    gradient; a float32 CPU tensor): the probe's input.

    ``start > 0``: ``data`` is already the output of blocks ``0..start-1`` (a
    tensor, from the frozen-output store); the rest runs from there.
    """
    was_training = net.training
    net.to(device).eval()
    parts = []
    try:
        with torch.inference_mode():
            if start:
                for i in range(0, len(data), batch_size):
                    part = net.forward_features(data[i:i + batch_size].to(device).float(),
                                                start=start)
                    parts.append(part.to("cpu", torch.float32))
            else:
                for batch in iter_batches(data, batch_size, preprocess, device):
                    parts.append(net.forward_features(batch).to("cpu", torch.float32))
    finally:
        net.train(was_training)
    return torch.cat(parts)
