"""The pretext tasks of TabularPretrainer: corruption, losses (``_pretext``)."""

import numpy as np
import pytest
import torch

from sktransfer._pretext import _corrupt, _masked_loss, _nt_xent, _ReplacementPool


def test_the_masked_task_learns_nothing_from_constant_columns_and_missing_cells():
    X = torch.tensor([[0.0, 5.0, 1.0],
                      [1.0, 5.0, np.nan],
                      [2.0, 5.0, 3.0],
                      [np.nan, 5.0, 4.0]])
    pool = _ReplacementPool.from_rows(X)
    assert pool.learnable.tolist() == [True, False, True]
    weight = pool.loss_weight(X)
    np.testing.assert_array_equal(weight.numpy(), [[1, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 1]])
    rng = torch.Generator().manual_seed(0)
    y_pred = {"values": torch.randn(4, 3, generator=rng),
              "mask_logits": torch.randn(4, 3, generator=rng),
              "target": torch.randn(4, 3, generator=rng),
              "mask": (torch.rand(4, 3, generator=rng) < 0.5).float(), "weight": weight}
    mse, bce = _masked_loss(y_pred)
    # predictions for cells without a loss change nothing
    changed = {**y_pred, "values": y_pred["values"] + 10 * (1 - weight),
               "mask_logits": y_pred["mask_logits"] - 10 * (1 - weight)}
    assert _masked_loss(changed) == (mse, bce)
    # the others count, averaged over the cells that have a loss
    diff = (y_pred["values"] - y_pred["target"])[weight.bool()]
    assert mse.item() == pytest.approx((diff ** 2).mean().item(), rel=1e-6)
    one = {**y_pred, "values": y_pred["values"] + torch.eye(4, 3)}
    assert _masked_loss(one)[0] != mse


def test_missing_cells_are_always_replaced_by_observed_values():
    X = torch.tensor([[1.0, np.nan, np.nan],
                      [2.0, 7.0, np.nan],
                      [np.nan, np.nan, np.nan],
                      [3.0, 8.0, np.nan],
                      [np.nan, 9.0, np.nan]])
    pool = _ReplacementPool.from_rows(X)
    assert pool.n_observed.tolist() == [3, 3, 0]
    x = X[torch.arange(2000) % 5]
    out, mask = _corrupt(x, pool, 0.1, torch.Generator().manual_seed(0))
    missing = torch.isnan(x)
    # a missing cell is always corrupted, with an observed value of its column, drawn
    # uniformly among them; a column with no observed value stays missing
    assert mask[missing].eq(1).all()
    for j, values in [(0, [1.0, 2.0, 3.0]), (1, [7.0, 8.0, 9.0])]:
        drawn = out[missing[:, j], j].numpy()
        counts = np.array([(drawn == v).sum() for v in values])
        assert counts.sum() == len(drawn)
        np.testing.assert_allclose(counts / len(drawn), 1 / 3, atol=0.04)
    assert torch.isnan(out[:, 2]).all()
    # observed cells are corrupted at mask_rate only, never into NaN
    assert not torch.isnan(out[~missing]).any()
    assert 0.07 < mask[~missing].mean().item() < 0.13


def test_corruption_without_missing_cells_draws_whole_rows_at_mask_rate():
    X = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    pool = _ReplacementPool.from_rows(X)
    assert pool.n_observed is None
    x = X[torch.arange(3000) % 4]
    out, mask = _corrupt(x, pool, 0.3, torch.Generator().manual_seed(0))
    assert 0.27 < mask.mean().item() < 0.33
    # kept cells are unchanged; a replaced cell holds a value of its own column
    assert torch.equal(out[mask == 0], x[mask == 0])
    for j in range(3):
        assert set(out[:, j].tolist()) <= set(X[:, j].tolist())


def test_nt_xent_is_low_for_twins_and_high_for_strangers():
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=rng)
    same = _nt_xent(z, z, temperature=0.1)
    shuffled = _nt_xent(z, z[torch.randperm(16, generator=rng)], temperature=0.1)
    assert same.item() < 0.1 < shuffled.item()
