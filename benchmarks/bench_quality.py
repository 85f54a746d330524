"""Transfer quality: sktransfer against plain skorch and a linear probe, over draws.

Each *task* is a source model (pretrained once per run, with plain skorch or
sktransfer as noted) and a target task with few labels; each *method* fits
one estimator on one draw of the labelled set and is scored on the task's test
set (accuracy, or R^2 for regression). The table shows the mean and standard
deviation over the draws; every method sees the same labelled samples in a
given draw.

Tasks (``--tasks``: a name or a group, e.g. ``digits``):

- ``digits-5``, ``digits-10``, ``digits-30``: digits 0-4 -> 5-9, 1x8x8 images,
  n labelled images per class, the rest of 5-9 to test
  (:func:`sktransfer.datasets.load_digits_transfer`). Source: a CNN (3x3 convs
  with 16, 32, 64 channels, max-pooling after the first two, AdaptiveAvgPool,
  Linear(64, 64), Linear(64, 5)) trained with plain skorch on the digits 0-4
  (Adam, lr 1e-3, 15 epochs, batch 64).
- ``digits-bn-5``, ``digits-bn-10``: the same task with a BatchNorm after
  each conv of the source CNN (for the rows that need normalisation layers).
- ``shifted-5``, ``shifted-25``: the main example's task, digits on a 12x12
  canvas (:func:`~sktransfer.datasets.load_shifted_digits`); source:
  :func:`~sktransfer.datasets.make_digits_cnn` trained with plain skorch
  (Adam, lr 3e-3, 15 epochs, batch 64).
- ``synth-clf``, ``synth-reg``: synthetic tables
  (:func:`~sktransfer.datasets.make_tabular_transfer`), 150 labelled target
  rows, binary label or regression; source: an MLP (64, 64, 32) pretrained with
  ``FineTunedRegressor(penalty=None, head_init="random", freeze_depth=0,
  backbone_lr_scale=1.0, lr=3e-3, max_epochs=40, batch_size=128)`` on 4 source targets. Columns are
  standardised with the source table's statistics for every method.
- ``synth-clf16``: synth-clf from a *classifier* source: the same MLP and
  settings, ``FineTunedClassifier`` on 16 source classes (which of the 4
  source targets are above their median), so that ``penalty="auto"`` is
  Co-Tuning on a table too.
- ``pretrain-5``: ``TabularPretrainer(method="contrastive")`` (defaults) on
  the unlabeled 70 % of the digits table, 5 labelled rows per class
  (:func:`~sktransfer.datasets.load_digits_table`).

Methods (``--methods``; the registry ``METHODS`` maps a name to
``factory(task, draw, **params) -> unfitted estimator``):

- ``scratch``: plain skorch, the source architecture from a random
  initialisation (Adam, lr 1e-3, 60 epochs, batch 16);
- ``finetune_all``: plain skorch, the pretrained network with a new last
  layer, every layer trained, same settings;
- ``probe``: StandardScaler + LogisticRegression(C=1) (Ridge(alpha=1) for
  regression) on the frozen penultimate features;
- ``probe_cv``: the same with C chosen by LogisticRegressionCV (C in 1e-3 ..
  1e3, 7 values, cv=3, log-loss) (RidgeCV: alpha in
  1e-3 .. 1e3, 13 values, efficient leave-one-out);
- ``defaults``: ``FineTunedClassifier/Regressor(model=source,
  random_state=draw)``, nothing else set (``freeze_depth="auto"`` and
  ``lr="auto"``: the probe or fine-tuning every block at 3e-3 or at 1e-2,
  each with a warm-up and cosine annealing, by 3-fold cross-validation; the
  classifier's fine-tuning with ``label_smoothing="auto"``, 0.1;
  ``penalty="auto"``: Co-Tuning, ``alpha=1.0``, where the source has a
  classification head, L2-SP, ``alpha=1e-3``, elsewhere);
- ``grid``: ``GridSearchCV`` of the same over ``freeze_depth`` (every depth the
  task's network has, up to 2, and ``"all"``) x ``alpha`` {1e-3, 1e-2, 1e-1},
  cv=3.
- ``grid_lr``: the same grid x ``lr`` in ``lr="auto"``'s two rates (3e-3,
  1e-2), each with ``lr_schedule="warmup_cosine"`` as ``"auto"`` gives it.
- one row per adaptation method, the defaults with ``freeze_depth=0`` plus:
  ``wise`` (``wise=0.5``),
  ``bitfit`` (``train_params="bias"``), ``norm_only`` (``"norm"``) and
  ``bn_frozen`` (``bn="frozen"``) on the BatchNorm tasks, ``lora``
  (``adapter="lora"``), ``surgical_first`` / ``surgical_last``
  (``train_blocks=[0]`` / ``[-1]``), ``bss`` (``penalty="bss"``, the paper's
  ``alpha=1e-3``), ``co_tuning`` (``penalty="co_tuning", alpha=1.0``) and
  ``l2_sp`` (``penalty="l2_sp", alpha=1e-3``) on the classification tasks
  whose source has a classification head (where ``penalty="auto"`` is
  Co-Tuning, so that ``co_tuning``'s row is ``freeze_depth=0``'s);
- ``methods``: ``GridSearchCV`` (cv=3) over the defaults and every method
  that applies to the task (the rows above), one candidate each.

A method that does not apply to a task leaves its cell empty.

``--set lr=3e-3 backbone_lr_scale=1.0`` sets parameters of every sktransfer
method (``defaults``, ``grid``); a method written ``defaults:lr=1e-3,max_epochs=60``
is an extra row with its own settings (on top of ``--set``).

Run: ``python benchmarks/bench_quality.py --n-jobs 2`` (``--quick`` to smoke-test,
``--draws 3``, ``--tasks digits synth-reg``, ``--out results.json`` or ``.csv``,
``--device cuda`` to train the target models on a GPU; sources train on the CPU).
"""

