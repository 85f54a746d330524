"""FineTunedClassifier and FineTunedRegressor: fine-tuning as scikit-learn estimators."""

from __future__ import annotations

import numbers
import os
from abc import ABCMeta, abstractmethod

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    RegressorMixin,
    _fit_context,
    is_classifier,
)
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import PassthroughScoring
from torch import nn

from ._accelerate import check_single_process_only, resolve_accelerator
from ._adapt import (ADAPT_CONSTRAINTS, ADAPT_PARAMS, adapt, check_train_blocks, fit_penalty,
                     source_relationship)
from ._base import (
    TransferEstimatorMixin,
    one_fit_at_a_time,
    seed_from_random_state,
    unchanged_on_error,
)
from ._auto import AUTO_LRS, AUTO_SCHEDULE, AUTO_SET_DEPTH_STEPS, fit_auto_depth
from ._blocks import check_freeze_depth, freeze_blocks
from ._device import autocast, autocast_dtype, check_precision
from ._docstrings import fill_doc
from ._heads import attach_head, check_hidden_sizes, head_features, probe_head
from ._inputs import class_sample_weights, source_nan_columns, validate_input
from ._net import BatchDataset, TransferNet
from ._persist import WeightsFileMixin
from ._prefix_cache import frozen_then, starting_at, training_inputs
from ._trainer import (AUTO_STEPS, OPTIMIZERS, Trainer, label_smoothing, lr_scheduler,
                       optimizer_class)
from ._weights import ResolvedModel

__all__ = ["FineTunedClassifier", "FineTunedRegressor"]

