"""Weights files: reading a state dict without running code, loading it into a module,
and the error for pretrained weights that cannot be downloaded.

Every model source uses these (torchvision names and modules in ``_weights.py``,
timm in ``_timm.py``, Hugging Face in ``_hf.py``), so they sit below all of
them in the import order.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

__all__ = ["WeightsUnavailableError", "load_state_dict_file", "load_into", "looks_like_path"]

_STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be downloaded and are not in the local cache.

    Raised by ``fit`` (and :func:`list_blocks`) for ``weights="DEFAULT"`` or another
    torchvision weights name when the machine is offline. The message names the
    file that was wanted, torchvision's cache folder, and how to pass a local
    copy instead (``weights="/path/to/file.pth"``). It is an ``OSError``. The
    same for timm's pretrained weights (``model="timm:<name>"``, a local file
    instead) and Hugging Face hub models (``model="hf:<hub id>"``, a
    ``save_pretrained`` directory instead).

    Examples
    --------
    >>> from sktransfer import FeatureExtractorTransformer, WeightsUnavailableError
    >>> fx = FeatureExtractorTransformer(model="resnet18", weights="DEFAULT")
    >>> try:  # doctest: +SKIP
    ...     fx.fit(images)
    ... except WeightsUnavailableError as exc:
    ...     print(exc)  # names resnet18-f37072fd.pth and how to pass a local file
    """


def looks_like_path(weights):
    if isinstance(weights, os.PathLike):
        return True
    if isinstance(weights, str):
        return (
            weights.lower().endswith(_STATE_DICT_SUFFIXES)
            or os.sep in weights
            or "/" in weights
            or os.path.exists(weights)
        )
    return False


def _strip_prefix(state_dict, model_keys):
    """Strip a ``module.`` (DataParallel) prefix when it makes the keys match."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        stripped = {k[len("module."):]: v for k, v in state_dict.items()}
        if set(stripped) & set(model_keys):
            return stripped
    return state_dict


def load_state_dict_file(path):
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth`` without running code.

    ``torch.load`` is always called with ``weights_only=True``: a file that
    holds pickled Python objects other than tensors and containers is refused.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {str(path)!r} does not exist. Pass the path to a state-dict "
            "file (.pt/.pth saved with torch.save(model.state_dict(), path), or "
            ".safetensors)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parse error is the same problem
            raise ValueError(
                f"Could not read {str(path)!r} as a safetensors file: {exc}"
            ) from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"Refused to load {str(path)!r}: it contains pickled Python objects, not only "
            "tensors, and loading it could run arbitrary code (it was not run). Save the "
            "weights with torch.save(model.state_dict(), path) or as .safetensors "
            "(safetensors.torch.save_file), then pass that file."
        ) from exc
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"Could not read {str(path)!r} as a torch state-dict file "
            f"({type(exc).__name__}: {exc}). Expected a file written by "
            "torch.save(model.state_dict(), path) or a .safetensors file."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of parameter names to "
            f"tensors) but a {type(obj).__name__}. Save it with "
            "torch.save(model.state_dict(), path)."
        )
    return obj


def load_into(model, path, ignore_prefixes=()):
    state = load_state_dict_file(path)
    own = model.state_dict()
    state = _strip_prefix(state, own)
    if ignore_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_short(mismatched)}")
        raise ValueError(
            f"The state dict in {os.fspath(path)!r} does not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check that the file was saved from the same architecture "
            "(same constructor arguments, e.g. num_classes)."
        )
    model.load_state_dict(state, strict=True)


def _short(items, n=5):
    items = list(items)
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return "[" + ", ".join(map(str, items[:n])) + "]" + more
