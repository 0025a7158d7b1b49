"""Loader throughput of every DataModule: samples/s per worker at S×S with training augmentation.

Writes small synthetic datasets (smooth moving scenes, so JPEG/H.264 sizes are realistic) in each storage layout,
then reads training samples the way one DataLoader worker does: one process, one thread, the full
``__getitem__`` of ``build({"name": ..., "data_dir": ...}, "datamodule")``'s training dataset (2N frame reads +
decodes, resize, shared augmentation, normalization, vectors). A DataModule's raw layout is the baseline of its
ratio column, measured in the same run.

- ALOHA: its own writer, every storage (raw, jpeg, jpeg_vlen, mp4 with each video backend);
- LIBERO: Cosmos regenerated JPEG 256² and original raw 128² (upside down);
- RoboCasa: Cosmos regenerated JPEG 224² and human v0.1 raw 128² (upside down);
- LeRobot: v3.0 H.264 256² decoded with PyAV (the LeRobot config's backend).
LIBERO, RoboCasa and LeRobot are written by the real-schema writers of ``tests/fixtures_writers.py``.

    python benchmarks/bench_loader.py                       # all; ALOHA: 3 real-robot cameras, 256² sources
    python benchmarks/bench_loader.py --datamodules libero,lerobot --samples 200
    python benchmarks/bench_loader.py --datamodules aloha --cameras 1 --source 480x640 --samples 300

Prints a table per DataModule; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from cosmos_lit.datamodules.act_format import write_aloha_episode
from cosmos_lit.datamodules.aloha import REAL_CAMERAS
from cosmos_lit.registry import build
from cosmos_lit.video import DECORD_AVAILABLE

# The real-schema writers live with the tests (the benchmarks' own writers need simulators or CUDA lerobot); tests/
# is not a package, so it goes on the path.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import fixtures_writers as fw  # noqa: E402

STORAGES = ("raw", "jpeg", "jpeg_vlen", "mp4")
VIDEO_BACKENDS = ("decord", "pyav")
DATAMODULES = ("aloha", "libero", "robocasa", "lerobot")
TITLES = {"aloha": "ALOHA", "libero": "LIBERO", "robocasa": "RoboCasa", "lerobot": "LeRobot"}
LIBERO_FILE = "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5"


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


@contextlib.contextmanager
def scene_frames_in_fixture_writers() -> Iterator[None]:
    """Make the fixture writers store moving scenes instead of their flat test frames.

    Their frames are flat colours (readable back by the tests) that compress to almost nothing and decode faster
    than any camera image; the writers look ``frames`` up at call time, so swapping it changes only the pixels."""
    rng = np.random.default_rng(0)

    def scene(length: int, cam: int, size: int, upside_down: bool = False) -> np.ndarray:
        clip = synthetic_frames(rng, length, size, size, cam)
        return np.ascontiguousarray(clip[:, ::-1]) if upside_down else clip

    original = fw.frames
    fw.frames = scene
    try:
        yield
    finally:
        fw.frames = original


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


# --- writers: each fills ``folder`` and returns the number of stored frames (steps × cameras) ---

def write_aloha(folder: str, storage: str, cameras: list[str], episodes: int, steps: int, hw: tuple[int, int]) -> int:
    rng = np.random.default_rng(0)
    for e in range(episodes):
        images = {cam: synthetic_frames(rng, steps, hw[0], hw[1], k) for k, cam in enumerate(cameras)}
        qpos = np.cumsum(rng.normal(0, 0.01, (steps, 14)), 0)
        write_aloha_episode(os.path.join(folder, f"episode_{e}.hdf5"), qpos, qpos + 0.01, images, storage,
                            {"sim": False, "instruction": "fold the shirt"})
    return episodes * steps * len(cameras)


def write_libero(folder: str, layout: str, episodes: int, steps: int) -> int:
    eps = [fw.libero_episode(steps, seed) for seed in range(episodes)]
    fw.write_libero_demos(os.path.join(folder, LIBERO_FILE), eps, layout=layout, jpeg=layout == "cosmos")
    return episodes * steps * 2


def write_robocasa(folder: str, layout: str, episodes: int, steps: int) -> int:
    eps = [fw.robocasa_episode(steps, seed) for seed in range(episodes)]
    fw.write_robocasa_demos(os.path.join(folder, "PnPCounterToCab", "demo.hdf5"), eps, layout=layout,
                            jpeg=layout == "cosmos")
    return episodes * steps * len(fw.ROBOCASA_CAMS)


def write_lerobot(folder: str, episodes: int, steps: int) -> int:
    eps = [fw.lerobot_episode(steps, seed) for seed in range(episodes)]
    fw.write_lerobot_dataset(folder, eps, ["pick up the cube"] * episodes, version="v3.0", fps=30, size=256,
                             storage="video", codec="libx264")
    return episodes * steps * 2


def row_plan(args: argparse.Namespace) -> list[tuple[str, str, Callable[[str], int], dict]]:
    """(datamodule, row label, writer(folder) -> stored frames, extra config keys) for every row to measure."""
    hw = tuple(int(v) for v in args.source.lower().split("x"))
    aloha_cams = list(REAL_CAMERAS) if args.cameras == 3 else ["cam_high"]
    plan = []
    for storage in [s for s in args.storages.split(",") if s]:
        for backend in VIDEO_BACKENDS if storage == "mp4" else ("auto",):
            if backend == "decord" and not DECORD_AVAILABLE:
                continue
            label = f"mp4/{backend}" if storage == "mp4" else storage
            plan.append(("aloha", label,
                         lambda d, s=storage: write_aloha(d, s, aloha_cams, args.episodes, args.steps, hw),
                         {"cameras": aloha_cams, "video_backend": backend}))
    plan += [
        ("libero", "cosmos jpeg 256", lambda d: write_libero(d, "cosmos", args.episodes, args.steps), {}),
        ("libero", "original raw 128", lambda d: write_libero(d, "original", args.episodes, args.steps), {}),
        ("robocasa", "cosmos jpeg 224", lambda d: write_robocasa(d, "cosmos", args.episodes, args.steps), {}),
        ("robocasa", "human raw 128", lambda d: write_robocasa(d, "human", args.episodes, args.steps), {}),
        ("lerobot", "v3 h264 256 pyav", lambda d: write_lerobot(d, args.episodes, args.steps),
         {"video_backend": "pyav"}),
    ]
    return plan


def measure(node: dict, samples: int) -> tuple[float, float, int]:
    """(samples per wall second, samples per CPU second, images per sample) of one worker (this process, one
    thread) reading the training dataset of the DataModule ``node`` builds.

    The CPU-time rate is what one worker sustains on a core of its own; the wall rate is lower when other jobs
    share the cores."""
    dm = build(node, "datamodule", path="data")
    dm.setup("fit")
    ds = dm.train_dataset()
    order = np.random.default_rng(1).integers(0, len(ds), samples + 20)
    for i in order[:20]:  # warm up: open files, first decodes
        ds[int(i)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in order[20:]:
        ds[int(i)]
    return samples / (time.perf_counter() - t0), samples / (time.process_time() - c0), 2 * len(dm.spec.cameras)


def print_table(title: str, rows: list[tuple[str, float, float, float, int]], note: str | None) -> None:
    """One DataModule's rows; ``vs raw`` is against its row with "raw" in the label, if any."""
    base = next((cpu for label, _, _, cpu, _ in rows if "raw" in label.split()), None)
    width = max([11] + [len(r[0]) for r in rows])
    print(f"\n{title}")
    if note:
        print(note)
    print(f"{'storage':<{width}} {'kB/frame':>9} {'samples/s':>10} {'ms/sample':>10} {'images/s':>9} {'wall s/s':>9} "
          f"{'vs raw':>7}")
    for label, bpf, wall, cpu, n_img in rows:
        ratio = f"{cpu / base:.2f}" if base else "-"
        print(f"{label:<{width}} {bpf / 1e3:>9.1f} {cpu:>10.1f} {1e3 / cpu:>10.2f} {cpu * n_img:>9.0f} {wall:>9.1f} "
              f"{ratio:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datamodules", default=",".join(DATAMODULES), help="comma-separated subset of "
                        + ",".join(DATAMODULES))
    parser.add_argument("--cameras", type=int, default=3, help="ALOHA: 1 (cam_high) or 3 (real-robot layout)")
    parser.add_argument("--source", default="256x256",
                        help="ALOHA stored frame HxW (Cosmos ALOHA 256x256, raw ALOHA 480x640)")
    parser.add_argument("--size", type=int, default=224, help="model image side S")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=300, help="timed samples per row")
    parser.add_argument("--storages", default=",".join(STORAGES), help="ALOHA storages")
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    chosen = [d for d in args.datamodules.split(",") if d]
    unknown = [d for d in chosen if d not in DATAMODULES]
    if unknown:
        parser.error(f"--datamodules: unknown {unknown}; expected some of {list(DATAMODULES)}")
    torch.set_num_threads(1)
    augment = not args.no_augment
    root = tempfile.mkdtemp(prefix="bench_loader_")
    try:
        results: dict[str, list[tuple[str, float, float, float, int]]] = {d: [] for d in chosen}
        bytes_per_frame: dict[str, float] = {}  # per folder; ALOHA mp4 is written once and read by both backends
        with scene_frames_in_fixture_writers():
            for name, label, writer, extra in row_plan(args):
                if name not in chosen:
                    continue
                folder = os.path.join(root, f"{name}_{label.split('/')[0].replace(' ', '_')}")
                if not os.path.isdir(folder):
                    os.makedirs(folder)
                    frames_stored = writer(folder)
                    bytes_per_frame[folder] = folder_bytes(folder) / frames_stored  # before statistics land there
                node = {"name": name, "data_dir": folder, "image_size": args.size, "augment": augment,
                        "val_fraction": 0.0, **extra}
                wall, cpu, n_img = measure(node, args.samples)
                results[name].append((label, bytes_per_frame[folder], wall, cpu, n_img))
        setting = f"S={args.size}, augment={'off' if args.no_augment else 'on'}, {args.samples} samples each"
        note = ("samples/s per worker = samples per CPU-second of the worker; wall = the same run by the clock "
                f"(lower when other jobs share the {os.cpu_count()} cores)")
        for name, rows in results.items():
            if not rows:
                continue
            n_img = rows[0][4]
            source = f"source {args.source.lower()}" if name == "aloha" else "source side in the storage name"
            print_table(f"{TITLES[name]} loader, one worker (1 thread), {n_img // 2} "
                        f"camera(s) -> {n_img} images/sample, {source}, {setting}", rows, note)
            note = None
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
