"""Bad input across the whole public API, in one place (issue 7).

One matrix of (entry point, bad input, expected exception, message regex) walks
``FeatureExtractorTransformer`` (FX), ``FineTunedClassifier`` (FTC),
``FineTunedRegressor`` (FTR), ``TabularPretrainer`` (TP), ``list_blocks``,
``split_model`` and ``sktransfer.metrics`` through NaN/inf, empty and one-sample
input, one class, wrong dtypes, wrong feature counts or image shapes, mismatched
lengths, invalid hyperparameters and models that do not fit the task. A regex
names the input or parameter and what to do; ``error=None`` marks input that is
accepted on purpose (e.g. ``y`` is ignored by the transformers).

Every case also checks that nothing was left changed by the failure:

* the user's pretrained model (``nn.Module``, or the network of a fitted
  estimator passed as ``model``) is bit-identical: state dict bytes,
  ``requires_grad`` and train/eval mode;
* an unfitted estimator gains no attribute from a failed ``fit``;
* a fitted estimator whose refit (or ``predict``/``transform``) fails keeps its
  fitted state: the same attributes, the same ``module_`` and identical outputs.

Then a property-based test (random shapes and dtypes never escape as a raw
torch/numpy error) and a memory test (``transform``/``predict`` bounded by
``batch_size``, not by ``len(X)``).
"""

import functools
import gc
import re
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    TabularPretrainer,
    list_blocks,
    split_model,
)
from sktransfer import metrics as M

from .conftest import tiny_mlp

CPU = {"device": "cpu"}
RNG = np.random.RandomState(0)
X = RNG.normal(size=(12, 4)).astype(np.float32)
Y_CLS = np.arange(12) % 2
Y_REG = RNG.normal(size=12)
IMG = RNG.normal(size=(12, 1, 8, 8)).astype(np.float32)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def with_value(a, value, index=0):
    a = np.array(a, dtype=np.result_type(a, type(value)))
    a.flat[index] = value
    return a


# -- the user's models ---------------------------------------------------------------
def tab_net():
    """4 features -> 3 outputs; blocks ['0-1', '2-3'] + head '4'."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, 3))


def img_net():
    """(1, 8, 8) images only (flatten before the head); one block + head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def nan_net():
    net = tab_net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    return net


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


def pair_encoder():
    """An encoder whose block returns a tuple instead of a tensor."""
    torch.manual_seed(0)
    return split_model(nn.Sequential(nn.Linear(4, 4), _Pair()), blocks=[["0", "1"]],
                       head=None)


class _Residual(nn.Module):
    """Its forward is not its children in order: the default split is wrong."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.body(x) + x)


@functools.lru_cache(maxsize=None)
def tp_encoder():
    """A fitted TabularPretrainer on 4 columns: one block, no head."""
    return TabularPretrainer(hidden_layer_sizes=(4,), max_epochs=1, random_state=0,
                             **CPU).fit(X)


MODELS = {
    "@tab": tab_net,
    "@img": img_net,
    "@nan": nan_net,
    "@pair": pair_encoder,
    "@residual": _Residual,
    "@relu": nn.ReLU,
    "@linear": lambda: nn.Linear(4, 3),
    "@tp": tp_encoder,
    "@unfitted": lambda: FineTunedClassifier(model=tab_net(), **CPU),
}


def resolve(params):
    """Build the models that cases name as ``"@name"`` (a fresh one per test)."""
    return {k: MODELS[v]() if isinstance(v, str) and v in MODELS else v
            for k, v in params.items()}


def network_of(model):
    if isinstance(model, nn.Module):
        return model
    for attr in ("module_", "encoder_"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return None


def model_state(model):
    """Everything of the user's model that sktransfer must leave alone (bit for bit)."""
    net = network_of(model)
    if net is None:
        return None
    return (
        [(k, str(v.dtype), tuple(v.shape), v.detach().cpu().numpy().tobytes())
         for k, v in net.state_dict().items()],
        [p.requires_grad for p in net.parameters()],
        [m.training for m in net.modules()],
    )


# -- the estimators -------------------------------------------------------------------
ENTRIES = ("FX", "FTC", "FTR", "TP")
NETS = ("FX", "FTC", "FTR")
TUNED = ("FTC", "FTR")
METHODS = {"FX": ("transform",), "FTC": ("predict", "predict_proba"), "FTR": ("predict",),
           "TP": ("transform",)}


def make(entry, **params):
    if entry == "TP":
        base = {"hidden_layer_sizes": (4,), "max_epochs": 1, "batch_size": 8,
                "random_state": 0, **CPU}
        return TabularPretrainer(**{**base, **params})
    base = {"model": tab_net(), **CPU}
    if entry != "FX":
        base.update(max_epochs=1, batch_size=8, random_state=0)
    cls = {"FX": FeatureExtractorTransformer, "FTC": FineTunedClassifier,
           "FTR": FineTunedRegressor}[entry]
    return cls(**{**base, **params})


def target_for(entry, n):
    return (Y_REG if entry == "FTR" else Y_CLS)[:n]


def n_rows(a):
    shape = getattr(a, "shape", None)
    return shape[0] if shape else 12


def output(est, X_):
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X_)
    return est.transform(X_) if hasattr(est, "transform") else est.predict(X_)


