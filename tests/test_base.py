"""Shared estimator pieces (``_base.py``): devices, seeds, a failed fit leaves the
estimator as it was, pickles hold the network on the CPU, batched prediction."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator
from torch import nn

from sktransfer import FeatureExtractorTransformer, FineTunedRegressor, TabularPretrainer
from sktransfer._base import (
    NetEstimatorMixin,
    resolve_device,
    seed_from_random_state,
    unchanged_on_error,
)
from sktransfer._inputs import InputData


def test_auto_picks_cuda_exactly_when_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match=r"device='cuda:1' but CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu")


def test_default_device_is_auto_and_fits_where_it_resolves():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    for est in (FineTunedRegressor(model=net, max_epochs=1).fit(X, X[:, 0]),
                FeatureExtractorTransformer(net).fit(X),
                TabularPretrainer(hidden_layer_sizes=(4,), max_epochs=1).fit(X)):
        assert est.get_params()["device"] == "auto"
        assert est.device_ == expected
        module = getattr(est, "module_", None) or getattr(est, "encoder_", None)
        if module is not None:
            assert all(p.device.type == expected for p in module.parameters())


def test_seed_from_random_state():
    assert seed_from_random_state(3) == seed_from_random_state(3)
    assert seed_from_random_state(3) != seed_from_random_state(4)
    rng = np.random.RandomState(0)
    assert seed_from_random_state(rng) != seed_from_random_state(rng)  # draws from it


class _Holder(NetEstimatorMixin, BaseEstimator):
    _fitted_modules = ("module_", "other_")

    def __init__(self, batch_size=4):
        self.batch_size = batch_size

    @unchanged_on_error
    def fit(self, fail=False):
        self.n_features_in_ = 99
        self.module_ = nn.Linear(3, 2)
        if fail:
            raise ValueError("late failure")
        self.device_ = "cpu"
        return self


def test_a_fit_that_raises_leaves_the_estimator_as_it_was():
    est = _Holder().fit()
    before = dict(est.__dict__)
    with pytest.raises(ValueError, match="late failure"):
        est.fit(fail=True)
    assert est.__dict__ == before and est.module_ is before["module_"]


def test_a_pickle_holds_every_fitted_network_on_the_cpu():
    est = _Holder().fit()
    est.other_ = nn.Linear(2, 2)
    est.device_ = "cuda:0"  # as after a fit on a GPU (the modules here are on the CPU)
    state = est.__getstate__()
    assert state["device_"] == "cpu"
    assert state["module_"] is not est.module_ and state["other_"] is not est.other_
    assert est.device_ == "cuda:0"  # the estimator itself is unchanged
    again = pickle.loads(pickle.dumps(est))
    assert again.device_ == "cpu" and torch.equal(again.module_.weight, est.module_.weight)


def test_map_batches_fills_one_array_batch_by_batch():
    est = _Holder(batch_size=4).fit()
    X = np.random.RandomState(0).normal(size=(10, 3)).astype(np.float32)
    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        return est.module_(batch)

    out = est._map_batches(InputData(X, "tabular"), fn)
    assert sizes == [4, 4, 2] and out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, est.module_(torch.as_tensor(X)))
