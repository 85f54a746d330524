"""A cross-validated search on a frozen resnet18: images through the backbone, and time.

The search of issue 16: resnet18 with random weights, 320 images 3x64x64, 4
classes, ``GridSearchCV(FineTunedClassifier(freeze_depth=..., max_epochs=10,
batch_size=32), {"alpha": [1e-4, 1e-3, 1e-2], "lr": [1e-3, 3e-3]},
cv=StratifiedKFold(5))`` with the refit: 31 fits and 30 scorings.

For each setting it reports

* the images that pass through each frozen block (a forward hook on the
  source network, which every fit's private copy keeps; counted in every
  process through a file), as passes per image: 1.0 is the least possible;
* the time against the hand-written limit, timed in the same run: a torch loop
  that runs the frozen blocks once over the 320 images, then does the same 31
  trainings (same optimizer, penalty, epochs, batches) and 30 scorings on the
  kept outputs.

Settings: ``freeze_depth="all"`` (10 epochs) and ``freeze_depth=3`` (layer3,
layer4 and the head train; 1 epoch, to keep the run in minutes: the passes
through the frozen blocks do not depend on the epochs), each with ``n_jobs=1``
and with ``n_jobs=2`` plus the on-disk store (``memory=<folder>``), with
``head_init="random"`` (the hand-written loop's trainings); a third row runs
``n_jobs=1`` with the default ``head_init="probe"``, which fits a
``LogisticRegressionCV`` on each fold first (once per fold: the candidates
share it). A last row
runs ``HalvingGridSearchCV(resource="max_epochs")`` over 24 candidates next to
``GridSearchCV`` over the same 24 at the full budget.

Run: ``python benchmarks/bench_grid_search.py`` (``--quick`` to smoke-test;
``--only all`` or ``--only 3`` for one depth; ``--no-halving``; ``--repeats 3``
to keep the fastest of 3 runs of each row, every one with cold stores).
Targets (issue 16): with n_jobs=1 at most 1.5 passes per image and at most 2x
the hand-written limit; with n_jobs=2 and ``memory`` at most 2 passes; with
freeze_depth=3 at most 1.5 passes through the frozen blocks.
"""

import copy
import os
import tempfile
import time

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from torch import nn

from _common import images, machine, parser, resnet18, warm_up

from sktransfer import FineTunedClassifier, clear_cache

GRID = {"alpha": [1e-4, 1e-3, 1e-2], "lr": [1e-3, 3e-3]}
FROZEN = {"all": ["conv1", "layer1", "layer2", "layer3", "layer4"],
          3: ["conv1", "layer1", "layer2"]}
BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]


