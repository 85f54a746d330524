"""Hand-checked block splits for torchvision architecture families.

Each splitter takes a model instance and returns a :class:`BlockNet` whose
``forward`` equals the model's own ``forward`` in eval mode (tested in
``tests/test_families.py``). Blocks share the model's submodules and
parameters: nothing is copied here, and the ``BlockNet``'s parameters are
exactly the model's parameters (except the auxiliary classifiers of GoogLeNet
and Inception3, which are left out).

Blocks follow the architecture's stages, usually one per change of spatial
resolution, so that ``freeze_depth`` has a useful granularity. Parameter-free
steps (activations, pooling, flatten, dropout) join the block before them or
the parameter-free ``pre_head``; a step *with* parameters between the last
stage and the head (ConvNeXt's and Swin's final norm) is folded into the last
block. Dispatch is on the exact class, so subclasses fall back to the generic
rules of :mod:`sktransfer._blocks`.

Block names "a-b" cover the model's submodules ``a`` to ``b`` (inclusive);
"features.i-j" covers ``features[i]`` to ``features[j]``.

=============  ==========================================================  ==============
family         blocks (input side first)                                   head
=============  ==========================================================  ==============
ResNet         stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3,   fc
               layer4; pre_head: global avg pool + flatten (also ResNeXt,
               Wide ResNet)
VGG            conv1 .. conv5 (``features`` cut after each MaxPool), fc6   classifier.6
               (avgpool, flatten, classifier[0:3]), fc7 (classifier[3:6])
AlexNet        conv1 .. conv5 (one per conv, with its ReLU/MaxPool), fc6   classifier.6
               (avgpool, flatten, classifier[0:3]), fc7 (classifier[3:6])
MobileNetV2    ``features`` grouped by output resolution: features.0-1,    classifier.1
               features.2-3, features.4-6, features.7-13, features.14-18
               (for the standard config); pre_head: avg pool, flatten,
               classifier[0] (Dropout)
MobileNetV3    ``features`` grouped by output resolution (large:           classifier.3
               features.0-1, .2-3, .4-6, .7-12, .13-16; small: features.0,
               .1, .2-3, .4-8, .9-12), then classifier (avgpool, flatten,
               classifier[0:3] = Linear, Hardswish, Dropout)
EfficientNet   ``features`` grouped by output resolution (B0:              classifier.1
               features.0-1, .2, .3, .4-5, .6-8; V2-S: same but .6-7);
               pre_head: avgpool, flatten, classifier[0] (Dropout).
               v1 and v2.
MNASNet        ``layers`` grouped by output resolution (layers.0-7, .8,    classifier.1
               .9, .10-11, .12-16); pre_head: spatial mean, classifier[0]
ShuffleNetV2   stem (conv1, maxpool), stage2, stage3, stage4-conv5;        fc
               pre_head: spatial mean
RegNet         stem, block1, block2, block3, block4 (the trunk_output      fc
               stages); pre_head: avgpool + flatten
DenseNet       conv0-pool0, denseblock1-transition1,                       classifier
               denseblock2-transition2, denseblock3-transition3,
               denseblock4-norm5; pre_head: ReLU, avg pool, flatten
ConvNeXt       stem (features.0), stage1 (features.1), stage2              classifier.2
               (features.2-3: downsample + stage), stage3 (features.4-5),
               stage4 (features.6-7 + avgpool + classifier[0:2]: the
               final LayerNorm2d has parameters, so the global pool,
               LayerNorm2d and Flatten end stage4, whose output is the
               pooled feature vector)
Swin           stem (features.0), stage1 (features.1), stage2              head
               (features.2-3: patch merging + stage), stage3, stage4
               (+ the final ``norm``); pre_head: permute, avgpool,
               flatten. v1 and v2.
SqueezeNet     ``features`` cut after each MaxPool (1.0: features.0-2,     classifier.1
               .3-6, .7-11, .12; 1.1: features.0-2, .3-5, .6-8, .9-12);    (a 1x1 Conv2d)
               pre_head: classifier[0] (Dropout); post_head: ReLU,
               global avg pool, flatten
ViT            embed (conv_proj, reshape, class token, pos_embedding,      heads.head
               encoder.dropout), encoder_layer_0 .. encoder_layer_{L-1}
               (the last one also runs encoder.ln); pre_head: take the
               class token. With ``representation_size``: a last block
               pre_logits (class token, heads.pre_logits, heads.act)
GoogLeNet      conv1-maxpool1 (with the input transform when               fc
               ``transform_input``), conv2-maxpool2, inception3a-maxpool3,
               inception4a-maxpool4, inception5a-inception5b; pre_head:
               avgpool, flatten, dropout. aux1/aux2 are left out.
Inception3     Conv2d_1a_3x3-maxpool1 (with the input transform when       fc
               ``transform_input``), Conv2d_3b_1x1-maxpool2,
               Mixed_5b-Mixed_5d, Mixed_6a-Mixed_6e, Mixed_7a-Mixed_7c;
               pre_head: avgpool, dropout, flatten. AuxLogits is left out.
=============  ==========================================================  ==============

GoogLeNet and Inception3 match the model's *eval-mode* forward (in training
mode the models also return auxiliary logits, which a ``BlockNet`` never
computes); their auxiliary classifiers are not part of the ``BlockNet``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._blocknet import BlockNet, GlobalPool, _chain

# A pre_head reproduces the model's own forward between its last block and its
# head: the model's own pooling module where it has one (``m.avgpool``), an
# equal fresh one where torchvision calls the functional form
# (``F.adaptive_avg_pool2d``), and sktransfer's ``GlobalPool("avg")`` where
# torchvision writes ``x.mean([2, 3])`` (the same operation).


# --------------------------------------------------------------------------
# small parameter-free / adapter modules (module level: picklable)
# --------------------------------------------------------------------------


class _ClassToken(nn.Module):
    """``x[:, 0]``: the class token of a ViT sequence."""

    def forward(self, x):
        return x[:, 0]


class _TransformInput(nn.Module):
    """GoogLeNet/Inception3 ``transform_input``: ImageNet normalisation to [-1, 1] scaling."""

    def forward(self, x):
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)


class _ViTEmbed(nn.Module):
    """Patch embedding of a torchvision ``VisionTransformer``.

    Runs ``_process_input`` (``conv_proj``, reshape, permute), prepends the
    class token, adds ``encoder.pos_embedding`` and applies ``encoder.dropout``.
    Holds the model's own ``conv_proj``, ``class_token``, ``pos_embedding``
    and dropout (no copies).
    """

    def __init__(self, vit):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.image_size = vit.image_size
        self.patch_size = vit.patch_size
        self.hidden_dim = vit.hidden_dim

    def forward(self, x):
        n, _, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size,
                      f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(w == self.image_size,
                      f"Wrong image width! Expected {self.image_size} but got {w}!")
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // p) * (w // p))
        x = x.permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embedding
        return self.dropout(x)

    def extra_repr(self):
        return f"image_size={self.image_size}, patch_size={self.patch_size}"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _downsamples(module):
    """Whether ``module`` contains a strided convolution or pooling layer."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = sub.stride
            if stride is None:  # pooling: stride defaults to kernel_size
                stride = sub.kernel_size
            stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
            if any(s > 1 for s in stride):
                return True
    return False


