"""Parameter documentation shared by several estimators, written once.

numpydoc wants every parameter in every class docstring; the parameters that
several estimators share are written here instead, once. A class docstring
names a fragment on a line of its own, e.g. ``{finetune_params}`` under
``Parameters``, and :func:`fill_doc` replaces that line with the fragment,
indented like the line. A parameter added to both fine-tuning estimators is
documented once, in ``FINETUNE_PARAMS`` (next to its constraint in
``_finetune._BaseFineTuned._parameter_constraints``). Other braces in a
docstring are left alone: only a line holding nothing but ``{name}`` is a
fragment, and an unknown name fails at import.

Conventions of sktransfer's docstrings (numpydoc, scikit-learn flavour):
``name : type, default=value`` then a description that says what the value
does to the fit, in the estimator's terms; sections Parameters, Attributes,
See Also, Notes, Examples; every public class and function has an example that
runs without a download (``tests/test_docstrings.py`` runs them).
"""

from __future__ import annotations

import re
import textwrap

__all__ = ["FRAGMENTS", "fill_doc"]

#: ``model`` and ``weights``: every estimator built on a pretrained network
MODEL_PARAMS = """\
model : str, nn.Module, callable or fitted sktransfer estimator, default=None
    The pretrained network: a torchvision architecture name (``"resnet18"``),
    ``"timm:<name>"`` (a timm model), ``"hf:<directory or hub id>"`` (a Hugging
    Face text encoder: ``X`` is then a sequence of strings, and a new head sits
    on the mean of the last layer's tokens), an ``nn.Module`` (never modified),
    a class or zero-argument callable returning one, or a fitted sktransfer
    estimator (source -> target chaining). Required.
weights : str, path or None, default=None
    ``None`` keeps the module's weights; a torchvision weights name
    (``"DEFAULT"``, ``"IMAGENET1K_V1"``) for string models; or a local
    state-dict file (``.pt``/``.pth``/``.safetensors``).
"""

