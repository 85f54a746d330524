"""``X`` -> validated input -> float32 tensor batches.

Accepted inputs
---------------
* ``"tabular"``: a 2-D numeric array or DataFrame (passed to the net as float32).
* ``"array"``: a 3-D, or 4-D float ``(n, C, H, W)`` numeric array, passed as it
  is (cast to float32 batch by batch; no other preprocessing).
* ``"uint8"``: a 4-D ``uint8`` array ``(n, H, W, C)`` with ``C`` in 1, 3, 4:
  images; each batch becomes ``(n, C, H, W)`` and goes through ``preprocess``
  (by default the torchvision weights' own transforms when known, else a
  scaling to ``[0, 1]``).
* ``"files"``: a list of image file paths or PIL images; loaded batch by batch
  (memory bounded by ``batch_size``) and preprocessed like ``"uint8"``.
* ``"text"``: a 1-D sequence of strings (list, array, pandas Series, or one
  column), for text encoders (``model="hf:..."``); each batch goes through the
  model's tokenizer (``preprocess``) into int64 ``(n, 2, L)``: token ids and
  attention mask, padded to the batch's longest text (or to ``pad_to``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import check_array, validate_data

from ._device import pinned

__all__ = ["InputData", "validate_input", "iter_batches", "make_batch", "in_memory",
           "check_real", "clearer_errors", "ImagePreprocess", "image_mode", "padded_to_longest",
           "source_nan_columns", "check_missing", "pad_rows", "class_sample_weights"]


@dataclass
class InputData:
    """Validated input: the data and how to turn it into tensors."""

    data: object
    kind: str  # "tabular", "array", "uint8", "files" or "text"
    pad_to: int | None = None  # "text": pad every batch to this many tokens

    def __len__(self):
        return len(self.data)


def _is_image_item(item):
    if isinstance(item, (str, os.PathLike)):
        return True
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with torchvision
        return False
    return isinstance(item, Image.Image)


def _as_file_list(X):
    if isinstance(X, (list, tuple)) and len(X) > 0 and all(_is_image_item(x) for x in X):
        return list(X)
    if (
        isinstance(X, np.ndarray)
        and X.dtype == object
        and X.ndim == 1
        and len(X) > 0
        and all(_is_image_item(x) for x in X)
    ):
        return list(X)
    return None


def check_real(a, name, owner, what=None):
    """Refuse ``None`` and complex numbers up front, naming the input and the fix.

    scikit-learn turns ``None`` into ``nan`` ("got scalar array instead: array=nan")
    and prints the whole array for complex data, without saying which input it is.
    """
    if a is None:
        if what is None:
            what = ("a 2-D array or DataFrame, an image array, or a list of image paths / "
                    "PIL images" if name == "X" else "one target per sample of X")
        raise TypeError(f"{name} is None; {owner} needs {name}: {what}.")
    if hasattr(a, "iloc"):  # pandas: look at the column dtypes, no conversion
        dtypes = a.dtypes if hasattr(a, "columns") else [a.dtype]
    else:
        dtype = getattr(a, "dtype", None)
        if dtype is None:
            try:
                dtype = np.asarray(a).dtype
            except (ValueError, TypeError):  # ragged lists: left to check_array
                return
        dtypes = [dtype]
    for dtype in dtypes:
        if getattr(dtype, "kind", None) == "c" or getattr(dtype, "is_complex", False):
            raise ValueError(
                f"Complex data not supported: {name} has the complex dtype {dtype}, and "
                f"{owner} works on real numbers. Pass np.real({name}) or np.abs({name}), "
                "or put the real and imaginary parts in separate columns."
            )


@contextlib.contextmanager
def clearer_errors(name="X"):
    """Add the fix to scikit-learn validation errors that only say what is wrong."""
    try:
        yield
    except ValueError as exc:
        msg = str(exc).rstrip()
        if "could not convert string to float" in msg:
            hint = (
                f"{name} must hold numbers: encode text or categorical columns first, e.g. "
                "with sklearn.preprocessing.OneHotEncoder inside a ColumnTransformer."
            )
        elif "contains infinity" in msg:
            hint = (
                "Replace or drop the infinite values (and values too large for float32), "
                "e.g. drop those rows or clip them with np.clip."
            )
        elif "Input y contains NaN" in msg:
            hint = "Drop the samples whose target is missing (and their rows of X), or impute y."
        elif "sample(s)" in msg and "minimum of" in msg:
            hint = f"{name} needs at least that many samples (rows); pass more data."
        elif "feature(s)" in msg and "minimum of" in msg:
            hint = f"{name} has no columns; it needs at least one feature."
        elif msg.startswith("Expected 2D array"):
            hint = f"{name} must be 2-D: (n_samples, n_features)."
        elif "inconsistent numbers of samples" in msg:
            hint = "X and y must describe the same samples: pass one y entry per sample of X."
        elif "while dim <= 2 is required" in msg:
            hint = (
                f"{name} must be a 2-D table (n_samples, n_features); flatten other arrays, "
                f"e.g. {name}.reshape(len({name}), -1)."
            )
        else:
            raise
        sep = " " if msg.endswith((".", ")")) and not msg.endswith("')") else ". "
        raise ValueError(f"{msg}{sep}{hint}") from exc


def source_nan_columns(model):
    """The columns in which the network ``model`` fills missing cells itself, or ``None``.

    A fitted ``TabularPretrainer``'s encoder starts with a standardisation that
    fills NaN with the column mean, and knows the columns that had missing cells
    in its ``fit`` rows (``nan_columns``); so do the networks built on it (a
    fine-tuned estimator's ``module_``, a fitted estimator used as a source).
    ``model`` is a network, a fitted sktransfer estimator (``FrozenEstimator``
    included), or anything else (``None``: no NaN accepted).
    """
    from sklearn.exceptions import NotFittedError
    from torch import nn

    net = model
    if not isinstance(model, nn.Module):
        if isinstance(model, type) or not hasattr(model, "__sktransfer_model__"):
            return None
        try:
            net = model.__sktransfer_model__().net
        except NotFittedError:
            return None
    first = next((m for m in net.modules() if next(m.children(), None) is None), None)
    columns = getattr(first, "nan_columns", None)
    return columns if columns is not None and columns.any() else None


def check_missing(X, nan_columns, estimator):
    """Refuse NaN in the columns of a validated 2-D ``X`` outside ``nan_columns``."""
    if nan_columns is None or X.ndim != 2 or X.shape[1] != len(nan_columns):
        return  # no NaN allowed (validation refused it), or the width is checked later
    bad = np.flatnonzero(np.isnan(X).any(axis=0) & ~nan_columns)
    if bad.size:
        name = type(estimator).__name__
        names = getattr(estimator, "feature_names_in_", None)
        which = [str(names[i]) for i in bad[:10]] if names is not None else bad[:10].tolist()
        raise ValueError(
            f"Input X contains NaN in column(s) {which}{' ...' if bad.size > 10 else ''}. "
            f"{name} accepts missing cells only in the columns that had some in the rows "
            f"{'it was' if name == 'TabularPretrainer' else 'its TabularPretrainer was'} "
            "fitted on (its encoder learned to do without them there). Impute these "
            "columns (e.g. "
            "sklearn.impute.SimpleImputer in a Pipeline), or pretrain on rows that have "
            "missing cells in them."
        )


def validate_input(estimator, X, *, reset, y=None, y_kwargs=None, nan_columns=None):
    """Validate ``X`` (and ``y``) the scikit-learn way; return ``InputData`` (and y).

    With ``reset=True`` (``fit``) it records ``n_features_in_`` (2-D input) or
    ``input_shape_`` (other arrays) and ``input_kind_``; with ``reset=False``
    it checks that ``X`` matches what ``fit`` saw. ``nan_columns`` (from
    :func:`source_nan_columns`): a table may hold NaN in these columns.
    """
    if y is None and y_kwargs is not None:
        raise ValueError(
            f"{type(estimator).__name__} requires y to be passed, but the target y is None."
        )
    owner = type(estimator).__name__
    if y is not None:
        check_real(y, "y", owner)
        if (y_kwargs or {}).get("multi_output") and getattr(y, "ndim", 1) > 2:
            raise ValueError(
                f"y has shape {y.shape}; {owner} takes y of shape (n_samples,) or "
                "(n_samples, n_outputs). Reshape it, e.g. y.reshape(len(y), -1)."
            )
    if _expects_text(estimator, reset):
        return _finish(estimator, InputData(_as_texts(X, owner), "text"), None, reset, y,
                       y_kwargs)
    files = _as_file_list(X)
    if files is not None:
        return _finish(estimator, InputData(files, "files"), None, reset, y, y_kwargs)
    check_real(X, "X", owner)
    ndim = getattr(X, "ndim", None)
    if ndim is None and not hasattr(X, "__array__") and not hasattr(X, "iloc"):
        try:
            ndim = np.asarray(X).ndim
        except (ValueError, TypeError):
            ndim = None
    if ndim is not None and ndim >= 3:
        with clearer_errors("X"):
            if y is not None:
                X, y = validate_data(
                    estimator, X, y, reset=reset, allow_nd=True,
                    dtype=None, ensure_all_finite=True, **(y_kwargs or {}),
                )
            else:
                X = check_array(X, allow_nd=True, dtype=None, ensure_all_finite=True,
                                estimator=estimator, input_name="X")
        if 0 in X.shape[1:]:
            raise ValueError(
                f"X has samples of shape {X.shape[1:]}, which hold no values (an axis of "
                "size 0); every sample needs at least one value. Check how X was built "
                "or reshaped."
            )
        if X.dtype.kind not in "fiub":
            raise ValueError(
                f"X must hold numbers (images or tensors); got dtype {X.dtype}. Convert "
                "it with np.asarray(X, dtype=np.float32), or pass a list of image paths."
            )
        if X.dtype == np.uint8:
            if X.ndim != 4 or X.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"X is a uint8 array, and uint8 image arrays must have shape (n, H, W, C) "
                    f"with C in 1, 3 or 4; got {X.shape}. Pass float arrays as (n, C, H, W) "
                    "instead."
                )
            kind = "uint8"
        else:
            kind = "array"
        return _finish(estimator, InputData(X, kind), X.shape[1:], reset, y, y_kwargs,
                       validated=True)
    finite = True if nan_columns is None else "allow-nan"
    with clearer_errors("X"):
        if y is not None:
            X, y = validate_data(
                estimator, X, y, reset=reset, dtype=[np.float32, np.float64],
                ensure_all_finite=finite, **(y_kwargs or {}),
            )
        else:
            X = validate_data(
                estimator, X, reset=reset, dtype=[np.float32, np.float64],
                ensure_all_finite=finite,
            )
    check_missing(X, nan_columns, estimator)
    return _finish(estimator, InputData(X, "tabular"), X.shape[1:], reset, y, y_kwargs,
                   validated=True)


def _finish(estimator, data, shape, reset, y, y_kwargs, validated=False):
    if reset:
        estimator.input_kind_ = data.kind
        if data.kind != "tabular":
            # n_features_in_ / feature_names_in_ describe 2-D input only: drop the
            # ones validate_data sets for images (X.shape[1]) or a previous fit left.
            for attr in ("n_features_in_", "feature_names_in_"):
                if hasattr(estimator, attr):
                    delattr(estimator, attr)
        if data.kind in ("array", "uint8"):
            estimator.input_shape_ = tuple(int(s) for s in shape)
        elif hasattr(estimator, "input_shape_"):
            del estimator.input_shape_
    else:
        fitted_kind = getattr(estimator, "input_kind_", data.kind)
        if data.kind != fitted_kind and not (
            {data.kind, fitted_kind} <= {"files", "uint8"}
        ):
            raise ValueError(
                f"X is {_describe(data.kind)}, but {type(estimator).__name__} was fitted on "
                f"{_describe(fitted_kind)}; pass the same kind of input as to fit."
            )
        if data.kind in ("array", "uint8") and fitted_kind == data.kind:
            expected = estimator.input_shape_
            got = tuple(int(s) for s in shape)
            if got != expected:
                raise ValueError(
                    f"X has samples of shape {got}, but {type(estimator).__name__} was "
                    f"fitted on samples of shape {expected}; resize or reshape X to match."
                )
    if y is not None and not validated:
        from sklearn.utils import check_consistent_length

        with clearer_errors("y"):
            y = check_array(y, ensure_2d=False, dtype=None, ensure_all_finite=True,
                            input_name="y")
            check_consistent_length(data.data, y)
    if y is not None:
        return data, y
    return data


def _describe(kind):
    return {
        "tabular": "a 2-D table",
        "array": "a numeric array with 3 or more dimensions",
        "uint8": "uint8 images (n, H, W, C)",
        "files": "a list of image paths / PIL images",
        "text": "a 1-D sequence of texts (strings)",
    }[kind]


def _expects_text(estimator, reset):
    """Whether ``X`` holds texts: the estimator's model is a text encoder."""
    if not reset:
        return getattr(estimator, "input_kind_", None) == "text"
    model = getattr(estimator, "model", None)
    if isinstance(model, str):
        return model.startswith("hf:")
    # a fitted text estimator (also inside FrozenEstimator) or its network
    return (getattr(model, "input_kind_", None) == "text"
            or bool(getattr(model, "token_mask", False)))


def _as_texts(X, owner):
    """``X`` as a 1-D object array of ``str``; missing cells become empty texts."""
    import pandas as pd

    how = ("a 1-D sequence of strings (a list, array or pandas Series); for one column of "
           "a DataFrame pass X['column'], or in a ColumnTransformer name the column as a "
           "string, not a list: ('text', transformer, 'column')")
    if X is None:
        raise TypeError(f"X is None; {owner} with a text model needs {how}.")
    if isinstance(X, (str, bytes)):
        raise TypeError(f"X is a single string; {owner} needs {how}, e.g. [X].")
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # DataFrame: one column only
        if X.shape[1] != 1:
            raise ValueError(
                f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)[:5]}, but a text "
                f"model takes one text per sample: {how}."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "iloc"):
        X = X.astype(object).to_numpy()
    try:
        arr = np.asarray(X, dtype=object)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"X could not be read as texts ({exc}); {owner} needs {how}.") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"X has shape {arr.shape}; {owner} with a text model needs {how}.")
    if len(arr) == 0:
        raise ValueError(f"X holds 0 texts; {owner} needs at least one.")
    out = np.empty(len(arr), dtype=object)
    n_text = 0
    for i, item in enumerate(arr):
        if isinstance(item, str):
            out[i] = str(item)
            n_text += 1
        elif item is None or (not isinstance(item, (bytes, np.ndarray, list, tuple))
                              and bool(pd.isna(item))):
            out[i] = ""  # a missing cell: an empty text
        elif isinstance(item, bytes):
            out[i] = item.decode("utf-8", errors="replace")
            n_text += 1
        elif np.ndim(item) == 0:
            out[i] = str(item)  # a number among texts (a code, a year): its spelling
        else:
            raise TypeError(
                f"X[{i}] is a {type(item).__name__}, not a text; {owner} with a text model "
                f"needs {how}."
            )
    if n_text == 0 and len(arr) and any(v != "" for v in out):
        raise TypeError(
            f"X holds no strings (e.g. {arr[0]!r} of type {type(arr[0]).__name__}); a text "
            f"model takes texts: {how}. Convert numbers to text explicitly if you mean it, "
            "e.g. X.astype(str)."
        )
    return out