from __future__ import annotations

import ast
import copy
import datetime
import json
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import sklearn
import skorch
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn

from _common import parser

import sktransfer
from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    TabularPretrainer,
)
from sktransfer._auto import AUTO_LRS, AUTO_SCHEDULE  # lr="auto"'s, for the grid_lr row
from sktransfer.datasets import (
    load_digits_table,
    load_digits_transfer,
    load_shifted_digits,
    make_digits_cnn,
    make_tabular_transfer,
    split_per_class,
)

# plain skorch settings of the baselines (the protocol)
SKORCH = {"lr": 1e-3, "max_epochs": 60, "batch_size": 16}
ALPHAS = (1e-3, 1e-2, 1e-1)


# -- networks -----------------------------------------------------------------------
def seeded(build, seed):
    """``build()`` with torch seeded by ``seed``, leaving the global random state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def digits_cnn(n_out=5, seed=0):
    """The CNN for 8x8 digits: 3 convs, AdaptiveAvgPool, Linear(64, 64), head.

    Without the two max-poolings, the same CNN reaches only ~80 % on held-out
    source digits after its 15 epochs (a poor source); with them ~95 %.
    """
    return seeded(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, n_out),
    ), seed)


def digits_bn_cnn(n_out=5, seed=0):
    """``digits_cnn`` with a BatchNorm after each conv (7 blocks)."""
    return seeded(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, n_out),
    ), seed)


def mlp(n_in, hidden, n_out, seed=0):
    def build():
        layers, width = [], n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, n_out))
    return seeded(build, seed)


def without_head(source):
    """The source's network up to its penultimate features, as a new module."""
    if isinstance(source, nn.Sequential):  # a network trained with plain skorch
        return copy.deepcopy(source[:-1])
    net = source.encoder_ if isinstance(source, TabularPretrainer) else source.module_
    net = copy.deepcopy(net)  # a BlockNet: blocks, pre_head, head, post_head
    net.head, net.post_head = nn.Identity(), nn.Identity()
    return net


