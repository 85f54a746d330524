"""X -> tensors: tables, image arrays, image files / PIL images, batching."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from sktransfer import FeatureExtractorTransformer
from sklearn.base import BaseEstimator

from sktransfer._inputs import InputData, iter_batches, make_batch, validate_input

RNG = np.random.RandomState(0)
X_TAB = RNG.normal(size=(10, 4)).astype(np.float32)


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, 2))


def make_cnn(in_channels=1, seed=0):
    """Works for any image size (global pooling before the head)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def make_flat_cnn(seed=0):
    """Only works for 1x8x8 images (flatten before the head)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def run(net, X):
    """``net`` minus its last layer on float ``X`` (the head-input features)."""
    with torch.no_grad():
        return net.eval()[:-1](torch.as_tensor(X, dtype=torch.float32)).numpy()


def fx_for(model, **kwargs):
    kwargs.setdefault("device", "cpu")
    return FeatureExtractorTransformer(model=model, **kwargs)


class Est(BaseEstimator):
    pass


def assert_close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def rgb_images():
    """Eight 8x8 RGB uint8 images, NHWC."""
    return np.random.RandomState(1).randint(0, 256, size=(8, 8, 8, 3), dtype=np.uint8)


def nhwc_to_float(X):
    return torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255.0


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------


def test_numpy_table():
    net = make_mlp()
    fx = fx_for(net).fit(X_TAB)
    out = fx.transform(X_TAB)
    assert out.dtype == np.float32 and out.shape == (10, 6)
    assert fx.n_features_in_ == 4
    assert fx.input_kind_ == "tabular"
    assert not hasattr(fx, "feature_names_in_")
    assert_close(out, run(net, X_TAB))
    assert_close(fx.fit_transform(X_TAB), out)


def test_dataframe_table_and_pandas_output():
    net = make_mlp()
    index = pd.Index([f"row{i}" for i in range(10)], name="id")
    df = pd.DataFrame(X_TAB, columns=["a", "b", "c", "d"], index=index)
    fx = fx_for(net).fit(df)
    assert fx.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    assert fx.n_features_in_ == 4
    assert_close(fx.transform(df), run(net, X_TAB))

    fx.set_output(transform="pandas")
    out = fx.transform(df)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_index_equal(out.index, index)
    assert out.columns.tolist() == fx.get_feature_names_out().tolist()
    assert_close(out.to_numpy(), run(net, X_TAB))

    with pytest.raises(ValueError, match="feature names"):
        fx.transform(df.rename(columns={"a": "z"}))


@pytest.mark.parametrize("wrap", [np.asarray, pd.DataFrame])
def test_float64_gives_float32_features(wrap):
    net = make_mlp()
    X64 = RNG.normal(size=(7, 4))
    fx = fx_for(net).fit(wrap(X64))
    out64 = fx.transform(wrap(X64))
    out32 = fx_for(net).fit(X64.astype(np.float32)).transform(X64.astype(np.float32))
    assert out64.dtype == np.float32
    np.testing.assert_array_equal(out64, out32)
    # the caller's array is not converted in place
    assert X64.dtype == np.float64


def test_other_numeric_tables():
    net = make_mlp()
    X_int = RNG.randint(0, 5, size=(6, 4))
    fx = fx_for(net).fit(X_int)
    assert_close(fx.transform(X_int), run(net, X_int))
    X_list = X_TAB.tolist()
    assert_close(fx.transform(X_list), run(net, X_TAB))
    X_ro = X_TAB.copy()
    X_ro.setflags(write=False)
    assert_close(fx.transform(X_ro), run(net, X_TAB))


@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "infinity"),
                                         (-np.inf, "infinity")])
def test_nan_and_inf_rejected(value, word):
    fx = fx_for(make_mlp())
    X_bad = X_TAB.copy()
    X_bad[3, 2] = value
    with pytest.raises(ValueError, match=word):
        fx.fit(X_bad)
    fx.fit(X_TAB)
    with pytest.raises(ValueError, match=word):
        fx.transform(X_bad)
    with pytest.raises(ValueError, match=word):
        fx.transform(pd.DataFrame(X_bad))
    # images too
    imgs = RNG.rand(3, 1, 8, 8).astype(np.float32)
    fx_img = fx_for(make_cnn()).fit(imgs)
    imgs[1, 0, 2, 2] = value
    with pytest.raises(ValueError, match=word):
        fx_img.transform(imgs)
    with pytest.raises(ValueError, match=word):
        fx_for(make_cnn()).fit(imgs)


@pytest.mark.parametrize("X_empty", [np.empty((0, 4)), pd.DataFrame(np.empty((0, 4))),
                                     np.empty((0, 1, 8, 8), dtype=np.float32),
                                     np.empty((0, 8, 8, 3), dtype=np.uint8), []],
                         ids=["numpy", "frame", "nchw", "nhwc", "list"])
def test_empty_X(X_empty):
    with pytest.raises(ValueError, match=r"0 sample|Expected 2D array"):
        fx_for(make_mlp()).fit(X_empty)


def test_empty_X_at_transform():
    fx = fx_for(make_mlp()).fit(X_TAB)
    with pytest.raises(ValueError, match="0 sample"):
        fx.transform(np.empty((0, 4)))


def test_wrong_number_of_features_at_transform():
    fx = fx_for(make_mlp()).fit(X_TAB)
    with pytest.raises(ValueError, match=r"X has 3 features.*expecting 4 features"):
        fx.transform(X_TAB[:, :3])


def test_fit_on_table_the_net_cannot_take():
    with pytest.raises(ValueError, match=r"cannot process X.*\(2, 5\)"):
        fx_for(make_mlp()).fit(RNG.normal(size=(6, 5)))


@pytest.mark.parametrize("X_bad", [
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}),
    np.array([[1.0, "x"], [2.0, "y"]], dtype=object),
    [["1.0", "abc"], ["2.0", "3.0"]],
], ids=["frame", "object-array", "list"])
def test_string_columns_rejected(X_bad):
    with pytest.raises(ValueError, match=r"convert string to float|could not convert"):
        fx_for(make_mlp()).fit(X_bad)


def test_kind_mismatch_between_fit_and_transform():
    fx = fx_for(make_cnn()).fit(RNG.rand(3, 1, 8, 8).astype(np.float32))
    with pytest.raises(ValueError, match=r"2-D table.*fitted on a numeric array"):
        fx.transform(X_TAB)


def test_refit_forgets_table_attributes():
    """Fitting on images after a DataFrame must not leave stale table attributes."""
    net = make_cnn()
    fx = FeatureExtractorTransformer(model=make_mlp(), device="cpu")
    fx.fit(pd.DataFrame(X_TAB, columns=list("abcd")))
    assert hasattr(fx, "feature_names_in_") and fx.n_features_in_ == 4
    fx.set_params(model=net).fit(RNG.rand(3, 1, 8, 8).astype(np.float32))
    assert not hasattr(fx, "feature_names_in_")
    assert not hasattr(fx, "n_features_in_")
    assert fx.input_shape_ == (1, 8, 8)
    fx.set_params(model=make_mlp()).fit(X_TAB)
    assert fx.n_features_in_ == 4 and not hasattr(fx, "input_shape_")


# --------------------------------------------------------------------------
# image arrays
# --------------------------------------------------------------------------


def test_nchw_float_images():
    net = make_flat_cnn()
    X = RNG.rand(5, 1, 8, 8).astype(np.float32)
    fx = fx_for(net).fit(X)
    assert fx.input_kind_ == "array" and fx.input_shape_ == (1, 8, 8)
    assert not hasattr(fx, "n_features_in_")
    out = fx.transform(X)
    assert out.shape == (5, 256)
    assert_close(out, run(net, X))
    # float64 images: same features
    np.testing.assert_array_equal(fx.transform(X.astype(np.float64)), out)


def test_nchw_pooling_of_intermediate_block():
    net = make_cnn()
    X = RNG.rand(4, 1, 8, 8).astype(np.float32)
    with torch.no_grad():
        fmap = net.eval()[:2](torch.as_tensor(X))
    avg = fx_for(net, layer=0, pooling="avg").fit(X).transform(X)
    mx = fx_for(net, layer=0, pooling="max").fit(X).transform(X)
    flat = fx_for(net, layer=0, pooling="flatten").fit(X).transform(X)
    assert_close(avg, fmap.mean(dim=(2, 3)).numpy())
    assert_close(mx, fmap.amax(dim=(2, 3)).numpy())
    assert_close(flat, fmap.reshape(4, -1).numpy())


def test_wrong_image_shape_at_transform():
    fx = fx_for(make_flat_cnn()).fit(RNG.rand(3, 1, 8, 8).astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\).*shape \(1, 8, 8\)"):
        fx.transform(RNG.rand(3, 1, 16, 16).astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\).*shape \(1, 8, 8\)"):
        fx.transform(RNG.rand(3, 3, 8, 8).astype(np.float32))


@pytest.mark.parametrize("preprocess", [None, "auto"])
def test_nhwc_uint8_images(rgb_images, preprocess):
    net = make_cnn(in_channels=3)
    fx = fx_for(net, preprocess=preprocess).fit(rgb_images)
    assert fx.input_kind_ == "uint8" and fx.input_shape_ == (8, 8, 3)
    out = fx.transform(rgb_images)
    assert_close(out, run(net, nhwc_to_float(rgb_images)))
    # the same pixels as a float NCHW array in [0, 1] give the same features
    as_float = nhwc_to_float(rgb_images).numpy()
    assert_close(fx_for(net).fit(as_float).transform(as_float), out)


def test_uint8_grayscale_channel(rgb_images):
    gray = rgb_images[..., :1]
    net = make_cnn(in_channels=1)
    out = fx_for(net).fit(gray).transform(gray)
    assert_close(out, run(net, nhwc_to_float(gray)))


def test_uint8_wrong_size_at_transform(rgb_images):
    fx = fx_for(make_cnn(in_channels=3)).fit(rgb_images)
    big = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(16, 16, 3\).*shape \(8, 8, 3\)"):
        fx.transform(big)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 8, 8), (4, 8, 8, 5), (4, 2, 8, 8, 3)],
                         ids=["nchw", "3d", "5-channels", "5d"])
def test_uint8_bad_layout(shape):
    X = np.zeros(shape, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"uint8 image arrays must have shape \(n, H, W, C\)"):
        fx_for(make_cnn(in_channels=3)).fit(X)


def test_non_numeric_nd_array():
    X = np.full((2, 1, 8, 8), "a", dtype=object)
    with pytest.raises(ValueError, match=r"must hold numbers.*dtype object"):
        fx_for(make_cnn()).fit(X)


def test_custom_preprocess_for_uint8_arrays(rgb_images):
    net = make_cnn(in_channels=3)
    calls = []

    def preprocess(batch):
        calls.append((batch.dtype, tuple(batch.shape)))
        return batch.float() / 127.5 - 1.0

    fx = fx_for(net, preprocess=preprocess, batch_size=5).fit(rgb_images)
    calls.clear()
    out = fx.transform(rgb_images)
    assert calls == [(torch.uint8, (5, 3, 8, 8)), (torch.uint8, (3, 3, 8, 8))]
    expected = run(net, torch.from_numpy(rgb_images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert_close(out, expected)


# --------------------------------------------------------------------------
# image files and PIL images
# --------------------------------------------------------------------------


def write_pngs(images, folder, sizes=None):
    paths = []
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        if sizes is not None:
            pil = pil.resize(sizes[i])
        path = folder / f"img{i}.png"
        pil.save(path)
        paths.append(path)
    return paths


def test_files_and_pil_match_uint8_array(rgb_images, tmp_path):
    net = make_cnn(in_channels=3)
    expected = fx_for(net).fit(rgb_images).transform(rgb_images)

    paths = write_pngs(rgb_images, tmp_path)
    for X in ([str(p) for p in paths], paths, np.array([str(p) for p in paths], dtype=object)):
        fx = fx_for(net, batch_size=3).fit(X)
        assert fx.input_kind_ == "files"
        assert_close(fx.transform(X), expected)

    pils = [Image.fromarray(img) for img in rgb_images]
    fx = fx_for(net, batch_size=3).fit(pils)
    assert_close(fx.transform(pils), expected)
    # fitted on files, transform accepts a uint8 array too (and vice versa)
    assert_close(fx.transform(rgb_images), expected)
    assert_close(fx_for(net).fit(rgb_images).transform(pils), expected)


def test_rgba_pil_images_are_converted(rgb_images):
    net = make_cnn(in_channels=3)
    rgba = [Image.fromarray(img).convert("RGBA") for img in rgb_images[:3]]
    out = fx_for(net).fit(rgba).transform(rgba)
    assert_close(out, run(net, nhwc_to_float(rgb_images[:3])))


def test_files_and_pil_images_take_the_networks_channels(rgb_images, tmp_path):
    """One rule for files and PIL images: they become the mode the network's first
    convolution takes (3 channels: RGB, 1: grayscale), whatever mode they come in."""
    gray = [Image.fromarray(img).convert("L") for img in rgb_images[:4]]
    rgb = [Image.fromarray(img) for img in rgb_images[:4]]
    palette = [img.convert("P") for img in rgb]
    gray_paths = write_pngs([np.asarray(g) for g in gray], tmp_path)
    gray_as_rgb = np.stack([np.asarray(g.convert("RGB")) for g in gray])

    net3 = make_cnn(in_channels=3)
    expected = run(net3, nhwc_to_float(gray_as_rgb))
    for X in (gray, gray_paths):  # L images and L files
        assert_close(fx_for(net3).fit(X).transform(X), expected)
    mixed = gray[:2] + [g.convert("RGB") for g in gray[2:]]  # L and RGB in one list
    assert_close(fx_for(net3).fit(mixed).transform(mixed), expected)

    net1 = make_cnn(in_channels=1)
    as_gray = np.stack([np.asarray(img.convert("L")) for img in rgb])[..., None]
    expected = run(net1, nhwc_to_float(as_gray))
    (tmp_path / "rgb").mkdir()
    rgb_paths = write_pngs(rgb_images[:4], tmp_path / "rgb")
    for X in (rgb, rgb_paths):  # RGB images and files for a grayscale network
        assert_close(fx_for(net1).fit(X).transform(X), expected)
    expected_p = run(net1, nhwc_to_float(
        np.stack([np.asarray(p.convert("L")) for p in palette])[..., None]))
    assert_close(fx_for(net1).fit(palette).transform(palette), expected_p)

    # no convolution to ask: L stays L (1 channel), for files and PIL alike
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2))
    expected = run(mlp, np.stack([np.asarray(g) for g in gray])[:, None] / 255.0)
    for X in (gray, gray_paths):
        assert_close(fx_for(mlp).fit(X).transform(X), expected)


def test_missing_image_file(rgb_images, tmp_path):
    paths = write_pngs(rgb_images[:2], tmp_path)
    missing = tmp_path / "nope.png"
    fx = fx_for(make_cnn(in_channels=3)).fit(paths)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        fx.transform(paths + [missing])


def test_different_image_sizes_need_preprocess(rgb_images, tmp_path):
    net = make_cnn(in_channels=3)
    sizes = [(8, 8), (10, 12), (8, 8), (8, 8)]
    paths = write_pngs(rgb_images[:4], tmp_path, sizes=sizes)
    with pytest.raises(ValueError, match=r"different sizes.*preprocess=.*Resize"):
        fx_for(net).fit(paths)
    pils = [Image.open(p).convert("RGB") for p in paths]
    fx = fx_for(net).fit(pils[2:])
    with pytest.raises(ValueError, match=r"different sizes.*preprocess="):
        fx.transform(pils)


def test_custom_preprocess_for_files(rgb_images, tmp_path):
    net = make_cnn(in_channels=3)
    sizes = [(8, 8), (10, 12), (16, 16), (9, 8)]
    paths = write_pngs(rgb_images[:4], tmp_path, sizes=sizes)
    seen = []

    def preprocess(img):
        seen.append(img.size)
        return pil_to_tensor(img.resize((8, 8)))  # uint8: scaled to [0, 1] after

    fx = fx_for(net, preprocess=preprocess, batch_size=2).fit(paths)
    seen.clear()
    out = fx.transform(paths)
    assert seen == sizes
    resized = np.stack([np.asarray(Image.open(p).convert("RGB").resize((8, 8))) for p in paths])
    assert_close(out, run(net, nhwc_to_float(resized)))


# --------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["table", "nchw", "nhwc"])
def test_batch_size_does_not_change_features(kind, rgb_images):
    if kind == "table":
        net, X = make_mlp(), RNG.normal(size=(10, 4))
    elif kind == "nchw":
        net, X = make_cnn(), RNG.rand(10, 1, 8, 8).astype(np.float32)
    else:
        net, X = make_cnn(in_channels=3), rgb_images
    small = fx_for(net, batch_size=3).fit(X).transform(X)
    big = fx_for(net, batch_size=100).fit(X).transform(X)
    one = fx_for(net, batch_size=1).fit(X).transform(X)
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, big, rtol=1e-5, atol=1e-6)


def test_transform_runs_in_batches():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), Recorder(), nn.Linear(5, 2))
    fx = fx_for(net, batch_size=4).fit(X_TAB)
    seen.clear()
    fx.transform(X_TAB)
    assert seen == [4, 4, 2]


def test_iter_batches_and_make_batch():
    X64 = RNG.normal(size=(10, 4))
    data = validate_input(Est(), X64, reset=True)
    assert isinstance(data, InputData) and data.kind == "tabular" and len(data) == 10
    batches = list(iter_batches(data, 3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert all(b.dtype == torch.float32 for b in batches)
    np.testing.assert_array_equal(torch.cat(batches).numpy(), X64.astype(np.float32))
    assert X64.dtype == np.float64

    imgs = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    batch = make_batch(InputData(imgs, "uint8"), 0, 2)
    assert batch.dtype == torch.float32 and batch.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(batch.numpy(), imgs.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert imgs.dtype == np.uint8  # input untouched


def test_validate_input_with_y():
    est = Est()
    data, y = validate_input(est, RNG.rand(4, 1, 8, 8), reset=True, y=[0, 1, 0, 1])
    assert data.kind == "array" and y.tolist() == [0, 1, 0, 1]
    assert est.input_shape_ == (1, 8, 8) and not hasattr(est, "n_features_in_")
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        validate_input(Est(), X_TAB, reset=True, y=[0, 1])
