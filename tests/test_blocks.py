"""Split rules and freezing (``_blocks.py``): which blocks a network has, which train."""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FeatureExtractorTransformer, list_blocks, split_model
from sktransfer._blocks import (
    check_freeze_depth,
    freeze_all,
    freeze_blocks,
    keep_frozen_in_eval,
    set_trainable_from,
    unfreeze_depth,
)

RNG = np.random.RandomState(0)
X_TAB = RNG.normal(size=(10, 4)).astype(np.float32)


def fx_for(model, **kwargs):
    kwargs.setdefault("device", "cpu")
    return FeatureExtractorTransformer(model=model, **kwargs)


def assert_close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2))


# --------------------------------------------------------------------------
# split rules
# --------------------------------------------------------------------------


def test_sequential_rule_blocks_start_at_each_parametrised_child():
    # the API contract's example: Linear, ReLU, Linear, ReLU, Linear -> 2 blocks + head
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    bnet = split_model(net)
    assert bnet.block_names == ["0-1", "2-3"] and bnet.head is net[4]
    assert bnet.split_kind == "sequential"
    # the BatchNorm starts a block of its own; parameter-free children join the one before
    assert split_model(bn_net()).block_names == ["0", "1-3", "4-5", "6-7"]


def test_sequential_with_parametrised_layers_after_the_last_linear_has_no_head():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.BatchNorm1d(2))
    bnet = split_model(net)
    assert not bnet.has_head and bnet.block_names == ["0-1", "2", "3"]


def test_a_trailing_parameter_free_child_becomes_the_post_head():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    bnet = split_model(net)
    x = torch.as_tensor(X_TAB)
    with torch.no_grad():
        assert_close(bnet(x).numpy(), net(x).numpy())
    assert isinstance(bnet.post_head, nn.Softmax)


def test_explicit_split_shares_the_models_parameters():
    net = bn_net()
    bnet = split_model(net, blocks=[["0", "1", "2"], "4"], head="8")
    assert bnet.block_names == ["0-2", "4"] and bnet.head_name == "8"
    assert bnet.blocks[1] is net[4] and bnet.head is net[8]


# --------------------------------------------------------------------------
# the default split of arbitrary modules is checked against their forward
# --------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = h + torch.relu(self.fc2(h))  # not "children in order"
        return self.out(h)


class InOrder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(8, 6)
        self.act2 = nn.Tanh()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


def test_default_split_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"Residual.*does not reproduce its forward.*split_model"):
        fx_for(Residual()).fit(X_TAB)


def test_explicit_split_of_residual_module_works():
    net = Residual()
    fx = fx_for(split_model(net, blocks=["fc1"], head=None)).fit(X_TAB)
    with torch.no_grad():
        assert_close(fx.transform(X_TAB), net.fc1(torch.as_tensor(X_TAB)).numpy())


def test_default_split_in_order_module_works():
    net = InOrder()
    fx = fx_for(net).fit(X_TAB)
    assert fx.blocks_ == ["fc1-act1", "fc2-act2"]
    x = torch.as_tensor(X_TAB)
    with torch.no_grad():
        expected = net.act2(net.fc2(net.act1(net.fc1(x)))).numpy()
        first = net.act1(net.fc1(x)).numpy()
    assert_close(fx.transform(X_TAB), expected)
    assert_close(fx_for(net, layer="fc1-act1").fit(X_TAB).transform(X_TAB), first)
    assert list_blocks(net)["name"].tolist() == ["fc1-act1", "fc2-act2"]


# --------------------------------------------------------------------------
# freezing
# --------------------------------------------------------------------------


def test_freeze_blocks_freezes_exactly_the_leading_blocks():
    bnet = split_model(bn_net())
    names = freeze_blocks(bnet, 2)
    assert names == {"blocks.0.weight", "blocks.0.bias", "blocks.1.0.weight", "blocks.1.0.bias"}
    trainable = [all(p.requires_grad for p in b.parameters()) for b in bnet.blocks]
    assert trainable == [False, False, True, True]
    assert all(p.requires_grad for p in bnet.head.parameters())


def test_freeze_all_freezes_and_evaluates_everything():
    bnet = freeze_all(split_model(bn_net()).train())
    assert not any(p.requires_grad for p in bnet.parameters())
    assert not any(m.training for m in bnet.modules())


def test_frozen_blocks_stay_in_eval_mode_while_the_rest_trains():
    bnet = split_model(bn_net()).train()
    keep_frozen_in_eval(bnet, 2)
    assert [b.training for b in bnet.blocks] == [False, False, True, True]
    before = bnet.blocks[1][0].running_mean.clone()
    bnet(torch.as_tensor(X_TAB))  # BatchNorm of a frozen block: statistics do not move
    assert torch.equal(bnet.blocks[1][0].running_mean, before)


@pytest.mark.parametrize("floor, every, expected", [
    (0, 1, [4, 3, 2, 1, 0, 0]),
    (0, 2, [4, 4, 3, 3, 2, 2]),
    (2, 1, [4, 3, 2, 2, 2, 2]),  # never below freeze_depth
])
def test_unfreeze_depth_moves_one_block_every_period(floor, every, expected):
    assert [unfreeze_depth(epoch, 4, floor, every) for epoch in range(1, 7)] == expected


def test_set_trainable_from_leaves_the_blocks_below_the_floor_alone():
    bnet = split_model(bn_net())
    freeze_blocks(bnet, 1)
    set_trainable_from(bnet, floor=1, depth=3)
    assert [all(p.requires_grad for p in b.parameters()) for b in bnet.blocks] == [
        False, False, False, True]
    set_trainable_from(bnet, floor=1, depth=1)
    assert [all(p.requires_grad for p in b.parameters()) for b in bnet.blocks] == [
        False, True, True, True]


def test_check_freeze_depth():
    assert check_freeze_depth("all", 4) == 4
    assert check_freeze_depth(np.int64(2), 4) == 2 and isinstance(check_freeze_depth(2, 4), int)
    with pytest.raises(ValueError, match=r"freeze_depth=5 is out of range: the model has 4 "
                                         r"blocks, so use 0\.\.4 or 'all'"):
        check_freeze_depth(5, 4)
    with pytest.raises(TypeError, match="got bool True"):
        check_freeze_depth(True, 4)
