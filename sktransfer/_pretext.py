"""The pretext tasks of :class:`~sktransfer.TabularPretrainer`, and the skorch net
that trains them.

Both tasks corrupt a row by replacing cells with values of the same column drawn
from other training rows (:class:`_ReplacementPool`, :func:`_corrupt`); a missing
cell is always replaced. ``"masked"`` (VIME) reconstructs the values and the mask
(:func:`_masked_loss`); ``"contrastive"`` (SCARF) pulls two corrupted views of a
row together (:func:`_nt_xent`). :class:`_PretrainNet` overrides skorch's
``infer`` (corrupt, then run the encoder and the pretext heads) and ``get_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from skorch import NeuralNet
from skorch.utils import to_tensor
from torch import nn

from ._accelerate import compute_device
from ._device import MixedPrecision
from ._net import RollbackOnInterrupt

__all__ = ["PretrainModule", "ReplacementPool", "PretrainNet"]


class _PretrainModule(nn.Module):
    """Encoder plus the pretext heads (discarded after ``fit``)."""

    def __init__(self, encoder, n_features, width, method):
        super().__init__()
        self.encoder = encoder
        if method == "masked":
            self.mask_decoder = nn.Linear(width, n_features)
            self.value_decoder = nn.Linear(width, n_features)
        else:  # SCARF's projection head: a 2-layer MLP
            self.projector = nn.Sequential(
                nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )

    def forward(self, x, original=None):
        """The pretext outputs, in one forward (so distributed data parallel, which
        synchronises gradients through ``forward``, sees the whole step).

        ``method="masked"``: ``x`` is the corrupted batch, ``original`` the clean
        one; returns the mask logits, the reconstructed values and their target
        (the standardised original). ``"contrastive"``: ``x`` holds both views;
        returns their projections.
        """
        h = self.encoder(x)
        if original is None:
            return self.projector(h)
        return {"mask_logits": self.mask_decoder(h), "values": self.value_decoder(h),
                "target": self.encoder.blocks[0][0](original)}


class _ReplacementPool:
    """The training rows that corruption draws replacement values from.

    ``values`` is ``(n, d)``. Without missing cells every row is a candidate
    (``n_observed`` is ``None``); with them, each column's observed values come
    first, in row order, and ``n_observed[j]`` counts them, so that a draw is
    uniform over the observed values of the column (its empirical marginal).
    ``learnable[j]``: the column has at least two distinct observed values, so
    the masked task has something to predict in it (a replaced cell of a
    constant column is equal to the original, and its value is known).
    """

    def __init__(self, values, n_observed=None, learnable=None):
        self.values, self.n_observed, self.learnable = values, n_observed, learnable

    @classmethod
    def from_rows(cls, X):
        """From the training rows ``X`` (a float tensor, NaN for missing cells)."""
        missing = torch.isnan(X)
        low = torch.where(missing, torch.inf, X).amin(dim=0)
        high = torch.where(missing, -torch.inf, X).amax(dim=0)
        learnable = high > low  # False for constant and entirely missing columns
        if not missing.any():
            return cls(X, None, learnable)
        # a stable sort of "is missing" puts each column's observed values first
        order = torch.argsort(missing.to(torch.int8), dim=0, stable=True)
        return cls(torch.gather(X, 0, order), (~missing).sum(dim=0), learnable)

    def loss_weight(self, x):
        """1 for the cells of ``x`` the masked task learns from (observed, in a
        learnable column), else 0."""
        return ((~torch.isnan(x)) & self.learnable).to(x.dtype)

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return _ReplacementPool(move(self.values), move(self.n_observed), move(self.learnable))


def _corrupt(x, pool, mask_rate, generator):
    """Replace each cell with probability ``mask_rate``, and every missing cell, by
    the same column of a random row of ``pool`` (a :class:`_ReplacementPool`:
    observed values only); return ``(x_corrupted, mask)``.

    The random draws come from ``generator`` (on the CPU, so results do not
    depend on the device). A column with no observed value stays missing (the
    encoder's standardisation fills it with the mean).
    """
    n, d = x.shape
    mask = torch.rand((n, d), generator=generator) < mask_rate
    if pool.n_observed is None:
        rows = torch.randint(len(pool.values), (n, d), generator=generator)
    else:
        # uniform over each column's observed values, which come first in the pool
        counts = pool.n_observed.cpu()
        rows = (torch.rand((n, d), generator=generator) * counts).long()
        rows = torch.minimum(rows, (counts - 1).clamp(min=0))
    mask, rows = mask.to(x.device), rows.to(x.device)
    mask = mask | torch.isnan(x)  # a missing cell is always replaced
    replacement = torch.gather(pool.values, 0, rows)  # [i, j] = pool[rows[i, j], j]
    return torch.where(mask, replacement, x), mask.to(x.dtype)


def _masked_loss(y_pred):
    """VIME's two losses, averaged over the cells they can learn from.

    A cell counts when its original value is observed (a missing cell has no
    value to reconstruct, and it is replaced in every corruption, so its mask
    is known) and its column is not constant on the training rows (nothing to
    reconstruct or to detect there). With every cell counting, these are the
    plain means.
    """
    weight = y_pred["weight"]
    total = weight.sum().clamp(min=1.0)
    mse = (weight * (y_pred["values"] - y_pred["target"]) ** 2).sum() / total
    bce = F.binary_cross_entropy_with_logits(y_pred["mask_logits"], y_pred["mask"],
                                             reduction="none")
    return mse, (weight * bce).sum() / total


def _nt_xent(z1, z2, temperature):
    """InfoNCE / NT-Xent over ``2n`` views: view ``i``'s positive is its twin."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pairs, float("-inf"))
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, twin)