class _BaseFineTuned(WeightsFileMixin, TransferEstimatorMixin, Trainer, BaseEstimator,
                     metaclass=ABCMeta):
    """Shared fit/predict logic; the subclasses set the task (``y``, loss, outputs)."""

    _net_class = TransferNet

    _parameter_constraints = {
        **TransferEstimatorMixin._parameter_constraints,
        **Trainer._parameter_constraints,
        # the upper bound is the number of blocks, known in fit: check_freeze_depth
        "freeze_depth": [Interval(numbers.Integral, 0, None, closed="left"),
                         StrOptions({"all", "auto"})],
        "lr": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "penalty": [StrOptions({"auto", "l2", "l1", "l2_sp", "bss", "co_tuning"}), None],
        "alpha": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"auto"})],
        "backbone_lr_scale": [Interval(numbers.Real, 0, None, closed="left")],
        "layer_decay": [Interval(numbers.Real, 0, 1, closed="right"), None],
        "lr_schedule": [StrOptions({"cosine", "warmup_cosine", "onecycle"}), None],
        "unfreeze_every": [Interval(numbers.Integral, 1, None, closed="left"), None],
        **ADAPT_CONSTRAINTS,  # train_blocks, train_params, adapter, bn, wise, ...
        "augment": [callable, None],
        # a class that must subclass torch.optim.Optimizer: checked in _optimizer
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        # every size a positive int: checked by _heads.check_hidden_sizes
        "head_hidden_sizes": ["array-like"],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "reuse_head": ["boolean"],
        "head_init": [StrOptions({"probe", "random"})],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "cache_size": [Interval(numbers.Real, 0, None, closed="left")],
        # a folder or a joblib.Memory, as Pipeline's memory (_frozen_store.disk_store)
        "memory": [None, str, os.PathLike, HasMethods(["cache"])],
    }

    def __init__(self, model=None, weights=None, *, freeze_depth="auto", penalty="auto",
                 alpha="auto", lr="auto", backbone_lr_scale=1.0, layer_decay=None,
                 lr_schedule=None, unfreeze_every=None,
                 train_blocks=None, train_params="all", adapter=None, adapter_rank=8,
                 adapter_alpha=16.0, bn="train", wise=1.0,
                 augment=None, max_epochs="auto", batch_size=16,
                 optimizer="adamw", weight_decay=0.0, momentum=0.9, head_hidden_sizes=(),
                 dropout=0.0, reuse_head=False, head_init="probe", early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, cache_size=1024,
                 memory=None, random_state=None,
                 device="auto", precision="32", accelerator=None, preprocess="auto",
                 verbose=0, net_kwargs=None):
        # scikit-learn's convention: every argument stored unchanged (validated in fit)
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    # -- task-specific stages (the subclasses) -------------------------------------
    @abstractmethod
    def _encode_y(self, y):
        """Validate ``y``, set the target attributes; return (y_tensor, n_out, stratify)."""

    @abstractmethod
    def _criterion(self):
        """The skorch criterion class."""

    @abstractmethod
    def _n_out_meaning(self):
        """What the ``n_out`` outputs of the head are, for error messages."""

    def _y_kwargs(self):
        return {"multi_output": False}

    def _loss_kwargs(self, trains_blocks):
        """skorch arguments of the loss, given whether a pretrained block trains (the
        classifier records its ``label_smoothing_`` here)."""
        return {}

    def _class_weights(self, y):
        return 1.0

    # -- the network ---------------------------------------------------------------
    def _build_module(self, resolved, features, n_out, seed):
        """Pretrained blocks + a head for ``n_out`` outputs, frozen up to ``freeze_depth``.

        Returns ``(net, number of frozen blocks, parameter-name prefixes of the new
        parameters)``.
        """
        net = resolved.net
        depth = check_freeze_depth(self.freeze_depth, len(net.blocks))
        hidden = check_hidden_sizes(self.head_hidden_sizes)
        new_prefixes = attach_head(net, features, n_out, seed, reuse_head=self.reuse_head,
                                   hidden=hidden, dropout=self.dropout,
                                   outputs=self._n_out_meaning)
        freeze_blocks(net, depth)
        return net, depth, new_prefixes

    # -- training stages (see _trainer.Trainer) --------------------------------------
    def _optimizer(self):
        cls = optimizer_class(self.optimizer)
        sgd = {"momentum": self.momentum} if cls is torch.optim.SGD else {}
        return cls, {"weight_decay": self.weight_decay, **sgd}

    def _lr(self):  # lr="auto" outside freeze_depth="auto"'s search: its lower rate ...
        return AUTO_LRS[0] if isinstance(self.lr, str) else self.lr

    def _auto_steps(self, trains):  # ... for 3x the steps where blocks train (_auto.py)
        return AUTO_SET_DEPTH_STEPS if trains and isinstance(self.lr, str) else AUTO_STEPS

    def _lr_schedule(self):  # lr="auto" brings its warm-up and annealing (unless set)
        auto = self.lr_schedule is None and isinstance(self.lr, str)
        return AUTO_SCHEDULE if auto else self.lr_schedule

    def _scoring_callbacks(self):
        # the mean data loss alone, next to train_loss (which includes the penalty)
        return [("train_data_loss", PassthroughScoring(name="train_data_loss", on_train=True))]

    def _schedule_callbacks(self, epochs, steps_per_epoch):
        schedule = self._lr_schedule()
        if schedule is None:
            return []
        return [("lr_scheduler", lr_scheduler(schedule, epochs, steps_per_epoch))]

    def _skorch_kwargs(self, dataset):  # with sample weights the net weighs each sample's loss
        return {"criterion__reduction": "none"} if dataset.sample_weight is not None else {}

    def _divergence_advice(self):
        return " or a smaller alpha, or scale X (e.g. StandardScaler) and, for regression, y."

    @_fit_context(prefer_skip_nested_validation=True)
    @one_fit_at_a_time
    @unchanged_on_error
    def fit(self, X, y, sample_weight=None):
        """Fine-tune the pretrained network on ``(X, y)``, starting from its weights.

        Every call starts again from the pretrained weights (never from a
        previous fit). A ``KeyboardInterrupt`` in the middle of an epoch ends the
        fit with the weights of the last completed epoch and a warning saying so.

        Parameters
        ----------
        X : array-like, DataFrame, image array or list of image paths / PIL images
            Training input, in the layout the pretrained network expects.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target labels (classifier) or values (regressor).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights: each mini-batch's loss is the weighted mean
            ``sum(w_i * loss_i) / sum(w_i)`` (the validation loss too). For the
            classifier they multiply the weights from ``class_weight``.

        Returns
        -------
        self
            The fitted estimator.
        """
        accelerator, device = resolve_accelerator(self.accelerator, self.device)
        amp = check_precision(self.precision, device, accelerator)
        check_single_process_only(accelerator, unfreeze_every=self.unfreeze_every)
        data, y = validate_input(self, X, reset=True, y=y, y_kwargs=self._y_kwargs(),
                                 nan_columns=source_nan_columns(self.model))
        if len(data) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples to fine-tune, got "
                f"n_samples = {len(data)} (X has 1 sample); pass more samples."
            )
        y_tensor, n_out, stratify = self._encode_y(y)
        weights = self._sample_weights(data, y, sample_weight)
        seed = seed_from_random_state(self.random_state)
        if isinstance(self.freeze_depth, str) and self.freeze_depth == "auto":
            self._validation_split(len(data), stratify, seed)  # its errors name all the rows
            return fit_auto_depth(self, X, data, y, sample_weight, seed)  # (_auto.py)
        resolved = self._resolve_pretrained(seed)
        preprocess = self._preprocess_fn(resolved)
        # the blocks in front of the first trained one are frozen: their outputs for
        # every row, kept ones reused and new ones kept (_prefix_cache); the probe
        # reads its two samples from them
        n_blocks = len(resolved.net.blocks)
        check_freeze_depth(self.freeze_depth, n_blocks)
        trained = check_train_blocks(self.train_blocks, self.freeze_depth, n_blocks,
                                     self.unfreeze_every)
        kept = {}

        def frozen_outputs():
            kept["X"], kept["start"] = training_inputs(
                resolved.net, data, trained[0] if trained else n_blocks, preprocess, device,
                batch_size=self.batch_size, cache_size=self.cache_size, memory=self.memory,
                augment=self.augment, verbose=self.verbose, amp=amp)
            # outputs kept under autocast may be bf16/fp16: the probe runs in float32
            return (kept["X"][:2].float(), kept["start"]) if kept["start"] else None

        features = self._probe(resolved, data, preprocess, seed, frozen=frozen_outputs)
        # "auto" penalty and alpha resolved, Co-Tuning's pretrained head kept (_adapt.py)
        self.penalty_, self.alpha_, source_head = fit_penalty(
            self.penalty, self.alpha, resolved, features, classification=is_classifier(self),
            reuse_head=self.reuse_head, trains=bool(trained))
        module, _, new_prefixes = self._build_module(resolved, features, n_out, seed)
        train_idx, valid_idx = self._validation_split(len(data), stratify, seed)
        # every block frozen, in float32: the fit's frozen outputs are the probe's input
        head_l2 = self._init_head(module, data, preprocess, device, y_tensor, weights, train_idx,
                                  (kept["X"], kept["start"]) if kept["start"] >= n_blocks
                                  and not amp else None)
        # which blocks and parameters train, adapters, WiSE-FT's theta_s (_adapt.py)
        plan = adapt(module, **{k: getattr(self, k) for k in ADAPT_PARAMS},
                     pretrained_head=self.reuse_head, source_head=source_head, seed=seed)
        X_train, start = kept["X"], kept["start"]
        dataset = BatchDataset(X_train, y_tensor, preprocess, sample_weight=weights)
        relationship = None if source_head is None else source_relationship(
            module, dataset, train_idx, y_tensor, n_out, start, self.batch_size)
        net = self._make_net(
            module, dataset, train_idx, valid_idx, device, accelerator,
            penalty=self.penalty_, alpha=self.alpha_,
            backbone_lr_scale=float(self.backbone_lr_scale), layer_decay=self.layer_decay,
            new_prefixes=new_prefixes, weighted=weights is not None,
            unfreeze_every=self.unfreeze_every, relationship=relationship, head_l2=head_l2,
            auto_steps=self._auto_steps(bool(trained)),
            **plan.net_params(), **self._loss_kwargs(bool(plan.trained)))
        with starting_at(module, start):
            module, history = self._train(net, dataset, train_idx, seed, device,
                                          "pretrained blocks, new head", augment=self.augment)
        self.module_ = plan.finish(module)
        self.device_ = device
        self._preprocess = preprocess
        self._source_input_shape = resolved.input_shape
        self.blocks_ = list(module.block_names)
        self.freeze_depth_ = plan.prefix
        self.lr_, self.lr_schedule_ = net.lr, self._lr_schedule()
        self.train_blocks_ = plan.trained
        self.history_ = history
        self.n_iter_ = len(history)
        self.max_epochs_ = net.max_epochs
        return self

    def _init_head(self, module, data, preprocess, device, y, weights, train_idx, kept=None):
        """``head_init="probe"``: the head as a linear probe on the training rows (``kept``:
        ``training_inputs`` of all blocks, if the fit has them); its L2 strength or ``None``."""
        if self.head_init != "probe" or self.reuse_head:
            return None
        if kept is None:  # through the frozen-output store: once per sample in a search
            kept = training_inputs(
                module, data, len(module.blocks), preprocess, device, batch_size=self.batch_size,
                cache_size=self.cache_size, memory=self.memory)
        outputs, start = kept
        rows = torch.as_tensor(train_idx)
        features = head_features(module, outputs if start else data, preprocess, device,
                                 self.batch_size, start=start)[rows]
        l2 = probe_head(module, features, y[rows].numpy(), classification=is_classifier(self),
                        sample_weight=None if weights is None else weights[rows].numpy(),
                        memory=self.memory)
        # penalty=None (or alpha=0) regularises nothing: the head only starts at the probe
        return None if self.penalty_ is None or self.alpha_ == 0 else l2

    def _sample_weights(self, data, y, sample_weight):
        """Per-sample weights as a float32 tensor, or ``None`` when all are equal."""
        from sklearn.utils.validation import _check_sample_weight

        w = np.ones(len(data))
        if sample_weight is not None:
            w = _check_sample_weight(sample_weight, data.data, dtype=np.float64,
                                     ensure_non_negative=True)
        w = w * self._class_weights(y)
        if np.all(w == w[0]) and w[0] > 0:
            return None  # equal weights: the plain mean, bit for bit
        return torch.as_tensor(w, dtype=torch.float32)

    # -- inference ---------------------------------------------------------------
    def _outputs(self, X):
        """Raw network outputs for ``X`` (float32 tensor on the CPU)."""
        check_is_fitted(self, "module_")
        data = validate_input(self, X, reset=False,
                              nan_columns=source_nan_columns(self.module_))
        module = self.module_
        # frozen blocks' outputs kept and reused (_prefix_cache); gradual unfreezing froze none
        depth = self.freeze_depth_ if self.unfreeze_every is None else 0
        amp = autocast_dtype(self.precision, self.device_, strict=False)
        with autocast(self.device_, amp):  # as _map_batches: the fit's precision
            out = frozen_then(
                module, data, depth, self._preprocess, self.device_,
                lambda x: module.forward_head(module.forward_features(x, start=depth)),
                batch_size=self.batch_size, cache_size=self.cache_size, memory=self.memory)
        if out is None:
            out = self._map_batches(data, module, self._preprocess, pad=True)
        return out

    def __sktransfer_model__(self):
        """The fine-tuned network as a source model for another estimator."""
        check_is_fitted(self, "module_")
        return ResolvedModel(
            net=self.module_, preprocess=self._preprocess,
            input_shape=self._source_input_shape,
            description=f"fitted {type(self).__name__}",
            extra={"task": "classification" if is_classifier(self) else "regression"},
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # a TabularPretrainer fitted on rows with missing cells fills them itself
        tags.input_tags.allow_nan = source_nan_columns(self.model) is not None
        tags.non_deterministic = self.random_state is None
        return tags


@fill_doc
class FineTunedClassifier(ClassifierMixin, _BaseFineTuned):
    """Fine-tune a pretrained network for classification.

    A new head sized from ``y`` goes on top of the pretrained blocks; blocks
    ``0..freeze_depth-1`` stay frozen; the rest train at
    ``lr * backbone_lr_scale`` while the head trains at ``lr``, minimising the
    mean cross-entropy (labels smoothed by ``label_smoothing``) plus
    ``alpha * R(theta)``. Training runs in a private
    skorch ``NeuralNet``; every ``fit`` starts again from the pretrained weights.
    Other adaptation methods (WiSE-FT, BitFit, LoRA, surgical blocks, ...) are
    parameters too, for a search to choose from (user guide: "Adaptation
    methods").

    Parameters
    ----------
    {model_params}
    {finetune_params}
    {classifier_params}

    Attributes
    ----------
    module_ : BlockNet
        The fine-tuned network (pretrained blocks + new head).
    classes_ : ndarray
        The class labels.
    n_features_in_ : int
        Number of input columns (2-D input only).
    feature_names_in_ : ndarray of str
        Column names of a DataFrame ``X``.
    label_smoothing_ : float
        The label smoothing of the fit's loss (``label_smoothing``, or what
        ``"auto"`` gave).
    {finetune_attributes}

    See Also
    --------
    FineTunedRegressor : the same for regression.
    FeatureExtractorTransformer : frozen features for any scikit-learn model.
    list_blocks : what each ``freeze_depth`` freezes.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> rng = np.random.RandomState(0)
    >>> source_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> X = rng.normal(size=(60, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> clf = FineTunedClassifier(model=source_net, freeze_depth=0, max_epochs=20,
    ...                           random_state=0, device="cpu").fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)

    One candidate per adaptation method, chosen by cross-validation:

    >>> from sklearn.model_selection import GridSearchCV
    >>> methods = [{}, {"wise": [0.5]}, {"train_params": ["bias"]}, {"train_blocks": [[0]]}]
    >>> search = GridSearchCV(clf, methods, cv=2).fit(X, y)
    >>> len(search.cv_results_["params"])
    4
    """

    _parameter_constraints = {
        **_BaseFineTuned._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "label_smoothing": [Interval(numbers.Real, 0, 1, closed="left"), StrOptions({"auto"})],
    }

    def __init__(self, model=None, weights=None, *, freeze_depth="auto", penalty="auto",
                 alpha="auto", lr="auto", backbone_lr_scale=1.0, layer_decay=None,
                 lr_schedule=None, unfreeze_every=None,
                 train_blocks=None, train_params="all", adapter=None, adapter_rank=8,
                 adapter_alpha=16.0, bn="train", wise=1.0,
                 augment=None, max_epochs="auto", batch_size=16,
                 optimizer="adamw", weight_decay=0.0, momentum=0.9, head_hidden_sizes=(),
                 dropout=0.0, reuse_head=False, head_init="probe", early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, cache_size=1024,
                 memory=None, random_state=None,
                 device="auto", precision="32", accelerator=None, preprocess="auto",
                 verbose=0, net_kwargs=None, class_weight=None, label_smoothing="auto"):
        super().__init__(
            model=model, weights=weights, freeze_depth=freeze_depth, penalty=penalty,
            alpha=alpha, lr=lr, backbone_lr_scale=backbone_lr_scale, layer_decay=layer_decay,
            lr_schedule=lr_schedule, unfreeze_every=unfreeze_every,
            train_blocks=train_blocks, train_params=train_params, adapter=adapter,
            adapter_rank=adapter_rank, adapter_alpha=adapter_alpha, bn=bn, wise=wise,
            augment=augment, max_epochs=max_epochs, batch_size=batch_size,
            optimizer=optimizer, weight_decay=weight_decay, momentum=momentum,
            head_hidden_sizes=head_hidden_sizes, dropout=dropout, reuse_head=reuse_head,
            head_init=head_init, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            tol=tol, cache_size=cache_size, memory=memory, random_state=random_state,
            device=device, precision=precision, accelerator=accelerator,
            preprocess=preprocess, verbose=verbose, net_kwargs=net_kwargs,
        )
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing

    def _loss_kwargs(self, trains_blocks):
        self.label_smoothing_, kwargs = label_smoothing(self.label_smoothing, trains_blocks,
                                                        self.net_kwargs)
        return kwargs

    def _class_weights(self, y):
        return class_sample_weights(self.class_weight, self.classes_, y)

    def _encode_y(self, y):
        check_classification_targets(y)
        if y.ndim != 1:
            raise ValueError(
                f"y must be 1-D class labels for FineTunedClassifier, got shape {y.shape}."
            )
        self._label_encoder = LabelEncoder().fit(y)
        self.classes_ = self._label_encoder.classes_
        if len(self.classes_) < 2:
            only = self.classes_[0]
            only = only.item() if hasattr(only, "item") else only
            raise ValueError(
                f"y has a single class ({only!r}); a classifier needs at least two classes. "
                "Pass samples of at least two classes (check that y is the target of X)."
            )
        codes = self._label_encoder.transform(y)
        return torch.as_tensor(codes, dtype=torch.long), len(self.classes_), codes

    def _n_out_meaning(self):
        return f"{len(self.classes_)} classes"

    def _criterion(self):
        return nn.CrossEntropyLoss

    def predict_proba(self, X):
        """Class probabilities of ``X``.

        Parameters
        ----------
        X : array-like, DataFrame, image array or list of image paths / PIL images
            Same layout as in ``fit``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Rows sum to 1; columns follow ``classes_``.
        """
        logits = self._outputs(X).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Predicted class labels of ``X``.

        Parameters
        ----------
        X : array-like, DataFrame, image array or list of image paths / PIL images
            Same layout as in ``fit``.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        logits = self._outputs(X)
        return self.classes_[logits.argmax(dim=1).numpy()]


@fill_doc
class FineTunedRegressor(RegressorMixin, _BaseFineTuned):
    """Fine-tune a pretrained network for regression (single or multi-output).

    Same as :class:`FineTunedClassifier`, with a new linear head of
    ``n_outputs_`` units and the mean squared error as loss. A 1-D ``y`` gives
    1-D predictions (no broadcasting of ``(n,)`` against ``(n, 1)``). The
    network sees ``y`` as given: standardise wide-ranging targets, e.g. with
    :class:`~sklearn.compose.TransformedTargetRegressor`.

    Parameters
    ----------
    {model_params}
    {finetune_params}

    Attributes
    ----------
    module_ : BlockNet
        The fine-tuned network.
    n_outputs_ : int
        Number of regression targets.
    n_features_in_ : int
        Number of input columns (2-D input only).
    {finetune_attributes}

    See Also
    --------
    FineTunedClassifier : the same for classification.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedRegressor
    >>> rng = np.random.RandomState(0)
    >>> source_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> X = rng.normal(size=(60, 4)).astype(np.float32)
    >>> y = X[:, 0] - X[:, 1]
    >>> reg = FineTunedRegressor(model=source_net, max_epochs=20, random_state=0,
    ...                          device="cpu").fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    """

    def _y_kwargs(self):
        return {"multi_output": True, "y_numeric": True}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode_y(self, y):
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise ValueError(
                f"y must hold numbers for FineTunedRegressor (regression targets), got dtype "
                f"{y.dtype} (e.g. {y.ravel()[:3].tolist()}). Convert y to floats, or use "
                "FineTunedClassifier for class labels."
            )
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D, got shape {y.shape}.")
        self._y_1d = y.ndim == 1
        y2 = y.reshape(-1, 1) if self._y_1d else y
        self.n_outputs_ = int(y2.shape[1])
        return torch.as_tensor(y2, dtype=torch.float32), self.n_outputs_, None

    def _n_out_meaning(self):
        return f"{self.n_outputs_} regression targets"

    def _criterion(self):
        return nn.MSELoss

    def predict(self, X):
        """Predicted values of ``X``.

        Parameters
        ----------
        X : array-like, DataFrame, image array or list of image paths / PIL images
            Same layout as in ``fit``.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, ``n_outputs_``), float64
            1-D when ``y`` was 1-D in ``fit``.
        """
        out = self._outputs(X).double().numpy()
        if out.ndim != 2 or out.shape[1] != self.n_outputs_:
            raise ValueError(  # pragma: no cover - guarded by the head built in fit
                f"The network outputs shape {out.shape[1:]}, expected ({self.n_outputs_},)."
            )
        return out[:, 0] if self._y_1d else out
