"""Best-of-N planning latency per action chunk against the direct policy's, batched vs the sequential loop.

The planner (``cosmos_lit.models.planner.BestOfN``) runs the N candidates x F futures x V values of a query as
batched samples (rows bounded by ``micro_batch``); the official code, and this project before, loops over them with
one sample each. Both are timed here in the same run as the direct policy (one parallel-decoding sample), so the
ratios hold on any machine:

    direct policy (5 steps) | best-of-N, N in {2, 4}, 3 futures x 5 values, 10 action steps: batched | sequential

The sequential loop is a small reference implementation kept in this script only (same seeds, same step counts);
the table also gives the largest difference of its candidate scores from the batched planner's. Tiny DiT + tiny VAE
(random weights) on the CPU by default; the 2B network on a GPU with ``--model 2b`` (random weights, 224², 3
cameras; needs CUDA).

    python benchmarks/bench_planning.py --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from cosmos_lit.layout import VALUE, WORLD_MODEL
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.models.planner import BestOfN, aggregate_values
from cosmos_lit.registry import build
from cosmos_lit.spec import DataSpec


def make_model(which: str, device: str, image_size: int) -> CosmosPolicyModel:
    if which == "tiny":
        spec = DataSpec(cameras=("wrist", "top"), proprio_dim=4, action_dim=3, chunk_size=8, image_size=image_size)
        nodes = {"backbone": {"name": "cosmos_predict2_tiny"}, "image_encoder": {"name": "wan2.1_tiny", "normalization": "none"}}
    else:
        spec = DataSpec(cameras=("left_wrist", "right_wrist", "top"), proprio_dim=14, action_dim=14, chunk_size=50,
                        image_size=224)
        nodes = {"backbone": {"name": "cosmos_predict2_2b"}, "image_encoder": {"name": "wan2.1"}}
    stats = {f"{g}_{s}": [float(s == "max")] * d for g, d in (("actions", spec.action_dim), ("proprio", spec.proprio_dim))
             for s in ("min", "max")}
    torch.manual_seed(0)
    model = CosmosPolicyModel(nodes, spec, stats).to(device).eval()
    if which == "2b":
        model.backbone.to(torch.bfloat16)
    return model


@torch.no_grad()
def sequential_plan(planner: BestOfN, model: CosmosPolicyModel, images: torch.Tensor, proprio: torch.Tensor,
                    instructions: list[str], seed: int) -> dict[str, torch.Tensor]:
    """The official loop: one B-row sample per candidate, per future and per value (reference, not the planner)."""
    b = proprio.shape[0]
    text = model.text_encoder(instructions)
    cond, mask = model.policy_condition(images, proprio)
    wm, vm = model.condition_mask(WORLD_MODEL, b), model.condition_mask(VALUE, b)
    cands, scores = [], []
    for i in range(planner.num_candidates):
        lat = model.sample(cond, mask, text, num_steps=planner.action_steps, seed=[seed + i] * b)
        vals = []
        for j, f_steps in enumerate(planner.future_steps):
            fut = model.sample(lat, wm, text, num_steps=f_steps, seed=[seed + i + j] * b)
            for k, v_steps in enumerate(planner.value_steps):
                val = model.sample(fut, vm, text, num_steps=v_steps, seed=[seed + i + j + k] * b)
                vals.append(model.value_head.read(val[:, :, model.layout.value]))
        scores.append(aggregate_values(torch.stack(vals, 1), planner.aggregation, planner.threshold))
        cands.append(lat)
    scores_t = torch.stack(scores, 1)
    best = scores_t.argmax(1)
    best = torch.where(scores_t.gather(1, best[:, None])[:, 0] > scores_t[:, 0], best, torch.zeros_like(best))
    latents = torch.stack(cands, 1)[torch.arange(b, device=best.device), best]
    return {**model.read_outputs(latents), "latents": latents, "plan_scores": scores_t, "plan_choice": best}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn, model: CosmosPolicyModel, reps: int, device: str) -> tuple[float, int, int, Any]:
    """(median seconds per call, network forwards per call, most rows in one forward, the last output)."""
    rows: list[int] = []
    hook = model.backbone.register_forward_hook(lambda mod, args, out: rows.append(int(args[0].shape[0])))
    try:
        out = fn(0)  # warm-up, and the forward count
        forwards, widest = len(rows), max(rows)
        times = []
        for r in range(reps):
            sync(device)
            t0 = time.perf_counter()
            out = fn(r)
            sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        hook.remove()
    return statistics.median(times), forwards, widest, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("tiny", "2b"), default="tiny")
    p.add_argument("--device", default=None, help="default: cpu for tiny, cuda for 2b")
    p.add_argument("--image-size", type=int, default=32, help="tiny model image size")
    p.add_argument("--batch", type=int, default=1, help="observations per query")
    p.add_argument("--candidates", type=int, nargs="+", default=[2, 4])
    p.add_argument("--futures", type=int, default=3)
    p.add_argument("--values", type=int, default=5)
    p.add_argument("--direct-steps", type=int, default=5)
    p.add_argument("--action-steps", type=int, default=10)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    dev = args.device or ("cuda" if args.model == "2b" else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_planning: --device cuda needs CUDA, which this machine does not have")
    model = make_model(args.model, dev, args.image_size)
    s = model.spec.image_size
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, len(model.spec.cameras), 3, s, s, generator=g) * 2 - 1).to(dev)
    proprio = (torch.rand(args.batch, model.spec.proprio_dim, generator=g) * 2 - 1).to(dev)
    instructions = ["stack the blocks"] * args.batch
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.model} model, {model.layout.num_frames} latent frames of {model.frame_shape}; "
          f"batch {args.batch}; median of {args.reps}")
    print(f"best-of-N: {args.futures} futures x {args.values} values, {args.action_steps} action steps, "
          f"micro_batch {args.micro_batch}")
    print("| mode | N | network forwards | most rows / forward | s / chunk | x direct policy | batched speed-up | "
          "max score diff vs batched |")
    print("|---|---|---|---|---|---|---|---|")
    direct = build({"name": "none"}, "planner")
    base, fw, widest, _ = measure(lambda r: direct.plan(model, images, proprio, instructions, seed=r,
                                                        num_steps=args.direct_steps), model, args.reps, dev)
    print(f"| direct policy ({args.direct_steps} steps) | 1 | {fw} | {widest} | {base:.4f} | 1.00x | | |")
    for n in args.candidates:
        planner = build({"name": "best_of_n", "num_candidates": n, "num_futures": args.futures,
                         "num_values": args.values, "action_steps": args.action_steps,
                         "micro_batch": args.micro_batch}, "planner")
        bt, bfw, bw, bout = measure(lambda r, pl=planner: pl.plan(model, images, proprio, instructions, seed=r), model,
                                    args.reps, dev)
        st, sfw, sw, sout = measure(lambda r, pl=planner: sequential_plan(pl, model, images, proprio, instructions, seed=r),
                                    model, args.reps, dev)
        diff = (bout["plan_scores"].float() - sout["plan_scores"].float()).abs().max().item()
        print(f"| best-of-N batched | {n} | {bfw} | {bw} | {bt:.4f} | {bt / base:.2f}x | {st / bt:.2f}x | {diff:.1e} |")
        print(f"| best-of-N sequential loop | {n} | {sfw} | {sw} | {st:.4f} | {st / base:.2f}x | 1.00x | 0 |")
    if args.model != "2b":
        if torch.cuda.is_available():
            print("| 2B on GPU | | | | run with --model 2b | | | |")
        else:
            print("| 2B on GPU | | | | not measured (no CUDA here) | | | |")


if __name__ == "__main__":
    main()
