"""The public transferability functions: the scorer in model selection, ranking,
domain shift, and errors (their numerics: test_transferability.py)."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from sktransfer import FeatureExtractorTransformer
from sktransfer.metrics import (
    domain_shift_score,
    h_score,
    leep_score,
    logme_score,
    nce_score,
    rank_models,
    transferability_scorer,
)

# --------------------------------------------------------------------------- scorer
def layered_net():
    """Block 0 keeps every input (as +x and -x after ReLU); block 1 keeps only the
    noise columns 2..5, so only block 0 carries the target, which uses x0 + x1."""
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                        nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.cat([torch.eye(6), -torch.eye(6)]))
        net[0].bias.zero_()
        pick = torch.zeros(8, 12)
        for row, col in enumerate([2, 3, 4, 5, 8, 9, 10, 11]):
            pick[row, col] = 1.0
        net[2].weight.copy_(pick)
        net[2].bias.zero_()
    return net


@pytest.fixture(scope="module")
def layered_data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.mark.parametrize("refit", [True, False])
@pytest.mark.parametrize("metric", ["logme", "h_score", "h_score_shrinkage"])
def test_scorer_in_grid_search_over_layer(layered_data, refit, metric):
    X, y = layered_data
    search = GridSearchCV(
        FeatureExtractorTransformer(model=layered_net(), device="cpu"),
        {"layer": [1, 0]}, scoring=transferability_scorer(metric),
        cv=StratifiedKFold(3, shuffle=True, random_state=0), refit=refit,
    ).fit(X, y)
    assert search.best_params_ == {"layer": 0}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    if refit:
        assert search.transform(X).shape == (150, 12)


def test_scorer_on_pipeline_and_direct_call(layered_data):
    X, y = layered_data
    fx = FeatureExtractorTransformer(model=layered_net(), layer=0, device="cpu").fit(X)
    scorer = transferability_scorer("logme")
    assert scorer(fx, X, y) == pytest.approx(logme_score(fx.transform(X), y))
    pipe = make_pipeline(fx, LogisticRegression()).fit(X, y)  # no transform: uses pipe[:-1]
    assert scorer(pipe, X, y) == pytest.approx(scorer(fx, X, y))
    assert "logme" in repr(scorer)
    assert transferability_scorer(logme_score, regression=True)(fx, X, X[:, 0]) == (
        pytest.approx(logme_score(fx.transform(X), X[:, 0])))


def test_scorer_unstratified_folds_fail_with_a_clear_error(layered_data):
    X, y = layered_data
    order = np.argsort(y, kind="stable")
    search = GridSearchCV(FeatureExtractorTransformer(model=layered_net(), device="cpu"),
                          {"layer": [0]}, scoring=transferability_scorer(),
                          cv=KFold(2), error_score="raise")
    with pytest.raises(ValueError, match="single class.*StratifiedKFold"):
        search.fit(X[order][:100], y[order][:100])


# --------------------------------------------------------------------------- rank_models
def test_rank_models_sorted_dataframe(layered_data):
    X, y = layered_data
    candidates = {
        "noise": FunctionTransformer(lambda X: np.random.RandomState(1).normal(size=(len(X), 5))),
        "block1": FeatureExtractorTransformer(model=layered_net(), layer=1, device="cpu"),
        "block0": FeatureExtractorTransformer(model=layered_net(), layer=0, device="cpu"),
    }
    ranking = rank_models(candidates, X, y)
    assert isinstance(ranking, pd.DataFrame)
    assert list(ranking.columns) == ["name", "score", "seconds", "n_features"]
    assert ranking["name"].iloc[0] == "block0"
    assert ranking["score"].is_monotonic_decreasing
    assert (ranking["seconds"] > 0).all()
    assert dict(zip(ranking["name"], ranking["n_features"])) == {"block0": 12, "block1": 8,
                                                                 "noise": 5}
    assert not hasattr(candidates["block0"], "module_")  # fitted clones, not the inputs

    ranking_cv = rank_models(list(candidates.items())[1:], X, y, metric="h_score", cv=3)
    assert list(ranking_cv["name"]) == ["block0", "block1"]
    assert "score_std" in ranking_cv.columns

    fitted = {"block0": candidates["block0"].fit(X)}
    assert rank_models(fitted, X, y, prefit=True)["score"].iloc[0] == pytest.approx(
        ranking["score"].iloc[0])


# --------------------------------------------------------------------------- domain shift
def test_domain_shift_score_range():
    rng = np.random.RandomState(0)
    source = rng.normal(size=(300, 5))
    same = domain_shift_score(source, rng.normal(size=(400, 5)), random_state=0)
    assert 0.0 <= same < 0.3
    shifted, acc = domain_shift_score(source, rng.normal(loc=3.0, size=(250, 5)),
                                      random_state=0, return_accuracy=True)
    assert shifted > 1.9 and acc > 0.97
    assert shifted == pytest.approx(2 * (2 * acc - 1))
    again = domain_shift_score(source, rng.normal(size=(400, 5)), random_state=0, cv=3)
    assert 0.0 <= again <= 2.0


# --------------------------------------------------------------------------- bad input
F_OK = np.random.RandomState(0).normal(size=(10, 3))
Y_OK = np.array([0, 1] * 5)
P_OK = np.full((10, 2), 0.5)


@pytest.mark.parametrize("call, error, match", [
    (lambda: logme_score(np.where(F_OK > 1, np.nan, F_OK), Y_OK), ValueError,
     "features.*NaN.*impute"),
    (lambda: logme_score(np.full((10, 3), np.inf), Y_OK), ValueError, "features.*infinity"),
    (lambda: logme_score(np.zeros((0, 3)), []), ValueError, "features.*at least 2 samples"),
    (lambda: logme_score(F_OK[:1], Y_OK[:1]), ValueError, "features.*at least 2 samples"),
    (lambda: logme_score(F_OK[:, 0], Y_OK), ValueError, r"reshape\(-1, 1\)"),
    (lambda: logme_score(F_OK, Y_OK[:9]), ValueError, "features has 10 samples but y has 9"),
    (lambda: logme_score(F_OK, np.zeros(10, int)), ValueError, "single class"),
    (lambda: logme_score(F_OK, np.full(10, 0.5)), ValueError, "constant"),
    (lambda: logme_score(F_OK, Y_OK, regression="yes"), ValueError,
     r"The 'regression' parameter of logme_score must be a str among \{'auto'\} or an "
     r"instance of 'bool'.*Got 'yes' instead"),
    (lambda: logme_score(F_OK, np.r_[Y_OK[:9], np.nan]), ValueError, "y contains NaN"),
    (lambda: h_score(F_OK, np.linspace(0, 1, 10)), ValueError, "class labels.*regression=True"),
    (lambda: h_score(F_OK, Y_OK[:8]), ValueError, "features has 10 samples but y has 8"),
    (lambda: h_score(F_OK, ["a"] * 10), ValueError, "single class"),
    (lambda: leep_score(F_OK[:, :2], Y_OK), ValueError, "negative values.*softmax"),
    (lambda: leep_score(np.abs(F_OK), Y_OK), ValueError, "rows must sum to 1.*softmax"),
    (lambda: leep_score(P_OK[:9], Y_OK), ValueError, "source_proba has 9 samples but y has 10"),
    (lambda: nce_score(Y_OK[:9], Y_OK), ValueError, "source_labels has 9 samples but y has 10"),
    (lambda: nce_score(Y_OK, np.ones(10)), ValueError, "single class"),
    (lambda: nce_score(np.linspace(0, 1, 10), Y_OK), ValueError, "source_labels must hold"),
    (lambda: domain_shift_score(F_OK, F_OK[:, :2]), ValueError, "extract both"),
    (lambda: domain_shift_score(F_OK, F_OK, cv=20), ValueError, "cv=20"),
    (lambda: transferability_scorer("accuracy"), ValueError,
     r"The 'metric' parameter of transferability_scorer must be a str among .* or a callable"),
    (lambda: transferability_scorer("logme", shrinkage=True), TypeError, "keyword"),
    (lambda: transferability_scorer()(LogisticRegression().fit(F_OK, Y_OK), F_OK, Y_OK),
     TypeError, "no transform"),
    (lambda: rank_models({}, F_OK, Y_OK), ValueError, "non-empty"),
])
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
