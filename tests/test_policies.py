"""Fine-tuning policies: layer-wise learning-rate decay, schedules, class and sample weights."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from sktransfer import FineTunedClassifier, FineTunedRegressor

CPU = {"device": "cpu"}


class GroupRates(Callback):
    """Records, per epoch, the learning rate of the group of each block / the head."""

    def __init__(self):
        self.rates = []

    def on_epoch_begin(self, net, **kwargs):
        ids = {}
        for i, block in enumerate(net.module_.blocks):
            for p in block.parameters():
                ids[id(p)] = i
        for p in net.module_.head.parameters():
            ids[id(p)] = "head"
        row = {}
        for group in net.optimizer_.param_groups:
            for p in group["params"]:
                row[ids[id(p)]] = group["lr"]
        self.rates.append(row)


def test_layer_decay_scales_each_block_from_the_top(source_cnn, digits):
    spy = GroupRates()
    FineTunedClassifier(model=source_cnn, freeze_depth=0, lr=0.01, backbone_lr_scale=0.5,
                        penalty="l2_sp",  # no Co-Tuning source head: the blocks' groups only
                        layer_decay=0.5,
                        max_epochs=1, random_state=0, net_kwargs={"callbacks": [spy]},
                        **CPU).fit(digits["X_target"][:64], digits["y_target"][:64])
    rates = spy.rates[0]
    assert rates["head"] == pytest.approx(0.01)
    assert rates[2] == pytest.approx(0.005)      # top block: lr * backbone_lr_scale
    assert rates[1] == pytest.approx(0.0025)     # one below: * 0.5
    assert rates[0] == pytest.approx(0.00125)    # two below: * 0.5 ** 2


def test_layer_decay_skips_frozen_blocks(source_cnn, digits):
    spy = GroupRates()
    FineTunedClassifier(model=source_cnn, freeze_depth=1, lr=0.01, layer_decay=0.5,
                        penalty="l2_sp",
                        backbone_lr_scale=0.1,
                        max_epochs=1, random_state=0, net_kwargs={"callbacks": [spy]},
                        **CPU).fit(digits["X_target"][:64], digits["y_target"][:64])
    assert 0 not in spy.rates[0] and rates_close(spy.rates[0][1], 0.0005)


def rates_close(a, b):
    return a == pytest.approx(b)


@pytest.mark.parametrize("schedule, check", [
    ("cosine", lambda r: r[0] == pytest.approx(0.01) and all(np.diff(r) < 0)),
    ("warmup_cosine", lambda r: r[0] < r[1] and r[-1] < max(r)),
])
def test_epoch_schedules(source_cnn, digits, schedule, check):
    spy = GroupRates()
    est = FineTunedClassifier(model=source_cnn, freeze_depth=0, lr=0.01, lr_schedule=schedule,
                              penalty="l2_sp",
                              max_epochs=10,
                              random_state=0, net_kwargs={"callbacks": [spy]}, **CPU)
    est.fit(digits["X_target"][:64], digits["y_target"][:64])
    head = [row["head"] for row in spy.rates]
    assert check(head), head
    assert [row["lr"] for row in est.history_] == pytest.approx(head)


def test_one_cycle_rises_then_falls_per_batch(source_cnn, digits):
    seen = []

    class PerBatch(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                seen.append(max(g["lr"] for g in net.optimizer_.param_groups))

    FineTunedClassifier(model=source_cnn, lr=0.01, lr_schedule="onecycle", max_epochs=4,
                        batch_size=16, random_state=0, net_kwargs={"callbacks": [PerBatch()]},
                        **CPU).fit(digits["X_target"][:64], digits["y_target"][:64])
    peak = int(np.argmax(seen))
    assert seen[0] == pytest.approx(0.01 / 25)
    assert max(seen) == pytest.approx(0.01, rel=0.05)
    assert 0 < peak < len(seen) - 1 and seen[-1] < seen[0]


def test_class_weight_balanced_favours_the_minority(tabular_source):
    X, y = tabular_source["X_target"][:400], tabular_source["y_target"][:400]
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:40]])
    X, y = X[keep], y[keep]
    common = dict(model=tabular_source["net"], max_epochs=10, lr=3e-3, random_state=0, **CPU)
    plain = FineTunedClassifier(**common).fit(X, y).predict_proba(X)
    balanced = FineTunedClassifier(**common, class_weight="balanced").fit(X, y).predict_proba(X)
    assert balanced[:, 1].mean() > plain[:, 1].mean()  # more weight on the minority
    as_dict = FineTunedClassifier(**common, class_weight={0: 1.0, 1: (y == 0).sum() / 40})
    np.testing.assert_allclose(as_dict.fit(X, y).predict_proba(X),
                               FineTunedClassifier(**common, class_weight="balanced")
                               .fit(X, y).predict_proba(X), rtol=1e-4, atol=1e-5)


def test_sample_weight(tabular_source):
    X, y = tabular_source["X_target"][:200], tabular_source["y_target"][:200]
    common = dict(model=tabular_source["net"], max_epochs=5, random_state=0, **CPU)
    none = FineTunedClassifier(**common).fit(X, y).predict_proba(X)
    ones = FineTunedClassifier(**common).fit(X, y, sample_weight=np.ones(200)).predict_proba(X)
    np.testing.assert_array_equal(none, ones)
    heavy = FineTunedClassifier(**common).fit(X, y, sample_weight=np.where(y == 1, 10.0, 1.0))
    assert heavy.predict_proba(X)[:, 1].mean() > none[:, 1].mean()
    reg = FineTunedRegressor(model=tabular_source["net"], max_epochs=3, random_state=0, **CPU)
    reg.fit(X, X[:, 0], sample_weight=np.linspace(0, 1, 200))


@pytest.mark.parametrize("weights, match", [
    (-np.ones(50), "(?i)negative"),
    (np.ones(49), r"sample_weight.shape|\(49,\)"),
])
def test_bad_sample_weight(tabular_source, weights, match):
    X, y = tabular_source["X_target"][:50], tabular_source["y_target"][:50]
    with pytest.raises(ValueError, match=match):
        FineTunedClassifier(model=tabular_source["net"], max_epochs=1, **CPU).fit(
            X, y, sample_weight=weights)


def test_bad_policies(tabular_source):
    X, y = tabular_source["X_target"][:50], tabular_source["y_target"][:50]
    for params, match in [({"layer_decay": 1.5}, "layer_decay"),
                          ({"lr_schedule": "linear"}, "lr_schedule"),
                          ({"class_weight": {7: 2.0}}, "not in y"),
                          ({"class_weight": "uniform"}, "class_weight")]:
        with pytest.raises(ValueError, match=match):
            FineTunedClassifier(model=tabular_source["net"], max_epochs=1, **params,
                                **CPU).fit(X, y)


def _block_states(module):
    return [{k: v.clone() for k, v in b.state_dict().items()} for b in module.blocks]


def test_gradual_unfreezing_schedule_and_frozen_blocks_unchanged(source_cnn, digits):
    import copy

    from sktransfer import split_model

    X, y = digits["X_target"][:96], digits["y_target"][:96]
    est = FineTunedClassifier(model=source_cnn, freeze_depth=0, unfreeze_every=2, max_epochs=8,
                              backbone_lr_scale=1.0, random_state=0, **CPU).fit(X, y)
    assert [r["trainable_from"] for r in est.history_] == [3, 3, 2, 2, 1, 1, 0, 0]
    # with 2 epochs only the head trains: every block stays as pretrained
    before = _block_states(split_model(copy.deepcopy(source_cnn)))
    short = FineTunedClassifier(model=source_cnn, freeze_depth=0, unfreeze_every=2, max_epochs=2,
                                backbone_lr_scale=1.0, random_state=0, **CPU).fit(X, y)
    after = _block_states(short.module_)
    assert all(torch.equal(b[k], a[k]) for b, a in zip(before, after) for k in b)
    # with 4 epochs the top block has moved, the others have not
    mid = FineTunedClassifier(model=source_cnn, freeze_depth=0, unfreeze_every=2, max_epochs=4,
                              backbone_lr_scale=1.0, random_state=0, **CPU).fit(X, y)
    after = _block_states(mid.module_)
    assert not all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(torch.equal(before[i][k], after[i][k]) for i in (0, 1) for k in before[i])


def test_gradual_unfreezing_stops_at_freeze_depth(source_cnn, digits):
    est = FineTunedClassifier(model=source_cnn, freeze_depth=2, unfreeze_every=1, max_epochs=4,
                              random_state=0, **CPU).fit(digits["X_target"][:64],
                                                         digits["y_target"][:64])
    assert [r["trainable_from"] for r in est.history_] == [3, 2, 2, 2]


def test_augment_applies_to_training_batches_only(source_cnn, digits, capsys):
    seen = []

    def flip(batch):
        seen.append(len(batch))
        return torch.flip(batch, dims=[-1])

    X, y = digits["X_target"][:100], digits["y_target"][:100]
    est = FineTunedClassifier(model=source_cnn, freeze_depth=1, augment=flip, max_epochs=2,
                              early_stopping=True, validation_fraction=0.2, batch_size=40,
                              verbose=1, random_state=0, **CPU).fit(X, y)
    assert "augment changes the inputs" in capsys.readouterr().out
    assert sum(seen) == 2 * 80  # the 80 training samples, each epoch; no validation
    n = len(seen)
    est.predict(X)
    assert len(seen) == n  # never at predict time
    same = FineTunedClassifier(model=source_cnn, freeze_depth=1, augment=flip, max_epochs=2,
                               early_stopping=True, validation_fraction=0.2, batch_size=40,
                               random_state=0, **CPU).fit(X, y)
    np.testing.assert_array_equal(same.predict_proba(X), est.predict_proba(X))
    plain = FineTunedClassifier(model=source_cnn, freeze_depth=1, max_epochs=2,
                                early_stopping=True, validation_fraction=0.2, batch_size=40,
                                random_state=0, **CPU).fit(X, y)
    assert not np.allclose(plain.predict_proba(X), est.predict_proba(X))
