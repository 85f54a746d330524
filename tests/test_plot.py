"""sktransfer.plot: the artists each plot draws, its input checks, matplotlib optional."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sktransfer.plot import (  # noqa: E402
    plot_label_efficiency,
    plot_learning_curves,
    plot_search_heatmap,
)

CPU = {"device": "cpu", "random_state": 0, "batch_size": 64}


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer(return_X_y=True)
    return X[:120].astype(np.float32), y[:120]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    X = StandardScaler().fit_transform(X)
    es = FineTunedClassifier(model=tiny_net(), max_epochs=5, early_stopping=True, lr=1e-2,
                             **CPU).fit(X, y)
    plain = FineTunedClassifier(model=tiny_net(), max_epochs=3, **CPU).fit(X, y)
    return es, plain


@pytest.fixture(scope="module")
def search(data):
    X, y = data
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", FineTunedClassifier(model=tiny_net(), max_epochs=2, lr=5e-2,
                                                 penalty="l2_sp", **CPU))])
    # a grid over alpha sets the penalty that alpha weighs (penalty="auto" would be
    # Co-Tuning on fine-tuning, L2-SP on the probe)
    grid = {"net__freeze_depth": [0, 1, "all"], "net__alpha": [1e-4, 1e-2]}
    # log loss: scores that differ from cell to cell even after 2 epochs
    return GridSearchCV(pipe, grid, cv=2, scoring="neg_log_loss").fit(X, y)


def cell_texts(ax):
    return [t.get_text() for t in ax.texts]


# -- learning curves ---------------------------------------------------------------
def test_learning_curves_single(fitted):
    es, _ = fitted
    ax = plot_learning_curves(es)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train loss", "valid loss"]
    train, valid = lines
    assert train.get_linestyle() == "-" and valid.get_linestyle() == "--"
    assert train.get_color() == valid.get_color()
    epochs = [row["epoch"] for row in es.history_]
    np.testing.assert_array_equal(train.get_xdata(), epochs)
    np.testing.assert_allclose(train.get_ydata(), [r["train_loss"] for r in es.history_])
    np.testing.assert_allclose(valid.get_ydata(), [r["valid_loss"] for r in es.history_])
    # the best validation epoch is marked, and listed last in the legend
    (star,) = ax.collections
    best = int(np.argmin([r["valid_loss"] for r in es.history_]))
    np.testing.assert_allclose(star.get_offsets()[0],
                               [epochs[best], es.history_[best]["valid_loss"]])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train loss", "valid loss", "best valid epoch"]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss" and ax.get_title()
    ax.figure.savefig("/tmp/sktransfer_learning_curves.png")


def test_learning_curves_several_and_raw_history(fitted):
    es, plain = fitted
    ax = plot_learning_curves([es, plain.history_], labels=["fine-tune", "no val"])
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["fine-tune: train", "fine-tune: valid", "no val: train"]
    assert ax.get_lines()[0].get_color() != ax.get_lines()[2].get_color()
    assert len(ax.collections) == 1  # no validation curve -> no best-epoch marker
    # a dict gives the labels; an existing Axes is drawn on and returned
    _, given = plt.subplots()
    ax = plot_learning_curves({"a": es, "b": plain}, ax=given)
    assert ax is given
    assert [line.get_label() for line in ax.get_lines()][0] == "a: train"


def test_learning_curves_pipeline_and_search(fitted, search):
    ax = plot_learning_curves(search)  # best_estimator_ -> the Pipeline's final step
    assert [line.get_label() for line in ax.get_lines()] == ["train loss"]


def test_learning_curves_errors(fitted):
    es, _ = fitted
    with pytest.raises(NotFittedError):
        plot_learning_curves(FineTunedClassifier(model=tiny_net()))
    with pytest.raises(ValueError, match=r"labels must be a list with one label per estimator"):
        plot_learning_curves([es, es], labels=["only one"])
    with pytest.raises(ValueError, match=r"metric='acc'.*available: \['data_loss', 'loss'\]"):
        plot_learning_curves(es, metric="acc")
    with pytest.raises(TypeError, match="history_ lists"):
        plot_learning_curves(3)
    with pytest.raises(TypeError, match="StandardScaler has no history_"):
        plot_learning_curves(StandardScaler().fit([[0.0], [1.0]]))
    with pytest.raises(ValueError, match="estimators is empty"):
        plot_learning_curves([])
    with pytest.raises(TypeError, match=r"The 'ax' parameter of plot_learning_curves must be "
                                        r"an object implementing 'plot' and 'imshow' or None"):
        plot_learning_curves(es, ax="left")


# -- search heatmap ----------------------------------------------------------------
def test_search_heatmap(search):
    ax = plot_search_heatmap(search)  # suffixes "alpha" and "freeze_depth" match net__*
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-4", "1e-2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "all"]
    assert ax.get_xlabel() == "net__alpha" and ax.get_ylabel() == "net__freeze_depth"
    res = search.cv_results_
    expected = {
        (fd, a): s for fd, a, s in zip(res["param_net__freeze_depth"], res["param_net__alpha"],
                                       res["mean_test_score"])
    }
    texts = cell_texts(ax)
    assert texts == [f"{expected[(fd, a)]:.3f}" for fd in (0, 1, "all") for a in (1e-4, 1e-2)]
    assert len(set(texts)) > 3  # a real test of the cell order, not a constant grid
    # colour bar, and the best cell (the search's best_params_) outlined
    assert ax.images[0].colorbar is not None
    (outline,) = [p for p in ax.patches if p.get_label() == "best"]
    best = search.best_params_
    col = [1e-4, 1e-2].index(best["net__alpha"])
    row = [0, 1, "all"].index(best["net__freeze_depth"])
    assert outline.get_xy() == (col - 0.5, row - 0.5)
    assert "best over" not in ax.get_title()
    ax.figure.savefig("/tmp/sktransfer_search_heatmap.png")


def test_search_heatmap_best_over_other_params(data):
    X, y = data
    clf = FineTunedClassifier(model=tiny_net(), max_epochs=1, **CPU)
    grid = [{"freeze_depth": ["all"], "alpha": [1e-3], "lr": [1e-3, 1e-2]},
            {"freeze_depth": [0], "penalty": [None]}]  # alpha (and lr) unset there
    search = GridSearchCV(clf, grid, cv=2, refit=False).fit(X[:40], y[:40])
    ax = plot_search_heatmap(search)
    assert "best over lr, penalty" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "(not set)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["all", "0"]
    scores = search.cv_results_["mean_test_score"]
    assert cell_texts(ax) == [f"{max(scores[:2]):.3f}", "n/a", "n/a", f"{scores[2]:.3f}"]


def test_search_heatmap_raw_results_and_score_names(search):
    ax = plot_search_heatmap(search.cv_results_, x="freeze_depth", y="alpha",
                             score="score", values_format=".2f")  # -> mean_test_score
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "all"]
    assert all(len(t.split(".")[1]) == 2 for t in cell_texts(ax))


def test_search_heatmap_randomized_sorts_numbers(data):
    # a randomized search has no order of its own: numbers are sorted (any estimator works)
    X, y = data
    grid = {"alpha": [10, 0.1, 1, 100], "fit_intercept": [True, False]}
    search = RandomizedSearchCV(Ridge(), grid, n_iter=5, cv=2, refit=False, random_state=1)
    search.fit(StandardScaler().fit_transform(X), y)
    ax = plot_search_heatmap(search, y="fit_intercept")
    seen = sorted(set(search.cv_results_["param_alpha"]))
    assert len(seen) > 2
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{a:g}" for a in seen]


def test_search_heatmap_errors(search):
    with pytest.raises(ValueError, match=r"x='lr' matches no searched parameter.*net__alpha"):
        plot_search_heatmap(search, x="lr")
    results = dict(search.cv_results_, param_other__alpha=search.cv_results_["param_net__alpha"])
    with pytest.raises(ValueError, match=r"ambiguous.*pass the full name"):
        plot_search_heatmap(results)
    with pytest.raises(ValueError, match="x and y are both"):
        plot_search_heatmap(search, x="alpha", y="net__alpha")
    with pytest.raises(ValueError, match=r"score='f1' is not in cv_results_.*mean_test_score"):
        plot_search_heatmap(search, score="f1")
    with pytest.raises(NotFittedError):
        plot_search_heatmap(GridSearchCV(StandardScaler(), {"with_mean": [True]}))
    with pytest.raises(TypeError, match=r"The 'search' parameter of plot_search_heatmap must "
                                        r"be an instance of 'collections\.abc\.Mapping' or an "
                                        r"object implementing 'fit' and 'get_params'"):
        plot_search_heatmap([1, 2])


# -- label efficiency --------------------------------------------------------------
def efficiency_rows():
    accs = {"transfer": [0.7, 0.8, 0.9], "scratch": [0.4, 0.6, 0.85]}
    return [{"method": m, "labels_per_class": n, "seed": s, "accuracy": a + 0.02 * (s - 1)}
            for m, row in accs.items() for n, a in zip([5, 20, 100], row) for s in range(3)]


def test_label_efficiency_mean_and_band():
    rows = efficiency_rows()
    ax = plot_label_efficiency(pd.DataFrame(rows))
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["transfer", "scratch"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [5, 20, 100])
    np.testing.assert_allclose(lines[0].get_ydata(), [0.7, 0.8, 0.9])
    assert lines[0].get_marker() != lines[1].get_marker()
    assert len(ax.collections) == 2  # one shaded band per method
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([band.min(), band.max()], [0.68, 0.92])
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "20", "100"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["transfer", "scratch"]
    assert "min-max" in ax.get_title() and ax.get_xlabel() == "labels per class"
    ax.figure.savefig("/tmp/sktransfer_label_efficiency.png")


def test_label_efficiency_list_of_dicts_single_rows_and_options():
    rows = [r for r in efficiency_rows() if r["seed"] == 0]
    ax = plot_label_efficiency(rows, logx=False)
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 0  # no repeats, no band
    assert ax.get_xscale() == "linear"
    ax = plot_label_efficiency(efficiency_rows(), hue=None, band="std")
    assert [line.get_label() for line in ax.get_lines()] == ["accuracy"]
    assert "std" in ax.get_title()


def test_label_efficiency_errors():
    rows = efficiency_rows()
    with pytest.raises(ValueError, match=r"y='acc' is not a column of results; columns: "):
        plot_label_efficiency(rows, y="acc")
    with pytest.raises(TypeError, match="x='method' must be a numeric column"):
        plot_label_efficiency(rows, x="method", hue=None)
    with pytest.raises(ValueError, match=r"The 'band' parameter of plot_label_efficiency must "
                                         r"be a str among .* or None\. Got 'iqr' instead"):
        plot_label_efficiency(rows, band="iqr")
    with pytest.raises(ValueError, match="results is empty"):
        plot_label_efficiency([])
    with pytest.raises(TypeError, match=r"The 'results' parameter of plot_label_efficiency "
                                        r"must be an array-like or an instance of 'dict'"):
        plot_label_efficiency(3)


# -- matplotlib is optional --------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda f, s: plot_learning_curves(f[0]),
    lambda f, s: plot_search_heatmap(s),
    lambda f, s: plot_label_efficiency(efficiency_rows()),
])
def test_missing_matplotlib_says_how_to_install(monkeypatch, fitted, search, call):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "sktransfer\[plot\]"'):
        call(fitted, search)


def test_search_value_labels_read_as_typed():
    from sktransfer.plot import _fmt_values

    assert _fmt_values([1e-4, 1e-2, 1.0]) == ["1e-4", "1e-2", "1"]
    assert _fmt_values([0.0, 1e-5, 1e5, 10.0]) == ["0", "1e-5", "1e5", "10"]
    assert _fmt_values([0.001, 0.1, 1.0]) == ["0.001", "0.1", "1"]
    assert _fmt_values([0, 1, "all"]) == ["0", "1", "all"]
