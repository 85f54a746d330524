"""GridSearchCV over 3 freeze depths x 3 alphas: with and without the frozen-prefix cache.

The same search (cv=3, sequential) over ``freeze_depth`` in (2, 4, "all") and
``alpha`` in (1e-4, 1e-2, 1): with ``cache_size=0``, with the cache within each
fit only, and with the default cache, whose outputs are also kept between fits
(the fits of one fold and freeze depth share them). All must pick the same
parameters.

Run: ``python benchmarks/bench_grid_search.py`` (``--quick`` to smoke-test).
"""

from sklearn.model_selection import GridSearchCV

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FineTunedClassifier, _prefix_cache, clear_cache


def search(X, y, epochs, device, cache_size):
    est = FineTunedClassifier(model=resnet18(), lr=1e-3, max_epochs=epochs, batch_size=32,
                              random_state=0, device=device, cache_size=cache_size)
    grid = {"freeze_depth": [2, 4, "all"], "alpha": [1e-4, 1e-2, 1.0]}
    return GridSearchCV(est, grid, cv=3, refit=False).fit(X, y)


def per_fit_only(X, y, epochs, device):
    """The cache within each fit, but no outputs kept between fits."""
    lookup = _prefix_cache.lookup
    _prefix_cache.lookup = lambda key: None
    try:
        return search(X, y, epochs, device, 1024)
    finally:
        _prefix_cache.lookup = lookup


def default(X, y, epochs, device):
    clear_cache()  # nothing from an earlier run (or repeat)
    return search(X, y, epochs, device, 1024)


def main():
    args = parse_args(__doc__)
    n, size, epochs = (96, 32, 1) if args.quick else (384, 32, 3)
    X, y = images(n, size, n_classes=4)
    print(f"GridSearchCV 3x3, cv=3, resnet18, {n} images {size}x{size}, {epochs} epochs; "
          f"{machine()}")
    warm_up(args.device)
    t_off, off = best_time(lambda: search(X, y, epochs, args.device, 0), args.repeats)
    t_fit, per_fit = best_time(lambda: per_fit_only(X, y, epochs, args.device), args.repeats)
    t_on, on = best_time(lambda: default(X, y, epochs, args.device), args.repeats)
    report("Grid search", [("cache off (cache_size=0)", t_off),
                           ("cache within each fit only", t_fit),
                           ("cache on (default: also kept between fits)", t_on)],
           reference="cache off (cache_size=0)")
    same = on.best_params_ == off.best_params_ == per_fit.best_params_
    print(f"  the cache makes the search {t_off / t_on:.1f}x faster ({t_off / t_fit:.1f}x "
          f"without keeping outputs between fits); same best parameters: {same} "
          f"({on.best_params_})")


if __name__ == "__main__":
    main()
