"""TabularPretrainer: self-supervised pretraining, transfer to the other estimators."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FeatureExtractorTransformer, FineTunedClassifier, list_blocks
from sktransfer import TabularPretrainer
from sktransfer._pretrain import _build_encoder

from .conftest import InterruptAt

CPU = {"device": "cpu"}
# small and quick, and (checked) enough to learn something on digits
PRETRAIN = {"hidden_layer_sizes": (64, 64), "max_epochs": 20, "lr": 3e-3, **CPU}
METHODS = ("masked", "contrastive")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread is as fast, and robust when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def table():
    """Digits as a 64-column table, constant columns dropped; 25% held out."""
    d = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        d.data, d.target, test_size=0.25, stratify=d.target, random_state=0
    )
    keep = X_train.std(axis=0) > 0
    return X_train[:, keep], X_test[:, keep], y_train, y_test


@pytest.fixture(scope="module")
def pretrained(table):
    """One pretrainer per method, fitted on all training rows (no labels), seed 0."""
    X_train = table[0]
    return {m: TabularPretrainer(method=m, random_state=0, **PRETRAIN).fit(X_train)
            for m in METHODS}


def few_labels(y, per_class, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate([
        rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)
    ])


def logreg_accuracy(F_train, y_train, F_test, y_test):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return model.fit(F_train, y_train).score(F_test, y_test)


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_lowers_the_self_supervised_loss(pretrained, method):
    pre = pretrained[method]
    losses = [row["train_loss"] for row in pre.history_]
    assert pre.n_iter_ == len(losses) == PRETRAIN["max_epochs"]
    assert [row["epoch"] for row in pre.history_] == list(range(1, pre.n_iter_ + 1))
    assert losses[-1] < losses[0], losses
    if method == "contrastive":
        # NT-Xent over 2 x 128 views is log(255) = 5.54 for embeddings that carry
        # no information (and not far from it at the first epoch's end)
        assert losses[-1] < np.log(2 * 128 - 1) - 0.5, losses
    else:
        assert losses[-1] < 0.8 * losses[0], losses
        # the two parts are recorded, and the loss is their sum
        last = pre.history_[-1]
        assert last["train_loss"] == pytest.approx(
            last["train_value_mse"] + last["train_mask_bce"], rel=1e-5)
        assert pre.history_[-1]["train_value_mse"] < pre.history_[0]["train_value_mse"]


@pytest.mark.parametrize("method", METHODS)
def test_embeddings_beat_an_untrained_encoder_with_few_labels(table, pretrained, method):
    """5 labels per class, 3 seeds (pretraining and label draw): a logistic
    regression on the embeddings beats one on an untrained encoder's."""
    X_train, X_test, y_train, y_test = table
    gains = []
    for seed in range(3):
        pre = pretrained[method] if seed == 0 else TabularPretrainer(
            method=method, random_state=seed, **PRETRAIN).fit(X_train)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            untrained = _build_encoder(pre.mean_, pre.scale_, PRETRAIN["hidden_layer_sizes"])
        rand = FeatureExtractorTransformer(model=untrained, **CPU).fit(X_train)
        idx = few_labels(y_train, 5, seed)
        acc_pre = logreg_accuracy(pre.transform(X_train[idx]), y_train[idx],
                                  pre.transform(X_test), y_test)
        acc_rand = logreg_accuracy(rand.transform(X_train[idx]), y_train[idx],
                                   rand.transform(X_test), y_test)
        gains.append(acc_pre - acc_rand)
    # measured: mean gains of about 0.2 for both methods
    assert np.mean(gains) > 0.08, gains
    assert min(gains) > 0, gains


