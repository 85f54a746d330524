"""The adaptation methods (``_adapt.py``): what each one trains, and that it changes the fit.

WiSE-FT (``wise``), BitFit / norm-only (``train_params``), LoRA (``adapter``),
the BatchNorm policy (``bn``), surgical fine-tuning (``train_blocks``) and the
feature penalties (``penalty="bss"`` / ``"co_tuning"``) of the fine-tuning
estimators, alone and with the frozen-prefix cache, gradual unfreezing,
``layer_decay``, accelerate, pickling and ``save_weights``.
"""

import copy
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from sktransfer import FineTunedClassifier, FineTunedRegressor, split_model
from sktransfer._adapt import check_train_blocks, set_trainable

CPU = {"device": "cpu"}
# explicit training settings: these tests must not depend on the estimators' defaults
# head_init="random": a plain Linear head, which these tests read by name (head.weight)
FIT = dict(freeze_depth=0, max_epochs=3, lr=1e-2, backbone_lr_scale=1.0, batch_size=16,
           penalty=None, head_init="random", random_state=0, **CPU)
N_BLOCKS = 5


def bn_cnn(n_classes=5):
    """Blocks: conv | bn-relu | conv | bn-relu-pool-flatten | linear-relu; head Linear."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(4), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32), nn.ReLU(),
        nn.Linear(32, n_classes),
    )


@pytest.fixture(scope="module")
def source(digits):
    from .conftest import train_plain

    return train_plain(bn_cnn(), digits["X_source"][:1000], digits["y_source"][:1000],
                       epochs=3)


@pytest.fixture(scope="module")
def data(digits):
    return digits["X_target"][:96], digits["y_target"][:96]


def pretrained_state(net):
    """The source's tensors under the fitted module's names (``blocks.i.…``)."""
    return {k: v.clone() for k, v in split_model(copy.deepcopy(net)).state_dict().items()
            if k.startswith("blocks.")}


def moved(clf, net):
    """Names of the pretrained tensors that ``fit`` changed (parameters and buffers)."""
    after = clf.module_.state_dict()
    return {k for k, v in pretrained_state(net).items() if not torch.equal(v, after[k])}


def fit(net, X, y, cls=FineTunedClassifier, **params):
    return cls(model=net, **{**FIT, **params}).fit(X, y)


@pytest.fixture(scope="module")
def plain(source, data):
    """Plain fine-tuning with the same settings: the reference every method must differ from."""
    return fit(source, *data)


def differs(a, b, X):
    return not np.allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-6)


class CountTrainable(Callback):
    """Records the trainable parameter names when training starts."""

    def on_train_begin(self, net, **kwargs):
        self.names = [n for n, p in net.module_.named_parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in net.module_.parameters() if p.requires_grad)


# -- which blocks train ---------------------------------------------------------------
def test_check_train_blocks_suffix_set_and_errors():
    assert check_train_blocks(None, 2, 5) == [2, 3, 4]
    assert check_train_blocks(None, "all", 5) == []
    assert check_train_blocks([3, -1, 0], 0, 5) == [0, 3, 4]
    with pytest.raises(ValueError, match="set freeze_depth=0 with train_blocks"):
        check_train_blocks([0], 1, 5)
    with pytest.raises(ValueError, match="freeze_depth='all'"):
        check_train_blocks([0], "all", 5)
    with pytest.raises(ValueError, match="unfreeze_every=2 unfreezes blocks from the top"):
        check_train_blocks([0], 0, 5, unfreeze_every=2)
    with pytest.raises(ValueError, match="the model has 5 blocks"):
        check_train_blocks([5], 0, 5)
    with pytest.raises(ValueError, match="twice"):
        check_train_blocks([1, -4], 0, 5)
    with pytest.raises(TypeError, match="block indices"):
        check_train_blocks([True], 0, 5)


def test_surgical_fine_tuning_trains_exactly_the_chosen_blocks(source, data, plain, capsys):
    X, y = data
    clf = fit(source, X, y, train_blocks=[1, 3], verbose=1)
    # the BatchNorm blocks and the head trained; the frozen blocks 2 (between them)
    # and 4 did not, nor block 0 in front (its outputs were cached)
    assert {k.split(".")[1] for k in moved(clf, source)} == {"1", "3"}
    assert clf.train_blocks_ == [1, 3] and clf.freeze_depth_ == 1
    assert "outputs of the 1 frozen blocks for 96 samples" in capsys.readouterr().out
    assert differs(clf, plain, X)
    # frozen blocks between trained ones run in eval mode: the cache gives the same fit
    again = fit(source, X, y, train_blocks=[1, 3], cache_size=0)
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-5)


def test_surgical_conflicts_raise_clearly(source, data):
    with pytest.raises(ValueError, match="set freeze_depth=0 with train_blocks"):
        fit(source, *data, train_blocks=[0], freeze_depth=2)
    with pytest.raises(ValueError, match="use freeze_depth for gradual unfreezing"):
        fit(source, *data, train_blocks=[0], unfreeze_every=1)


# -- which parameters train -------------------------------------------------------------
def test_set_trainable_selects_biases_norms_or_adapters():
    block = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))
    assert set_trainable(block, "bias") == 3 + 3  # Linear bias, LayerNorm bias
    assert [n for n, p in block.named_parameters() if p.requires_grad] == ["0.bias", "1.bias"]
    assert set_trainable(block, "norm") == 6
    assert [n for n, p in block.named_parameters() if p.requires_grad] == ["1.weight", "1.bias"]
    assert set_trainable(block, "all") == sum(p.numel() for p in block.parameters())
    block.lora_A = nn.Linear(3, 1, bias=False)  # named like peft's adapters
    assert set_trainable(block, "all", adapter="lora") == 3


@pytest.mark.parametrize("train_params, allowed", [
    ("bias", lambda k: k.endswith(".bias") or "running" in k or "num_batches" in k),
    ("norm", lambda k: k.split(".")[1] in {"1", "3"}),  # the BatchNorm blocks
])
def test_bitfit_and_norm_only_leave_everything_else_bit_identical(source, data, plain,
                                                                   train_params, allowed):
    X, y = data
    counter = CountTrainable()
    clf = fit(source, X, y, train_params=train_params, net_kwargs={"callbacks": [counter]})
    changed = moved(clf, source)
    assert changed and all(allowed(k) for k in changed), changed
    assert any(k.endswith("weight") for k in changed) == (train_params == "norm")
    head = sum(p.numel() for p in clf.module_.head.parameters())
    if train_params == "bias":  # conv 8 + bn 8 + conv 16 + bn 16 + linear 32
        assert counter.numel == head + 8 + 8 + 16 + 16 + 32
    else:  # the two BatchNorm layers' scale and shift
        assert counter.numel == head + 2 * 8 + 2 * 16
    assert differs(clf, plain, X)


def test_norm_only_on_a_network_without_norm_layers_says_so(data):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="have no normalisation layer, so only the head"):
        fit(mlp, *data, train_params="norm")


def test_gradual_unfreezing_keeps_the_parameter_choice(source, data):
    clf = fit(source, *data, train_params="bias", unfreeze_every=1, max_epochs=6)
    assert clf.history_[-1]["trainable_from"] == 0
    changed = moved(clf, source)
    assert any(k.startswith("blocks.0.") for k in changed)
    assert all(not k.endswith("weight") for k in changed), changed


# -- BatchNorm policy -------------------------------------------------------------------
def test_frozen_batchnorm_keeps_the_running_statistics(source, data, plain):
    X, y = data
    clf = fit(source, X, y, bn="frozen")
    changed = moved(clf, source)
    assert not any("running" in k or "num_batches" in k for k in changed)
    assert "blocks.1.0.weight" in changed  # the scale and shift still train
    assert any("running_mean" in k for k in moved(plain, source))
    assert differs(clf, plain, X)


# -- WiSE-FT ----------------------------------------------------------------------------
def test_wise_interpolates_the_trained_tensors_only(source, data, plain):
    X, y = data
    frozen_plain = fit(source, X, y, freeze_depth=2)
    half = fit(source, X, y, freeze_depth=2, wise=0.5)
    theta_s = pretrained_state(source)
    ft, mid = frozen_plain.module_.state_dict(), half.module_.state_dict()
    for k, s in theta_s.items():
        if int(k.split(".")[1]) < 2 or "num_batches" in k:
            assert torch.equal(mid[k], ft[k]), k  # frozen (or integer): untouched
        else:
            torch.testing.assert_close(mid[k], 0.5 * (s + ft[k]))
    for k in ("head.weight", "head.bias"):  # a new head keeps its fine-tuned weights
        assert torch.equal(mid[k], ft[k])
    assert differs(half, frozen_plain, X)
    zero = fit(source, X, y, wise=0.0)
    # back at theta_s, bit for bit (BatchNorm's integer batch counters are kept)
    assert all("num_batches_tracked" in k for k in moved(zero, source))
    assert torch.equal(zero.module_.head.weight, plain.module_.head.weight)


def test_wise_interpolates_a_reused_pretrained_head(source, data):
    X, y = data
    y5 = np.asarray(y) - 5  # the source head's 5 outputs
    zero = fit(source, X, y5, reuse_head=True, wise=0.0)
    assert torch.equal(zero.module_.head.weight, source[-1].weight)


# -- LoRA -------------------------------------------------------------------------------
def test_lora_trains_low_rank_updates_merged_into_the_weights(source, data, plain):
    X, y = data
    counter = CountTrainable()
    clf = fit(source, X, y, adapter="lora", adapter_rank=2, adapter_alpha=4.0,
              net_kwargs={"callbacks": [counter]})
    # while training: the adapters of the two convs and the Linear, and the head
    adapters = [n for n in counter.names if "lora_" in n]
    assert len(adapters) == 6 and set(counter.names) - set(adapters) == {"head.weight",
                                                                         "head.bias"}
    lora = 2 * (1 * 9 + 8) + 2 * (8 * 9 + 16) + 2 * (144 + 32)  # r * (fan_in + out)
    assert counter.numel == lora + 32 * 5 + 5
    # after fit: the same tensors as a plain fit (no adapter left), moved by rank <= 2
    assert clf.module_.state_dict().keys() == plain.module_.state_dict().keys()
    assert not any("lora" in type(m).__module__ for m in clf.module_.modules())
    changed = {k for k in moved(clf, source) if "running" not in k and "num_batches" not in k}
    assert changed == {"blocks.0.weight", "blocks.2.weight", "blocks.4.0.weight"}
    delta = clf.module_.blocks[4][0].weight - pretrained_state(source)["blocks.4.0.weight"]
    assert torch.linalg.matrix_rank(delta.detach()).item() <= 2
    assert differs(clf, plain, X)


def test_lora_with_biases_and_gradual_unfreezing(source, data):
    clf = fit(source, *data, adapter="lora", train_params="bias", unfreeze_every=1,
              freeze_depth=1, max_epochs=5)
    changed = moved(clf, source)
    assert "blocks.4.0.bias" in changed and "blocks.4.0.weight" in changed
    assert not any(k.startswith("blocks.0.") for k in changed)  # freeze_depth=1
    assert "blocks.3.0.weight" not in changed  # a BatchNorm scale: neither adapter nor bias


def test_lora_adapters_train_at_the_heads_rate_without_layer_decay(source, data):
    class Rates(Callback):
        def on_train_begin(self, net, **kwargs):
            names = {id(p): n for n, p in net.module_.named_parameters()}
            self.rates = {names[id(p)]: g["lr"] for g in net.optimizer_.param_groups
                          for p in g["params"]}

    rates = Rates()
    fit(source, *data, adapter="lora", train_params="norm", layer_decay=0.5,
        backbone_lr_scale=0.1, max_epochs=1, net_kwargs={"callbacks": [rates]})
    assert rates.rates["blocks.0.lora_A.default.weight"] == pytest.approx(1e-2)
    assert rates.rates["head.weight"] == pytest.approx(1e-2)
    assert rates.rates["blocks.3.0.weight"] == pytest.approx(1e-3 * 0.5)  # BatchNorm, decayed


def test_a_lora_model_predicts_pickles_and_loads_weights_without_peft(source, data, tmp_path):
    X, y = data
    clf = fit(source, X, y, adapter="lora", wise=0.5)
    expected = clf.predict_proba(X)
    with open(tmp_path / "clf.pkl", "wb") as f:
        pickle.dump(clf, f)
    clf.save_weights(tmp_path / "clf.safetensors")
    with open(tmp_path / "source.pkl", "wb") as f:
        pickle.dump(source, f)
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(f"""
        import pickle, sys
        import numpy as np
        from sktransfer import FineTunedClassifier
        X = np.load({str(tmp_path / 'X.npy')!r})
        clf = pickle.load(open({str(tmp_path / 'clf.pkl')!r}, "rb"))
        source = pickle.load(open({str(tmp_path / 'source.pkl')!r}, "rb"))
        loaded = FineTunedClassifier(model=source, device="cpu").load_weights(
            {str(tmp_path / 'clf.safetensors')!r})
        np.save({str(tmp_path / 'p1.npy')!r}, clf.predict_proba(X))
        np.save({str(tmp_path / 'p2.npy')!r}, loaded.predict_proba(X))
        print("peft" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "p1.npy"), expected)
    np.testing.assert_allclose(np.load(tmp_path / "p2.npy"), expected, rtol=1e-6)


