"""Devices (``_device.py``): mixed precision (``precision``) and host-to-device feeding.

bfloat16 autocast runs on the CPU, so the ``"bf16"`` paths are tested here
for real; float16 with its gradient scaler is for CUDA GPUs (refused on the
CPU), and its training step is tested on the CPU by lifting that refusal
(torch runs float16 autocast and ``GradScaler("cpu")`` there, slowly). The
tests marked ``cuda`` run only where a GPU is; ``benchmarks/gpu_check.py`` is
the prepared check for a GPU machine.
"""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from sktransfer._frozen_store import STORE
from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    TabularPretrainer,
    clear_cache,
)
from sktransfer import _device
from sktransfer._device import autocast_dtype, pinned, to_device
from sktransfer._inputs import InputData
from sktransfer._prefix_cache import training_inputs
from sktransfer._weights import resolve_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class DtypeProbe(nn.Module):
    """Parameter-free: records the dtype of what flows through it (it joins the
    block before it, so the network's structure is unchanged)."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(x.dtype)
        return x

    def __deepcopy__(self, memo):  # copies of the network record into the same list
        return DtypeProbe(self.seen)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(240, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] - X[:, 2] > 0).astype(int)
    return X[:160], y[:160], X[160:], y[160:]


def mlp(seen=None):
    torch.manual_seed(0)
    probe = [DtypeProbe(seen)] if seen is not None else []
    return nn.Sequential(nn.Linear(8, 32), *probe, nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 3))


def classifier(**params):
    kwargs = dict(model=mlp(), freeze_depth=0, max_epochs=15, lr=1e-2, penalty=None,
                  backbone_lr_scale=1.0, batch_size=32, head_init="random", random_state=0,
                  device="cpu")
    kwargs.update(params)
    return FineTunedClassifier(**kwargs)


# -- the parameter ---------------------------------------------------------------------
def test_precision_is_a_clone_safe_grid_searchable_parameter(data):
    X, y, _, _ = data
    est = classifier(precision="bf16", max_epochs=3)
    assert clone(est).get_params()["precision"] == "bf16"
    search = GridSearchCV(est, {"precision": ["32", "bf16"]}, cv=2).fit(X, y)
    assert [p["precision"] for p in search.cv_results_["params"]] == ["32", "bf16"]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    for est in (FineTunedClassifier(model=mlp()), FineTunedRegressor(model=mlp()),
                FeatureExtractorTransformer(model=mlp()), TabularPretrainer()):
        assert est.get_params()["precision"] == "32"
        with pytest.raises(ValueError, match=r"'precision' parameter .* among"):
            est.set_params(precision="fp16")._validate_params()


def test_bf16_trains_and_predicts_under_autocast_and_returns_float32(data):
    X, y, X_test, y_test = data
    seen32, seen16 = [], []
    fp32 = classifier(model=mlp(seen32)).fit(X, y)
    bf16 = classifier(model=mlp(seen16), precision="bf16").fit(X, y)
    # the training steps ran in bfloat16 (all but the first look at the data, which
    # checks that the network runs on it), float32 without it ...
    assert seen16.count(torch.bfloat16) >= 15 * 5 and torch.bfloat16 not in seen32
    seen16.clear()
    proba = bf16.predict_proba(X_test)
    assert set(seen16) == {torch.bfloat16}  # prediction too
    # ... the weights stay float32, the outputs are float32/float64 as without it
    assert all(p.dtype == torch.float32 for p in bf16.module_.parameters())
    assert proba.dtype == np.float64 and bf16.predict(X_test).dtype == y.dtype
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # bfloat16 changed the arithmetic, not the result: within 0.05 of float32
    losses = [[r["train_loss"] for r in e.history_] for e in (fp32, bf16)]
    assert losses[0] != losses[1]
    np.testing.assert_allclose(losses[1], losses[0], rtol=0.1)
    acc32, acc16 = fp32.score(X_test, y_test), bf16.score(X_test, y_test)
    assert acc32 > 0.85 and abs(acc16 - acc32) <= 0.05
    # it pickles, and the copy predicts the same
    back = pickle.loads(pickle.dumps(bf16))
    assert back.get_params()["precision"] == "bf16"
    np.testing.assert_array_equal(back.predict_proba(X_test), proba)


def test_bf16_regressor_pretrainer_and_transformer(data):
    X, y, X_test, _ = data
    target = X[:, 0] - 0.5 * X[:, 1]
    reg32 = FineTunedRegressor(model=mlp(), max_epochs=20, lr=1e-2, penalty=None,
                               random_state=0, device="cpu").fit(X, target)
    reg16 = clone(reg32).set_params(precision="bf16").fit(X, target)
    assert reg16.predict(X_test).dtype == np.float64
    assert abs(reg16.score(X, target) - reg32.score(X, target)) < 0.05
    pre = [TabularPretrainer(hidden_layer_sizes=(16,), max_epochs=5, random_state=0,
                             device="cpu", precision=p).fit(X) for p in ("32", "bf16")]
    np.testing.assert_allclose(pre[1].history_[-1]["train_loss"],
                               pre[0].history_[-1]["train_loss"], rtol=0.05)
    assert pre[1].transform(X_test).dtype == np.float32
    seen = []
    feats = [FeatureExtractorTransformer(model=mlp(seen), device="cpu", precision=p)
             .fit(X).transform(X_test) for p in ("32", "bf16")]
    assert torch.bfloat16 in seen and feats[1].dtype == np.float32
    assert not np.array_equal(feats[0], feats[1])
    np.testing.assert_allclose(feats[1], feats[0], atol=0.05 * np.abs(feats[0]).max())


def test_lightning_spelling_of_bf16_is_the_same_fit(data):
    X, y, X_test, _ = data
    a = classifier(precision="bf16", max_epochs=3).fit(X, y)
    b = classifier(precision="bf16-mixed", max_epochs=3).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


# -- devices that lack a precision ---------------------------------------------------------
def test_float16_on_the_cpu_is_refused_naming_the_fix(data):
    X, y, _, _ = data
    for est in (classifier(precision="16-mixed"),
                FeatureExtractorTransformer(model=mlp(), device="cpu", precision="16-mixed"),
                TabularPretrainer(max_epochs=1, device="cpu", precision="16-mixed")):
        with pytest.raises(ValueError, match=r"for CUDA GPUs; on the CPU use precision='bf16'"):
            est.fit(X, y)
        assert not hasattr(est, "n_features_in_")  # refused before anything was fitted


def test_bf16_on_an_old_gpu_is_refused_naming_the_fix(monkeypatch):
    class Props:
        name, major, minor = "Tesla V100", 7, 0

    monkeypatch.setattr(_device, "_cuda_has_bf16", lambda dev: False)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props())
    with pytest.raises(ValueError, match=r"Tesla V100 has capability 7\.0.*'16-mixed'"):
        autocast_dtype("bf16", "cuda:0")
    # where a fitted network only predicts, it runs in float32 instead
    assert autocast_dtype("bf16", "cuda:0", strict=False) is None
    assert autocast_dtype("16-mixed", "cpu", strict=False) is None
    assert autocast_dtype("32", "cpu") is None


def test_a_network_predicts_in_float32_where_its_precision_is_missing(data):
    # as a GPU fit with precision="16-mixed" unpickled on a CPU
    X, y, X_test, _ = data
    est = classifier(max_epochs=3).fit(X, y)
    expected = est.predict_proba(X_test)
    est.set_params(precision="16-mixed")
    np.testing.assert_array_equal(est.predict_proba(X_test), expected)


def test_precision_and_accelerator_set_it_in_one_place(data):
    pytest.importorskip("accelerate")
    X, y, _, _ = data
    est = classifier(precision="bf16", device="auto", accelerator={"cpu": True})
    with pytest.raises(ValueError, match=r"set it in one place.*mixed_precision"):
        est.fit(X, y)


# -- float16 and its gradient scaler (run on the CPU by lifting the refusal) ---------------
class FirstGradient(Callback):
    """Records the gradient norm that callbacks see on the first training batch."""

    def __init__(self, out):
        self.out = out

    def on_grad_computed(self, net, named_parameters, **kwargs):
        if not self.out:
            self.out.append(float(torch.norm(torch.stack(
                [p.grad.norm() for _, p in named_parameters if p.grad is not None]))))


def test_float16_scaler_unscales_before_callbacks_and_the_penalty(data, monkeypatch):
    monkeypatch.setattr(_device, "_unsupported", lambda precision, dtype, dev: None)
    X, y, X_test, _ = data
    grads, fits = {}, {}
    for precision in ("32", "16-mixed"):
        grads[precision] = []
        # a strong L2 penalty, whose gradient is added by hand after the backward pass
        fits[precision] = classifier(
            precision=precision, penalty="l2", alpha=0.05, max_epochs=10,
            net_kwargs={"callbacks": [FirstGradient(grads[precision])]}).fit(X, y)
    # callbacks see true gradients, not gradients scaled by 2**16
    np.testing.assert_allclose(grads["16-mixed"], grads["32"], rtol=0.05)
    # the penalty's gradient was not divided by the scale: the weights shrank alike
    norms = {k: float(torch.cat([p.detach().flatten() for p in e.module_.parameters()]).norm())
             for k, e in fits.items()}
    np.testing.assert_allclose(norms["16-mixed"], norms["32"], rtol=0.05)
    proba = fits["16-mixed"].predict_proba(X_test)
    assert np.isfinite(proba).all()


# -- the frozen-prefix store in the chosen precision -------------------------------------
def test_frozen_outputs_are_kept_in_the_autocast_dtype(data):
    X, y, _, _ = data
    resolved = resolve_model(mlp(), None)
    data_in = InputData(X, "tabular")
    out32, start = training_inputs(resolved.net, data_in, 2, None, "cpu", batch_size=32,
                                   cache_size=64)
    out16, _ = training_inputs(resolved.net, data_in, 2, None, "cpu", batch_size=32,
                               cache_size=64, amp=torch.bfloat16)
    assert start == 2 and out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert out16.element_size() * 2 == out32.element_size()  # half the memory
    # the same values the trained blocks get without the store, under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        direct = resolved.net.eval().forward_features(torch.from_numpy(X), stop=2)
    torch.testing.assert_close(out16, direct)
    clear_cache()


def test_precision_is_part_of_the_store_key(data):
    X, y, X_test, _ = data
    clear_cache()
    a = classifier(precision="bf16", freeze_depth=1, max_epochs=3).fit(X, y)
    classifier(freeze_depth=1, max_epochs=3).fit(X, y)
    tables = {table for table, chunk in STORE._chunks.values()}
    assert len(tables) == 2  # the outputs of each precision under their own key
    dtypes = {chunk.rows.dtype for table, chunk in STORE._chunks.values()}
    assert dtypes == {torch.float32, torch.bfloat16}
    clear_cache()
    b = classifier(precision="bf16", freeze_depth=1, max_epochs=3).fit(X, y)
    c = classifier(precision="bf16", freeze_depth=1, max_epochs=3).fit(X, y)  # a hit
    np.testing.assert_array_equal(b.predict_proba(X_test), c.predict_proba(X_test))
    np.testing.assert_array_equal(a.predict_proba(X_test), c.predict_proba(X_test))
    clear_cache()


# -- host-to-device feeding -------------------------------------------------------------
def test_batches_for_a_gpu_are_pinned_and_copied_without_blocking(monkeypatch):
    assert not pinned("cpu") and pinned("cuda") and pinned("cuda:1", torch.zeros(2))
    assert not pinned("cuda", torch.empty(2, device="meta"))  # already on a device
    assert not pinned(None)  # accelerate places the batches
    monkeypatch.setattr(_device, "PIN_MEMORY", False)
    assert not pinned("cuda")
    batch = (torch.zeros(2), (torch.ones(2), {"w": torch.ones(1)}), "tag")
    moved = to_device(batch, "meta")
    assert moved[0].device.type == "meta" and moved[1][1]["w"].device.type == "meta"
    assert isinstance(moved[1], tuple) and moved[2] == "tag"


class PinRecorder(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_begin(self, net, **kwargs):
        self.out.append(net.get_params().get("iterator_train__pin_memory"))


def test_training_batches_come_from_pinned_memory_unless_net_kwargs_say_otherwise(
        data, monkeypatch):
    X, y, _, _ = data
    seen = []
    monkeypatch.setattr("sktransfer._trainer.pinned", lambda device, data=None: True)
    with pytest.warns(UserWarning, match="pin_memory"):  # no GPU here: torch says so
        classifier(max_epochs=1, net_kwargs={"callbacks": [PinRecorder(seen)]}).fit(X, y)
    classifier(max_epochs=1, net_kwargs={"callbacks": [PinRecorder(seen)],
                                         "iterator_train__pin_memory": False}).fit(X, y)
    monkeypatch.setattr("sktransfer._trainer.pinned", lambda device, data=None: False)
    classifier(max_epochs=1, net_kwargs={"callbacks": [PinRecorder(seen)]}).fit(X, y)
    assert seen == [True, False, None]


def test_channels_last_models_keep_their_memory_format(data):
    X = np.random.RandomState(0).normal(size=(32, 3, 12, 12)).astype(np.float32)
    y = np.arange(32) % 2
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    cl = net.to(memory_format=torch.channels_last)
    est = FineTunedClassifier(model=cl, max_epochs=2, random_state=0, device="cpu",
                              precision="bf16").fit(X, y)
    conv = est.module_.blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert est.predict_proba(X).shape == (32, 2)


# -- on a GPU ---------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
def test_cuda_fit_and_predict_in_each_precision(data, precision):
    if precision == "bf16" and autocast_dtype("bf16", "cuda", strict=False) is None:
        pytest.skip("this GPU has no bfloat16")
    X, y, X_test, y_test = data
    est = classifier(device="cuda", precision=precision, freeze_depth=1).fit(X, y)
    assert next(est.module_.parameters()).is_cuda
    cpu = classifier(precision="32", freeze_depth=1).fit(X, y)
    assert abs(est.score(X_test, y_test) - cpu.score(X_test, y_test)) <= 0.05
    feats = FeatureExtractorTransformer(model=mlp(), device="cuda", precision=precision,
                                        batch_size=16).fit(X).transform(X_test)
    ref = FeatureExtractorTransformer(model=mlp(), device="cpu").fit(X).transform(X_test)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, atol=0.05 * np.abs(ref).max())


def test_seeded_rng_seeds_inside_and_restores_the_generator_after():
    from sktransfer._device import seeded_rng

    torch.manual_seed(123)
    untouched = torch.rand(3)
    torch.manual_seed(123)
    with seeded_rng(7):
        inside = torch.rand(3)
    after = torch.rand(3)  # as if the block had not run
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3)) and torch.equal(after, untouched)