def _range_name(prefix, first, last):
    return f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}"


def _by_resolution(seq, prefix):
    """Blocks of ``seq``'s children, a new block at each downsampling child."""
    children = list(seq)
    groups = []
    for i, child in enumerate(children):
        if not groups or _downsamples(child):
            groups.append([i])
        else:
            groups[-1].append(i)
    return [(_range_name(prefix, g[0], g[-1]), _chain([children[i] for i in g]))
            for g in groups]


def _after_maxpool(seq, prefix):
    """Blocks of ``seq``'s children, each ending with a ``MaxPool2d`` (if any)."""
    children = list(seq)
    groups = [[]]
    for i, child in enumerate(children):
        groups[-1].append(i)
        if isinstance(child, nn.MaxPool2d) and i < len(children) - 1:
            groups.append([])
    return [(_range_name(prefix, g[0], g[-1]), _chain([children[i] for i in g]))
            for g in groups if g]


def _stem_and_stages(features):
    """ConvNeXt / Swin ``features``: stem, stage1, then (downsample, stage) pairs."""
    children = list(features)
    groups = [[0]]
    if len(children) > 1:
        groups.append([1])
    for i in range(2, len(children), 2):
        groups.append(list(range(i, min(i + 2, len(children)))))
    names = ["stem"] + [f"stage{k}" for k in range(1, len(groups))]
    return [(name, [children[i] for i in g]) for name, g in zip(names, groups)]


# --------------------------------------------------------------------------
# splitters
# --------------------------------------------------------------------------


