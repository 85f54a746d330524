"""Split rules and freezing: which blocks a network has, and which of them train.

Every pretrained network that sktransfer handles is turned into a
:class:`~sktransfer.BlockNet` (``_blocknet.py``): ordered *blocks*, a
parameter-free ``pre_head`` and a *head*. ``freeze_depth=k`` freezes blocks
``0..k-1``; feature extraction returns the output of one block (or the head's
input).

How a model is split:

* :class:`BlockNet`: used as it is.
* ``nn.Sequential``: a new block starts at each child that has parameters;
  parameter-free children (activations, pooling, dropout, flatten) join the
  block before them.  The last ``nn.Linear`` child is the head.
* torchvision families: a hand-checked split (see ``_families.py``).
* any other module: its top-level children in order, the last ``nn.Linear``
  child is the head.  Because such a module's ``forward`` may do more than call
  its children in order, this *default* split is verified against the model's
  own forward on the first batch seen (see :func:`check_split_matches`).
  Name the blocks explicitly with :func:`split_model` when the default is wrong.

Freezing (the one home of it): :func:`check_freeze_depth` turns the parameter
into a block count, :func:`freeze_blocks` takes the leading blocks out of
training, :func:`freeze_all` freezes a whole network (feature extraction),
:func:`set_trainable_from` moves the boundary during gradual unfreezing and
:func:`keep_frozen_in_eval` keeps frozen blocks' BatchNorm/Dropout in eval mode.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils._param_validation import validate_params
from torch import nn

from ._blocknet import BlockNet, _chain, _has_params
from ._families import split_family

__all__ = ["BlockNet", "split_model", "check_split_matches", "check_freeze_depth",
           "freeze_blocks", "freeze_all", "keep_frozen_in_eval", "unfreeze_depth",
           "set_trainable_from"]


def _last_linear_index(children):
    for i in range(len(children) - 1, -1, -1):
        if isinstance(children[i][1], nn.Linear):
            return i
    return None


def _group_children(children, kind):
    """Blocks from (name, module) children: a new block at each parametrised child."""
    head_idx = _last_linear_index(children)
    body = children if head_idx is None else children[:head_idx]
    post = [] if head_idx is None else children[head_idx + 1:]
    if any(_has_params(m) for _, m in post):
        # parametrised layers after the last Linear: no clean head, keep all as blocks
        body, post, head_idx = children, [], None
    groups = []
    for name, module in body:
        if _has_params(module) or not groups:
            groups.append([(name, module)])
        else:
            groups[-1].append((name, module))
    # a leading parameter-free group followed by nothing parametrised is fine;
    # a leading parameter-free child joins the first parametrised block
    if len(groups) >= 2 and not any(_has_params(m) for _, m in groups[0]):
        groups[1] = groups[0] + groups[1]
        groups.pop(0)
    blocks = []
    for group in groups:
        names = [n for n, _ in group]
        name = names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
        blocks.append((name, _chain([m for _, m in group])))
    head = None if head_idx is None else children[head_idx][1]
    head_name = None if head_idx is None else children[head_idx][0]
    post_head = _chain([m for _, m in post]) if post else None
    return BlockNet(blocks, head=head, post_head=post_head,
                    head_name=head_name or "head", split_kind=kind)


def _resolve_names(model, names, what):
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must be module names (str), got {name!r}.")
        if name not in modules or name == "":
            close = [n for n in modules if n and n.split(".")[-1] == name.split(".")[-1]]
            top = [n for n, _ in model.named_children()]
            raise ValueError(
                f"{what}: {type(model).__name__} has no submodule {name!r}. "
                f"Top-level children are {top}" + (f"; did you mean {close}?" if close else ".")
            )
        out.append((name, modules[name]))
    return out


@validate_params(
    {"model": [nn.Module], "blocks": [list, tuple, None], "head": [str, None],
     "pre_head": [nn.Module, list, tuple, None]},
    prefer_skip_nested_validation=True,
)
def split_model(model, blocks=None, head="auto", pre_head=None):
    """Split ``model`` into blocks and a head, explicitly or by the rules.

    Parameters
    ----------
    model : nn.Module
        The network. It is not copied: the returned ``BlockNet`` shares its
        submodules (and parameters) with ``model``.
    blocks : list of (str or list of str), default=None
        Names of submodules (as in ``model.named_modules()``), one entry per
        block, input side first. An entry that is a list of names makes one
        block that runs those submodules in order. ``None`` applies the
        automatic rules (``Sequential`` rule, torchvision family split, or top-level
        children).
    head : str or None, default="auto"
        Name of the head submodule. ``"auto"``: the last ``nn.Linear`` among
        the model's top-level children (or the family's head). ``None``: no
        head (the network is an encoder).
    pre_head : nn.Module or list of str, default=None
        Parameter-free step(s) between the last block and the head, e.g.
        ``nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())``, or names of
        such submodules in ``model``.

    Returns
    -------
    BlockNet
        Runs ``blocks -> pre_head -> head``. When you give ``blocks``, the
        split is yours: sktransfer trusts that running them in order
        reproduces the model.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sktransfer import split_model
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    ...         self.out = nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         return self.out(self.body(x))
    >>> bnet = split_model(Net(), blocks=["body"], head="out")
    >>> bnet.block_names, bnet.head_name
    (['body'], 'out')
    >>> bnet(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """
    if blocks is None:
        if head != "auto" or pre_head is not None:
            raise ValueError(
                "head= and pre_head= are only used together with blocks=[...]; "
                "pass the block names too."
            )
        return _auto_split(model)
    block_list = []
    for entry in blocks:
        if not isinstance(entry, (str, list, tuple)):
            raise TypeError(
                f"blocks entries must be submodule names (str) or lists of names, got "
                f"{entry!r}; see [name for name, _ in model.named_modules()]."
            )
        names = [entry] if isinstance(entry, str) else list(entry)
        if not names:
            raise ValueError("blocks contains an empty list; every block needs a module.")
        resolved = _resolve_names(model, names, "blocks")
        name = names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
        block_list.append((name, _chain([m for _, m in resolved])))
    if head == "auto":
        children = list(model.named_children())
        idx = _last_linear_index(children)
        if idx is None:
            raise ValueError(
                f"head='auto' found no nn.Linear child in {type(model).__name__}; "
                "pass head='<module name>' or head=None for an encoder."
            )
        head_name, head_mod = children[idx]
    elif head is None:
        head_name, head_mod = None, None
    else:
        head_name, head_mod = _resolve_names(model, [head], "head")[0]
    if isinstance(pre_head, (list, tuple)):
        pre_head = _chain([m for _, m in _resolve_names(model, list(pre_head), "pre_head")])
    return BlockNet(block_list, head=head_mod, pre_head=pre_head,
                    head_name=head_name or "head", split_kind="explicit")

def _auto_split(model):
    if isinstance(model, BlockNet):
        return model
    if isinstance(model, nn.Sequential):
        return _group_children(list(model.named_children()), "sequential")
    found = split_family(model)
    if found is not None:
        return found
    children = list(model.named_children())
    if not children:
        raise ValueError(
            f"Cannot split a {type(model).__name__} without child modules into blocks; "
            "wrap it, e.g. nn.Sequential(model), or use sktransfer.split_model."
        )
    return _group_children(children, "default")

def check_split_matches(bnet, original, sample):
    """Check that a *default* split reproduces ``original``'s forward on ``sample``.

    Only default splits (top-level children of an arbitrary module) need this:
    ``Sequential``, torchvision families and explicit splits are trusted.
    Raises ``ValueError`` naming the fix when they differ.
    """
    if bnet.split_kind != "default" or original is None:
        return
    problem = None
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        was_training = original.training
        original.eval()
        try:
            try:
                expected = original(sample)
                got = bnet(sample)
            except Exception as exc:  # noqa: BLE001 - reported to the user below
                problem = f"running its children in order failed ({type(exc).__name__}: {exc})"
            else:
                if not isinstance(expected, torch.Tensor):
                    problem = f"its forward returns a {type(expected).__name__}, not a tensor"
                elif expected.shape != got.shape or not torch.allclose(
                    expected, got, rtol=1e-4, atol=1e-5
                ):
                    problem = "running its children in order gives a different output"
        finally:
            original.train(was_training)
    if problem is not None:
        names = [n for n, _ in original.named_children()]
        raise ValueError(
            f"The default block split of {type(original).__name__} (its top-level children "
            f"{names} in order, last nn.Linear as head) does not reproduce its forward: "
            f"{problem}. Name the blocks explicitly: "
            "model=sktransfer.split_model(net, blocks=[...], head='...', pre_head=...)."
        )

def freeze_blocks(bnet, depth):
    """Set ``requires_grad=False`` on blocks ``0..depth-1``; return frozen param names."""
    frozen = set()
    for i in range(depth):
        for name, p in bnet.blocks[i].named_parameters():
            p.requires_grad_(False)
            frozen.add(f"blocks.{i}.{name}")
    return frozen


def freeze_all(net):
    """The whole network frozen and in eval mode (feature extraction); returns it."""
    net.requires_grad_(False)
    return net.eval()


def keep_frozen_in_eval(bnet, depth):
    """Blocks ``0..depth-1`` back in eval mode after ``bnet.train()``: their BatchNorm
    statistics do not move and their Dropout is off while the rest trains."""
    for block in bnet.blocks[:depth]:
        block.eval()


def unfreeze_depth(epoch, n_blocks, floor, every):
    """Gradual unfreezing: the number of frozen blocks in (1-based) ``epoch``.

    The head trains alone for ``every`` epochs (all ``n_blocks`` frozen), then
    one more block from the top is unfrozen every ``every`` epochs, down to
    ``floor`` (``freeze_depth``) frozen blocks.
    """
    return max(floor, n_blocks - (epoch - 1) // every)


def set_trainable_from(bnet, floor, depth):
    """Blocks ``floor..depth-1`` frozen, blocks ``depth..`` trainable; blocks below
    ``floor`` (frozen by ``freeze_depth``) are left as they are."""
    for i, block in enumerate(bnet.blocks):
        if i >= floor:
            block.requires_grad_(i >= depth)


def check_freeze_depth(freeze_depth, n_blocks):
    """``freeze_depth`` as a number of blocks, checked against ``n_blocks``.

    The estimator's constraints already allow only ints >= 0 and ``"all"``; the
    upper bound depends on the model, and a bool passes as an int to them
    (``True`` probably meant ``"all"``), so both are checked here.
    """
    if isinstance(freeze_depth, str):  # "all"
        return n_blocks
    if isinstance(freeze_depth, (bool, np.bool_)):
        raise TypeError(
            f"freeze_depth must be an int or 'all', got {type(freeze_depth).__name__} "
            f"{freeze_depth!r}."
        )
    if freeze_depth > n_blocks:
        raise ValueError(
            f"freeze_depth={freeze_depth} is out of range: the model has {n_blocks} blocks, "
            f"so use 0..{n_blocks} or 'all' (see sktransfer.list_blocks(model))."
        )
    return int(freeze_depth)
