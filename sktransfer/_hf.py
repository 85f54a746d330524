"""Hugging Face ``transformers`` text encoders as a model source: ``model="hf:<dir or id>"``.

The directory (``model.save_pretrained(d)`` and ``tokenizer.save_pretrained(d)``)
or hub id is loaded with ``AutoModel`` and ``AutoTokenizer``; ``X`` is then a
1-D sequence of strings.

Blocks: ``embeddings``, then each encoder layer (``layer.0`` .. ``layer.{L-1}``),
found as ``model.embeddings`` and the first of ``model.encoder.layer``,
``model.transformer.layer``, ``model.encoder.layers``, ``model.layers``: BERT,
RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT, DistilBERT and other encoders built
the same way. The split is checked against the model's own forward
(``last_hidden_state``) on a short batch when the model is loaded; another
structure raises a ``ValueError``. BERT's pooler (a dense layer on ``[CLS]``,
trained for next-sentence prediction) is not a block: sentence vectors are a
pooling of the last layer (``pooling``), as sentence-transformers does.

What travels between blocks
---------------------------
A tokenized batch is one int64 tensor ``(n, 2, L)``: token ids and attention
mask, padded to the longest text of the batch. Every block returns one float
tensor ``(n, L, dim + 1)``: the hidden states with the attention mask as the
last channel, so that each layer, the pooling and the frozen-prefix cache see
the mask with the states (one tensor per block is what a ``BlockNet``, skorch
and the cache pass around). :func:`pool_tokens` turns it into one vector per
text: ``"mean"`` (``"avg"``) over the real tokens, ``"cls"`` the first token,
``"max"`` over the real tokens.

The model's own ``forward`` runs all layers at once (``output_hidden_states``
returns every layer's output, but cannot start at a layer), so each layer is
called as the model calls it, with the mask that
``transformers.masking_utils.create_bidirectional_mask`` builds for the model's
attention implementation; sentence-transformers' mean pooling is the same
masked mean as :func:`pool_tokens` (not a dependency for one line).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._blocknet import BlockNet, GlobalPool, pool_tokens
from ._weight_files import WeightsUnavailableError

__all__ = ["build_hf", "TextPreprocess", "pool_tokens", "is_text_net"]

_INSTALL = "pip install 'sktransfer[hf]'"
_LAYER_LISTS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")
_PROBE = ["sktransfer checks the split", "a"]


def require_hf(what):
    try:
        import tokenizers  # noqa: F401
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional packages transformers and tokenizers, which are not "
            f"installed: {_INSTALL} (or pip install transformers tokenizers)."
        ) from exc
    return transformers


def is_text_net(net):
    """Whether ``net``'s block outputs carry an attention mask (a text encoder)."""
    return bool(getattr(net, "token_mask", False))


class TextPreprocess:
    """The model's own tokenizer: texts -> int64 ``(n, 2, L)`` (ids, attention mask).

    Truncates to ``max_length`` tokens and pads to the longest text of the
    batch, or to ``pad_to`` when given (the frozen-prefix cache needs one length
    for all texts).
    """

    def __init__(self, tokenizer, max_length):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        state = backend.to_str() if backend is not None else repr(tokenizer)
        self.fingerprint = hashlib.sha256(state.encode()).hexdigest()[:16]

    def _encode(self, texts, max_length=None, **kwargs):
        return self.tokenizer(list(texts), truncation=True,
                              max_length=max_length or self.max_length,
                              return_attention_mask=True, **kwargs)

    def __call__(self, texts, pad_to=None):
        if pad_to is None:
            enc = self._encode(texts, padding="longest", return_tensors="pt")
        else:  # pad_to >= every text's length (see longest): nothing more is truncated
            enc = self._encode(texts, max_length=pad_to, padding="max_length",
                               return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()

    def longest(self, texts):
        """The number of tokens of the longest text (after truncation)."""
        return max((len(ids) for ids in self._encode(texts)["input_ids"]), default=1)

    def __repr__(self):
        return (f"TextPreprocess({type(self.tokenizer).__name__}, fingerprint="
                f"{self.fingerprint!r}, max_length={self.max_length})")


class _Embeddings(nn.Module):
    """Block 0: token ids -> the model's embeddings, with the mask as last channel."""

    def __init__(self, embeddings):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, x):
        ids, mask = x[:, 0], x[:, 1]
        h = self.embeddings(ids)
        return torch.cat([h, mask.unsqueeze(-1).to(h.dtype)], dim=-1)


