"""Resolve ``model`` + ``weights`` into a private, split copy of the pretrained network.

Accepted ``model`` values:

* a torchvision classification architecture name (``"resnet18"``), built with
  ``torchvision.models.get_model``;
* an ``nn.Module`` instance (deep-copied: the user's module is never modified);
* a class or zero-argument callable returning an ``nn.Module``;
* a fitted sktransfer estimator (anything with ``__sktransfer_model__``);
* ``"timm:<name>"``: a timm image model (``_timm.py``); a timm module instance is
  split the same way;
* ``"hf:<directory or hub id>"``: a Hugging Face ``transformers`` text encoder
  with its tokenizer (``_hf.py``).

``weights``: ``None``, a torchvision weights name (``"DEFAULT"``,
``"IMAGENET1K_V1"``) for string models, or a path to a local state-dict file
(``.pt``/``.pth``, read with ``torch.load(weights_only=True)``, or
``.safetensors``).
"""

from __future__ import annotations

import copy
import difflib
import enum
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from sklearn.utils._param_validation import HasMethods, Hidden
from torch import nn

from ._blocknet import BlockNet
from ._blocks import split_model
from ._weight_files import (
    WeightsUnavailableError,
    load_into,
    load_state_dict_file,
    looks_like_path,
)

__all__ = ["resolve_model", "load_state_dict_file", "WeightsUnavailableError", "ResolvedModel",
           "MODEL_CONSTRAINTS"]


#: scikit-learn parameter constraints of ``model`` and ``weights``, shared by the
#: estimators and ``list_blocks`` (a torchvision weights enum member is accepted
#: but not advertised in the error message)
MODEL_CONSTRAINTS = {
    "model": [str, nn.Module, callable, HasMethods(["__sktransfer_model__"])],
    "weights": [None, str, os.PathLike, Hidden(enum.Enum)],
}


def private_copy(module):
    """``copy.deepcopy(module)``, faster.

    ``deepcopy`` rebuilds every container of every submodule through
    ``__reduce_ex__``, the empty ones too (a module's hook dictionaries: a dozen
    per submodule); on a ResNet that is a quarter of a copy's time, and every
    ``fit`` copies the network. The empty ``dict``/``OrderedDict``/``set``
    attributes get fresh empty ones up front through deepcopy's memo (as deepcopy
    would make them); everything else is deepcopy's own.
    """
    memo = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if type(value) in (dict, OrderedDict, set) and not value:
                memo[id(value)] = type(value)()
    return copy.deepcopy(module, memo)


@dataclass
class ResolvedModel:
    """A private copy of the pretrained network, split into blocks."""

    net: BlockNet
    original: nn.Module | None = None  # the (copied) model the split shares parameters with
    preprocess: Callable | None = None  # image transform from the weights, if known
    input_shape: tuple | None = None  # one sample's shape, if known
    description: str = ""
    extra: dict = field(default_factory=dict)


def _torchvision_names():
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _build_torchvision(name, weights):
    import torchvision
    from torchvision.models import get_model, get_model_weights

    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown model name {name!r}: not a torchvision classification architecture.{hint} "
            "See torchvision.models.list_models(module=torchvision.models), or pass an "
            "nn.Module instance."
        )
    from torchvision.models import WeightsEnum

    weights_enum = get_model_weights(name)
    preprocess = None
    input_shape = (3, 224, 224)
    # a weights name (or a torchvision weights member) wins over a same-named file
    is_name = isinstance(weights, WeightsEnum) or (
        isinstance(weights, str)
        and (weights == "DEFAULT" or weights in weights_enum.__members__)
    )
    if weights is None or (not is_name and looks_like_path(weights)):
        default = getattr(weights_enum, "DEFAULT", None)
        if default is not None:
            preprocess = default.transforms()
        if weights is None:
            model = get_model(name, weights=None)
        else:
            # Build the architecture torchvision builds for its pretrained weights, so
            # that a local copy of the downloaded file gives the same network.
            overrides, aux = _PRETRAINED_ARCH.get(name, ({}, ()))
            model = get_model(name, weights=None, **overrides)
            if aux:  # torchvision drops the auxiliary classifiers after loading
                model.aux_logits = False
                for attr in aux:
                    setattr(model, attr, None)
            load_into(model, weights, ignore_prefixes=tuple(f"{a}." for a in aux))
    else:
        if isinstance(weights, WeightsEnum):
            if not isinstance(weights, weights_enum):
                raise ValueError(
                    f"weights={weights} belongs to another architecture; {name!r} takes "
                    f"{weights_enum.__name__} members, e.g. {weights_enum.__name__}.DEFAULT."
                )
            weights = weights.name
        if not isinstance(weights, str):
            raise TypeError(
                f"weights must be None, a weights name such as 'DEFAULT' or a path to a "
                f"state-dict file, got {type(weights).__name__}."
            )
        try:
            w = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except KeyError:
            available = ["DEFAULT"] + [w.name for w in weights_enum]
            raise ValueError(
                f"weights={weights!r} is not a known weights name for {name!r}; "
                f"available: {available}, or a path to a local .pt/.pth/.safetensors file."
            ) from None
        preprocess = w.transforms()
        try:
            model = get_model(name, weights=w)
        except (OSError, RuntimeError, ValueError) as exc:
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            filename = os.path.basename(w.url)
            raise WeightsUnavailableError(
                f"Could not download the pretrained weights {name}/{w.name} from {w.url} "
                f"({type(exc).__name__}: {exc}). Either put the file {filename!r} into "
                f"torchvision's cache folder {str(hub_dir)!r}, or download it elsewhere and "
                f"pass its local path: model={name!r}, weights='/path/to/{filename}'."
            ) from exc
        crop = getattr(preprocess, "crop_size", None)
        if crop:
            input_shape = (3, int(crop[0]), int(crop[0]))
    _ = torchvision  # keep import for side effects of model registration
    return model, preprocess, input_shape


