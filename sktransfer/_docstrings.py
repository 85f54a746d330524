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

#: ``device`` and ``precision``: every estimator that trains (FineTuned*, TabularPretrainer)
DEVICE_PARAMS = """\
device : str, default="auto"
    ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"auto"`` (CUDA when available).
precision : {"32", "bf16", "16-mixed"}, default="32"
    The arithmetic of the forward passes (training, frozen-prefix outputs,
    prediction): ``"32"`` float32; ``"bf16"`` (Lightning's ``"bf16-mixed"``
    also works) runs them and the loss under ``torch.autocast`` in bfloat16;
    ``"16-mixed"`` in float16, with a ``torch.amp.GradScaler`` that keeps small
    gradients from vanishing. The weights, the optimizer and every output
    stay float32. On recent GPUs mixed precision runs on the tensor cores and
    halves the activations' memory, usually at no cost in accuracy. ``"bf16"``
    needs a GPU of compute capability 8.0 or newer (A100, H100, RTX 30xx and
    later) or the CPU (where it is slower than float32 unless the processor
    has bfloat16 instructions); ``"16-mixed"`` needs a CUDA GPU; a device
    without it raises a ``ValueError`` in ``fit`` that names the fix. A
    network fitted on a GPU and used where that precision is missing (e.g.
    unpickled on a CPU) predicts in float32. Set the precision in one place:
    with ``accelerator``, use its ``mixed_precision`` and leave ``"32"`` here.
"""

