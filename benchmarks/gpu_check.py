"""One prepared check of sktransfer on a GPU: every CUDA path, and the speed against torch.

Run on a machine with one CUDA GPU (H100 class: every row well under 4 minutes;
no network needed, nothing is downloaded: random-weight resnet18 built here)::

    benchmarks/gpu_check.sh --out gpu_check.md     # or: python benchmarks/gpu_check.py ...

It first imports each dependency and prints its version or MISSING (a missing
required one stops it with exit status 2 and the list; ``--check-deps`` stops
there). Then the versions (torch, CUDA, cuDNN, the GPU, sktransfer), then ONE
markdown table, one row per check: ``| row | result | status | seconds |``
with status ``ok``, ``FAIL`` (the exception's first line) or ``skipped``
(why). Every row runs in its own ``try`` with its own time limit
(``--row-timeout``, by ``SIGALRM``), and all rows share a budget
(``--budget``): a failing or hanging row never stops the others, rows that
would start after the budget are marked as not run, and the table is always
printed; the script exits with status 1 if any row failed. ``--out`` also
writes the table (``.json``: machine-readable) after every row, so a run
killed from outside leaves the rows it finished.

Rows (correctness first, then speed): fit / predict / predict_proba / pickle
round trip (in this process, and unpickled in a process that sees no GPU) /
``save_weights`` + ``load_weights`` on the device; the frozen-prefix store on
the device (a hit gives the same result); ``precision="bf16"`` and
``"16-mixed"`` within ``PRECISION_TOLERANCE`` test accuracy of float32;
``examples/accelerate_fit.py`` in one process; head-only and full fine-tuning
images/s against a hand-written loop (mixed precision on both sides, and
float32); ``FeatureExtractorTransformer`` throughput against a raw
``inference_mode`` loop; pinned memory and ``channels_last`` on and off;
``TabularPretrainer``, a timm model and a Hugging Face text encoder (built
here) on the device (skipped when timm / transformers do not import).

``--device cpu --short`` runs every row that does not need CUDA at tiny sizes
(seconds; the test suite does this, so the script keeps working); its timings
are not measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# -- dependencies: checked before anything else is imported ----------------------------
#: (module, pip name): what sktransfer and this check cannot run without
REQUIRED = [("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
            ("pandas", "pandas"), ("torch", "torch"), ("torchvision", "torchvision"),
            ("skorch", "skorch"), ("tabulate", "tabulate"), ("tqdm", "tqdm"),
            ("safetensors", "safetensors"), ("PIL", "pillow")]
#: (module, pip name, what is skipped without it)
OPTIONAL = [("accelerate", "accelerate", "the accelerate example row"),
            ("timm", "timm", "the timm row"),
            ("transformers", "transformers", "the Hugging Face row"),
            ("tokenizers", "tokenizers", "the Hugging Face row")]


def check_dependencies(required=REQUIRED, optional=OPTIONAL, out=print):
    """Import each dependency and print one line for it; return the pip names of
    the required ones that do not import (a broken install counts as missing)."""
    missing = []
    for module, pip_name, *why in [*required, *optional]:
        try:
            version = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - any import failure: not usable here
            text = (str(exc).strip().splitlines() or [""])[0]
            if why:
                out(f"  optional {pip_name}: MISSING ({type(exc).__name__}: {text}); "
                    f"{why[0]} is skipped")
            else:
                out(f"  required {pip_name}: MISSING ({type(exc).__name__}: {text})")
                missing.append(pip_name)
            continue
        extra = ""
        if module == "torch":
            torch_ = sys.modules["torch"]
            extra = (f" (CUDA {torch_.version.cuda or 'none: a CPU-only build'}, "
                     f"GPU visible: {torch_.cuda.is_available()})")
        out(f"  {'required' if not why else 'optional'} {pip_name}: {version}{extra}")
    return missing


def _dependency_gate(argv):
    """Before the heavy imports: say what is missing and stop (exit status 2) if
    something required is; ``--check-deps`` stops here in any case."""
    print("sktransfer GPU check: dependencies", flush=True)
    missing = check_dependencies()
    if missing:
        print(f"\nMISSING required packages: {' '.join(missing)}\n"
              f"Install them (offline: pip install --no-index --find-links <wheel dir> "
              f"{' '.join(missing)}), or run benchmarks/gpu_check.sh with a wheelhouse "
              "(see its header).", flush=True)
        sys.exit(2)
    if "--check-deps" in argv:
        sys.exit(0)
    print(flush=True)


if __name__ == "__main__" and not os.environ.get("SKTRANSFER_GPU_CHECK_DEPS_OK"):
    _dependency_gate(sys.argv[1:])  # (gpu_check.sh has just run it)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# this checkout's sktransfer, not another one installed on the machine
if "sktransfer" not in sys.modules:
    sys.path.insert(0, str(ROOT))
import sktransfer  # noqa: E402
from sktransfer import (  # noqa: E402
    FeatureExtractorTransformer,
    FineTunedClassifier,
    TabularPretrainer,
    clear_cache,
)

#: accuracy (share of test samples) that a mixed-precision fit may lose against float32
PRECISION_TOLERANCE = 0.05


# -- rows: registration, time limits, the table -------------------------------------
class Skip(Exception):
    """A row that does not apply here (its message says why)."""


class RowTimeout(BaseException):
    """The row ran past its time limit (a BaseException: no ``except Exception`` eats it)."""


class Stop(BaseException):
    """The whole run was told to stop (SIGTERM, e.g. from ``timeout``)."""


ROWS = []


def row(name, cuda=False, short=True, timeout=None):
    """Register a check. ``cuda``: needs a CUDA device; ``short=False``: skipped by
    --short; ``timeout``: its own time limit in seconds (default: --row-timeout)."""
    def register(fn):
        ROWS.append({"name": name, "fn": fn, "cuda": cuda, "short": short,
                     "timeout": timeout})
        return fn
    return register


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _on_alarm(signum, frame):
    raise RowTimeout()


def _on_term(signum, frame):
    raise Stop()


def run_rows(ctx, rows, row_timeout, budget=None, on_row=None):
    """Run every row; return the results as dicts (row, result, status, seconds).

    ``budget``: seconds for all rows; a row that would start after it is spent
    is not run, and a running row's limit is cut to what is left of it.
    ``on_row(results)``: called after every row (the partial table is written).
    """
    handlers = {}
    for name, handler in (("SIGALRM", _on_alarm), ("SIGTERM", _on_term)):
        if hasattr(signal, name):
            handlers[name] = signal.signal(getattr(signal, name), handler)
    try:
        return _run_rows(ctx, rows, row_timeout, "SIGALRM" in handlers, budget, on_row)
    finally:
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)


def _run_rows(ctx, rows, row_timeout, has_alarm, budget, on_row):
    results, stopped = [], False
    begin = time.perf_counter()
    for spec in rows:
        if on_row is not None and results:
            on_row(results)
        name = spec["name"]
        start = time.perf_counter()
        left = None if budget is None else budget - (start - begin)
        if stopped:
            results.append(_result(name, "not run: the run was stopped", "skipped", 0.0))
            continue
        if left is not None and left < 1:
            results.append(_result(name, f"not run: the budget of {budget:.0f} s was spent",
                                   "skipped", 0.0))
            continue
        if spec["cuda"] and not ctx.cuda:
            results.append(_result(name, "needs a CUDA device", "skipped", 0.0))
            continue
        if ctx.short and not spec["short"]:
            results.append(_result(name, "left out by --short", "skipped", 0.0))
            continue
        limit = spec.get("timeout") or row_timeout
        if left is not None:
            limit = max(1, min(limit, math.ceil(left)))
        ctx.row_deadline = start + limit
        try:
            if has_alarm:
                signal.alarm(limit)
            try:
                result, status = str(spec["fn"](ctx)), "ok"
            finally:
                if has_alarm:
                    signal.alarm(0)
        except Skip as exc:
            result, status = str(exc), "skipped"
        except RowTimeout:
            result, status = f"timed out after {limit} s", "FAIL"
        except Stop:
            result, status, stopped = "stopped (overall time limit)", "FAIL", True
        except KeyboardInterrupt:
            result, status, stopped = "interrupted", "FAIL", True
        except Exception as exc:  # noqa: BLE001 - one failing row must not stop the rest
            result, status = _first_line(exc), "FAIL"
            if ctx.verbose:
                traceback.print_exc()
        seconds = time.perf_counter() - start
        results.append(_result(name, result, status, seconds))
        print(f"[{status:>7}] {name} ({seconds:.1f} s): {result}", flush=True)
        try:
            ctx.sync()  # a failed row's queued GPU work must not be timed by the next
        except Exception as exc:  # noqa: BLE001 - a broken device fails the next rows
            print(f"device synchronisation failed after {name!r}: {_first_line(exc)}")
    if on_row is not None and results:
        on_row(results)
    return results


def _result(name, result, status, seconds):
    return {"row": name, "result": result.replace("|", "/").replace("\n", " "),
            "status": status, "seconds": round(seconds, 2)}


def markdown(results):
    lines = ["| row | result | status | seconds |", "| --- | --- | --- | ---: |"]
    lines += [f"| {r['row']} | {r['result']} | {r['status']} | {r['seconds']:.1f} |"
              for r in results]
    return "\n".join(lines)


# -- the environment ----------------------------------------------------------------
def _version(name):
    try:
        module = __import__(name)
    except Exception:  # noqa: BLE001 - optional packages: any import failure is "absent"
        return "not installed"
    return getattr(module, "__version__", "?")


def versions():
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "CUDA (torch built with)": torch.version.cuda or "none",
        "cuDNN": (str(torch.backends.cudnn.version())
                  if torch.backends.cudnn.is_available() else "none"),
        "sktransfer": f"{sktransfer.__version__} ({Path(sktransfer.__file__).parent})",
    }
    for name in ("torchvision", "skorch", "sklearn", "numpy", "accelerate", "timm",
                 "transformers"):
        info[name] = _version(name)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["GPU"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute "
                       f"capability {props.major}.{props.minor}, "
                       f"{torch.cuda.device_count()} visible")
        info["bf16 supported"] = str(_bf16_on_gpu())
    else:
        info["GPU"] = "none (CUDA not available)"
    info["CPU threads"] = str(torch.get_num_threads())
    return info


def _bf16_on_gpu():
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no including_emulation
        return torch.cuda.is_bf16_supported()


# -- shared data and models -----------------------------------------------------------
def quadrant_images(n, size, seed=0, channels=3):
    """Images ``(n, C, size, size)`` float32: noise plus a bright quadrant, the class (0-3)."""
    rng = np.random.default_rng(seed)  # float32 draws: the 800 MB of the speed rows in ~1 s
    X = rng.standard_normal((n, channels, size, size), dtype=np.float32)
    X *= 0.5
    y = rng.integers(0, 4, size=n)
    h = size // 2
    for c, (a, b) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        X[y == c, :, a:a + h, b:b + h] += 1.5
    return X, y


def small_cnn(channels=3, n_out=4):
    """A small CNN (3 conv blocks + head) for the short mode."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n_out),
    )


