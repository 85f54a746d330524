"""``list_blocks`` (``_inspect.py``): what each ``freeze_depth`` freezes, before any fit."""

import pytest
import torch
from torch import nn

from sktransfer import list_blocks, split_model


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def test_one_row_per_block_with_sizes_shapes_and_the_freeze_depth_that_freezes_it():
    blocks = list_blocks(mlp())
    assert blocks.columns.tolist() == ["index", "name", "n_params", "output_shape", "frozen_by"]
    assert blocks["name"].tolist() == ["0-1", "2-3"]
    assert blocks["n_params"].tolist() == [4 * 8 + 8, 8 * 6 + 6]
    # the input shape comes from the first Linear: no input_shape needed
    assert blocks["output_shape"].tolist() == [(8,), (6,)]
    assert blocks["frozen_by"].tolist() == ["freeze_depth>=1", "freeze_depth>=2"]
    assert blocks.attrs["head"] == {"name": "4", "n_params": 6 * 2 + 2}
    assert blocks.attrs["split_kind"] == "sequential"


def test_output_shapes_of_a_cnn_need_an_input_shape():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 3))
    assert list_blocks(cnn)["output_shape"].isna().all()
    shapes = list_blocks(cnn, input_shape=(1, 8, 8))["output_shape"].tolist()
    assert shapes == [(4, 6, 6), (96,)]


def test_lazy_layers_have_no_shape_and_count_no_parameters_yet():
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    blocks = list_blocks(net, input_shape=(5,))
    assert blocks["n_params"].tolist() == [0] and blocks["output_shape"].isna().all()


def test_an_encoder_has_no_head_and_the_users_model_is_left_alone():
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    encoder = split_model(net, blocks=["0", "2"], head=None)
    blocks = list_blocks(encoder)
    assert blocks.attrs["head"] == {"name": None, "n_params": 0}
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_an_input_shape_the_blocks_cannot_take_is_a_clear_error():
    with pytest.raises(ValueError, match=r"input of shape \(5,\).*takes samples of shape \(4,\)"):
        list_blocks(mlp(), input_shape=(5,))
