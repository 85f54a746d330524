"""timm image models: ``model="timm:<name>"`` and timm modules.

Nothing is downloaded: models are built with ``pretrained=False`` (small
variants or small configurations), weights files are written here.
"""

import copy
import enum
import pickle
import sys

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

timm = pytest.importorskip("timm")

from sktransfer import (  # noqa: E402
    FeatureExtractorTransformer,
    FineTunedClassifier,
    WeightsUnavailableError,
    list_blocks,
)
from sktransfer._weights import resolve_model  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small networks: one torch thread is faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _create(name, **kwargs):
    def build():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=7, **kwargs)
    return build


SMALL_VIT = dict(img_size=32, patch_size=8, depth=3)
IMG64, IMG32 = (2, 3, 64, 64), (2, 3, 32, 32)

# id: (builder, input shape, block names, head name, whether the neck has parameters)
FAMILIES = {
    "resnet18": (_create("resnet18"), IMG64,
                 ["stem", "layer1", "layer2", "layer3", "layer4"], "fc", False),
    "resnet18_dropout": (_create("resnet18", drop_rate=0.5), IMG64,
                         ["stem", "layer1", "layer2", "layer3", "layer4"], "fc", False),
    "vit": (_create("vit_tiny_patch16_224", drop_rate=0.1, drop_path_rate=0.1, **SMALL_VIT),
            IMG32, ["stem", "blocks.0", "blocks.1", "blocks.2-norm"], "head", False),
    "vit_avg_pool": (_create("vit_tiny_patch16_224", global_pool="avg", **SMALL_VIT), IMG32,
                     ["stem", "blocks.0", "blocks.1", "blocks.2"], "head", True),
    "deit": (_create("deit_tiny_patch16_224", img_size=32, depth=2), IMG32,
             ["stem", "blocks.0", "blocks.1-norm"], "head", False),
    "convnext": (_create("convnext_atto"), IMG64,
                 ["stem", "stages.0", "stages.1", "stages.2", "stages.3"], "head.fc", True),
    "efficientnet": (_create("efficientnet_b0", drop_rate=0.2), IMG64,
                     ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4",
                      "blocks.5", "blocks.6-bn2"], "classifier", False),
    "mobilenetv3": (_create("mobilenetv3_small_050"), IMG64,
                    ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4",
                     "blocks.5"], "classifier", True),
    "regnet": (_create("regnetx_002"), IMG64, ["stem", "s1", "s2", "s3", "s4"], "head.fc",
               False),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_split_reproduces_the_model(family):
    build, shape, names, head_name, neck_has_params = FAMILIES[family]
    model = build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    resolved = resolve_model(model)
    net = resolved.net
    assert net.block_names == names
    assert net.head_name == head_name and net.head is resolved.original.get_classifier()
    assert net.split_kind == f"timm:{type(model).__module__.rsplit('.', 1)[-1]}"
    # the split covers every parameter of the (private copy of the) model, once
    assert {id(p) for p in net.parameters()} == {id(p) for p in resolved.original.parameters()}
    assert (sum(p.numel() for p in net.blocks.parameters()) + sum(
        p.numel() for p in net.head.parameters())) == sum(
        p.numel() for p in resolved.original.parameters())
    assert (not any(True for _ in net.pre_head.parameters())) and (
        neck_has_params == (type(net.pre_head).__name__ == "Identity"))
    # eval mode: the model's own forward, and its features before the classifier
    model.eval()
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(net.forward_features(x).numpy(), pre_logits.numpy(),
                                   rtol=1e-5, atol=1e-5)
    # training mode (dropout, drop path, batch statistics) draws the same random numbers
    twin = copy.deepcopy(model).train()
    net.train()
    torch.manual_seed(3)
    expected = twin(x)
    torch.manual_seed(3)
    np.testing.assert_allclose(net(x).detach().numpy(), expected.detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    pickle.loads(pickle.dumps(net))


@pytest.mark.parametrize("family", ["resnet18", "vit", "convnext", "efficientnet"])
def test_blocks_are_timms_parameter_groups(family):
    """Each block is one or more whole groups of timm's coarse ``group_matcher``, in order."""
    from timm.models import group_parameters

    resolved = resolve_model(FAMILIES[family][0]())
    model = resolved.original
    group = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    name_of = {id(p): n for n, p in model.named_parameters()}
    per_block = [{group[name_of[id(p)]] for p in block.parameters()}
                 for block in resolved.net.blocks]
    for before, after in zip(per_block, per_block[1:]):
        assert max(before) < min(after)  # whole groups, in timm's order
    head_groups = {group[name_of[id(p)]] for p in resolved.net.head.parameters()}
    # every group of the trunk is a block of its own (the head's group may join the last)
    trunk = set().union(*per_block) - head_groups
    assert len(resolved.net.blocks) == len(trunk)


def test_model_instance_is_never_modified():
    model = FAMILIES["vit"][0]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = np.random.RandomState(0).rand(12, 3, 32, 32).astype(np.float32)
    y = np.arange(12) % 2
    FineTunedClassifier(model=model, freeze_depth=1, max_epochs=2, random_state=0,
                        device="cpu").fit(X, y)
    FeatureExtractorTransformer(model=model, device="cpu").fit(X)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert isinstance(model.get_classifier(), torch.nn.Linear)  # not reset


def test_one_block_when_the_rules_do_not_fit():
    """A distilled DeiT has two classifiers: one block, and a new head on top."""
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                              depth=1)
    X = np.random.RandomState(0).rand(6, 3, 32, 32).astype(np.float32)
    blocks = list_blocks(model)
    assert blocks["name"].tolist() == ["features"]
    assert blocks.attrs["split_kind"] == "timm:deit:one_block"
    assert blocks.attrs["head"]["name"] is None
    model.eval()
    with torch.no_grad():  # the mean of the class and distillation tokens' features
        x = torch.as_tensor(X)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    got = FeatureExtractorTransformer(model=model, device="cpu").fit_transform(X)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    clf = FineTunedClassifier(model=model, freeze_depth="all", max_epochs=2, random_state=0,
                              device="cpu").fit(X, np.arange(6) % 2)
    assert clf.predict(X).shape == (6,)


