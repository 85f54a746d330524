"""Weights files (``_weight_files.py``): state dicts read without running code, loaded
into a module with errors that name the mismatch."""

import pytest
import torch
from torch import nn

from sktransfer import WeightsUnavailableError
from sktransfer._weight_files import load_into, load_state_dict_file, looks_like_path


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("wrap", [None, "state_dict", "module."])
def test_a_saved_state_dict_loads_into_the_same_architecture(tmp_path, wrap):
    trained, fresh = mlp(1), mlp(2)
    state = trained.state_dict()
    if wrap == "state_dict":  # a checkpoint holding the state dict under a key
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "module.":  # saved from DataParallel
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    load_into(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                   trained.state_dict().values()))


def test_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(mlp(1).state_dict(), str(path))
    assert set(load_state_dict_file(path)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_holding_python_objects_is_refused_without_running_them(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(ValueError, match=r"Refused to load .*\(it was not run\)"):
        load_state_dict_file(path)
    assert "must never run" not in capsys.readouterr().out


def test_mismatches_are_named(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"0.weight": torch.zeros(5, 4), "extra": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"does not fit Sequential: missing keys \[0\.bias, "
                                         r"2\.bias, 2\.weight\]; unexpected keys \[extra\]; "
                                         r"shape mismatches \[0\.weight: file \(5, 4\) vs "
                                         r"model \(3, 4\)\]"):
        load_into(mlp(0), path)


def test_looks_like_path_and_the_offline_error():
    assert looks_like_path("weights.pth") and looks_like_path("dir/file")
    assert not looks_like_path("DEFAULT") and not looks_like_path(None)
    assert issubclass(WeightsUnavailableError, OSError)
