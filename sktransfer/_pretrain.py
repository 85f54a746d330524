"""TabularPretrainer: self-supervised pretraining of an MLP encoder on unlabeled rows.

Two pretext tasks, both built on the same corruption: each cell is replaced,
with probability ``mask_rate``, by the value of the same column in a random
training row (a draw from the column's empirical marginal distribution).

* ``"masked"`` (VIME, Yoon et al. 2020): from the encoding of the corrupted
  row, one linear decoder predicts which cells were replaced (binary
  cross-entropy) and another the original, standardised values (mean squared
  error).
* ``"contrastive"`` (SCARF, Bahri et al. 2022): two independently corrupted
  views of each row go through the encoder and a projection head; InfoNCE
  (NT-Xent) pulls the two views of a row together and pushes the other rows of
  the batch away.

Training runs in a private skorch ``NeuralNet`` (``_PretrainNet``) that only
overrides ``infer`` (corrupt, then run the encoder and the pretext heads) and
``get_loss`` (the pretext loss, its parts recorded in the history); skorch owns
the loop, callbacks, early stopping and the epoch table. Only the encoder is
kept: it is a :class:`~sktransfer.BlockNet` whose blocks are the hidden layers,
so a fitted pretrainer is a valid ``model=`` for the other estimators.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring
from skorch.utils import to_tensor
from torch import nn

from ._accelerate import compute_device, resolve_accelerator
from ._base import (
    one_fit_at_a_time,
    seed_from_random_state,
    unchanged_on_error,
)
from ._blocknet import BlockNet
from ._inputs import InputData, check_real, clearer_errors
from ._net import BatchDataset, RollbackOnInterrupt
from ._trainer import Trainer
from ._weights import ResolvedModel

__all__ = ["TabularPretrainer"]

_METHODS = ("masked", "contrastive")
_TABLE = "a 2-D array or DataFrame of numbers (n_samples, n_features)"


# -- the network ------------------------------------------------------------------
class _Standardize(nn.Module):
    """Parameter-free ``(x - mean) / scale`` with the statistics as buffers.

    It is the first layer of the encoder, so the encoder takes raw ``X`` wherever
    it is transferred (fine-tuning, feature extraction, ``list_blocks``).
    """

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.scale

    def extra_repr(self):
        return f"n_features={self.mean.numel()}"


def _build_encoder(mean, scale, hidden_layer_sizes, dropout=0.0):
    """The encoder as a ``BlockNet``: block ``i`` is ``Linear -> ReLU [-> Dropout]``.

    Block 0 starts with the parameter-free standardisation. The weights are
    PyTorch's default initialisation (seed the global RNG for reproducibility).
    """
    blocks, width = [], len(mean)
    for i, size in enumerate(hidden_layer_sizes):
        layers = [_Standardize(mean, scale)] if i == 0 else []
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append((f"layer{i}", nn.Sequential(*layers)))
        width = size
    return BlockNet(blocks, head=None, split_kind="family:tabular_pretrainer")


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


def _corrupt(x, pool, mask_rate, generator):
    """Replace each cell with probability ``mask_rate`` by the same column of a
    random row of ``pool``; return ``(x_corrupted, mask)``.

    The random draws come from ``generator`` (on the CPU, so results do not
    depend on the device).
    """
    n, d = x.shape
    mask = torch.rand((n, d), generator=generator) < mask_rate
    rows = torch.randint(len(pool), (n, d), generator=generator)
    mask, rows = mask.to(x.device), rows.to(x.device)
    replacement = torch.gather(pool, 0, rows)  # [i, j] = pool[rows[i, j], j]
    return torch.where(mask, replacement, x), mask.to(x.dtype)


def _nt_xent(z1, z2, temperature):
    """InfoNCE / NT-Xent over ``2n`` views: view ``i``'s positive is its twin."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pairs, float("-inf"))
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, twin)