def fitted_state(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_") or k.startswith("_")}


# -- the matrix: fit ------------------------------------------------------------------
def param_error(name, allowed=".*", got=".*"):
    """scikit-learn's InvalidParameterError (a ValueError and a TypeError): it names
    the parameter, what it may be and the value it got."""
    return ValueError, rf"The '{name}' parameter of \w+ must be {allowed}\. Got {got} instead"


# (case, X, y, {entry: (error, regex) or None}): y=None means a valid y as long as X,
# SAME means y=None itself.
SAME = object()
DATA_CASES = [
    ("X-nan", with_value(X, np.nan), None,  # TP: a missing cell is a masked cell
     {**{e: (ValueError, r"(?s)Input X contains NaN.*imputer") for e in NETS}, "TP": None}),
    ("X-inf", with_value(X, np.inf), None,
     {e: (ValueError, r"Input X contains infinity.*Replace or drop the infinite values")
      for e in ENTRIES}),
    ("X-empty", X[:0], None,
     {e: (ValueError, r"0 sample\(s\) \(shape=\(0, 4\)\).*X needs at least that many")
      for e in ENTRIES}),
    ("X-no-columns", X[:, :0], None,
     {e: (ValueError, r"0 feature\(s\).*X has no columns") for e in ENTRIES}),
    ("X-1d", X[:, 0], None,
     {e: (ValueError, r"(?s)Expected 2D array, got 1D array.*reshape.*X must be 2-D")
      for e in ENTRIES}),
    ("X-scalar", np.float32(1.0), None,
     {e: (ValueError, r"(?s)got scalar array.*X must be 2-D") for e in ENTRIES}),
    ("X-None", None, None, {e: (TypeError, r"X is None; \w+ needs X: a 2-D array")
                            for e in ENTRIES}),
    ("X-strings", np.full((12, 4), "a"), None,
     {e: (ValueError, r"could not convert string to float.*X must hold numbers.*"
                      r"OneHotEncoder") for e in ENTRIES}),
    ("X-object-with-string", with_value(X.astype(object), "a"), None,
     {e: (ValueError, r"could not convert string to float.*X must hold numbers")
      for e in ENTRIES}),
    ("X-object-with-None", with_value(X.astype(object), None), None,
     {**{e: (ValueError, r"(?s)Input X contains NaN.*imputer") for e in NETS}, "TP": None}),
    ("X-complex", X.astype(complex), None,
     {e: (ValueError, r"Complex data not supported: X has the complex dtype complex128.*"
                      r"np\.real\(X\)") for e in ENTRIES}),
    ("X-sparse", sparse.csr_matrix(X), None,
     {e: (TypeError, r"Sparse data was passed for X.*\.toarray\(\)") for e in ENTRIES}),
    ("X-images-for-tabular-net", IMG, None, {
        **{e: (ValueError, r"cannot process X.*The model takes samples of shape \(4,\); "
                           r"X gives \(1, 8, 8\)\. Check that X has the layout")
           for e in NETS},
        "TP": (ValueError, r"dim 4.*X must be a 2-D table.*X\.reshape\(len\(X\), -1\)")}),
    ("X-3d", X[:, :, None], None, {
        **{e: (ValueError, r"cannot process X.*takes samples of shape \(4,\); X gives "
                           r"\(4, 1\)") for e in NETS},
        "TP": (ValueError, r"dim 3.*X must be a 2-D table")}),
    ("X-wrong-n-features", RNG.normal(size=(12, 5)), None, {
        **{e: (ValueError, r"cannot process X.*takes samples of shape \(4,\); X gives "
                           r"\(5,\)") for e in NETS},
        "TP": None}),  # TP learns from any number of columns
    ("X-axis-of-size-0", np.zeros((12, 0, 4), np.float32), None, {
        **{e: (ValueError, r"X has samples of shape \(0, 4\), which hold no values")
           for e in NETS},
        "TP": (ValueError, r"dim 3.*X must be a 2-D table")}),
    ("X-uint8-bad-layout", np.zeros((12, 4, 4), np.uint8), None, {
        **{e: (ValueError, r"X is a uint8 array, and uint8 image arrays must have shape "
                           r"\(n, H, W, C\).*Pass float arrays as \(n, C, H, W\)")
           for e in NETS},
        "TP": (ValueError, r"dim 3.*X must be a 2-D table")}),
    ("X-one-sample", X[:1], None, {
        "FX": None,
        **{e: (ValueError, r"needs at least 2 samples to fine-tune, got n_samples = 1")
           for e in TUNED},
        "TP": (ValueError, r"1 sample\(s\).*minimum of 2.*X needs at least")}),
    ("X-object-numbers", X.astype(object), None, {e: None for e in ENTRIES}),
    ("X-bool", RNG.normal(size=(12, 4)) > 0, None, {e: None for e in ENTRIES}),
    # real tables have constant columns (overall, or within one fold of a search)
    ("X-constant-column", np.c_[X[:, :3], np.ones(12)], None, {e: None for e in ENTRIES}),
    # y: ignored by the transformers, checked by the fine-tuned estimators
    ("y-nan", X, with_value(Y_REG, np.nan), {
        "FX": None, "TP": None,
        **{e: (ValueError, r"Input y contains NaN.*Drop the samples whose target is missing")
           for e in TUNED}}),
    ("y-inf", X, with_value(Y_REG, np.inf), {
        **{e: (ValueError, r"Input y contains infinity.*Replace or drop the infinite values")
           for e in TUNED}}),
    ("y-length", X, Y_CLS[:10], {
        "FX": None, "TP": None,
        **{e: (ValueError, r"inconsistent numbers of samples: \[12, 10\].*X and y must "
                           r"describe the same samples") for e in TUNED}}),
    ("y-None", X, SAME, {
        **{e: (ValueError, r"\w+ requires y to be passed, but the target y is None")
           for e in TUNED}}),
    ("y-complex", X, Y_CLS.astype(complex), {
        **{e: (ValueError, r"Complex data not supported: y has the complex dtype.*"
                           r"np\.real\(y\)") for e in TUNED}}),
    ("y-one-class", X, np.zeros(12, int), {
        "FTC": (ValueError, r"y has a single class \(0\); a classifier needs at least two "
                            r"classes\. Pass samples of at least two classes"),
        "FTR": None}),  # a constant regression target is a valid (if dull) target
    ("y-2d-labels", X, np.c_[Y_CLS, Y_CLS], {
        "FTC": (ValueError, r"y should be a 1d array, got an array of shape \(12, 2\)")}),
    ("y-continuous-labels", X, Y_REG, {
        "FTC": (ValueError, r"Unknown label type: continuous\. Maybe you are trying to fit "
                            r"a classifier")}),
    ("y-strings-for-regression", X, np.array(["a", "b"] * 6), {
        "FTC": None,
        "FTR": (ValueError, r"y must hold numbers for FineTunedRegressor.*Convert y to "
                            r"floats, or use FineTunedClassifier")}),
    ("y-3d", X, Y_REG.reshape(12, 1, 1), {
        "FTR": (ValueError, r"y has shape \(12, 1, 1\); FineTunedRegressor takes y of "
                            r"shape \(n_samples,\) or \(n_samples, n_outputs\).*reshape")}),
]

# (case, params, (error, regex)): hyperparameters and models, fitted on the valid X.
_MODEL_COMMON = [
    ("device-unknown", {"device": "tpu"},
     (ValueError, r"device='tpu' is not a valid torch device; use 'cpu', 'cuda'")),
    ("device-type", {"device": 3},
     param_error("device", r"an instance of 'str' or an instance of 'torch\.device'", "3")),
    ("weights-name-for-module", {"weights": "DEFAULT"},
     (ValueError, r"weights='DEFAULT' looks like a torchvision weights name.*For an "
                  r"nn\.Module pass weights=None or a path")),
    ("weights-missing-file", {"weights": "/nonexistent/w.pt"},
     (FileNotFoundError, r"Weights file '/nonexistent/w\.pt' does not exist\. Pass the "
                         r"path to a state-dict file")),
    ("weights-type", {"weights": 3},
     param_error("weights", r"None, an instance of 'str' or an instance of 'os\.PathLike'", "3")),
    ("preprocess-value", {"preprocess": "x"},
     param_error("preprocess", r"a str among \{'auto'\}, a callable or None", "'x'")),
    ("preprocess-type", {"preprocess": 3}, param_error("preprocess", got="3")),
    ("random_state", {"random_state": -1}, param_error("random_state")),
    ("model-None", {"model": None},
     param_error("model", r"an instance of 'str', an instance of 'torch\.nn\.modules\.module\."
                          r"Module', a callable or an object implementing '__sktransfer_model__'",
                 "None")),
    ("model-type", {"model": 3}, param_error("model", got="3")),
    ("model-unknown-name", {"model": "resnet1"},
     (ValueError, r"Unknown model name 'resnet1'.*Did you mean .*'resnet18'.*list_models")),
    ("model-factory-with-args", {"model": lambda a: a},
     (TypeError, r"model='<lambda>' is a callable that needs arguments \['a'\]; pass a "
                 r"zero-argument callable")),
    ("model-factory-not-module", {"model": lambda: 3},
     (TypeError, r"model='<lambda>' returned a int, not an nn\.Module")),
    ("model-without-children", {"model": "@relu"},
     (ValueError, r"Cannot split a ReLU without child modules into blocks; wrap it, e\.g\. "
                  r"nn\.Sequential\(model\)")),
    ("model-single-linear", {"model": "@linear"},
     (ValueError, r"Cannot split a Linear without child modules")),
    ("model-unfitted-estimator", {"model": "@unfitted"},
     (NotFittedError, r"model is an unfitted FineTunedClassifier: fit it on the source data "
                      r"first.*FrozenEstimator")),
    ("model-nan-weights", {"model": "@nan"},
     (ValueError, r"gives NaN or infinite features for the first samples of X.*Check the "
                  r"model's weights")),
    ("model-returns-tuple", {"model": "@pair"},
     (ValueError, r"returns a tuple, not a tensor.*sktransfer\.split_model")),
    ("model-default-split-wrong", {"model": "@residual"},
     (ValueError, r"default block split of _Residual.*does not reproduce its forward.*"
                  r"split_model\(net, blocks=")),
    ("model-images-net-given-table", {"model": "@img"},
     (ValueError, r"cannot process X: a batch of shape \(2, 4\) fails.*Check that X has "
                  r"the layout")),
]
_TUNED_PARAMS = [
    ("alpha-negative", {"alpha": -1.0}, param_error("alpha")),
    ("lr-zero", {"lr": 0.0}, param_error("lr")),
    ("lr-negative", {"lr": -0.1}, param_error("lr")),
    ("backbone_lr_scale-negative", {"backbone_lr_scale": -1.0},
     param_error("backbone_lr_scale")),
    ("freeze_depth-beyond-blocks", {"freeze_depth": 3},
     (ValueError, r"freeze_depth=3 is out of range: the model has 2 blocks, so use 0\.\.2 "
                  r"or 'all' \(see sktransfer\.list_blocks\(model\)\)")),
    ("freeze_depth-negative", {"freeze_depth": -1},
     param_error("freeze_depth", r"an int in the range \[0, inf\) or a str among "
                 r"\{'a(ll|uto)', 'a(ll|uto)'\}", "-1")),
    ("freeze_depth-float", {"freeze_depth": 1.5}, param_error("freeze_depth", got=r"1\.5")),
    ("freeze_depth-bool", {"freeze_depth": True},
     (TypeError, r"freeze_depth must be an int or 'all', got bool True")),
    ("freeze_depth-None", {"freeze_depth": None}, param_error("freeze_depth", got="None")),
    ("freeze_depth-unknown-string", {"freeze_depth": "most"},
     param_error("freeze_depth", got="'most'")),
    ("freeze_depth-beyond-encoder", {"freeze_depth": 2, "model": "@tp"},
     (ValueError, r"freeze_depth=2 is out of range: the model has 1 blocks")),
    ("penalty-unknown", {"penalty": "l3"}, param_error("penalty")),
    ("optimizer-unknown", {"optimizer": "rmsprop"}, param_error("optimizer")),
    ("optimizer-not-an-optimizer", {"optimizer": int},
     (TypeError, r"optimizer must be one of \['adam', 'adamw', 'sgd'\] or a "
                 r"torch\.optim\.Optimizer subclass")),
    ("max_epochs-zero", {"max_epochs": 0}, param_error("max_epochs")),
    ("batch_size-zero", {"batch_size": 0}, param_error("batch_size")),
    ("dropout-one", {"dropout": 1.0}, param_error("dropout")),
    ("momentum-above-one", {"momentum": 2.0}, param_error("momentum")),
    ("head_hidden_sizes-zero", {"head_hidden_sizes": (0,)},
     (ValueError, r"head_hidden_sizes must be positive ints, got \(0,\)")),
    ("validation_fraction-zero", {"early_stopping": True, "validation_fraction": 0.0},
     param_error("validation_fraction")),
    ("net_kwargs-type", {"net_kwargs": [1]}, param_error("net_kwargs")),
    ("reuse_head-encoder", {"reuse_head": True, "model": "@tp"},
     (ValueError, r"reuse_head=True but the pretrained model has no head.*use "
                  r"reuse_head=False")),
]
PARAM_CASES = [
    *[(c, p, {e: err for e in NETS}) for c, p, err in _MODEL_COMMON],
    *[(c, p, {e: err for e in TUNED}) for c, p, err in _TUNED_PARAMS],
    ("reuse_head-wrong-output-size", {"reuse_head": True}, {
        "FTC": (ValueError, r"reuse_head=True needs the pretrained head to output 2 values "
                            r"per sample \(2 classes\), but it outputs \(3,\)\. Use "
                            r"reuse_head=False"),
        "FTR": (ValueError, r"reuse_head=True needs the pretrained head to output 1 values "
                            r"per sample \(1 regression targets\).*reuse_head=False")}),
    ("early_stopping-too-few-per-class", {"early_stopping": True, "validation_fraction": 0.01},
     {"FTC": (ValueError, r"early_stopping=True cannot hold out validation_fraction=0\.01 "
                          r"of 12 samples.*Increase validation_fraction")}),
    ("device-cuda-unavailable", {"device": "cuda"},
     {e: (ValueError, r"device='cuda' but CUDA is not available.*use device='cpu'")
      for e in ENTRIES}),
    ("layer-out-of-range", {"layer": 2}, {
        "FX": (ValueError, r"layer=2 is out of range: the model has 2 blocks \['0-1', "
                           r"'2-3'\], so use an index in \[-2, 1\]")}),
    ("layer-negative-out-of-range", {"layer": -3},
     {"FX": (ValueError, r"layer=-3 is out of range.*\[-2, 1\]")}),
    ("layer-unknown-name", {"layer": "nope"}, {
        "FX": (ValueError, r"layer='nope' is not a block of this model; its blocks are "
                           r"\['0-1', '2-3'\] \(see sktransfer\.list_blocks\(model\)\)")}),
    ("layer-float", {"layer": 1.5},
     {"FX": param_error("layer", r"an int in the range \(-inf, inf\), an instance of 'str' "
                                 r"or None", r"1\.5")}),
    ("layer-bool", {"layer": True},
     {"FX": (TypeError, r"layer must be an int, a block name or None, got True")}),
    ("layer-head-of-encoder", {"layer": "head", "model": "@tp"},
     {"FX": (ValueError, r"layer='head' but this model has no head.*use layer=None")}),
    ("pooling-unknown", {"pooling": "median"}, {"FX": param_error("pooling")}),
    ("batch_size-zero", {"batch_size": 0}, {"FX": param_error("batch_size"),
                                            "TP": param_error("batch_size")}),
    ("hidden_layer_sizes-empty", {"hidden_layer_sizes": ()}, {
        "TP": (ValueError, r"hidden_layer_sizes must be a non-empty tuple of positive ints, "
                           r"e\.g\. \(256, 256\); got \(\)")}),
    ("hidden_layer_sizes-zero", {"hidden_layer_sizes": (0,)},
     {"TP": (ValueError, r"hidden_layer_sizes must be a non-empty tuple of positive ints")}),
    ("hidden_layer_sizes-float", {"hidden_layer_sizes": (2.5,)},
     {"TP": (ValueError, r"hidden_layer_sizes must be a non-empty tuple of positive ints")}),
    ("hidden_layer_sizes-negative", {"hidden_layer_sizes": -2},
     {"TP": param_error("hidden_layer_sizes")}),
    ("method-unknown", {"method": "vime"}, {"TP": param_error("method")}),
    ("mask_rate-zero", {"mask_rate": 0.0}, {"TP": param_error("mask_rate")}),
    ("mask_rate-above-one", {"mask_rate": 1.5}, {"TP": param_error("mask_rate")}),
    ("temperature-zero", {"temperature": 0.0}, {"TP": param_error("temperature")}),
    ("lr-zero", {"lr": 0.0}, {"TP": param_error("lr")}),
    ("dropout-one", {"dropout": 1.0}, {"TP": param_error("dropout")}),
    ("max_epochs-zero", {"max_epochs": 0}, {"TP": param_error("max_epochs")}),
    ("device-unknown", {"device": "tpu"},
     {"TP": (ValueError, r"device='tpu' is not a valid torch device")}),
    ("net_kwargs-type", {"net_kwargs": 5}, {"TP": param_error("net_kwargs")}),
]
# a model that does not fit the data it is given
MODEL_DATA_CASES = [
    ("encoder-given-more-columns", {"model": "@tp"}, RNG.normal(size=(12, 5)),
     {e: (ValueError, r"cannot process X.*The model takes samples of shape \(4,\); X gives "
                      r"\(5,\)") for e in NETS}),
    ("tabular-net-given-uint8-images", {}, np.zeros((12, 8, 8, 3), np.uint8),
     {e: (ValueError, r"cannot process X: a batch of shape \(2, 3, 8, 8\).*takes samples "
                      r"of shape \(4,\)") for e in NETS}),
]


def _fit_params():
    rows = []
    for case, X_, y_, expected in DATA_CASES:
        for entry, outcome in expected.items():
            if y_ is SAME:
                y_arg = None
            elif y_ is None:
                y_arg = target_for(entry, n_rows(X_))
            else:
                y_arg = y_
            rows.append(pytest.param(entry, X_, y_arg, {}, outcome, id=f"{entry}-{case}"))
    for case, params, expected in PARAM_CASES:
        for entry, outcome in expected.items():
            marks = (NO_CUDA,) if params.get("device") == "cuda" else ()
            rows.append(pytest.param(entry, X, target_for(entry, 12), params, outcome,
                                     id=f"{entry}-{case}", marks=marks))
    for case, params, X_, expected in MODEL_DATA_CASES:
        for entry, outcome in expected.items():
            rows.append(pytest.param(entry, X_, target_for(entry, n_rows(X_)), params,
                                     outcome, id=f"{entry}-{case}"))
    return rows


@pytest.mark.parametrize("entry, X_bad, y_bad, params, outcome", _fit_params())
def test_fit(entry, X_bad, y_bad, params, outcome):
    params = resolve(params)
    est = make(entry, **params)
    user_model = est.get_params(deep=False).get("model")
    before = model_state(user_model)
    if outcome is None:  # accepted on purpose
        est.fit(X_bad, y_bad)
        assert model_state(user_model) == before
        return
    error, match = outcome

    # 1. unfitted: the right error, no attribute gained, the user's model untouched
    attrs = set(vars(est))
    with pytest.raises(error, match=match):
        est.fit(X_bad, y_bad)
    assert set(vars(est)) == attrs
    assert model_state(user_model) == before

    # 2. fitted: a failed refit leaves the fitted estimator as it was
    good = make(entry).get_params(deep=False)
    est.set_params(**good)
    est.fit(X, target_for(entry, 12))
    reference = output(est, X)
    fitted = fitted_state(est)
    est.set_params(**params)
    with pytest.raises(error, match=match):
        est.fit(X_bad, y_bad)
    assert fitted_state(est).keys() == fitted.keys()
    assert all(fitted_state(est)[k] is v for k, v in fitted.items())
    est.set_params(**good)
    np.testing.assert_array_equal(output(est, X), reference)
    assert model_state(user_model) == before


# -- the matrix: predict / transform ------------------------------------------------------
PREDICT_TAB = [
    ("X-nan", with_value(X, np.nan), (ValueError, r"(?s)Input X contains NaN.*imputer")),
    ("X-inf", with_value(X, -np.inf),
     (ValueError, r"Input X contains infinity.*Replace or drop the infinite values")),
    ("X-empty", X[:0], (ValueError, r"0 sample\(s\).*X needs at least that many samples")),
    ("X-no-columns", X[:, :0], (ValueError, r"0 feature\(s\).*X has no columns")),
    ("X-1d", X[0], (ValueError, r"(?s)Expected 2D array, got 1D array.*X must be 2-D")),
    ("X-None", None, (TypeError, r"X is None; \w+ needs X")),
    ("X-strings", np.full((3, 4), "a"),
     (ValueError, r"could not convert string to float.*X must hold numbers")),
    ("X-complex", X.astype(np.complex64),
     (ValueError, r"Complex data not supported: X has the complex dtype complex64")),
    ("X-sparse", sparse.csr_matrix(X), (TypeError, r"Sparse data was passed for X")),
    ("X-wrong-n-features", RNG.normal(size=(3, 5)),
     (ValueError, r"X has 5 features, but \w+ is expecting 4 features as input")),
    ("X-one-sample", X[:1], None),
    ("X-object-numbers", X.astype(object), None),
]
PREDICT_TAB_NETS = [  # the transformer TP takes tables only, so its messages differ
    ("X-images", IMG[:3], (ValueError, r"X is a numeric array with 3 or more dimensions, "
                                       r"but \w+ was fitted on a 2-D table; pass the same "
                                       r"kind of input as to fit")),
    ("X-uint8-images", np.zeros((3, 8, 8, 3), np.uint8),
     (ValueError, r"X is uint8 images \(n, H, W, C\), but \w+ was fitted on a 2-D table")),
]
PREDICT_TAB_TP = [
    ("X-images", IMG[:3], (ValueError, r"dim 4.*X must be a 2-D table")),
]
PREDICT_IMG = [
    ("image-size", RNG.normal(size=(3, 1, 9, 9)).astype(np.float32),
     (ValueError, r"X has samples of shape \(1, 9, 9\), but \w+ was fitted on samples of "
                  r"shape \(1, 8, 8\); resize or reshape X to match")),
    ("image-channels", RNG.normal(size=(3, 3, 8, 8)).astype(np.float32),
     (ValueError, r"X has samples of shape \(3, 8, 8\).*fitted on samples of shape "
                  r"\(1, 8, 8\)")),
    ("image-5d", np.zeros((3, 1, 1, 8, 8), np.float32),
     (ValueError, r"X has samples of shape \(1, 1, 8, 8\).*resize or reshape X")),
    ("image-axis-of-size-0", np.zeros((3, 1, 0, 8), np.float32),
     (ValueError, r"X has samples of shape \(1, 0, 8\), which hold no values")),
    ("image-table", X, (ValueError, r"X is a 2-D table, but \w+ was fitted on a numeric "
                                    r"array with 3 or more dimensions; pass the same kind")),
    ("image-nan", with_value(IMG[:3], np.nan), (ValueError, r"(?s)Input X contains NaN.*"
                                                            r"imputer")),
    ("image-inf", with_value(IMG[:3], np.inf),
     (ValueError, r"Input X contains infinity.*Replace or drop")),
    ("image-empty", IMG[:0], (ValueError, r"0 sample\(s\).*X needs at least")),
    ("image-uint8-bad-channels", np.zeros((3, 8, 8, 5), np.uint8),
     (ValueError, r"X is a uint8 array, and uint8 image arrays must have shape "
                  r"\(n, H, W, C\) with C in 1, 3 or 4; got \(3, 8, 8, 5\)")),
    ("image-object", IMG[:3].astype(object),
     (ValueError, r"X must hold numbers \(images or tensors\); got dtype object\. Convert "
                  r"it with np\.asarray\(X, dtype=np\.float32\)")),
    ("image-strings", np.full((3, 1, 8, 8), "a"),
     (ValueError, r"X must hold numbers.*got dtype <U1")),
    ("image-complex", IMG[:3].astype(complex),
     (ValueError, r"Complex data not supported: X has the complex dtype complex128")),
    ("image-one-sample", IMG[:1], None),
]


@functools.lru_cache(maxsize=None)
def fitted(entry, kind):
    """One fitted estimator per (entry, input kind), shared by the predict cases."""
    if kind == "tab":
        return make(entry).fit(X, target_for(entry, 12))
    return make(entry, model=img_net()).fit(IMG, target_for(entry, 12))


def _predict_params():
    rows = []
    for entry in ENTRIES:
        tab = PREDICT_TAB + (PREDICT_TAB_TP if entry == "TP" else PREDICT_TAB_NETS)
        cases = [("tab", *c) for c in tab]
        if entry != "TP":
            cases += [("img", *c) for c in PREDICT_IMG]
        for kind, case, X_bad, outcome in cases:
            for method in METHODS[entry]:
                rows.append(pytest.param(entry, kind, method, X_bad, outcome,
                                         id=f"{entry}.{method}-{kind}-{case}"))
    return rows


@pytest.mark.parametrize("entry, kind, method, X_bad, outcome", _predict_params())
def test_predict_and_transform(entry, kind, method, X_bad, outcome):
    est = fitted(entry, kind)
    X_good = X if kind == "tab" else IMG
    user_model = est.get_params(deep=False).get("model")
    before = model_state(user_model)
    reference = getattr(est, method)(X_good)
    state = fitted_state(est)
    if outcome is None:
        getattr(est, method)(X_bad)
    else:
        error, match = outcome
        with pytest.raises(error, match=match):
            getattr(est, method)(X_bad)
    assert fitted_state(est).keys() == state.keys()
    assert all(fitted_state(est)[k] is v for k, v in state.items())
    np.testing.assert_array_equal(getattr(est, method)(X_good), reference)
    assert model_state(user_model) == before


@pytest.mark.parametrize("entry", ENTRIES)
def test_predict_before_fit(entry):
    est = make(entry)
    for method in METHODS[entry]:
        with pytest.raises(NotFittedError, match=r"This \w+ instance is not fitted yet\. "
                                                 r"Call 'fit'"):
            getattr(est, method)(X)
    assert not [k for k in vars(est) if k.endswith("_")]


# -- the matrix: list_blocks, split_model, metrics ---------------------------------------
F = RNG.normal(size=(20, 3))
YL = np.arange(20) % 2
PROBA = np.full((20, 2), 0.5)
Z = np.arange(20) % 3


def _feature_cases(name, call, base):
    """The same bad feature matrices for every metric that takes one."""
    return [
        (f"{name}-nan", lambda m: call(with_value(base, np.nan)),
         (ValueError, rf"{name}: Input {name} contains NaN\. {name} must be finite: drop or "
                      r"impute")),
        (f"{name}-inf", lambda m: call(with_value(base, np.inf)),
         (ValueError, rf"Input {name} contains infinity.*{name} must be finite")),
        (f"{name}-empty", lambda m: call(base[:0]),
         (ValueError, rf"0 sample\(s\).*{name} needs at least 2 samples")),
        (f"{name}-one-sample", lambda m: call(base[:1]),
         (ValueError, rf"1 sample\(s\).*{name} needs at least 2 samples.*pass more data")),
        (f"{name}-1d", lambda m: call(base[:, 0]),
         (ValueError, rf"(?s)1D array.*{name} must be 2-D \(n_samples, n_features\); for a "
                      rf"single feature use {name}\.reshape\(-1, 1\)")),
        (f"{name}-3d", lambda m: call(base[:, :, None]),
         (ValueError, rf"dim 3.*{name} must be a 2-D array of numbers")),
        (f"{name}-no-columns", lambda m: call(base[:, :0]),
         (ValueError, rf"{name} has no columns; it needs at least one feature")),
        (f"{name}-strings", lambda m: call(np.full(base.shape, "a")),
         (ValueError, rf"could not convert string to float.*{name} must be a 2-D array of "
                      r"numbers")),
        (f"{name}-complex", lambda m: call(base.astype(complex)),
         (ValueError, rf"Complex data not supported\. {name} must hold real numbers; pass "
                      rf"np\.real\({name}\)")),
        (f"{name}-None", lambda m: call(None), param_error(name, "an array-like", "None")),
    ]


def _label_cases(metric, call, n_features_name, unlabeled):
    return [
        (f"{metric}-y-nan", lambda m: call(with_value(YL, np.nan)),
         (ValueError, rf"y contains NaN or infinity; {unlabeled}")),
        (f"{metric}-y-one-class", lambda m: call(np.zeros(20, int)),
         (ValueError, rf"y has a single class \(0\): {metric} compares how well features "
                      r"separate classes, so it needs at least 2")),
        (f"{metric}-y-length", lambda m: call(YL[:15]),
         (ValueError, rf"{n_features_name} has 20 samples but y has 15; they must describe "
                      r"the same samples")),
        (f"{metric}-y-empty", lambda m: call(YL[:0]),
         (ValueError, r"y is empty; pass one (label|target) per sample")),
        (f"{metric}-y-complex", lambda m: call(YL.astype(complex)),
         (ValueError, r"Complex data not supported: y has the complex dtype.*np\.real\(y\)")),
    ]


_STRICT_LABELS = [  # metrics that take 1-D class labels only
    (metric, call)
    for metric, call in [
        ("h_score", lambda y: M.h_score(F, y)),
        ("leep_score", lambda y: M.leep_score(PROBA, y)),
        ("nce_score", lambda y: M.nce_score(Z, y)),
    ]
]

FUNCTION_CASES = [
    # list_blocks
    ("list_blocks-model-None", lambda m: list_blocks(None), None,
     param_error("model", r"an instance of 'str', .* or an object implementing "
                          r"'__sktransfer_model__'", "None")),
    ("list_blocks-model-type", lambda m: list_blocks(3), None, param_error("model", got="3")),
    ("list_blocks-model-unknown-name", lambda m: list_blocks("resnet1"), None,
     (ValueError, r"Unknown model name 'resnet1'.*Did you mean")),
    ("list_blocks-model-without-children", lambda m: list_blocks(m), "@linear",
     (ValueError, r"Cannot split a Linear without child modules.*nn\.Sequential\(model\)")),
    ("list_blocks-factory-not-module", lambda m: list_blocks(lambda: 3), None,
     (TypeError, r"returned a int, not an nn\.Module")),
    ("list_blocks-unfitted-estimator", lambda m: list_blocks(m), "@unfitted",
     (NotFittedError, r"model is an unfitted FineTunedClassifier: fit it on the source")),
    ("list_blocks-weights-name-for-module", lambda m: list_blocks(m, weights="DEFAULT"),
     "@tab", (ValueError, r"weights='DEFAULT' looks like a torchvision weights name")),
    ("list_blocks-weights-missing-file", lambda m: list_blocks(m, weights="/no/w.pt"),
     "@tab", (FileNotFoundError, r"Weights file '/no/w\.pt' does not exist\. Pass the path")),
    ("list_blocks-input_shape-wrong", lambda m: list_blocks(m, input_shape=(5,)), "@tab",
     (ValueError, r"Running an input of shape \(5,\) through the blocks failed: .* The model "
                  r"takes samples of shape \(4,\)\. Check input_shape")),
    ("list_blocks-input_shape-image-for-tabular", lambda m: list_blocks(m, input_shape=(1, 8, 8)),
     "@tab", (ValueError, r"input of shape \(1, 8, 8\).*takes samples of shape \(4,\)")),
    ("list_blocks-input_shape-int", lambda m: list_blocks(m, input_shape=4), "@tab",
     param_error("input_shape", r"an instance of 'tuple', an instance of 'list' or None", "4")),
    ("list_blocks-input_shape-str", lambda m: list_blocks(m, input_shape="x"), "@tab",
     param_error("input_shape", got="'x'")),
    ("list_blocks-input_shape-float", lambda m: list_blocks(m, input_shape=(4.5,)), "@tab",
     (TypeError, r"input_shape must be a tuple of ints")),
    ("list_blocks-input_shape-negative", lambda m: list_blocks(m, input_shape=(-1,)), "@tab",
     (ValueError, r"input_shape=\(-1,\) has sizes < 1; every axis of a sample needs")),
    # split_model
    ("split_model-None", lambda m: split_model(None), None,
     param_error("model", r"an instance of 'torch\.nn\.modules\.module\.Module'", "None")),
    ("split_model-name", lambda m: split_model("resnet18"), None,
     param_error("model", got="'resnet18'")),
    ("split_model-blocks-str", lambda m: split_model(m, blocks="0"), "@tab",
     param_error("blocks", r"an instance of 'list', an instance of 'tuple' or None", "'0'")),
    ("split_model-blocks-unknown", lambda m: split_model(m, blocks=["9"]), "@tab",
     (ValueError, r"blocks: Sequential has no submodule '9'\. Top-level children are "
                  r"\['0', '1', '2', '3', '4'\]")),
    ("split_model-blocks-int", lambda m: split_model(m, blocks=[3]), "@tab",
     (TypeError, r"blocks entries must be submodule names \(str\) or lists of names, "
                 r"got 3")),
    ("split_model-blocks-empty-entry", lambda m: split_model(m, blocks=[[]]), "@tab",
     (ValueError, r"blocks contains an empty list; every block needs a module")),
    ("split_model-head-without-blocks", lambda m: split_model(m, head="4"), "@tab",
     (ValueError, r"head= and pre_head= are only used together with blocks=\[\.\.\.\]; pass "
                  r"the block names too")),
    ("split_model-head-unknown", lambda m: split_model(m, blocks=["0"], head="9"), "@tab",
     (ValueError, r"head: Sequential has no submodule '9'")),
    ("split_model-head-type", lambda m: split_model(m, blocks=["0"], head=5), "@tab",
     param_error("head", r"an instance of 'str' or None", "5")),
    ("split_model-head-list-of-non-names", lambda m: split_model(m, blocks=[[0]]), "@tab",
     (TypeError, r"blocks must be module names \(str\), got 0")),
    ("split_model-pre_head-with-params",
     lambda m: split_model(m, blocks=["0"], pre_head=nn.Linear(2, 2)), "@tab",
     (ValueError, r"pre_head must be parameter-free, got a Linear with parameters; put it "
                  r"in a block instead")),
    ("split_model-pre_head-unknown", lambda m: split_model(m, blocks=["0"], pre_head=["9"]),
     "@tab", (ValueError, r"pre_head: Sequential has no submodule '9'")),
    ("split_model-pre_head-type", lambda m: split_model(m, blocks=["0"], pre_head=5), "@tab",
     param_error("pre_head", r"an instance of 'torch\.nn\.modules\.module\.Module', an "
                             r"instance of 'list', an instance of 'tuple' or None", "5")),
    ("split_model-no-children", lambda m: split_model(m), "@relu",
     (ValueError, r"Cannot split a ReLU without child modules.*sktransfer\.split_model")),
    ("split_model-no-head-found", lambda m: split_model(m, blocks=[]), "@linear",
     (ValueError, r"head='auto' found no nn\.Linear child in Linear; pass "
                  r"head='<module name>' or head=None")),
    # metrics: features
    *[(c, f, None, e) for c, f, e in _feature_cases(
        "features", lambda a: M.logme_score(a, YL[: n_rows(a)]), F)],
    *[(c.replace("features", "h_score-features"), f, None, e) for c, f, e in _feature_cases(
        "features", lambda a: M.h_score(a, YL[: n_rows(a)]), F)],
    *[(c, f, None, e) for c, f, e in _feature_cases(
        "source_proba", lambda a: M.leep_score(a, YL[: n_rows(a)]), PROBA)],
    *[(c, f, None, e) for c, f, e in _feature_cases(
        "source_features", lambda a: M.domain_shift_score(a, F), F)],
    ("target_features-nan", lambda m: M.domain_shift_score(F, with_value(F, np.nan)), None,
     (ValueError, r"target_features: Input target_features contains NaN.*must be finite")),
    # metrics: labels and targets
    *[(c, f, None, e) for c, f, e in _label_cases(
        "logme_score", lambda y: M.logme_score(F, y), "features", "drop those samples")],
    *[(c, f, None, e) for c, f, e in _label_cases(
        "h_score", lambda y: M.h_score(F, y), "features", "drop the unlabeled samples")],
    *[(c, f, None, e) for c, f, e in _label_cases(
        "leep_score", lambda y: M.leep_score(PROBA, y), "source_proba",
        "drop the unlabeled samples")],
    *[(c, f, None, e) for c, f, e in _label_cases(
        "nce_score", lambda y: M.nce_score(Z, y), "source_labels",
        "drop the unlabeled samples")],
    *[(f"{metric}-y-2d", lambda m, call=call: call(np.c_[YL, YL]), None,
       (ValueError, r"y must be 1-D \(one label per sample\), got shape \(20, 2\)"))
      for metric, call in _STRICT_LABELS],
    *[(f"{metric}-y-continuous", lambda m, call=call: call(F[:, 0]), None,
       (ValueError, rf"y must hold class labels for {metric}, but it looks 'continuous'.*"
                    r"logme_score\(features, y, regression=True\)"))
      for metric, call in _STRICT_LABELS],
    ("logme_score-y-3d", lambda m: M.logme_score(F, YL.reshape(20, 1, 1)), None,
     (ValueError, r"y must be 1-D or 2-D, got shape \(20, 1, 1\)")),
    ("logme_score-y-unknown-kind", lambda m: M.logme_score(F, np.array([1, "a"] * 10,
                                                                      dtype=object)), None,
     (ValueError, r"regression='auto' cannot tell what y is.*Pass regression=True")),
    ("logme_score-regression-value", lambda m: M.logme_score(F, YL, regression="yes"), None,
     param_error("regression", r"a str among \{'auto'\} or an instance of 'bool'.*",
                 "'yes'")),
    ("nce_score-source_labels-nan", lambda m: M.nce_score(with_value(Z, np.nan), YL), None,
     (ValueError, r"source_labels contains NaN or infinity; drop the unlabeled samples")),
    ("nce_score-source_labels-2d", lambda m: M.nce_score(np.c_[Z, Z], YL), None,
     (ValueError, r"source_labels must be 1-D \(one label per sample\)")),
    ("nce_score-source_labels-continuous", lambda m: M.nce_score(F[:, 0], YL), None,
     (ValueError, r"source_labels must hold class labels.*source_proba\.argmax\(axis=1\)")),
    ("nce_score-source_labels-empty", lambda m: M.nce_score(Z[:0], YL[:0]), None,
     (ValueError, r"source_labels is empty; pass one label per sample")),
    ("leep_score-negative", lambda m: M.leep_score(-PROBA, YL), None,
     (ValueError, r"source_proba has negative values.*If these are logits, convert them "
                  r"with scipy\.special\.softmax")),
    ("leep_score-rows-not-summing-to-one", lambda m: M.leep_score(3 * PROBA, YL), None,
     (ValueError, r"source_proba rows must sum to 1.*renormalise each row")),
    # metrics: parameters
    ("domain_shift_score-feature-counts", lambda m: M.domain_shift_score(F, F[:, :2]), None,
     (ValueError, r"source_features has 3 features but target_features has 2; extract both "
                  r"with the same model and layer")),
    ("domain_shift_score-cv-one", lambda m: M.domain_shift_score(F, F, cv=1), None,
     param_error("cv", r"an int in the range \[2, inf\) or an object implementing 'split' "
                       r"and 'get_n_splits'", "1")),
    ("domain_shift_score-cv-above-samples", lambda m: M.domain_shift_score(F, F, cv=21), None,
     (ValueError, r"cv=21 needs 2 <= cv <= 20.*pass fewer folds or more samples")),
    ("domain_shift_score-random_state", lambda m: M.domain_shift_score(F, F, random_state="x"),
     None, param_error("random_state", r"an int in the range \[0, 4294967295\], an instance "
                                       r"of 'numpy\.random\.mtrand\.RandomState' or None",
                       "'x'")),
    ("transferability_scorer-metric", lambda m: M.transferability_scorer("nope"), None,
     param_error("metric", r"a str among \{.*'h_score_shrinkage'.*\} or a callable", "'nope'")),
    ("transferability_scorer-kwargs", lambda m: M.transferability_scorer("logme", bogus=1),
     None, (TypeError, r"Invalid keyword arguments for metric='logme'.*bogus")),
    ("transferability_scorer-not-a-transformer",
     lambda m: M.transferability_scorer()(m, X, Y_CLS), "@unfitted",
     (TypeError, r"FineTunedClassifier has no transform method: a transferability scorer "
                 r"scores the features of a transformer")),
    ("transferability_scorer-y-None",
     lambda m: M.transferability_scorer()(FeatureExtractorTransformer(model=m), X), "@tab",
     (ValueError, r"A transferability scorer needs the target y: pass y to fit\(\)")),
    ("rank_models-no-candidates", lambda m: M.rank_models({}, X, Y_CLS), None,
     (ValueError, r"candidates must be a non-empty dict \{name: transformer\}")),
    ("rank_models-prefit-with-cv",
     lambda m: M.rank_models({"a": FeatureExtractorTransformer(model=m, **CPU)}, X, Y_CLS,
                             prefit=True, cv=3), "@tab",
     (ValueError, r"prefit=True scores fitted candidates as they are; use cv=None")),
    ("rank_models-metric_params-type",
     lambda m: M.rank_models({"a": FeatureExtractorTransformer(model=m, **CPU)}, X, Y_CLS,
                             metric_params=3), "@tab",
     param_error("metric_params", r"an instance of 'dict' or None", "3")),
    ("rank_models-model-does-not-fit-X",
     lambda m: M.rank_models({"a": FeatureExtractorTransformer(model=m, **CPU)},
                             RNG.normal(size=(12, 5)), Y_CLS), "@tab",
     (ValueError, r"cannot process X.*The model takes samples of shape \(4,\); X gives "
                  r"\(5,\)")),
    ("rank_models-y-length",
     lambda m: M.rank_models({"a": FeatureExtractorTransformer(model=m, **CPU)}, X,
                             Y_CLS[:5]), "@tab",
     (ValueError, r"features has 12 samples but y has 5; they must describe the same "
                  r"samples")),
]


@pytest.mark.parametrize(
    "call, model_ref, outcome",
    [pytest.param(call, ref, outcome, id=case) for case, call, ref, outcome in FUNCTION_CASES],
)
def test_functions(call, model_ref, outcome):
    model = MODELS[model_ref]() if model_ref else None
    before = model_state(model)
    error, match = outcome
    with pytest.raises(error, match=match):
        call(model)
    assert model_state(model) == before


def test_matrix_covers_every_entry_point():
    """The tables above name every public entry point (a guard against gaps)."""
    fit_ids = {p.id.split("-", 1)[0] for p in _fit_params()}
    assert fit_ids == set(ENTRIES)
    names = " ".join(case for case, *_ in FUNCTION_CASES)
    for name in ("list_blocks", "split_model", "features", "h_score", "source_proba",
                 "leep_score", "nce_score", "logme_score", "domain_shift_score",
                 "transferability_scorer", "rank_models"):
        assert name in names, name
    assert set(M.__all__) <= {"logme_score", "h_score", "leep_score", "nce_score",
                              "domain_shift_score", "transferability_scorer",
                              "rank_models"}


# -- property: random arrays never leak torch/numpy internals ------------------------------
# Raw messages of torch/numpy/sklearn that must not reach the user unexplained. They may
# appear inside sktransfer's "cannot process X ... Check that X has the layout" wrapper.
RAW = (r"mat1 and mat2|shapes cannot be multiplied|size mismatch|Expected \d+D \(unbatched|"
       r"Given groups|Calculated padded input|Kernel size|can't convert np\.ndarray|"
       r"object is not iterable|has no attribute|unsupported operand|Sizes of tensors|"
       r"could not broadcast|out of bounds|must not be zero|Complex data not supported\n|"
       r"array=nan")
DTYPES = ("float32", "float64", "int64", "bool", "uint8", "object", "str", "complex")


def random_array(shape, dtype, seed):
    rng = np.random.RandomState(seed)
    values = rng.normal(scale=3, size=shape)
    if dtype == "str":
        return values.astype(str) if seed % 2 else np.full(shape, "a")
    if dtype == "bool":
        return values > 0
    if dtype == "uint8":
        return np.abs(values * 20).astype(np.uint8)
    return values.astype(dtype)


def lazy_net():
    return tiny_mlp()  # LazyLinear: any number of features


def fixed_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def any_size_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2, 2))


