"""benchmarks/gpu_check.py: runs on the CPU in its short mode, and one failing or
hanging row never stops the others (the check is prepared for a GPU machine that
is lent for minutes: it must be right the first time)."""

import importlib.util
import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)
        torch.set_num_threads(threads)  # the short mode runs on one thread


def test_short_cpu_run_has_every_row_and_no_failure(check, tmp_path, capsys):
    out = tmp_path / "table.json"
    status = check.main(["--device", "cpu", "--short", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert status == 0, [r for r in report["rows"] if r["status"] == "FAIL"]
    assert list(rows) == [r["name"] for r in check.ROWS]
    # what is skipped on the CPU is skipped for a reason a reader can check
    for name, r in rows.items():
        spec = next(s for s in check.ROWS if s["name"] == name)
        if spec["cuda"]:
            assert r["status"] == "skipped" and r["result"] == "needs a CUDA device"
        elif not spec["short"]:
            assert r["status"] == "skipped" and "--short" in r["result"]
    assert report["versions"]["torch"] == torch.__version__
    # the one printed table, with every row
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0] == "| row | result | status | seconds |"
    assert len(table) == 2 + len(rows)  # header, separator, rows
    assert rows["fit"]["status"] == "ok" and rows["predict"]["status"] == "ok"


def test_failing_and_hanging_rows_do_not_stop_the_run(check, tmp_path, monkeypatch):
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("per-row time limits need SIGALRM")

    def fails(ctx):
        raise ValueError("first line of the error\nsecond line")

    def hangs(ctx):
        time.sleep(30)

    def passes(ctx):
        return "fine | with a pipe"

    planted = [{"name": f"planted {n}", "fn": fn, "cuda": False, "short": True}
               for n, fn in (("fails", fails), ("hangs", hangs), ("passes", passes))]
    monkeypatch.setattr(check, "ROWS", check.ROWS[:1] + planted)
    out = tmp_path / "table.md"
    start = time.perf_counter()
    status = check.main(["--device", "cpu", "--short", "--only", "planted",
                         "--row-timeout", "1", "--out", str(out)])
    assert time.perf_counter() - start < 25
    assert status == 1
    text = out.read_text()
    assert "| planted fails | ValueError: first line of the error | FAIL |" in text
    assert "| planted hangs | timed out after 1 s | FAIL |" in text
    assert "| planted passes | fine / with a pipe | ok |" in text  # the table stays a table
    # the run leaves the process's signal handlers as it found them
    assert signal.getsignal(signal.SIGALRM) is not check._on_alarm


def test_dependency_check_names_what_is_missing(check):
    lines = []
    missing = check.check_dependencies(
        required=[("numpy", "numpy"), ("no_such_module_sktransfer", "no-such-package")],
        optional=[("another_missing_module_sktransfer", "extra-package", "the extra row")],
        out=lines.append)
    assert missing == ["no-such-package"]  # optional packages are never "missing"
    assert lines[0].startswith("  required numpy: ")
    assert "required no-such-package: MISSING (ModuleNotFoundError" in lines[1]
    assert lines[2].endswith("the extra row is skipped")


def test_budget_stops_starting_rows_and_the_table_is_written_after_every_row(
        check, tmp_path, monkeypatch):
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("per-row time limits need SIGALRM")
    out = tmp_path / "table.md"
    seen = []

    def slow(ctx):
        seen.append(out.read_text())  # what a run killed now would leave behind
        time.sleep(30)

    planted = [{"name": f"planted {i}", "fn": slow, "cuda": False, "short": True,
                "timeout": None} for i in range(2)]
    monkeypatch.setattr(check, "ROWS", check.ROWS[:1] + planted)
    start = time.perf_counter()
    status = check.main(["--device", "cpu", "--short", "--only", "planted", "--budget", "5",
                         "--out", str(out)])
    assert time.perf_counter() - start < 25
    assert status == 1
    text = out.read_text()
    # the first slow row is cut where the budget ends, the next one never starts
    assert "| planted 0 | timed out after " in text
    assert "| planted 1 | not run: the budget of 5 s was spent | skipped |" in text
    assert "PARTIAL" in seen[0] and "| warm-up" in seen[0] and "planted" not in seen[0]
    assert "PARTIAL" not in text