class _PretrainNet(RollbackOnInterrupt, NeuralNet):
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
        self.pool_ = pool  # training rows to draw replacement values from (CPU)

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
            return {**module(x_tilde, x), "mask": mask}
        view1, _ = _corrupt(x, self.pool_, self.mask_rate, rng)
        view2, _ = _corrupt(x, self.pool_, self.mask_rate, rng)
        both = module(torch.cat([view1, view2]))
        return {"z1": both[: len(x)], "z2": both[len(x):]}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if self.method == "masked":
            mse = F.mse_loss(y_pred["values"], y_pred["target"])
            bce = F.binary_cross_entropy_with_logits(y_pred["mask_logits"], y_pred["mask"])
            prefix = "train" if training else "valid"
            self.history.record_batch(f"{prefix}_value_mse", mse.item())
            self.history.record_batch(f"{prefix}_mask_bce", bce.item())
            return mse + bce
        return _nt_xent(y_pred["z1"], y_pred["z2"], self.temperature)


def _check_hidden(hidden_layer_sizes):
    """``hidden_layer_sizes`` as a tuple of ints (element-wise: the constraints only
    say "array-like or a positive int")."""
    hidden = tuple(np.atleast_1d(np.asarray(hidden_layer_sizes, dtype=object)))
    if not hidden or any(
        isinstance(h, (bool, np.bool_)) or not isinstance(h, numbers.Integral) or h < 1
        for h in hidden
    ):
        raise ValueError(
            "hidden_layer_sizes must be a non-empty tuple of positive ints, e.g. "
            f"(256, 256); got {hidden_layer_sizes!r}."
        )
    return tuple(int(h) for h in hidden)


