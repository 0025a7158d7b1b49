"""The policy object: observation dicts in, un-normalized action chunks out.

    policy = CosmosPolicy.from_checkpoint("runs/.../last.ckpt")
    out = policy([obs_env0, obs_env1])        # obs: {"images": {camera: (H, W, 3) uint8}, "proprio": (P,), "instruction": str}
    out["actions"]                            # (B, K, A) float32 numpy, env units
    out["value"]                              # (B,) predicted V(s') in [0, 1] (when the layout has a value frame)

Queries from several environments are batched into one forward. ``execute_steps`` says how many actions of each
chunk the caller executes open loop before querying again (16 of 16 LIBERO, 16 of 32 RoboCasa, 50 of 50 ALOHA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmos_lit.normalization import normalize, unnormalize
from cosmos_lit.registry import ConfigError, build


def load_task(path: str | Path, map_location: str | torch.device = "cpu", strip_pretrained: bool = True) -> Any:
    """Rebuild a task module from a Lightning checkpoint alone (its hyper-parameters carry every config node)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    ckpt = torch.load(p, map_location=map_location, weights_only=False)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "model" not in hp or "spec" not in hp:
        raise ConfigError(f"{p}: not a cosmos_lit task checkpoint (no model/spec hyper-parameters)")
    if strip_pretrained:  # weights come from the checkpoint; don't read the original files again
        hp["model"] = {k: ({kk: vv for kk, vv in v.items() if kk != "pretrained"} if isinstance(v, dict) else v)
                       for k, v in dict(hp["model"]).items()}
    task_name = (ckpt.get("cosmos_lit") or {}).get("task", "cosmos_policy")
    task = build({"name": task_name, **hp}, "task", path="task")
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("text_encoder.")]:
        raise ConfigError(f"{p}: state dict does not match the rebuilt model (missing {missing[:10]}, unexpected {unexpected[:10]})")
    return task.to(map_location).eval()


class CosmosPolicy:
    """Wraps a trained task (and planner) as an observation -> action-chunk function.

    Args:
        task: a ``CosmosPolicyTask`` (or compatible) in eval mode.
        planner: planner module; defaults to the task's configured planner.
        num_steps: denoising steps (None: the task's sampling config).
        execute_steps: actions executed open loop per query (None: the whole chunk).
        image_pipeline: test-time image options of ``cosmos_lit.images.ImagePipeline`` (``flip``, ``jpeg_quality``,
            ``center_crop``) or ``{benchmark: libero|robocasa|aloha}`` for the official preset; default plain resize.
        seed: base seed of the sampling noise; query i uses seed + i (deterministic evaluation).
        clip_actions: clamp normalized actions to [-1, 1] (the demonstrations' range) before un-normalizing; the
            official code does not, but an undertrained model otherwise sends joint targets far outside it.
    """

    def __init__(self, task: Any, planner: Any = None, num_steps: int | None = None, execute_steps: int | None = None,
                 image_pipeline: dict[str, Any] | None = None, seed: int = 0, clip_actions: bool = True):
        self.task = task.eval()
        self.planner = planner if planner is not None else task.planner
        if num_steps is not None and hasattr(self.planner, "num_steps"):
            self.planner.num_steps = num_steps
        self.spec = task.spec
        self.execute_steps = execute_steps or self.spec.chunk_size
        if not 1 <= self.execute_steps <= self.spec.chunk_size:
            raise ConfigError(f"execute_steps: expected 1..{self.spec.chunk_size}, got {self.execute_steps}")
        from cosmos_lit.images import ImagePipeline, eval_pipeline

        opts = dict(image_pipeline or {})
        if "benchmark" in opts:
            self.pipeline = eval_pipeline(opts.pop("benchmark"), self.spec.image_size)
        else:
            self.pipeline = ImagePipeline(image_size=self.spec.image_size, **opts)
        self.seed = seed
        self.clip_actions = clip_actions
        self.queries = 0
        self.statistics = {k: list(v) for k, v in task.statistics.items()}
        if "actions_min" not in self.statistics or "proprio_min" not in self.statistics:
            raise ConfigError("checkpoint statistics: expected actions_min/max and proprio_min/max")
        for k in ("actions_min", "actions_max"):  # the model's action may be a prefix (RoboCasa: 7 of 12)
            self.statistics[k] = self.statistics[k][: self.spec.action_dim]

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu", planner: dict[str, Any] | None = None,
                        **kwargs: Any) -> "CosmosPolicy":
        task = load_task(path, map_location=map_location)
        plan = build(planner, "planner", path="planner") if planner else None
        return cls(task, planner=plan, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.task.device

    def _images(self, obs: dict[str, Any]) -> torch.Tensor:
        imgs = obs["images"]
        missing = [c for c in self.spec.cameras if c not in imgs]
        if missing:
            raise KeyError(f"observation has no image for camera '{missing[0]}' (has: {', '.join(imgs)})")
        return self.pipeline([np.asarray(imgs[c]) for c in self.spec.cameras])

    @torch.no_grad()
    def __call__(self, observations: list[dict[str, Any]]) -> dict[str, Any]:
        images = torch.stack([self._images(o) for o in observations]).to(self.device)
        proprio = np.stack([np.asarray(o["proprio"], np.float32) for o in observations])
        if proprio.shape[1] != self.spec.proprio_dim:
            raise ValueError(f"observation proprio has {proprio.shape[1]} dims, the policy expects {self.spec.proprio_dim}")
        proprio_t = torch.from_numpy(normalize(proprio, self.statistics, "proprio").astype(np.float32)).to(self.device)
        instructions = [str(o.get("instruction", "")) for o in observations]
        out = self.planner.plan(self.task, images, proprio_t, instructions, seed=self.seed + self.queries)
        self.queries += 1
        actions = out["actions"].float().clamp(-1, 1) if self.clip_actions else out["actions"].float()
        actions = unnormalize(actions.cpu().numpy(), self.statistics, "actions")
        result: dict[str, Any] = {"actions": actions.astype(np.float32), "latents": out["latents"]}
        if "value" in out:
            result["value"] = out["value"].float().cpu().numpy()
        return result

    def reset(self) -> None:
        self.queries = 0

    @torch.no_grad()
    def imagine(self, latents: torch.Tensor) -> np.ndarray:
        """Decode the predicted future camera images of a query: (B, N, H, W, 3) uint8."""
        lay = self.task.layout
        enc = self.task.image_encoder
        # undo latent injection: vector frames go back to the latents of their black placeholder images
        size = self.spec.image_size
        black = latents.new_full((latents.shape[0], lay.num_frames - 1, 3, size, size), -1.0)
        placeholders = enc.encode(black)
        z = latents.clone()
        for f in lay.vector_frames:
            z[:, :, f] = placeholders[:, :, f]
        frames = enc.decode(z)
        fut = torch.stack([frames[:, lay.future_camera(i)] for i in range(lay.num_cameras)], dim=1)
        return ((fut.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()
