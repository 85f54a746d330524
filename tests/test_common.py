"""scikit-learn's estimator checks over the three estimators.

The model is a tiny MLP whose input layer is an ``nn.LazyLinear``: the
checks feed tables of many widths, and the lazy layer is sized (with a
seeded initialisation) on the first batch. No check is expected to fail.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sktransfer import (
    FeatureExtractorTransformer,
    FineTunedClassifier,
    FineTunedRegressor,
    TabularPretrainer,
)

from .conftest import tiny_mlp

# The fine-tuned estimators need a few epochs at a higher rate to pass the
# checks' accuracy thresholds (check_classifiers_train, check_regressors_train).
_FIT = {"max_epochs": 40, "lr": 1e-2, "random_state": 0, "device": "cpu"}

ESTIMATORS = [
    FeatureExtractorTransformer(model=tiny_mlp, device="cpu"),
    FineTunedClassifier(model=tiny_mlp, **_FIT),
    FineTunedRegressor(model=tiny_mlp, **_FIT),
    TabularPretrainer(hidden_layer_sizes=(8,), max_epochs=3, random_state=0, device="cpu"),
]

# Expected failures, each with the reason a reviewer needs.
_SGD_WEIGHTS = (
    "mini-batch SGD: a weight scales a sample's loss inside its batch, while a "
    "repeated sample changes the batches and the number of steps (sklearn marks "
    "this check as failing for SGDClassifier and MLPClassifier too)"
)
EXPECTED_FAILED_CHECKS = {
    "FineTunedClassifier": {"check_sample_weight_equivalence_on_dense_data": _SGD_WEIGHTS},
    "FineTunedRegressor": {"check_sample_weight_equivalence_on_dense_data": _SGD_WEIGHTS},
}


@parametrize_with_checks(
    ESTIMATORS,
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(type(est).__name__, {}),
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