def test_grid_search_over_freeze_depth_leaves_the_pretrainer_unchanged(table, pretrained):
    X_train, X_test, y_train, y_test = table
    pre = pretrained["masked"]
    before = {k: v.clone() for k, v in pre.encoder_.state_dict().items()}
    embeddings = pre.transform(X_test[:20])
    idx = few_labels(y_train, 6, 0)
    clf = FineTunedClassifier(model=pre, max_epochs=15, lr=1e-2, random_state=0, **CPU)
    search = GridSearchCV(clf, {"freeze_depth": [0, 1, "all"]}, cv=2).fit(
        X_train[idx], y_train[idx])
    assert search.best_params_["freeze_depth"] in (0, 1, "all")
    assert search.score(X_test, y_test) > 0.5
    best = search.best_estimator_
    assert best.blocks_ == ["layer0", "layer1"]
    # fine-tuning works on a copy: the pretrainer's encoder is bit-for-bit unchanged
    for k, v in pre.encoder_.state_dict().items():
        assert torch.equal(v, before[k]), k
    np.testing.assert_array_equal(pre.transform(X_test[:20]), embeddings)
    # freeze_depth=1: layer0 (standardisation included) keeps the pretrained weights
    frozen = FineTunedClassifier(model=pre, freeze_depth=1, max_epochs=3,
                                 random_state=0, **CPU).fit(X_train[idx], y_train[idx])
    for k, v in frozen.module_.blocks[0].state_dict().items():
        assert torch.equal(v, pre.encoder_.blocks[0].state_dict()[k]), k
    assert not torch.equal(frozen.module_.blocks[1][0].weight, pre.encoder_.blocks[1][0].weight)


def test_feature_extractor_and_list_blocks(table, pretrained):
    X_train = table[0]
    pre = pretrained["contrastive"]
    fx = FeatureExtractorTransformer(model=pre, **CPU).fit(X_train)
    np.testing.assert_allclose(fx.transform(X_train), pre.transform(X_train),
                               rtol=1e-5, atol=1e-6)
    # the same batches give the same floats
    fx.set_params(batch_size=pre.batch_size)
    np.testing.assert_array_equal(fx.transform(X_train), pre.transform(X_train))
    first = FeatureExtractorTransformer(model=pre, layer="layer0", **CPU).fit(X_train)
    assert first.transform(X_train[:5]).shape == (5, 64)
    blocks = list_blocks(pre)
    assert blocks["name"].tolist() == ["layer0", "layer1"]
    assert blocks["output_shape"].tolist() == [(64,), (64,)]
    assert blocks.attrs["head"]["n_params"] == 0  # an encoder: no head


def test_transform_output(table, pretrained):
    X_train = table[0]
    pre = pretrained["masked"]
    emb = pre.transform(X_train)
    assert emb.shape == (len(X_train), 64) and emb.dtype == np.float32
    # batched: the result does not depend on how the rows are split into batches
    np.testing.assert_allclose(pre.transform(X_train[:7]), emb[:7], rtol=1e-5, atol=1e-6)
    names = pre.get_feature_names_out()
    assert names[0] == "embedding_0" and len(names) == 64
    df = pre.set_output(transform="pandas").transform(X_train[:3])
    pre.set_output(transform="default")
    assert list(df.columns) == list(names)


def test_same_random_state_gives_identical_embeddings(table):
    X = table[0][:300]
    kw = {"method": "contrastive", "hidden_layer_sizes": (16,), "max_epochs": 3, **CPU}
    a = TabularPretrainer(random_state=3, **kw).fit(X)
    b = TabularPretrainer(random_state=3, **kw).fit(X)
    c = TabularPretrainer(random_state=4, **kw).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert [r["train_loss"] for r in a.history_] == [r["train_loss"] for r in b.history_]
    assert not np.array_equal(a.transform(X), c.transform(X))
    # a second fit starts again: same result as a fresh estimator
    np.testing.assert_array_equal(a.fit(X).transform(X), b.transform(X))


def test_early_stopping_restores_the_best_epoch(table, capsys):
    X = table[0][:400]
    kw = {"hidden_layer_sizes": (16,), "early_stopping": True, "random_state": 0, **CPU}
    # tol=0.9: no epoch after the first improves the validation loss by 90%
    stopped = TabularPretrainer(max_epochs=30, n_iter_no_change=2, tol=0.9, verbose=1,
                                **kw).fit(X)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out  # skorch's epoch table
    assert stopped.n_iter_ == 3
    assert all("valid_loss" in row for row in stopped.history_)
    assert "valid_value_mse" in stopped.history_[0]
    first_epoch = TabularPretrainer(max_epochs=1, **kw).fit(X)
    np.testing.assert_array_equal(stopped.transform(X), first_epoch.transform(X))
    assert stopped.history_[0]["valid_loss"] == first_epoch.history_[0]["valid_loss"]


