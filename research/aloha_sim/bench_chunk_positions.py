"""Can a from-scratch tiny DiT write a *moving* action chunk into a latent frame? Position codes and layouts compared.

Tiling (docs/method.md#vectors-in-latent-frames) puts chunk step ``(W·c + h) mod K`` at latent row h of channel c,
so the frame's tokens must write different steps at different rows. The conditioning frames (tiled proprio) look the
same on every row, and 3D RoPE gives attention only *relative* positions, so a randomly initialized net has no handle
on which row it writes: it learns per-channel averages and the chunk comes out nearly flat (the motion within the
chunk is lost).

Task (synthetic, no data needed): proprio q and a goal direction g (both 14-d, uniform in [-1, 1]) are tiled into two
conditioning frames; the target chunk is the ramp a_k = q + 0.8·(k/K)·g, K = 50, written into a 16×14×14
frame (the ALOHA-sim 112 px geometry); the net regresses it from a noise-free input in one step. Rows:

* ``rope only``: the released Cosmos-Predict2 nets' setting (``extra_pos_embed_type=None``);
* ``learnable, zero init``: the architecture's learnable (t, h, w) position embedding as diffusers initializes it;
* ``learnable, N(0,1) init``: the same module with random unit-scale codes (what cosmos_lit does when it is on);
* ``rope only, channel_time layout``: the official position handling, but the chunk written along channels
  (``model/vector_encoder=channel_time``), so no token needs to know where it is.

Columns: held-out action L1 (normalized units) and the chunk-motion slope (regression of predicted on true
displacement a_{K-1} − a_0: 1 = full motion, 0 = flat chunk), after the same number of AdamW steps.

    python research/aloha_sim/bench_chunk_positions.py    # 600 steps per row, about 10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import torch

from cosmos_lit.registry import build
from cosmos_lit.tiling import tile_vector

K, D, C, H, W = 50, 14, 16, 14, 14


def ramp_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.rand(n, D, generator=gen) * 2 - 1
    g = torch.rand(n, D, generator=gen) * 2 - 1
    k = torch.arange(K, dtype=torch.float32) / K
    return q, g, q[:, None] + 0.8 * k[None, :, None] * g[:, None]


def frames(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B, 16, 4, H, W): blank | tiled q | tiled g | target frame (zeros: predicted from the conditioning)."""
    x = torch.zeros(q.shape[0], C, 4, H, W)
    x[:, :, 1] = tile_vector(q, (C, H, W))
    x[:, :, 2] = tile_vector(g, (C, H, W))
    return x


def train_and_score(pos: str | None, init: str, layout: str, steps: int, batch: int, lr: float) -> tuple[float, float, float]:
    encoder = build({"name": layout}, "vector_encoder")
    torch.manual_seed(0)
    bb = build({"name": "cosmos_predict2_tiny", "num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32,
                "text_embed_dim": 32, "adaln_lora_dim": 32, "extra_pos_embed_type": pos}, "backbone")
    if pos and init == "zero":
        pe = bb.net.learnable_pos_embed
        with torch.no_grad():
            for p in (pe.pos_emb_t, pe.pos_emb_h, pe.pos_emb_w):
                p.zero_()
    opt = torch.optim.AdamW(bb.parameters(), lr=lr, weight_decay=0.1)
    mask = torch.tensor([1.0, 1, 1, 0])
    t = torch.tensor([0.0, 0, 0, 1])
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(steps):
        q, g, a = ramp_batch(batch, gen)
        out = bb(frames(q, g), t.expand(batch, 4), mask.expand(batch, 4), torch.zeros(batch, 1, 32))[:, :, 3]
        loss = (out - encoder.write(a, (C, H, W))).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    q, g, a = ramp_batch(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = bb(frames(q, g), t.expand(256, 4), mask.expand(256, 4), torch.zeros(256, 1, 32))[:, :, 3]
    pred = encoder.read(out, (K, D))
    true_d, pred_d = a[:, -1] - a[:, 0], pred[:, -1] - pred[:, 0]
    slope = float((pred_d * true_d).sum() / true_d.square().sum())
    return float((pred - a).abs().mean()), slope, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    a = p.parse_args()
    rows = [("rope only (released 2B setting)", None, "-", "tiled"),
            ("learnable, zero init (diffusers)", "learnable", "zero", "tiled"),
            ("learnable, N(0,1) init", "learnable", "normal", "tiled"),
            ("rope only, channel_time layout", None, "-", "channel_time")]
    results = [(name, *train_and_score(pos, init, layout, a.steps, a.batch, a.lr)) for name, pos, init, layout in rows]
    base_l1 = results[0][1]
    print(f"tiny DiT (4 layers, width 128), {a.steps} AdamW steps of batch {a.batch}, lr {a.lr}; ramp chunk 50x14 "
          f"in a 16x14x14 frame; {torch.get_num_threads()} CPU threads")
    print(f"{'position codes, layout':<36}{'action L1':>10}{'vs rope':>9}{'motion slope':>14}{'train s':>9}")
    for name, l1, slope, sec in results:
        print(f"{name:<36}{l1:>10.3f}{l1 / base_l1:>8.2f}x{slope:>14.2f}{sec:>9.0f}")


if __name__ == "__main__":
    main()
