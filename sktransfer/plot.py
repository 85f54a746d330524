"""Plots for transfer-learning experiments (needs matplotlib: ``pip install "sktransfer[plot]"``).

- :func:`plot_learning_curves`: train/validation loss per epoch of fitted estimators.
- :func:`plot_search_heatmap`: a grid search's score over two parameters
  (e.g. ``alpha`` x ``freeze_depth``).
- :func:`plot_label_efficiency`: score against the number of labels per class,
  e.g. transfer vs training from scratch.

Every function takes an optional ``ax`` and returns the matplotlib Axes it drew on.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
from sklearn.utils._param_validation import HasMethods, StrOptions, validate_params

__all__ = ["plot_label_efficiency", "plot_learning_curves", "plot_search_heatmap"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_UNSET = "(not set)"  # a parameter absent from one of several grids
_AX = [HasMethods(["plot", "imshow"]), None]  # a matplotlib Axes (imported lazily)


def _pyplot():
    """Import matplotlib lazily; say how to install it when it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "sktransfer.plot needs matplotlib, which is not installed. Install it with "
            'pip install "sktransfer[plot]" (or pip install matplotlib).'
        ) from exc
    return plt


def _get_ax(ax, figsize):
    plt = _pyplot()
    if ax is None:
        return plt.subplots(figsize=figsize)[1], True
    return ax, False


def _finish(ax, created, title):
    ax.set_title(title, fontsize=12)
    ax.tick_params(labelsize=10)
    if created:
        ax.figure.tight_layout()
    return ax


def _fmt_values(values):
    """Tick labels for parameter values, as a user would type them (``1e-4``, ``all``)."""
    floats = [v for v in values if isinstance(v, numbers.Real)
              and not isinstance(v, (numbers.Integral, bool, np.bool_))]
    sci = any(v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) for v in floats)
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_, numbers.Integral)) or not isinstance(v, numbers.Real):
            out.append(str(v))
        elif sci and v != 0 and not (float(v).is_integer() and 1 <= abs(v) < 1e4):
            # a whole number stays as typed: 1, not 1e0, next to 1e-4
            mantissa, exp = f"{v:.3e}".split("e")
            out.append(f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}")
        else:
            out.append(f"{v:.4g}")
    return out


# -- learning curves ---------------------------------------------------------------
def _is_history(obj):
    return (isinstance(obj, (list, tuple)) and len(obj) > 0
            and all(isinstance(row, Mapping) for row in obj))


def _history_of(obj):
    """``(history, default label)`` of a fitted estimator or a raw ``history_`` list."""
    from sklearn.utils.validation import check_is_fitted

    if _is_history(obj):
        return list(obj), "history"
    if not hasattr(obj, "fit"):
        raise TypeError(
            "estimators must hold fitted FineTunedClassifier/FineTunedRegressor "
            f"estimators or their history_ lists (lists of dicts), got "
            f"{type(obj).__name__} {obj!r:.60}."
        )
    if hasattr(obj, "best_estimator_"):  # a fitted search: its refitted best estimator
        obj = obj.best_estimator_
    if hasattr(obj, "steps"):  # a Pipeline: its final estimator
        obj = obj.steps[-1][1]
    check_is_fitted(obj)
    history = getattr(obj, "history_", None)
    if not _is_history(history):
        raise TypeError(
            f"{type(obj).__name__} has no history_ to plot; pass fitted "
            "FineTunedClassifier/FineTunedRegressor estimators or history_ lists."
        )
    return list(history), type(obj).__name__


def _curve(history, key):
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in history])


def _best_epoch(history, metric, valid):
    """Index of the best validation epoch: skorch's ``valid_<metric>_best`` flags when
    recorded (the last improvement), else the min for losses and the max otherwise."""
    flags = [bool(row.get(f"valid_{metric}_best")) for row in history]
    if any(flags):
        return len(flags) - 1 - flags[::-1].index(True)
    return int(np.nanargmin(valid) if "loss" in metric else np.nanargmax(valid))