# -- the estimator ----------------------------------------------------------------
class TabularPretrainer(TransformerMixin, Trainer, BaseEstimator):
    """Self-supervised pretraining of an MLP encoder on unlabeled table rows.

    ``fit(X)`` learns an encoder from rows without labels; ``transform(X)``
    returns its embeddings. A fitted pretrainer is a valid ``model=`` for
    :class:`FineTunedClassifier`, :class:`FineTunedRegressor` and
    :class:`FeatureExtractorTransformer`: its hidden layers are the blocks
    (``layer0``, ``layer1``, ...), so ``freeze_depth`` and ``penalty="l2_sp"``
    work on them, and it has no head (the target estimator adds one).

    Both pretext tasks corrupt a row the same way: each cell is, independently
    with probability ``mask_rate``, replaced by the value of the same column in
    a random training row (a draw from the column's marginal distribution, so a
    corrupted cell is a plausible value, not a zero). The random draws come from
    a seeded ``torch.Generator`` inside each training step.

    * ``method="masked"`` (VIME, Yoon et al. 2020): two linear decoders read the
      encoding ``h`` of the corrupted row; one predicts the mask ``m`` (which
      cells were replaced), the other the original standardised row ``z``::

          loss = mean_ij (v_ij - z_ij)^2 + mean_ij BCE(sigmoid(l_ij), m_ij)

      with weight 1 on both terms (VIME's mask and reconstruction losses,
      every cell reconstructed). ``history_`` also holds the two parts,
      ``train_value_mse`` and ``train_mask_bce``. A cell replaced by an equal
      value (frequent in discrete columns) cannot be detected, so the BCE
      term does not go to zero.
    * ``method="contrastive"`` (SCARF, Bahri et al. 2022): two independently
      corrupted views of each row go through the encoder and a projection head
      ``g`` (``Linear -> ReLU -> Linear``); with ``u = g(f(view))/||g(f(view))||``
      and ``tau = temperature``, the NT-Xent loss over the ``2n`` views of a
      batch is::

          loss = -1/(2n) sum_i log( exp(u_i . u_i+ / tau) / sum_{k != i} exp(u_i . u_k / tau) )

      where ``i+`` is the other view of the same row.

    The pretext heads are discarded after ``fit``; only the encoder is kept.

    Every column is standardised with the mean and standard deviation of the
    ``fit`` rows (``mean_``, ``scale_``). The standardisation is the encoder's
    first layer, so the encoder takes raw ``X`` wherever it goes; the
    reconstruction target is the standardised row, so no column dominates the
    loss by its units. Constant columns are refused (reconstructing a constant
    is meaningless): drop them first.

    Inputs are numeric: encode categorical columns first, e.g. with a
    :class:`~sklearn.compose.ColumnTransformer` holding a
    :class:`~sklearn.preprocessing.OneHotEncoder` fitted once on all the
    unlabeled rows (see Examples), and apply that same fitted encoding before
    the fine-tuned estimator.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int or int, default=(256, 256)
        Width of each hidden layer of the encoder (``Linear -> ReLU``); the
        last one is the embedding size. One block per layer.
    method : {"masked", "contrastive"}, default="masked"
        The pretext task (see above).
    mask_rate : float, default=0.3
        Probability that a cell is corrupted, in ``(0, 1)``.
    temperature : float, default=1.0
        Temperature ``tau`` of the contrastive loss (SCARF's default);
        ignored when ``method="masked"``.
    dropout : float, default=0.0
        Dropout after each hidden layer of the encoder (kept in the transferred
        encoder; off in ``transform``).
    lr : float, default=1e-3
        Learning rate of the AdamW optimizer.
    weight_decay : float, default=0.0
        AdamW's decoupled weight decay.
    max_epochs : int, default=100
        Maximum number of passes over the rows.
    batch_size : int, default=128
        Rows per training step (and per forward pass in ``transform``). The
        contrastive loss uses the other rows of the batch as negatives.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows and stop when the
        self-supervised loss on them has not improved by ``tol`` (relative) for
        ``n_iter_no_change`` epochs; the best epoch's weights are restored. The
        held-out rows are corrupted the same way in every epoch.
    validation_fraction : float, default=0.1
        Share of the rows held out when ``early_stopping=True``.
    n_iter_no_change : int, default=10
        Patience of early stopping, in epochs.
    tol : float, default=1e-4
        Relative improvement of the validation loss that counts for early stopping.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, the shuffling, the corruptions, dropout and
        the validation split: the same seed and data give identical embeddings.
    device : str, default="auto"
        ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (CUDA when available).
    accelerator : accelerate.Accelerator, dict or None, default=None
        As in :class:`FineTunedClassifier` (Hugging Face ``accelerate``: several
        GPUs for one fit, mixed precision). ``batch_size`` is per process, and
        contrastive negatives come from each process's own batch.
    verbose : int, default=0
        0 silent; 1 skorch's table of losses per epoch; 2 also a progress bar.
    net_kwargs : dict or None, default=None
        Extra keyword arguments for the internal ``skorch.NeuralNet``, checked as
        in :class:`FineTunedClassifier`; ``{"callbacks": [...]}`` adds callbacks.

    Attributes
    ----------
    encoder_ : BlockNet
        The pretrained encoder (standardisation included), on ``device_``, in
        eval mode. Its output is the embedding.
    mean_ : ndarray of shape (``n_features_in_``,)
        Column means of the ``fit`` rows.
    scale_ : ndarray of shape (``n_features_in_``,)
        Column standard deviations of the ``fit`` rows.
    n_features_in_ : int
        Number of input columns.
    feature_names_in_ : ndarray of str
        Column names of a DataFrame ``X``.
    n_features_out_ : int
        Embedding size (``hidden_layer_sizes[-1]``).
    blocks_ : list of str
        The encoder's block names, ``["layer0", "layer1", ...]``.
    history_ : list of dict
        One dict per epoch: ``epoch``, ``train_loss``, ``valid_loss`` (with early
        stopping), for ``"masked"`` also ``train_value_mse``/``train_mask_bce``
        (and ``valid_*``), ``dur``.
    n_iter_ : int
        Number of epochs run.
    device_ : str
        The device the encoder is on.

    See Also
    --------
    FineTunedClassifier : fine-tune the pretrained encoder with a new head.
    FeatureExtractorTransformer : the encoder's (or one layer's) output as features.
    sklearn.feature_selection.VarianceThreshold : find constant columns to drop.

    Notes
    -----
    Self-supervised pretraining helps most when unlabeled rows are plentiful
    and labels scarce; with enough labels, gradient-boosted trees are often
    as good or better on tables. Compare against them.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import FineTunedClassifier
    >>> from sktransfer import TabularPretrainer
    >>> rng = np.random.RandomState(0)
    >>> X_unlabeled = rng.normal(size=(200, 5))
    >>> pre = TabularPretrainer(hidden_layer_sizes=(16, 16), max_epochs=5,
    ...                         random_state=0, device="cpu").fit(X_unlabeled)
    >>> pre.transform(X_unlabeled[:3]).shape
    (3, 16)
    >>> X, y = X_unlabeled[:20], (X_unlabeled[:20, 0] > 0).astype(int)
    >>> clf = FineTunedClassifier(model=pre, freeze_depth=1, max_epochs=5,
    ...                           random_state=0, device="cpu").fit(X, y)
    >>> clf.blocks_
    ['layer0', 'layer1']

    Categorical columns: one-hot encode them once, then use the same fitted
    encoding in front of the fine-tuned estimator:

    >>> import pandas as pd
    >>> from sklearn.compose import ColumnTransformer
    >>> from sklearn.frozen import FrozenEstimator
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import OneHotEncoder
    >>> df = pd.DataFrame({"city": rng.choice(["Oslo", "Lima", "Pune"], 200),
    ...                    "size": rng.normal(size=200)})
    >>> encode = ColumnTransformer(
    ...     [("cat", OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["city"])],
    ...     remainder="passthrough").fit(df)
    >>> pre = TabularPretrainer(hidden_layer_sizes=(8,), max_epochs=2, random_state=0,
    ...                         device="cpu").fit(encode.transform(df))
    >>> clf = make_pipeline(FrozenEstimator(encode), FineTunedClassifier(
    ...     model=pre, max_epochs=2, random_state=0, device="cpu"))
    >>> clf.fit(df[:20], y).predict(df[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        **Trainer._parameter_constraints,
        # every size a positive int: checked in _check_hidden
        "hidden_layer_sizes": [
            "array-like", Interval(numbers.Integral, 1, None, closed="left"),
        ],
        "method": [StrOptions(set(_METHODS))],
        "mask_rate": [Interval(numbers.Real, 0, 1, closed="neither")],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
    }
    _net_class = _PretrainNet
    _fitted_modules = ("encoder_",)
    _loss_name = "pretraining loss"

    def __init__(self, hidden_layer_sizes=(256, 256), method="masked", mask_rate=0.3, *,
                 temperature=1.0, dropout=0.0, lr=1e-3, weight_decay=0.0, max_epochs=100,
                 batch_size=128, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, random_state=None, device="auto",
                 accelerator=None, verbose=0, net_kwargs=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.method = method
        self.mask_rate = mask_rate
        self.temperature = temperature
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.accelerator = accelerator
        self.verbose = verbose
        self.net_kwargs = net_kwargs

    # -- fit ---------------------------------------------------------------------
    def _check_no_constant_columns(self, X):
        constant = np.flatnonzero(np.ptp(X, axis=0) == 0)
        if constant.size == 0:
            return
        names = getattr(self, "feature_names_in_", None)
        if names is not None:
            what = f"columns {[str(names[i]) for i in constant[:10]]}"
        else:
            what = f"column indices {constant[:10].tolist()}"
        more = f" (and {constant.size - 10} more)" if constant.size > 10 else ""
        raise ValueError(
            f"X has {constant.size} constant column(s): {what}{more}. Masked "
            "reconstruction of a constant is meaningless and it cannot be standardised. "
            "Drop these columns before pretraining, and from every X you later pass to "
            "the pretrainer or to an estimator built on it, e.g. keep = X.std(axis=0) > 0 "
            "or sklearn.feature_selection.VarianceThreshold().fit(X).get_support()."
        )

    # -- training stages (see _trainer.Trainer) --------------------------------------
    def _scoring_callbacks(self):  # the two parts of the masked loss
        names = [f"{p}_{part}" for p in ("train", "valid") for part in ("value_mse", "mask_bce")]
        return [(name, PassthroughScoring(name, lower_is_better=None,
                                          on_train=name.startswith("train")))
                for name in (names if self.method == "masked" else [])]

    def _divergence_advice(self):
        return " or a larger temperature." if self.method == "contrastive" else "."

    @_fit_context(prefer_skip_nested_validation=True)
    @one_fit_at_a_time
    @unchanged_on_error
    def fit(self, X, y=None):
        """Pretrain the encoder on the rows of ``X`` (no labels).

        Every call starts from a new random initialisation. A
        ``KeyboardInterrupt`` in the middle of an epoch ends the fit with the
        weights of the last completed epoch and a warning saying so.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, n_features)
            Unlabeled numeric rows, at least 2, no NaN/inf, no constant column.
        y : None
            Ignored.

        Returns
        -------
        self : TabularPretrainer
        """
        check_real(X, "X", "TabularPretrainer", what=_TABLE)
        with clearer_errors("X"):
            X = validate_data(self, X, reset=True, dtype=[np.float64, np.float32],
                              ensure_min_samples=2)
        hidden = _check_hidden(self.hidden_layer_sizes)
        accelerator, device = resolve_accelerator(self.accelerator, self.device)
        self._check_no_constant_columns(X)
        X64 = np.asarray(X, dtype=np.float64)
        mean, scale = X64.mean(axis=0), X64.std(axis=0)
        seed = seed_from_random_state(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = _build_encoder(mean, scale, hidden, self.dropout)
            module = _PretrainModule(encoder, X.shape[1], hidden[-1], self.method)
        train_idx, valid_idx = self._validation_split(len(X), seed=seed, unit="rows")
        dataset = BatchDataset(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
        net = self._make_net(
            module, dataset, train_idx, valid_idx, device, accelerator, method=self.method,
            mask_rate=float(self.mask_rate), temperature=float(self.temperature),
            pool=dataset.X[torch.as_tensor(train_idx)], corruption_seed=seed + 1)
        module, history = self._train(net, dataset, train_idx, seed, device,
                                      "random initialisation")
        encoder = module.encoder
        self.encoder_ = encoder
        self.mean_, self.scale_ = mean, scale
        self.n_features_out_ = hidden[-1]
        self.blocks_ = list(encoder.block_names)
        self.device_ = device
        self.history_ = history
        self.n_iter_ = len(history)
        return self

    # -- use -----------------------------------------------------------------------
    def transform(self, X):
        """Embeddings of ``X``: the encoder's output, in batches of ``batch_size``.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_samples, ``n_features_in_``)
            Raw rows (the encoder standardises them itself).

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``), dtype float32
        """
        check_is_fitted(self, "encoder_")
        check_real(X, "X", "TabularPretrainer", what=_TABLE)
        with clearer_errors("X"):
            X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return self._map_batches(InputData(X, "tabular"), self.encoder_).numpy()

    def get_feature_names_out(self, input_features=None):
        """Names ``embedding_0, embedding_1, ...`` of the output columns.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the input columns seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self, "n_features_out_")
        _check_feature_names_in(self, input_features, generate_names=False)
        return np.asarray([f"embedding_{i}" for i in range(self.n_features_out_)],
                          dtype=object)

    def __sktransfer_model__(self):
        """The pretrained encoder as a source model (the caller copies it)."""
        check_is_fitted(self, "encoder_")
        return ResolvedModel(
            net=self.encoder_, preprocess=None, input_shape=(self.n_features_in_,),
            description="fitted TabularPretrainer",
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.requires_fit = True
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
