"""Devices: which one, in which precision, and how batches get there.

* :func:`resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` -> a device
  string that exists here.
* Mixed precision (the estimators' ``precision``): :func:`autocast_dtype` says
  which dtype ``torch.autocast`` runs in, or why this device cannot;
  :class:`MixedPrecision` is the skorch ``NeuralNet`` mixin that trains under
  autocast, with ``torch.amp.GradScaler`` for float16. The weights stay
  float32; what users get back is float32.
* Host-to-device feeding: batches bound for a CUDA device go through pinned
  (page-locked) memory and are copied with ``non_blocking=True``
  (:func:`pinned`, :func:`to_device`), so the copy runs while the host prepares
  the next batch.
* Seeding: :func:`seeded_rng`, torch's generators seeded inside a block and
  restored after it.

This module imports nothing from the package.
"""

from __future__ import annotations

import contextlib

import torch
from sklearn.utils._param_validation import StrOptions

__all__ = ["DEVICE_CONSTRAINT", "resolve_device", "PRECISION_CONSTRAINT", "autocast_dtype",
           "check_precision", "autocast", "autocast_state", "grad_scaler", "pinned", "to_device",
           "MixedPrecision", "seeded_rng"]

#: scikit-learn constraint of every estimator's ``device``; which strings name a
#: device (``"cuda:1"``) and whether it exists here, constraints cannot express:
#: :func:`resolve_device` checks that
DEVICE_CONSTRAINT = [str, torch.device]


def resolve_device(device):
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; check the rest.

    ``device`` has passed ``DEVICE_CONSTRAINT`` (a str or a ``torch.device``).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'cpu', 'cuda', "
            "'cuda:<index>' or 'auto'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available on this machine (torch "
            f"{torch.__version__}); use device='cpu' or device='auto'."
        )
    return device


# -- mixed precision -------------------------------------------------------------------
#: the names users know from Lightning and accelerate: "32" (float32), "bf16"
#: (bfloat16 autocast; Lightning 2 spells it "bf16-mixed", accepted too) and
#: "16-mixed" (float16 autocast with a gradient scaler)
_DTYPES = {"32": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
           "16-mixed": torch.float16}
PRECISION_CONSTRAINT = [StrOptions(set(_DTYPES))]


def _cuda_has_bf16(dev):
    """Whether the GPU ``dev`` computes in bfloat16 natively (compute capability >= 8.0)."""
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # pragma: no cover - torch < 2.3 has no including_emulation
            return torch.cuda.is_bf16_supported()


def _unsupported(precision, dtype, dev):
    """Why ``dev`` cannot train in ``dtype`` (a sentence with the fix), or ``None``."""
    if dev.type == "cpu":
        if dtype == torch.float16:
            return (f"precision={precision!r} (float16 with a gradient scaler) is for CUDA "
                    "GPUs; on the CPU use precision='bf16' (bfloat16 autocast, no scaler) "
                    "or '32'.")
        return None
    if dev.type == "cuda":
        if dtype == torch.bfloat16 and not _cuda_has_bf16(dev):
            props = torch.cuda.get_device_properties(dev.index or 0)
            return (f"precision={precision!r} needs a GPU that computes in bfloat16 (compute "
                    f"capability 8.0 or newer: A100, H100, RTX 30xx and later); "
                    f"{props.name} has capability {props.major}.{props.minor}. Use "
                    "precision='16-mixed' on this GPU, or '32'.")
        return None
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is not None and not available(dev.type):
        return (f"precision={precision!r}: torch {torch.__version__} has no autocast on "
                f"{dev.type!r} devices; use precision='32' there.")
    return None


def autocast_dtype(precision, device, strict=True):
    """The ``torch.autocast`` dtype of ``precision`` on ``device`` (``None``: float32).

    ``strict``: a device that lacks the precision raises a ``ValueError`` that
    names the fix (``fit``); otherwise it runs in float32 (prediction with a
    network fitted elsewhere, e.g. a GPU fit unpickled on a CPU).
    """
    dtype = _DTYPES[precision]
    if dtype is None:
        return None
    problem = _unsupported(precision, dtype, torch.device(device))
    if problem is None:
        return dtype
    if strict:
        raise ValueError(problem)
    return None


def check_precision(precision, device, accelerator=None):
    """``autocast_dtype`` for a fit, which may also have an ``accelerator``."""
    if accelerator is not None and _DTYPES[precision] is not None:
        raise ValueError(
            f"precision={precision!r} and accelerator=... both set the precision; set it in "
            f"one place: precision={precision!r} with accelerator=None, or "
            "accelerator={'mixed_precision': 'bf16'} (or 'fp16') with precision='32'."
        )
    return autocast_dtype(precision, device)