def resnet18(n_out=10, seed=0):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=n_out)


class Context:
    """What the rows share: the device, the sizes, data, and the results of earlier rows."""

    def __init__(self, args):
        self.args = args
        self.short = args.short
        self.verbose = args.verbose
        self.device = args.device
        self.cuda = torch.device(args.device).type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}, but CUDA is not available here; "
                             "use --device cpu (with --short for a quick run).")
        if self.short:
            self.size, self.n, self.epochs, self.batch = 16, 128, 4, 32
            self.speed_size, self.speed_n, self.speed_epochs = 16, 64, 1
            self.speed_batch = 32
        elif self.cuda:
            self.size, self.n, self.epochs, self.batch = 64, 1024, 4, 64
            self.speed_size, self.speed_n, self.speed_epochs = 128, 4096, 3
            self.speed_batch = 128
        else:
            self.size, self.n, self.epochs, self.batch = 32, 256, 3, 32
            self.speed_size, self.speed_n, self.speed_epochs = 64, 256, 1
            self.speed_batch = 32
        # the small CNN of the short mode learns its 4 epochs faster at a larger rate
        self.lr = 1e-2 if self.short else 1e-3
        self.amp = self._amp_dtype()
        self._shared = {}
        self.row_deadline = None  # set by run_rows for the row that runs

    def time_left(self, margin=0.0):
        """Seconds left to the running row, less ``margin`` (for a subprocess's timeout)."""
        if self.row_deadline is None:
            return None
        return max(1.0, self.row_deadline - time.perf_counter() - margin)

    def _amp_dtype(self):
        """The mixed-precision dtype of this device: bf16 when it runs it, else fp16."""
        if not self.cuda:
            return torch.bfloat16
        return torch.bfloat16 if _bf16_on_gpu() else torch.float16

    @property
    def amp_precision(self):
        return "bf16" if self.amp == torch.bfloat16 else "16-mixed"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def model(self, n_out=4, seed=0):
        """The network of the correctness rows: resnet18 (random weights), or the small CNN."""
        if self.short:
            torch.manual_seed(seed)
            return small_cnn(n_out=n_out)
        return resnet18(n_out, seed)

    def shared(self, key, make):
        """``make()`` once; a row that depends on a failed one fails with its reason."""
        if key not in self._shared:
            try:
                self._shared[key] = ("ok", make())
            except Exception as exc:  # noqa: BLE001 - reported by every dependent row
                self._shared[key] = ("error", _first_line(exc))
        status, value = self._shared[key]
        if status == "error":
            raise RuntimeError(f"needs {key!r}, which failed: {value}")
        return value

    def data(self):
        def make():
            X, y = quadrant_images(self.n + self.n // 2, self.size, seed=0)
            return X[:self.n], y[:self.n], X[self.n:], y[self.n:]
        return self.shared("data", make)

    def classifier(self, **params):
        # random weights (nothing is downloaded): a random head, as the hand loops have
        base = dict(model=self.model(), freeze_depth=0, penalty=None, lr=self.lr,
                    backbone_lr_scale=1.0, max_epochs=self.epochs, batch_size=self.batch,
                    head_init="random", random_state=0, device=self.device, verbose=0)
        base.update(params)
        return FineTunedClassifier(**base)

    def fitted(self):
        def make():
            X, y, _, _ = self.data()
            return self.classifier().fit(X, y)
        return self.shared("fitted classifier", make)

    def has_param(self, cls, name):
        return name in cls().get_params()


def _device_of(module):
    return str(next(module.parameters()).device)


def _time(ctx, fn, repeats=1):
    """Fastest wall-clock seconds of ``fn()`` (device synchronised) and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        ctx.sync()
        start = time.perf_counter()
        result = fn()
        ctx.sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def _autocast(ctx, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(ctx.device).type, dtype=dtype)


# -- correctness on the device --------------------------------------------------------
@row('device="auto" picks the GPU')
def check_auto(ctx):
    X, y, _, _ = ctx.data()
    est = FineTunedClassifier(model=ctx.model(), freeze_depth=0, max_epochs=1,
                              batch_size=ctx.batch, penalty=None, random_state=0,
                              device="auto").fit(X[:64], y[:64])
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    where = _device_of(est.module_)
    assert est.device_ == expected and where.startswith(expected), (
        f"device_={est.device_!r}, network on {where}; expected {expected}")
    return f"device_={est.device_!r}, network on {where}"


@row("fit")
def check_fit(ctx):
    X, y, _, _ = ctx.data()
    est = ctx.fitted()
    where = _device_of(est.module_)
    assert where.startswith(torch.device(ctx.device).type), f"network on {where}"
    acc = est.score(X, y)
    assert acc > 0.4, f"training accuracy {acc:.2f} (chance 0.25)"
    return (f"{type(est.module_.blocks[0]).__name__}-first network on {where}, "
            f"{est.n_iter_} epochs, train accuracy {acc:.3f} (chance 0.25)")


@row("predict")
def check_predict(ctx):
    _, _, X_test, y_test = ctx.data()
    est = ctx.fitted()
    pred = est.predict(X_test)
    assert pred.shape == (len(X_test),), f"shape {pred.shape}"
    assert set(np.unique(pred)) <= set(est.classes_), "labels outside classes_"
    return f"{len(pred)} labels, test accuracy {np.mean(pred == y_test):.3f}"


@row("predict_proba")
def check_proba(ctx):
    _, _, X_test, _ = ctx.data()
    est = ctx.fitted()
    proba = est.predict_proba(X_test)
    assert proba.shape == (len(X_test), len(est.classes_)), f"shape {proba.shape}"
    assert np.isfinite(proba).all(), "non-finite probabilities"
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    agree = np.mean(est.classes_[proba.argmax(axis=1)] == est.predict(X_test))
    assert agree == 1.0, f"argmax of predict_proba agrees with predict on {agree:.3f}"
    return f"shape {proba.shape}, dtype {proba.dtype}, rows sum to 1, argmax == predict"


@row("pickle round trip (this process)")
def check_pickle(ctx):
    _, _, X_test, _ = ctx.data()
    est = ctx.fitted()
    blob = pickle.dumps(est)
    back = pickle.loads(blob)
    assert _device_of(back.module_) == "cpu" and back.device_ == "cpu", (
        f"unpickled network on {_device_of(back.module_)}, device_={back.device_!r}")
    assert _device_of(est.module_).startswith(torch.device(ctx.device).type), (
        "pickling moved the fitted estimator's own network")
    diff = np.abs(back.predict_proba(X_test) - est.predict_proba(X_test)).max()
    assert diff < 2e-2, f"probabilities differ by {diff:.2g} after the round trip"
    return (f"{len(blob) / 2**20:.1f} MB; unpickled on the CPU, max |proba diff| {diff:.1e} "
            "(CPU vs device arithmetic)")


def _run_child(ctx, cmd, env):
    """Run ``cmd`` within what is left of the row's time; its last error line on failure."""
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=ctx.time_left(margin=5))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the child process ran past {exc.timeout:.0f} s") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return done