def padded_to_longest(data, preprocess):
    """``data`` with every batch padded to its longest text (one length for all)."""
    if data.kind != "text":
        return data
    longest = _tokenizer(preprocess).longest(list(data.data))
    return InputData(data.data, data.kind, pad_to=int(longest))


def _tokenizer(preprocess):
    """The text model's tokenizer behind ``preprocess`` (which wraps it for images)."""
    tokenize = preprocess.inner if isinstance(preprocess, ImagePreprocess) else preprocess
    if tokenize is None or not callable(tokenize):
        raise ValueError(
            "Texts need the model's tokenizer, and there is none: pass model='hf:<directory>' "
            "or a fitted text estimator (both keep their tokenizer), not a bare network, "
            "and leave preprocess='auto'."
        )
    return tokenize


def _text_batch(texts, preprocess, pad_to):
    tokenize = _tokenizer(preprocess)
    batch = tokenize(texts) if pad_to is None else tokenize(texts, pad_to=pad_to)
    if not (isinstance(batch, torch.Tensor) and batch.ndim == 3 and batch.shape[1] == 2):
        raise ValueError(
            f"preprocess turned texts into {type(batch).__name__} "
            f"{tuple(getattr(batch, 'shape', ()))}, but text models take int64 (n, 2, tokens) "
            "(token ids and attention mask); leave preprocess='auto' for text models."
        )
    return batch