#: the other parameters that FineTunedClassifier and FineTunedRegressor share
FINETUNE_PARAMS = """\
freeze_depth : int, "all" or "auto", default="auto"
    Number of leading blocks to freeze (see :func:`list_blocks`); ``"all"``
    trains the head only (with ``head_init="probe"``: the linear probe).
    Frozen parameters are left out of the optimizer, stay bit-for-bit
    unchanged, and their BatchNorm/Dropout stay in eval mode. ``"auto"``
    chooses between ``0`` (fine-tune every block) and ``"all"`` by 3-fold
    cross-validation on the training rows (stratified, shuffled with
    ``random_state``, scored with :meth:`score`): the probe unless
    fine-tuning wins by more than one standard error of the fold
    differences. With ``lr="auto"`` fine-tuning is tried at two rates (see
    ``lr``), the better one meeting the probe. It then refits the chosen
    one on all rows: about 5 fits' time instead of 1 (3 with a numeric
    ``lr``). ``freeze_depth_``, ``lr_`` and ``freeze_depth_scores_`` say
    what it chose and why. Set it (e.g. in a grid search over
    ``freeze_depth``) to skip the inner folds.
penalty : {"auto", "l2_sp", "l2", "l1", "bss", "co_tuning"} or None, default="auto"
    The regulariser ``R``. ``"auto"``: ``"co_tuning"`` where it can run and
    a pretrained block trains (the classifier, with a pretrained model that
    has a classification head: torchvision, timm, a Hugging Face
    ``...ForSequenceClassification``, a fitted ``FineTunedClassifier``, a
    module whose head has two outputs or more), ``"l2_sp"`` otherwise (the
    regressor, an encoder such as ``TabularPretrainer``, a fitted
    regressor, ``reuse_head=True``, ``freeze_depth="all"``); ``penalty_``
    says which. A module trained as a multi-output *regressor* looks like a
    classifier here: give it ``penalty="l2_sp"``. ``"l2_sp"``: ``1/2
    ||theta - theta_s||^2`` over the trainable pretrained parameters plus
    ``1/2 ||theta||^2`` over the new head (Li et al., 2018); ``"l2"``:
    ``1/2 ||theta||^2``; ``"l1"``: ``||theta||_1``; sums over trainable
    parameters. ``"bss"``: batch
    spectral shrinkage (Chen et al., 2019), the square of the smallest
    singular value of each batch's features (the head's input).
    ``"co_tuning"`` (classifier only, You et al., 2020): the pretrained head
    trains next to the new one, toward ``p(z | y)``, the pretrained model's
    mean source-class probabilities over the training samples of each target
    class (the relationship LEEP computes); ``R`` is its cross-entropy, and
    the pretrained head is dropped after ``fit``.
alpha : float or "auto", default="auto"
    Strength ``lambda`` of the penalty in ``mean loss + alpha * R(theta)``,
    added on every training batch (never to the validation loss). ``"auto"``:
    1.0 for ``"co_tuning"`` (a cross-entropy, weighed like the data loss;
    the paper uses about 1 to 3), 1e-3 for the others (the ``"bss"``
    paper's value; ``alpha_`` says which). A number applies to whichever
    penalty the fit uses: in a grid over ``alpha`` set ``penalty`` too.
lr : float or "auto", default="auto"
    Learning rate of the head (and any new parameters). ``"auto"``: with
    ``freeze_depth="auto"``, fine-tuning is cross-validated at ``3e-3`` and
    at ``1e-2``, in the same folds as the probe (500 steps each, see
    ``max_epochs``); with any other ``freeze_depth``, ``3e-3`` for three
    times the steps where a pretrained block trains, about as far as
    ``1e-2`` would move it. An ``"auto"`` rate warms up and anneals
    (``lr_schedule="warmup_cosine"``) unless ``lr_schedule`` is set. On
    ``benchmarks/bench_quality.py`` the higher rate won up to 3.5 points on
    image tasks whose source was trained on other classes and lost 1.3 to
    5.4 on tables whose pretrained features already fit the target; the
    folds tell them apart. ``lr_`` is the rate used.
backbone_lr_scale : float, default=1.0
    The unfrozen pretrained blocks train at ``lr * backbone_lr_scale``. With
    a probe-initialised head (the default) the pretrained blocks need no
    smaller rate to survive the first steps; ``0.1`` (the default before
    ``head_init``) lost 5-20 points on the image tasks of
    ``benchmarks/bench_quality.py``.
layer_decay : float in (0, 1] or None, default=None
    Layer-wise learning-rate decay: the top pretrained block trains at
    ``lr * backbone_lr_scale``, the block ``i`` places below it at
    ``lr * backbone_lr_scale * layer_decay ** i`` (typical values 0.65-0.9),
    so the input-side blocks, the most general, move least.
lr_schedule : {"cosine", "warmup_cosine", "onecycle"} or None, default=None
    Learning-rate schedule over ``max_epochs`` (skorch ``LRScheduler``),
    scaling every group's rate; ``None``: ``"warmup_cosine"`` with
    ``lr="auto"``, a constant rate with a numeric ``lr``. ``"cosine"``
    anneals to 0 per epoch; ``"warmup_cosine"`` warms up linearly over the
    first 10% of the epochs (at least one), then anneals; ``"onecycle"`` (per
    batch) rises from 1/25 of the rate to the full rate over the first 30% of
    the steps, then anneals to 1e-4 of it. ``history_`` records ``lr``, the
    head's rate as each epoch starts. With early stopping, training can end
    before the schedule does.
unfreeze_every : int or None, default=None
    Gradual unfreezing (ULMFiT, fastai's ``fine_tune``): train the head alone
    for ``unfreeze_every`` epochs, then unfreeze one more block from the top
    every ``unfreeze_every`` epochs, down to ``freeze_depth``. ``history_``
    records ``trainable_from``, the first trainable block, at each epoch.
train_blocks : list of int or None, default=None
    Surgical fine-tuning (Lee et al., 2023): exactly these blocks (indices
    as in :func:`list_blocks`, negative from the end) and the head train,
    e.g. ``[0]`` when the inputs changed more than the labels. Replaces
    ``freeze_depth``, which must then be 0; the blocks in front of the
    first one are frozen-prefix cached, frozen blocks between trained ones
    run in eval mode on every batch. Not with ``unfreeze_every``.
train_params : {"all", "bias", "norm"}, default="all"
    Which parameters of the trained blocks train (the head always does):
    ``"bias"`` the biases only (BitFit, Ben Zaken et al., 2022), ``"norm"``
    the normalisation layers' only (BatchNorm, LayerNorm, GroupNorm, ...).
    The rest stay bit-for-bit unchanged. With ``adapter``, which of the
    blocks' own parameters train besides the adapters (``"all"``: none).
adapter : {"lora"} or None, default=None
    ``"lora"``: low-rank adapters (Hu et al., 2022), through peft, on the
    Linear, Conv and MultiheadAttention layers of the trained blocks (not
    grouped convolutions, whose adapters peft cannot merge): their weights
    stay fixed and ``W + (adapter_alpha / adapter_rank) B A`` learns ``A``
    and ``B`` (``B`` starts at 0), at ``lr`` like the head. After ``fit``
    the adapters are merged into the weights, so ``module_``, predictions,
    pickles and :meth:`save_weights` need no peft. Needs
    ``pip install 'sktransfer[lora]'``.
adapter_rank : int, default=8
    The rank of the adapters.
adapter_alpha : float, default=16.0
    The adapters' scaling numerator: their output is scaled by
    ``adapter_alpha / adapter_rank`` (peft's ``lora_alpha``).
bn : {"train", "frozen"}, default="train"
    BatchNorm layers of the trained blocks: ``"train"`` normalises with the
    batch's statistics and updates the running ones; ``"frozen"`` keeps them
    in eval mode, with the pretrained running statistics, unchanged (their
    scale and shift still train). Small batches from few labels give noisy
    statistics. Frozen blocks always keep theirs.
wise : float in [0, 1], default=1.0
    WiSE-FT (Wortsman et al., 2022): after training, every pretrained
    tensor that moved ends at ``(1 - wise) * theta_s + wise * theta_ft``
    (BatchNorm statistics too); ``1.0`` is plain fine-tuning, ``0.0`` keeps
    the pretrained blocks. A new head keeps its fine-tuned weights (it has
    no pretrained value; the paper interpolates its head because it starts
    from the zero-shot one); with ``reuse_head=True`` the head is
    interpolated too. Frozen tensors stay bit-for-bit the pretrained ones.
augment : callable or None, default=None
    Train-time augmentation: called on every training batch (a float32
    tensor ``(n, ...)`` on the CPU, after preprocessing) and returns the
    augmented batch, e.g. a ``torchvision.transforms.v2`` transform. Never
    applied to validation data or at predict time. It turns the frozen-prefix
    cache off (the frozen blocks must see the augmented inputs). ``fit`` seeds
    torch's random generator from ``random_state``, so an augment drawing
    from torch (``torch.rand``, torchvision transforms) is reproducible; one
    drawing from numpy's global generator is not.
max_epochs : int or "auto", default="auto"
    Maximum number of passes over the training data. ``"auto"`` sets a
    budget in optimisation steps that fits the data size: ``max(10,
    ceil(500 / steps per epoch))`` epochs, so 25 samples get 500 steps of
    one batch and a 10,000-row table 10 passes; 1,500 steps with
    ``lr="auto"`` at a set ``freeze_depth`` where a pretrained block trains
    (see ``lr``). The epochs used are in
    ``max_epochs_``, the steps of each in ``history_[i]["steps"]``.
    With early stopping and ``"auto"`` the patience is at least a tenth of
    the epochs.
batch_size : int, default=16
    Samples per training step (16: the best mean over the tasks of
    ``benchmarks/bench_quality.py``, by 0.7 points over 32; with
    ``max_epochs="auto"`` the number of steps is the same either way).
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
head_init : {"probe", "random"}, default="probe"
    How a new head starts. ``"probe"`` (LP-FT, Kumar et al., 2022): the
    head's input is standardised with the training features' mean and
    standard deviation (a fixed ``Standardize`` layer, part of the head),
    and its linear layer starts as scikit-learn's ``LogisticRegressionCV``
    (classifier; C in 1e-3..1e3, stratified 3-fold, log-loss; sample and
    class weights passed on) or ``RidgeCV`` (regressor, multi-output)
    fitted on the pretrained network's features of the training rows; the
    head then keeps the probe's own L2 strength in place of ``penalty``'s
    term for the head, so that with ``freeze_depth="all"`` the fit stays at
    the probe (with ``penalty=None`` or ``alpha=0`` nothing is regularised:
    the head only starts at the probe). Costs one
    pass of the network over the training rows. An MLP head
    (``head_hidden_sizes``) gets the standardised input and a random
    initialisation. ``"random"``: PyTorch's initialisation (seeded), the
    head penalised by ``penalty`` like before. Ignored with ``reuse_head``.
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
    Under mixed precision they are kept in the dtype the frozen blocks give
    under autocast (``"bf16"``: half the memory of float32), keyed by it.
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
{device_params}accelerator : accelerate.Accelerator, dict or None, default=None
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

FINETUNE_PARAMS = FINETUNE_PARAMS.replace("{device_params}", DEVICE_PARAMS)

#: the fitted attributes that FineTunedClassifier and FineTunedRegressor share
FINETUNE_ATTRIBUTES = """\
history_ : list of dict
    One dict per epoch: ``epoch``, ``train_loss`` (the objective: mean loss
    plus ``alpha * R(theta)``), ``train_data_loss`` (the mean loss alone),
    ``valid_loss`` (with early stopping; never penalised), ``steps``
    (optimisation steps), ``dur`` and skorch's bookkeeping.
