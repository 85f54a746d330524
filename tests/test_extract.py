"""FeatureExtractorTransformer: transfer through frozen features, sklearn integration."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FeatureExtractorTransformer, list_blocks

from .conftest import few_labels, make_cnn

CPU = {"device": "cpu"}


def lr_score(F_train, y_train, F_test, y_test):
    model = Pipeline([("s", StandardScaler()), ("lr", LogisticRegression(max_iter=3000))])
    return model.fit(F_train, y_train).score(F_test, y_test)


def test_pretrained_image_features_beat_raw_pixels(source_cnn, digits):
    """Digits 0-4 -> 5-9, 10 labels per class, averaged over 3 draws."""
    gains = []
    for seed in range(3):
        X, y, X_test, y_test = few_labels(digits["X_target"], digits["y_target"], 10, seed)
        fx = FeatureExtractorTransformer(model=source_cnn, layer=1, **CPU).fit(X)
        feats = lr_score(fx.transform(X), y, fx.transform(X_test), y_test)
        raw = lr_score(X.reshape(len(X), -1), y, X_test.reshape(len(X_test), -1), y_test)
        gains.append(feats - raw)
    assert np.mean(gains) > 0.1, gains


def test_pretrained_features_beat_untrained_network(source_cnn, digits):
    """The gain comes from pretraining, not from the architecture."""
    torch.manual_seed(0)
    untrained = make_cnn(5)
    X, y, X_test, y_test = few_labels(digits["X_target"], digits["y_target"], 10, 0)
    scores = []
    for net in (source_cnn, untrained):
        fx = FeatureExtractorTransformer(model=net, layer=1, **CPU).fit(X)
        scores.append(lr_score(fx.transform(X), y, fx.transform(X_test), y_test))
    assert scores[0] > scores[1] + 0.05, scores


def test_pretrained_tabular_features_beat_raw_columns(tabular_source):
    X, y = tabular_source["X_target"], tabular_source["y_target"]
    gains = []
    for seed in range(3):
        Xa, ya, Xb, yb = few_labels(X, y, 25, seed)
        fx = FeatureExtractorTransformer(model=tabular_source["net"], **CPU).fit(Xa)
        gains.append(lr_score(fx.transform(Xa), ya, fx.transform(Xb), yb)
                     - lr_score(Xa, ya, Xb, yb))
    assert np.mean(gains) > 0.03, gains


def test_pipeline_cross_val_score_and_grid_search_over_layer(source_cnn, digits):
    X, y = digits["X_target"][:300], digits["y_target"][:300]
    pipe = Pipeline([("fx", FeatureExtractorTransformer(model=source_cnn, **CPU)),
                     ("clf", LogisticRegression(max_iter=2000))])
    scores = cross_val_score(pipe, X, y, cv=3)
    assert np.all(np.isfinite(scores)) and scores.mean() > 0.5
    search = GridSearchCV(pipe, {"fx__layer": [0, 1, None], "fx__pooling": ["avg", "max"]},
                          cv=3, n_jobs=2).fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_["fx__layer"] in (0, 1, None)


def test_layers_by_index_name_and_default(source_cnn, digits):
    X = digits["X_target"][:10]
    blocks = list_blocks(source_cnn, input_shape=(1, 12, 12))
    assert list(blocks["name"]) == ["0-2", "3-6", "7-8"]
    assert list(blocks["output_shape"]) == [(16, 6, 6), (288,), (64,)]
    widths = {}
    for layer in [0, 1, 2, -1, -3, "0-2", "3-6", "2", None, "head"]:
        fx = FeatureExtractorTransformer(model=source_cnn, layer=layer, **CPU).fit(X)
        widths[layer] = fx.transform(X).shape[1]
    assert widths[0] == widths[-3] == widths["0-2"] == widths["2"] == 16  # avg-pooled map
    assert widths[1] == widths["3-6"] == 288
    assert widths[2] == widths[-1] == widths[None] == 64
    assert widths["head"] == 5
    # the default (head input) equals the pretrained net up to its last hidden layer
    fx = FeatureExtractorTransformer(model=source_cnn, **CPU).fit(X)
    with torch.no_grad():
        expected = source_cnn[:-1](torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(fx.transform(X), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling, reduce", [
    ("avg", lambda m: m.mean(axis=(2, 3))),
    ("max", lambda m: m.max(axis=(2, 3))),
    ("flatten", lambda m: m.reshape(len(m), -1)),
])
def test_pooling_of_feature_maps(source_cnn, digits, pooling, reduce):
    X = digits["X_target"][:6]
    fx = FeatureExtractorTransformer(model=source_cnn, layer=0, pooling=pooling, **CPU).fit(X)
    with torch.no_grad():
        fmap = source_cnn[:3](torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(fx.transform(X), reduce(fmap), rtol=1e-5, atol=1e-6)


def test_transform_is_eval_mode_no_grad_and_leaves_model_alone(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * 10 * 10, 3))
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    X = digits["X_target"][:20]
    fx = FeatureExtractorTransformer(model=net, **CPU).fit(X)
    a, b = fx.transform(X), fx.transform(X)
    np.testing.assert_array_equal(a, b)  # dropout off, BN statistics not updated
    assert net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not any(p.requires_grad for p in fx.module_.parameters())


def test_feature_names_and_pandas_output(source_cnn, digits):
    X = digits["X_target"][:5]
    fx = FeatureExtractorTransformer(model=source_cnn, layer="3-6", **CPU).fit(X)
    names = fx.get_feature_names_out()
    assert len(names) == 288 and names[0] == "block_3_6_0"
    out = fx.set_output(transform="pandas").transform(X)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(names)


def test_feature_names_out_checks_input_features_against_fit(tabular_source):
    net = tabular_source["net"]
    X = pd.DataFrame(tabular_source["X_target"][:10]).add_prefix("c")
    fx = FeatureExtractorTransformer(model=net, **CPU).fit(X)
    names = fx.get_feature_names_out()
    assert list(fx.get_feature_names_out(list(X.columns))) == list(names)
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        fx.get_feature_names_out(list(X.columns)[::-1])
    fx = FeatureExtractorTransformer(model=net, **CPU).fit(X.to_numpy())
    with pytest.raises(ValueError, match="input_features should have length equal to number "
                                         "of features \\(20\\), got 3"):
        fx.get_feature_names_out(["a", "b", "c"])


def test_memory_bounded_by_batch_size(source_cnn, digits):
    """The network never sees more than batch_size samples at once."""
    sizes = []
    fx = FeatureExtractorTransformer(model=source_cnn, batch_size=7, **CPU)
    fx.fit(digits["X_target"][:3])
    fx.module_.blocks[0].register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    out = fx.transform(digits["X_target"][:50])
    assert out.shape == (50, 64) and max(sizes) == 7


@pytest.mark.parametrize("layer, error, match", [
    (3, ValueError, r"out of range.*3 blocks"),
    (-4, ValueError, "out of range"),
    ("layer9", ValueError, r"not a block.*\['0-2', '3-6', '7-8'\]"),
    (1.5, TypeError, r"The 'layer' parameter of FeatureExtractorTransformer must be an int"),
    (True, TypeError, "layer must be an int, a block name or None, got True"),
])
def test_bad_layer(source_cnn, digits, layer, error, match):
    with pytest.raises(error, match=match):
        FeatureExtractorTransformer(model=source_cnn, layer=layer, **CPU).fit(
            digits["X_target"][:4])


def test_bad_pooling_and_batch_size(source_cnn, digits):
    with pytest.raises(ValueError, match="pooling"):
        FeatureExtractorTransformer(model=source_cnn, pooling="median", **CPU).fit(
            digits["X_target"][:4])
    with pytest.raises(ValueError, match="batch_size"):
        FeatureExtractorTransformer(model=source_cnn, batch_size=0, **CPU).fit(
            digits["X_target"][:4])


def test_not_fitted(source_cnn, digits):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FeatureExtractorTransformer(model=source_cnn).transform(digits["X_target"][:4])


def test_device_cuda_without_cuda_is_a_clear_error(source_cnn, digits):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        FeatureExtractorTransformer(model=source_cnn, device="cuda").fit(digits["X_target"][:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(source_cnn, digits):
    X = digits["X_target"][:50]
    cpu = FeatureExtractorTransformer(model=source_cnn, **CPU).fit(X).transform(X)
    gpu = FeatureExtractorTransformer(model=source_cnn, device="cuda").fit(X).transform(X)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-3, atol=1e-4)


SAMPLES_SEEN = {"n": 0}


class _CountingLinear(nn.Linear):
    """Counts the samples it sees, in a counter outside the module (so that the
    module, which joblib hashes for Pipeline(memory=...), does not change)."""

    def forward(self, x):
        SAMPLES_SEEN["n"] += len(x)
        return super().forward(x)


def test_pipeline_memory_computes_features_once_per_fold(tmp_path):
    """A search over the downstream model only: Pipeline(memory=...) caches the
    extractor's fit_transform per training fold (scikit-learn's own mechanism)."""
    torch.manual_seed(0)
    net = nn.Sequential(_CountingLinear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    rng = np.random.RandomState(0)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    seen, best = [], []
    for memory in (None, str(tmp_path)):
        pipe = Pipeline([("fx", FeatureExtractorTransformer(net, device="cpu")),
                         ("clf", LogisticRegression(max_iter=500))], memory=memory)
        SAMPLES_SEEN["n"] = 0
        search = GridSearchCV(pipe, {"clf__C": [0.01, 0.1, 1.0, 10.0]}, cv=3).fit(X, y)
        seen.append(SAMPLES_SEEN["n"])
        best.append(search.best_params_)
    assert best[0] == best[1]
    # without memory: 12 fits on 200 rows; with it: 3 (one per fold), 9 x 200 fewer
    # (each fit also runs a few probe rows)
    assert 9 * 200 <= seen[0] - seen[1] <= 9 * 210


# -- memory: outputs kept per sample, on disk ----------------------------------------


def test_memory_keeps_outputs_that_later_transforms_and_fine_tuners_reuse(digits, tmp_path):
    from sktransfer import FineTunedClassifier, clear_cache

    torch.manual_seed(0)
    net = make_cnn(5)
    calls = []
    net[0].register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    X, y = digits["X_target"][:70], digits["y_target"][:70]
    folder = str(tmp_path / "cache")
    clear_cache()
    plain = FeatureExtractorTransformer(model=net, batch_size=32, **CPU).fit(X).transform(X)
    calls.clear()
    fx = FeatureExtractorTransformer(model=net, batch_size=32, memory=folder, **CPU).fit(X)
    kept = fx.transform(X)
    np.testing.assert_allclose(kept, plain, rtol=1e-5, atol=1e-6)
    # fit: its probe and the feature count (2 rows each); 70 rows in padded batches of 32
    assert sum(calls) == 4 + 96
    for layer in ("head", 0):  # through the head; an inner block
        other = FeatureExtractorTransformer(model=net, layer=layer, batch_size=32, **CPU)
        np.testing.assert_allclose(
            FeatureExtractorTransformer(model=net, layer=layer, batch_size=32, memory=folder,
                                        **CPU).fit(X).transform(X),
            other.fit(X).transform(X), rtol=1e-5, atol=1e-6)
    clear_cache()  # as a new process: only the folder
    calls.clear()
    again = FeatureExtractorTransformer(model=net, batch_size=32, memory=folder, **CPU).fit(X)
    np.testing.assert_array_equal(again.transform(X[::-1]), kept[::-1])
    assert sum(calls) == 4  # fit's two rows only
    # a head-only fine-tuner with the same batch size finds the same blocks' outputs
    calls.clear()
    FineTunedClassifier(model=net, freeze_depth="all", batch_size=32, max_epochs=1,
                        memory=folder, random_state=0, **CPU).fit(X, y)
    assert sum(calls) == 0
    # a network changed in place misses
    with torch.no_grad():
        net[0].weight.mul_(2)
    calls.clear()
    FeatureExtractorTransformer(model=net, batch_size=32, memory=folder, **CPU).fit(X).transform(X)
    assert sum(calls) == 4 + 96
