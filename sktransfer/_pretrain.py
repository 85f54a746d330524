"""TabularPretrainer: self-supervised pretraining of an MLP encoder on unlabeled rows.

Two pretext tasks, both built on the same corruption: each cell is replaced,
with probability ``mask_rate``, by the value of the same column in a random
training row (a draw from the column's empirical marginal distribution). A
missing cell (NaN) is a cell that is always replaced, by an observed value of
its column.

* ``"masked"`` (VIME, Yoon et al. 2020): from the encoding of the corrupted
  row, one linear decoder predicts which cells were replaced (binary
  cross-entropy) and another the original, standardised values (mean squared
  error); both losses skip the cells nothing can be learned from (missing
  cells, columns constant on the training rows).
* ``"contrastive"`` (SCARF, Bahri et al. 2022): two independently corrupted
  views of each row go through the encoder and a projection head; InfoNCE
  (NT-Xent) pulls the two views of a row together and pushes the other rows of
  the batch away.

Training runs in a private skorch ``NeuralNet`` (``_pretext.PretrainNet``) that only
overrides ``infer`` (corrupt, then run the encoder and the pretext heads) and
``get_loss`` (the pretext loss, its parts recorded in the history); skorch owns
the loop, callbacks, early stopping and the epoch table. Only the encoder is
kept: it is a :class:`~sktransfer.BlockNet` whose blocks are the hidden layers,
so a fitted pretrainer is a valid ``model=`` for the other estimators.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted, validate_data
from skorch.callbacks import PassthroughScoring
from torch import nn

from ._accelerate import resolve_accelerator
from ._base import (
    one_fit_at_a_time,
    seed_from_random_state,
    unchanged_on_error,
)
from ._blocknet import BlockNet
from ._device import seeded_rng
from ._docstrings import fill_doc
from ._inputs import (
    InputData,
    check_missing,
    check_real,
    clearer_errors,
    source_nan_columns,
)
from ._net import BatchDataset
from ._pretext import PretrainModule, PretrainNet, ReplacementPool
from ._trainer import Trainer
from ._weights import ResolvedModel

__all__ = ["TabularPretrainer"]

_METHODS = ("masked", "contrastive")
_TABLE = "a 2-D array or DataFrame of numbers (n_samples, n_features)"


# -- the network ------------------------------------------------------------------
class _Standardize(nn.Module):
    """Parameter-free ``(x - mean) / scale`` with the statistics as buffers; a
    missing cell (NaN) becomes 0, the column's mean.

    It is the first layer of the encoder, so the encoder takes raw ``X`` wherever
    it is transferred (fine-tuning, feature extraction, ``list_blocks``).
    ``nan_columns`` (bool per column; validation metadata, not a buffer) marks
    the columns that had missing cells in the rows the statistics come from:
    the estimators built on this encoder accept NaN there
    (:func:`~sktransfer._inputs.source_nan_columns`).
    """

    def __init__(self, mean, scale, nan_columns=None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.nan_columns = (np.zeros(len(mean), bool) if nan_columns is None
                            else np.asarray(nan_columns, bool))

    def forward(self, x):
        z = (x - self.mean) / self.scale
        return torch.where(torch.isnan(z), 0.0, z)

    def extra_repr(self):
        return f"n_features={self.mean.numel()}"


def _build_encoder(mean, scale, hidden_layer_sizes, dropout=0.0, nan_columns=None):
    """The encoder as a ``BlockNet``: block ``i`` is ``Linear -> ReLU [-> Dropout]``.

    Block 0 starts with the parameter-free standardisation. The weights are
    PyTorch's default initialisation (seed the global RNG for reproducibility).
    """
    blocks, width = [], len(mean)
    for i, size in enumerate(hidden_layer_sizes):
        layers = [_Standardize(mean, scale, nan_columns)] if i == 0 else []
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append((f"layer{i}", nn.Sequential(*layers)))
        width = size
    return BlockNet(blocks, head=None, split_kind="family:tabular_pretrainer")


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


def _column_statistics(X, names=None):
    """Column means and scales of the ``fit`` rows, as ``StandardScaler`` computes
    them: missing cells ignored, scale 1 for a constant column (so that a column
    constant in one fold of a search, or in the whole table, is no error). A
    column without any observed value gets mean 0 and scale 1, with a warning.
    """
    missing = np.isnan(X)
    empty = missing.all(axis=0)
    if empty.any():
        which = np.flatnonzero(empty)
        what = ([str(names[i]) for i in which[:10]] if names is not None
                else which[:10].tolist())
        warnings.warn(
            f"X has {which.size} column(s) with no observed value (all NaN): {what}"
            f"{' ...' if which.size > 10 else ''}. The encoder sees them as missing "
            "everywhere (their mean, 0 after standardisation); they carry no "
            "information. Drop them from every X if they stay empty.",
            UserWarning, stacklevel=4,
        )
    scaler = StandardScaler().fit(np.where(empty, 0.0, X))
    return scaler.mean_, scaler.scale_, missing.any(axis=0)


# -- the estimator ----------------------------------------------------------------
@fill_doc
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

      with weight 1 on both terms (VIME's mask and reconstruction losses),
      the means running over the cells there is something to learn from:
      every observed cell of a column that is not constant on the training
      rows. ``history_`` also holds the two parts,
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
    ``fit`` rows (``mean_``, ``scale_``), as
    :class:`~sklearn.preprocessing.StandardScaler` computes them: a column that
    is constant on those rows (in the whole table, or only in one fold of a
    search) gets scale 1, stays in ``n_features_in_``, and the masked task
    skips it. The standardisation is the encoder's first layer, so the encoder
    takes raw ``X`` wherever it goes; the reconstruction target is the
    standardised row, so no column dominates the loss by its units.

    Missing cells (NaN) are welcome in ``fit``: the statistics ignore them, a
    missing cell is a cell that is always corrupted (replaced by an observed
    value of its column from another row) and has no loss in the masked task,
    and the encoder's standardisation fills a missing cell with the column's
    mean (0 once standardised). ``transform`` and every estimator built on the
    pretrainer (``model=pre``) accept NaN in the columns that had missing
    cells in ``fit``; NaN in another column raises a ``ValueError`` (impute it,
    or pretrain on rows with missing cells in that column).

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
    {device_params}
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
        Column means of the observed cells of the ``fit`` rows.
    scale_ : ndarray of shape (``n_features_in_``,)
        Column standard deviations of the observed cells of the ``fit`` rows;
        1 for a constant column.
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
    sklearn.preprocessing.StandardScaler : the same statistics, for other models.

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
    _net_class = PretrainNet
    _fitted_modules = ("encoder_",)
    _loss_name = "pretraining loss"

    def __init__(self, hidden_layer_sizes=(256, 256), method="masked", mask_rate=0.3, *,
                 temperature=1.0, dropout=0.0, lr=1e-3, weight_decay=0.0, max_epochs=100,
                 batch_size=128, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, random_state=None, device="auto",
                 precision="32", accelerator=None, verbose=0, net_kwargs=None):
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
        self.precision = precision
        self.accelerator = accelerator
        self.verbose = verbose
        self.net_kwargs = net_kwargs

    # -- fit ---------------------------------------------------------------------
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
            Unlabeled numeric rows, at least 2, no infinite value; NaN marks a
            missing cell.
        y : None
            Ignored.

        Returns
        -------
        self : TabularPretrainer
        """
        check_real(X, "X", "TabularPretrainer", what=_TABLE)
        with clearer_errors("X"):
            X = validate_data(self, X, reset=True, dtype=[np.float64, np.float32],
                              ensure_min_samples=2, ensure_all_finite="allow-nan")
        hidden = _check_hidden(self.hidden_layer_sizes)
        accelerator, device = resolve_accelerator(self.accelerator, self.device)
        mean, scale, nan_columns = _column_statistics(X, getattr(self, "feature_names_in_", None))
        seed = seed_from_random_state(self.random_state)
        with seeded_rng(seed):
            encoder = _build_encoder(mean, scale, hidden, self.dropout, nan_columns)
            module = PretrainModule(encoder, X.shape[1], hidden[-1], self.method)
        train_idx, valid_idx = self._validation_split(len(X), seed=seed, unit="rows")
        dataset = BatchDataset(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
        net = self._make_net(
            module, dataset, train_idx, valid_idx, device, accelerator, method=self.method,
            mask_rate=float(self.mask_rate), temperature=float(self.temperature),
            pool=ReplacementPool.from_rows(dataset.X[torch.as_tensor(train_idx)]),
            corruption_seed=seed + 1)
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
            Raw rows (the encoder standardises them itself); NaN is accepted in
            the columns that had missing cells in ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``), dtype float32
        """
        check_is_fitted(self, "encoder_")
        check_real(X, "X", "TabularPretrainer", what=_TABLE)
        nan_columns = source_nan_columns(self.encoder_)
        with clearer_errors("X"):
            X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64],
                              ensure_all_finite=True if nan_columns is None else "allow-nan")
        check_missing(X, nan_columns, self)
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
        tags.input_tags.allow_nan = True  # missing cells are masked cells
        tags.requires_fit = True
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
