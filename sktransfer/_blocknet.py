"""``BlockNet``: a network as ordered blocks, a parameter-free neck and a head.

The bottom of sktransfer's import order: this module imports nothing from the
package. Everything else (split rules, model sources, training, estimators)
builds on it. The forward pass of a ``BlockNet`` is::

    x -> block_0 -> ... -> block_{n-1} -> pre_head -> head -> post_head

It also holds sktransfer's global pooling (:func:`pool_features`,
:class:`GlobalPool`): how a feature map or a sequence of tokens becomes one
vector per sample.
"""

from __future__ import annotations

from torch import nn

__all__ = ["BlockNet", "GlobalPool", "pool_features", "pool_tokens", "rowwise_pre_head"]

def _has_params(module):
    return any(True for _ in module.parameters())


def _n_params(module):
    total = 0
    for p in module.parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            continue
        total += p.numel()
    return total


class BlockNet(nn.Module):
    """A network as ordered blocks, a parameter-free neck and a head.

    Built by :func:`split_model` (explicit block names), or automatically from
    any model passed as ``model=`` to sktransfer's estimators.  A fitted
    estimator's ``module_`` is a ``BlockNet``.

    Parameters
    ----------
    blocks : list of (str, nn.Module)
        The blocks, input side first, with their names.
    head : nn.Module or None, default=None
        The final layer. ``None`` means the network has no head (an encoder):
        its output is the last block's output.
    pre_head : nn.Module or None, default=None
        Parameter-free module between the last block and the head
        (e.g. global average pooling and flatten).
    post_head : nn.Module or None, default=None
        Parameter-free module after the head (e.g. a trailing ``Softmax`` of a
        ``Sequential``). It is dropped when the head is replaced.
    head_name : str, default="head"
        Name of the head in the original model, for display.
    split_kind : str, default="explicit"
        How the split was obtained (see Attributes).
    channels_last : bool, default=False
        Whether block outputs put the feature axis last (transformer tokens
        ``(n, tokens, dim)``, Swin's ``(n, H, W, C)``); pooling then reduces the
        middle axes instead of the trailing ones.

    Attributes
    ----------
    block_names : list of str
        Names of the blocks, input side first.
    split_kind : str
        How the split was obtained: ``"explicit"``, ``"sequential"``,
        ``"family:<name>"`` or ``"default"``.

    Examples
    --------
    >>> from torch import nn
    >>> from sktransfer import split_model
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8),
    ...                     nn.ReLU(), nn.Linear(8, 2))
    >>> bnet = split_model(net)
    >>> bnet.block_names
    ['0-1', '2-3']
    """

    def __init__(self, blocks, head=None, pre_head=None, post_head=None,
                 head_name="head", split_kind="explicit", channels_last=False):
        super().__init__()
        blocks = list(blocks)
        if not blocks and head is None:
            raise ValueError("A BlockNet needs at least one block or a head.")
        self.block_names = [str(name) for name, _ in blocks]
        self.blocks = nn.ModuleList([module for _, module in blocks])
        for name, module in (("pre_head", pre_head), ("post_head", post_head)):
            if module is not None and _has_params(module):
                raise ValueError(
                    f"{name} must be parameter-free, got a {type(module).__name__} "
                    "with parameters; put it in a block instead."
                )
        self.pre_head = pre_head if pre_head is not None else nn.Identity()
        self.head = head if head is not None else nn.Identity()
        self.post_head = post_head if post_head is not None else nn.Identity()
        self.has_head = head is not None
        self.head_name = head_name if head is not None else None
        self.split_kind = split_kind
        self.channels_last = bool(channels_last)
        self.start_block = 0

    def __len__(self):
        return len(self.blocks)

    def forward_features(self, x, stop=None, start=0):
        """Run blocks ``start..stop-1``; ``stop=None`` also applies ``pre_head``.

        ``start=len(blocks) + 1``: ``x`` is already the ``pre_head``'s output (what
        a head that trains alone is given when it is computed once per row,
        :func:`rowwise_pre_head`).
        """
        end = len(self.blocks) if stop is None else stop
        for block in self.blocks[start:end]:
            x = block(x)
        if stop is None and start <= len(self.blocks):
            x = self.pre_head(x)
        return x

    def forward_head(self, x):
        return self.post_head(self.head(x))

    def forward(self, x):
        # ``start_block > 0`` only while fine-tuning on cached outputs of frozen blocks
        return self.forward_head(self.forward_features(x, start=self.start_block))

    def extra_repr(self):
        return f"block_names={self.block_names}, split_kind={self.split_kind!r}"