def image_mode(net):
    """The PIL mode that image files and PIL images become for ``net``.

    ``"L"`` (grayscale) or ``"RGB"`` when the network's first convolution takes
    1 or 3 channels; ``None`` when that is unknown (no convolution, or another
    channel count): then grayscale and RGB images keep their mode and any other
    mode becomes RGB. The same rule holds for files and PIL images.
    """
    for module in net.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int):
            return {1: "L", 3: "RGB"}.get(channels)
    return None


class ImagePreprocess:
    """Convert PIL images to the network's mode, then apply ``inner`` (if any).

    Tensors (uint8 image arrays) go to ``inner`` unchanged.
    """

    def __init__(self, inner=None, mode=None):
        self.inner = inner.inner if isinstance(inner, ImagePreprocess) else inner
        self.mode = mode

    def __call__(self, x):
        from PIL import Image

        if isinstance(x, Image.Image):
            target = self.mode or (x.mode if x.mode in ("L", "RGB") else "RGB")
            if x.mode != target:
                x = x.convert(target)
        return x if self.inner is None else self.inner(x)

    def __repr__(self):
        return f"ImagePreprocess(inner={self.inner!r}, mode={self.mode!r})"


def _load_image(item):
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file {path!r} does not exist.")
        with Image.open(path) as img:
            return img.copy()  # read now: the file closes here
    return item


