"""FeatureExtractorTransformer: a frozen pretrained network as a scikit-learn transformer."""

from __future__ import annotations

import numbers
import os
import re

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from ._base import (
    TransferEstimatorMixin,
    seed_from_random_state,
    one_fit_at_a_time,
    unchanged_on_error,
)
from ._blocknet import pool_features
from ._blocks import freeze_all
from ._device import PRECISION_CONSTRAINT, autocast, autocast_dtype, resolve_device
from ._docstrings import fill_doc
from ._hf import is_text_net
from ._inputs import source_nan_columns, validate_input
from ._prefix_cache import frozen_then

__all__ = ["FeatureExtractorTransformer", "resolve_layer"]

_POOLINGS = ("avg", "max", "flatten", "mean", "cls")
_MEMORY_MB = 1024  # the budget of kept outputs with memory=, as the fine-tuners' cache_size


def resolve_layer(layer, net):
    """Map ``layer`` to ``stop`` for ``BlockNet.forward_features``.

    Returns ``(stop, name, after_head)``: ``stop=None`` means the head's input.
    """
    names = net.block_names
    n = len(names)
    if layer is None or layer == "head_input":
        return None, "head_input", False
    if layer == "head":
        return None, "head", True
    if isinstance(layer, (bool, np.bool_)):
        # an int to the constraints; True/False as a layer is surely a mistake
        raise TypeError(f"layer must be an int, a block name or None, got {layer!r}.")
    if isinstance(layer, (int, np.integer)):
        if not -n <= layer < n:
            raise ValueError(
                f"layer={layer} is out of range: the model has {n} blocks {names}, so use "
                f"an index in [{-n}, {n - 1}], a block name, or None for the head's input."
            )
        idx = int(layer) % n
        return idx + 1, names[idx], False
    if layer in names:
        idx = names.index(layer)
        return idx + 1, layer, False
    # 'a-b' blocks (several Sequential children) answer to their last child's name
    ends = [nm.rsplit("-", 1)[-1] for nm in names]
    if ends.count(layer) == 1:
        idx = ends.index(layer)
        return idx + 1, names[idx], False
    raise ValueError(
        f"layer={layer!r} is not a block of this model; its blocks are {names} "
        "(see sktransfer.list_blocks(model)). Use one of these names, an int index, "
        "'head' or None for the head's input."
    )


