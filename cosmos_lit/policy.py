"""The policy object: observation dicts in, un-normalized action chunks out.

It wraps a ``CosmosPolicyModel`` (``cosmos_lit.model``) and a planner; it never sees the training task::

    policy = CosmosPolicy.from_checkpoint("runs/.../last.ckpt")
    policy = CosmosPolicy.from_pretrained("exports/my_policy")  # a folder of `python -m cosmos_lit export`
    out = policy([obs_env0, obs_env1])        # obs: {"images": {camera: (H, W, 3) uint8}, "proprio": (P,), "instruction": str}
    out["actions"]                            # (B, K, A) float32 numpy, env units
    out["value"]                              # (B,) predicted V(s') in [0, 1] (when the layout has a value frame)
    # with a planner that reports its candidates (best_of_n): "candidate_actions" (B, N, K, A) env units,
    # "plan_scores" (B, N), "plan_choice" (B,), "candidate_futures" (B, N, F, C, T, H, W) latents (decode: imagine)

Queries from several environments are batched into one forward. ``execute_steps`` says how many actions of each
chunk the caller executes open loop before querying again (16 of 16 LIBERO, 16 of 32 RoboCasa, 50 of 50 ALOHA).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmos_lit.checkpoint import load_model
from cosmos_lit.components import Planner
from cosmos_lit.export import load_pretrained, read_config
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.registry import ConfigError, build


class CosmosPolicy:
    """A ``CosmosPolicyModel`` and a planner as an observation -> action-chunk function.

    Args:
        model: the model (eval mode is set here).
        planner: a ``Planner`` (``cosmos_lit.components``) or a planner config node; default: the direct policy.
        num_steps: denoising steps of the policy sample, passed to the planner with every query (None: the
            model's ``sampling.num_steps``, or the planner's own default for its action stage).
        execute_steps: actions executed open loop per query (None: the whole chunk).
        image_pipeline: test-time image options of ``cosmos_lit.images.ImagePipeline`` (``flip``, ``jpeg_quality``,
            ``center_crop``): what is left to do after the env (a benchmark's: ``image_pipeline`` of
            ``configs/eval/<benchmark>.yaml``, ``cosmos_lit.eval.load_protocol(benchmark).image_pipeline``); default
            plain resize.
        seed: base seed of the sampling noise; query i uses seed + i (deterministic evaluation).
        clip_actions: clamp normalized actions to the demonstrations' range ([-1, 1] by default) before
            un-normalizing; the official code does not, but an undertrained model otherwise sends joint targets far
            outside it.
    """

    def __init__(self, model: CosmosPolicyModel, planner: Planner | dict[str, Any] | None = None,
                 num_steps: int | None = None, execute_steps: int | None = None,
                 image_pipeline: dict[str, Any] | None = None, seed: int = 0, clip_actions: bool = True):
        self.model = model.eval()
        if planner is None or isinstance(planner, dict):
            planner = build(planner or {"name": "none"}, "planner", path="planner")
        self.planner: Planner = planner
        self.num_steps = None if num_steps is None else int(num_steps)
        if self.num_steps is not None and self.num_steps < 1:
            raise ConfigError(f"num_steps: expected an integer >= 1 or null, got {num_steps}")
        self.spec = model.spec
        self.execute_steps = execute_steps or self.spec.chunk_size
        if not 1 <= self.execute_steps <= self.spec.chunk_size:
            raise ConfigError(f"execute_steps: expected 1..{self.spec.chunk_size}, got {self.execute_steps}")
        from cosmos_lit.images import ImagePipeline
        from cosmos_lit.registry import bind_kwargs

        opts = bind_kwargs(ImagePipeline, dict(image_pipeline or {}), "image_pipeline")
        self.pipeline = ImagePipeline(image_size=self.spec.image_size, **opts)
        self.seed = seed
        self.clip_actions = clip_actions
        self.queries = 0
        model.statistics_of("actions"), model.statistics_of("proprio")  # fail now, not at the first query

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu", planner: Planner | dict[str, Any] | None = None,
                        trust_pickle: bool = False, **kwargs: Any) -> "CosmosPolicy":
        """Load the model of a cosmos_lit checkpoint (``cosmos_lit.checkpoint.load_model``) and wrap it."""
        return cls(load_model(path, map_location=map_location, trust_pickle=trust_pickle), planner=planner, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        planner: Planner | dict[str, Any] | None = None, **kwargs: Any) -> "CosmosPolicy":
        """Load a policy folder written by ``python -m cosmos_lit export`` (``cosmos_lit.export``): safetensors, YAML
        and JSON only, nothing unpickled. The folder's deployment defaults (``policy`` in its ``config.yaml``: the
        run's planner, ``num_steps``, ``execute_steps``, ``image_pipeline``) apply unless given here; ``planner=None``
        takes the folder's planner (the direct policy when it names none)."""
        config = read_config(path)
        defaults = {k: v for k, v in config["policy"].items() if v is not None}
        stored_planner = defaults.pop("planner", None)
        model = load_pretrained(path, map_location=device)
        return cls(model, planner=stored_planner if planner is None else planner, **{**defaults, **kwargs})

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _images(self, obs: dict[str, Any]) -> torch.Tensor:
        imgs = obs["images"]
        missing = [c for c in self.spec.cameras if c not in imgs]
        if missing:
            raise KeyError(f"observation has no image for camera '{missing[0]}' (has: {', '.join(imgs)})")
        return self.pipeline([np.asarray(imgs[c]) for c in self.spec.cameras])

    @torch.no_grad()
    def __call__(self, observations: list[dict[str, Any]], seeds: Sequence[int] | None = None) -> dict[str, Any]:
        """Action chunks for a batch of raw observations. ``seeds``: one noise seed per observation (evaluation
        passes ``cosmos_lit.seeding.episode_seed``: an episode's actions then do not depend on the episodes that share
        its batch); default ``seed + i`` for the i-th call, shared by the batch."""
        images = torch.stack([self._images(o) for o in observations]).to(self.device)
        proprio = np.stack([np.asarray(o["proprio"], np.float32) for o in observations])
        if proprio.shape[1] != self.spec.proprio_dim:
            raise ValueError(f"observation proprio has {proprio.shape[1]} dims, the policy expects {self.spec.proprio_dim}")
        proprio_t = torch.from_numpy(self.model.normalize_proprio(proprio).astype(np.float32)).to(self.device)
        instructions = [str(o.get("instruction", "")) for o in observations]
        if seeds is not None and len(seeds) != len(observations):
            raise ValueError(f"seeds: expected one per observation ({len(observations)}), got {len(seeds)}")
        seed = self.seed + self.queries if seeds is None else [int(s) for s in seeds]
        out = self.planner.plan(self.model, images, proprio_t, instructions, seed=seed, num_steps=self.num_steps)
        self.queries += 1
        result: dict[str, Any] = {"actions": self._env_actions(out["actions"]), "latents": out["latents"]}
        if "value" in out:
            result["value"] = out["value"].float().cpu().numpy()
        if "candidate_actions" in out:  # a planner's candidates (cosmos_lit.models.planner.BestOfN)
            result["candidate_actions"] = self._env_actions(out["candidate_actions"])
            result["plan_scores"] = out["plan_scores"].float().cpu().numpy()
            result["plan_choice"] = out["plan_choice"].cpu().numpy()
            if "candidate_futures" in out:
                result["candidate_futures"] = out["candidate_futures"]
        return result

    def _env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Normalized (..., K, A) -> env units float32 numpy (clamped to the demonstrations' normalized range, [-1, 1]
        by default, first with ``clip_actions``)."""
        from cosmos_lit.normalization import normalized_range

        actions = actions.float()
        if self.clip_actions:
            actions = actions.clamp(*normalized_range(self.model.statistics_of("actions")))
        return self.model.unnormalize(actions.cpu().numpy(), "actions").astype(np.float32)

    def reset(self) -> None:
        self.queries = 0

    def imagine(self, latents: torch.Tensor) -> np.ndarray:
        """Decode the predicted future camera images of latent sequences (..., C, T, H, W), e.g. a query's
        ``latents`` (B, ...) or a planner's ``candidate_futures`` (B, N, F, ...): (..., cameras, S, S, 3) uint8."""
        lead = tuple(latents.shape[:-4])
        images = self.model.decode_future_images(latents.reshape(-1, *latents.shape[-4:])).cpu().numpy()
        return images.reshape(*lead, *images.shape[1:])