# Builders whose pretrained weights change the architecture (torchvision's
# ``_ovewrite_named_param`` calls): constructor overrides, auxiliary heads it drops.
_PRETRAINED_ARCH = {
    "googlenet": ({"transform_input": True, "init_weights": False}, ("aux1", "aux2")),
    "inception_v3": ({"transform_input": True, "init_weights": False}, ("AuxLogits",)),
}

def _call_factory(model):
    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        required = [
            p for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if required:
            raise TypeError(
                f"model={getattr(model, '__name__', model)!r} is a callable that needs "
                f"arguments {[p.name for p in required]}; pass a zero-argument callable "
                "(e.g. functools.partial) or an nn.Module instance."
            )
    built = model()
    if not isinstance(built, nn.Module):
        raise TypeError(
            f"model={getattr(model, '__name__', model)!r} returned a "
            f"{type(built).__name__}, not an nn.Module."
        )
    return built


def _first_linear_in_features(net):
    for m in net.modules():
        if isinstance(m, nn.LazyLinear) or isinstance(
            getattr(m, "weight", None), nn.parameter.UninitializedParameter
        ):
            return None
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return None
    return None


_SOURCES = ("timm:", "hf:")


def _is_timm(module):
    from ._timm import is_timm_model

    return is_timm_model(module)


def _resolve_source(model, weights):
    """``"timm:<name>"`` or ``"hf:<directory or hub id>"``."""
    kind, _, name = model.partition(":")
    if kind == "timm":
        from ._timm import build_timm, input_size, split_timm, timm_preprocess

        module, description = build_timm(name, weights)
        return ResolvedModel(net=split_timm(module), original=module,
                             preprocess=timm_preprocess(module), input_shape=input_size(module),
                             description=description)
    from ._hf import build_hf

    net, preprocess, description = build_hf(name, weights)
    return ResolvedModel(net=net, original=None, preprocess=preprocess, input_shape=None,
                         description=description)


def resolve_model(model, weights=None):
    """Build a private, split copy of the pretrained network.

    ``model`` and ``weights`` have passed ``MODEL_CONSTRAINTS`` (the callers'
    parameter validation); what the constraints cannot express (a factory's
    arguments, a weights name that fits the architecture, a file's contents) is
    checked here.

    Returns
    -------
    ResolvedModel
        ``net`` is a :class:`BlockNet` that shares no parameters with the
        caller's ``model``: modifying it never changes the user's module.
    """
    preprocess = None
    input_shape = None
    extra: dict[str, Any] = {}
    if hasattr(model, "__sktransfer_model__") and not isinstance(model, type):
        if weights is not None:
            raise ValueError(
                "weights must be None when model is a fitted sktransfer estimator: its "
                "fitted network already carries the weights."
            )
        from sklearn.exceptions import NotFittedError

        try:
            source = model.__sktransfer_model__()
        except NotFittedError as exc:
            name = type(getattr(model, "estimator", model)).__name__
            raise NotFittedError(
                f"model is an unfitted {name}: fit it on the source data first. If it was "
                "fitted, a scikit-learn tool cloned it: GridSearchCV clones grid values, "
                "and a clone is unfitted. Wrap each fitted source in "
                "sklearn.frozen.FrozenEstimator, which clones as itself: "
                "{'net__model': [FrozenEstimator(source_a), FrozenEstimator(source_b)]}."
            ) from exc
        net = private_copy(source.net)
        return ResolvedModel(
            net=net,
            original=None,
            preprocess=source.preprocess,
            input_shape=source.input_shape,
            description=f"fitted {type(getattr(model, 'estimator', model)).__name__}",
            extra=dict(source.extra),
        )
    if isinstance(model, str) and model.startswith(_SOURCES):
        return _resolve_source(model, weights)
    if isinstance(model, str):
        module, preprocess, input_shape = _build_torchvision(model, weights)
        description = model if weights is None else f"{model} ({weights})"
    elif isinstance(model, nn.Module):
        module = private_copy(model)
        description = type(model).__name__
    else:  # a class or zero-argument callable (MODEL_CONSTRAINTS allow nothing else)
        module = _call_factory(model)
        description = getattr(model, "__name__", type(model).__name__)
    if not isinstance(model, str) and weights is not None:
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(
                f"weights must be None or a path to a state-dict file "
                f"(.pt/.pth/.safetensors) when model is not an architecture name; got "
                f"{type(weights).__name__}."
            )
        if isinstance(weights, str) and not looks_like_path(weights):
            raise ValueError(
                f"weights={weights!r} looks like a torchvision weights name, which only "
                "applies when model is an architecture name (e.g. model='resnet18'). For "
                "an nn.Module pass weights=None or a path to a state-dict file."
            )
        load_into(module, weights)
    if isinstance(module, BlockNet):
        net = module
        original = None
    elif _is_timm(module):
        from ._timm import input_size, split_timm, timm_preprocess

        preprocess, input_shape = timm_preprocess(module), input_size(module)
        net, original = split_timm(module), module
    else:
        net = split_model(module)
        original = module
    if input_shape is None:
        input_shape = _first_linear_in_features(net)
    return ResolvedModel(
        net=net,
        original=original,
        preprocess=preprocess,
        input_shape=input_shape,
        description=description,
        extra=extra,
    )
