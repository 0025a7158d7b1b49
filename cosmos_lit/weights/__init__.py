"""Loading real weights from local files: Cosmos-Predict2 DiT, Wan2.1 VAE, released Cosmos Policy checkpoints, T5 caches.

Nothing here downloads. Each loader is strict (missing / unexpected keys and shape mismatches stop with one line)
and refuses pickled files that need the full unpickler unless ``trust_pickle=True``.
"""

from cosmos_lit.weights.checkpoints import (
    DatasetStatistics,
    ReleasedCheckpoint,
    load_dataset_statistics,
    locate_released_checkpoint,
)
from cosmos_lit.weights.cosmos_dit import (
    COSMOS_PREDICT2_2B_V2W,
    TINY_DIT,
    build_dit_on_meta,
    diffusers_to_official,
    load_dit_weights,
    official_to_diffusers,
)
from cosmos_lit.weights.state_io import UntrustedPickleError
from cosmos_lit.weights.t5 import build_t5_cache, load_t5_cache, save_t5_cache
from cosmos_lit.weights.wan_vae import load_vae_weights

__all__ = [
    "COSMOS_PREDICT2_2B_V2W",
    "TINY_DIT",
    "DatasetStatistics",
    "ReleasedCheckpoint",
    "UntrustedPickleError",
    "build_dit_on_meta",
    "build_t5_cache",
    "diffusers_to_official",
    "load_dataset_statistics",
    "load_dit_weights",
    "load_t5_cache",
    "load_vae_weights",
    "locate_released_checkpoint",
    "official_to_diffusers",
    "save_t5_cache",
]