PROPERTY_MODELS = {"lazy": lazy_net, "fixed": fixed_net, "cnn": any_size_cnn}
PROPERTY_TARGETS = [(e, m) for e in NETS for m in PROPERTY_MODELS] + [("TP", None)]
# any shape with 0-5 axes of sizes 0-5, and (as often) the layouts the templates were
# fitted on, so that the dtypes are also tried where the shape is right
SHAPES = st.one_of(
    st.integers(0, 5).flatmap(
        lambda ndim: st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)).map(tuple),
    st.integers(1, 5).map(lambda n: (n, 3)),
    st.integers(1, 5).map(lambda n: (n, 1, 4, 4)),
)
PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)


@functools.lru_cache(maxsize=None)
def property_template(entry, model):
    """An estimator fitted on valid input of its model (tables of 3 columns, or images)."""
    X_fit = (RNG.normal(size=(6, 1, 4, 4)) if model == "cnn" else RNG.normal(size=(6, 3)))
    X_fit = X_fit.astype(np.float32)
    if entry == "TP":
        return TabularPretrainer(hidden_layer_sizes=(3,), max_epochs=1, random_state=0,
                                 **CPU).fit(X_fit)
    est = make(entry, model=PROPERTY_MODELS[model](), batch_size=4)
    return est.fit(X_fit, target_for(entry, 6))