_UNPICKLE = """
import pickle, sys, numpy as np, torch
assert not torch.cuda.is_available(), "CUDA is visible"
est = pickle.load(open(sys.argv[1], "rb"))
X = np.load(sys.argv[2])
np.save(sys.argv[3], est.predict_proba(X))
print(est.device_)
"""


@row("pickle: GPU-fitted estimator unpickled where no GPU is visible", cuda=True)
def check_pickle_no_gpu(ctx):
    _, _, X_test, _ = ctx.data()
    est = ctx.fitted()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "est.pkl", "wb") as fh:
            pickle.dump(est, fh)
        np.save(tmp / "X.npy", X_test)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = _run_child(ctx, [sys.executable, "-c", _UNPICKLE, str(tmp / "est.pkl"),
                                str(tmp / "X.npy"), str(tmp / "proba.npy")], env)
        proba = np.load(tmp / "proba.npy")
    diff = np.abs(proba - est.predict_proba(X_test)).max()
    assert diff < 2e-2, f"probabilities differ by {diff:.2g} from the GPU's"
    return f"device_={done.stdout.strip()!r} there; max |proba diff| vs the GPU {diff:.1e}"


@row("save_weights + load_weights round trip")
def check_weights_file(ctx):
    _, _, X_test, _ = ctx.data()
    est = ctx.fitted()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.safetensors"
        est.save_weights(path)
        back = FineTunedClassifier(model=ctx.model(), device=ctx.device).load_weights(path)
    where = _device_of(back.module_)
    assert where.startswith(torch.device(ctx.device).type), f"loaded network on {where}"
    diff = np.abs(back.predict_proba(X_test) - est.predict_proba(X_test)).max()
    assert diff < 1e-4, f"probabilities differ by {diff:.2g}"
    same = (back.predict(X_test) == est.predict(X_test)).mean()
    assert same == 1.0, f"predictions agree on {same:.3f}"
    return f"{path.name} loaded on {where}; max |proba diff| {diff:.1e}, same predictions"