def test_lora_without_peft_says_which_extra_to_install(source, data, monkeypatch):
    X, y = data
    monkeypatch.setitem(sys.modules, "peft", None)  # "import peft" raises ImportError
    with pytest.raises(ImportError, match=r"sktransfer\[lora\]"):
        fit(source, X, y, adapter="lora")


def test_lora_adapts_attention_layers_through_peft():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.mlp = nn.Linear(8, 8)

        def forward(self, x):
            x = x.reshape(len(x), 4, 8)
            return self.mlp(self.attn(x, x, x, need_weights=False)[0]).mean(dim=1)

    torch.manual_seed(0)
    net = split_model(nn.Sequential(Encoder(), nn.Linear(8, 2)))
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 32)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    before = copy.deepcopy(net.blocks[0].state_dict())
    clf = fit(net, X, y, adapter="lora", adapter_rank=2)
    after = clf.module_.blocks[0].state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # the attention's input projection and the Linear; never out_proj's bias
    assert {"attn.in_proj_weight", "mlp.weight"} <= changed
    assert not any(k.endswith("bias") for k in changed)


# -- feature penalties -------------------------------------------------------------------
def test_bss_penalises_the_smallest_singular_value_of_the_batch_features():
    from sktransfer._penalties import bss_penalty

    F = torch.randn(6, 4, requires_grad=True)
    s = np.linalg.svd(F.detach().numpy(), compute_uv=False)
    assert bss_penalty(F).item() == pytest.approx(s[-1] ** 2, rel=1e-5)
    bss_penalty(torch.cat([F, F])).backward()  # repeated singular values: finite gradient
    assert torch.isfinite(F.grad).all()