def _split_resnet(m):
    blocks = [
        ("stem", _chain([m.conv1, m.bn1, m.relu, m.maxpool])),
        ("layer1", m.layer1),
        ("layer2", m.layer2),
        ("layer3", m.layer3),
        ("layer4", m.layer4),
    ]
    return BlockNet(blocks, head=m.fc, pre_head=nn.Sequential(m.avgpool, nn.Flatten(1)),
                    head_name="fc",
                    split_kind="family:resnet")


def _split_classic(m, convs, kind):
    """VGG / AlexNet: conv stages, fc6, fc7, head ``classifier[6]``."""
    cls = m.classifier
    blocks = [(f"conv{i + 1}", block) for i, (_, block) in enumerate(convs)]
    blocks += [
        ("fc6", _chain([m.avgpool, nn.Flatten(1), cls[0], cls[1], cls[2]])),
        ("fc7", _chain([cls[3], cls[4], cls[5]])),
    ]
    return BlockNet(blocks, head=cls[6], head_name="classifier.6", split_kind=kind)


def _split_vgg(m):
    return _split_classic(m, _after_maxpool(m.features, "features."), "family:vgg")


def _split_alexnet(m):
    # a new block at each Conv2d (ReLU / MaxPool join the conv before them)
    children = list(m.features)
    groups = []
    for child in children:
        if isinstance(child, nn.Conv2d) or not groups:
            groups.append([child])
        else:
            groups[-1].append(child)
    return _split_classic(m, [(None, _chain(g)) for g in groups], "family:alexnet")


def _split_mobilenet_v2(m):
    pre_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), m.classifier[0])
    return BlockNet(_by_resolution(m.features, "features."), head=m.classifier[1],
                    pre_head=pre_head, head_name="classifier.1",
                    split_kind="family:mobilenet_v2")


def _split_mobilenet_v3(m):
    cls = m.classifier
    blocks = _by_resolution(m.features, "features.")
    blocks.append(("classifier", _chain([m.avgpool, nn.Flatten(1), cls[0], cls[1], cls[2]])))
    return BlockNet(blocks, head=cls[3], head_name="classifier.3",
                    split_kind="family:mobilenet_v3")


def _split_efficientnet(m):
    pre_head = nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier[0])
    return BlockNet(_by_resolution(m.features, "features."), head=m.classifier[1],
                    pre_head=pre_head, head_name="classifier.1",
                    split_kind="family:efficientnet")


def _split_mnasnet(m):
    pre_head = nn.Sequential(GlobalPool("avg"), m.classifier[0])
    return BlockNet(_by_resolution(m.layers, "layers."), head=m.classifier[1],
                    pre_head=pre_head, head_name="classifier.1",
                    split_kind="family:mnasnet")


def _split_shufflenet_v2(m):
    blocks = [
        ("stem", _chain([m.conv1, m.maxpool])),
        ("stage2", m.stage2),
        ("stage3", m.stage3),
        ("stage4-conv5", _chain([m.stage4, m.conv5])),
    ]
    return BlockNet(blocks, head=m.fc, pre_head=GlobalPool("avg"), head_name="fc",
                    split_kind="family:shufflenet_v2")


def _split_regnet(m):
    blocks = [("stem", m.stem)] + list(m.trunk_output.named_children())
    pre_head = nn.Sequential(m.avgpool, nn.Flatten(1))
    return BlockNet(blocks, head=m.fc, pre_head=pre_head, head_name="fc",
                    split_kind="family:regnet")


def _split_densenet(m):
    children = list(m.features.named_children())
    groups = []
    for name, child in children:
        # a new block at each dense block (the stem before the first one)
        if not groups or name.startswith("denseblock"):
            groups.append([(name, child)])
        else:
            groups[-1].append((name, child))
    blocks = [(_range_name("", g[0][0], g[-1][0]), _chain([c for _, c in g]))
              for g in groups]
    pre_head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return BlockNet(blocks, head=m.classifier, pre_head=pre_head, head_name="classifier",
                    split_kind="family:densenet")


def _split_convnext(m):
    cls = m.classifier
    blocks = _stem_and_stages(m.features)
    # classifier = LayerNorm2d (parametrised), Flatten, Linear: the pooling,
    # norm and flatten end the last block.
    blocks[-1] = (blocks[-1][0], blocks[-1][1] + [m.avgpool, cls[0], cls[1]])
    blocks = [(name, _chain(mods)) for name, mods in blocks]
    return BlockNet(blocks, head=cls[2], head_name="classifier.2",
                    split_kind="family:convnext")


