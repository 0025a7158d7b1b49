"""ALOHA sim demonstrations made on the fly by the scripted expert, read as ACT-format HDF5.

``prepare_data()`` runs the scripted expert of ``cosmos_lit.envs.aloha_expert`` in gym-aloha and writes
``num_demos`` successful episodes to ``data_dir`` (cached: a ``manifest.json`` records the generation parameters,
and matching episodes are reused). Everything else is the ALOHA DataModule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from cosmos_lit.datamodules.aloha import AlohaDataModule
from cosmos_lit.registry import ConfigError, register


@register("datamodule", "aloha_sim")
class AlohaSimDataModule(AlohaDataModule):
    """Scripted-expert ALOHA sim demos (TransferCube or Insertion) as a DataModule.

    Args:
        task: "transfer_cube" or "insertion".
        num_demos: successful demonstrations to generate.
        demo_seed0: first scene seed (gym-aloha ``reset(seed)``); evaluation seeds should be disjoint.
        demo_workers: processes rendering demos.
        fast_render: render without shadows/reflections/MSAA (must match the evaluation env's setting).
        demo_noise_std / demo_noise_steps: DART-style demos: an Ornstein-Uhlenbeck perturbation (std in radians,
            correlation time in env steps) of the arm joints the env executes in the expert's free-space segments,
            while the labels stay the expert's commands (``cosmos_lit.envs.aloha_expert.ActionNoise``); 0 = clean.
        demo_expert: keyword arguments of the task's scripted expert, e.g. ``{left_approach: glide}`` for
            TransferCube (``cosmos_lit.envs.aloha_expert.TransferCubeExpert``); empty = its defaults.
        Other keys: see ``AlohaDataModule``.
    """

    def __init__(
        self,
        data_dir: str = "data/aloha_sim/transfer_cube",
        task: str = "transfer_cube",
        num_demos: int = 20,
        demo_seed0: int = 0,
        demo_workers: int = 2,
        fast_render: bool = True,
        demo_noise_std: float = 0.0,
        demo_noise_steps: float = 25.0,
        demo_expert: dict[str, Any] | None = None,
        cameras: Sequence[str] = ("top",),
        image_size: int = 64,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        augment: bool = False,
        **kwargs: Any,
    ):
        if task not in ("transfer_cube", "insertion"):
            raise ConfigError(f"data.task: expected 'transfer_cube' or 'insertion', got '{task}'")
        if num_demos < 2:
            raise ConfigError(f"data.num_demos: expected >= 2 (one is held out for validation), got {num_demos}")
        if not isinstance(demo_noise_std, (int, float)) or not demo_noise_std >= 0:
            raise ConfigError(f"data.demo_noise_std: expected a number >= 0 (radians), got {demo_noise_std}")
        if not isinstance(demo_noise_steps, (int, float)) or not demo_noise_steps >= 1:
            raise ConfigError(f"data.demo_noise_steps: expected a correlation time >= 1 (env steps), got {demo_noise_steps}")
        if demo_expert is not None and not isinstance(demo_expert, Mapping):
            raise ConfigError(f"data.demo_expert: expected a mapping of expert options, got {demo_expert!r}")
        demo_expert = {str(k): v for k, v in (demo_expert or {}).items()}
        if demo_expert:  # checked here so that a typo stops the run before anything is generated
            from cosmos_lit.envs.aloha_expert import make_expert

            try:
                make_expert(task, demo_expert)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"data.demo_expert: {e}") from None
        super().__init__(data_dir=data_dir, cameras=cameras, image_size=image_size, batch_size=batch_size,
                         val_fraction=val_fraction, augment=augment, **kwargs)
        self.task = task
        self.num_demos = num_demos
        self.demo_seed0 = demo_seed0
        self.demo_workers = demo_workers
        self.fast_render = fast_render
        self.demo_noise_std, self.demo_noise_steps = float(demo_noise_std), float(demo_noise_steps)
        self.demo_expert = demo_expert

    def prepare_data(self) -> None:
        from cosmos_lit.datamodules.aloha_sim_demos import foreign_episodes, generate_demos

        foreign = foreign_episodes(self.data_dir)
        if foreign:  # before the simulator starts: existing recordings are read with data=aloha, not regenerated
            raise ConfigError(
                f"data.data_dir: {self.data_dir} holds {len(foreign)} existing episode file(s) (e.g. "
                f"{os.path.basename(foreign[0])}) that data=aloha_sim did not generate (no manifest.json), so they are "
                f"left alone; to train on existing ACT/ALOHA recordings use data=aloha data.data_dir={self.data_dir}, "
                f"to generate scripted demos point data.data_dir to an empty or new folder"
            )
        generate_demos(
            self.data_dir, task=self.task, num_episodes=self.num_demos, seed0=self.demo_seed0,
            image_size=self.image_size, cameras=tuple(self.cameras), fast_render=self.fast_render,
            num_workers=self.demo_workers, noise_std=self.demo_noise_std, noise_steps=self.demo_noise_steps,
            expert_options=self.demo_expert,
        )
