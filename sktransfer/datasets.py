"""Small transfer tasks to try sktransfer on, generated locally in a second.

Each function returns a :class:`~sklearn.utils.Bunch` with a *source* task
(plenty of labels, to pretrain on) and a *target* task (few labels, to
transfer to), built from scikit-learn's bundled digits or from a synthetic
generator: nothing is downloaded. They are the tasks of sktransfer's examples
and of ``benchmarks/bench_quality.py``.

- :func:`load_digits_transfer`: digits 0-4 -> digits 5-9, 1x8x8 images.
- :func:`load_shifted_digits`: the same, each digit pasted at a random place of
  a 12x12 canvas (the main example's task).
- :func:`load_digits_table`: the digits as a table of pixel columns, with an
  unlabeled pool for :class:`~sktransfer.TabularPretrainer`.
- :func:`make_tabular_transfer`: a synthetic source table with numeric targets
  and a related target table (classification or regression).
- :func:`split_per_class`: draw exactly ``n`` labelled samples of each class.
- :func:`make_digits_cnn`: the small, untrained CNN sized for the digit images.

In the ``load_*`` functions the images and tables are fixed; ``random_state``
only draws the labelled target samples. A source model pretrained once thus
serves every draw, and every draw is scored on the same kind of test set.
Nothing here trains a network: pretraining is the user's first step, shown in
the examples (a loader that trained would be slow, and would hide that step).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch, _safe_indexing, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import check_consistent_length
from torch import nn

__all__ = [
    "load_digits_table",
    "load_digits_transfer",
    "load_shifted_digits",
    "make_digits_cnn",
    "make_tabular_transfer",
    "split_per_class",
]

_N_PER_CLASS = [Interval(numbers.Integral, 1, None, closed="left")]


def _digit_images():
    """sklearn's digits as float32 images in [0, 1], shape (1797, 8, 8), and labels."""
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target