def _store_entries():
    """``(count, devices, dtypes)`` of the frozen-prefix store, where it can be read."""
    store = getattr(getattr(sktransfer, "_prefix_cache", None), "_STORE", None)
    if not isinstance(store, dict):
        return None
    values = list(store.values())
    return (len(values), sorted({str(getattr(v, "device", "?")) for v in values}),
            sorted({str(getattr(v, "dtype", "?")).replace("torch.", "") for v in values}))


@row("frozen-prefix store on the device (a hit gives the same result)")
def check_prefix_store(ctx):
    X, y, X_test, _ = ctx.data()
    params = dict(freeze_depth=2, max_epochs=2)
    clear_cache()
    first_s, first = _time(ctx, lambda: ctx.classifier(**params).fit(X, y))
    entries = _store_entries()
    second_s, second = _time(ctx, lambda: ctx.classifier(**params).fit(X, y))
    fresh = ctx.classifier(**params, cache_size=0).fit(X, y)  # frozen blocks on every batch
    n_freed = clear_cache()
    assert n_freed >= 1, "nothing was kept in the frozen-prefix store"
    p1, p2, p0 = (e.predict_proba(X_test) for e in (first, second, fresh))
    hit = np.abs(p2 - p1).max()
    # a wrong store gives differences of the order of the probabilities; CUDA training
    # itself is not bit-for-bit reproducible (atomic adds in some backward kernels)
    tol = 2e-3 if ctx.cuda else 1e-6
    assert hit < tol, f"the fit that hit the store differs by {hit:.2g} from the first"
    off = np.abs(p1 - p0).max()
    assert off < 5e-2, f"the cached fit differs by {off:.2g} from frozen blocks on every batch"
    where = ""
    if entries is not None:
        count, devices, dtypes = entries
        expected = torch.device(ctx.device).type
        assert devices and all(d.startswith(expected) for d in devices), (
            f"store entries on {devices}, not on {expected}")
        where = f"{count} entry on {', '.join(devices)} ({', '.join(dtypes)}); "
    return (f"{where}first fit {first_s:.2f} s, second (hit) {second_s:.2f} s; hit vs first "
            f"max |diff| {hit:.1e}; vs no cache {off:.1e}")


# -- mixed precision ------------------------------------------------------------------
def _precision_fit(ctx, precision):
    """Test accuracy and a fitted estimator with ``precision`` (full fine-tuning)."""
    X, y, X_test, y_test = ctx.data()
    est = ctx.classifier(precision=precision).fit(X, y)
    return est, float(np.mean(est.predict(X_test) == y_test))