# --------------------------------------------------------------------------
# "timm:<name>": weights, preprocessing, list_blocks
# --------------------------------------------------------------------------


def test_list_blocks_timm_name():
    blocks = list_blocks("timm:resnet18", weights=None)
    assert blocks["name"].tolist() == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert blocks["output_shape"].tolist() == [(64, 56, 56), (64, 56, 56), (128, 28, 28),
                                               (256, 14, 14), (512, 7, 7)]
    assert blocks.attrs["head"] == {"name": "fc", "n_params": 513000}
    vit = list_blocks("timm:deit_tiny_patch16_224")
    assert vit["name"].tolist() == ["stem"] + [f"blocks.{i}" for i in range(11)] + [
        "blocks.11-norm"]
    assert vit["output_shape"].tolist()[-1] == (197, 192)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    return reference, path


def test_local_weights_file_and_timm_preprocessing(resnet_file):
    """uint8 images and PIL images go through timm's own eval transform."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    reference, path = resnet_file
    images = np.random.RandomState(0).randint(0, 256, size=(3, 40, 52, 3), dtype=np.uint8)
    transform = create_transform(**resolve_data_config(model=reference))
    batch = torch.stack([transform(Image.fromarray(img)) for img in images])
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(batch), pre_logits=True)
    fx = FeatureExtractorTransformer(model="timm:resnet18", weights=str(path), device="cpu")
    np.testing.assert_allclose(fx.fit_transform(images), expected.numpy(), rtol=1e-4,
                               atol=1e-4)
    pil = [Image.fromarray(img) for img in images]
    np.testing.assert_allclose(fx.transform(pil), expected.numpy(), rtol=1e-4, atol=1e-4)
    # a block's output, pooled
    layer3 = FeatureExtractorTransformer(model="timm:resnet18", weights=str(path),
                                         layer="layer3", device="cpu").fit(images)
    out = {}
    handle = reference.layer3.register_forward_hook(lambda m, i, o: out.setdefault("x", o))
    with torch.no_grad():
        reference(batch)
    handle.remove()
    np.testing.assert_allclose(layer3.transform(images), out["x"].mean((2, 3)).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_vit_tokens_and_cls_pooling():
    model = FAMILIES["vit"][0]().eval()
    X = np.random.RandomState(0).rand(4, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        tokens = model.forward_features(torch.as_tensor(X))
    cls = FeatureExtractorTransformer(model=model, layer=-1, pooling="cls", device="cpu")
    np.testing.assert_allclose(cls.fit_transform(X), tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    mean = FeatureExtractorTransformer(model=model, layer=-1, pooling="mean", device="cpu")
    np.testing.assert_allclose(mean.fit_transform(X), tokens.mean(1).numpy(), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"pooling='cls'.*first token.*\(2, 64, 8, 8\)"):
        FeatureExtractorTransformer(model=FAMILIES["resnet18"][0](), layer=0, pooling="cls",
                                    device="cpu").fit(X)


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache (where timm keeps its weights)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("weights", ["DEFAULT", "a1_in1k"])
def test_offline_pretrained_weights_error(hub_offline, weights):
    with pytest.raises(WeightsUnavailableError) as info:
        FeatureExtractorTransformer(model="timm:resnet18", weights=weights,
                                    device="cpu").fit(np.zeros((2, 3, 32, 32), np.float32))
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert "timm/resnet18.a1_in1k" in msg  # where the weights come from
    assert str(hub_offline) in msg  # the cache
    assert "weights='/path/to/model.safetensors'" in msg  # how to pass a local file


def test_weights_errors(tmp_path):
    with pytest.raises(ValueError, match=r"weights='nope'.*'DEFAULT'.*'a1_in1k'"):
        list_blocks("timm:resnet18", weights="nope")
    with pytest.raises(ValueError, match=r"already names a pretrained tag"):
        list_blocks("timm:resnet18.a1_in1k", weights="a2_in1k")
    with pytest.raises(ValueError, match=r"Unknown timm model 'timm:resnet181'.*'timm:resnet18'"):
        list_blocks("timm:resnet181")
    with pytest.raises(TypeError, match=r"The 'weights' parameter of list_blocks must be None, "
                                        r"an instance of 'str' or an instance of 'os\.PathLike'"):
        list_blocks("timm:resnet18", weights=3)
    tag = enum.Enum("Tag", {"A1": "a1_in1k"}).A1  # an enum member passes the constraints
    with pytest.raises(TypeError, match=r"weights must be None, 'DEFAULT'"):
        list_blocks("timm:resnet18", weights=tag)
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "r.pt")
    with pytest.raises(ValueError, match=r"shape mismatches.*fc\.weight"):
        list_blocks("timm:resnet18", weights=str(tmp_path / "r.pt"))


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"sktransfer\[timm\]"):
        list_blocks("timm:resnet18")


# --------------------------------------------------------------------------
# fine-tuning policies on timm models
# --------------------------------------------------------------------------


def test_grid_search_over_freeze_depth(tmp_path):
    model = FAMILIES["resnet18"][0]()
    rng = np.random.RandomState(0)
    X = rng.rand(24, 3, 32, 32).astype(np.float32)
    y = (X[:, 0].mean((1, 2)) > X[:, 1].mean((1, 2))).astype(int)
    search = GridSearchCV(
        FineTunedClassifier(model=model, max_epochs=2, batch_size=8, random_state=0,
                            device="cpu"),
        {"freeze_depth": [4, "all"]}, cv=2,
    ).fit(X, y)
    assert search.best_params_["freeze_depth"] in (4, "all")
    best = search.best_estimator_
    assert best.blocks_ == ["stem", "layer1", "layer2", "layer3", "layer4"]
    reference = dict(model.named_parameters())
    # frozen blocks keep the timm model's weights bit for bit
    for name, p in best.module_.blocks[0].named_parameters():
        assert any(torch.equal(p, q) for q in reference.values()), name
    proba = best.predict_proba(X)
    assert proba.shape == (24, 2)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(best)).predict_proba(X), proba)
    path = tmp_path / "timm.safetensors"
    best.save_weights(path)
    again = FineTunedClassifier(model=model, device="cpu").load_weights(path)
    np.testing.assert_array_equal(again.predict_proba(X), proba)


def test_layer_decay_follows_the_blocks():
    """With a tiny layer_decay the input-side block barely moves, the top one does."""
    model = FAMILIES["vit"][0]()
    X = np.random.RandomState(0).rand(16, 3, 32, 32).astype(np.float32)
    y = np.arange(16) % 2
    start = FeatureExtractorTransformer(model=model, device="cpu").fit(X[:2]).module_
    clf = FineTunedClassifier(model=model, freeze_depth=0, layer_decay=1e-3, lr=1e-2,
                              backbone_lr_scale=1.0, penalty=None, max_epochs=3, batch_size=8,
                              random_state=0, device="cpu").fit(X, y)
    before, after = start.state_dict(), clf.module_.state_dict()

    def moved(prefix):
        return max(float((after[k] - before[k]).abs().max()) for k in before
                   if k.startswith(prefix))

    assert moved("blocks.0.") < 1e-8  # stem: lr * 1e-3 ** 3
    assert moved("blocks.3.") > 1e-3  # the top block: lr
