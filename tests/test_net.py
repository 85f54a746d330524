"""The private skorch net pieces (``_net.py``): batches, TransferNet's parameter groups,
objective and train/eval modes."""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import split_model
from sktransfer._blocks import freeze_blocks
from sktransfer._inputs import InputData
from sktransfer._net import BatchDataset, BatchLoader, TransferNet, identity_collate


def three_block_net(depth=0):
    torch.manual_seed(0)
    bnet = split_model(nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)))
    freeze_blocks(bnet, depth)
    return bnet


def make_net(depth=0, **params):
    net = TransferNet(three_block_net(depth), freeze_depth=depth, criterion=nn.CrossEntropyLoss,
                      optimizer=torch.optim.SGD, lr=0.1, device="cpu", **params)
    return net.initialize()


def rates(net):
    """{block index or "head": learning rate} from the optimizer's groups."""
    module = net.module_
    owner = {id(p): i for i, b in enumerate(module.blocks) for p in b.parameters()}
    owner.update({id(p): "head" for p in module.head.parameters()})
    return {owner[id(p)]: g["lr"] for g in net.optimizer_.param_groups for p in g["params"]}


def test_groups_head_at_lr_backbone_scaled_frozen_left_out():
    net = make_net(depth=1, backbone_lr_scale=0.1)
    assert rates(net) == pytest.approx({"head": 0.1, 1: 0.01, 2: 0.01})


def test_layer_decay_gives_each_block_its_rate_from_the_top():
    net = make_net(backbone_lr_scale=0.5, layer_decay=0.5)
    assert rates(net) == pytest.approx({"head": 0.1, 2: 0.05, 1: 0.025, 0: 0.0125})


def test_with_nothing_new_every_parameter_trains_at_the_backbone_rate():
    net = make_net(backbone_lr_scale=0.1, new_prefixes=())
    assert list(rates(net).values()) == pytest.approx([0.01] * 4)


def test_sample_weights_weigh_the_per_sample_losses():
    net = make_net(weighted=True, criterion__reduction="none")
    torch.manual_seed(1)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    per_sample = nn.functional.cross_entropy(logits, y, reduction="none")
    loss = net.get_loss(logits, (y, w), training=False)
    assert loss.item() == pytest.approx(((per_sample * w).sum() / w.sum()).item(), rel=1e-6)


def test_the_penalty_joins_training_losses_only():
    net = make_net(penalty="l2", alpha=0.5)
    net.history.new_epoch()
    net.history.new_batch()
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    plain = net.get_loss(logits, y, training=False)
    trained = net.get_loss(logits, y, training=True)
    reg = 0.5 * sum((p.detach() ** 2).sum() for p in net.module_.parameters())
    assert trained.item() == pytest.approx(plain.item() + 0.5 * reg.item(), rel=1e-5)
    assert net.history[-1, "batches", -1, "train_data_loss"] == pytest.approx(plain.item())


def test_frozen_blocks_stay_in_eval_mode_in_training():
    net = make_net(depth=2)
    net._set_training(True)
    assert [b.training for b in net.module_.blocks] == [False, False, True]
    assert net.module_.head.training
    net._set_training(False)
    assert not any(m.training for m in net.module_.modules())


class _SubsetOfOwn(torch.utils.data.Subset):
    """A Subset subclass (as the fit's augmented training rows): cut through its own
    ``__getitems__``."""

    def __getitems__(self, indices):
        Xb, yb = super().__getitems__(indices)
        return Xb * 2, yb


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("subset", [torch.utils.data.Subset, _SubsetOfOwn])
def test_batch_loader_gives_a_data_loaders_batches_from_the_same_draws(shuffle, drop_last,
                                                                       subset):
    X, y = torch.randn(23, 3), torch.arange(23)
    rows = np.array([0, 2, 3, 5, 7, 8, 9, 11, 12, 13, 15, 16, 18, 20, 22])
    dataset = subset(BatchDataset(X, y), rows)
    kwargs = dict(batch_size=4, shuffle=shuffle, drop_last=drop_last,
                  collate_fn=identity_collate)
    loaders = [torch.utils.data.DataLoader(dataset, **kwargs), BatchLoader(dataset, **kwargs)]
    epochs, after = [], []
    for loader in loaders:
        torch.manual_seed(0)
        epochs.append([[(Xb.tolist(), yb.tolist()) for Xb, yb in loader] for _ in range(2)])
        after.append(torch.rand(3))  # the generator is left where DataLoader leaves it
        assert len(loader) == len(epochs[-1][0])
    assert epochs[0] == epochs[1]
    assert torch.equal(after[0], after[1])
    assert epochs[1][0] != epochs[1][1] or not shuffle


def test_batch_dataset_hands_out_whole_batches():
    X = torch.arange(12.0).reshape(6, 2)
    y, w = torch.arange(6), torch.linspace(0, 1, 6)
    Xb, (yb, wb) = BatchDataset(X, y, sample_weight=w).__getitems__([4, 1])
    assert Xb.tolist() == [[8.0, 9.0], [2.0, 3.0]] and yb.tolist() == [4, 1]
    assert wb.tolist() == pytest.approx([0.8, 0.2])
    # images are made into float batches (and preprocessed) only when asked for
    images = np.random.RandomState(0).randint(0, 256, size=(3, 5, 5, 3)).astype(np.uint8)
    Xb, yb = BatchDataset(InputData(images, "uint8")).__getitems__([2, 0])
    assert Xb.shape == (2, 3, 5, 5) and Xb.dtype == torch.float32 and yb.tolist() == [0, 0]
    assert Xb[0].permute(1, 2, 0).mul(255).round().byte().numpy().tolist() == images[2].tolist()