def _check_precision(ctx, precision):
    if not ctx.has_param(FineTunedClassifier, "precision"):
        raise Skip("FineTunedClassifier has no precision parameter in this version")
    fp32, acc32 = ctx.shared("float32 fit", lambda: _precision_fit(ctx, "32"))
    est, acc = _precision_fit(ctx, precision)
    _, _, X_test, _ = ctx.data()
    proba = est.predict_proba(X_test[:8])
    feats = est.module_.forward_features(
        torch.as_tensor(X_test[:2], device=_device_of(est.module_)))
    assert all(p.dtype == torch.float32 for p in est.module_.parameters()), (
        "parameters are no longer float32")
    assert proba.dtype == np.float64 and feats.dtype == torch.float32, (
        f"outputs {proba.dtype} / {feats.dtype}")
    gap = acc32 - acc
    assert gap <= PRECISION_TOLERANCE, (
        f"test accuracy {acc:.3f} vs float32 {acc32:.3f}: more than "
        f"{PRECISION_TOLERANCE} below")
    return (f"test accuracy {acc:.3f} vs float32 {acc32:.3f} (allowed: "
            f"{PRECISION_TOLERANCE} below); weights float32, probabilities float64")


@row('precision="bf16" fit within the stated accuracy of float32')
def check_bf16(ctx):
    if ctx.cuda and not _bf16_on_gpu():
        raise Skip("this GPU has no bfloat16 support")
    return _check_precision(ctx, "bf16")


@row('precision="16-mixed" fit within the stated accuracy of float32', cuda=True)
def check_fp16(ctx):
    return _check_precision(ctx, "16-mixed")


@row('precision="16-mixed" on the CPU: a clear error')
def check_fp16_cpu_error(ctx):
    if not ctx.has_param(FineTunedClassifier, "precision"):
        raise Skip("FineTunedClassifier has no precision parameter in this version")
    X, y, _, _ = ctx.data()
    try:
        ctx.classifier(precision="16-mixed", device="cpu", max_epochs=1).fit(X[:32], y[:32])
    except ValueError as exc:
        msg = str(exc)
        assert "bf16" in msg, f"the error does not name the fix: {msg}"
        return f"ValueError: {msg[:90]}..."
    raise AssertionError("fitted float16 on the CPU without an error")


# -- accelerate -----------------------------------------------------------------------
@row("examples/accelerate_fit.py in one process", short=False, timeout=120)
def check_accelerate_example(ctx):
    try:
        import accelerate  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"accelerate does not import ({_first_line(exc)})") from exc
    cmd = [sys.executable, str(ROOT / "examples" / "accelerate_fit.py")]
    if not ctx.cuda:
        cmd.append("--cpu")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if ctx.cuda:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    done = _run_child(ctx, cmd, env)
    out = done.stdout.strip().splitlines()
    first = out[0] if out else ""
    accuracy = next((line for line in out if "test accuracy" in line), "")
    expected = "cuda" if ctx.cuda else "cpu"
    assert expected in first, f"the example ran on: {first}"
    return f"{first}; {accuracy.split(';')[-1].strip()}"


# -- speed: sktransfer against hand-written torch loops -----------------------------
def _speed_data(ctx):
    def make():
        X, y = quadrant_images(ctx.speed_n, ctx.speed_size, seed=1)
        return X, y
    return ctx.shared("speed data", make)


def _speed_model(ctx):
    if ctx.short:
        torch.manual_seed(0)
        return small_cnn(n_out=4)
    return resnet18(4, seed=0)


def _scaler(ctx, dtype):
    if dtype != torch.float16:
        return None
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(torch.device(ctx.device).type)
    return torch.cuda.amp.GradScaler()


def _batches(ctx, X, y, batch, shuffle, pin):
    """``(x, y)`` batches of CPU tensors ``X, y`` on the device, as a careful user writes it."""
    order = torch.randperm(len(X)) if shuffle else torch.arange(len(X))
    for idx in order.split(batch):
        xb, yb = X[idx], y[idx]
        if pin:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        yield xb.to(ctx.device, non_blocking=pin), yb.to(ctx.device, non_blocking=pin)


def hand_full(ctx, X, y, dtype, channels_last=False, pin=None):
    """Full fine-tuning, AdamW, shuffled batches; autocast (+ GradScaler for fp16)."""
    pin = ctx.cuda if pin is None else pin
    net = _speed_model(ctx).to(ctx.device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = _scaler(ctx, dtype)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(ctx.speed_epochs):
        for xb, yb in _batches(ctx, Xt, yt, ctx.speed_batch, True, pin):
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with _autocast(ctx, dtype):
                loss = loss_fn(net(xb), yb)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    return net


def hand_head_only(ctx, X, y, dtype):
    """The backbone once (inference mode, autocast), then the head on the stored features."""
    net = _speed_model(ctx).to(ctx.device).eval()
    head = net[-1] if isinstance(net, nn.Sequential) else net.fc
    if isinstance(net, nn.Sequential):
        net = net[:-1]
    else:
        net.fc = nn.Identity()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).to(ctx.device)
    with torch.inference_mode(), _autocast(ctx, dtype):
        feats = torch.cat([net(xb) for xb, _ in _batches(ctx, Xt, yt.cpu(), 256, False,
                                                          ctx.cuda)])
    feats = feats.clone()  # out of inference mode, so that autograd may use it
    head = nn.Linear(head.in_features, 4).to(ctx.device)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    scaler = _scaler(ctx, dtype)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(ctx.speed_epochs * 5):
        for idx in torch.randperm(len(feats), device=ctx.device).split(ctx.speed_batch):
            opt.zero_grad(set_to_none=True)
            with _autocast(ctx, dtype):
                loss = loss_fn(head(feats[idx]), yt[idx])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    return head


def _sk_params(ctx, dtype, **params):
    base = dict(model=_speed_model(ctx), penalty=None, lr=1e-3, backbone_lr_scale=1.0,
                batch_size=ctx.speed_batch, head_init="random", random_state=0,
                device=ctx.device)
    if dtype is not None:
        if not ctx.has_param(FineTunedClassifier, "precision"):
            raise Skip("no precision parameter: sktransfer cannot run mixed precision "
                       "without accelerate in this version")
        base["precision"] = "bf16" if dtype == torch.bfloat16 else "16-mixed"
    base.update(params)
    return base