def _to_float_image(batch):
    """uint8 ``(n, C, H, W)`` -> float in [0, 1]."""
    return batch.to(torch.float32).div_(255.0)


def _image_batch(items, preprocess):
    from torchvision.transforms.functional import pil_to_tensor

    if not isinstance(preprocess, ImagePreprocess):
        preprocess = ImagePreprocess(preprocess)  # the mode rule holds without a network too
    tensors = []
    for item in items:
        t = preprocess(_load_image(item))
        if not isinstance(t, torch.Tensor):
            t = pil_to_tensor(t)
        if t.dtype == torch.uint8:
            t = _to_float_image(t)
        tensors.append(t)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"The images have different sizes after preprocessing {sorted(shapes)}; pass "
            "preprocess=<a transform that resizes, e.g. torchvision.transforms.Resize((224, "
            "224))> or resize the images first."
        )
    return torch.stack(tensors)


def make_batch(data, start, stop, preprocess=None):
    """Float32 tensor (CPU) for samples ``start:stop`` of ``data``."""
    if data.kind == "files":
        return _image_batch(data.data[start:stop], preprocess)
    if data.kind == "text":
        return _text_batch(list(data.data[start:stop]), preprocess, data.pad_to)
    chunk = data.data[start:stop]
    if hasattr(chunk, "iloc"):  # pragma: no cover - validated data is an ndarray
        chunk = chunk.to_numpy()
    if data.kind != "uint8" and chunk.dtype != np.float32:
        chunk = chunk.astype(np.float32)  # one copy, straight to the net's dtype
    elif not chunk.flags.writeable:
        chunk = chunk.copy()  # torch refuses read-only memory
    batch = torch.from_numpy(np.ascontiguousarray(chunk))
    if data.kind == "uint8":
        batch = batch.permute(0, 3, 1, 2)
        if preprocess is not None:
            batch = preprocess(batch)
        if batch.dtype == torch.uint8:
            batch = _to_float_image(batch)
        return batch.to(torch.float32).contiguous()
    return batch.to(torch.float32)


