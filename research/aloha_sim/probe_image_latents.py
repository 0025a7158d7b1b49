"""How much of the cube's position survives an image encoder? A linear probe on ALOHA-sim TransferCube demos.

Every scripted episode starts from the same arm pose; only the cube's position differs. The right arm's joint
targets at the grasp step (``--target-step``, default 90) are therefore a function of the cube's position alone. We
ridge-regress them (standardized) from the episode's first-frame latents with 5-fold cross-validation and report
the held-out mean squared error (1.0 = predicting the mean; lower = more of the position is linearly readable).

    python research/aloha_sim/probe_image_latents.py data/aloha_sim/transfer_cube_100_112

Encoders compared: the random-init tiny Wan2.1 VAE (seed 0, data normalization, as the default config), 8x8
average pooling of the pixels, and the weight-free block-DCT encoder (``model/image_encoder=dct``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from cosmos_lit.registry import build

RIGHT_ARM = slice(7, 13)  # the right arm's six joint targets (the gripper is left out)


def load(data_dir: Path, camera: str, target_step: int) -> tuple[torch.Tensor, np.ndarray]:
    files = sorted(data_dir.glob("episode_*.hdf5"), key=lambda p: int(p.stem.split("_")[1]))
    if len(files) < 10:
        raise SystemExit(f"error: {data_dir}: expected at least 10 episode_*.hdf5 files, found {len(files)}")
    images, targets = [], []
    for path in files:
        with h5py.File(path, "r") as f:
            images.append(f[f"observations/images/{camera}"][0])
            targets.append(f["action"][target_step, RIGHT_ARM])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = np.stack(targets).astype(np.float64)
    return x, (y - y.mean(0)) / (y.std(0) + 1e-8)


def probe_mse(features: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Held-out MSE of kernel ridge regression, best over a lambda grid (features centered, one global scale)."""
    x = features.reshape(len(features), -1).astype(np.float64)
    x = x - x.mean(0)
    x /= x.std() + 1e-12
    fold = np.arange(len(x)) % folds
    best = np.inf
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0):
        pred = np.zeros_like(y)
        for k in range(folds):
            tr, te = fold != k, fold == k
            gram = x[tr] @ x[tr].T
            alpha = np.linalg.solve(gram + lam * np.eye(int(tr.sum())), y[tr])
            pred[te] = x[te] @ x[tr].T @ alpha
        best = min(best, float(((pred - y) ** 2).mean()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--camera", default="top")
    ap.add_argument("--target-step", type=int, default=90)
    args = ap.parse_args()
    images, y = load(args.data_dir, args.camera, args.target_step)
    torch.manual_seed(0)
    rows = []
    for label, node in (("wan2.1_tiny (random init, seed 0)", {"name": "wan2.1_tiny", "sequence_form": "per_image"}),
                        ("dct (8 Y + 4 Cb + 4 Cr coefficients)", {"name": "dct"})):
        enc = build(node, "image_encoder")
        enc.calibrate(images[:, None])
        rows.append((label, enc.encode_images(images).numpy()))
    rows.insert(1, ("8x8 average-pooled pixels", F.avg_pool2d(images, 8).numpy()))
    print(f"{len(images)} episodes, {images.shape[-1]} px, target: right-arm joints at step {args.target_step}")
    print(f"{'encoder':40s} {'probe MSE':>10s}")
    for label, feats in rows:
        print(f"{label:40s} {probe_mse(feats, y):10.3f}")


if __name__ == "__main__":
    main()
