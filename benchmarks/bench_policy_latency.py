"""Policy latency per action chunk and post-training step cost of the 2B Cosmos Policy (random weights).

For the RoboCasa/ALOHA layout (3 cameras, 11 latent frames, 224²) or LIBERO (2 cameras, 9 frames), it times one
direct-policy query end to end: VAE encode of the current images, tiling, N denoising steps of the DiT, read-out.
Configurations are measured in the same run, so the ratios are meaningful on any machine:

    fp32 eager (baseline) | bf16 autocast | bf16 weights

and one training step (bf16-mixed autocast, fp32 master weights, AdamW, gradient checkpointing) with its peak memory.
The floor of each figure is its counted FLOPs (``hardware_floor.count_flops``) over the bf16 matrix-product rate
measured on this device at the DiT's width. The paper reports 0.61 s per chunk (5 steps) and 0.95 s (10 steps) on
one H100 with the official code; issue 18's targets on one H100/H200: <= 90 ms per 5-step chunk, >= 15 samples/s.

    python benchmarks/bench_policy_latency.py --cameras 3 --steps 5 10 --batch 1 --train-batch 8
"""

from __future__ import annotations

import argparse
import time

import torch

from cosmos_lit.registry import build
from cosmos_lit.spec import DataSpec

from hardware_floor import count_flops, matmul_rate


def make_task(cameras: int, device: str, image_encoder: str, backbone: str) -> torch.nn.Module:
    spec = DataSpec(cameras=tuple(f"cam{i}" for i in range(cameras)), proprio_dim=9, action_dim=7,
                    chunk_size=32 if cameras == 3 else 16, image_size=224)
    model = {"backbone": {"name": backbone, "gradient_checkpointing": True}, "image_encoder": {"name": image_encoder}}
    stats = {f"{g}_{s}": [float(s == "max")] * d for g, d in (("actions", 7), ("proprio", 9)) for s in ("min", "max")}
    return build({"name": "cosmos_policy"}, "task", model=model, spec=spec.to_dict(), statistics=stats).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_query(model, images, proprio, steps: int, device: str, dtype: torch.dtype | None, reps: int) -> float:
    """Seconds per direct-policy query of a ``CosmosPolicyModel``."""
    ctx = torch.autocast(device_type=device.split(":")[0], dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        model.predict(images, proprio, ["pick the object"] * images.shape[0], num_steps=steps, seed=0)
        sync(device)
        t0 = time.perf_counter()
        for r in range(reps):
            model.predict(images, proprio, ["pick the object"] * images.shape[0], num_steps=steps, seed=r)
        sync(device)
    return (time.perf_counter() - t0) / reps


def time_train_step(task, batch_size: int, cameras: int, device: str, reps: int) -> tuple[float, float, int]:
    """(seconds per step, peak GiB, counted FLOPs of one forward + backward)."""
    s = task.model.spec
    b = {
        "images": torch.rand(batch_size, 2 * cameras, 3, 224, 224, device=device) * 2 - 1,
        "proprio": torch.rand(batch_size, s.proprio_dim, device=device) * 2 - 1,
        "future_proprio": torch.rand(batch_size, s.proprio_dim, device=device) * 2 - 1,
        "actions": torch.rand(batch_size, s.chunk_size, s.action_dim, device=device) * 2 - 1,
        "value": torch.rand(batch_size, device=device) * 2 - 1,
        "sample_type": torch.randint(0, 3, (batch_size,), device=device),
        "instruction": ["pick the object"] * batch_size,
    }
    opt = task.configure_optimizers()["optimizer"]  # the task's own: AdamW, the official recipe's values, fused
    task.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            loss, _ = task._loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        opt.step()

    step()
    sync(device)
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
        flops = count_flops(lambda: task._loss(b)[0].backward())
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    task.eval()
    return (time.perf_counter() - t0) / reps, peak, flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny DiT + tiny VAE (CPU smoke run of this script)")
    args = p.parse_args()
    dev = args.device
    bb, ie = ("cosmos_predict2_tiny", "wan2.1_tiny") if args.tiny else ("cosmos_predict2_2b", "wan2.1")
    torch.manual_seed(0)
    task = make_task(args.cameras, dev, ie, bb).eval()
    model = task.model
    if ie == "wan2.1_tiny":
        model.image_encoder.calibrate(torch.rand(2, model.layout.num_frames - 1, 3, 224, 224, device=dev) * 2 - 1)
    n = args.cameras
    images = torch.rand(args.batch, n, 3, 224, 224, device=dev) * 2 - 1
    proprio = torch.rand(args.batch, model.spec.proprio_dim, device=dev) * 2 - 1
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    width = model.backbone.width
    rate = matmul_rate(4096, width, 4 * width, torch.bfloat16, dev)
    print(f"device: {name}; {bb} + {ie}; {model.layout.num_frames} latent frames; batch {args.batch}; "
          f"bf16 matmul {rate / 1e12:.1f} TFLOP/s (measured, 4096x{width}x{4 * width})")
    print("| steps | fp32 eager s/chunk | bf16 autocast s/chunk | bf16 weights s/chunk | speed-up bf16 weights vs fp32 "
          "| floor s/chunk | bf16 weights / floor | bf16 weights + torch.compile | + CUDA graphs (reduce-overhead) "
          "| best / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        with torch.no_grad():
            flops = count_flops(lambda: model.predict(images, proprio, ["pick the object"] * args.batch,
                                                      num_steps=steps, seed=0))
        fp32 = time_query(model, images, proprio, steps, dev, None, args.reps)
        amp = time_query(model, images, proprio, steps, dev, torch.bfloat16, args.reps) if dev.startswith("cuda") else float("nan")
        bf = compiled = graphs = float("nan")
        if dev.startswith("cuda"):
            model.backbone.to(torch.bfloat16)
            bf = time_query(model, images, proprio, steps, dev, None, args.reps)
            model.backbone.compile_mode = "default"  # model.backbone.compile=true (the first query compiles, untimed)
            compiled = time_query(model, images, proprio, steps, dev, None, args.reps)
            model.backbone.compile_mode = "reduce-overhead"
            graphs = time_query(model, images, proprio, steps, dev, None, args.reps)
            model.backbone.compile_mode = None
            model.backbone.to(torch.float32)
        floor = flops / rate
        best = min(bf, compiled, graphs)
        print(f"| {steps} | {fp32:.3f} | {amp:.3f} | {bf:.3f} | {fp32 / bf:.2f}x | {floor:.4f} | {bf / floor:.1f}x | "
              f"{compiled:.3f} | {graphs:.3f} | {best / floor:.1f}x |")
    if args.train_batch > 0:
        step_s, peak, flops = time_train_step(task, args.train_batch, n, dev, max(2, args.reps // 2))
        floor = flops / rate
        print(f"train step (bf16-mixed, fp32 master, AdamW, grad checkpointing), batch {args.train_batch}: "
              f"{step_s:.3f} s/step, peak {peak:.1f} GiB, {args.train_batch / step_s:.1f} samples/s; floor "
              f"{floor:.3f} s/step ({flops / 1e12:.1f} TFLOP counted as executed, recomputation included), "
              f"{step_s / floor:.1f}x the floor")


if __name__ == "__main__":
    main()