class _PretrainNet(RollbackOnInterrupt, MixedPrecision, NeuralNet):
    """skorch ``NeuralNet`` whose batches are corrupted inside the step.

    ``infer`` corrupts the batch (from a seeded generator: one for training that
    runs on across epochs, one for validation that restarts every epoch, so that
    the validation loss of all epochs is measured on the same corruptions) and
    runs the encoder and the pretext heads; ``get_loss`` computes the pretext
    loss and records its parts in the history.
    """

    def __init__(self, module, *args, method="masked", mask_rate=0.3, temperature=1.0,
                 pool=None, corruption_seed=0, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.method = method
        self.mask_rate = mask_rate
        self.temperature = temperature
        self.corruption_seed = corruption_seed
        self.pool_ = pool  # _ReplacementPool: the training rows (CPU)

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        # here rather than in ``initialize``, which AccelerateMixin replaces
        super().on_train_begin(net, X=X, y=y, **kwargs)
        self.pool_ = self.pool_.to(compute_device(self))
        self.train_rng_ = torch.Generator().manual_seed(self.corruption_seed)
        self.valid_rng_ = torch.Generator()

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training:
            self.valid_rng_.manual_seed(self.corruption_seed + 1)
        return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        module = self.module_
        rng = self.train_rng_ if module.training else self.valid_rng_
        if self.method == "masked":
            x_tilde, mask = _corrupt(x, self.pool_, self.mask_rate, rng)
            return {**module(x_tilde, x), "mask": mask, "weight": self.pool_.loss_weight(x)}
        view1, _ = _corrupt(x, self.pool_, self.mask_rate, rng)
        view2, _ = _corrupt(x, self.pool_, self.mask_rate, rng)
        both = module(torch.cat([view1, view2]))
        return {"z1": both[: len(x)], "z2": both[len(x):]}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if self.method == "masked":
            mse, bce = _masked_loss(y_pred)
            prefix = "train" if training else "valid"
            self.history.record_batch(f"{prefix}_value_mse", mse.item())
            self.history.record_batch(f"{prefix}_mask_bce", bce.item())
            return mse + bce
        return _nt_xent(y_pred["z1"], y_pred["z2"], self.temperature)


PretrainModule, ReplacementPool, PretrainNet = _PretrainModule, _ReplacementPool, _PretrainNet
