"""``device``: "auto" picks CUDA when present, CUDA without CUDA is a clear error."""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FeatureExtractorTransformer, FineTunedRegressor, TabularPretrainer
from sktransfer._base import resolve_device


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
