"""LoRA (``model/adapter=lora``) vs full fine-tuning of the backbone: trainable parameters, memory, step time.

One training step = backbone forward + backward + AdamW step on random inputs (the tiny DiT at the ALOHA-sim CPU
setting by default: 4 blocks, width 128, batch 16, 7 latent frames of 16×14×14, on the CPU). The CPU rows are built
side by side and stepped in turn, so a busy machine slows them alike; each GPU row runs in a subprocess of its own (a
clean CUDA peak per row). The ratios compare rows of the same run.

Columns:
  trainable      parameters the optimizer updates.
  train state    weights + gradients + AdamW moments after the steps, counted tensor by tensor (LoRA keeps no
                 gradients or moments for the frozen weights).
  activations    tensors autograd saves for backward in one forward (``saved_tensors_hooks``; unique storages, weights
                 left out): a frozen Linear saves no input for its weight gradient, so LoRA saves less here too.
  memory         train state + activations: the tensor memory of a step apart from short-lived temporaries, the
                 same measure on every device. (Peak RSS is not used on the CPU: glibc's heap keeps freed blocks,
                 so it follows allocation patterns more than live tensors.)
  CUDA peak      torch.cuda.max_memory_allocated over the steps (weights, inputs and temporaries included).
  s/step         median step time after two warm-up steps.

The Cosmos-Predict2 2B rows (random weights, gradient checkpointing, 11 latent frames of 28×28, batch 2) run only
where CUDA is available; elsewhere they print "not measured (no GPU)".

    python benchmarks/bench_lora.py [--reps 5] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch import nn

TINY = {"name": "cosmos_predict2_tiny", "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32,
        "text_embed_dim": 32, "adaln_lora_dim": 32}
SHAPES = {"tiny": dict(batch=16, frames=7, hw=14), "2b": dict(batch=2, frames=11, hw=28)}


def _holder(size: str, device: str) -> nn.Module:
    """A module with a ``backbone`` (what ``apply_adapter`` adapts), random weights on ``device``."""
    from cosmos_lit.registry import build

    holder = nn.Module()
    if size == "tiny":
        holder.backbone = build(dict(TINY), "backbone").to(device)
    else:  # built on the meta device, materialized and randomized on the GPU (no 2B init on the CPU)
        holder.backbone = build({"name": "cosmos_predict2_2b", "meta_init": True, "gradient_checkpointing": True},
                                "backbone")
        holder.backbone.to_empty(device=device)
        with torch.no_grad():
            for p in holder.backbone.parameters():
                p.normal_(0.0, 0.02)
    return holder


class Row:
    """One training setting: the backbone (full, or with LoRA of ``rank``), its AdamW, fixed random inputs."""

    def __init__(self, size: str, rank: int | None):
        from cosmos_lit.models.adapters import apply_adapter

        self.device = "cuda" if size == "2b" else "cpu"
        torch.manual_seed(0)
        holder = _holder(size, self.device)
        if rank is not None:
            apply_adapter(holder, {"name": "lora", "rank": rank, "targets": ["attention", "mlp"]})
        self.bb = bb = holder.backbone
        self.params = [p for p in bb.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=0.1)
        s, dev = SHAPES[size], self.device
        self.x = torch.randn(s["batch"], 16, s["frames"], s["hw"], s["hw"], device=dev)
        self.mask = torch.zeros(s["batch"], s["frames"], device=dev)
        self.mask[:, :3] = 1
        self.t = torch.rand(s["batch"], s["frames"], device=dev) * (1 - self.mask)
        self.text = torch.randn(s["batch"], 512 if size == "2b" else 16, bb.text_dim, device=dev)
        self.weights = {p.untyped_storage().data_ptr() for p in bb.parameters()}
        self.saved: dict[int, int] = {}
        self.times: list[float] = []
        self.steps = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def step(self) -> None:
        cuda = self.device == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        # the saved activations are counted in the first (warm-up) step
        counting = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t) if self.steps == 0 else nullcontext()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with ctx, counting:
            out = self.bb(self.x, self.t, self.mask, self.text)
        out.float().square().mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)  # keep the gradients: they are part of the training state
        if cuda:
            torch.cuda.synchronize()
        if self.steps >= 2:  # two warm-up steps
            self.times.append(time.perf_counter() - start)
        self.steps += 1

    def result(self) -> dict:
        bb = self.bb
        state = sum(p.numel() * p.element_size() for p in bb.parameters())
        state += sum(p.grad.numel() * p.grad.element_size() for p in bb.parameters() if p.grad is not None)
        state += sum(v.numel() * v.element_size() for st in self.opt.state.values() for v in st.values()
                     if torch.is_tensor(v) and v.dim() > 0)
        return {"trainable": sum(p.numel() for p in self.params), "total": sum(p.numel() for p in bb.parameters()),
                "state": state, "activations": sum(self.saved.values()),
                "peak": torch.cuda.max_memory_allocated() if self.device == "cuda" else None,
                "step": sorted(self.times)[len(self.times) // 2], "device": self.device,
                "threads": torch.get_num_threads()}


def measure(size: str, ranks: list[int | None], reps: int) -> list[dict]:
    """Rows built side by side and stepped in turn (round robin), so a busy CPU slows them alike."""
    rows = [Row(size, r) for r in ranks]
    for _ in range(reps + 2):
        for row in rows:
            row.step()
    return [row.result() for row in rows]


def run_isolated(size: str, rank: int | None, reps: int) -> dict:
    """One row in a subprocess of its own: its CUDA peak is its own."""
    cmd = [sys.executable, __file__, "--worker", size, "--reps", str(reps)] + (["--rank", str(rank)] if rank else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_lora: the {size} row failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rank", type=int, action="append", help="LoRA rank (repeatable; default 16 and 4)")
    p.add_argument("--worker", choices=list(SHAPES), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker, [a.rank[0] if a.rank else None], a.reps)[0]))
        return
    ranks = a.rank or [16, 4]
    sizes = ["tiny"] + (["2b"] if torch.cuda.is_available() else [])
    print(f"LoRA (attention + mlp) vs full fine-tuning: backbone fwd + bwd + AdamW, median of {a.reps} steps; MB = 2^20 B")
    print(f"{'model':<6}{'training':<12}{'trainable':>14}{'train state':>13}{'activations':>13}{'memory':>9}"
          f"{'CUDA peak':>11}{'s/step':>9}   ratio to full: {'params':>7}{'memory':>8}{'time':>7}")
    mb = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    for size in sizes:
        settings = [None, *ranks]
        if size == "tiny":
            results = measure(size, settings, a.reps)
        else:
            results = [run_isolated(size, r, a.reps) for r in settings]
        full = results[0]
        rows = list(zip(["full"] + [f"lora r={r}" for r in ranks], results))
        for name, r in rows:
            memory, full_memory = r["state"] + r["activations"], full["state"] + full["activations"]
            peak = mb(r["peak"]) if r["peak"] is not None else "-"
            print(f"{size:<6}{name:<12}{r['trainable']:>14,}{mb(r['state']):>13}{mb(r['activations']):>13}"
                  f"{mb(memory):>9}{peak:>11}{r['step']:>9.4f}{'':>18}{r['trainable'] / full['trainable']:>7.4f}"
                  f"{memory / full_memory:>8.3f}{r['step'] / full['step']:>7.2f}")
        print(f"{'':<6}({full['device']}, {full['threads']} threads, {full['total']:,} backbone parameters, "
              f"shape {SHAPES[size]})")
    if "2b" not in sizes:
        print(f"{'2b':<6}{'full, lora':<12}not measured (no GPU)")


if __name__ == "__main__":
    main()
