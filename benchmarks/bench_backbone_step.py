"""Backbone training-step time: per-frame AdaLN (``framewise_adaln``, default) vs diffusers' per-token forward.

Both rows run the same weights on the same inputs in this process, so the ratio holds on any machine. The default
shape is the ALOHA-sim CPU setting (tiny DiT, batch 16, 7 latent frames of 16×14×14, i.e. 112 px images); on a GPU
``--backbone cosmos_predict2_2b --frames 11 --hw 28 --batch 4`` measures the 2B network (bf16 autocast).

    python benchmarks/bench_backbone_step.py
"""

from __future__ import annotations

import argparse
import time

import torch

from cosmos_lit.registry import build


def step_seconds(bb: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                 reps: int, device: str) -> float:
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for i in range(reps + 2):
        bb.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with ctx:
            out = bb(x, t, mask, text)
        out.float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="cosmos_predict2_tiny")
    p.add_argument("--layers", type=int, default=4, help="tiny backbone only")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=7)
    p.add_argument("--hw", type=int, default=14, help="latent height = width")
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    node = {"name": a.backbone}
    if a.backbone == "cosmos_predict2_tiny":
        node.update(num_layers=a.layers, num_attention_heads=4, attention_head_dim=32, text_embed_dim=32, adaln_lora_dim=32)
    else:
        node["gradient_checkpointing"] = True
    fast = build({**node, "framewise_adaln": True}, "backbone").to(device)
    ref = build({**node, "framewise_adaln": False}, "backbone").to(device)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(a.batch, 16, a.frames, a.hw, a.hw, device=device)
    mask = torch.zeros(a.batch, a.frames, device=device)
    mask[:, :3] = 1
    t = torch.rand(a.batch, a.frames, device=device) * (1 - mask)
    text = torch.randn(a.batch, 16, fast.text_dim, device=device)
    with torch.no_grad():
        diff = (fast(x, t, mask, text) - ref(x, t, mask, text)).abs().max().item()
    base = step_seconds(ref, x, t, mask, text, a.reps, device)
    new = step_seconds(fast, x, t, mask, text, a.reps, device)
    tokens = a.frames * (a.hw // 2) ** 2
    print(f"{a.backbone} on {device} ({torch.get_num_threads()} threads), batch {a.batch}, {tokens} tokens/sample, "
          f"fwd+bwd, median of {a.reps}; max |Δ output| {diff:.1e}")
    print(f"{'forward':<34}{'s/step':>10}{'vs diffusers':>14}")
    print(f"{'diffusers (AdaLN per token)':<34}{base:>10.4f}{1.0:>13.2f}x")
    print(f"{'framewise_adaln (per frame)':<34}{new:>10.4f}{base / new:>13.2f}x")


if __name__ == "__main__":
    main()
