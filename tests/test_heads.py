"""The head of a fine-tuned network (``_heads.py``): a new one sized from y, or the
pretrained one."""

import pytest
import torch
from torch import nn

from sktransfer import split_model
from sktransfer._blocknet import GlobalPool
from sktransfer._heads import attach_head, check_hidden_sizes, make_head


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_make_head_layers():
    assert isinstance(make_head(6, 2), nn.Linear)
    head = make_head(6, 2, hidden=(5,), dropout=0.2, pool=True)
    kinds = [type(m) for m in head]
    assert kinds == [GlobalPool, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[2].in_features, head[2].out_features, head[5].out_features) == (6, 5, 2)


def test_a_new_head_is_sized_from_the_features_and_seeded():
    net = split_model(mlp())
    features = net.forward_features(torch.zeros(2, 4))
    assert attach_head(net, features, 5, seed=0) == ("head.",)
    assert (net.head.in_features, net.head.out_features) == (6, 5)
    assert net.head_name == "head (new)" and isinstance(net.post_head, nn.Identity)
    again = split_model(mlp())
    attach_head(again, features, 5, seed=0)
    assert torch.equal(again.head.weight, net.head.weight)


def test_a_feature_map_is_pooled_on_its_channel_axis():
    torch.manual_seed(0)
    cnn = split_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), blocks=["0"], head=None)
    features = cnn.forward_features(torch.zeros(2, 1, 6, 6))
    attach_head(cnn, features, 3, seed=0)
    assert isinstance(cnn.head[0], GlobalPool) and cnn.head[1].in_features == 4
    assert cnn(torch.zeros(2, 1, 6, 6)).shape == (2, 3)


def test_reusing_the_pretrained_head():
    net = split_model(mlp())
    pretrained_head = net.head
    features = net.forward_features(torch.zeros(2, 4))
    assert attach_head(net, features, 3, seed=0, reuse_head=True) == ()
    assert net.head is pretrained_head
    with pytest.raises(ValueError, match=r"output 2 values per sample \(2 classes\), but it "
                                         r"outputs \(3,\)"):
        attach_head(net, features, 2, seed=0, reuse_head=True, outputs=lambda: "2 classes")
    with pytest.warns(UserWarning, match="ignored when reuse_head=True"):
        attach_head(net, features, 3, seed=0, reuse_head=True, hidden=(4,))
    encoder = split_model(mlp(), blocks=["0"], head=None)
    with pytest.raises(ValueError, match="no head \\(it is an encoder\\)"):
        attach_head(encoder, features, 3, seed=0, reuse_head=True)


def test_check_hidden_sizes():
    assert check_hidden_sizes([8, 4]) == (8, 4)
    for bad in [(0,), (2.5,), (True,)]:
        with pytest.raises(ValueError, match="head_hidden_sizes must be positive ints"):
            check_hidden_sizes(bad)
