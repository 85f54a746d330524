"""sktransfer.datasets: the transfer tasks of the examples and the quality benchmark."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from sktransfer.datasets import (
    load_digits_table,
    load_digits_transfer,
    load_shifted_digits,
    make_digits_cnn,
    make_tabular_transfer,
    split_per_class,
)


def per_class(y):
    return dict(zip(*np.unique(y, return_counts=True)))


@pytest.mark.parametrize("n", [1, 5, 30])
def test_digits_transfer_protocol(n):
    data = load_digits_transfer(n, random_state=0)
    assert data.X_source.shape == (901, 1, 8, 8) and data.X_source.dtype == np.float32
    assert set(data.y_source) == {0, 1, 2, 3, 4}
    assert per_class(data.y_train) == {c: n for c in range(5, 10)}
    # the rest of the digits 5-9 is the test set: together they are all 896 of them
    assert len(data.X_train) + len(data.X_test) == 896
    assert set(data.y_test) == set(range(5, 10))
    assert 0.0 <= data.X_source.min() and data.X_source.max() <= 1.0
    # labelled + test images are exactly the digits 5-9, each once
    images = load_digits().images[load_digits().target >= 5] / 16.0
    all_target = np.concatenate([data.X_train, data.X_test])[:, 0]
    assert sorted(map(bytes, all_target.astype(np.float32))) == sorted(
        map(bytes, images.astype(np.float32)))


def test_labelled_draw_follows_the_seed():
    a, b = load_digits_transfer(5, random_state=3), load_digits_transfer(5, random_state=3)
    c = load_digits_transfer(5, random_state=4)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(a.X_train, c.X_train)
    np.testing.assert_array_equal(a.X_source, c.X_source)  # only the draw changes


def test_shifted_digits():
    data = load_shifted_digits(10, random_state=0)
    assert data.X_source.shape == (3 * 720, 1, 12, 12)
    np.testing.assert_array_equal(data.y_source, np.tile(data.y_source[:720], 3))
    assert set(data.y_source) | set(data.y_source_test) == set(range(5))
    assert set(data.y_pool) == set(data.y_test) == set(range(5, 10))
    assert len(data.X_pool) + len(data.X_test) == 896
    assert per_class(data.y_train) == {c: 10 for c in range(5, 10)}
    # the labelled images come from the pool, never from the test set
    pool = {x.tobytes() for x in data.X_pool}
    assert all(x.tobytes() in pool for x in data.X_train)
    assert not {x.tobytes() for x in data.X_test} & {x.tobytes() for x in data.X_train}
    # each canvas holds one whole digit (its ink), at a place that varies
    digits = load_digits()
    assert np.isclose(data.X_source.sum(), 3 * (digits.images[digits.target < 5] / 16.0)
                      .sum() - 3 * data.X_source_test.sum(), rtol=1e-4)
    rows_with_ink = [np.flatnonzero(x[0].sum(axis=1))[0] for x in data.X_source[:200]]
    assert len(set(rows_with_ink)) > 3
    # copies of a source image sit at different places
    assert not np.array_equal(data.X_source[0], data.X_source[720])


def test_shifted_digits_whole_pool_and_plain_canvas():
    data = load_shifted_digits(None)
    np.testing.assert_array_equal(data.X_train, data.X_pool)
    plain = load_shifted_digits(None, canvas_size=8, n_source_copies=1)
    assert plain.X_source.shape == (720, 1, 8, 8)
    digits = load_digits()
    originals = {(x / 16.0).astype(np.float32).tobytes() for x in digits.images}
    assert all(x[0].tobytes() in originals for x in plain.X_source)
    assert np.array_equal(plain.y_source, data.y_source[:720])


def test_digits_table():
    data = load_digits_table(5, random_state=0)
    n_cols = data.X_unlabeled.shape[1]
    assert data.X_train.shape == (50, n_cols) and data.X_test.shape[1] == n_cols
    assert len(data.feature_names) == n_cols < 64
    assert np.ptp(data.X_unlabeled, axis=0).min() > 0  # no constant column left
    assert per_class(data.y_train) == {c: 5 for c in range(10)}
    assert len(data.X_unlabeled) + len(data.X_train) + len(data.X_test) == 1797
    assert abs(len(data.X_unlabeled) / 1797 - 0.7) < 0.01
    assert data.X_unlabeled.max() <= 1.0
    other = load_digits_table(5, random_state=1)
    np.testing.assert_array_equal(data.X_unlabeled, other.X_unlabeled)
    assert not np.array_equal(data.X_train, other.X_train)


@pytest.mark.parametrize("target", ["classification", "regression"])
def test_tabular_transfer(target):
    data = make_tabular_transfer(n_source=300, n_train=40, n_test=60, target=target,
                                 random_state=0)
    assert data.X_source.shape == (300, 20) and data.y_source.shape == (300, 4)
    np.testing.assert_allclose(data.y_source.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(data.y_source.std(0), 1, atol=1e-4)
    assert data.X_train.shape == (40, 20) and data.X_test.shape == (60, 20)
    if target == "classification":
        assert set(data.y_train) <= {0, 1}
        assert np.concatenate([data.y_train, data.y_test]).mean() == 0.5  # median split
    else:
        assert data.y_train.dtype.kind == "f" and len(np.unique(data.y_train)) == 40
    same = make_tabular_transfer(300, 40, 60, target=target, random_state=0)
    np.testing.assert_array_equal(same.X_train, data.X_train)
    other = make_tabular_transfer(300, 40, 60, target=target, random_state=1)
    assert not np.array_equal(other.X_source, data.X_source)


def test_split_per_class_counts_and_rest():
    X = pd.DataFrame({"a": np.arange(30)})
    y = np.array(["x"] * 10 + ["y"] * 12 + ["z"] * 8)
    X_lab, X_rest, y_lab, y_rest = split_per_class(X, y, 4, random_state=0)
    assert isinstance(X_lab, pd.DataFrame)
    assert per_class(y_lab) == {"x": 4, "y": 4, "z": 4}
    assert sorted(X_lab["a"].tolist() + X_rest["a"].tolist()) == list(range(30))
    np.testing.assert_array_equal(y[X_lab["a"]], y_lab)  # rows and labels stay paired
    np.testing.assert_array_equal(y[X_rest["a"]], y_rest)


def test_split_per_class_errors():
    y = np.array([0] * 5 + [1] * 3)
    with pytest.raises(ValueError, match=r"fewer samples: \{1: 3\}.*at most 3"):
        split_per_class(np.zeros((8, 2)), y, 4)
    with pytest.raises(ValueError, match="n_per_class"):
        split_per_class(np.zeros((8, 2)), y, 0)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        split_per_class(np.zeros((7, 2)), y, 1)
    with pytest.raises(ValueError, match="n_per_class"):
        load_shifted_digits(1000)
    with pytest.raises(ValueError, match=r"not in y: \[7\]"):
        split_per_class(np.zeros((8, 2)), y, {0: 1, 7: 1})
    with pytest.raises(ValueError, match=r"ints >= 0, got \{0: -1\}"):
        split_per_class(np.zeros((8, 2)), y, {0: -1})


def test_split_per_class_imbalanced_draw():
    y = np.repeat(["a", "b", "c"], 10)
    X = np.arange(30)
    X_lab, X_rest, y_lab, _ = split_per_class(X, y, {"a": 6, "c": 2}, random_state=0)
    assert per_class(y_lab) == {"a": 6, "c": 2}
    np.testing.assert_array_equal(y[X_lab], y_lab)
    assert len(X_rest) == 22
    # an equal count for every class draws the same samples as the int form
    same = split_per_class(X, y, dict.fromkeys("abc", 3), random_state=1)[0]
    np.testing.assert_array_equal(same, split_per_class(X, y, 3, random_state=1)[0])


def test_digits_cnn_is_seeded_without_touching_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = make_digits_cnn(3, random_state=7)
    assert torch.equal(torch.rand(1), expected)  # the global generator moved on as before
    b = make_digits_cnn(3, random_state=7)
    c = make_digits_cnn(3, random_state=8)
    for (k, p), q, r in zip(a.state_dict().items(), b.state_dict().values(),
                            c.state_dict().values()):
        assert torch.equal(p, q), k
    assert not torch.equal(a[0].weight, c[0].weight)
    assert make_digits_cnn(4, canvas_size=8)(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert make_digits_cnn(2)(torch.zeros(2, 1, 12, 12)).shape == (2, 2)