def _speed_row(ctx, sk_fit, hand_fit, n_images):
    X, y = _speed_data(ctx)
    repeats = 1 if ctx.short else 2
    hand_s, _ = _time(ctx, lambda: hand_fit(X, y), repeats)
    sk_s, _ = _time(ctx, lambda: sk_fit(X, y), repeats)
    note = " (short mode: not a measurement)" if ctx.short else ""
    return (f"sktransfer {n_images / sk_s:,.0f} images/s, hand-written {n_images / hand_s:,.0f}"
            f" images/s: {sk_s / hand_s:.2f}x the hand-written time{note}")


@row("head-only (freeze_depth='all') images/s vs a hand-written loop, mixed precision")
def speed_head_only(ctx):
    dtype = ctx.amp

    def sk_fit(X, y):
        clear_cache()  # every timed fit computes its frozen outputs
        return FineTunedClassifier(**_sk_params(ctx, dtype, freeze_depth="all",
                                                max_epochs=ctx.speed_epochs * 5)).fit(X, y)

    result = _speed_row(ctx, sk_fit, lambda X, y: hand_head_only(ctx, X, y, dtype),
                        ctx.speed_n)
    return f"{ctx.speed_epochs * 5} epochs, {ctx.amp_precision}: {result}"


@row("full fine-tuning images/s vs a hand-written loop, mixed precision")
def speed_full(ctx):
    dtype = ctx.amp

    def sk_fit(X, y):
        return FineTunedClassifier(**_sk_params(ctx, dtype, freeze_depth=0,
                                                max_epochs=ctx.speed_epochs)).fit(X, y)

    result = _speed_row(ctx, sk_fit, lambda X, y: hand_full(ctx, X, y, dtype),
                        ctx.speed_n * ctx.speed_epochs)
    return f"{ctx.speed_epochs} epochs, {ctx.amp_precision}: {result}"


@row("full fine-tuning images/s vs a hand-written loop, float32")
def speed_full_fp32(ctx):
    def sk_fit(X, y):
        return FineTunedClassifier(**_sk_params(ctx, None, freeze_depth=0,
                                                max_epochs=ctx.speed_epochs)).fit(X, y)

    return _speed_row(ctx, sk_fit, lambda X, y: hand_full(ctx, X, y, None),
                      ctx.speed_n * ctx.speed_epochs)



@row("full fine-tuning, mixed precision, batches made by 4 DataLoader workers (net_kwargs)",
     short=False)
def speed_full_workers(ctx):
    # skorch reads every batch's loss (a device synchronisation), so the host makes
    # the next batch while the GPU waits; DataLoader workers make it in advance
    dtype = ctx.amp
    X, y = _speed_data(ctx)
    n = ctx.speed_n * ctx.speed_epochs
    times = {}
    for workers in (0, 4):
        kwargs = {"iterator_train__num_workers": workers} if workers else {}
        times[workers], _ = _time(ctx, lambda: FineTunedClassifier(**_sk_params(
            ctx, dtype, freeze_depth=0, max_epochs=ctx.speed_epochs,
            net_kwargs=kwargs)).fit(X, y))
    return (f"{ctx.amp_precision}: main process {n / times[0]:,.0f} images/s, 4 workers "
            f"{n / times[4]:,.0f} images/s (speed ratio {times[0] / times[4]:.2f})")

def _raw_features(ctx, X, dtype):
    net = _speed_model(ctx).to(ctx.device).eval()
    if isinstance(net, nn.Sequential):
        net = net[:-1]
    else:
        net.fc = nn.Identity()
    Xt = torch.from_numpy(X)
    out = []
    with torch.inference_mode(), _autocast(ctx, dtype):
        for xb, _ in _batches(ctx, Xt, Xt[:, 0, 0, 0], 256, False, ctx.cuda):
            out.append(net(xb).float().cpu())
    return torch.cat(out).numpy()


def _transform_row(ctx, dtype):
    X, _ = _speed_data(ctx)
    params = dict(model=_speed_model(ctx), batch_size=256, device=ctx.device)
    if dtype is not None:
        if not ctx.has_param(FeatureExtractorTransformer, "precision"):
            raise Skip("FeatureExtractorTransformer has no precision parameter in this version")
        params["precision"] = "bf16" if dtype == torch.bfloat16 else "16-mixed"
    fx = FeatureExtractorTransformer(**params).fit(X[:8])
    repeats = 1 if ctx.short else 3
    raw_s, raw = _time(ctx, lambda: _raw_features(ctx, X, dtype), repeats)
    sk_s, feats = _time(ctx, lambda: fx.transform(X), repeats)
    assert feats.dtype == np.float32 and feats.shape == raw.shape, (
        f"features {feats.dtype} {feats.shape}, raw loop {raw.shape}")
    scale = np.abs(raw).max() + 1e-12
    diff = np.abs(feats - raw).max() / scale
    assert diff < 0.05, f"features differ from the raw loop's by {diff:.2g} (relative)"
    note = " (short mode: not a measurement)" if ctx.short else ""
    return (f"sktransfer {len(X) / sk_s:,.0f} images/s, raw loop {len(X) / raw_s:,.0f} "
            f"images/s: {sk_s / raw_s:.2f}x the raw time; same features "
            f"(max relative diff {diff:.1e}){note}")


@row("FeatureExtractorTransformer.transform vs a raw inference_mode loop, float32")
def speed_transform(ctx):
    return _transform_row(ctx, None)


@row("FeatureExtractorTransformer.transform vs a raw inference_mode loop, mixed precision")
def speed_transform_amp(ctx):
    return f"{ctx.amp_precision}: " + _transform_row(ctx, ctx.amp)