@validate_params(
    {"estimators": "no_validation",  # estimators, histories, or lists/dicts of them
     "labels": ["array-like", None], "ax": _AX, "metric": [str]},
    prefer_skip_nested_validation=True,
)
def plot_learning_curves(estimators, labels=None, ax=None, metric="loss"):
    """Plot training and validation curves per epoch of fine-tuned estimators.

    One colour per estimator: the training curve is solid, the validation curve
    (recorded when ``early_stopping=True``) dashed, and a star marks the best
    validation epoch, whose weights an early-stopped estimator keeps.

    Parameters
    ----------
    estimators : estimator, history list, or a list or dict of them
        Fitted :class:`~sktransfer.FineTunedClassifier` /
        :class:`~sktransfer.FineTunedRegressor` estimators (also inside a
        ``Pipeline`` or a fitted search's ``best_estimator_``), or their
        ``history_`` lists (one dict per epoch). A dict maps labels to them.
    labels : list of str, default=None
        One legend label per estimator; by default the class names (or the
        dict's keys).
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    metric : str, default="loss"
        Plots the history keys ``"train_<metric>"`` and ``"valid_<metric>"``
        (e.g. ``"acc"`` for a skorch ``EpochScoring`` named ``"valid_acc"``).

    Returns
    -------
    ax : matplotlib Axes
        The Axes with the curves.

    Notes
    -----
    The training loss includes the penalty ``alpha * R(theta)``; the validation
    loss does not, so the validation curve can lie below the training curve.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> from sktransfer.plot import plot_learning_curves
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(80, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> source_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> clf = FineTunedClassifier(model=source_net, max_epochs=10, early_stopping=True,
    ...                           random_state=0, device="cpu").fit(X, y)
    >>> ax = plot_learning_curves(clf)
    >>> [line.get_label() for line in ax.get_lines()]
    ['train loss', 'valid loss']
    """
    if isinstance(estimators, Mapping):
        if labels is not None:
            raise ValueError(
                "Pass labels=None when estimators is a dict: its keys are the labels."
            )
        labels, estimators = [str(k) for k in estimators], list(estimators.values())
    elif not isinstance(estimators, (list, tuple)) or _is_history(estimators):
        estimators = [estimators]
    if len(estimators) == 0:
        raise ValueError("estimators is empty; pass at least one fitted estimator.")
    pairs = [_history_of(est) for est in estimators]
    if labels is None:
        labels = [name if len(pairs) == 1 else f"{i}: {name}"
                  for i, (_, name) in enumerate(pairs)]
    elif len(labels) != len(pairs):
        raise ValueError(
            f"labels must be a list with one label per estimator ({len(pairs)}), got {labels!r}."
        )
    for (history, _), label in zip(pairs, labels):
        if not any(f"train_{metric}" in row or f"valid_{metric}" in row for row in history):
            found = sorted({k.split("_", 1)[1] for row in history for k in row
                            if k.startswith(("train_", "valid_")) and not k.endswith(
                                ("_best", "_batch_count"))})
            raise ValueError(
                f"metric={metric!r}: the history of {label!r} has no 'train_{metric}' or "
                f"'valid_{metric}'; metrics available: {found}."
            )

    ax, created = _get_ax(ax, (7, 4.5))
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    single = len(pairs) == 1
    best_labelled = False
    for i, ((history, _), label) in enumerate(zip(pairs, labels)):
        color = colors[i % len(colors)]
        epochs = np.array([row.get("epoch", k + 1) for k, row in enumerate(history)])
        for part, style in (("train", "-"), ("valid", "--")):
            values = _curve(history, f"{part}_{metric}")
            if np.isnan(values).all():
                continue
            name = f"{part} {metric}" if single else f"{label}: {part}"
            ax.plot(epochs, values, linestyle=style, color=color, linewidth=2,
                    marker="o" if len(epochs) <= 30 else None, markersize=4, label=name)
            if part == "valid":
                best = _best_epoch(history, metric, values)
                ax.scatter([epochs[best]], [values[best]], marker="*", s=220, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5,
                           label=None if best_labelled else "best valid epoch")
                best_labelled = True
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=11)
    ax.set_ylabel(metric.replace("_", " "), fontsize=11)
    ax.grid(True, alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: names[k] == "best valid epoch")
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=10)
    return _finish(ax, created, "Learning curves")