def autocast_state(kind):
    """``False``, or the dtype autocast runs in on this device type."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    elif kind == "cuda":
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    else:
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return str(dtype) if enabled else False


def autocast(device, dtype):
    """``torch.autocast`` on ``device`` in ``dtype``, or nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device_type):
    """A ``GradScaler`` for float16 autocast on ``device_type`` (torch >= 2.1)."""
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device_type)
    if device_type != "cuda":  # pragma: no cover - torch < 2.3 scales on CUDA only
        raise ValueError(f"torch {torch.__version__} has no gradient scaler for "
                         f"{device_type!r}; use precision='bf16' or '32' there.")
    return torch.cuda.amp.GradScaler()  # pragma: no cover - torch < 2.3


# -- host-to-device feeding -------------------------------------------------------------
#: whether batches for a CUDA device go through pinned memory (a switch for the GPU
#: check's on/off rows, benchmarks/gpu_check.py)
PIN_MEMORY = True


def pinned(device, data=None):
    """Whether batches of ``data`` (a tensor, or ``None``) for ``device`` should be pinned:
    bound for CUDA, and not already on a GPU."""
    if not PIN_MEMORY or device is None or torch.device(device).type != "cuda":
        return False
    return not (isinstance(data, torch.Tensor) and data.device.type != "cpu")


def to_device(batch, device):
    """``batch`` (a tensor, or tuples/lists/dicts of them) on ``device``.

    The copies are ``non_blocking``: from pinned memory they run while the host
    goes on (to the next batch); from ordinary memory torch makes them
    synchronous, so this is always safe.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class MixedPrecision:
    """skorch ``NeuralNet`` mixin: training steps under ``torch.autocast``, batches
    copied to the device without blocking.

    ``precision`` (``"32"``, ``"bf16"``, ``"bf16-mixed"``, ``"16-mixed"``): the
    forward pass and the loss run under autocast in that dtype (validation
    too), the weights and the optimizer stay float32. For float16 a
    ``torch.amp.GradScaler`` scales the loss before the backward pass and
    unscales the gradients right after it, so that what comes after (callbacks
    on ``on_grad_computed`` such as gradient clipping, a penalty's gradient
    added by hand) sees the true gradients; its ``step`` skips the optimizer
    step when they overflowed. This is skorch's ``AccelerateMixin`` recipe
    (``train_step_single``, ``_step_optimizer``) without accelerate.

    Sits after the net's own classes and before ``NeuralNet`` in the bases, so
    that their ``train_step_single`` (e.g. ``TransferNet`` adding a penalty's
    gradient after the backward pass) wraps this one.
    """

    def __init__(self, *args, precision="32", **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        super().on_train_begin(net, X=X, y=y, **kwargs)
        device = self.device
        # under accelerate (device None) the accelerator owns precision and placement
        self._amp = None if device is None else autocast_dtype(self.precision, device)
        self._scaler = (grad_scaler(torch.device(device).type)
                        if self._amp == torch.float16 else None)

    def _feed(self, batch):
        if self.device is None or torch.device(self.device).type == "cpu":
            return batch
        return to_device(batch, self.device)

    def train_step_single(self, batch, **fit_params):
        batch = self._feed(batch)
        amp = getattr(self, "_amp", None)
        if amp is None:
            return super().train_step_single(batch, **fit_params)
        from skorch.dataset import unpack_data

        # skorch's NeuralNet.train_step_single, with autocast and the scaler
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with autocast(self.device, amp):
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if self._scaler is None:
            loss.backward()
        else:
            self._scaler.scale(loss).backward()
            for name in self._optimizers:
                self._scaler.unscale_(getattr(self, name + "_"))
        return {"loss": loss, "y_pred": y_pred}

    def _step_optimizer(self, step_fn):
        if getattr(self, "_scaler", None) is None:
            return super()._step_optimizer(step_fn)
        # GradScaler.step takes no closure: compute the gradients, then step
        step_fn()
        for name in self._optimizers:
            self._scaler.step(getattr(self, name + "_"))
        self._scaler.update()
        return None

    def validation_step(self, batch, **fit_params):
        batch = self._feed(batch)
        with autocast(self.device, getattr(self, "_amp", None)):
            return super().validation_step(batch, **fit_params)


@contextlib.contextmanager
def seeded_rng(seed, devices=()):
    """torch's CPU generator, and the CUDA generators of ``devices`` (indices), seeded
    with ``seed`` inside the block and restored after it (``torch.random.fork_rng``).

    Not ``torch.manual_seed``: it seeds every CUDA device, which ``fork_rng``
    restores only for ``devices`` (so a seed leaked to the others), and while
    CUDA is not initialised it queues each seeding with a stack trace, three
    per call (about 1 ms; a grid search seeds a few times per fit).
    """
    devices = list(devices)
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
