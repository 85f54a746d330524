"""Where the pretrained weights come from: names, modules, factories and files.

Nothing here downloads anything: torchvision models are built with
``weights=None`` and the download function is replaced by one that fails.
"""

import functools
import os
import pickle
import re
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FeatureExtractorTransformer, WeightsUnavailableError, list_blocks
from sktransfer._weights import load_state_dict_file, resolve_model

RNG = np.random.RandomState(0)
X_TAB = RNG.normal(size=(12, 4)).astype(np.float32)


def make_mlp(seed=0, n_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, n_out))


def head_input(net, X):
    """What FeatureExtractorTransformer should return for ``make_mlp``: net[:-1](X)."""
    with torch.no_grad():
        return net[:-1](torch.as_tensor(X, dtype=torch.float32)).numpy()


def features(model, X=X_TAB, weights=None, **kwargs):
    fx = FeatureExtractorTransformer(model=model, weights=weights, device="cpu", **kwargs)
    return fx.fit(X).transform(X)


def snapshot(net):
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "ptrs": [p.data_ptr() for p in net.parameters()],
    }


def assert_unchanged(net, before):
    after = snapshot(net)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["ptrs"] == before["ptrs"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache."""
    hub = tmp_path / "hub"
    hub.mkdir()
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))

    def no_download(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline test: no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield hub
    torch.hub.set_dir(old)


# --------------------------------------------------------------------------
# torchvision names
# --------------------------------------------------------------------------


def test_torchvision_name_builds_private_model(offline):
    first = resolve_model("resnet18")
    second = resolve_model("resnet18")
    assert type(first.original).__name__ == "ResNet"
    assert first.net.block_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert first.net.head is first.original.fc
    assert first.net.head.out_features == 1000
    assert first.preprocess is not None  # the weights' own transforms
    ptrs_first = {p.data_ptr() for p in first.net.parameters()}
    ptrs_second = {p.data_ptr() for p in second.net.parameters()}
    assert ptrs_first.isdisjoint(ptrs_second)
    # the split covers every parameter of the model and nothing else
    assert ptrs_first == {p.data_ptr() for p in first.original.parameters()}


def test_torchvision_name_in_feature_extractor():
    X = RNG.rand(2, 3, 32, 32).astype(np.float32)
    fx = FeatureExtractorTransformer(model="resnet18", device="cpu", batch_size=2).fit(X)
    assert fx.blocks_ == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert fx.transform(X).shape == (2, 512)
    assert list_blocks("resnet18")["name"].tolist() == fx.blocks_


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"Unknown model name 'resnet181'.*'resnet18'"):
        resolve_model("resnet181")
    with pytest.raises(ValueError, match=r"'resnet18'"):
        FeatureExtractorTransformer(model="resnet181", device="cpu").fit(X_TAB)


def test_weights_name_for_module_is_rejected():
    with pytest.raises(ValueError, match=r"weights='DEFAULT'.*model='resnet18'"):
        FeatureExtractorTransformer(model=make_mlp(), weights="DEFAULT", device="cpu").fit(X_TAB)


def test_unknown_weights_name_lists_available(offline):
    with pytest.raises(ValueError, match=r"weights='FOO'.*'resnet18'") as info:
        resolve_model("resnet18", weights="FOO")
    assert "'DEFAULT'" in str(info.value)
    assert "'IMAGENET1K_V1'" in str(info.value)
    assert ".safetensors" in str(info.value)


def test_weights_of_wrong_type_for_name():
    with pytest.raises(TypeError, match="weights must be"):
        resolve_model("resnet18", weights=3)


@pytest.mark.parametrize("entry", ["resolve_model", "extractor", "list_blocks"])
def test_offline_default_weights_error(offline, entry):
    X = RNG.rand(2, 3, 32, 32).astype(np.float32)
    with pytest.raises(WeightsUnavailableError) as info:
        if entry == "resolve_model":
            resolve_model("resnet18", weights="DEFAULT")
        elif entry == "extractor":
            FeatureExtractorTransformer(model="resnet18", weights="DEFAULT", device="cpu").fit(X)
        else:
            list_blocks("resnet18", weights="DEFAULT")
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert "resnet18-f37072fd.pth" in msg  # the file it wanted
    assert str(offline / "checkpoints") in msg  # where the cache is
    assert "weights='/path/to/resnet18-f37072fd.pth'" in msg  # how to pass a local file
    assert not list(offline.rglob("*.pth"))


def test_torchvision_weights_members_are_accepted(offline):
    from torchvision.models import ResNet18_Weights, VGG11_Weights

    with pytest.raises(WeightsUnavailableError, match="resnet18-f37072fd.pth"):
        resolve_model("resnet18", weights=ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="belongs to another architecture"):
        resolve_model("resnet18", weights=VGG11_Weights.DEFAULT)


def test_weights_name_wins_over_a_same_named_file(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT").write_bytes(b"not a state dict")
    with pytest.raises(WeightsUnavailableError):
        resolve_model("resnet18", weights="DEFAULT")


def test_cached_default_weights_are_used_offline(offline):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    (offline / "checkpoints").mkdir()
    torch.save(reference.state_dict(), offline / "checkpoints" / "resnet18-f37072fd.pth")
    resolved = resolve_model("resnet18", weights="DEFAULT")
    got = resolved.original.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(got[key], value), key


def test_local_file_for_torchvision_name(tmp_path):
    import torchvision

    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    resolved = resolve_model("resnet18", weights=str(path))
    assert resolved.preprocess is not None
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resolved.net.eval()(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("with_aux", [True, False])
def test_local_googlenet_file_builds_pretrained_architecture(tmp_path, with_aux):
    """A local copy of torchvision's GoogLeNet weights gives the network that
    ``weights="DEFAULT"`` gives: ``transform_input=True``, no auxiliary heads."""
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    state = reference.state_dict()  # the downloaded file holds the aux heads
    reference.aux_logits, reference.aux1, reference.aux2 = False, None, None
    reference.eval()
    if not with_aux:  # a state dict saved from googlenet(weights="DEFAULT")
        state = reference.state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    resolved = resolve_model("googlenet", weights=path)
    assert resolved.original.transform_input
    assert resolved.original.aux1 is None
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(resolved.net.eval()(x), reference(x), atol=1e-5)


# --------------------------------------------------------------------------
# local state-dict files
# --------------------------------------------------------------------------


@pytest.fixture
def trained_and_fresh():
    """A 'pretrained' MLP and an architecture copy with other weights."""
    return make_mlp(seed=0), make_mlp(seed=1)


def _save_pt(state, path):
    torch.save(state, path)


def _save_safetensors(state, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize(
    "suffix, wrap",
    [
        (".pt", lambda sd: sd),
        (".pth", lambda sd: {"state_dict": sd, "epoch": 3}),
        (".pt", lambda sd: {"module." + k: v for k, v in sd.items()}),
        (".pt", lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}),
        (".ckpt", lambda sd: {"model_state_dict": sd}),
        (".safetensors", lambda sd: sd),
        (".safetensors", lambda sd: {"module." + k: v for k, v in sd.items()}),
    ],
    ids=["pt", "wrapped", "module-prefix", "wrapped-prefix", "ckpt", "safetensors",
         "safetensors-prefix"],
)
def test_local_state_dict_round_trip(tmp_path, trained_and_fresh, suffix, wrap):
    trained, fresh = trained_and_fresh
    path = tmp_path / f"weights{suffix}"
    saver = _save_safetensors if suffix == ".safetensors" else _save_pt
    saver(wrap(trained.state_dict()), path)
    before = snapshot(fresh)

    got = features(fresh, weights=str(path))
    expected = features(trained)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, head_input(trained, X_TAB), rtol=1e-5, atol=1e-6)
    # the fresh module the file was loaded into is the user's: left as it was
    assert_unchanged(fresh, before)
    assert not np.allclose(head_input(fresh, X_TAB), got)


def test_pathlike_weights(tmp_path, trained_and_fresh):
    trained, fresh = trained_and_fresh
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    np.testing.assert_allclose(features(fresh, weights=path), head_input(trained, X_TAB),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["resnet18", "module"])
@pytest.mark.parametrize("name", ["missing.pt", os.path.join("no_such_dir", "w.safetensors")])
def test_missing_file(tmp_path, model, name):
    path = tmp_path / name
    model = make_mlp() if model == "module" else model
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        resolve_model(model, weights=str(path))
    with pytest.raises(FileNotFoundError, match="torch.save"):
        load_state_dict_file(path)


class Evil:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch-dict", "torch-object", "pickle", "module"])
def test_pickle_bearing_file_is_refused(tmp_path, how):
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pt"
    sd = make_mlp().state_dict()
    if how == "torch-dict":
        torch.save({**sd, "extra": Evil(marker)}, path)
    elif how == "torch-object":
        torch.save(Evil(marker), path)
    elif how == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"0.weight": Evil(marker)}, f, protocol=2)
    else:  # a whole pickled module instead of its state dict
        torch.save(make_mlp(), path)
    if marker.exists():  # pragma: no cover - saving must not run it either
        marker.unlink()
    with pytest.raises(ValueError, match=r"Refused to load .*weights\.pt.*state_dict"):
        load_state_dict_file(path)
    with pytest.raises(ValueError, match="Refused to load"):
        FeatureExtractorTransformer(model=make_mlp(), weights=str(path), device="cpu").fit(X_TAB)
    assert not marker.exists()


def test_garbage_files(tmp_path):
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match=r"bad\.pt.*torch\.save"):
        load_state_dict_file(bad_pt)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01 nope")
    with pytest.raises(ValueError, match=r"bad\.safetensors.*safetensors"):
        load_state_dict_file(bad_st)
    not_sd = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_sd)
    with pytest.raises(ValueError, match="does not hold a state dict.*list"):
        load_state_dict_file(not_sd)


def test_state_dict_with_wrong_shapes(tmp_path):
    path = tmp_path / "other_head.pt"
    torch.save(make_mlp(n_out=5).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches") as info:
        FeatureExtractorTransformer(model=make_mlp(n_out=3), weights=str(path),
                                    device="cpu").fit(X_TAB)
    msg = str(info.value)
    assert "4.weight: file (5, 6) vs model (3, 6)" in msg
    assert "4.bias: file (5,) vs model (3,)" in msg
    assert "other_head.pt" in msg
    assert "missing keys" not in msg


def test_state_dict_with_missing_and_unexpected_keys(tmp_path):
    sd = make_mlp().state_dict()
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    _save_safetensors(sd, path)
    with pytest.raises(ValueError, match=r"missing keys \[2\.bias\]") as info:
        resolve_model(make_mlp(), weights=path)
    assert "unexpected keys [extra.weight]" in str(info.value)


@pytest.mark.parametrize("bad", [3.5, ["w.pt"]])
def test_weights_of_wrong_type_for_module(bad):
    with pytest.raises(TypeError, match=r"weights must be None or a path .*got (float|list)"):
        resolve_model(make_mlp(), weights=bad)


# --------------------------------------------------------------------------
# nn.Module instances, classes, factories
# --------------------------------------------------------------------------


def test_user_module_is_never_mutated():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    net.train()  # the user's module is in training mode, BatchNorm would update
    net[0].weight.requires_grad_(False)  # and one parameter frozen by the user
    before = snapshot(net)

    fx = FeatureExtractorTransformer(model=net, device="cpu").fit(X_TAB)
    out = fx.transform(X_TAB)
    fx.fit(X_TAB * 3).transform(X_TAB * 3)

    assert_unchanged(net, before)
    assert net.training and net[1].training
    own = {p.data_ptr() for p in net.parameters()}
    assert own.isdisjoint(p.data_ptr() for p in fx.module_.parameters())
    # the extractor runs in eval mode: BatchNorm with running stats, no dropout
    net.eval()
    with torch.no_grad():
        expected = net[:-1](torch.as_tensor(X_TAB)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fx.transform(X_TAB), fx.transform(X_TAB))


class _Recorder:
    def __init__(self):
        self.seen = []

    def __call__(self, module, args):
        self.seen.append(len(args[0]))


def test_private_copy_is_a_deepcopy():
    """The fit's copy of the network: what copy.deepcopy makes (no tensor shared, tied
    weights still tied, hooks copied with their state), only faster."""
    import copy

    from sktransfer._weights import private_copy

    torch.manual_seed(0)
    tied = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8)),
        nn.Linear(8, 8))
    tied[1].weight = tied[0][3].weight  # one parameter in two layers
    tied[0][0].register_forward_pre_hook(_Recorder())
    tied(torch.randn(3, 4))
    for made in (private_copy(tied), copy.deepcopy(tied)):
        assert made[1].weight is made[0][3].weight and made[1].weight is not tied[1].weight
        own = {t.data_ptr() for t in list(tied.parameters()) + list(tied.buffers())}
        assert own.isdisjoint(t.data_ptr() for t in list(made.parameters()) + list(made.buffers()))
        for (name, a), (_, b) in zip(tied.state_dict().items(), made.state_dict().items()):
            assert torch.equal(a, b), name
        hooks = made[0][0]._forward_pre_hooks
        assert hooks is not tied[0][0]._forward_pre_hooks
        assert [h.seen for h in hooks.values()] == [[3]]  # copied with its state
        relu = made[0][2]._forward_hooks
        assert relu == {} and relu is not tied[0][2]._forward_hooks
        made(torch.randn(2, 4))
        assert [h.seen for h in tied[0][0]._forward_pre_hooks.values()] == [[3]]


class SeededMLP(nn.Module):
    """A plain class (not a Sequential): split by its children, checked on the first batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


