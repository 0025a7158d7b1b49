"""Loader throughput of the ALOHA DataModule: samples/s per worker at S×S with training augmentation.

Writes small synthetic ALOHA episodes (smooth moving scenes, so JPEG/H.264 sizes are realistic) in each storage
layout, then reads training samples the way one DataLoader worker does: one process, one thread, the full
``__getitem__`` (2N frame reads + decodes, resize, shared augmentation, normalization, vectors). Raw storage is the
baseline of the ratio column, measured in the same run.

    python benchmarks/bench_loader.py                       # 3 real-robot cameras, 256² sources (Cosmos ALOHA)
    python benchmarks/bench_loader.py --cameras 1 --source 480x640 --samples 300

Prints a table; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from cosmos_lit.datamodules.aloha import REAL_CAMERAS, AlohaDataModule, write_aloha_episode
from cosmos_lit.video import DECORD_AVAILABLE

STORAGES = ("raw", "jpeg", "jpeg_vlen", "mp4")
VIDEO_BACKENDS = ("decord", "pyav")


def synthetic_frames(rng: np.random.Generator, steps: int, height: int, width: int, cam: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a lit gradient background, a few moving coloured boxes, mild sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 160 + 40, yy / height * 120 + 60, (xx + yy) / (height + width) * 90 + 80 + 20 * cam], -1)
    boxes = [(rng.uniform(0, 1, 2), rng.uniform(-0.004, 0.004, 2), rng.integers(0, 255, 3), rng.uniform(0.1, 0.25))
             for _ in range(4)]
    out = np.empty((steps, height, width, 3), np.uint8)
    for t in range(steps):
        img = base.copy()
        for pos, vel, colour, size in boxes:
            cy, cx = ((pos + vel * t) % 1.0) * (height, width)
            hh, hw = size * height / 2, size * width / 2
            img[int(max(cy - hh, 0)) : int(cy + hh), int(max(cx - hw, 0)) : int(cx + hw)] = colour
        img += rng.normal(0, 3, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_dataset(root: str, storage: str, cameras: list[str], episodes: int, steps: int, hw: tuple[int, int]) -> float:
    """Write ``episodes`` episodes; returns the stored bytes per frame."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, storage)
    for e in range(episodes):
        images = {cam: synthetic_frames(rng, steps, hw[0], hw[1], k) for k, cam in enumerate(cameras)}
        qpos = np.cumsum(rng.normal(0, 0.01, (steps, 14)), 0)
        write_aloha_episode(os.path.join(folder, f"episode_{e}.hdf5"), qpos, qpos + 0.01, images, storage,
                            {"sim": False, "instruction": "fold the shirt"})
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    return size / (episodes * steps * len(cameras))


def measure(
    data_dir: str, cameras: list[str], size: int, samples: int, augment: bool, video_backend: str = "auto"
) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of one worker (this process, one thread).

    The CPU-time rate is what one worker sustains on a core of its own; the wall rate is lower when other jobs
    share the cores."""
    dm = AlohaDataModule(data_dir=data_dir, cameras=cameras, image_size=size, augment=augment, val_fraction=0.0,
                         statistics_path=os.path.join(data_dir, "stats.json"), video_backend=video_backend)
    dm.setup("fit")
    ds = dm.train_dataset()
    order = np.random.default_rng(1).integers(0, len(ds), samples + 20)
    for i in order[:20]:  # warm up: open files, first decodes
        ds[int(i)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in order[20:]:
        ds[int(i)]
    return samples / (time.perf_counter() - t0), samples / (time.process_time() - c0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=3, help="1 (cam_high) or 3 (real-robot layout)")
    parser.add_argument("--source", default="256x256", help="stored frame HxW (Cosmos ALOHA 256x256, raw ALOHA 480x640)")
    parser.add_argument("--size", type=int, default=224, help="model image side S")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=300, help="timed samples per storage")
    parser.add_argument("--storages", default=",".join(STORAGES))
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hw = tuple(int(v) for v in args.source.lower().split("x"))
    cameras = list(REAL_CAMERAS) if args.cameras == 3 else ["cam_high"]
    storages = [s for s in args.storages.split(",") if s]
    root = tempfile.mkdtemp(prefix="bench_loader_")
    try:
        rows = []
        for storage in storages:
            bytes_per_frame = write_dataset(root, storage, cameras, args.episodes, args.steps, hw)
            for backend in VIDEO_BACKENDS if storage == "mp4" else ("auto",):
                if backend == "decord" and not DECORD_AVAILABLE:
                    continue
                wall, cpu = measure(os.path.join(root, storage), cameras, args.size, args.samples,
                                    not args.no_augment, backend)
                name = f"mp4/{backend}" if storage == "mp4" else storage
                rows.append((name, bytes_per_frame, wall, cpu))
        base = {s: c for s, _, _, c in rows}.get("raw")
        n_img = 2 * len(cameras)
        print(f"\nALOHA loader, one worker (1 thread), {len(cameras)} camera(s) -> {n_img} images/sample, "
              f"source {hw[0]}x{hw[1]}, S={args.size}, augment={'off' if args.no_augment else 'on'}, "
              f"{args.samples} samples each")
        print("samples/s per worker = samples per CPU-second of the worker; wall = the same run by the clock "
              f"(lower when other jobs share the {os.cpu_count()} cores)")
        print(f"{'storage':<11} {'kB/frame':>9} {'samples/s':>10} {'ms/sample':>10} {'images/s':>9} {'wall s/s':>9} "
              f"{'vs raw':>7}")
        for storage, bpf, wall, cpu in rows:
            ratio = f"{cpu / base:.2f}" if base else "-"
            print(f"{storage:<11} {bpf / 1e3:>9.1f} {cpu:>10.1f} {1e3 / cpu:>10.2f} {cpu * n_img:>9.0f} {wall:>9.1f} "
                  f"{ratio:>7}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
