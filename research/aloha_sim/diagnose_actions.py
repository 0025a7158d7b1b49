"""Where a checkpoint's action error comes from, on one batch of its training data.

Figures: docs/aloha_sim_experiments.md.

Prints the action L1 (normalized) per sampling seed and across seeds, by position in the chunk and by joint, the
chunk-motion slope (predicted vs demonstrated displacement from the first to the last action of the chunk: 1 = full
motion, 0 = a flat chunk; per copy of the chunk for the official tiling, next to a "row-blind" frame that only knows
each channel's average), the L1 of simply holding the current joint positions for the first action, and the L1 when
proprio or images are shuffled across the batch.

    python research/aloha_sim/diagnose_actions.py runs/<run>/checkpoints/last.ckpt --split train \\
        [config overrides of that run]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cosmos_lit import cli
from cosmos_lit.models.vector_encoders import TiledVectorEncoder
from cosmos_lit.checkpoint import load_model
from cosmos_lit.tiling import tile_vector

REPO_ROOT = Path(__file__).resolve().parents[2]


def motion_slope(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Regression slope of predicted on demonstrated chunk displacement (last − first action); pred (..., B, K, A)."""
    true_d = gt[:, -1] - gt[:, 0]
    pred_d = (pred[..., -1, :] - pred[..., 0, :]).reshape(-1, *true_d.shape)
    return round(float((pred_d * true_d).sum() / (len(pred_d) * true_d.square().sum())), 3)


def copy_slopes(frame: torch.Tensor, gt: torch.Tensor) -> list[float]:
    """Chunk-motion slope of each full copy of a tiled chunk (B, C, H, W) against the demonstrated chunk (B, K, A)."""
    n = gt[0].numel()
    copies = frame.reshape(frame.shape[0], -1)[:, : (frame[0].numel() // n) * n].reshape(frame.shape[0], -1, *gt.shape[1:])
    return [motion_slope(c, gt) for c in copies.unbind(1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "aloha_sim.yaml"))
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    model = load_model(a.ckpt)  # eval mode, with the EMA backbone where the run kept one
    dm = cli.build_datamodule(cli.resolve(cli.compose(a.config, a.overrides)[0]))
    dm.setup("fit")
    b = next(iter(dm.train_dataloader() if a.split == "train" else dm.val_dataloader()))
    n, gt = len(model.spec.cameras), b["actions"]

    def predict(images: torch.Tensor, proprio: torch.Tensor, seed: int, key: str = "actions") -> torch.Tensor:
        return model.predict(images[:, :n], proprio, list(b["instruction"]), num_steps=a.steps, seed=seed)[key]

    preds = torch.stack([predict(b["images"], b["proprio"], s) for s in range(a.seeds)])  # (S, B, K, A)
    err = (preds - gt).abs()
    k = gt.shape[1]
    print("L1 per seed", [round(float(e), 4) for e in err.mean(dim=(1, 2, 3))])
    print("L1 of the seed mean", round(float((preds.mean(0) - gt).abs().mean()), 4),
          "| std across seeds", round(float(preds.std(0).mean()), 4))
    print("L1 by chunk position", {i: round(float(err.mean(dim=(0, 1, 3))[i]), 4) for i in range(0, k, max(1, k // 5))})
    print("chunk-motion slope", motion_slope(preds, gt))
    if type(model.vector_encoder) is TiledVectorEncoder:  # official layout: does each copy of the chunk move?
        frame = predict(b["images"], b["proprio"], 0, "latents")[:, :, model.layout.action]
        print("chunk-motion slope per copy (official tiling)", copy_slopes(frame, gt))
        row_blind = tile_vector(gt, tuple(frame.shape[1:])).mean(dim=2, keepdim=True).expand_as(frame)
        print("  the same for a row-blind frame (each channel's rows averaged) of the demonstrations",
              copy_slopes(row_blind, gt))
    print("L1 at k=0 by joint", [round(float(e), 3) for e in err[:, :, 0].mean(dim=(0, 1))])
    st = model.statistics
    amin, amax = torch.tensor(st["actions_min"]), torch.tensor(st["actions_max"])
    pmin, pmax = torch.tensor(st["proprio_min"]), torch.tensor(st["proprio_max"])
    if amin.shape == pmin.shape:  # joint-position actions: holding the current qpos is a baseline for k=0
        hold = 2 * ((b["proprio"] + 1) / 2 * (pmax - pmin) + pmin - amin) / (amax - amin) - 1
        print("hold-current-qpos L1 at k=0 by joint", [round(float(e), 3) for e in (hold - gt[:, 0]).abs().mean(0)])
    perm = torch.roll(torch.arange(gt.shape[0]), 1)
    print("L1 with proprio shuffled", round(float((predict(b["images"], b["proprio"][perm], 0) - gt).abs().mean()), 4))
    print("L1 with images shuffled", round(float((predict(b["images"][perm], b["proprio"], 0) - gt).abs().mean()), 4))


if __name__ == "__main__":
    main()