def test_co_tuning_relationship_is_the_class_mean_of_source_probabilities():
    from sktransfer._penalties import category_relationship, co_tuning_loss, label_joint

    P = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    y = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(label_joint(P, y), [[0.4, 0.1], [0.175, 0.325]])
    R = category_relationship(P, y, 3)
    np.testing.assert_allclose(R, [[0.8, 0.2], [0.35, 0.65], [0.5, 0.5]])  # no class 2
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor(R[[0, 1]], dtype=torch.float32)
    expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    assert co_tuning_loss(logits, target).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("penalty, alpha", [("bss", 0.1), ("co_tuning", 1.0)])
def test_feature_penalties_join_the_training_loss_and_change_the_fit(source, data, plain,
                                                                      penalty, alpha):
    X, y = data
    clf = fit(source, X, y, penalty=penalty, alpha=alpha)
    first = clf.history_[0]  # (BSS soon shrinks the smallest singular value to ~0)
    assert first["train_loss"] > first["train_data_loss"]
    assert differs(clf, plain, X)
    # the pretrained head trained next to the new one is gone after fit
    assert clf.module_.state_dict().keys() == plain.module_.state_dict().keys()
    assert not hasattr(clf.module_, "source_head")
    assert not clf.module_.head._forward_hooks  # no hook left on the fitted network
    pickle.loads(pickle.dumps(clf)).predict(X[:3])