def test_class_as_model():
    ref = SeededMLP()
    with torch.no_grad():
        expected = ref.act(ref.hidden(torch.as_tensor(X_TAB))).numpy()
    fx = FeatureExtractorTransformer(model=SeededMLP, device="cpu").fit(X_TAB)
    assert fx.blocks_ == ["hidden-act"]
    np.testing.assert_allclose(fx.transform(X_TAB), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [
    lambda: make_mlp(seed=0),
    functools.partial(make_mlp, seed=0),
    make_mlp,  # arguments with defaults only
])
def test_zero_arg_factory_as_model(factory):
    expected = head_input(make_mlp(seed=0), X_TAB)
    np.testing.assert_allclose(features(factory), expected, rtol=1e-5, atol=1e-6)


def test_factory_is_called_at_fit():
    calls = []

    def factory():
        calls.append(1)
        return make_mlp()

    fx = FeatureExtractorTransformer(model=factory, device="cpu")
    assert calls == []
    fx.fit(X_TAB)
    assert calls == [1]


def test_factory_needing_arguments():
    def needs_args(n_in, n_out=2):
        return nn.Linear(n_in, n_out)

    with pytest.raises(TypeError, match=r"needs_args.*needs arguments \['n_in'\].*partial"):
        FeatureExtractorTransformer(model=needs_args, device="cpu").fit(X_TAB)

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(4, width)

    with pytest.raises(TypeError, match=r"\['width'\]"):
        resolve_model(NeedsArgs)