class PlainSkorch(BaseEstimator):
    """A skorch ``NeuralNetClassifier``/``Regressor`` as a plain user would set it up:
    CrossEntropyLoss / MSELoss, Adam, no validation split, shuffled batches.
    ``make_module(n_outputs)`` builds the network; the labels are encoded here."""

    def __init__(self, make_module, regression=False, lr=1e-3, max_epochs=60, batch_size=16,
                 seed=0, device="cpu"):
        self.make_module = make_module
        self.regression = regression
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        if self.regression:
            target = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
            cls, criterion, n_out = NeuralNetRegressor, nn.MSELoss, target.shape[1]
        else:
            self.classes_, target = np.unique(y, return_inverse=True)
            cls, criterion, n_out = NeuralNetClassifier, nn.CrossEntropyLoss, len(self.classes_)
        torch.manual_seed(self.seed)
        self.net_ = cls(self.make_module(n_out), criterion=criterion,
                        optimizer=torch.optim.Adam, lr=self.lr, max_epochs=self.max_epochs,
                        batch_size=self.batch_size, train_split=None,
                        iterator_train__shuffle=True, device=self.device, verbose=0)
        self.net_.fit(X, target)
        return self

    def predict(self, X):
        pred = self.net_.predict(np.asarray(X, dtype=np.float32))
        return pred.ravel() if self.regression else self.classes_[pred]


def skorch_pretrain(module, X, y, lr, epochs, seed=0):
    return PlainSkorch(lambda n_out: module, lr=lr, max_epochs=epochs, batch_size=64,
                       seed=seed).fit(X, y).net_.module_.eval()


# -- tasks --------------------------------------------------------------------------
@dataclass
class Draw:
    seed: int
    X_train: object
    y_train: object
    X_test: object
    y_test: object


@dataclass
class Task:
    """One target task: its source, its labelled draws, the networks to compare.

    ``load(seed)`` returns a ``Draw``; ``pretrain()`` the source model (cached per
    ``source_key`` within a run); ``network(n_out, seed)`` the source architecture,
    untrained, for training from scratch; ``width`` its penultimate size.
    """

    name: str
    group: str
    regression: bool
    load: object
    source_key: str
    width: int
    network: object
    freeze_depths: tuple
    preprocess: object = None  # fitted transformer in front of the scratch network
    has_bn: bool = False  # the source has BatchNorm layers
    source_classes: bool = True  # the source has a classification head (Co-Tuning)
    device: str = "cpu"  # where every method trains (--device)
    sources: dict = field(default_factory=dict, repr=False)

    @property
    def source(self):
        return self.sources[self.source_key]

    def score(self, est, draw):
        pred = est.predict(draw.X_test)
        metric = r2_score if self.regression else accuracy_score
        return float(metric(draw.y_test, pred))


def _digits_draw(n, seed):
    d = load_digits_transfer(n, random_state=seed)
    return Draw(seed, d.X_train, d.y_train, d.X_test, d.y_test)


def _shifted_draw(n, seed):
    d = load_shifted_digits(n, random_state=seed)
    return Draw(seed, d.X_train, d.y_train, d.X_test, d.y_test)


def _synth_tables(regression):
    target = "regression" if regression else "classification"
    d = make_tabular_transfer(n_source=4000, n_train=1000, n_test=2000, target=target,
                              random_state=0)
    scaler = StandardScaler().fit(d.X_source)  # the source rows set the scale, for all
    return d, scaler


