"""Host memory and time to load a 2B Cosmos-Predict2 DiT checkpoint (official layout, bf16) on CPU.

Writes a random checkpoint with the official key layout (``net.*`` plus the non-weight entries a real one carries)
to a temp folder, then loads it in fresh subprocesses and prints one table row per method:

* ``meta+mmap``: :func:`cosmos_lit.weights.load_dit_weights` into a model built on the meta device
  (``torch.load(mmap=True, weights_only=True)`` + ``load_state_dict(assign=True)``); measured right after loading and
  again after reading every weight once (an mmap-ed file only enters RSS when its pages are touched).
* ``meta+mmap -> fp32``: the same, casting to float32 (the bf16 -> fp32 master-weight case), when memory allows.
* ``naive``: ``torch.load`` without mmap + the model built normally + ``load_state_dict`` (float32 model when that
  fits in the memory budget, else bfloat16).

Peak RSS is the kernel's high-water mark (VmHWM, includes touched file-backed pages); peak anon is RssAnon sampled
every 5 ms (memory that cannot be dropped and re-read from the file). Ratios are peak RSS / bytes of the weights
as loaded (the model's parameters) and peak RSS / file size. Target: meta+mmap ratio < 1.5.

    python benchmarks/bench_load_2b.py [--workdir DIR] [--keep] [--naive-dtype auto|float32|bfloat16|skip]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 1024**3


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """Samples RssAnon in a thread; ``peak`` in bytes."""

    def __init__(self, every_s: float = 0.005):
        self.peak, self._stop, self._every = 0, threading.Event(), every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib("RssAnon") * 1024)
            time.sleep(self._every)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kib("RssAnon") * 1024)


# ----------------------------------------------------------------------------------------------- subprocess roles


def write_checkpoint(path: Path) -> None:
    """Random bf16 weights in the official layout, created one tensor at a time (the writer holds one copy)."""
    import torch

    from cosmos_lit.io import atomic_path
    from cosmos_lit.weights.cosmos_dit import COSMOS_PREDICT2_2B_V2W, build_dit_on_meta, diffusers_key_to_official

    shapes = {k: v.shape for k, v in build_dit_on_meta(COSMOS_PREDICT2_2B_V2W).state_dict().items()}
    torch.manual_seed(0)
    sd = {}
    for key, shape in shapes.items():
        sd["net." + diffusers_key_to_official(key)] = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02)
    for name in ("accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration"):
        sd[f"net.{name}"] = torch.tensor(0)
    sd["net.accum_train_in_hours"] = torch.tensor(0.0)
    sd["net.pos_embedder.seq"] = torch.arange(256, dtype=torch.float32)
    sd["net.pos_embedder.dim_spatial_range"] = torch.arange(0, 42, 2, dtype=torch.float32) / 42
    sd["net.pos_embedder.dim_temporal_range"] = torch.arange(0, 44, 2, dtype=torch.float32) / 44
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def touch_all(model) -> float:
    """Read every weight once (a checksum), as a first forward or a .to('cuda') would."""
    import torch

    with torch.no_grad():
        return float(sum(p.sum(dtype=torch.float32).item() for p in model.parameters()))


def measure_meta(path: Path, dtype_name: str | None) -> dict:
    import torch

    from diffusers import CosmosTransformer3DModel  # noqa: F401  (imported before the baseline RSS is read)

    from cosmos_lit.weights import COSMOS_PREDICT2_2B_V2W, build_dit_on_meta, load_dit_weights

    dtype = getattr(torch, dtype_name) if dtype_name else None
    base = status_kib("VmRSS") * 1024
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        model = load_dit_weights(build_dit_on_meta(COSMOS_PREDICT2_2B_V2W), path, dtype=dtype)
        load_s = time.perf_counter() - t0
        hwm_load = status_kib("VmHWM") * 1024
        t1 = time.perf_counter()
        touch_all(model)
        touch_s = time.perf_counter() - t1
    return dict(base=base, load_s=load_s, hwm_load=hwm_load, hwm=status_kib("VmHWM") * 1024, anon=anon.peak,
                touch_s=touch_s, weights=weight_bytes(model), dtype=str(next(model.parameters()).dtype))


def measure_naive(path: Path, dtype_name: str) -> dict:
    import torch
    from diffusers import CosmosTransformer3DModel

    from cosmos_lit.weights import COSMOS_PREDICT2_2B_V2W, official_to_diffusers

    base = status_kib("VmRSS") * 1024
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        sd = official_to_diffusers(torch.load(path, map_location="cpu", weights_only=True))
        torch.set_default_dtype(getattr(torch, dtype_name))
        model = CosmosTransformer3DModel(**COSMOS_PREDICT2_2B_V2W)
        model.load_state_dict(sd, strict=True)
        del sd
        load_s = time.perf_counter() - t0
    return dict(base=base, load_s=load_s, hwm_load=status_kib("VmHWM") * 1024, hwm=status_kib("VmHWM") * 1024,
                anon=anon.peak, touch_s=0.0, weights=weight_bytes(model), dtype=str(next(model.parameters()).dtype))


# ----------------------------------------------------------------------------------------------- driver


def run_role(role: str, path: Path, arg: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--role", role, "--path", str(path), "--arg", arg],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(name: str, r: dict, file_size: int) -> str:
    return (
        f"| {name:<26} | {r['dtype']:<14} | {r['weights'] / GiB:6.2f} | {r['base'] / GiB:5.2f} | {r['hwm_load'] / GiB:6.2f} "
        f"| {r['hwm'] / GiB:6.2f} | {r['anon'] / GiB:6.2f} | {r['hwm'] / r['weights']:5.2f} | {r['hwm'] / file_size:5.2f} "
        f"| {r['load_s']:6.1f} | {r['touch_s']:5.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["write", "meta", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arg", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the temp checkpoint (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    parser.add_argument("--naive-dtype", default="auto", choices=["auto", "float32", "bfloat16", "skip"])
    parser.add_argument("--budget-gib", type=float, default=14.0, help="largest peak a baseline may need")
    args = parser.parse_args()

    if args.role == "write":
        write_checkpoint(args.path)
        print(json.dumps({}))
        return
    if args.role in ("meta", "naive"):
        import torch

        torch.set_num_threads(2)
        result = measure_meta(args.path, args.arg or None) if args.role == "meta" else measure_naive(args.path, args.arg)
        print(json.dumps(result))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_load_2b_", dir=args.workdir))
    path = workdir / "model-480p-16fps.pt"
    try:
        t0 = time.perf_counter()
        run_role("write", path, "")
        write_s = time.perf_counter() - t0
        size = path.stat().st_size
        print(f"wrote {path} ({size / GiB:.2f} GiB, {size / 1e9:.2f} GB) in {write_s:.0f} s; MemAvailable {mem_available() / GiB:.1f} GiB")
        rows = [("meta+mmap (file dtype)", run_role("meta", path, ""))]
        # bf16 file -> fp32 model: fp32 copies (2x file) + the touched file pages (1x file)
        if 3.1 * size / GiB <= args.budget_gib and mem_available() > 3.1 * size + 4 * GiB:
            rows.append(("meta+mmap -> fp32", run_role("meta", path, "float32")))
        else:
            print("skipped meta+mmap -> fp32: over the memory budget")
        naive = args.naive_dtype
        if naive == "auto":  # state dict (1x file) + model (2x file in fp32, 1x in bf16)
            naive = "float32" if 3.2 * size / GiB <= args.budget_gib and mem_available() > 3.2 * size + 4 * GiB else "bfloat16"
        if naive != "skip":
            rows.append((f"naive (model {naive})", run_role("naive", path, naive)))
        print()
        print(
            "| method                     | loaded dtype   | weights GiB | base GiB | peak after load | peak RSS "
            "| peak anon | peak/weights | peak/file | load s | touch s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(row(name, r, size))
        print(f"\nfile {size / GiB:.2f} GiB; peak RSS = VmHWM (touched file pages included); peak anon = sampled RssAnon; "
              f"base = RSS after imports; target meta+mmap peak/weights < 1.5")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