def check_outcome(call):
    """Success, or a ValueError/TypeError that names the input and is not a raw internal."""
    try:
        call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert re.search(r"\b[Xy]\b", msg), msg
        assert not re.match(RAW, msg), msg
        if re.search(RAW, msg):
            assert "cannot process X" in msg and "Check that X has the layout" in msg, msg
        return exc
    return None


@PROPERTY_SETTINGS
@given(target=st.sampled_from(PROPERTY_TARGETS), shape=SHAPES,
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_random_arrays_at_fit(target, shape, dtype, seed):
    est = clone(property_template(*target))
    X_random = random_array(shape, dtype, seed)
    n = shape[0] if shape else 1
    y = target_for(target[0], n)
    attrs = set(vars(est))
    if check_outcome(lambda: est.fit(X_random, y)) is not None:
        assert set(vars(est)) == attrs


@PROPERTY_SETTINGS
@given(target=st.sampled_from(PROPERTY_TARGETS), shape=SHAPES,
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       method=st.sampled_from(["transform", "predict", "predict_proba"]))
def test_random_arrays_at_transform_and_predict(target, shape, dtype, seed, method):
    est = property_template(*target)
    method = {"FX": "transform", "TP": "transform", "FTR": "predict"}.get(target[0], method)
    if method == "transform" and target[0] == "FTC":
        method = "predict"
    X_random = random_array(shape, dtype, seed)
    state = fitted_state(est)
    if check_outcome(lambda: getattr(est, method)(X_random)) is not None:
        assert all(fitted_state(est)[k] is v for k, v in state.items())


# -- memory: batches, not the whole X -------------------------------------------------------
N_BIG, BATCH = 200_000, 1024
_STATUS = "/proc/self/status"


def _status_bytes(key):
    with open(_STATUS) as f:
        return 1024 * int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak_rss():
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmHWM") <= _status_bytes("VmRSS") + 2**20
    except OSError:
        return False


def measure(call):
    """``call()``'s result, its peak numpy allocation (tracemalloc) and its peak extra RSS
    (``None`` where the peak RSS cannot be reset)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    rss_ok = _reset_peak_rss()
    rss0 = _status_bytes("VmRSS") if rss_ok else 0
    try:
        out = call()
        rss_peak = _status_bytes("VmHWM") - rss0 if rss_ok else None
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, numpy_peak, rss_peak


def wide_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 16), nn.ReLU(),
                         nn.Linear(16, 2))


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a loaded 2-core machine can be 100x slower than one for
    these small matrix products; memory, not speed, is what this test measures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def big_table():
    # float32 straight away: no float64 temporary to inflate the peak RSS seen before
    return np.random.default_rng(0).standard_normal((N_BIG, 20), dtype=np.float32)


@pytest.mark.parametrize("entry", ["FX", "FTC"])
def test_memory_bounded_by_batch_size(big_table, entry, one_thread):
    y = (big_table[:256, 0] > 0).astype(int)
    if entry == "FX":
        est = FeatureExtractorTransformer(model=wide_mlp(), batch_size=BATCH, **CPU)
        est.fit(big_table[:256])
        call = est.transform
    else:
        est = FineTunedClassifier(model=wide_mlp(), freeze_depth="all", max_epochs=1,
                                  batch_size=BATCH, random_state=0, **CPU)
        est.fit(big_table[:256], y)
        call = est.predict
    call(big_table[:4096])  # warm-up: allocator pools, first-call initialisation
    sizes = []
    hook = est.module_.blocks[0].register_forward_pre_hook(
        lambda mod, args: sizes.append(len(args[0])))
    try:
        out, numpy_peak, rss_peak = measure(lambda: call(big_table))
    finally:
        hook.remove()
    assert len(out) == N_BIG and max(sizes) <= BATCH
    # the result, plus for predict the network outputs (2 float32 logits per row)
    # that the labels are computed from
    out_bytes = out.nbytes + (N_BIG * 2 * 4 if entry == "FTC" else 0)
    bound = 3 * out_bytes + 8 * 2**20
    # what one unbatched forward pass needs: the hidden activations of every row
    unbatched = N_BIG * (256 + 16) * 4
    assert bound < unbatched / 4  # the bound would catch an unbatched forward
    assert numpy_peak < bound, (numpy_peak, bound)
    if rss_peak is not None:
        assert rss_peak < bound, (rss_peak, bound)
    if entry == "FX" and rss_peak is not None:
        # the measurement sees an unbatched forward (so the bound above is not vacuous)
        n = 50_000
        est.set_params(batch_size=n)
        out_small, _, rss_unbatched = measure(lambda: call(big_table[:n]))
        assert rss_unbatched > 3 * out_small.nbytes + 8 * 2**20, rss_unbatched
        est.set_params(batch_size=BATCH)
