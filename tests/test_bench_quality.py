"""benchmarks/bench_quality.py: the harness runs and its table has every row and column."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier, DummyRegressor

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # for its ``from _common import ...``
    try:
        spec = importlib.util.spec_from_file_location("bench_quality", BENCH / "bench_quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_quality"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("bench_quality", None)


def table_rows(text):
    """The markdown table's rows (after the header) as {first cell: other cells}."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


def test_quick_run_has_every_row_and_column(bench, capsys):
    specs = list(bench.METHODS) + ["defaults:freeze_depth='all'"]
    rows = bench.main(["--quick", "--draws", "2", "--tasks", "synth-clf", "synth-reg",
                       "--methods", *specs])
    out = capsys.readouterr().out
    scores = out.split("Mean fit time")[0]
    header, table = table_rows(scores)
    assert header == ["method", "synth-clf", "synth-reg"]
    assert list(table) == [bench.label(s) for s in specs]
    assert "FineTuned defaults freeze_depth='all'" in table
    tasks = {t.name: t for t in bench.make_tasks()}
    n_jobs = 0
    for spec in specs:  # a mean and a std over 2 draws, or empty where it does not apply
        fits = [bench.applies(spec, tasks[name]) for name in header[1:]]
        assert ["±" in cell if fit else cell == "" for cell, fit in
                zip(table[bench.label(spec)], fits)] == [True, True], spec
        n_jobs += 2 * sum(fits)
    assert len(rows) == n_jobs
    accuracies = [r["score"] for r in rows if r["task"] == "synth-clf"]
    assert all(0 <= a <= 1 for a in accuracies)
    grid = [r for r in rows if r["method"] == "grid"]
    assert all(set(r["chosen"]) == {"freeze_depth", "alpha"} for r in grid)
    with_rate = [r for r in rows if r["method"] == "grid_lr"]
    assert with_rate and all(set(r["chosen"]) == {"freeze_depth", "alpha", "lr"}
                             for r in with_rate)


def test_adaptation_rows_run_where_they_apply(bench, capsys):
    """One row per adaptation method, and the search over them, on a BatchNorm task."""
    adaptations = [name for name, *_ in bench.ADAPTATIONS]
    rows = bench.main(["--quick", "--tasks", "digits-bn-5", "synth-reg", "--methods",
                       *adaptations, "methods"])
    _, table = table_rows(capsys.readouterr().out.split("Mean fit time")[0])
    assert table[bench.label("norm_only")] == [table[bench.label("norm_only")][0], ""]
    for name in ("co_tuning", "l2_sp"):  # methods of penalty="auto"'s classifier only
        assert table[bench.label(name)][1] == "", name  # synth-reg: a regression task
    assert all(cells[0] for cells in table.values())  # every method ran on digits-bn-5
    search = [r for r in rows if r["method"] == "methods" and r["task"] == "digits-bn-5"]
    # --quick: 2 candidates, the defaults and WiSE-FT applied to fine-tuning
    assert search[0]["chosen"] in ({}, {"freeze_depth": 0, "wise": 0.5})


def test_registry_and_parameters_reach_the_methods(bench, capsys):
    """A new row is one registered factory; --set and per-row values reach it."""
    seen = []

    @bench.register("dummy", "dummy baseline", sktransfer=True)
    def dummy(task, draw, quick=False, **params):
        seen.append(params)
        return DummyRegressor() if task.regression else DummyClassifier()

    try:
        rows = bench.main(["--quick", "--tasks", "synth-clf", "--methods", "dummy",
                           "dummy:lr=1e-3,freeze_depth=all", "--set", "lr=3e-3",
                           "max_epochs=7"])
    finally:
        del bench.METHODS["dummy"]
    assert seen == [{"lr": 3e-3, "max_epochs": 7},
                    {"lr": 1e-3, "max_epochs": 7, "freeze_depth": "all"}]
    assert np.isclose(rows[0]["score"], 0.5, atol=0.05)  # a balanced binary task
    _, table = table_rows(capsys.readouterr().out.split("Mean fit time")[0])
    assert list(table) == ["dummy baseline", "dummy baseline lr=0.001, freeze_depth='all'"]


def test_bad_names_are_refused_before_training(bench):
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        bench.main(["--quick", "--methods", "nope"])
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['nope'\]"):
        bench.main(["--quick", "--tasks", "nope"])
    with pytest.raises(SystemExit, match="takes no parameters"):
        bench.main(["--quick", "--methods", "probe:C=2"])