def _synth_draw(regression, n, seed):
    d, scaler = _synth_tables(regression)
    X_pool, y_pool = scaler.transform(d.X_train), d.y_train
    if regression:
        X_lab, _, y_lab, _ = train_test_split(X_pool, y_pool, train_size=n, random_state=seed)
    else:
        X_lab, _, y_lab, _ = split_per_class(X_pool, y_pool, n // 2, random_state=seed)
    return Draw(seed, X_lab, y_lab, scaler.transform(d.X_test), d.y_test)


def _table_draw(n, seed):
    d = load_digits_table(n, random_state=seed)
    return Draw(seed, d.X_train, d.y_train, d.X_test, d.y_test)


def pretrain_source(key, quick=False):
    """The source model of ``key``; the only place where sources are trained."""
    torch.set_num_threads(1)
    epochs = 1 if quick else None
    if key == "digits":
        d = load_digits_transfer(1, random_state=0)
        return skorch_pretrain(digits_cnn(5, seed=0), d.X_source, d.y_source, lr=1e-3,
                               epochs=epochs or 15)
    if key == "digits-bn":
        d = load_digits_transfer(1, random_state=0)
        return skorch_pretrain(digits_bn_cnn(5, seed=0), d.X_source, d.y_source, lr=1e-3,
                               epochs=epochs or 15)
    if key == "shifted":
        d = load_shifted_digits(None)
        return skorch_pretrain(make_digits_cnn(5, random_state=0), d.X_source, d.y_source,
                               lr=3e-3, epochs=epochs or 15)
    if key in ("synth", "synth-classes"):
        d, scaler = _synth_tables(regression=False)  # the same source table for all
        y = d.y_source  # its 4 targets, or (synth-classes) which are above their median
        if key == "synth-classes":
            y = (y > np.median(y, axis=0)) @ (2 ** np.arange(4))  # 16 source classes
        cls = FineTunedRegressor if key == "synth" else FineTunedClassifier
        return cls(
            model=partial(mlp, 20, (64, 64, 32), 4 if key == "synth" else 16), penalty=None,
            head_init="random", freeze_depth=0, lr=3e-3, max_epochs=epochs or 40,
            batch_size=128, random_state=0,
        ).fit(scaler.transform(d.X_source), y)
    if key == "pretrain":
        d = load_digits_table(1, random_state=0)
        return TabularPretrainer(method="contrastive", max_epochs=epochs or 100,
                                 random_state=0).fit(d.X_unlabeled)
    raise ValueError(key)


def make_tasks():
    tasks = [
        Task(f"digits-{n}", "digits", False, partial(_digits_draw, n), "digits", 64,
             lambda n_out, seed: digits_cnn(n_out, seed), (0, 1, 2, "all"))
        for n in (5, 10, 30)
    ]
    tasks += [
        Task(f"digits-bn-{n}", "digits-bn", False, partial(_digits_draw, n), "digits-bn", 64,
             lambda n_out, seed: digits_bn_cnn(n_out, seed), (0, 1, 2, "all"), has_bn=True)
        for n in (5, 10)
    ]
    tasks += [
        Task(f"shifted-{n}", "shifted", False, partial(_shifted_draw, n), "shifted", 64,
             lambda n_out, seed: make_digits_cnn(n_out, random_state=seed), (0, 1, 2, "all"))
        for n in (5, 25)
    ]
    tasks += [
        Task(f"synth-{kind}", "synth", kind == "reg", partial(_synth_draw, kind == "reg", 150),
             "synth", 32, lambda n_out, seed: mlp(20, (64, 64, 32), n_out, seed),
             (0, 1, 2, "all"), source_classes=False)
        for kind in ("clf", "reg")
    ]
    tasks.append(Task(  # synth-clf from a classifier source: Co-Tuning on a table
        "synth-clf16", "synth-classes", False, partial(_synth_draw, False, 150),
        "synth-classes", 32, lambda n_out, seed: mlp(20, (64, 64, 32), n_out, seed),
        (0, 1, 2, "all")))
    unlabeled = load_digits_table(1, random_state=0).X_unlabeled
    tasks.append(Task(
        "pretrain-5", "pretrain", False, partial(_table_draw, 5), "pretrain", 256,
        lambda n_out, seed: mlp(unlabeled.shape[1], (256, 256), n_out, seed), (0, 1, "all"),
        preprocess=FrozenEstimator(StandardScaler().fit(unlabeled)), source_classes=False,
    ))
    return tasks


# -- methods ------------------------------------------------------------------------
METHODS = {}


@dataclass
class Method:
    factory: object
    label: str
    sktransfer: bool  # takes the --set parameters
    applies: object = None  # applies(task) -> bool; None: every task


def register(name, label, sktransfer=False, applies=None):
    """Add a row: ``factory(task, draw, **params)`` returns an unfitted estimator;
    ``applies(task)`` says on which tasks it runs (default: all)."""
    def decorate(factory):
        METHODS[name] = Method(factory, label, sktransfer, applies)
        return factory
    return decorate


def applies(spec, task):
    method = METHODS[parse_method(spec)[0]]
    return method.applies is None or method.applies(task)


def _plain(task, draw, make_module, quick, preprocess=None):
    settings = dict(SKORCH, max_epochs=2) if quick else SKORCH
    est = PlainSkorch(make_module, regression=task.regression, seed=draw.seed,
                      device=task.device, **settings)
    return est if preprocess is None else make_pipeline(preprocess, est)


@register("scratch", "skorch scratch")
def scratch(task, draw, quick=False):
    return _plain(task, draw, partial(task.network, seed=draw.seed), quick, task.preprocess)


@register("finetune_all", "skorch fine-tune all")
def finetune_all(task, draw, quick=False):
    def make_module(n_out):
        head = seeded(lambda: nn.Linear(task.width, n_out), draw.seed)
        return nn.Sequential(without_head(task.source), head)
    return _plain(task, draw, make_module, quick)  # a pretrained encoder standardises itself


def _probe(task, linear):
    return make_pipeline(FeatureExtractorTransformer(model=task.source, device=task.device),
                         StandardScaler(), linear)


@register("probe", "linear probe (C=1 / alpha=1)")
def probe(task, draw, quick=False):
    return _probe(task, Ridge(alpha=1.0) if task.regression
                  else LogisticRegression(C=1.0, max_iter=5000))


@register("probe_cv", "linear probe (CV-chosen C / alpha)")
def probe_cv(task, draw, quick=False):
    if task.regression:
        return _probe(task, RidgeCV(alphas=np.logspace(-3, 3, 13)))
    # newton-cholesky solves a (features x classes)^2 system: 3-5x faster than lbfgs on
    # the 64 features x 5 classes of the digits, far slower on 256 x 10 (pretrain-5)
    small = task.width * len(np.unique(draw.y_train)) <= 1000
    return _probe(task, LogisticRegressionCV(
        Cs=np.logspace(-1, 1, 3) if quick else np.logspace(-3, 3, 7), cv=3,
        l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=1000,
        solver="newton-cholesky" if small else "lbfgs", use_legacy_attributes=False))


def _sktransfer(task, draw, quick, params):
    cls = FineTunedRegressor if task.regression else FineTunedClassifier
    # on the CPU, leave device at its default: the "defaults" row sets nothing else
    params = {**({"max_epochs": 2} if quick else {}),
              **({} if task.device == "cpu" else {"device": task.device}), **params}
    return cls(model=task.source, random_state=draw.seed, **params)


@register("defaults", "FineTuned defaults", sktransfer=True)
def defaults(task, draw, quick=False, **params):
    return _sktransfer(task, draw, quick, params)


@register("grid", "GridSearchCV freeze_depth x alpha", sktransfer=True)
def grid(task, draw, quick=False, **params):
    grid = {"freeze_depth": list(task.freeze_depths), "alpha": list(ALPHAS)}
    if quick:
        grid = {"freeze_depth": [0, "all"], "alpha": [ALPHAS[0]]}
    grid = {k: v for k, v in grid.items() if k not in params}  # a --set value wins
    return GridSearchCV(_sktransfer(task, draw, quick, params), grid, cv=3)


@register("grid_lr", "GridSearchCV freeze_depth x alpha x lr", sktransfer=True)
def grid_lr(task, draw, quick=False, **params):
    # the grid row with the rate searched too: lr="auto"'s two rates, warmed up as "auto"
    search = grid(task, draw, quick, **{"lr_schedule": AUTO_SCHEDULE, **params})
    if "lr" not in params:
        search.param_grid["lr"] = list(AUTO_LRS[:1] if quick else AUTO_LRS)
    return search


# the adaptation methods: (name, label, parameters, applies(task) or None)
ADAPTATIONS = [
    ("wise", "WiSE-FT", {"wise": 0.5}, None),
    ("bitfit", "BitFit", {"train_params": "bias"}, None),
    ("norm_only", "norm layers only", {"train_params": "norm"}, lambda t: t.has_bn),
    ("bn_frozen", "BatchNorm frozen", {"bn": "frozen"}, lambda t: t.has_bn),
    ("lora", "LoRA", {"adapter": "lora"}, None),
    ("surgical_first", "surgical, first block", {"train_blocks": [0]}, None),
    ("surgical_last", "surgical, last block", {"train_blocks": [-1]}, None),
    ("bss", "BSS", {"penalty": "bss"}, None),
    ("co_tuning", "Co-Tuning", {"penalty": "co_tuning", "alpha": 1.0},
     lambda t: t.source_classes and not t.regression),
    # penalty="auto" is Co-Tuning where the source has classes: L2-SP is then a method
    ("l2_sp", "L2-SP", {"penalty": "l2_sp", "alpha": 1e-3},
     lambda t: t.source_classes and not t.regression),
]


def _adaptation(settings):
    # each method applied to fine-tuning (freeze_depth=0): with the default "auto" the
    # fit could pick the probe, where no method changes anything
    def factory(task, draw, quick=False, **params):
        return _sktransfer(task, draw, quick, {"freeze_depth": 0, **settings, **params})
    return factory


for _name, _label, _settings, _applies in ADAPTATIONS:
    _text = ", ".join(f"{k}={v!r}" for k, v in _settings.items())
    register(_name, f"{_label} ({_text})", sktransfer=True, applies=_applies)(
        _adaptation(_settings))


@register("methods", "GridSearchCV over the methods", sktransfer=True)
def methods(task, draw, quick=False, **params):
    grid = [{}]  # the defaults (the probe or plain fine-tuning)
    for _, _, settings, fits in ADAPTATIONS:
        if fits is None or fits(task):
            grid.append({"freeze_depth": [0], **{k: [v] for k, v in settings.items()}})
    if quick:
        grid = grid[:2]
    grid = [{k: v for k, v in g.items() if k not in params} for g in grid]
    return GridSearchCV(_sktransfer(task, draw, quick, params), grid, cv=3)


# -- running ------------------------------------------------------------------------
def parse_value(text):
    """``"1e-3"`` -> 0.001, ``"all"`` -> "all", ``"None"`` -> None, ``"(8,)"`` -> (8,)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items):
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {item!r}")
        params[key.strip()] = parse_value(value.strip())
    return params


def parse_method(spec):
    """``"defaults:lr=1e-3,max_epochs=60"`` -> (name, its own parameters)."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    own = parse_params(rest.split(",")) if rest else {}
    if own and not METHODS[name].sktransfer:
        raise SystemExit(f"method {name!r} takes no parameters (only the sktransfer ones do)")
    return name, own


def select_tasks(tasks, wanted):
    if not wanted:
        return tasks
    chosen = [t for t in tasks if t.name in wanted or t.group in wanted]
    unknown = set(wanted) - {t.name for t in tasks} - {t.group for t in tasks}
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; known: "
                         f"{', '.join(t.name for t in tasks)} (or a group: "
                         f"{', '.join(dict.fromkeys(t.group for t in tasks))})")
    return chosen