@fill_doc
class FeatureExtractorTransformer(TransferEstimatorMixin, TransformerMixin, BaseEstimator):
    """Use a frozen pretrained network as a feature extractor.

    ``transform`` runs ``X`` through the pretrained blocks up to ``layer`` in
    eval mode, without autograd, batch by batch, and returns one feature
    vector per sample. Put it in a :class:`~sklearn.pipeline.Pipeline` before
    any scikit-learn estimator.

    Parameters
    ----------
    {model_params}
    layer : int, str or None, default=None
        Which output to return: ``None`` the head's input (the usual
        "penultimate" features), an int block index (negative counts from the
        end), a block name (see :func:`list_blocks`), or ``"head"`` for the
        pretrained head's output.
    pooling : {"avg", "mean", "max", "cls", "flatten"}, default="avg"
        How a spatial map (or a sequence of tokens) becomes a vector: ``"avg"``
        (or its synonym ``"mean"``) and ``"max"`` over the spatial axes or the
        tokens, ``"cls"`` the first token of a transformer's output, ``"flatten"``
        every value. For texts (``model="hf:..."``) the padding tokens are left
        out, and ``layer=None`` pools the last layer.
    batch_size : int, default=64
        Samples per forward pass; memory use is bounded by it, not by ``len(X)``.
    device : str, default="auto"
        ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (CUDA when available).
    precision : {"32", "bf16", "16-mixed"}, default="32"
        The arithmetic of ``transform``: ``"32"`` float32; ``"bf16"`` (or
        ``"bf16-mixed"``) and ``"16-mixed"`` run the network under
        ``torch.autocast`` in bfloat16 or float16, much faster on recent GPUs;
        the features are returned as float32 either way. ``"bf16"`` needs a GPU
        of compute capability 8.0 or newer or the CPU, ``"16-mixed"`` a CUDA
        GPU; ``fit`` raises a ``ValueError`` on a device without it. Where the
        precision is missing after ``fit`` (unpickled on a CPU), ``transform``
        runs in float32.
    preprocess : "auto", callable or None, default="auto"
        Image preprocessing for uint8 image arrays and image files/PIL images:
        ``"auto"`` uses the torchvision weights' own transforms when they are
        known (else scales pixels to ``[0, 1]``); a callable receives a PIL image
        (files), already in the mode the network's first convolution takes
        (``"RGB"`` for 3 channels, ``"L"`` for 1), or a uint8 tensor batch
        ``(n, C, H, W)`` (arrays). Float arrays and
        tables are passed to the network as they are. The weights' transforms
        resize to the size the network was trained at (224 for most ImageNet
        models); for small images, ``ResNet18_Weights.DEFAULT.transforms(
        crop_size=64, resize_size=64)`` keeps the normalisation at a lower cost.
        For ``model="timm:<name>"``, ``"auto"`` is timm's own evaluation transform;
        for text models (``model="hf:..."``) it is the model's tokenizer, which
        texts need: leave ``"auto"``.
    random_state : int, RandomState or None, default=None
        Seeds the initialisation of lazy layers (``nn.LazyLinear``) that the
        model materialises on its first batch, and of a model built by a class
        or factory; has no other effect.
    memory : str, path or joblib.Memory, default=None
        Keep the outputs of the blocks up to ``layer`` per sample, in this
        process and on disk in this folder (or ``joblib.Memory``'s location),
        as :class:`~sklearn.pipeline.Pipeline`'s ``memory`` does: a later
        ``transform`` of samples seen before (another fold of a search,
        another process, another session), or a fine-tuning estimator's fit
        with the same blocks frozen, the same ``batch_size`` and
        preprocessing, reuses them instead of running the network. At most
        1024 MB of them in this process and in the folder (least recently
        used out first); remove them with ``joblib.Memory(folder).clear()``.
        Not for image files or texts. ``None``: nothing is kept (memory use is
        bounded by ``batch_size``).

    Attributes
    ----------
    module_ : BlockNet
        The network (a private copy, in eval mode, frozen).
    layer_name_ : str
        The name of the returned layer.
    n_features_in_ : int
        Number of input columns (2-D input only).
    feature_names_in_ : ndarray of str
        Column names of a DataFrame ``X``.
    input_shape_ : tuple
        Shape of one sample for array inputs with 3 or more dimensions.
    n_features_out_ : int
        Length of the feature vectors.
    blocks_ : list of str
        Block names of the model.

    See Also
    --------
    FineTunedClassifier : fine-tune instead of freezing (``freeze_depth``).
    list_blocks : the blocks ``layer`` can name.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FeatureExtractorTransformer
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> X = np.random.RandomState(0).normal(size=(10, 4))
    >>> fx = FeatureExtractorTransformer(model=net, device="cpu").fit(X)
    >>> fx.transform(X).shape
    (10, 8)
    """

    _parameter_constraints = {
        **TransferEstimatorMixin._parameter_constraints,
        # which ints and names exist depends on the model: checked in resolve_layer
        "layer": [Interval(numbers.Integral, None, None, closed="neither"), str, None],
        "pooling": [StrOptions(set(_POOLINGS))],
        "precision": PRECISION_CONSTRAINT,
        # a folder or a joblib.Memory, as Pipeline's memory (_frozen_store.disk_store)
        "memory": [None, str, os.PathLike, HasMethods(["cache"])],
    }

    def __init__(self, model=None, weights=None, layer=None, pooling="avg", batch_size=64,
                 device="auto", precision="32", preprocess="auto", random_state=None,
                 memory=None):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.preprocess = preprocess
        self.random_state = random_state
        self.memory = memory

    @_fit_context(prefer_skip_nested_validation=True)
    @one_fit_at_a_time
    @unchanged_on_error
    def fit(self, X, y=None):
        """Load the pretrained network and check it runs on ``X``.

        Parameters
        ----------
        X : array-like, DataFrame, image array, list of image paths / PIL images, or texts
            Training input; only its layout matters (nothing is learned).
        y : None
            Ignored.

        Returns
        -------
        self : FeatureExtractorTransformer
        """
        device = resolve_device(self.device)
        autocast_dtype(self.precision, device)  # a device without it: a clear error
        data = validate_input(self, X, reset=True,
                              nan_columns=source_nan_columns(self.model))
        seed = seed_from_random_state(self.random_state)
        resolved = self._resolve_pretrained(seed)
        preprocess = self._preprocess_fn(resolved)
        net = resolved.net
        stop, name, after_head = resolve_layer(self.layer, net)
        if after_head and not net.has_head:
            raise ValueError(
                "layer='head' but this model has no head (it is an encoder); use "
                "layer=None for its output."
            )
        if stop is None and is_text_net(net):
            stop = len(net.blocks)  # texts: the last layer, pooled by ``pooling``
        self._probe(resolved, data, preprocess, seed)
        self.module_ = freeze_all(net).to(device)
        self._preprocess = preprocess
        self._stop, self._after_head = stop, after_head
        self.layer_name_ = name
        self.blocks_ = list(net.block_names)
        self.device_ = device
        first = self._features(data, stop=min(2, len(data)))
        self.n_features_out_ = int(first.shape[1])
        return self

    def _features(self, data, stop=None):
        """Features of ``data[:stop]``, batch by batch, into one preallocated array."""
        net = self.module_
        channels_last = getattr(net, "channels_last", False)
        sub = data if stop is None else type(data)(data.data[:stop], data.kind)

        token_mask = is_text_net(net)

        def features(batch):
            out = net(batch) if self._after_head else net.forward_features(batch, stop=self._stop)
            return pool_features(out, self.pooling, channels_last, token_mask)

        if self.memory is not None and stop is None:
            # the blocks' outputs per sample, kept ones reused (_prefix_cache); then
            # the neck, the head (layer="head") and the pooling on each batch
            depth = len(net.blocks) if self._stop is None else self._stop

            def finish(x):
                out = net.forward_features(x, start=depth, stop=self._stop)
                if self._after_head:
                    out = net.forward_head(out)
                return pool_features(out, self.pooling, channels_last)

            amp = autocast_dtype(self.precision, self.device_, strict=False)
            with autocast(self.device_, amp):  # as _map_batches: the chosen precision
                out = frozen_then(net, data, depth, self._preprocess, self.device_, finish,
                                  batch_size=self.batch_size, cache_size=_MEMORY_MB,
                                  memory=self.memory)
            if out is not None:
                return out.numpy()
        return self._map_batches(sub, features, self._preprocess).numpy()

    def transform(self, X):
        """Features of ``X`` from ``layer``.

        Parameters
        ----------
        X : array-like, DataFrame, image array, list of image paths / PIL images, or texts
            Same layout as in ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``), dtype float32
        """
        check_is_fitted(self, "module_")
        data = validate_input(self, X, reset=False,
                              nan_columns=source_nan_columns(self.module_))
        return self._features(data)

    def get_feature_names_out(self, input_features=None):
        """Names ``<layer>_<i>`` of the output features.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the input columns seen in ``fit`` (their names,
            or their number): the output features are not input columns.

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self, "n_features_out_")
        _check_feature_names_in(self, input_features, generate_names=False)
        prefix = re.sub(r"[^0-9a-zA-Z_]+", "_", self.layer_name_)
        if prefix[:1].isdigit():
            prefix = f"block_{prefix}"
        return np.asarray([f"{prefix}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # a TabularPretrainer fitted on rows with missing cells fills them itself
        tags.input_tags.allow_nan = source_nan_columns(self.model) is not None
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