# -- search heatmap ----------------------------------------------------------------
def _match_param(name, params, which):
    if name in params:
        return name
    found = [p for p in params if p.endswith("__" + name)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            f"{which}={name!r} matches no searched parameter; the search varied {params}. "
            f"Pass one of these (a suffix such as 'alpha' for 'net__alpha' works)."
        )
    raise ValueError(
        f"{which}={name!r} is ambiguous: it matches {found}; pass the full name, "
        f"e.g. {which}={found[0]!r}."
    )


def _param_column(results, name):
    """Values of ``param_<name>`` as Python objects, with ``_UNSET`` where not set."""
    col = results[f"param_{name}"]
    mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else None
    values = list(np.ma.getdata(col).tolist() if isinstance(col, np.ndarray) else col)
    return [_UNSET if mask is not None and mask[i] else v for i, v in enumerate(values)]


def _key(value):
    try:
        hash(value)
    except TypeError:
        return ("unhashable", repr(value))
    return value


def _categories(values, sort):
    """Distinct values in order of first appearance (the grid's order), or numbers
    sorted first when ``sort`` (a randomized search has no order of its own)."""
    seen = {}
    for v in values:
        seen.setdefault(_key(v), v)
    cats = list(seen.values())
    if sort:
        num = [v for v in cats if isinstance(v, numbers.Real) and not isinstance(v, bool)]
        cats = sorted(num) + [v for v in cats if v not in num]
    return cats