def _split_swin(m):
    blocks = _stem_and_stages(m.features)
    blocks[-1] = (blocks[-1][0], blocks[-1][1] + [m.norm])
    blocks = [(name, _chain(mods)) for name, mods in blocks]
    pre_head = nn.Sequential(m.permute, m.avgpool, m.flatten)
    return BlockNet(blocks, head=m.head, pre_head=pre_head, head_name="head",
                    split_kind="family:swin", channels_last=True)


def _split_squeezenet(m):
    cls = m.classifier  # Dropout, final 1x1 Conv2d, ReLU, AdaptiveAvgPool2d
    return BlockNet(_after_maxpool(m.features, "features."), head=cls[1],
                    pre_head=cls[0], post_head=nn.Sequential(cls[2], cls[3], nn.Flatten(1)),
                    head_name="classifier.1", split_kind="family:squeezenet")


def _split_vit(m):
    layers = list(m.encoder.layers.named_children())
    blocks = [("embed", _ViTEmbed(m))] + [(name, layer) for name, layer in layers]
    last_name, last = blocks[-1]
    blocks[-1] = (last_name, _chain([last, m.encoder.ln]))
    heads = m.heads
    if hasattr(heads, "pre_logits"):
        blocks.append(("pre_logits", _chain([_ClassToken(), heads.pre_logits, heads.act])))
        pre_head = None
    else:
        pre_head = _ClassToken()
    return BlockNet(blocks, head=heads.head, pre_head=pre_head, head_name="heads.head",
                    split_kind="family:vit", channels_last=True)


def _maybe_transform(m, modules):
    return ([_TransformInput()] if m.transform_input else []) + modules


def _split_googlenet(m):
    blocks = [
        ("conv1-maxpool1", _chain(_maybe_transform(m, [m.conv1, m.maxpool1]))),
        ("conv2-maxpool2", _chain([m.conv2, m.conv3, m.maxpool2])),
        ("inception3a-maxpool3", _chain([m.inception3a, m.inception3b, m.maxpool3])),
        ("inception4a-maxpool4", _chain([m.inception4a, m.inception4b, m.inception4c,
                                         m.inception4d, m.inception4e, m.maxpool4])),
        ("inception5a-inception5b", _chain([m.inception5a, m.inception5b])),
    ]
    pre_head = nn.Sequential(m.avgpool, nn.Flatten(1), m.dropout)
    return BlockNet(blocks, head=m.fc, pre_head=pre_head, head_name="fc",
                    split_kind="family:googlenet")


def _split_inception3(m):
    blocks = [
        ("Conv2d_1a_3x3-maxpool1", _chain(_maybe_transform(
            m, [m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.maxpool1]))),
        ("Conv2d_3b_1x1-maxpool2", _chain([m.Conv2d_3b_1x1, m.Conv2d_4a_3x3, m.maxpool2])),
        ("Mixed_5b-Mixed_5d", _chain([m.Mixed_5b, m.Mixed_5c, m.Mixed_5d])),
        ("Mixed_6a-Mixed_6e", _chain([m.Mixed_6a, m.Mixed_6b, m.Mixed_6c, m.Mixed_6d,
                                      m.Mixed_6e])),
        ("Mixed_7a-Mixed_7c", _chain([m.Mixed_7a, m.Mixed_7b, m.Mixed_7c])),
    ]
    pre_head = nn.Sequential(m.avgpool, m.dropout, nn.Flatten(1))
    return BlockNet(blocks, head=m.fc, pre_head=pre_head, head_name="fc",
                    split_kind="family:inception3")


def _families():
    from torchvision import models as tvm

    return [
        (tvm.ResNet, _split_resnet),
        (tvm.VGG, _split_vgg),
        (tvm.AlexNet, _split_alexnet),
        (tvm.MobileNetV2, _split_mobilenet_v2),
        (tvm.MobileNetV3, _split_mobilenet_v3),
        (tvm.EfficientNet, _split_efficientnet),
        (tvm.MNASNet, _split_mnasnet),
        (tvm.ShuffleNetV2, _split_shufflenet_v2),
        (tvm.RegNet, _split_regnet),
        (tvm.DenseNet, _split_densenet),
        (tvm.ConvNeXt, _split_convnext),
        (tvm.SwinTransformer, _split_swin),
        (tvm.SqueezeNet, _split_squeezenet),
        (tvm.VisionTransformer, _split_vit),
        (tvm.GoogLeNet, _split_googlenet),
        (tvm.Inception3, _split_inception3),
    ]


def split_family(model):
    """The family split of ``model``, or ``None`` when it is not a known family."""
    for cls, splitter in _families():
        if type(model) is cls:
            return splitter(model)
    return None