class _Layer(nn.Module):
    """One encoder layer, with the attention mask the model itself would build."""

    def __init__(self, layer, config):
        super().__init__()
        self.layer = layer
        self.config = config

    def forward(self, x):
        from transformers.masking_utils import create_bidirectional_mask

        h, mask = x[..., :-1], x[..., -1]
        attention = create_bidirectional_mask(config=self.config, inputs_embeds=h,
                                              attention_mask=(mask > 0.5).long())
        out = self.layer(h, attention)
        if isinstance(out, tuple):  # layers of some models return (hidden, attentions)
            out = out[0]
        return torch.cat([out, mask.unsqueeze(-1).to(out.dtype)], dim=-1)


def _looks_local(name):
    return (name.startswith((".", "~", os.sep, "/")) or os.path.exists(os.path.expanduser(name))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def _load(transformers, name):
    """``AutoModel`` + ``AutoTokenizer`` from a directory or hub id, quietly.

    transformers' own load report is silenced; weights of the blocks that the
    directory lacks (left at random values) are reported with a warning. A
    missing pooler (not a block) and a checkpoint's task head (not loaded by
    ``AutoModel``) are not.
    """
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model, info = transformers.AutoModel.from_pretrained(
            name, dtype=torch.float32, output_loading_info=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    random = sorted(k for k in set(info.get("missing_keys", ())) | {
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())}
        if not k.startswith("pooler."))
    if random:
        more = f" and {len(random) - 5} more" if len(random) > 5 else ""
        warnings.warn(
            f"model='hf:{name}': {len(random)} weights of the encoder are not in the "
            f"checkpoint (or have another shape) and start from random values: "
            f"{random[:5]}{more}. Check that the directory was saved from this architecture.",
            UserWarning, stacklevel=4,
        )
    return model, tokenizer


def build_hf(name, weights):
    """Load ``hf:<name>`` and split it. Returns ``(BlockNet, TextPreprocess, description)``."""
    transformers = require_hf(f"model='hf:{name}'")
    if weights is not None:
        raise ValueError(
            f"weights={weights!r} does not apply to model='hf:{name}': the directory (or hub "
            "id) holds the weights. Pass weights=None; to use other weights, save them with "
            "model.save_pretrained(directory) and pass model='hf:<directory>'."
        )
    path = Path(os.path.expanduser(name))
    local = path.is_dir()
    if not name or (_looks_local(name) and not local):
        raise FileNotFoundError(
            f"model='hf:{name}': there is no directory {str(path)!r}. Pass a directory written "
            "by model.save_pretrained(d) and tokenizer.save_pretrained(d), or a Hugging Face "
            "hub id such as 'hf:distilbert-base-uncased'."
        )
    try:
        model, tokenizer = _load(transformers, str(path) if local else name)
    except (OSError, ValueError) as exc:
        if local:
            raise ValueError(
                f"Could not load {str(path)!r} as a Hugging Face model with its tokenizer "
                f"({type(exc).__name__}: {str(exc)[:300]}). The directory needs what "
                "model.save_pretrained(d) writes (config.json and the weights) and what "
                "tokenizer.save_pretrained(d) writes (tokenizer.json or the vocabulary)."
            ) from exc
        try:
            from huggingface_hub import constants

            cache = constants.HF_HUB_CACHE
        except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
            cache = "the Hugging Face cache"
        raise WeightsUnavailableError(
            f"Could not load the Hugging Face model {name!r} from the hub or the local cache "
            f"({type(exc).__name__}: {str(exc)[:300]}). Download it once on a machine that is "
            f"online (it goes to {str(cache)!r}; copy that folder here and set "
            "HF_HUB_OFFLINE=1), or save it to a directory there with "
            f"AutoModel.from_pretrained({name!r}).save_pretrained(d) and "
            f"AutoTokenizer.from_pretrained({name!r}).save_pretrained(d), copy the directory, "
            "and pass model='hf:/path/to/d'."
        ) from exc
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    if len(tokenizer) <= len(special):
        # transformers builds an empty tokenizer when a directory has none
        raise ValueError(
            f"model='hf:{name}' has no tokenizer vocabulary (only the special tokens "
            f"{sorted(special)}): every word would be unknown. Save the tokenizer next to the "
            "model with tokenizer.save_pretrained(d)."
        )
    net = split_hf(model)
    preprocess = TextPreprocess(tokenizer, _max_length(model, tokenizer))
    _check_split(net, model, preprocess, name)
    return net, preprocess, f"hf:{name} ({type(model).__name__})"


def _max_length(model, tokenizer):
    """The tokenizer's ``model_max_length``, or the model's number of positions."""
    limit = getattr(tokenizer, "model_max_length", None)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit if positions is None else min(limit, positions)
    return positions or 512


def _layer_list(model):
    for path in _LAYER_LISTS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            return path, layers
    return None, None


def split_hf(model):
    """The :class:`BlockNet` of an encoder: embeddings, then each layer (shares parameters)."""
    embeddings = getattr(model, "embeddings", None)
    path, layers = _layer_list(model)
    if not isinstance(embeddings, nn.Module) or layers is None:
        raise ValueError(
            f"sktransfer cannot split a {type(model).__name__} into blocks: it takes text "
            "encoders with `.embeddings` and a list of layers (`encoder.layer` as in BERT, "
            "RoBERTa, XLM-RoBERTa, ELECTRA; `transformer.layer` as in DistilBERT). Use such "
            "an encoder, or compute embeddings yourself and pass them as a table."
        )
    prefix = path.rsplit(".", 1)[-1]
    blocks = [("embeddings", _Embeddings(embeddings))]
    blocks += [(f"{prefix}.{i}", _Layer(layer, model.config)) for i, layer in enumerate(layers)]
    net = BlockNet(blocks, head=None, pre_head=GlobalPool("mean", token_mask=True),
                   split_kind=f"hf:{getattr(model.config, 'model_type', 'encoder')}",
                   channels_last=True)
    net.token_mask = True  # block outputs carry the attention mask (pool_tokens)
    return net


def _check_split(net, model, preprocess, name):
    """The blocks reproduce the model's ``last_hidden_state`` on the real tokens."""
    batch = preprocess(_PROBE)
    was = model.training, net.training
    model.eval()
    net.eval()
    problem = None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            expected = model(input_ids=batch[:, 0], attention_mask=batch[:, 1]).last_hidden_state
            got = net.forward_features(batch, stop=len(net.blocks))
        real = batch[:, 1].bool()
        if got[..., :-1].shape != expected.shape or not torch.allclose(
                got[..., :-1][real], expected[real], rtol=1e-4, atol=1e-5):
            problem = "running its embeddings and layers in order gives another output"
    except Exception as exc:  # noqa: BLE001 - reported below
        problem = f"running its embeddings and layers in order fails ({type(exc).__name__}: {exc})"
    finally:
        model.train(was[0])
        net.train(was[1])
    if problem is not None:
        raise ValueError(
            f"model='hf:{name}' is a {type(model).__name__} that sktransfer cannot split into "
            f"blocks: {problem}. sktransfer takes encoders whose forward is embeddings, then "
            "each layer with the padding mask (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT)."
        )
