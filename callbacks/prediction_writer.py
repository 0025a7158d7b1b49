"""Writes what ``python -m cosmos_lit predict`` samples to ``<run_dir>/predictions.npz`` (atomically).

Arrays (N held-out samples): ``actions`` (N, K, A) and ``target_actions`` (N, K, A) in env units,
``future_proprio`` (N, P) in env units, ``value`` (N,) in [0, 1] where the layout has a value frame, ``episode`` and
``t`` (N,) where the DataModule provides them, and ``future_images`` (M, cameras, S, S, 3) uint8: the imagined future
camera frames of the first M = ``num_images`` samples.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from cosmos_lit.registry import ConfigError, register


@register("callback", "prediction_writer")
class PredictionWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs batch by batch and writes one ``.npz`` at the end.

    Args:
        path: output file (default: ``<run_dir>/predictions.npz``).
        num_images: decode the imagined future frames of this many samples (0: none).
    """

    def __init__(self, path: str | None = None, num_images: int = 4):
        super().__init__(write_interval="batch")
        if int(num_images) < 0:
            raise ConfigError(f"predict.num_images: expected an integer >= 0, got {num_images}")
        self.path = path
        self.num_images = int(num_images)
        self._arrays: dict[str, list[np.ndarray]] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._arrays = {}

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        done = sum(len(a) for a in self._arrays.get("future_images", []))
        if done < self.num_images:
            latents = prediction["latents"][: self.num_images - done]
            images = pl_module.inference_model.decode_future_images(latents)
            self._arrays.setdefault("future_images", []).append(images.cpu().numpy())
        for key, value in prediction.items():
            if key != "latents":
                self._arrays.setdefault(key, []).append(value.detach().cpu().numpy())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from cosmos_lit.io import write_bytes_atomic

        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "predictions.npz"
        arrays = {k: np.concatenate(v) for k, v in self._arrays.items()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes_atomic(path, buffer.getvalue())
        n = len(arrays.get("actions", []))
        rank_zero_info(f"[predict] {n} held-out samples -> {path} ({', '.join(sorted(arrays))})")