class _Chain(nn.Sequential):
    """A ``Sequential`` that keeps references to submodules of another model."""


#: parameter-free modules that compute each row on its own, the same way in training
#: and in eval mode (no dropout, no batch statistics)
_ROWWISE = (nn.Identity, nn.Flatten, nn.Unflatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
            nn.MaxPool2d, nn.MaxPool3d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish,
            nn.Tanh, nn.Sigmoid)


def rowwise_pre_head(net):
    """Whether ``net.pre_head`` may run once per row instead of on every training batch.

    True when it is made only of pooling, reshaping and activation layers
    (``GlobalPool``, ``nn.AdaptiveAvgPool2d``, ``nn.Flatten``, torchvision's
    ``Permute``, ... in ``nn.Sequential`` chains; exact types, no hooks): each
    row's output then depends on that row alone and is the same in training and
    eval mode. A ``Dropout`` (or any other module) in it says False.
    """
    try:
        from torchvision.ops.misc import Permute
    except ImportError:  # pragma: no cover - torchvision is a dependency
        Permute = None

    def ok(module):
        if module._forward_hooks or module._forward_pre_hooks:
            return False
        if type(module) in (nn.Sequential, _Chain):
            return all(ok(child) for child in module.children())
        return type(module) in _ROWWISE or type(module) in (GlobalPool, Permute)

    return ok(net.pre_head)


def _chain(modules):
    modules = [m for m in modules if m is not None]
    if len(modules) == 1:
        return modules[0]
    return _Chain(*modules)


def pool_features(x, pooling="avg", channels_last=False, token_mask=False):
    """Turn a block output into one vector per sample: sktransfer's global pooling.

    2-D outputs are returned as they are. Otherwise ``"avg"`` (``"mean"``) and
    ``"max"`` reduce every axis except the batch and the channel axis (axis 1,
    or the last axis when ``channels_last``, as for transformer tokens ``(n,
    tokens, dim)``), ``"cls"`` takes the first token of a token sequence, and
    ``"flatten"`` keeps everything. With ``token_mask`` the output is a text
    encoder's (:func:`pool_tokens`): padding tokens are left out. Used for the
    features of ``FeatureExtractorTransformer``, the input of a new fine-tuning
    head, and the torchvision families and text encoders that pool this way.
    """
    if token_mask:
        return pool_tokens(x, pooling)
    if x.ndim == 2:
        return x
    if pooling == "cls":
        if not (channels_last and x.ndim == 3):
            raise ValueError(
                f"pooling='cls' takes the first token of a transformer's output "
                f"(n, tokens, dim), but this layer outputs shape {tuple(x.shape)}; use "
                "pooling='avg', 'max' or 'flatten'."
            )
        return x[:, 0]
    if pooling == "mean":
        pooling = "avg"
    if pooling == "flatten":
        return x.reshape(x.shape[0], -1)
    if channels_last:
        dims = tuple(range(1, x.ndim - 1))
    else:
        dims = tuple(range(2, x.ndim))
    if pooling == "avg":
        return x.mean(dim=dims)
    return x.amax(dim=dims)


def pool_tokens(x, pooling):
    """One vector per text from a text encoder's block output ``(n, L, dim + 1)``.

    Its last channel is the attention mask (``_hf.py``), so that every block,
    the pooling and the frozen-prefix cache see the mask with the states:
    ``"mean"`` (``"avg"``) and ``"max"`` run over the real tokens only, ``"cls"``
    takes the first token.
    """
    if x.ndim == 2:
        return x
    h, mask = x[..., :-1], x[..., -1:]
    if pooling == "cls":
        return h[:, 0]
    if pooling in ("avg", "mean"):
        return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    if pooling == "max":
        return h.masked_fill(mask == 0, float("-inf")).amax(dim=1)
    raise ValueError(
        f"pooling={pooling!r} does not apply to texts, whose token sequences have different "
        "lengths; use 'mean' (average over the tokens), 'cls' (the first token) or 'max'."
    )


class GlobalPool(nn.Module):
    """Parameter-free :func:`pool_features` as a module (a ``pre_head`` or head input)."""

    def __init__(self, pooling="avg", channels_last=False, token_mask=False):
        super().__init__()
        self.pooling = pooling
        self.channels_last = channels_last
        self.token_mask = token_mask

    def forward(self, x):
        return pool_features(x, self.pooling, self.channels_last, self.token_mask)

    def extra_repr(self):
        return (f"pooling={self.pooling!r}, channels_last={self.channels_last}"
                + (", token_mask=True" if self.token_mask else ""))
