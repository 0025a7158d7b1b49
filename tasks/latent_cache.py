"""In-memory cache of per-image latents for small CPU runs (``task.cache_latents``).

With ``sequence_form: per_image`` each slot's latent depends on its image alone, so the latent of every
(episode, frame, camera) is computed once and reused across steps. Assembling a sample's slots from the cache gives
exactly what ``CosmosPolicyModel.encode`` would (black placeholder latents on the vector and missing slots).
"""

from __future__ import annotations

from typing import Any

import torch

from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.registry import ConfigError


class LatentCache:
    """``latents(batch) -> (B, C, T, h, w)`` for training batches that carry ``episode``, ``t`` and ``future_t``.

    Memory: C·h·w floats per cached image, on the CPU.
    """

    def __init__(self, model: CosmosPolicyModel):
        self.model = model
        self._latents: dict[tuple[int, int, int], torch.Tensor] = {}
        self._black: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._latents)

    def latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Encode only the images not seen before, then assemble every sample's slots from the cache."""
        if "future_t" not in batch or bool(batch.get("augmented", torch.tensor(False)).any()):
            raise ConfigError("task.cache_latents: batches must carry 'episode', 't', 'future_t' and be unaugmented "
                              "(set data.augment=false)")
        model, images = self.model, batch["images"]
        lay, encoder = model.layout, model.image_encoder
        n = len(model.spec.cameras)
        keys = [[(int(e), int(t), i) for i in range(n)] + [(int(e), int(f), i) for i in range(n)]
                for e, t, f in zip(batch["episode"], batch["t"], batch["future_t"])]
        missing = {k: (j, c) for j, row in enumerate(keys) for c, k in enumerate(row) if k not in self._latents}
        if missing:
            new = encoder.encode_images(torch.stack([images[j, c] for j, c in missing.values()]))
            for k, lat in zip(missing, new):
                self._latents[k] = lat.detach().cpu()
        if self._black is None:
            size = model.spec.image_size
            self._black = encoder.encode_images(images.new_full((1, 3, size, size), -1.0))[0].detach().cpu()
        out = []
        for row in keys:
            frames = [self._black] * lay.num_frames
            for i in range(n):
                frames[lay.current_camera(i)] = self._latents[row[i]]
                frames[lay.future_camera(i)] = self._latents[row[n + i]]
            out.append(torch.stack(frames, dim=1))
        return torch.stack(out).to(images.device)