class ImageCounter:
    """Forward pre-hook: appends the batch size to a file (works in worker processes)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, module, args):
        with open(self.path, "a") as f:
            f.write(f"{len(args[0])}\n")


def counted_source(folder, depth):
    """resnet18 (random weights) with a counter on the first module of each frozen block."""
    net = resnet18()
    paths = {}
    for name in FROZEN[depth]:
        paths[name] = os.path.join(folder, f"count_{name}.txt")
        getattr(net, name).register_forward_pre_hook(ImageCounter(paths[name]))
    return net, paths


def read_counts(paths):
    counts = {}
    for name, path in paths.items():
        try:
            with open(path) as f:
                counts[name] = sum(int(line) for line in f if line.strip())
        except FileNotFoundError:
            counts[name] = 0
        if os.path.exists(path):
            os.remove(path)
    return counts


def estimator(source, depth, epochs, device, memory=None, head_init="random"):
    # parameters set explicitly: the defaults may change. head_init="random": the
    # trainings of the hand-written loop; the default "probe" adds a LogisticRegressionCV
    # per fold (a row of its own)
    return FineTunedClassifier(
        model=source, freeze_depth=depth, max_epochs=epochs, batch_size=32, penalty="l2_sp",
        alpha=1e-3, lr=1e-3, backbone_lr_scale=0.1, optimizer="adamw", random_state=0,
        device=device, memory=memory, head_init=head_init)


#: (row label, n_jobs, on-disk store, head_init)
SETTINGS = [("n_jobs=1", 1, False, "random"),
            ("n_jobs=2, memory=<folder>", 2, True, "random"),
            ("n_jobs=1, head_init='probe'", 1, False, "probe")]


def sktransfer_search(X, y, depth, epochs, device, n_jobs, memory, head_init="random"):
    source, paths = counted_source(memory or tempfile.gettempdir(), depth)
    read_counts(paths)
    clear_cache()
    start = _clock()
    search = GridSearchCV(estimator(source, depth, epochs, device, memory, head_init), GRID,
                          cv=StratifiedKFold(5), n_jobs=n_jobs).fit(X, y)
    return _since(start), read_counts(paths), search


def _clock():
    return np.array([time.perf_counter(), time.process_time()])


def _since(start):
    """(wall-clock seconds, CPU seconds of this process) since ``start``."""
    return _clock() - start


# -- the hand-written limit ---------------------------------------------------------
def _split(net, depth):
    blocks = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net.layer1, net.layer2,
              net.layer3, net.layer4]
    k = len(blocks) if depth == "all" else depth
    return nn.Sequential(*blocks[:k]).eval(), blocks[k:]


def _train(trained, source_state, feats, y, lr, alpha, epochs, seed, n_classes):
    """One fit as FineTunedClassifier does it: AdamW, head at lr, pretrained blocks at
    lr * 0.1, penalty alpha * (1/2 ||theta - theta_s||^2 + 1/2 ||head||^2)."""
    torch.manual_seed(seed)
    body = copy.deepcopy(trained)
    head = nn.Linear(512, n_classes)
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    groups = [{"params": list(head.parameters()), "lr": lr}]
    pretrained = [p for b in body for p in b.parameters()]
    if pretrained:
        groups.append({"params": pretrained, "lr": lr * 0.1})
    opt = torch.optim.AdamW(groups)
    loss_fn = nn.CrossEntropyLoss()
    starts = [p.detach().clone() for p in pretrained]
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(feats)).split(32):
            opt.zero_grad()
            loss = loss_fn(model(feats[idx]), y[idx])
            reg = sum(((p - s) ** 2).sum() for p, s in zip(pretrained, starts)) if pretrained \
                else 0.0
            reg = reg + sum((p ** 2).sum() for p in head.parameters())
            (loss + alpha * 0.5 * reg).backward()
            opt.step()
    return model.eval()


def hand_written_search(X, y, depth, epochs, device):
    net = resnet18().to(device)
    frozen, trained = _split(net, depth)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    start = _clock()
    with torch.no_grad():
        feats = torch.cat([frozen(Xt[i:i + 32]) for i in range(0, len(Xt), 32)])
    n_classes = len(np.unique(y))
    folds = list(StratifiedKFold(5).split(X, y))
    scores = {}
    for alpha in GRID["alpha"]:
        for lr in GRID["lr"]:
            accs = []
            for train, test in folds:
                model = _train(trained, None, feats[train], yt[train], lr, alpha, epochs, 0,
                               n_classes)
                with torch.no_grad():
                    pred = torch.cat([model(feats[test][i:i + 32]).argmax(1)
                                      for i in range(0, len(test), 32)])
                accs.append(float((pred == yt[test]).float().mean()))
            scores[(alpha, lr)] = np.mean(accs)
    alpha, lr = max(scores, key=scores.get)
    _train(trained, None, feats, yt, lr, alpha, epochs, 0, n_classes)  # the refit
    return _since(start)


# -- successive halving ---------------------------------------------------------------
def halving_rows(X, y, device, epochs):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    grid = {"alpha": [1e-4, 1e-3, 1e-2, 1e-1], "lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}
    rows = []
    for name, make in [
        ("GridSearchCV, 24 candidates x max_epochs=%d" % epochs,
         lambda est: GridSearchCV(est, grid, cv=StratifiedKFold(5))),
        ("HalvingGridSearchCV(resource='max_epochs', factor=3)",
         lambda est: HalvingGridSearchCV(est, grid, cv=StratifiedKFold(5),
                                         resource="max_epochs", max_resources=epochs,
                                         min_resources=1, factor=3, random_state=0)),
    ]:
        source, paths = counted_source(tempfile.gettempdir(), "all")
        read_counts(paths)
        clear_cache()
        start = _clock()
        search = make(estimator(source, "all", epochs, device)).fit(X, y)
        rows.append((name, _since(start), read_counts(paths)["conv1"], search))
    return rows


def main():
    p = parser(__doc__)
    p.add_argument("--only", choices=["all", "3"], default=None)
    p.add_argument("--no-halving", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = p.parse_args()
    n, size = (80, 32) if args.quick else (320, 64)
    X, y = images(n, size, n_classes=4)
    # on a shared machine, torch's threads spin while waiting for each other: one thread
    # (the workers of n_jobs=2 get cores // 2 each) gives far steadier timings
    torch.set_num_threads(args.threads)
    print(f"GridSearchCV alpha x lr (6 candidates), cv=StratifiedKFold(5), refit; resnet18 "
          f"(random weights), {n} images 3x{size}x{size}, 4 classes; {machine()}")
    warm_up(args.device)
    depths = [("all", 2 if args.quick else 10), (3, 1)]
    if args.only is not None:
        depths = [d for d in depths if str(d[0]) == args.only]
    summary = []
    for depth, epochs in depths:
        # each repeat times the limit and both searches again, every store cold
        # (clear_cache, a new folder); the fastest of each is kept
        # the fastest wall-clock and CPU time of each row over the repeats
        limit, best = np.full(2, np.inf), {}
        for _ in range(args.repeats):
            limit = np.minimum(limit, hand_written_search(X, y, depth, epochs, args.device))
            for label, n_jobs, on_disk, head_init in SETTINGS:
                with tempfile.TemporaryDirectory(prefix="sktransfer_bench_") as folder:
                    memory = folder if on_disk else None
                    run = sktransfer_search(X, y, depth, epochs, args.device, n_jobs, memory,
                                            head_init)
                times = run[0] if label not in best else np.minimum(run[0], best[label][0])
                best[label] = (times, n_jobs, *run[1:])
        print(f"\nfreeze_depth={depth!r}, max_epochs={epochs}: hand-written limit "
              f"{limit[0]:.2f} s ({limit[1]:.2f} s CPU)")
        print(f"  {'setting':<28} {'seconds':>8} {'x limit':>8} {'CPU s':>7} {'x limit':>8}"
              f"   passes per image through the frozen blocks "
              f"({', '.join(BLOCKS[:len(FROZEN[depth])])})")
        for label, (times, n_jobs, counts, search) in best.items():
            passes = [counts[name] / n for name in FROZEN[depth]]
            # with n_jobs=2 the work is in the worker processes: no CPU time here
            cpu = (f"{times[1]:7.2f} {times[1] / limit[1]:8.2f}" if n_jobs == 1
                   else f"{'-':>7} {'-':>8}")
            print(f"  {label:<28} {times[0]:8.2f} {times[0] / limit[0]:8.2f} {cpu}   "
                  + ", ".join(f"{p:.2f}" for p in passes)
                  + f"   (best {search.best_params_}, {search.best_score_:.3f})", flush=True)
            summary.append((depth, n_jobs, times[0] / limit[0], max(passes), search))
    for depth in {d for d, *_ in summary}:
        one, two = [s for d, _, _, _, s in summary if d == depth][:2]
        same = (np.array_equal(one.cv_results_["mean_test_score"],
                               two.cv_results_["mean_test_score"])
                and np.array_equal(one.best_estimator_.predict_proba(X),
                                   two.best_estimator_.predict_proba(X)))
        print(f"freeze_depth={depth!r}: n_jobs=1 and n_jobs=2 give the same scores and "
              f"best-model probabilities bit for bit: {same}")
    if not args.no_halving and args.only in (None, "all"):
        epochs = 3 if args.quick else 9
        rows = halving_rows(X, y, args.device, epochs)
        print(f"\nSuccessive halving, freeze_depth='all', 24 candidates (4 alpha x 6 lr), "
              f"up to {epochs} epochs")
        print(f"  {'search':<54} {'seconds':>8} {'ratio':>6} {'CPU s':>7} {'ratio':>6}")
        for name, times, count, search in rows:
            ratio = times / rows[0][1]
            print(f"  {name:<54} {times[0]:8.2f} {ratio[0]:6.2f} {times[1]:7.2f} {ratio[1]:6.2f}"
                  f"   {count / n:.2f} passes   best {search.best_params_} "
                  f"({search.best_score_:.3f})", flush=True)


if __name__ == "__main__":
    main()