n_iter_ : int
    Number of epochs run.
max_epochs_ : int
    The epoch budget of this fit (``max_epochs``, or what ``"auto"`` gave).
blocks_ : list of str
    The block names.
freeze_depth_ : int
    The number of leading frozen blocks.
freeze_depth_scores_ : dict
    With ``freeze_depth="auto"`` only: the mean cross-validated score of each
    candidate, ``{0: ..., "all": ...}``, fine-tuning's at its better rate
    (``{0: nan}`` when no folds ran: with ``train_blocks``, or a class with a
    single sample).
penalty_ : str or None
    The penalty of the fit (``penalty``, or what ``"auto"`` gave).
alpha_ : float
    Its strength (``alpha``, or what ``"auto"`` gave).
lr_ : float
    The learning rate of the head in the fit (``lr``, or the one ``"auto"``
    chose).
lr_schedule_ : str or None
    The learning-rate schedule of the fit (``lr_schedule``, or
    ``"warmup_cosine"`` with ``lr="auto"``).
lr_scores_ : dict
    With ``freeze_depth="auto"`` and ``lr="auto"`` only: the mean
    cross-validated score of fine-tuning at each rate, ``{0.003: ...,
    0.01: ...}`` (``{0.003: nan}`` when no folds ran).
train_blocks_ : list of int
    The blocks that trained (besides the head).
"""

#: FineTunedClassifier's own parameters
CLASSIFIER_PARAMS = """\
class_weight : "balanced", dict or None, default=None
    Weights of the classes in the loss, as in scikit-learn: ``"balanced"``
    uses ``n_samples / (n_classes * count(class))``, a dict maps labels to
    weights. They multiply ``sample_weight`` in ``fit``.
label_smoothing : float in [0, 1) or "auto", default="auto"
    Label smoothing of the cross-entropy (Szegedy et al., 2016): the target is
    ``(1 - label_smoothing) * one_hot + label_smoothing / n_classes``.
    ``"auto"``: 0.1 when a pretrained block trains, 0 when only the head does
    (a frozen network's head is the linear probe, which smoothing would only
    move). On ``bench_quality.py``'s image tasks 0.1 gained 0.1 to 2.6 points
    (user guide: "Measured quality of the defaults"). Predicted probabilities
    are less confident than without it.
"""

FRAGMENTS = {"model_params": MODEL_PARAMS, "finetune_params": FINETUNE_PARAMS,
             "classifier_params": CLASSIFIER_PARAMS,
             "device_params": DEVICE_PARAMS, "finetune_attributes": FINETUNE_ATTRIBUTES}

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
