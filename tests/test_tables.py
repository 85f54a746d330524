"""Tables as they come: constant columns and missing cells in TabularPretrainer and
in the estimators built on it; the categorical source -> target recipe of the guide."""

import doctest
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils import get_tags

from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    TabularPretrainer,
)

CPU = {"device": "cpu"}
SMALL = {"hidden_layer_sizes": (32, 32), "max_epochs": 3, "batch_size": 64,
         "random_state": 0, **CPU}
TUNE = {"max_epochs": 10, "lr": 1e-2, "random_state": 0, **CPU}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one thread is as fast, and robust when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits table as it comes: 64 pixel columns in [0, 1], some constant."""
    d = load_digits()
    return d.data / 16, d.target


def with_missing(X, rate, seed):
    rng = np.random.RandomState(seed)
    return np.where(rng.uniform(size=X.shape) < rate, np.nan, X)


def few_labels(y, per_class, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in np.unique(y)])


# -- constant columns -----------------------------------------------------------------
def test_pretrainer_fits_the_digits_table_as_it_comes(digits):
    X, _ = digits
    constant = X.std(axis=0) == 0
    assert constant.sum() >= 3  # the table really has constant columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning
        pre = TabularPretrainer(max_epochs=2, random_state=0, **CPU).fit(X)
    # the columns stay (the target's X has the source's columns), standardised as
    # StandardScaler does: scale 1 for a constant column
    assert pre.n_features_in_ == 64
    np.testing.assert_array_equal(pre.scale_[constant], 1.0)
    np.testing.assert_array_equal(pre.mean_[constant], X[0, constant])
    np.testing.assert_allclose(pre.scale_[~constant], X.std(axis=0)[~constant], rtol=1e-6)
    assert all(np.isfinite(row["train_loss"]) for row in pre.history_)
    assert pre.history_[-1]["train_loss"] < pre.history_[0]["train_loss"]
    assert np.isfinite(pre.transform(X)).all()


def test_cross_validation_and_search_on_the_digits_table(digits):
    X, y = digits
    pre = TabularPretrainer(**SMALL).fit(X)
    clf = FineTunedClassifier(model=pre, **TUNE)
    idx = few_labels(y, 20, 0)
    scores = cross_val_score(clf, X[idx], y[idx], cv=3)
    assert scores.min() > 0.5, scores  # 10 classes: chance is 0.1
    search = GridSearchCV(clf, {"freeze_depth": [0, "all"]}, cv=3).fit(X[idx], y[idx])
    assert search.best_estimator_.n_features_in_ == 64
    assert search.best_score_ > 0.5


def test_a_column_constant_in_one_fold_only(digits):
    """A rare value: a column constant on the training rows of a fold, not on its
    test rows, standardised with scale 1 there and learned from in other folds."""
    X, y = digits
    X, y = X[:600], y[:600]
    cv = KFold(3)
    in_fold = [np.ptp(X[train], axis=0) == 0 for train, _ in cv.split(X)]
    overall = np.ptp(X, axis=0) == 0
    fold_only = np.flatnonzero(np.any(in_fold, axis=0) & ~overall)
    assert fold_only.size > 0  # the case this test is about exists in this table
    pipe = make_pipeline(TabularPretrainer(**SMALL), LogisticRegression(max_iter=2000))
    scores = cross_val_score(pipe, X, y, cv=cv)
    assert scores.min() > 0.5, scores
    train = next(train for (train, _), const in zip(cv.split(X), in_fold)
                 if const[fold_only[0]])
    pre = TabularPretrainer(**SMALL).fit(X[train])
    assert pre.scale_[fold_only[0]] == 1.0
    assert np.isfinite(pre.transform(X)).all()


# -- missing cells ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def missing_table(digits):
    """Digits with 10% of the cells missing at random, the last column complete."""
    X, y = digits
    Xm = with_missing(X, 0.1, 0)
    Xm[:, -1] = X[:, -1]
    return Xm, y


@pytest.fixture(scope="module")
def nan_pretrainer(missing_table):
    return TabularPretrainer(**SMALL).fit(missing_table[0])


@pytest.mark.parametrize("method", ["masked", "contrastive"])
def test_pretraining_on_rows_with_missing_cells(missing_table, nan_pretrainer, method):
    X, _ = missing_table
    pre = nan_pretrainer if method == "masked" else TabularPretrainer(
        method=method, **SMALL).fit(X)
    losses = [row["train_loss"] for row in pre.history_]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    # the statistics come from the observed cells
    np.testing.assert_allclose(pre.mean_, np.nanmean(X, axis=0), rtol=1e-6, atol=1e-9)
    # the encoder fills a missing cell with its column's mean
    rows = X[:50]
    filled = np.where(np.isnan(rows), pre.mean_, rows)
    emb = pre.transform(rows)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(emb, pre.transform(filled), rtol=1e-5, atol=1e-5)


def test_early_stopping_on_rows_with_missing_cells(missing_table):
    X, _ = missing_table
    pre = TabularPretrainer(early_stopping=True, validation_fraction=0.2,
                            **{**SMALL, "max_epochs": 2}).fit(X[:400])
    assert all(np.isfinite(row["valid_loss"]) and np.isfinite(row["valid_value_mse"])
               for row in pre.history_)


def test_estimators_on_the_pretrainer_accept_nan_where_it_saw_nan(missing_table,
                                                                  nan_pretrainer):
    X, y = missing_table
    pre = nan_pretrainer
    idx = few_labels(y, 10, 0)
    clf = FineTunedClassifier(model=pre, **TUNE)
    reg = FineTunedRegressor(model=pre, max_epochs=2, random_state=0, **CPU)
    fx = FeatureExtractorTransformer(model=pre, **CPU)
    for est in (clf, reg, fx, pre):
        assert get_tags(est).input_tags.allow_nan
    assert np.isnan(X[idx]).any()
    clf.fit(X[idx], y[idx])
    assert clf.score(X, y) > 0.5
    reg.fit(X[idx], y[idx].astype(float))
    assert np.isfinite(reg.predict(X)).all()
    np.testing.assert_allclose(fx.fit(X).transform(X[:20]), pre.transform(X[:20]),
                               rtol=1e-5, atol=1e-6)
    # a fitted estimator built on it is a source that accepts the same NaN
    chained = FineTunedClassifier(model=clf, freeze_depth="all", **TUNE)
    assert get_tags(chained).input_tags.allow_nan
    assert chained.fit(X[idx], y[idx]).score(X, y) > 0.5
    # NaN in the column that was complete in the pretraining rows: refused, named
    bad = X[idx].copy()
    bad[0, -1] = np.nan
    for est in (clf, fx, pre):
        method = est.predict if hasattr(est, "predict") else est.transform
        with pytest.raises(ValueError, match=r"contains NaN in column\(s\) \[63\].*only in "
                                             r"the columns that had some.*SimpleImputer"):
            method(bad)
    with pytest.raises(ValueError, match=r"column\(s\) \[63\]"):
        FineTunedClassifier(model=pre, **TUNE).fit(bad, y[idx])
    names = [f"px{i}" for i in range(64)]
    frame = FineTunedClassifier(model=pre, max_epochs=1, **CPU).fit(
        pd.DataFrame(X[idx], columns=names), y[idx])
    with pytest.raises(ValueError, match=r"column\(s\) \['px63'\]"):
        frame.predict(pd.DataFrame(bad, columns=names))


def test_estimators_on_other_models_keep_refusing_nan(digits, missing_table):
    """A pretrainer fitted on complete rows, or any other model: scikit-learn's own
    message, which points to imputation."""
    X, y = digits
    complete = TabularPretrainer(**{**SMALL, "max_epochs": 1}).fit(X[:200])
    nets = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    Xm = missing_table[0][:40]
    for model in (complete, nets):
        clf = FineTunedClassifier(model=model, max_epochs=1, **CPU)
        assert not get_tags(clf).input_tags.allow_nan
        with pytest.raises(ValueError, match=r"(?s)Input X contains NaN.*imputer"):
            clf.fit(Xm, y[:40])
    with pytest.raises(ValueError, match=r"(?s)Input X contains NaN.*imputer"):
        complete.transform(Xm)


def test_grid_search_with_10_percent_missing_cells_end_to_end(missing_table, nan_pretrainer):
    """Pretraining on all rows (no labels), fine-tuning searched on 10 labels per class."""
    X, y = missing_table
    idx = few_labels(y, 10, 1)
    rest = np.setdiff1d(np.arange(len(y)), idx)
    search = GridSearchCV(FineTunedClassifier(model=nan_pretrainer, **TUNE),
                          {"freeze_depth": [0, "all"]}, cv=3).fit(X[idx], y[idx])
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.score(X[rest], y[rest]) > 0.6  # 10 classes: chance is 0.1


def test_all_missing_column_warns_and_is_filled():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 3))
    X[:, 1] = np.nan
    with pytest.warns(UserWarning, match=r"1 column\(s\) with no observed value.*\[1\]"):
        pre = TabularPretrainer(hidden_layer_sizes=(4,), max_epochs=1, random_state=0,
                                **CPU).fit(X)
    assert pre.mean_[1] == 0 and pre.scale_[1] == 1
    assert np.isfinite(pre.transform(X)).all()


# -- categorical columns: the user guide's recipe ---------------------------------------
def test_user_guide_categorical_recipe():
    """The guide's categorical source -> target recipe, exactly as printed there,
    runs and prints what it says."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "user_guide.rst").read_text()
    start = guide.index(".. _categorical:")
    section = guide[start:guide.index("\n.. _", start + 1)]
    test = doctest.DocTestParser().get_doctest(section, {}, "user_guide.rst#categorical",
                                               "docs/user_guide.rst", 0)
    runner = doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 15  # the whole recipe ran
    assert result.failed == 0
