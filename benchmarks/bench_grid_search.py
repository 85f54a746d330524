"""GridSearchCV over 3 freeze depths x 3 alphas: with and without the frozen-prefix cache.

The same search (cv=3, sequential) over ``freeze_depth`` in (2, 4, "all") and
``alpha`` in (1e-4, 1e-2, 1), once with the cache (default) and once with
``cache_size=0``; both must pick the same parameters.

Run: ``python benchmarks/bench_grid_search.py`` (``--quick`` to smoke-test).
"""

from sklearn.model_selection import GridSearchCV

from _common import best_time, images, machine, parse_args, report, resnet18, warm_up

from sktransfer import FineTunedClassifier


def search(X, y, epochs, device, cache_size):
    est = FineTunedClassifier(model=resnet18(), lr=1e-3, max_epochs=epochs, batch_size=32,
                              random_state=0, device=device, cache_size=cache_size)
    grid = {"freeze_depth": [2, 4, "all"], "alpha": [1e-4, 1e-2, 1.0]}
    return GridSearchCV(est, grid, cv=3, refit=False).fit(X, y)


def main():
    args = parse_args(__doc__)
    n, size, epochs = (96, 32, 1) if args.quick else (384, 32, 3)
    X, y = images(n, size, n_classes=4)
    print(f"GridSearchCV 3x3, cv=3, resnet18, {n} images {size}x{size}, {epochs} epochs; "
          f"{machine()}")
    warm_up(args.device)
    t_off, off = best_time(lambda: search(X, y, epochs, args.device, 0), args.repeats)
    t_on, on = best_time(lambda: search(X, y, epochs, args.device, 1024), args.repeats)
    report("Grid search", [("cache off (cache_size=0)", t_off), ("cache on (default)", t_on)],
           reference="cache off (cache_size=0)")
    print(f"  the cache makes the search {t_off / t_on:.1f}x faster; same best parameters: "
          f"{on.best_params_ == off.best_params_} ({on.best_params_})")


if __name__ == "__main__":
    main()