#: the other parameters that FineTunedClassifier and FineTunedRegressor share
FINETUNE_PARAMS = """\
freeze_depth : int or "all", default=0
    Number of leading blocks to freeze (see :func:`list_blocks`); ``"all"``
    trains the head only. Frozen parameters are left out of the optimizer,
    stay bit-for-bit unchanged, and their BatchNorm/Dropout stay in eval mode.
penalty : {"l2_sp", "l2", "l1"} or None, default="l2_sp"
    The regulariser ``R``. ``"l2_sp"``: ``1/2 ||theta - theta_s||^2`` over the
    trainable pretrained parameters plus ``1/2 ||theta||^2`` over the new
    head (Li et al., 2018); ``"l2"``: ``1/2 ||theta||^2``; ``"l1"``:
    ``||theta||_1``; sums over trainable parameters.
alpha : float, default=1e-3
    Strength ``lambda`` of the penalty in ``mean loss + alpha * R(theta)``,
    added on every training batch (never to the validation loss).
lr : float, default=1e-3
    Learning rate of the head (and any new parameters).
backbone_lr_scale : float, default=0.1
    The unfrozen pretrained blocks train at ``lr * backbone_lr_scale``.
layer_decay : float in (0, 1] or None, default=None
    Layer-wise learning-rate decay: the top pretrained block trains at
    ``lr * backbone_lr_scale``, the block ``i`` places below it at
    ``lr * backbone_lr_scale * layer_decay ** i`` (typical values 0.65-0.9),
    so the input-side blocks, the most general, move least.
lr_schedule : {"cosine", "warmup_cosine", "onecycle"} or None, default=None
    Learning-rate schedule over ``max_epochs`` (skorch ``LRScheduler``),
    scaling every group's rate: ``"cosine"`` anneals to 0 per epoch;
    ``"warmup_cosine"`` warms up linearly over the first 10% of the epochs
    (at least one), then anneals; ``"onecycle"`` (per batch) rises from 1/25
    of the rate to the full rate over the first 30% of the steps, then anneals
    to 1e-4 of it. ``history_`` records ``lr``, the head's rate as each epoch
    starts. With early stopping, training can end before the schedule does.
unfreeze_every : int or None, default=None
    Gradual unfreezing (ULMFiT, fastai's ``fine_tune``): train the head alone
    for ``unfreeze_every`` epochs, then unfreeze one more block from the top
    every ``unfreeze_every`` epochs, down to ``freeze_depth``. ``history_``
    records ``trainable_from``, the first trainable block, at each epoch.
augment : callable or None, default=None
    Train-time augmentation: called on every training batch (a float32
    tensor ``(n, ...)`` on the CPU, after preprocessing) and returns the
    augmented batch, e.g. a ``torchvision.transforms.v2`` transform. Never
    applied to validation data or at predict time. It turns the frozen-prefix
    cache off (the frozen blocks must see the augmented inputs). ``fit`` seeds
    torch's random generator from ``random_state``, so an augment drawing
    from torch (``torch.rand``, torchvision transforms) is reproducible; one
    drawing from numpy's global generator is not.
max_epochs : int, default=50
    Maximum number of passes over the training data.
batch_size : int, default=32
    Samples per training step.
optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    The optimizer (``"sgd"`` uses ``momentum``).
weight_decay : float, default=0.0
    The optimizer's own weight decay (decoupled for AdamW), on top of ``penalty``.
momentum : float, default=0.9
    Momentum for ``optimizer="sgd"``.
head_hidden_sizes : tuple of int, default=()
    Hidden layers of the new head (ReLU); ``()`` is a single linear layer.
dropout : float, default=0.0
    Dropout before each layer of the new head.
reuse_head : bool, default=False
    Keep the pretrained head instead of a new one (same output space on
    source and target); the head is then penalised like a pretrained block.
early_stopping : bool, default=False
    Hold out ``validation_fraction`` of the training data (stratified by class
    for the classifier) and stop
    when the validation loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs; the best epoch's weights are restored.
validation_fraction : float, default=0.1
    Share of the training data held out when ``early_stopping=True``.
n_iter_no_change : int, default=10
    Patience of early stopping, in epochs.
tol : float, default=1e-4
    Relative improvement of the validation loss that counts for early stopping.
cache_size : float, default=1024
    Memory budget (MB) for the frozen blocks' outputs: when blocks are
    frozen, their outputs for the training data are computed once per
    ``fit`` and the rest of the network trains on them, which gives the same
    result as running the frozen blocks on every batch, much faster. When the
    outputs would need more than ``cache_size`` MB (on ``device``), the frozen
    blocks run on every batch instead (``verbose`` says so). The outputs are
    also kept **per sample** (at most ``cache_size`` MB per process, least
    recently used first out), keyed by the frozen blocks' weights, the
    preprocessing, ``batch_size``, the device and each sample's content: a
    later ``fit``, ``predict``, ``predict_proba``, ``score`` on samples seen
    before with the same frozen blocks reuses them (the other folds,
    candidates and the refit of a grid search), bit for bit. Predictions keep
    the outputs they compute only with ``memory`` (without it, their memory
    stays bounded by ``batch_size``).
    :func:`sktransfer.clear_cache` frees them; ``0`` turns all of this off.
memory : str, path or joblib.Memory, default=None
    Also keep the frozen outputs on disk, in this folder (or
    ``joblib.Memory``'s location), as :class:`~sklearn.pipeline.Pipeline`'s
    ``memory`` does, so that the worker processes of a search
    (``GridSearchCV(n_jobs=2)``) and later sessions share them: read
    memory-mapped, written atomically, at most ``cache_size`` MB of them per
    folder (least recently used first out). Remove them with
    ``joblib.Memory(folder).clear()`` or by deleting the folder. ``None``:
    kept in this process only.
random_state : int, RandomState or None, default=None
    Seeds a model built by a class or factory, the new head, the shuffling,
    dropout and the validation split: the same seed and data give identical
    predictions.
device : str, default="auto"
    ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (CUDA when available).
accelerator : accelerate.Accelerator, dict or None, default=None
    Train through Hugging Face ``accelerate`` (skorch's ``AccelerateMixin``):
    on several GPUs in one fit when the script runs under ``accelerate
    launch`` or ``torchrun`` (distributed data parallel; ``batch_size`` is per
    process), with mixed precision, or on any device accelerate supports.
    Pass an ``Accelerator`` or a dict of its keyword arguments, built at fit
    time (e.g. ``{"mixed_precision": "bf16"}``), which keeps the estimator
    cheap to clone for a grid search. The accelerator places the network:
    leave ``device="auto"``. Needs ``pip install 'sktransfer[accelerate]'``.
    With several processes, ``unfreeze_every`` is not supported and the epoch
    losses are averaged over processes, so early stopping stops all of them
    at the same epoch. See the user guide, "Scaling out".
preprocess : "auto", callable or None, default="auto"
    Image preprocessing, as in :class:`FeatureExtractorTransformer`.
verbose : int, default=0
    0 silent; 1 a table of train/valid loss per epoch; 2 also a progress bar
    over batches.
net_kwargs : dict or None, default=None
    Extra keyword arguments for the internal ``skorch.NeuralNet`` (e.g.
    ``{"iterator_train__num_workers": 2}``, ``{"optimizer__betas": (0.9,
    0.99)}``, or another loss: ``{"criterion": torch.nn.HuberLoss,
    "criterion__delta": 0.5}``). ``{"callbacks": [...]}`` adds skorch
    callbacks to sktransfer's own (loss check, early stopping). Keys that an
    estimator parameter controls (``lr``, ``max_epochs``,
    ``optimizer__weight_decay``, ...), that sktransfer sets itself
    (``train_split``, the collate functions), ``module__*`` (it would drop the
    pretrained weights) and misspelt keys raise a ``ValueError``.
"""

FRAGMENTS = {"model_params": MODEL_PARAMS, "finetune_params": FINETUNE_PARAMS}

_FRAGMENT_LINE = re.compile(r"^(\s*)\{(\w+)\}\s*$")


def fill_doc(obj):
    """Replace each line ``{name}`` of ``obj.__doc__`` by ``FRAGMENTS[name]``; return ``obj``.

    Examples
    --------
    >>> from sktransfer._docstrings import fill_doc
    >>> @fill_doc
    ... class Est:
    ...     '''An estimator.
    ...
    ...     Parameters
    ...     ----------
    ...     {model_params}
    ...     '''
    >>> "weights : str, path or None" in Est.__doc__
    True
    """
    if obj.__doc__ is None:  # python -OO
        return obj
    lines = []
    for line in obj.__doc__.split("\n"):
        match = _FRAGMENT_LINE.match(line)
        if match is None:
            lines.append(line)
            continue
        indent, name = match.groups()
        if name not in FRAGMENTS:
            raise KeyError(
                f"{getattr(obj, '__qualname__', obj)}'s docstring names the fragment "
                f"{{{name}}}, which _docstrings.FRAGMENTS does not have; known: "
                f"{sorted(FRAGMENTS)}."
            )
        lines.append(textwrap.indent(FRAGMENTS[name].rstrip("\n"), indent))
    obj.__doc__ = "\n".join(lines)
    return obj
