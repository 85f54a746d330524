"""timm image models as a model source: ``model="timm:<name>"`` and timm modules.

How a timm model becomes a :class:`BlockNet`
--------------------------------------------

timm models share a contract (timm's ``resnet.py`` is the reference):
``forward(x) = forward_head(forward_features(x))``, ``get_classifier()`` returns
the final layer, ``reset_classifier(0)`` removes it, ``forward_head(x,
pre_logits=True)`` stops just before it, and ``group_matcher()`` names the
parameter groups timm itself uses for layer-wise learning-rate decay. The
split is built from that contract, not from a per-architecture table:

* **trunk**: the top-level children that ``forward_features`` calls, in the
  order it calls them (recorded with forward pre-hooks on one dummy batch of
  the model's own input size). Vision transformers
  (``VisionTransformer``: ViT, DeiT, ...) concatenate a class token and add
  position embeddings outside any child, so their first step is the model's
  own ``patch_embed`` + ``_pos_embed`` + ``patch_drop`` + ``norm_pre``.
* **blocks**: consecutive trunk steps grouped by timm's *coarse*
  ``group_matcher`` (``timm.models.group_parameters``): ResNet ``stem,
  layer1..layer4``; ViT ``stem, blocks.0..blocks.{L-1}`` (the last with the
  final ``norm``); ConvNeXt ``stem, stages.0..stages.3``; EfficientNet ``stem,
  blocks.0..blocks.6`` (the last with ``conv_head``, ``bn2``). A container whose
  parameters span several groups (``nn.Sequential`` of stages) is opened up.
* **neck** (between the last block and the head): the model's own
  ``forward_head(x, pre_logits=True)``, run on a copy of the model that holds
  only the children the trunk does not use, without the classifier. A neck
  without parameters (global pooling, dropout) is the ``pre_head``; one with
  parameters (ConvNeXt's final norm, a ViT ``fc_norm``) ends the last block.
* **head**: ``get_classifier()``.

The split is checked on the dummy batch: running the blocks, the neck and the
head must reproduce ``forward_features``, ``forward_head(pre_logits=True)`` and
the model's output, and cover every parameter. When it does not (a model with
other operations between its children), the model is one block
(``"features"``: the whole model after ``reset_classifier(0)``) plus its
classifier: feature extraction and fine-tuning work, ``freeze_depth`` is then
0 or ``"all"``. The outcome of the check depends only on the architecture, so
it is computed once per architecture and process.

Why not timm's ``forward_intermediates`` or its FX feature extractor: they
return the outputs of chosen stages, but cannot *start* a forward pass at a
stage, which freezing with the frozen-prefix cache and ``layer`` need (a
``BlockNet`` runs blocks ``k..`` on cached outputs of blocks ``..k-1``).
"""

from __future__ import annotations

import difflib
import hashlib
import threading

import torch
from torch import nn

from ._blocknet import BlockNet, _chain, _has_params
from ._weight_files import WeightsUnavailableError, load_into, looks_like_path

__all__ = ["build_timm", "is_timm_model", "split_timm", "timm_preprocess", "input_size"]

_INSTALL = "pip install 'sktransfer[timm]'"
_STRUCTURE: dict = {}  # architecture fingerprint -> how to split it (see _structure)
_LOCK = threading.Lock()


def require_timm(what):
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional package timm, which is not installed: "
            f"{_INSTALL} (or pip install timm)."
        ) from exc
    return timm


def is_timm_model(module):
    """Whether ``module`` is a timm model (a class from ``timm.models``)."""
    return type(module).__module__.startswith("timm.models") and hasattr(
        module, "forward_features") and hasattr(module, "get_classifier")


# --------------------------------------------------------------------------
# building "timm:<name>" with its weights
# --------------------------------------------------------------------------


