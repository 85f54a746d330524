"""``list_blocks``: what each ``freeze_depth`` freezes, before fitting anything.

It resolves a model like the estimators do (``_weights``), so it sits above
the model sources in the import order.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.utils._param_validation import validate_params
from torch import nn

from ._blocknet import _n_params
from ._weights import MODEL_CONSTRAINTS, resolve_model

__all__ = ["list_blocks"]


@validate_params(
    {**MODEL_CONSTRAINTS, "input_shape": [tuple, list, None]},
    prefer_skip_nested_validation=True,
)
def list_blocks(model, weights=None, input_shape=None):
    """Describe the blocks of ``model``: what each ``freeze_depth`` freezes.

    Parameters
    ----------
    model : str, nn.Module, class, callable or fitted sktransfer estimator
        Anything accepted as ``model=`` by the estimators.
    weights : str, path or None, default=None
        As for the estimators. Loading weights is only needed when the
        parameter count or shapes depend on them (they rarely do).
    input_shape : tuple of int, default=None
        Shape of one input sample (without the batch axis) used to compute
        each block's output shape, e.g. ``(3, 224, 224)``. By default it is
        inferred where possible (torchvision models, a first ``nn.Linear``).

    Returns
    -------
    blocks : pandas.DataFrame
        One row per block with columns ``index``, ``name``, ``n_params``,
        ``output_shape`` (``None`` where unknown) and ``frozen_by`` (the
        smallest ``freeze_depth`` that freezes the block). The head is described in
        ``blocks.attrs["head"]`` (name and parameter count).

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer import list_blocks
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8),
    ...                     nn.ReLU(), nn.Linear(8, 2))
    >>> list_blocks(net)[["index", "name", "n_params", "output_shape"]]
       index name  n_params output_shape
    0      0  0-1        40         (8,)
    1      1  2-3        72         (8,)
    """
    import pandas as pd

    if input_shape is not None:
        # element-wise: the constraints only say "a tuple or a list"
        if not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
            for d in input_shape
        ):
            raise TypeError(
                f"input_shape must be a tuple of ints, the shape of one sample without the "
                f"batch axis (e.g. (3, 224, 224) or (n_features,)), got {input_shape!r}."
            )
        if any(d < 1 for d in input_shape):
            raise ValueError(
                f"input_shape={tuple(input_shape)} has sizes < 1; every axis of a sample "
                "needs at least one value, e.g. (3, 224, 224) or (n_features,)."
            )
    resolved = resolve_model(model, weights)
    bnet = resolved.net
    shape = input_shape if input_shape is not None else resolved.input_shape
    shapes = [None] * len(bnet.blocks)
    if shape is not None and not _has_lazy(bnet):
        try:
            shapes = _block_output_shapes(bnet, tuple(shape))
        except Exception as exc:  # noqa: BLE001
            if input_shape is not None:
                known = resolved.input_shape
                hint = (f" The model takes samples of shape {tuple(known)}."
                        if known is not None and tuple(known) != tuple(input_shape) else "")
                raise ValueError(
                    f"Running an input of shape {tuple(input_shape)} through the blocks "
                    f"failed: {exc}.{hint} Check input_shape (one sample, no batch axis)."
                ) from exc
    rows = []
    for i, (name, block) in enumerate(zip(bnet.block_names, bnet.blocks)):
        rows.append({
            "index": i,
            "name": name,
            "n_params": _n_params(block),
            "output_shape": shapes[i],
            "frozen_by": f"freeze_depth>={i + 1}",
        })
    df = pd.DataFrame(rows, columns=["index", "name", "n_params", "output_shape", "frozen_by"])
    df.attrs["head"] = {
        "name": bnet.head_name,
        "n_params": _n_params(bnet.head) if bnet.has_head else 0,
    }
    df.attrs["split_kind"] = bnet.split_kind
    return df


def _has_lazy(module):
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters())


def _block_output_shapes(bnet, shape):
    bnet = copy.deepcopy(bnet).eval()
    x = torch.zeros((2, *shape))
    shapes = []
    with torch.inference_mode():
        for block in bnet.blocks:
            x = block(x)
            shapes.append(tuple(int(s) for s in x.shape[1:]))
    return shapes
