"""The hand-checked torchvision family splits reproduce each model exactly."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from sktransfer._blocknet import BlockNet
from sktransfer._families import split_family

NC = 7


def _tv(name, **kw):
    return lambda: getattr(tvm, name)(weights=None, num_classes=NC, **kw)


def _small_vit(**kw):
    return lambda: tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                         hidden_dim=16, mlp_dim=32, num_classes=5, **kw)


def _small_swin(v2=False):
    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return lambda: tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1, 1, 1],
                                       num_heads=[1, 2, 2, 2], window_size=[2, 2],
                                       num_classes=NC, **extra)


def _small_convnext():
    setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 2),
               CNBlockConfig(64, None, 1)]
    return lambda: tvm.ConvNeXt(setting, num_classes=NC)


IMG = (2, 3, 64, 64)

# id: (builder, input shape, split kind, block names, head attribute path, aux modules)
CASES = {
    "resnet18": (_tv("resnet18"), IMG, "resnet",
                 ["stem", "layer1", "layer2", "layer3", "layer4"], "fc", []),
    "resnext": (_tv("resnext50_32x4d"), IMG, "resnet",
                ["stem", "layer1", "layer2", "layer3", "layer4"], "fc", []),
    "vgg11": (_tv("vgg11"), IMG, "vgg",
              ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], "classifier.6", []),
    "vgg11_bn": (_tv("vgg11_bn"), IMG, "vgg",
                 ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], "classifier.6", []),
    "alexnet": (_tv("alexnet"), IMG, "alexnet",
                ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"], "classifier.6", []),
    "mobilenet_v2": (_tv("mobilenet_v2"), IMG, "mobilenet_v2",
                     ["features.0-1", "features.2-3", "features.4-6", "features.7-13",
                      "features.14-18"], "classifier.1", []),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), IMG, "mobilenet_v3",
                           ["features.0", "features.1", "features.2-3", "features.4-8",
                            "features.9-12", "classifier"], "classifier.3", []),
    "mobilenet_v3_large": (_tv("mobilenet_v3_large"), IMG, "mobilenet_v3",
                           ["features.0-1", "features.2-3", "features.4-6", "features.7-12",
                            "features.13-16", "classifier"], "classifier.3", []),
    "efficientnet_b0": (_tv("efficientnet_b0"), IMG, "efficientnet",
                        ["features.0-1", "features.2", "features.3", "features.4-5",
                         "features.6-8"], "classifier.1", []),
    "efficientnet_v2_s": (_tv("efficientnet_v2_s"), IMG, "efficientnet",
                          ["features.0-1", "features.2", "features.3", "features.4-5",
                           "features.6-7"], "classifier.1", []),
    "mnasnet0_5": (_tv("mnasnet0_5"), IMG, "mnasnet",
                   ["layers.0-7", "layers.8", "layers.9", "layers.10-11", "layers.12-16"],
                   "classifier.1", []),
    "shufflenet_v2": (_tv("shufflenet_v2_x0_5"), IMG, "shufflenet_v2",
                      ["stem", "stage2", "stage3", "stage4-conv5"], "fc", []),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), IMG, "regnet",
                       ["stem", "block1", "block2", "block3", "block4"], "fc", []),
    "densenet121": (_tv("densenet121"), IMG, "densenet",
                    ["conv0-pool0", "denseblock1-transition1", "denseblock2-transition2",
                     "denseblock3-transition3", "denseblock4-norm5"], "classifier", []),
    "convnext_tiny": (_tv("convnext_tiny"), IMG, "convnext",
                      ["stem", "stage1", "stage2", "stage3", "stage4"], "classifier.2", []),
    "convnext_small_cfg": (_small_convnext(), (2, 3, 32, 32), "convnext",
                           ["stem", "stage1", "stage2", "stage3", "stage4"], "classifier.2", []),
    "swin": (_small_swin(), (2, 3, 32, 32), "swin",
             ["stem", "stage1", "stage2", "stage3", "stage4"], "head", []),
    "swin_v2": (_small_swin(v2=True), (2, 3, 32, 32), "swin",
                ["stem", "stage1", "stage2", "stage3", "stage4"], "head", []),
    "squeezenet1_0": (_tv("squeezenet1_0"), IMG, "squeezenet",
                      ["features.0-2", "features.3-6", "features.7-11", "features.12"],
                      "classifier.1", []),
    "squeezenet1_1": (_tv("squeezenet1_1"), IMG, "squeezenet",
                      ["features.0-2", "features.3-5", "features.6-8", "features.9-12"],
                      "classifier.1", []),
    "vit": (_small_vit(), (2, 3, 32, 32), "vit",
            ["embed", "encoder_layer_0", "encoder_layer_1"], "heads.head", []),
    "vit_pre_logits": (_small_vit(representation_size=12), (2, 3, 32, 32), "vit",
                       ["embed", "encoder_layer_0", "encoder_layer_1", "pre_logits"],
                       "heads.head", []),
    "googlenet": (_tv("googlenet", aux_logits=True, transform_input=True, init_weights=False),
                  IMG, "googlenet",
                  ["conv1-maxpool1", "conv2-maxpool2", "inception3a-maxpool3",
                   "inception4a-maxpool4", "inception5a-inception5b"], "fc", ["aux1", "aux2"]),
    "googlenet_no_aux": (_tv("googlenet", aux_logits=False, transform_input=False,
                             init_weights=False), IMG, "googlenet",
                         ["conv1-maxpool1", "conv2-maxpool2", "inception3a-maxpool3",
                          "inception4a-maxpool4", "inception5a-inception5b"], "fc", []),
    "inception_v3": (_tv("inception_v3", aux_logits=True, transform_input=True,
                         init_weights=False), (2, 3, 75, 75), "inception3",
                     ["Conv2d_1a_3x3-maxpool1", "Conv2d_3b_1x1-maxpool2", "Mixed_5b-Mixed_5d",
                      "Mixed_6a-Mixed_6e", "Mixed_7a-Mixed_7c"], "fc", ["AuxLogits"]),
}

# eval-only forward: in training mode these return auxiliary logits too
EVAL_ONLY = {"googlenet", "inception_v3"}


def _ids(tensors):
    return [id(t) for t in tensors]


def _aux_ids(model, aux, what):
    ids = set()
    for name in aux:
        sub = getattr(model, name)
        if sub is not None:
            ids |= set(_ids(getattr(sub, what)()))
    return ids


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    builder, shape, kind, names, head_path, aux = CASES[request.param]
    torch.manual_seed(0)
    model = builder()
    return request.param, model, split_family(model), shape, kind, names, head_path, aux


def test_structure(case):
    _, model, bnet, _, kind, names, head_path, _ = case
    assert isinstance(bnet, BlockNet)
    assert bnet.split_kind == f"family:{kind}"
    assert bnet.block_names == names
    assert len(bnet) == len(names)
    assert bnet.head is model.get_submodule(head_path)
    assert bnet.head_name == head_path
    assert bnet.has_head


def test_shares_exactly_the_models_parameters(case):
    _, model, bnet, _, _, _, _, aux = case
    expected = set(_ids(model.parameters())) - _aux_ids(model, aux, "parameters")
    assert set(_ids(bnet.parameters())) == expected
    expected_buffers = set(_ids(model.buffers())) - _aux_ids(model, aux, "buffers")
    assert set(_ids(bnet.buffers())) == expected_buffers
    # every parameter lives in exactly one block (or the head)
    parts = list(bnet.blocks) + [bnet.pre_head, bnet.head, bnet.post_head]
    all_ids = [i for part in parts for i in _ids(part.parameters())]
    assert len(all_ids) == len(set(all_ids))
    assert not list(bnet.pre_head.parameters())
    assert not list(bnet.post_head.parameters())


def test_eval_forward_matches(case):
    _, model, bnet, shape, _, _, _, _ = case
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model.eval()
    bnet.eval()
    with torch.no_grad():
        expected = model(x)
        got = bnet(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_train_forward_matches(case):
    # same dropout / stochastic-depth draws in the same order as the model
    name, model, bnet, shape, _, _, _, _ = case
    if name in EVAL_ONLY:
        pytest.skip("training-mode forward returns auxiliary logits")
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model.train()
    bnet.train()
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            expected = model(x)
            torch.manual_seed(1)
            got = bnet(x)
    finally:
        model.eval()
    assert torch.allclose(got, expected, atol=1e-5)


def test_deepcopy_pickles(case):
    _, model, bnet, shape, _, names, _, _ = case
    restored = pickle.loads(pickle.dumps(copy.deepcopy(bnet)))
    assert restored.block_names == names
    torch.manual_seed(0)
    x = torch.randn(*shape)
    restored.eval()
    bnet.eval()
    with torch.no_grad():
        assert torch.allclose(restored(x), bnet(x), atol=1e-6)


def test_vit_adapter_holds_original_parameters():
    torch.manual_seed(0)
    vit = _small_vit()()
    bnet = split_family(vit)
    embed = bnet.blocks[0]
    assert embed.class_token is vit.class_token
    assert embed.pos_embedding is vit.encoder.pos_embedding
    assert embed.conv_proj is vit.conv_proj
    assert bnet.blocks[-1][-1] is vit.encoder.ln
    with pytest.raises(Exception, match="Wrong image height"):
        bnet(torch.randn(1, 3, 16, 32))


def test_freezing_first_blocks_freezes_only_those():
    torch.manual_seed(0)
    model = tvm.mobilenet_v2(weights=None, num_classes=NC)
    bnet = split_family(model)
    for p in bnet.blocks[0].parameters():
        p.requires_grad_(False)
    assert not model.features[0][0].weight.requires_grad
    assert not model.features[1].conv[0][0].weight.requires_grad
    assert model.features[2].conv[0][0].weight.requires_grad
    assert model.classifier[1].weight.requires_grad


def test_unknown_or_subclassed_models_are_not_families():
    class MyResNet(tvm.ResNet):
        pass

    assert split_family(nn.Sequential(nn.Linear(2, 2))) is None
    assert split_family(nn.Linear(2, 2)) is None
    sub = MyResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3)
    assert split_family(sub) is None
