"""The benchmarks' shared parts: the FLOP floor's counter and table, and the previous path every speed table's
baseline row runs (it must compute what today's path computes, only slower)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from cosmos_lit.model import CosmosPolicyModel
from helpers import TINY_NODES, TINY_SPEC, TINY_STATS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from hardware_floor import count_flops, flops_by_kind, matmul_rate, table  # noqa: E402
from previous_path import use_previous_path  # noqa: E402


def test_count_flops_and_rate_of_a_matrix_product():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_flops(lambda: a @ b) == 2 * 64 * 32 * 16
    assert matmul_rate(64, 32, 16, torch.float32, "cpu", seconds=0.01) > 0


def test_table_says_not_measured_for_nan():
    text = table(["path", "s"], [["gpu", float("nan")], ["cpu", 0.12345]])
    assert text.splitlines() == ["| path | s |", "|---|---|", "| gpu | not measured |", "| cpu | 0.123 |"]


def test_previous_path_predicts_what_todays_path_predicts():
    """The baseline rows time the same computation: diffusers' attention processor and every slot encoded."""
    torch.manual_seed(0)
    nodes = {**copy.deepcopy(TINY_NODES),
             "image_encoder": {"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"}}
    today = CosmosPolicyModel(nodes, TINY_SPEC.to_dict(), copy.deepcopy(TINY_STATS)).eval()
    previous = copy.deepcopy(today)
    use_previous_path(previous)
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

    processors = [m.processor for m in previous.backbone.modules() if isinstance(m, Attention)]
    assert processors and all(isinstance(p, CosmosAttnProcessor2_0) for p in processors)
    images = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    proprio = torch.rand(2, 4) * 2 - 1
    with torch.no_grad():
        a = today.predict(images, proprio, ["stack the blocks"] * 2, num_steps=3, seed=0)
        b = previous.predict(images, proprio, ["stack the blocks"] * 2, num_steps=3, seed=0)
    assert (a["actions"] - b["actions"]).abs().max() < 1e-4


def test_count_flops_counts_cpu_attention_forward_and_backward():
    """scaled_dot_product_attention on a CPU runs a kernel torch's counter does not know; the floor must count it:
    2 products of 2·L·L·d per head forward, 5 backward (scores recomputed, then dV, dP, dQ, dK)."""
    b, h, n, d = 2, 3, 40, 16
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    per_product = 2 * b * h * n * n * d
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * per_product
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert count_flops(lambda: out.sum().backward()) == 5 * per_product


def test_flops_by_kind_splits_attention_from_the_rest():
    q = torch.randn(1, 2, 24, 8)
    w = torch.randn(8, 4)
    split = flops_by_kind(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q) @ w)
    assert split == {"attention": 2 * 2 * 2 * 24 * 24 * 8, "other": 2 * 2 * 24 * 8 * 4}


def test_step_timer_times_each_step_after_warmup_and_reports_the_median(monkeypatch):
    """A step runs from its batch start to the next (the loader's fetch included); the last ends at its batch end.
    One slow step (a neighbour's burst on a shared machine) does not move the median."""
    import types

    import bench_train_step

    clock = iter([0.0, 1.0,  # step 0 (warmup): start, end
                  1.2, 2.0,  # step 1: 1.2 -> 2.3
                  2.3, 3.0,  # step 2: 2.3 -> 3.4
                  3.4, 9.0,  # step 3, slow: 3.4 -> 9.5
                  9.5, 10.6])  # step 4, the last: 9.5 -> 10.6 (its batch end)
    monkeypatch.setattr(bench_train_step.time, "perf_counter", lambda: next(clock))
    timer = bench_train_step.StepTimer(warmup=1)
    trainer = types.SimpleNamespace(global_step=0, max_steps=5)
    for step in range(5):
        trainer.global_step = step
        timer.on_train_batch_start(trainer)
        trainer.global_step = step + 1  # the optimizer step counts before the batch-end hook
        timer.on_train_batch_end(trainer)
    assert timer.first_step == 1.0
    assert [round(d, 6) for d in timer.durations] == [1.1, 1.1, 6.1, 1.1]
    assert abs(timer.seconds - 1.1) < 1e-9
