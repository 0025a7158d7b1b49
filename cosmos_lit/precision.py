"""Which number format a run computes in: one rule for training, evaluation in training, collection and serving.

``auto`` is bf16 (autocast, fp32 master weights) on a CUDA GPU with bf16 support and float32 elsewhere. On a CPU
bf16 is opt-in (``trainer.precision=bf16-mixed``): where the CPU multiplies bf16 matrices natively (AVX512-BF16 or
AMX, :func:`native_bf16`) it speeds up the matrix products of a training step (``benchmarks/bench_train_step.py``),
but results then move within bf16's rounding, and a batch's rows round differently with the batch's size, so the
exact-reproduction guarantees (DDP = one process, exact resume) are stated and tested in float32.

Precision strings: Lightning's (``32-true``, ``32``, ``bf16-mixed``, ``bf16-true``, ...) and the short ones of the
evaluation and serving options (``fp32``, ``bf16``), plus ``auto``.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import lru_cache
from typing import Any, ContextManager

import torch

FP32 = ("32-true", "32", "fp32", "float32")
BF16 = ("bf16-mixed", "bf16", "bf16-true")


@lru_cache(maxsize=None)
def _cpu_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix products in hardware (a CUDA GPU with bf16, or an AVX512-BF16/AMX CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_native_bf16()
    return False


def uses_bf16(precision: str | int, device: torch.device | str) -> bool:
    """Whether a run with ``precision`` computes in bf16 on ``device`` (``auto``: on a bf16 GPU only)."""
    p = str(precision)
    if p == "auto":
        return torch.device(device).type == "cuda" and native_bf16(device)
    if p in BF16:
        return True
    if p in FP32:
        return False
    raise ValueError(f"precision: expected auto, {', '.join(FP32)} or {', '.join(BF16)}, got {precision!r}")


class SlowBf16Warning(UserWarning):
    """bf16 was asked for on a CPU that has no bf16 matrix instructions."""


def warn_if_emulated_bf16(precision: str | int, device: torch.device | str, key: str) -> bool:
    """Warn once, naming the config ``key``, when ``precision`` computes in bf16 on a CPU without native bf16.

    There oneDNN emulates bf16 matrix products: on an AVX2-only CPU (2 threads) a 4096x128x512 product ran at
    1.3 GFLOP/s in bf16 against 168 GFLOP/s in float32, and a training step of the README's default was 13x slower
    (docs/speed.md). The run still computes correctly, so this is a warning, not an error. Returns whether it warned.
    """
    device = torch.device(device)
    if device.type != "cpu" or not uses_bf16(precision, device) or native_bf16(device):
        return False
    warnings.warn(
        f"{key}={precision}: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 is emulated and "
        f"runs many times slower than float32 here; use {key}={'32-true' if key.startswith('trainer.') else 'fp32'}",
        SlowBf16Warning, stacklevel=2)
    return True


def training_device(accelerator: str | None) -> str:
    """The device type a Trainer with ``trainer.accelerator`` trains on (``auto``: a GPU if there is one)."""
    if accelerator in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else str(accelerator)


def trainer_precision(precision: str | int, accelerator: str | None) -> str:
    """Lightning's precision for ``trainer.precision`` (``auto`` resolved for the accelerator that will train)."""
    if str(precision) != "auto":
        return str(precision)
    return "bf16-mixed" if uses_bf16("auto", training_device(accelerator)) else "32-true"


def autocast(device: torch.device | str, precision: str | int) -> ContextManager[Any]:
    """The inference context of a run: bf16 autocast when it computes in bf16 on ``device``, else nothing."""
    device = torch.device(device)
    if device.type in ("cpu", "cuda") and uses_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
