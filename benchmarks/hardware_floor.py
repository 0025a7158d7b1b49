"""The arithmetic floor of a measured figure: its FLOPs over the matrix-product rate measured on this device.

Shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``):

* :func:`count_flops`: FLOPs of one call, counted by ``torch.utils.flop_counter`` (matrix products, attention and
  convolutions: the work that cannot be skipped; element-wise work is left out, so the floor is a lower bound);
  :func:`flops_by_kind` the same split into attention and the rest;
* :func:`matmul_rate`: FLOP/s of a large-enough matrix product of the given shape and dtype, timed here;
* :func:`device_name` and :func:`table` for the printed tables.
"""

from __future__ import annotations

import platform
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any,
                                  *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows the GPU attention kernels but not the CPU flash kernel that scaled_dot_product_attention
# dispatches to on a CPU; without these, the CPU floors would leave attention out (a third of a 112-px step's FLOPs).
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (forward and, if ``fn`` calls it, backward), attention included on CPU and GPU."""
    return sum(flops_by_kind(fn).values())


def flops_by_kind(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn()`` split into ``attention`` (scaled-dot-product kernels) and ``other`` (matrix products,
    convolutions): on a CPU under bf16 autocast the DiT keeps attention in float32, so its floor takes the float32
    rate for the first and the bf16 rate for the second."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    attention = sum(int(n) for op, n in counter.get_flop_counts()["Global"].items()
                    if "attention" in str(op))
    return {"attention": attention, "other": int(counter.get_total_flops()) - attention}


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device | str, seconds: float = 1.0) -> float:
    """FLOP/s of ``(m, k) @ (k, n)`` in ``dtype`` on ``device`` (median of repeats filling about ``seconds``)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2.0 * m * k * n / sorted(times)[len(times) // 2]


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (floats with 3 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "not measured" if v != v else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
