"""Fine-tuning and pretraining through Hugging Face accelerate (skorch's AccelerateMixin).

In one CPU process an accelerated fit must give exactly the plain fit's
result; under ``torchrun`` with two CPU processes (distributed data parallel
over gloo) both processes must end with the same network, stop early at the
same epoch and leave the source model alone.
"""

import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, TabularPretrainer

accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one global state per process; each test starts afresh."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(160, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                           nn.Linear(16, 3))
    return X, y, source


@pytest.mark.parametrize("params", [
    {"penalty": None},
    {"penalty": None, "freeze_depth": 1},  # frozen-prefix cache on the accelerator's device
    {"penalty": None, "early_stopping": True, "n_iter_no_change": 2},
    {"penalty": None, "unfreeze_every": 2, "class_weight": "balanced"},
    {},  # the default penalty, l2_sp
    {"penalty": "l2_sp", "alpha": 0.5, "lr_schedule": "cosine"},
])
def test_accelerated_fit_equals_plain_fit(data, params):
    X, y, source = data
    kwargs = dict(model=source, max_epochs=6, lr=1e-2, random_state=0, **params)
    plain = FineTunedClassifier(device="cpu", **kwargs).fit(X, y)
    accelerator = Accelerator(cpu=True)
    acc = FineTunedClassifier(accelerator=accelerator, **kwargs).fit(X, y)
    losses = [r["train_loss"] for r in acc.history_], [r["train_loss"] for r in plain.history_]
    if params.get("penalty", "l2_sp") is None:
        np.testing.assert_array_equal(acc.predict_proba(X), plain.predict_proba(X))
        assert losses[0] == losses[1]
    else:
        # under accelerate the penalty's gradient comes from autograd, in the plain
        # fit it is added directly: the same steps up to rounding
        np.testing.assert_allclose(acc.predict_proba(X), plain.predict_proba(X), rtol=1e-5)
        np.testing.assert_allclose(*losses, rtol=1e-6)
    assert acc.device_ == "cpu"
    # the fitted network is unwrapped again: a plain BlockNet, ready to pickle
    assert type(acc.module_).__name__ == "BlockNet"
    # the user's accelerator keeps nothing of the fit (network, optimizer, data)
    assert not (accelerator._models or accelerator._optimizers or accelerator._schedulers
                or accelerator._dataloaders)
    again = pickle.loads(pickle.dumps(acc))
    np.testing.assert_array_equal(again.predict_proba(X), acc.predict_proba(X))


def test_regressor_and_pretrainer_accelerated(data):
    X, y, source = data
    target = X[:, :2].sum(axis=1)
    kwargs = dict(model=source, max_epochs=4, random_state=0)
    plain = FineTunedRegressor(device="cpu", **kwargs).fit(X, target)
    acc = FineTunedRegressor(accelerator={"cpu": True}, **kwargs).fit(X, target)
    np.testing.assert_array_equal(acc.predict(X), plain.predict(X))
    for method in ("masked", "contrastive"):
        kw = dict(hidden_layer_sizes=(8,), method=method, max_epochs=3, batch_size=32,
                  random_state=0, early_stopping=True)
        plain = TabularPretrainer(device="cpu", **kw).fit(X)
        acc = TabularPretrainer(accelerator={"cpu": True}, **kw).fit(X)
        np.testing.assert_array_equal(acc.transform(X), plain.transform(X))
        assert [r["valid_loss"] for r in acc.history_] == [r["valid_loss"] for r in plain.history_]


def test_accelerator_as_dict_is_clone_and_grid_friendly(data):
    X, y, source = data
    est = FineTunedClassifier(model=source, max_epochs=3, random_state=0,
                              accelerator={"cpu": True})
    twin = clone(est)
    assert twin.get_params()["accelerator"] == {"cpu": True}
    a = est.fit(X, y).predict_proba(X)
    b = twin.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    instance = FineTunedClassifier(model=source, accelerator=Accelerator(cpu=True))
    assert isinstance(clone(instance).accelerator, Accelerator)
    pickle.loads(pickle.dumps(instance))


