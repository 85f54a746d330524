"""``BlockNet`` and sktransfer's global pooling (``_blocknet.py``)."""

import pickle

import pytest
import torch
from torch import nn

from sktransfer import BlockNet
from sktransfer._blocknet import GlobalPool, pool_features


def three_blocks():
    torch.manual_seed(0)
    blocks = [(f"b{i}", nn.Sequential(nn.Linear(4, 4), nn.ReLU())) for i in range(3)]
    return BlockNet(blocks, head=nn.Linear(4, 2), head_name="out")


def test_forward_runs_blocks_then_head_and_features_stop_anywhere():
    net = three_blocks().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        h = x
        for block in net.blocks:
            h = block(h)
        assert torch.equal(net(x), net.head(h))
        assert torch.equal(net.forward_features(x), h)
        first = net.blocks[0](x)
        assert torch.equal(net.forward_features(x, stop=1), first)
        # from block 1 on, as when training on cached outputs of a frozen block 0
        assert torch.equal(net.forward_features(first, start=1), h)
        net.start_block = 1
        assert torch.equal(net(first), net.head(h))


def test_an_encoder_has_no_head_and_parameter_free_necks_are_enforced():
    encoder = BlockNet([("b0", nn.Linear(4, 3))])
    assert not encoder.has_head and encoder.head_name is None
    assert encoder(torch.zeros(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="pre_head must be parameter-free.*put it in a block"):
        BlockNet([("b0", nn.Linear(4, 3))], pre_head=nn.Linear(3, 3))
    with pytest.raises(ValueError, match="needs at least one block or a head"):
        BlockNet([])


def test_blocknet_pickles_with_its_names():
    net = three_blocks()
    again = pickle.loads(pickle.dumps(net))
    assert again.block_names == ["b0", "b1", "b2"] and again.head_name == "out"
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_pool_features():
    maps = torch.randn(2, 3, 4, 5)
    assert torch.equal(pool_features(maps, "avg"), maps.mean(dim=(2, 3)))
    assert torch.equal(pool_features(maps, "max"), maps.amax(dim=(2, 3)))
    assert pool_features(maps, "flatten").shape == (2, 60)
    tokens = torch.randn(2, 7, 3)  # (n, tokens, dim): the feature axis is last
    assert torch.equal(pool_features(tokens, "avg", channels_last=True), tokens.mean(dim=1))
    flat = torch.randn(2, 3)
    assert pool_features(flat, "max") is flat  # vectors pass as they are


def test_global_pool_module():
    maps = torch.randn(2, 3, 4, 4)
    pool = GlobalPool("max")
    assert torch.equal(pool(maps), maps.amax(dim=(2, 3)))
    assert not list(pool.parameters()) and "pooling='max'" in repr(pool)