def test_factory_returning_non_module():
    def not_a_module():
        return 42

    with pytest.raises(TypeError, match=r"not_a_module.*returned a int, not an nn\.Module"):
        FeatureExtractorTransformer(model=not_a_module, device="cpu").fit(X_TAB)


def test_model_none():
    message = (r"The 'model' parameter of \w+ must be an instance of 'str', .* a callable or "
               r"an object implementing '__sktransfer_model__'\. Got None instead")
    with pytest.raises(ValueError, match=message):
        FeatureExtractorTransformer(device="cpu").fit(X_TAB)
    with pytest.raises(ValueError, match=message):
        list_blocks(None)


@pytest.mark.parametrize("bad", [42, 3.5, [nn.Linear(4, 2)]])
def test_model_of_wrong_type(bad):
    with pytest.raises(TypeError, match=r"The 'model' parameter of FeatureExtractorTransformer "
                                        r"must be .*Got .* instead"):
        FeatureExtractorTransformer(model=bad, device="cpu").fit(X_TAB)


def test_list_blocks_with_local_weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(make_mlp(seed=0).state_dict(), path)
    blocks = list_blocks(make_mlp(seed=1), weights=str(path))
    assert blocks["name"].tolist() == ["0-1", "2-3"]
    assert blocks["n_params"].tolist() == [40, 54]
    assert blocks["output_shape"].tolist() == [(8,), (6,)]