def test_mixed_precision_is_applied_and_unwrapped(data):
    X, y, source = data
    kwargs = dict(model=source, max_epochs=15, lr=1e-2, random_state=0)
    fp32 = FineTunedClassifier(device="cpu", **kwargs).fit(X, y)
    bf16 = FineTunedClassifier(accelerator={"cpu": True, "mixed_precision": "bf16"},
                               **kwargs).fit(X, y)
    # autocast ran the training steps in bfloat16: the losses differ from float32 ...
    assert [r["train_loss"] for r in bf16.history_] != [r["train_loss"] for r in fp32.history_]
    np.testing.assert_allclose([r["train_loss"] for r in bf16.history_],
                               [r["train_loss"] for r in fp32.history_], rtol=0.05)
    # ... the weights stay float32, and the unwrapped network runs without autocast
    assert all(p.dtype == torch.float32 for p in bf16.module_.parameters())
    assert fp32.score(X, y) > 0.85
    assert abs(bf16.score(X, y) - fp32.score(X, y)) <= 0.03


class _MetaAccelerator(Accelerator):
    """An accelerator that claims another device than the one asked for."""

    @property
    def device(self):
        return torch.device("meta")


def test_bad_accelerator_values_say_what_to_do(data, monkeypatch):
    X, y, source = data
    with pytest.raises(TypeError, match=r"The 'accelerator' parameter of FineTunedClassifier "
                                        r"must be None, an instance of 'dict' or an object "
                                        r"implementing 'prepare' and 'backward'"):
        FineTunedClassifier(model=source, accelerator="gpu").fit(X, y)

    class LooksLikeOne:  # passes the constraint, but is no accelerate.Accelerator
        def prepare(self, *args):
            return args

        def backward(self, loss):
            loss.backward()

    with pytest.raises(TypeError, match="accelerator must be None, an accelerate.Accelerator"):
        FineTunedClassifier(model=source, accelerator=LooksLikeOne()).fit(X, y)
    with pytest.raises(TypeError, match="not a valid set of keyword arguments.*no_such_option"):
        FineTunedClassifier(model=source, accelerator={"no_such_option": 1}).fit(X, y)
    with pytest.raises(ValueError, match="device='cpu' but the accelerator runs on 'meta'"):
        FineTunedClassifier(model=source, device="cpu",
                            accelerator=_MetaAccelerator(cpu=True)).fit(X, y)
    with pytest.raises(ValueError, match="device_placement=True"):
        TabularPretrainer(accelerator=Accelerator(cpu=True, device_placement=False)).fit(X)
    est = FineTunedClassifier(model=source, max_epochs=2, device="cpu").fit(X, y)
    proba = est.predict_proba(X)
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(ImportError, match=r"pip install 'sktransfer\[accelerate\]'"):
        est.set_params(accelerator={"cpu": True}).fit(X, y)
    # the failed fit left the fitted estimator as it was
    np.testing.assert_array_equal(est.predict_proba(X), proba)


# Subprocesses are stopped after HANG_S seconds: a guard against a hang, not a
# speed check. The example takes about 30 s on 2 idle cores and took over 300 s
# on a 2-core machine shared with other test runs (load average 12).
HANG_S = 1800


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_distributed_data_parallel(tmp_path):
    """torchrun, 2 CPU processes, gloo: one fit split over both processes."""
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(worker), str(tmp_path)]
    # a process that waits forever for the other (e.g. they stop at different
    # epochs) shows up as a timeout; a generous one (HANG_S), not a speed check
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for r in ranks:
        assert r["world"] == 2 and r["distributed_type"] == "DistributedType.MULTI_CPU"
        assert r["source_unchanged"]
        assert r["clf"]["module"] == "BlockNet"
        assert r["clf"]["accuracy"] > 0.85
        assert "cannot be used with 2 processes" in r["unfreeze_error"]
    a, b = ranks
    # early stopping ended both processes at the same epoch, long before max_epochs
    assert a["clf"]["n_iter"] == b["clf"]["n_iter"] < 200
    assert a["clf"]["valid_loss"] == b["clf"]["valid_loss"]
    # gradients were averaged over the processes: identical networks
    assert a["clf"]["weights"] == b["clf"]["weights"]
    assert a["pretrainer"]["weights"] == b["pretrainer"]["weights"]
    # LoRA + Co-Tuning: the same network, adapters merged and the source head gone
    assert a["adapted"]["weights"] == b["adapted"]["weights"]
    assert not any("lora" in k or "source_head" in k for k in a["adapted"]["module"])
    assert a["pretrainer"]["train_loss"] == b["pretrainer"]["train_loss"]


def test_accelerate_example_runs(tmp_path):
    """examples/accelerate_fit.py is not run by the docs gallery (it is meant for
    ``accelerate launch``): run it here, in one CPU process."""
    import re

    script = Path(__file__).parents[1] / "examples" / "accelerate_fit.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu"], capture_output=True,
                          text=True, timeout=HANG_S, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", proc.stdout).group(1))
    assert accuracy > 0.85, proc.stdout