def build_timm(name, weights):
    """``timm.create_model(name)`` with ``weights``: None, a local file, a pretrained tag.

    Returns ``(model, description)``.
    """
    timm = require_timm(f"model='timm:{name}'")
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {['timm:' + c for c in close]}?" if close else ""
        raise ValueError(
            f"Unknown timm model 'timm:{name}'.{hint} See timm.list_models() (or "
            "timm.list_pretrained() for names with a pretrained tag, e.g. "
            "'timm:resnet18.a1_in1k')."
        )
    if weights is None:
        return timm.create_model(name, pretrained=False), f"timm:{name}"
    base, _, tag = name.partition(".")
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{base}.*")]
    is_tag = isinstance(weights, str) and (weights == "DEFAULT" or weights in tags)
    if not is_tag and looks_like_path(weights):  # a tag wins over a same-named file
        model = timm.create_model(name, pretrained=False)
        load_into(model, weights)
        return model, f"timm:{name} ({weights})"
    if not isinstance(weights, str):
        raise TypeError(
            f"weights must be None, 'DEFAULT', a timm pretrained tag or a path to a "
            f"state-dict file for model='timm:{name}', got {type(weights).__name__}."
        )
    if not is_tag:
        raise ValueError(
            f"weights={weights!r} is not a pretrained tag of timm's {base!r}; available: "
            f"{['DEFAULT'] + tags}, or a path to a local .pt/.pth/.safetensors file."
        )
    if weights != "DEFAULT" and tag:
        raise ValueError(
            f"model='timm:{name}' already names a pretrained tag; pass weights='DEFAULT' "
            f"for its weights, or model='timm:{base}', weights={weights!r}."
        )
    if not tags:
        raise ValueError(
            f"timm has no pretrained weights for {name!r}; pass weights=None or a path to "
            "a local state-dict file."
        )
    full = name if weights == "DEFAULT" else f"{name}.{weights}"
    try:
        model = timm.create_model(full, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsUnavailableError(_offline_message(timm, full, exc)) from exc
    return model, f"timm:{full} (pretrained)"


def _offline_message(timm, full, exc):
    cfg = timm.models.get_pretrained_cfg(full) if hasattr(timm.models, "get_pretrained_cfg") \
        else None
    source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "its source"
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        cache = "the Hugging Face cache"
    return (
        f"Could not download timm's pretrained weights for {full!r} from {source} "
        f"({type(exc).__name__}: {str(exc)[:300]}). Download them once on a machine that is "
        f"online (timm keeps them in {str(cache)!r}; copy that folder here, and set "
        "HF_HUB_OFFLINE=1 to skip the network), or save the state dict of "
        f"timm.create_model({full!r}, pretrained=True) to a file and pass its local path: "
        f"model='timm:{full}', weights='/path/to/model.safetensors'."
    )


# --------------------------------------------------------------------------
# preprocessing from timm's data config
# --------------------------------------------------------------------------


def _data_config(model):
    """timm's data config of ``model`` (``resolve_data_config``).

    A model built for another image size than its pretrained config's (e.g.
    ``create_model("vit_tiny_patch16_224", img_size=32)``) takes that size.
    """
    from timm.data import resolve_data_config

    config = resolve_data_config(model=model)
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if (isinstance(size, (tuple, list)) and len(size) == 2
            and not getattr(model, "dynamic_img_size", False)
            and tuple(config["input_size"][1:]) != tuple(size)):
        config = resolve_data_config(
            args={"input_size": (config["input_size"][0], *map(int, size))}, model=model)
    return config


def input_size(model):
    """One sample's shape ``(C, H, W)`` from timm's data config."""
    return tuple(int(s) for s in _data_config(model)["input_size"])


class TimmPreprocess:
    """timm's evaluation transform (``resolve_data_config`` + ``create_transform``).

    PIL images go through timm's own transform; a uint8 batch ``(n, C, H, W)``
    (image arrays) goes through it image by image, as PIL images, so that both
    inputs are preprocessed exactly alike.
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            from torchvision.transforms.functional import to_pil_image

            return torch.stack([self.transform(to_pil_image(img)) for img in x])
        return self.transform(x)

    def __repr__(self):
        return f"TimmPreprocess({self.transform!r})"


def timm_preprocess(model):
    from timm.data import create_transform

    return TimmPreprocess(create_transform(**_data_config(model)))


# --------------------------------------------------------------------------
# the split
# --------------------------------------------------------------------------


def _shallow_clone(module, children, parameters=()):
    """An instance of ``type(module)`` holding only some of its children and parameters.

    Its methods (``forward_head``, ``_pos_embed``) are the model's own; the
    children and parameters are shared with ``module``, never copied.
    """
    clone = object.__new__(type(module))
    clone.__dict__.update(module.__dict__)
    clone._modules = dict(children)
    clone._parameters = {k: module._parameters[k] for k in parameters}
    clone._buffers = {}
    return clone


class _Neck(nn.Module):
    """The model's ``forward_head(x, pre_logits=True)``, on a copy without the trunk."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def forward(self, x):
        return self.owner.forward_head(x, pre_logits=True)


class _ViTEmbed(nn.Module):
    """The start of a timm ``VisionTransformer.forward_features``.

    ``patch_embed``, the model's own ``_pos_embed`` (class/register tokens and
    position embeddings), ``patch_drop`` and ``norm_pre``.
    """

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def forward(self, x):
        vit = self.owner
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


_VIT_TRUNK = ("patch_embed", "pos_drop", "patch_drop", "norm_pre")


def _vit_steps(model):
    """Trunk steps of a timm ``VisionTransformer``; ``None`` for other classes."""
    from timm.models.vision_transformer import VisionTransformer

    if type(model) is not VisionTransformer:
        return None
    children = dict(model.named_children())
    embed = _shallow_clone(model, {n: children[n] for n in _VIT_TRUNK if n in children},
                           parameters=list(model._parameters))
    return [("embed", _ViTEmbed(embed)), ("blocks", model.blocks), ("norm", model.norm)]


def _classifier(model):
    """``(name, module)`` of the classifier, ``None`` when there is none (or several)."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
        return None
    for name, module in model.named_modules():
        if module is classifier and name:
            return name, module
    return None


def _without(module, path):
    """``module`` minus the submodule at dotted ``path`` (replaced by ``Identity``)."""
    first, _, rest = path.partition(".")
    children = dict(module.named_children())
    children[first] = nn.Identity() if not rest else _without(children[first], rest)
    return _shallow_clone(module, children, parameters=list(module._parameters))


def _recorded_trunk(model, x):
    """Names of the top-level children ``forward_features`` calls, in call order."""
    calls = []
    handles = [child.register_forward_pre_hook(lambda m, args, n=name: calls.append(n))
               for name, child in model.named_children()]
    try:
        model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _close(a, b):
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5))


def _structure(model):
    """How to split ``model``: ``(trunk names or None, neck ok, head ok, tokens)``.

    ``tokens``: ``forward_features`` returns ``(n, tokens, dim)`` (feature axis last).

    Checked on one dummy batch in eval mode; cached per architecture.
    """
    key = hashlib.sha256(f"{type(model).__qualname__}|{model!r}".encode()).hexdigest()
    with _LOCK:
        if key in _STRUCTURE:
            return _STRUCTURE[key]
    found = (None, False, False, False)
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, *input_size(model)), generator=generator)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            found = _check(model, x)
    except Exception:  # noqa: BLE001 - an architecture the rules do not fit: one block
        found = (None, False, False, False)
    finally:
        model.train(was_training)
    with _LOCK:
        _STRUCTURE[key] = found
    return found


def _check(model, x):
    vit = _vit_steps(model)
    names = ([n for n, _ in vit] if vit is not None else _recorded_trunk(model, x))
    if vit is None and len(set(names)) != len(names):
        return None, False, False, False  # a child called twice: not a chain
    features = model.forward_features(x)
    tokens = isinstance(features, torch.Tensor) and features.ndim == 3
    out = x
    for _, step in (vit or [(n, model.get_submodule(n)) for n in names]):
        out = step(out)
    if not _close(out, features):
        return None, False, False, tokens
    classifier = _classifier(model)
    neck = _neck(model, names if vit is None else _VIT_TRUNK + ("blocks", "norm"), classifier)
    pre_logits = model.forward_head(features, pre_logits=True)
    if not _close(neck(features), pre_logits):
        return None, False, False, tokens
    head_ok = classifier is not None and _close(classifier[1](pre_logits),
                                                model.forward_head(features))
    return names, True, head_ok, tokens


def _neck(model, trunk_names, classifier):
    keep = {n: m for n, m in model.named_children() if n not in trunk_names}
    clone = _shallow_clone(model, keep)
    if classifier is not None:
        clone = _without(clone, classifier[0])
    return _Neck(clone)


def _groups(model, steps):
    """``id(parameter) -> group index`` from timm's coarse ``group_matcher``.

    A model without one (or whose matcher fails) gets one group per trunk step.
    """
    from timm.models import group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
        by_name = group_parameters(model, matcher, reverse=True)
    except Exception:  # noqa: BLE001 - no usable grouping: the trunk's steps
        return {id(p): i for i, (_, step) in enumerate(steps) for p in step.parameters()}, None
    params = dict(model.named_parameters())
    return {id(params[n]): g for n, g in by_name.items() if n in params}, matcher


def _expand(steps, group_of):
    """Open up ``nn.Sequential`` steps whose parameters span several groups."""
    out = []
    for name, step in steps:
        ids = {group_of.get(id(p)) for p in step.parameters()}
        if len(ids) > 1 and isinstance(step, nn.Sequential):
            out += _expand([(f"{name}.{n}", c) for n, c in step.named_children()], group_of)
        else:
            out.append((name, step))
    return out


def _group_blocks(steps, group_of, matcher):
    """Consecutive steps of one group form a block; a block ends when the next
    step's groups all come after the current block's."""
    blocks = []  # [names of parametrised steps, modules, max group]
    for name, step in steps:
        groups = [g for g in (group_of.get(id(p), float("inf")) for p in step.parameters())]
        if not groups:
            if blocks:
                blocks[-1][1].append(step)
            else:
                blocks.append([[], [step], -1])
            continue
        if blocks and (min(groups) <= blocks[-1][2] or not blocks[-1][0]):
            blocks[-1][0].append(name)
            blocks[-1][1].append(step)
            blocks[-1][2] = max(blocks[-1][2], max(groups))
        else:
            blocks.append([[name], [step], max(groups)])
    named = []
    stem = isinstance(matcher, dict) and next(iter(matcher), None) == "stem"
    for i, (names, modules, _) in enumerate(blocks):
        if i == 0 and stem:
            label = "stem"
        else:
            label = names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"
        named.append((label, modules))
    return named


def split_timm(model):
    """The :class:`BlockNet` of a timm ``model`` (shares its parameters; no copy).

    See the module docstring for the rules. ``model`` may be changed (its
    classifier reset) when it is split as one block: pass a private copy.
    """
    names, neck_ok, head_ok, tokens = _structure(model)
    channels_last = tokens or getattr(model, "output_fmt", "NCHW") == "NHWC"
    family = type(model).__module__.rsplit(".", 1)[-1]
    classifier = _classifier(model)
    if names is None or not neck_ok:
        return _one_block(model, classifier, channels_last, family)
    vit = _vit_steps(model)
    if vit is not None:
        steps, trunk_names, channels_last = vit, _VIT_TRUNK + ("blocks", "norm"), True
    else:
        steps, trunk_names = [(n, model.get_submodule(n)) for n in names], names
    group_of, matcher = _groups(model, steps)
    blocks = _group_blocks(_expand(steps, group_of), group_of, matcher)
    neck = _neck(model, trunk_names, classifier)
    covered = {id(p) for _, mods in blocks for m in mods for p in m.parameters()}
    covered |= {id(p) for p in neck.parameters()}
    if classifier is not None:
        covered |= {id(p) for p in classifier[1].parameters()}
    if covered != {id(p) for p in model.parameters()}:
        return _one_block(model, classifier, channels_last, family)
    pre_head = None
    if _has_params(neck):
        blocks[-1][1].append(neck)
    else:
        pre_head = neck
    head = classifier[1] if classifier is not None and head_ok else None
    return BlockNet([(name, _chain(mods)) for name, mods in blocks], head=head,
                    pre_head=pre_head, head_name=classifier[0] if head is not None else "head",
                    split_kind=f"timm:{family}", channels_last=channels_last)


def _one_block(model, classifier, channels_last, family):
    """The whole model (classifier removed with ``reset_classifier(0)``) as one block.

    The classifier is the head when it maps the remaining model's output to the
    model's own output; otherwise the model is an encoder (a new head goes on top).
    """
    head = classifier[1] if classifier is not None else None
    x = torch.randn((1, *input_size(model)), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    expected = None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if head is not None:
                try:
                    expected = model(x)
                except Exception:  # noqa: BLE001 - then the model is an encoder
                    expected = None
            model.reset_classifier(0)
            try:
                ok = expected is not None and _close(head(model(x)), expected)
            except Exception:  # noqa: BLE001
                ok = False
    finally:
        model.train(was_training)
    return BlockNet([("features", model)], head=head if ok else None,
                    head_name=classifier[0] if ok else "head",
                    split_kind=f"timm:{family}:one_block", channels_last=channels_last)
