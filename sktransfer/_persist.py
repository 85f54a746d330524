"""Share a fine-tuned model without pickle: weights + metadata in one .safetensors file.

``est.save_weights(path)`` writes the fine-tuned network's tensors and, as JSON
metadata, what is needed to rebuild it around the same pretrained model:
the head's configuration, the labels or the number of outputs, the input
layout. ``FineTunedClassifier(model=<same pretrained model>).load_weights(path)``
rebuilds the network, loads the tensors and leaves a fitted estimator. No code
is ever unpickled: safetensors files hold tensors and strings only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._base import resolve_device, seed_from_random_state
from ._heads import add_standardize, has_probe_head
from ._inputs import InputData
from ._version import __version__

__all__ = ["WeightsFileMixin", "save_weights", "load_weights"]

_FORMAT = "sktransfer.finetuned/1"


def _json_list(values):
    return [v.item() if isinstance(v, np.generic) else v for v in np.asarray(values).tolist()]


def save_weights(est, path):
    from safetensors.torch import save_file


    path = Path(os.fspath(path))
    if path.suffix != ".safetensors":
        raise ValueError(
            f"save_weights writes safetensors files: use a path ending in '.safetensors', "
            f"got {str(path)!r}."
        )
    meta = {
        "format": _FORMAT,
        "sktransfer_version": __version__,
        "estimator": type(est).__name__,
        "head_hidden_sizes": list(est.head_hidden_sizes),
        "dropout": float(est.dropout),
        "reuse_head": bool(est.reuse_head),
        "freeze_depth": est.freeze_depth_,
        # surgical fine-tuning: the parameter, so that a refit does not see a conflict
        "train_blocks": (None if est.train_blocks is None
                         else [int(b) for b in est.train_blocks]),
        "blocks": est.blocks_,
        "net_input_shape": list(est._source_input_shape),
        "input_kind": est.input_kind_,
        "input_shape": list(getattr(est, "input_shape_", ())) or None,
        "n_features_in": getattr(est, "n_features_in_", None),
        "feature_names_in": (_json_list(est.feature_names_in_)
                             if hasattr(est, "feature_names_in_") else None),
        "history": est.history_,
        "probe_head": has_probe_head(est.module_),
        "max_epochs_": getattr(est, "max_epochs_", None),
    }
    if hasattr(est, "classes_"):
        meta["classes"] = _json_list(est.classes_)
        meta["classes_dtype"] = est.classes_.dtype.str
    else:
        meta["n_outputs"] = est.n_outputs_
        meta["y_1d"] = bool(est._y_1d)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in est.module_.state_dict().items()}
    save_file(tensors, str(path), metadata={"sktransfer": json.dumps(meta)})
    return path


def _read(path):
    from safetensors import safe_open

    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = (f.metadata() or {}).get("sktransfer")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse error is the same problem
        raise ValueError(f"Could not read {str(path)!r} as a safetensors file: {exc}") from exc
    if meta is None:
        raise ValueError(
            f"{str(path)!r} has no sktransfer metadata: it was not written by "
            "save_weights. To start fine-tuning from a plain state dict, pass it as "
            "weights= instead."
        )
    meta = json.loads(meta)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} has an unknown sktransfer format {meta.get('format')!r}.")
    return meta, tensors


def load_weights(est, path):
    est._validate_params()  # as fit does: the network is rebuilt from the parameters
    meta, tensors = _read(path)
    if meta["estimator"] != type(est).__name__:
        raise ValueError(
            f"{str(path)!r} holds a {meta['estimator']}, not a {type(est).__name__}; load it "
            f"with {meta['estimator']}(model=...).load_weights(path)."
        )
    train_blocks = meta.get("train_blocks")
    est.set_params(head_hidden_sizes=tuple(meta["head_hidden_sizes"]),
                   dropout=meta["dropout"], reuse_head=meta["reuse_head"],
                   freeze_depth=meta["freeze_depth"] if train_blocks is None else 0,
                   train_blocks=train_blocks)
    device = resolve_device(est.device)
    seed = seed_from_random_state(0)
    resolved = est._resolve_pretrained(seed)
    shape = tuple(meta["net_input_shape"])
    if meta["input_kind"] == "text":  # two texts through the model's own tokenizer
        probe, preprocess = InputData(np.array(["", ""], dtype=object), "text"), \
            est._preprocess_fn(resolved)
    else:
        kind = "tabular" if len(shape) == 1 else "array"
        probe = InputData(np.zeros((2, *shape), dtype=np.float32), kind)
        preprocess = None
    features = est._probe(resolved, probe, preprocess, seed)
    if "classes" in meta:
        classes = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        n_out = len(classes)
        est.classes_ = classes
    else:
        n_out = meta["n_outputs"]
        est.n_outputs_, est._y_1d = n_out, meta["y_1d"]
    module, depth, _ = est._build_module(resolved, features, n_out, seed)
    if meta.get("probe_head"):  # head_init="probe": its Standardize layer is in the file
        add_standardize(module)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    mismatched = sorted(k for k in set(own) & set(tensors)
                        if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit model={resolved.description}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {mismatched[:5]}. Pass "
            "the same pretrained model (architecture) that was fine-tuned."
        )
    module.load_state_dict(tensors, strict=True)
    module.eval()
    est.module_ = module.to(device)
    est.device_ = device
    est._preprocess = est._preprocess_fn(resolved)
    est._source_input_shape = shape
    est.blocks_ = list(module.block_names)
    est.freeze_depth_ = depth
    est.train_blocks_ = (list(range(depth, len(module.blocks))) if train_blocks is None
                         else sorted(b % len(module.blocks) for b in train_blocks))
    est.history_ = meta["history"]
    est.n_iter_ = len(est.history_)
    est.max_epochs_ = meta.get("max_epochs_") or est.n_iter_
    est.input_kind_ = meta["input_kind"]
    for attr, key in (("input_shape_", "input_shape"), ("n_features_in_", "n_features_in")):
        if meta[key] is not None:
            setattr(est, attr, tuple(meta[key]) if attr == "input_shape_" else meta[key])
    if meta["feature_names_in"] is not None:
        est.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
    return est


class WeightsFileMixin:
    """``save_weights`` / ``load_weights`` methods of the fine-tuning estimators."""

    def save_weights(self, path):
        """Save the fine-tuned network to a ``.safetensors`` file, without pickle.

        The file holds the network's tensors and, as metadata, what
        :meth:`load_weights` needs to rebuild it around the same pretrained
        model (head configuration, labels or outputs, input layout, history).
        Share it with the pretrained model's code instead of a pickle, which
        can run code when loaded.

        Parameters
        ----------
        path : str or path-like
            Where to write; must end in ``.safetensors``.

        Returns
        -------
        path : pathlib.Path

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> from torch import nn
        >>> from sktransfer import FineTunedClassifier
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> X = np.random.RandomState(0).normal(size=(30, 4)).astype(np.float32)
        >>> y = (X[:, 0] > 0).astype(int)
        >>> clf = FineTunedClassifier(model=net, max_epochs=2, random_state=0,
        ...                           device="cpu").fit(X, y)
        >>> path = os.path.join(tempfile.mkdtemp(), "clf.safetensors")
        >>> _ = clf.save_weights(path)
        >>> again = FineTunedClassifier(model=net, device="cpu").load_weights(path)
        >>> bool((again.predict_proba(X) == clf.predict_proba(X)).all())
        True
        """
        check_is_fitted(self, "module_")
        return save_weights(self, path)

    def load_weights(self, path):
        """Load a network written by :meth:`save_weights`; the estimator becomes fitted.

        ``model`` (and ``weights``) must name the same pretrained architecture
        that was fine-tuned: the network is rebuilt around it, then every tensor
        is replaced by the file's. ``head_hidden_sizes``, ``dropout``,
        ``reuse_head``, ``freeze_depth`` and ``train_blocks`` are set from the
        file. The file holds the final weights (LoRA adapters merged, WiSE-FT
        applied), so the adaptation parameters need not match.

        Parameters
        ----------
        path : str or path-like
            A ``.safetensors`` file written by :meth:`save_weights`.

        Returns
        -------
        self
            The estimator, fitted, predicting exactly as the saved one did.

        Examples
        --------
        See :meth:`save_weights`.
        """
        return load_weights(self, path)