# -- pinned memory and channels_last ----------------------------------------------------
@row("pinned memory: host-to-device copy, pageable vs pinned (raw torch)", cuda=True)
def pinned_raw(ctx):
    x = torch.randn(64 * 2**20 // 4)  # 64 MB
    pinned = x.pin_memory()
    dev = torch.empty_like(x, device=ctx.device)

    def copy(src, non_blocking):
        for _ in range(10):
            dev.copy_(src, non_blocking=non_blocking)

    page_s, _ = _time(ctx, lambda: copy(x, False), 3)
    pin_s, _ = _time(ctx, lambda: copy(pinned, True), 3)
    gb = 10 * x.numel() * 4 / 1e9
    return (f"pageable {gb / page_s:.1f} GB/s, pinned {gb / pin_s:.1f} GB/s "
            f"({page_s / pin_s:.2f}x)")


def _switch(name):
    """A private switch of sktransfer's device feeding, or ``None`` when it has none."""
    module = getattr(sktransfer, "_device", None)
    return module if module is not None and hasattr(module, name) else None


@contextlib.contextmanager
def _switched(name, value):
    module = _switch(name)
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


@row("pinned memory on vs off: full fine-tuning fit and transform", cuda=True)
def pinned_sktransfer(ctx):
    if _switch("PIN_MEMORY") is None:
        raise Skip("this version has no pinned-memory feeding to switch")
    X, y = _speed_data(ctx)
    dtype = ctx.amp
    fx = FeatureExtractorTransformer(model=_speed_model(ctx), batch_size=256,
                                     device=ctx.device).fit(X[:8])
    times = {}
    for pin in (True, False):
        with _switched("PIN_MEMORY", pin):
            fit_s, _ = _time(ctx, lambda: FineTunedClassifier(**_sk_params(
                ctx, dtype, freeze_depth=0, max_epochs=1)).fit(X, y))
            tr_s, _ = _time(ctx, lambda: fx.transform(X), 2)
        times[pin] = (fit_s, tr_s)
    (on_fit, on_tr), (off_fit, off_tr) = times[True], times[False]
    return (f"fit {len(X) / on_fit:,.0f} vs {len(X) / off_fit:,.0f} images/s "
            f"(speed ratio on/off {off_fit / on_fit:.2f}); transform {len(X) / on_tr:,.0f} vs "
            f"{len(X) / off_tr:,.0f} images/s ({off_tr / on_tr:.2f})")


@row("channels_last on vs off: hand-written training loop, mixed precision")
def channels_last_raw(ctx):
    X, y = _speed_data(ctx)
    dtype = ctx.amp
    repeats = 1 if ctx.short else 2
    off_s, _ = _time(ctx, lambda: hand_full(ctx, X, y, dtype, channels_last=False), repeats)
    on_s, _ = _time(ctx, lambda: hand_full(ctx, X, y, dtype, channels_last=True), repeats)
    n = ctx.speed_n * ctx.speed_epochs
    note = " (short mode: not a measurement)" if ctx.short else ""
    return (f"{ctx.amp_precision}: NCHW {n / off_s:,.0f} images/s, channels_last "
            f"{n / on_s:,.0f} images/s (speed ratio on/off {off_s / on_s:.2f}){note}")


@row("channels_last on vs off: sktransfer full fine-tuning, mixed precision")
def channels_last_sktransfer(ctx):
    # sktransfer keeps the memory format of the model it is given: channels_last is
    # the user's choice, model.to(memory_format=torch.channels_last)
    X, y = _speed_data(ctx)
    dtype = ctx.amp
    times, kept = {}, None
    for on in (True, False):
        model = _speed_model(ctx)
        if on:
            model = model.to(memory_format=torch.channels_last)
        times[on], est = _time(ctx, lambda: FineTunedClassifier(**_sk_params(
            ctx, dtype, model=model, freeze_depth=0, max_epochs=ctx.speed_epochs)).fit(X, y))
        if on:
            kept = any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last)
                       and not p.is_contiguous() for p in est.module_.parameters())
    assert kept, "the fitted network lost the channels_last format of the model"
    n = ctx.speed_n * ctx.speed_epochs
    note = " (short mode: not a measurement)" if ctx.short else ""
    return (f"{ctx.amp_precision}: NCHW model {n / times[False]:,.0f} images/s, "
            f"channels_last model {n / times[True]:,.0f} images/s (speed ratio on/off "
            f"{times[False] / times[True]:.2f}){note}")


# -- other estimators and model sources on the device ----------------------------------
@row("TabularPretrainer fit and transform")
def check_pretrainer(ctx):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(512 if ctx.short else 4096, 20)).astype(np.float32)
    params = dict(hidden_layer_sizes=(64, 32), max_epochs=2 if ctx.short else 10,
                  batch_size=128, random_state=0, device=ctx.device)
    pre = TabularPretrainer(**params).fit(X)
    where = _device_of(pre.encoder_)
    assert where.startswith(torch.device(ctx.device).type), f"encoder on {where}"
    Z = pre.transform(X[:100])
    assert Z.shape == (100, 32) and Z.dtype == np.float32 and np.isfinite(Z).all()
    loss = pre.history_[-1]["train_loss"]
    extra = ""
    if ctx.has_param(TabularPretrainer, "precision") and not (ctx.cuda and not _bf16_on_gpu()):
        low = TabularPretrainer(**params, precision="bf16").fit(X)
        low_loss = low.history_[-1]["train_loss"]
        assert abs(low_loss - loss) <= 0.1 * abs(loss) + 0.05, (
            f"bf16 final loss {low_loss:.3f} vs float32 {loss:.3f}")
        extra = f"; bf16 final loss {low_loss:.3f}"
    return f"encoder on {where}, embeddings {Z.shape} float32, final loss {loss:.3f}{extra}"


