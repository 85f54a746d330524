"""save_weights / load_weights: sharing a fine-tuned model as safetensors, no pickle."""

import numpy as np
import pandas as pd
import pytest
import torch

from sktransfer import FineTunedClassifier, FineTunedRegressor

CPU = {"device": "cpu"}


def test_classifier_round_trip_with_string_labels(source_cnn, digits, tmp_path):
    X, y = digits["X_target"][:120], digits["y_target"][:120]
    labels = np.array(["five", "six", "seven", "eight", "nine"])[y - 5]
    clf = FineTunedClassifier(model=source_cnn, freeze_depth=1, head_hidden_sizes=(16,),
                              max_epochs=3, random_state=0, **CPU).fit(X, labels)
    path = clf.save_weights(tmp_path / "clf.safetensors")
    again = FineTunedClassifier(model=source_cnn, **CPU).load_weights(path)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))
    assert list(again.classes_) == list(clf.classes_)
    assert again.head_hidden_sizes == (16,) and again.freeze_depth_ == 1
    assert again.history_ == clf.history_ and again.n_iter_ == 3
    with pytest.raises(ValueError, match=r"\(1, 12, 12\)"):  # the input layout came along
        again.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_regressor_round_trip_with_dataframe(tabular_source, tmp_path):
    X = pd.DataFrame(tabular_source["X_source"][:150], columns=[f"c{i}" for i in range(20)])
    y = tabular_source["y_source"][:150, 0]
    reg = FineTunedRegressor(model=tabular_source["net"], max_epochs=3, random_state=0,
                             **CPU).fit(X, y)
    path = reg.save_weights(tmp_path / "reg.safetensors")
    again = FineTunedRegressor(model=tabular_source["net"], **CPU).load_weights(path)
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))
    assert again.predict(X).shape == (150,)
    assert list(again.feature_names_in_) == list(X.columns)


def test_file_holds_only_tensors_and_text(source_cnn, digits, tmp_path):
    from safetensors import safe_open

    clf = FineTunedClassifier(model=source_cnn, max_epochs=1, random_state=0, **CPU).fit(
        digits["X_target"][:40], digits["y_target"][:40])
    path = clf.save_weights(tmp_path / "clf.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(clf.module_.state_dict())
        assert "sktransfer" in f.metadata()


def test_wrong_architecture_or_file_is_a_clear_error(source_cnn, tabular_source, digits,
                                                     tmp_path):
    clf = FineTunedClassifier(model=source_cnn, max_epochs=1, random_state=0, **CPU).fit(
        digits["X_target"][:40], digits["y_target"][:40])
    path = clf.save_weights(tmp_path / "clf.safetensors")
    with pytest.raises(ValueError, match="holds a FineTunedClassifier"):
        FineTunedRegressor(model=source_cnn, **CPU).load_weights(path)
    with pytest.raises(ValueError, match="cannot process X|do not fit"):
        FineTunedClassifier(model=tabular_source["net"], **CPU).load_weights(path)
    with pytest.raises(ValueError, match=".safetensors"):
        clf.save_weights(tmp_path / "clf.pt")
    with pytest.raises(FileNotFoundError):
        FineTunedClassifier(model=source_cnn, **CPU).load_weights(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not written by save_weights"):
        FineTunedClassifier(model=source_cnn, **CPU).load_weights(tmp_path / "plain.safetensors")


def test_unfitted_cannot_save(source_cnn, tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FineTunedClassifier(model=source_cnn).save_weights(tmp_path / "x.safetensors")


def test_pickle_of_a_gpu_fitted_estimator_holds_a_cpu_network(source_cnn, digits):
    """A model fitted on CUDA must unpickle on a CPU-only machine: the pickle holds
    the network on the CPU. (Simulated here by marking a CPU fit as a CUDA one; the
    real CUDA round trip runs in test_cuda_pickle_round_trip where CUDA exists.)"""
    import pickle

    X, y = digits["X_target"][:40], digits["y_target"][:40]
    est = FineTunedClassifier(model=source_cnn, max_epochs=1, random_state=0, **CPU).fit(X, y)
    expected = est.predict_proba(X)
    est.device_ = "cuda:0"
    state = est.__getstate__()
    assert state["device_"] == "cpu" and state["module_"] is not est.module_
    again = pickle.loads(pickle.dumps(est))
    assert again.device_ == "cpu"
    assert all(p.device.type == "cpu" for p in again.module_.parameters())
    np.testing.assert_array_equal(again.predict_proba(X), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pickle_round_trip(source_cnn, digits):
    import pickle

    X, y = digits["X_target"][:40], digits["y_target"][:40]
    est = FineTunedClassifier(model=source_cnn, max_epochs=1, random_state=0,
                              device="cuda").fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    assert all(p.device.type == "cpu" for p in again.module_.parameters())
    np.testing.assert_allclose(again.predict_proba(X), est.predict_proba(X), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("make", ["classifier", "regressor", "extractor", "pretrainer"])
def test_joblib_round_trip_identical_outputs(make, tabular_source, tmp_path):
    import joblib

    from sktransfer import FeatureExtractorTransformer, TabularPretrainer

    X, y = tabular_source["X_target"][:100], tabular_source["y_target"][:100]
    net = tabular_source["net"]
    est, out = {
        "classifier": (FineTunedClassifier(model=net, max_epochs=2, random_state=0, **CPU),
                       "predict_proba"),
        "regressor": (FineTunedRegressor(model=net, max_epochs=2, random_state=0, **CPU),
                      "predict"),
        "extractor": (FeatureExtractorTransformer(model=net, **CPU), "transform"),
        "pretrainer": (TabularPretrainer(hidden_layer_sizes=(8,), max_epochs=2,
                                         random_state=0, **CPU), "transform"),
    }[make]
    target = y if make == "classifier" else X[:, 0] if make == "regressor" else None
    est.fit(X, target)
    joblib.dump(est, tmp_path / "est.joblib")
    again = joblib.load(tmp_path / "est.joblib")
    np.testing.assert_array_equal(getattr(again, out)(X), getattr(est, out)(X))