def test_bss_for_regression_and_with_frozen_blocks(tabular_source):
    X, y = tabular_source["X_target"][:200], tabular_source["X_target"][:200, 0]
    plain = fit(tabular_source["net"], X, y, cls=FineTunedRegressor, freeze_depth=1)
    bss = fit(tabular_source["net"], X, y, cls=FineTunedRegressor, freeze_depth=1,
              penalty="bss", alpha=1.0)
    assert not np.allclose(bss.predict(X), plain.predict(X))


def test_co_tuning_needs_a_classifier_and_a_pretrained_classification_head(source, data):
    X, y = data
    with pytest.raises(ValueError, match="it is for FineTunedClassifier"):
        fit(source, X, y.astype(float), cls=FineTunedRegressor, penalty="co_tuning")
    with pytest.raises(ValueError, match="with reuse_head=True there is no new one"):
        fit(source, X, np.asarray(y) - 5, penalty="co_tuning", reuse_head=True)
    encoder = split_model(nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU()),
                          blocks=["0", "1", "2"], head=None)
    with pytest.raises(ValueError, match="has none \\(an encoder\\)"):
        fit(encoder, X, y, penalty="co_tuning")


def test_penalty_auto_is_co_tuning_where_it_can_run_and_l2_sp_elsewhere(source, data):
    X, y = data
    auto = fit(source, X, y, penalty="auto", alpha="auto")
    assert (auto.penalty_, auto.alpha_) == ("co_tuning", 1.0)
    explicit = fit(source, X, y, penalty="co_tuning", alpha=1.0)
    np.testing.assert_allclose(auto.predict_proba(X), explicit.predict_proba(X), atol=1e-6)
    assert differs(auto, fit(source, X, y, penalty="l2_sp", alpha=1e-3), X)
    # a number is the strength of whichever penalty "auto" gives
    assert fit(source, X, y, penalty="auto", alpha=0.5, max_epochs=1).alpha_ == 0.5
    assert fit(source, X, y, penalty="l2_sp", alpha="auto", max_epochs=1).alpha_ == 1e-3
    # nothing pretrained trains, or no new head next to the pretrained one: L2-SP
    for params in ({"freeze_depth": "all"}, {"reuse_head": True}):
        target = np.asarray(y) - 5 if params.get("reuse_head") else y
        est = fit(source, X, target, penalty="auto", alpha="auto", max_epochs=1, **params)
        assert (est.penalty_, est.alpha_) == ("l2_sp", 1e-3), params
    encoder = split_model(nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU()),
                          blocks=["0", "1", "2"], head=None)
    assert fit(encoder, X, y, penalty="auto", max_epochs=1).penalty_ == "l2_sp"
    # a regressor, and a classifier on a fitted multi-output regressor (values, not classes)
    Y = np.column_stack([y, -np.asarray(y)]).astype(float)
    reg = fit(source, X, Y, cls=FineTunedRegressor, penalty="auto", max_epochs=1)
    assert reg.penalty_ == "l2_sp"
    assert fit(reg, X, y, penalty="auto", max_epochs=1).penalty_ == "l2_sp"
    with pytest.raises(ValueError, match="is a fitted regressor"):
        fit(reg, X, y, penalty="co_tuning")
    # a fitted classifier is a source with source classes
    assert fit(auto, X, y, penalty="auto", max_epochs=1).penalty_ == "co_tuning"