def run_one(task, seed, spec, params, quick):
    """Fit one method on one draw of one task; returns a result row."""
    torch.set_num_threads(1)
    name, _ = parse_method(spec)
    draw = task.load(seed)
    method = METHODS[name]
    est = method.factory(task, draw, quick=quick, **(params if method.sktransfer else {}))
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    est.fit(draw.X_train, draw.y_train)
    fit_s = time.perf_counter() - start
    return {"task": task.name, "method": spec, "draw": seed, "score": task.score(est, draw),
            "fit_s": fit_s, "chosen": getattr(est, "best_params_", None)}


def markdown(rows, tasks, specs, key="score", fmt="{:.3f}"):
    lines = ["| method | " + " | ".join(t.name for t in tasks) + " |",
             "|---" * (len(tasks) + 1) + "|"]
    for spec in specs:
        cells = []
        for t in tasks:
            vals = np.array([r[key] for r in rows
                             if r["task"] == t.name and r["method"] == spec])
            cell = fmt.format(vals.mean()) if len(vals) else ""
            if len(vals) > 1:
                cell += " ± " + fmt.format(vals.std(ddof=1))
            cells.append(cell)
        lines.append(f"| {label(spec)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label(spec):
    name, own = parse_method(spec)
    text = METHODS[name].label
    return text + (" " + ", ".join(f"{k}={v!r}" for k, v in own.items()) if own else "")


def build_parser():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=None,
                   help="draws of the labelled set per task (default: 5, --quick: 1)")
    p.add_argument("--tasks", nargs="*", default=None, help="task names or groups (default: all)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="method names, 'name:key=value,...' for a variant (default: all)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="params",
                   help="parameters of every sktransfer method, e.g. lr=3e-3")
    p.add_argument("--n-jobs", type=int, default=1, help="processes (joblib)")
    p.add_argument("--out", default=None, help="write the results to a .json or .csv file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    tasks = select_tasks(make_tasks(), args.tasks)
    specs = args.methods or list(METHODS)
    for spec in specs:
        parse_method(spec)  # fail before any training
    params = parse_params(args.params)
    draws = args.draws or (1 if args.quick else 5)
    start = time.perf_counter()
    keys = list(dict.fromkeys(t.source_key for t in tasks))
    fitted = Parallel(n_jobs=args.n_jobs)(delayed(pretrain_source)(k, args.quick) for k in keys)
    sources = dict(zip(keys, fitted))
    for t in tasks:
        t.sources, t.device = {t.source_key: sources[t.source_key]}, args.device
    pretrain_s = time.perf_counter() - start
    jobs = [(t, seed, spec) for t in tasks for seed in range(draws) for spec in specs
            if applies(spec, t)]
    rows = Parallel(n_jobs=args.n_jobs)(
        delayed(run_one)(t, seed, spec, {**params, **parse_method(spec)[1]}, args.quick)
        for t, seed, spec in jobs)
    total_s = time.perf_counter() - start

    today = datetime.date.today().isoformat()
    versions = (f"sktransfer {sktransfer.__version__}, torch {torch.__version__}, "
                f"scikit-learn {sklearn.__version__}, skorch {skorch.__version__}")
    print(f"\nTransfer quality, {today}; {versions}; {draws} draw(s) of the labelled set "
          f"(mean ± std over draws); --set {params or 'nothing'}")
    print("Score: accuracy on the test set (synth-reg: R^2).\n")
    print(markdown(rows, tasks, specs))
    print("\nMean fit time (s) per draw, one thread per process "
          f"({args.n_jobs} process(es); pretraining {pretrain_s:.0f} s, total {total_s:.0f} s):\n")
    print(markdown(rows, tasks, specs, key="fit_s", fmt="{:.1f}"))
    if args.out:
        write(args.out, rows, {"date": today, "versions": versions, "draws": draws,
                               "set": params, "total_s": total_s})
    return rows


def write(path, rows, meta):
    if path.endswith(".csv"):
        import pandas as pd

        pd.DataFrame(rows).assign(chosen=lambda d: d["chosen"].astype(str)).to_csv(
            path, index=False)
    else:
        with open(path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