@validate_params(
    {"search": [Mapping, HasMethods(["fit", "get_params"])], "x": [str], "y": [str],
     "ax": _AX, "score": [str], "cmap": [str], "values_format": [str, None]},
    prefer_skip_nested_validation=True,
)
def plot_search_heatmap(search, x="alpha", y="freeze_depth", ax=None,
                        score="mean_test_score", *, cmap="viridis", values_format=None):
    """Plot a hyper-parameter search's score over two parameters as an annotated heatmap.

    Each cell shows the mean cross-validated score of one ``(x, y)`` pair; the
    best cell is outlined. Values are categories in the grid's order (``1e-4``
    stays ``1e-4``, ``freeze_depth`` may mix ints and ``"all"``). When other
    parameters vary too, each cell shows the best score over them, and the
    title says so. Grey ``n/a`` cells are pairs with no finite score (not
    searched, or every fit failed).

    Parameters
    ----------
    search : fitted GridSearchCV, RandomizedSearchCV or dict
        A fitted search (or its ``cv_results_``). Parameter names may carry a
        Pipeline prefix (``net__alpha``).
    x : str, default="alpha"
        Parameter along the columns: a full name or a unique suffix after ``__``.
    y : str, default="freeze_depth"
        Parameter along the rows, the same way.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    score : str, default="mean_test_score"
        The ``cv_results_`` column to show; a scorer name such as ``"accuracy"``
        means ``"mean_test_accuracy"`` (multi-metric searches).
    cmap : str, default="viridis"
        Matplotlib colormap.
    values_format : str, default=None
        Format of the numbers in the cells; ``".3f"`` when all scores are below
        1000 in magnitude, else ``".4g"``.

    Returns
    -------
    ax : matplotlib Axes
        The heatmap's Axes (its colour bar is ``ax.images[0].colorbar``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from torch import nn
    >>> from sktransfer import FineTunedClassifier
    >>> from sktransfer.plot import plot_search_heatmap
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> source_net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> clf = FineTunedClassifier(model=source_net, penalty="l2_sp", max_epochs=3,
    ...                           random_state=0, device="cpu")
    >>> search = GridSearchCV(clf, {"alpha": [1e-4, 1e-2], "freeze_depth": [0, "all"]},
    ...                       cv=2).fit(X, y)
    >>> ax = plot_search_heatmap(search, x="alpha", y="freeze_depth")
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['1e-4', '1e-2']
    """
    from sklearn.utils.validation import check_is_fitted

    if isinstance(search, Mapping):
        results, sort = search, False
    else:
        check_is_fitted(search, "cv_results_")
        results, sort = search.cv_results_, hasattr(search, "param_distributions")
    params = [k[len("param_"):] for k in results if k.startswith("param_")]
    xname, yname = _match_param(x, params, "x"), _match_param(y, params, "y")
    if xname == yname:
        raise ValueError(f"x and y are both {xname!r}; pick two different parameters.")
    key = score if score in results else f"mean_test_{score}"
    if key not in results:
        raise ValueError(
            f"score={score!r} is not in cv_results_; available: "
            f"{sorted(k for k in results if k.startswith(('mean_test_', 'mean_train_')))}."
        )
    scores = np.asarray(results[key], dtype=float)
    if np.isnan(scores).all():
        raise ValueError(f"Every {key} is NaN (every fit failed); there is nothing to plot.")
    xs, ys = _param_column(results, xname), _param_column(results, yname)
    xcats, ycats = _categories(xs, sort), _categories(ys, sort)
    xi = {_key(v): j for j, v in enumerate(xcats)}
    yi = {_key(v): i for i, v in enumerate(ycats)}
    Z = np.full((len(ycats), len(xcats)), np.nan)
    for xv, yv, s in zip(xs, ys, scores):
        i, j = yi[_key(yv)], xi[_key(xv)]
        if not np.isnan(s) and not s <= Z[i, j]:
            Z[i, j] = s
    best = int(np.nanargmax(scores))  # first of the ties, as in search.best_index_
    bi, bj = yi[_key(ys[best])], xi[_key(xs[best])]
    others = [p for p in params if p not in (xname, yname)
              and len({_key(v) for v in _param_column(results, p)}) > 1]

    nx, ny = len(xcats), len(ycats)
    ax, created = _get_ax(ax, (max(5.5, 1.2 * nx + 3), max(4.0, 0.8 * ny + 2.2)))
    import matplotlib
    from matplotlib.patches import Rectangle

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(Z), cmap=colormap, aspect="auto")
    cbar = ax.figure.colorbar(image, ax=ax)
    cbar.set_label(key.replace("_", " "), fontsize=11)
    cbar.ax.tick_params(labelsize=10)
    fmt = values_format or (".3f" if np.nanmax(np.abs(Z)) < 1000 else ".4g")
    lo, hi = np.nanmin(Z), np.nanmax(Z)
    for i in range(ny):
        for j in range(nx):
            if np.isnan(Z[i, j]):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=10, color="dimgrey")
                continue
            shade = (Z[i, j] - lo) / (hi - lo) if hi > lo else 1.0
            ax.text(j, i, format(Z[i, j], fmt), ha="center", va="center", fontsize=11,
                    color="white" if shade < 0.55 else "black",
                    fontweight="bold" if (i, j) == (bi, bj) else "normal")
    ax.add_patch(Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red",
                           linewidth=3, label="best", zorder=3))
    xlabels = _fmt_values(xcats)
    ax.set_xticks(range(nx), xlabels)
    if nx > 6 or max(map(len, xlabels)) > 7:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set(horizontalalignment="right", rotation_mode="anchor")
    ax.set_yticks(range(ny), _fmt_values(ycats))
    ax.set_xticks(np.arange(nx + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(ny + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(xname, fontsize=11)
    ax.set_ylabel(yname, fontsize=11)
    title = f"{key.replace('_', ' ')} (best outlined)"
    if others:
        title += f"\nbest over {', '.join(others)} per cell"
    return _finish(ax, created, title)


# -- label efficiency --------------------------------------------------------------
@validate_params(
    {"results": ["array-like", dict], "x": [str], "y": [str], "hue": [str, None], "ax": _AX,
     "band": [StrOptions({"minmax", "std"}), None], "logx": ["boolean", StrOptions({"auto"})]},
    prefer_skip_nested_validation=True,
)
def plot_label_efficiency(results, x="labels_per_class", y="accuracy", hue="method", ax=None,
                          *, band="minmax", logx="auto"):
    """Plot a score against the number of labelled samples, one curve per method.

    The classic transfer-learning figure: how fast does fine-tuning reach a
    good score compared with training from scratch as labels get scarce?
    Rows repeated for the same ``(hue, x)`` (several seeds or splits) are
    averaged, with a shaded band showing their spread.

    Parameters
    ----------
    results : DataFrame, list of dict or dict of lists
        One row per experiment with the columns named by ``x``, ``y`` and ``hue``.
    x : str, default="labels_per_class"
        Numeric column on the horizontal axis.
    y : str, default="accuracy"
        Numeric column on the vertical axis.
    hue : str or None, default="method"
        Column naming the curves (e.g. ``"transfer"``, ``"scratch"``); None for
        a single curve.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when None.
    band : {"minmax", "std"} or None, default="minmax"
        Spread of repeated rows: their min-max range, mean +/- one standard
        deviation, or no band.
    logx : bool or "auto", default="auto"
        Log-scaled ``x``; ``"auto"`` when ``x`` is positive and spans a factor
        of 10 or more.

    Returns
    -------
    ax : matplotlib Axes
        The Axes with one line per ``hue`` value.

    Examples
    --------
    >>> from sktransfer.plot import plot_label_efficiency
    >>> results = [
    ...     {"method": m, "labels_per_class": n, "seed": s, "accuracy": acc + 0.01 * s}
    ...     for m, accs in {"transfer": [0.7, 0.8, 0.9], "scratch": [0.4, 0.6, 0.8]}.items()
    ...     for n, acc in zip([5, 20, 100], accs) for s in range(3)
    ... ]
    >>> ax = plot_label_efficiency(results)
    >>> [line.get_label() for line in ax.get_lines()]
    ['transfer', 'scratch']
    """
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        df = results
    else:
        try:
            df = pd.DataFrame(results)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"results cannot be made into a DataFrame ({exc}); pass a DataFrame, a list "
                "of dicts or a dict of lists."
            ) from exc
    if len(df) == 0:
        raise ValueError("results is empty; pass one row per experiment.")
    for which, col in (("x", x), ("y", y), ("hue", hue)):
        if (col is not None or which != "hue") and col not in df.columns:
            raise ValueError(
                f"{which}={col!r} is not a column of results; columns: {list(df.columns)}."
            )
    for which, col in (("x", x), ("y", y)):
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            raise TypeError(
                f"{which}={col!r} must be a numeric column, got dtype {df[col].dtype}."
            )
        if df[col].isna().any():
            raise ValueError(f"{which}={col!r} has missing values; drop those rows first.")

    ax, created = _get_ax(ax, (7, 4.5))
    groups = [(None, df)] if hue is None else [
        (h, df[df[hue] == h]) for h in pd.unique(df[hue])]
    repeated = False
    for k, (h, part) in enumerate(groups):
        stats = part.groupby(x)[y].agg(["mean", "min", "max", "std", "count"]).sort_index()
        line, = ax.plot(stats.index, stats["mean"], marker=_MARKERS[k % len(_MARKERS)],
                        markersize=7, linewidth=2, label=y if h is None else str(h))
        if band and (stats["count"] > 1).any():
            repeated = True
            std = stats["std"].fillna(0)
            low, high = ((stats["min"], stats["max"]) if band == "minmax"
                         else (stats["mean"] - std, stats["mean"] + std))
            ax.fill_between(stats.index, low, high, color=line.get_color(), alpha=0.2,
                            linewidth=0)
    xs = np.sort(pd.unique(df[x]))
    if logx == "auto":
        logx = bool(xs[0] > 0 and xs[-1] / xs[0] >= 10)
    if logx:
        ax.set_xscale("log")
    if len(xs) <= 12:
        from matplotlib.ticker import NullLocator

        ax.set_xticks(xs, _fmt_values(xs.tolist()))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(x.replace("_", " "), fontsize=11)
    ax.set_ylabel(y.replace("_", " "), fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(title=hue, fontsize=10, title_fontsize=10)
    title = "Label efficiency"
    if repeated:
        title += f"\nmean over repeats, band: {'min-max' if band == 'minmax' else '±1 std'}"
    return _finish(ax, created, title)