# -- with the rest of the estimator --------------------------------------------------------
def test_grid_search_chooses_between_methods_and_clones_them(source, data):
    X, y = data
    est = FineTunedClassifier(model=source, **{**FIT, "max_epochs": 2})
    grid = [{"wise": [0.5]}, {"train_params": ["bias"]}, {"adapter": ["lora"]},
            {"bn": ["frozen"]}, {"train_blocks": [[0], None]},
            {"penalty": ["bss", "co_tuning"]}]
    search = GridSearchCV(est, grid, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 8
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    clone(search.best_estimator_).fit(X, y)  # clone-safe
    assert est.get_params()["train_blocks"] is None


@pytest.mark.parametrize("params", [
    {"adapter": "lora", "wise": 0.5},
    {"penalty": "co_tuning", "alpha": 1.0, "bn": "frozen"},
    {"penalty": "bss", "alpha": 0.1, "train_blocks": [2, 3]},
])
def test_accelerated_fit_equals_plain_fit(source, data, params):
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    X, y = data
    plain = fit(source, X, y, **params)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerated = fit(source, X, y, accelerator=Accelerator(cpu=True), **params)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    np.testing.assert_allclose(accelerated.predict_proba(X), plain.predict_proba(X),
                               atol=1e-5)


def test_bad_adaptation_parameters_raise(source, data):
    for params, match in [({"wise": 1.5}, "'wise' parameter"),
                          ({"train_params": "weights"}, "'train_params' parameter"),
                          ({"adapter": "ia3"}, "'adapter' parameter"),
                          ({"bn": "eval"}, "'bn' parameter"),
                          ({"train_blocks": "0"}, "'train_blocks' parameter"),
                          ({"adapter_rank": 0}, "'adapter_rank' parameter")]:
        with pytest.raises(ValueError, match=match):
            fit(source, *data, **params)