@validate_params(
    {"X": ["array-like"], "y": ["array-like"], "n_per_class": _N_PER_CLASS + [dict],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def split_per_class(X, y, n_per_class, *, random_state=None):
    """Draw exactly ``n_per_class`` samples of each class; the rest is returned too.

    :func:`~sklearn.model_selection.train_test_split` with ``stratify=y`` keeps
    the class *proportions*; a few-label experiment needs the same *count*
    of every class (or a chosen count per class), which this function draws,
    without replacement.

    Parameters
    ----------
    X : array-like of shape (n_samples, ...) or DataFrame
        The samples (a table, an image array or a list).
    y : array-like of shape (n_samples,)
        Class labels.
    n_per_class : int or dict
        Number of samples drawn from each class, or ``{label: count}`` for a
        different count per class (an imbalanced draw; a class left out is
        not drawn from).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw: the same seed gives the same samples.

    Returns
    -------
    X_labelled, X_rest, y_labelled, y_rest : arrays
        In the order of :func:`~sklearn.model_selection.train_test_split`. The
        labelled samples come class by class (sorted labels); the rest keep
        their original order.

    Raises
    ------
    ValueError
        If a class has fewer than the requested number of samples, or a label
        of the dict is not in ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.datasets import split_per_class
    >>> X, y = np.arange(20).reshape(10, 2), np.array([0] * 6 + [1] * 4)
    >>> X_lab, X_rest, y_lab, y_rest = split_per_class(X, y, 2, random_state=0)
    >>> y_lab, y_rest
    (array([0, 0, 1, 1]), array([0, 0, 0, 0, 1, 1]))
    >>> split_per_class(X, y, {0: 3, 1: 1}, random_state=0)[2]
    array([0, 0, 0, 1])
    """
    check_consistent_length(X, y)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D class labels, got shape {y.shape}.")
    rng = check_random_state(random_state)
    classes, counts = np.unique(y, return_counts=True)
    available = dict(zip(classes.tolist(), counts.tolist()))
    if isinstance(n_per_class, dict):
        wanted = {np.asarray(c).item(): n for c, n in n_per_class.items()}
        unknown = set(wanted) - set(available)
        if unknown:
            raise ValueError(f"n_per_class names labels that are not in y: "
                             f"{sorted(unknown, key=str)}; the classes are {list(available)}.")
        bad = {c: n for c, n in wanted.items()
               if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0}
        if bad:
            raise ValueError(f"n_per_class counts must be ints >= 0, got {bad}.")
    else:
        wanted = dict.fromkeys(available, n_per_class)
    short = {c: available[c] for c, n in wanted.items() if available[c] < n}
    if short:
        raise ValueError(
            f"n_per_class={n_per_class} but these classes have fewer samples: {short} "
            f"(class: count). Ask for at most {min(short.values())} of them."
        )
    idx = np.concatenate([
        rng.choice(np.flatnonzero(y == c), wanted[c], replace=False)
        for c in classes.tolist() if c in wanted
    ] + [np.zeros(0, dtype=int)])
    rest = np.setdiff1d(np.arange(len(y)), idx)
    return _safe_indexing(X, idx), _safe_indexing(X, rest), y[idx], y[rest]


@validate_params(
    {"n_per_class": _N_PER_CLASS, "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def load_digits_transfer(n_per_class=10, *, random_state=None):
    """Digits 0-4 (source) -> digits 5-9 (target) as one-channel 8x8 images.

    scikit-learn's bundled digits (:func:`~sklearn.datasets.load_digits`),
    scaled to [0, 1]. The source task is every image of the digits 0-4 (901
    images, 5 classes). The target task is the digits 5-9: ``n_per_class``
    labelled images of each, drawn by ``random_state``; every other image of
    the digits 5-9 is the test set.

    Parameters
    ----------
    n_per_class : int, default=10
        Labelled target images per class (at most 174).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of the labelled images (the images themselves are fixed).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_source`` float32 of shape (901, 1, 8, 8), ``y_source`` (labels 0-4);
        ``X_train``, ``y_train``: the labelled target images (labels 5-9);
        ``X_test``, ``y_test``: the other target images; ``DESCR``.

    See Also
    --------
    load_shifted_digits : the same digits at random places of a larger canvas,
        where raw pixels are a weaker baseline.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.datasets import load_digits_transfer
    >>> data = load_digits_transfer(n_per_class=5, random_state=0)
    >>> data.X_source.shape, data.X_train.shape, data.X_test.shape
    ((901, 1, 8, 8), (25, 1, 8, 8), (871, 1, 8, 8))
    >>> np.unique(data.y_train)
    array([5, 6, 7, 8, 9])
    """
    images, labels = _digit_images()
    images = images[:, None]  # (n, C, H, W), the layout torch networks take
    source = labels < 5
    X_train, X_test, y_train, y_test = split_per_class(
        images[~source], labels[~source], n_per_class, random_state=random_state)
    return Bunch(
        X_source=images[source], y_source=labels[source],
        X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
        DESCR=(f"Digits 0-4 -> 5-9, 1x8x8 images in [0, 1]; {n_per_class} labelled "
               "target images per class, the other target images to test."),
    )


def _place(images, copies, seed, size):
    """Paste each 8x8 image at a random position of a ``size`` x ``size`` canvas."""
    rng = np.random.RandomState(seed)
    out = np.zeros((copies * len(images), 1, size, size), dtype=np.float32)
    for c in range(copies):
        rows, cols = rng.randint(0, size - 8 + 1, size=(2, len(images)))
        for i, (r, s) in enumerate(zip(rows, cols)):
            out[c * len(images) + i, 0, r:r + 8, s:s + 8] = images[i]
    return out


@validate_params(
    {"n_per_class": _N_PER_CLASS + [None],
     "canvas_size": [Interval(numbers.Integral, 8, None, closed="left")],
     "n_source_copies": [Interval(numbers.Integral, 1, None, closed="left")],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def load_shifted_digits(n_per_class=10, *, canvas_size=12, n_source_copies=3,
                        random_state=None):
    """Digits 0-4 -> 5-9, each digit pasted at a random place of a larger canvas.

    On centred 8x8 digits raw pixels are already good features; shifted
    digits need what a CNN learns on the source task (stroke detectors that
    work wherever the digit is), so transfer has something to bring. This is
    the task of the example
    :ref:`sphx_glr_auto_examples_plot_digits_transfer.py`.

    * Source: 80 % of the digits 0-4 (a stratified split), ``n_source_copies``
      copies of each at independent random places; the other 20 %, one copy
      each, are ``X_source_test``, to check the pretraining.
    * Target: the digits 5-9, one copy each, split in half (stratified): a
      pool to draw labelled images from, and the test set.

    Parameters
    ----------
    n_per_class : int or None, default=10
        Labelled target images per class, drawn from the pool (at most 87).
        ``None`` labels the whole pool.
    canvas_size : int, default=12
        Height and width of the canvas; ``8`` leaves the digits where they are.
    n_source_copies : int, default=3
        Shifted copies of each source image.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of the labelled images. The positions of the digits
        and the splits are fixed.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_source`` float32 of shape (n, 1, canvas_size, canvas_size) and
        ``y_source`` (labels 0-4); ``X_source_test``, ``y_source_test``;
        ``X_pool``, ``y_pool`` (the target images labels are drawn from);
        ``X_train``, ``y_train`` (the labelled ones); ``X_test``, ``y_test``;
        ``DESCR``.

    See Also
    --------
    split_per_class : draw other labelled sets from ``X_pool``.
    make_digits_cnn : a CNN sized for these images.

    Examples
    --------
    >>> from sktransfer.datasets import load_shifted_digits
    >>> data = load_shifted_digits(n_per_class=5, random_state=0)
    >>> data.X_source.shape, data.X_train.shape, data.X_test.shape
    ((2160, 1, 12, 12), (25, 1, 12, 12), (448, 1, 12, 12))
    """
    images, labels = _digit_images()
    source = labels < 5
    img_train, img_test, y_source, y_source_test = train_test_split(
        images[source], labels[source], test_size=0.2, stratify=labels[source],
        random_state=0,
    )
    X_target = _place(images[~source], 1, seed=2, size=canvas_size)
    X_pool, X_test, y_pool, y_test = train_test_split(
        X_target, labels[~source], test_size=0.5, stratify=labels[~source], random_state=0
    )
    if n_per_class is None:
        X_train, y_train = X_pool, y_pool
    else:
        X_train, _, y_train, _ = split_per_class(X_pool, y_pool, n_per_class,
                                                 random_state=random_state)
    return Bunch(
        X_source=_place(img_train, n_source_copies, seed=0, size=canvas_size),
        y_source=np.tile(y_source, n_source_copies),
        X_source_test=_place(img_test, 1, seed=1, size=canvas_size),
        y_source_test=y_source_test,
        X_pool=X_pool, y_pool=y_pool, X_train=X_train, y_train=y_train,
        X_test=X_test, y_test=y_test,
        DESCR=(f"Digits 0-4 -> 5-9 at random places of a {canvas_size}x{canvas_size} "
               f"canvas; {n_per_class or 'all'} labelled target images per class."),
    )


@validate_params(
    {"n_per_class": _N_PER_CLASS,
     "unlabeled_size": [Interval(numbers.Real, 0, 1, closed="neither")],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def load_digits_table(n_per_class=5, *, unlabeled_size=0.7, random_state=None):
    """The digits as a plain table: many unlabeled rows, a few labelled ones.

    One column per pixel (scaled to [0, 1]), no image structure used, all ten
    classes. A stratified ``unlabeled_size`` share of the rows is an unlabeled
    pool to pretrain on (:class:`~sktransfer.TabularPretrainer`); from the
    other rows, ``n_per_class`` per class are labelled and the rest is the
    test set. Columns that are constant in the unlabeled pool (blank pixels)
    are dropped: they carry no information and ``TabularPretrainer`` refuses
    them.

    Parameters
    ----------
    n_per_class : int, default=5
        Labelled rows per class (at most 52 with the default split).
    unlabeled_size : float, default=0.7
        Share of the rows in the unlabeled pool.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of the labelled rows (the pool split is fixed).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_unlabeled`` float32 (the pool, without its labels); ``X_train``,
        ``y_train`` (the labelled rows); ``X_test``, ``y_test``;
        ``feature_names`` (the pixels kept); ``DESCR``.

    Examples
    --------
    >>> from sktransfer.datasets import load_digits_table
    >>> data = load_digits_table(n_per_class=5, random_state=0)
    >>> data.X_unlabeled.shape, data.X_train.shape, data.X_test.shape
    ((1257, 60), (50, 60), (490, 60))
    """
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X_pool, X_rest, _, y_rest = train_test_split(
        X, digits.target, train_size=unlabeled_size, stratify=digits.target, random_state=0
    )
    keep = np.ptp(X_pool, axis=0) > 0
    X_train, X_test, y_train, y_test = split_per_class(
        X_rest[:, keep], y_rest, n_per_class, random_state=random_state)
    return Bunch(
        X_unlabeled=X_pool[:, keep], X_train=X_train, y_train=y_train,
        X_test=X_test, y_test=y_test,
        feature_names=np.asarray(digits.feature_names)[keep],
        DESCR=(f"Digits as a table of {keep.sum()} pixel columns; {len(X_pool)} unlabeled "
               f"rows, {n_per_class} labelled rows per class."),
    )


@validate_params(
    {"n_source": [Interval(numbers.Integral, 1, None, closed="left")],
     "n_train": [Interval(numbers.Integral, 1, None, closed="left")],
     "n_test": [Interval(numbers.Integral, 0, None, closed="left")],
     "target": [StrOptions({"classification", "regression"})],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def make_tabular_transfer(n_source=4000, n_train=150, n_test=2000, *,
                          target="classification", random_state=None):
    """A source table with numeric targets and a related, smaller target table.

    Every row has 6 hidden factors ``z ~ N(0, I)``; its 20 columns are noisy
    nonlinear mixtures of them, ``tanh(z) @ M + 0.3 * noise``, with the same
    mixing matrix ``M`` in both tables. The source table has 4 regression
    targets, ``sin(z0) + z1**2``, ``z2 * z3``, ``|z4|`` and ``z5**3 / 3``
    (standardised), to pretrain a network on. The target depends on some of
    the same functions, ``s = sin(z0) + z1**2 + 1.5 * z2 * z3 - |z4|``: a
    network that learned the source targets has a head start.

    Parameters
    ----------
    n_source : int, default=4000
        Rows of the source table.
    n_train, n_test : int, default=150, 2000
        Labelled target rows, and target rows to test on (may be 0).
    target : {"classification", "regression"}, default="classification"
        ``"classification"``: ``y = s > median(s)`` (0/1, balanced);
        ``"regression"``: ``y = s``.
    random_state : int, RandomState instance or None, default=None
        Seeds everything (the mixing, the rows, the noise), as in
        :func:`sklearn.datasets.make_regression`.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_source`` float32 (n_source, 20), ``y_source`` float32
        (n_source, 4); ``X_train``, ``y_train``; ``X_test``, ``y_test``;
        ``DESCR``.

    Examples
    --------
    >>> from sktransfer.datasets import make_tabular_transfer
    >>> data = make_tabular_transfer(n_source=500, n_train=50, n_test=100,
    ...                              random_state=0)
    >>> data.X_source.shape, data.y_source.shape, data.X_train.shape
    ((500, 20), (500, 4), (50, 20))
    """
    rng = check_random_state(random_state)
    n_features, n_factors = 20, 6
    mixing = rng.normal(size=(n_factors, n_features))

    def draw_rows(n):
        z = rng.normal(size=(n, n_factors))
        X = np.tanh(z) @ mixing + 0.3 * rng.normal(size=(n, n_features))
        return X.astype(np.float32), z

    X_source, z = draw_rows(n_source)
    y_source = np.stack([np.sin(z[:, 0]) + z[:, 1] ** 2, z[:, 2] * z[:, 3],
                         np.abs(z[:, 4]), z[:, 5] ** 3 / 3], axis=1)
    y_source = ((y_source - y_source.mean(0)) / y_source.std(0)).astype(np.float32)
    X_target, z = draw_rows(n_train + n_test)
    score = np.sin(z[:, 0]) + z[:, 1] ** 2 + 1.5 * z[:, 2] * z[:, 3] - np.abs(z[:, 4])
    if target == "classification":
        y_target = (score > np.median(score)).astype(int)
    else:
        y_target = score.astype(np.float32)
    return Bunch(
        X_source=X_source, y_source=y_source,
        X_train=X_target[:n_train], y_train=y_target[:n_train],
        X_test=X_target[n_train:], y_test=y_target[n_train:],
        DESCR=(f"Synthetic tables: {n_source} source rows with 4 regression targets, "
               f"{n_train} labelled target rows ({target})."),
    )


@validate_params(
    {"n_outputs": [Interval(numbers.Integral, 1, None, closed="left")],
     "canvas_size": [Interval(numbers.Integral, 4, None, closed="left")],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def make_digits_cnn(n_outputs=5, *, canvas_size=12, random_state=0):
    """An untrained small CNN for one-channel digit images: three blocks and a head.

    ``Conv(16) -> ReLU -> MaxPool`` (block 0), ``Conv(32) -> ReLU -> MaxPool ->
    Flatten`` (block 1), ``Linear(64) -> ReLU`` (block 2), then a
    ``Linear(n_outputs)`` head: the network of the examples. The fine-tuning
    estimators replace the head by one sized from ``y``.

    Parameters
    ----------
    n_outputs : int, default=5
        Outputs of the head.
    canvas_size : int, default=12
        Height and width of the input images.
    random_state : int, RandomState instance or None, default=0
        Seeds the initial weights, without touching torch's global random state.

    Returns
    -------
    net : torch.nn.Sequential

    Examples
    --------
    >>> import torch
    >>> from sktransfer.datasets import make_digits_cnn
    >>> make_digits_cnn(5)(torch.zeros(2, 1, 12, 12)).shape
    torch.Size([2, 5])

    Pretrain it on the source task (here briefly, on 300 images), then
    transfer it with a few labels:

    >>> from functools import partial
    >>> from sktransfer import FineTunedClassifier
    >>> from sktransfer.datasets import load_shifted_digits
    >>> data = load_shifted_digits(n_per_class=5, random_state=0)
    >>> source = FineTunedClassifier(
    ...     model=partial(make_digits_cnn, 5), penalty=None, head_init="random", freeze_depth=0,
    ...     max_epochs=1, random_state=0, device="cpu",
    ... ).fit(data.X_source[:300], data.y_source[:300])
    >>> clf = FineTunedClassifier(model=source, max_epochs=2, random_state=0,
    ...                           device="cpu").fit(data.X_train, data.y_train)
    >>> clf.predict(data.X_test).shape
    (448,)
    """
    side = canvas_size // 4  # two 2x2 max-poolings
    seed = (random_state if isinstance(random_state, numbers.Integral)
            else check_random_state(random_state).randint(np.iinfo(np.int32).max))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # block 0
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # block 1
            nn.Flatten(),
            nn.Linear(32 * side * side, 64), nn.ReLU(),  # block 2
            nn.Linear(64, n_outputs),  # head
        )