@row("timm model (random weights) fit")
def check_timm(ctx):
    try:
        import timm  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"timm does not import ({_first_line(exc)})") from exc
    X, y, X_test, y_test = ctx.data()
    n = 64 if ctx.short else len(X)
    name = "timm:test_resnet" if ctx.short else "timm:resnet18"
    est = FineTunedClassifier(model=name, weights=None, freeze_depth=2,
                              penalty=None, max_epochs=1 if ctx.short else ctx.epochs,
                              batch_size=ctx.batch, random_state=0, preprocess=None,
                              device=ctx.device).fit(X[:n], y[:n])
    where = _device_of(est.module_)
    assert where.startswith(torch.device(ctx.device).type), f"network on {where}"
    acc = np.mean(est.predict(X_test) == y_test)
    return f"{name}: {len(est.blocks_)} blocks on {where}, test accuracy {acc:.3f} (chance 0.25)"


def _tiny_text_encoder(directory):
    """A 2-layer BERT and a word-level tokenizer, saved to ``directory`` (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "good great fine bad awful poor the a film food was is very".split()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                        pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return words


@row("Hugging Face text encoder (tiny BERT built here) fit")
def check_hf(ctx):
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"transformers/tokenizers do not import ({_first_line(exc)})") from exc
    rng = np.random.RandomState(0)
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stderr(io.StringIO()):
            _tiny_text_encoder(tmp)
        pos, neg = ["good", "great", "fine"], ["bad", "awful", "poor"]
        y = rng.randint(0, 2, size=64 if ctx.short else 256)
        texts = [f"the {rng.choice(['film', 'food'])} was very "
                 f"{rng.choice(pos if label else neg)}" for label in y]
        est = FineTunedClassifier(model=f"hf:{tmp}", freeze_depth=0, penalty=None, lr=3e-3,
                                  max_epochs=2 if ctx.short else 10, batch_size=32,
                                  random_state=0, device=ctx.device).fit(texts, y)
        where = _device_of(est.module_)
        assert where.startswith(torch.device(ctx.device).type), f"network on {where}"
        acc = est.score(texts, y)
    return f"{len(est.blocks_)} blocks on {where}, train accuracy {acc:.3f} (chance 0.5)"


# -- main -----------------------------------------------------------------------------
def _warm_up(ctx):
    """First CUDA context, cuDNN and autocast set-up, so that no later row pays for them."""
    net = _speed_model(ctx).to(ctx.device)
    x = torch.zeros((8, 3, ctx.speed_size, ctx.speed_size), device=ctx.device)
    for dtype in (None, ctx.amp):
        with _autocast(ctx, dtype):
            net(x).float().sum().backward()
    ctx.sync()
    return f"{ctx.device}: forward and backward in float32 and {ctx.amp_precision}"


# the first row: registered here, run before all others
ROWS.insert(0, {"name": "warm-up (CUDA context, cuDNN, autocast)", "fn": _warm_up,
                "cuda": False, "short": True})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when available) or cpu")
    parser.add_argument("--short", action="store_true",
                        help="tiny sizes (seconds): checks that every row runs, measures nothing")
    parser.add_argument("--out", help="also write the table here, after every row "
                        "(.json: JSON, else markdown)")
    parser.add_argument("--row-timeout", type=int, default=60,
                        help="seconds one row may take before it fails (default 60; a "
                        "few rows have their own)")
    parser.add_argument("--budget", type=float, default=210,
                        help="seconds for all rows (default 210): rows that would start "
                        "later are not run, and the table is printed in any case")
    parser.add_argument("--only", default="",
                        help="run only the rows whose name contains this text")
    parser.add_argument("--check-deps", action="store_true",
                        help="only say which dependencies import, then stop")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    return parser.parse_args(argv)


def report(path, mode, device, info, results, total, complete=True):
    """The header and the table as text (markdown), or JSON for a ``.json`` path."""
    failed = sum(r["status"] == "FAIL" for r in results)
    summary = (f"{len(results)} rows: {sum(r['status'] == 'ok' for r in results)} ok, "
               f"{failed} FAIL, {sum(r['status'] == 'skipped' for r in results)} "
               f"skipped; {total:.0f} s")
    if not complete:
        summary += " (PARTIAL: the run has not finished, or was killed)"
    if path is not None and Path(path).suffix == ".json":
        return json.dumps({"mode": mode, "device": device, "versions": info, "rows": results,
                           "seconds": round(total, 1), "complete": complete}, indent=2)
    head = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return (f"# sktransfer GPU check ({mode} mode, device {device})\n\n{head}\n\n"
            f"{markdown(results)}\n\n{summary}\n")


def main(argv=None):
    args = parse_args(argv)
    if args.check_deps:
        return 2 if check_dependencies() else 0
    if args.short and args.device == "cpu":
        # tiny sizes gain nothing from threads, and one thread does not fight other
        # processes for the cores (CI machines are shared)
        torch.set_num_threads(1)
    ctx = Context(args)
    info = versions()
    mode = "short" if args.short else "full"
    print(f"# sktransfer GPU check ({mode} mode, device {args.device})\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(flush=True)
    torch.manual_seed(0)
    rows = [r for r in ROWS if r is ROWS[0] or args.only.lower() in r["name"].lower()]
    start = time.perf_counter()

    def write(results, complete=False):
        # after every row: a run killed from outside still leaves the rows it ran
        if args.out:
            Path(args.out).write_text(report(args.out, mode, args.device, info, results,
                                             time.perf_counter() - start, complete))

    results = run_rows(ctx, rows, args.row_timeout, args.budget, on_row=write)
    write(results, complete=True)
    text = report(None, mode, args.device, info, results, time.perf_counter() - start)
    print("\n" + text.split("\n\n", 2)[2], flush=True)  # the table and the summary
    return 1 if any(r["status"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