def in_memory(data):
    """Tables and numeric arrays as one float32 tensor (CPU); uint8 images, image
    files and texts stay ``InputData``, preprocessed (and loaded) batch by batch."""
    if data.kind in ("tabular", "array"):
        return torch.from_numpy(np.ascontiguousarray(data.data, dtype=np.float32))
    return data


def pad_rows(x, size):
    """``x`` (a tensor) with its last row repeated up to ``size`` rows: batches of
    one shape go through the same BLAS kernels, so a row's output does not depend
    on the rows computed with it."""
    if len(x) == size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


def iter_batches(data, batch_size, preprocess=None, device="cpu"):
    """Yield float32 tensors of at most ``batch_size`` samples on ``device``.

    For a GPU each batch goes through pinned memory and is copied without
    blocking: the host prepares the next batch while the copy and the compute
    of this one run (``_device.pinned``).
    """
    pin = pinned(device)
    n = len(data.data)
    for start in range(0, n, batch_size):
        batch = make_batch(data, start, min(start + batch_size, n), preprocess)
        if pin:
            batch = batch.pin_memory()
        yield batch.to(device, non_blocking=True)


def class_sample_weights(class_weight, classes, y):
    """Per-sample weights of a classifier's ``class_weight`` (scikit-learn's
    ``compute_sample_weight``), ``1.0`` when it is ``None``."""
    if class_weight is None:
        return 1.0
    from sklearn.utils.class_weight import compute_sample_weight

    if isinstance(class_weight, dict):
        unknown = set(class_weight) - set(classes)
        if unknown:
            raise ValueError(
                f"class_weight names labels that are not in y: {sorted(unknown, key=str)}; "
                f"the classes are {list(classes)}."
            )
    return compute_sample_weight(class_weight, y)