def test_dataframe_input_and_dropout():
    rng = np.random.RandomState(0)
    df = pd.DataFrame({"a": rng.normal(size=50), "b": rng.uniform(size=50)})
    pre = TabularPretrainer(hidden_layer_sizes=8, dropout=0.5, max_epochs=2, random_state=0,
                            **CPU).fit(df)
    assert pre.blocks_ == ["layer0"] and pre.n_features_out_ == 8
    # dropout is on while pretraining, off in transform
    np.testing.assert_array_equal(pre.transform(df), pre.transform(df))
    assert list(pre.feature_names_in_) == ["a", "b"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        from_array = pre.transform(df.to_numpy())
    np.testing.assert_array_equal(pre.transform(df), from_array)
    np.testing.assert_allclose(pre.mean_, df.mean().to_numpy())
    np.testing.assert_allclose(pre.scale_, df.std(ddof=0).to_numpy())


@pytest.mark.parametrize("X, match", [
    (np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 3.0]]), "infinity"),
    (np.array([[0.0, 1.0]]), "minimum of 2 is required"),
    (np.zeros((4, 2, 2)), "dim 3"),
])
def test_bad_input_is_refused(X, match):
    with pytest.raises(ValueError, match=match):
        TabularPretrainer(max_epochs=1, **CPU).fit(X)


def test_wrong_feature_count_and_bad_parameters(pretrained, table):
    pre = pretrained["masked"]
    with pytest.raises(ValueError, match=r"has 5 features, but TabularPretrainer is "
                                         r"expecting 60 features"):
        pre.transform(table[1][:, :5])
    X = table[0][:20]
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        TabularPretrainer(hidden_layer_sizes=(), **CPU).fit(X)
    with pytest.raises(ValueError, match="method"):
        TabularPretrainer(method="vime", **CPU).fit(X)
    with pytest.raises(ValueError, match="mask_rate"):
        TabularPretrainer(mask_rate=1.0, **CPU).fit(X)
    with pytest.raises(NotFittedError, match="model is an unfitted TabularPretrainer: fit it"):
        FineTunedClassifier(model=TabularPretrainer(), **CPU).fit(X, np.arange(20) % 2)


def test_pickle_round_trip(pretrained, table):
    pre = pretrained["masked"]
    X_test, y_test = table[1], table[3]
    loaded = pickle.loads(pickle.dumps(pre))
    np.testing.assert_array_equal(loaded.transform(X_test), pre.transform(X_test))
    assert loaded.history_ == pre.history_
    # still a valid source model
    clf = FineTunedClassifier(model=loaded, freeze_depth="all", max_epochs=2,
                              random_state=0, **CPU).fit(X_test[:40], y_test[:40])
    assert clf.predict(X_test[:3]).shape == (3,)


def test_keyboard_interrupt_keeps_the_last_completed_epoch(table):
    X = table[0][:256]
    kw = {"hidden_layer_sizes": (16,), "batch_size": 32, "random_state": 0, **CPU}
    two_epochs = TabularPretrainer(max_epochs=2, **kw).fit(X)
    with pytest.warns(UserWarning, match="during epoch 3.*weights of epoch 2"):
        stopped = TabularPretrainer(max_epochs=5, net_kwargs={
            "callbacks": [InterruptAt(3, 2)]}, **kw).fit(X)
    assert stopped.n_iter_ == 2
    np.testing.assert_array_equal(stopped.transform(X), two_epochs.transform(X))


@pytest.mark.parametrize("net_kwargs, message", [
    ({"lr": 0.1}, "controls through its parameter 'lr'"),
    ({"criterion": torch.nn.MSELoss}, "'criterion', which TabularPretrainer sets itself"),
    ({"iterator_train__batchsize": 8}, "DataLoader takes no argument 'batchsize'"),
])
def test_net_kwargs_never_override_parameters_silently(table, net_kwargs, message):
    X = table[0][:64]
    with pytest.raises(ValueError, match=message):
        TabularPretrainer(hidden_layer_sizes=(8,), max_epochs=1, net_kwargs=net_kwargs,
                          **CPU).fit(X)
