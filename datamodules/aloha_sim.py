"""ALOHA sim demonstrations made on the fly by the scripted expert, read as ACT-format HDF5.

``prepare_data()`` runs the scripted expert of ``cosmos_lit.envs.aloha_expert`` in gym-aloha and writes
``num_demos`` successful episodes to ``data_dir`` (cached: a ``manifest.json`` records the generation parameters,
and matching episodes are reused). Everything else is the ALOHA DataModule.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        cameras: Sequence[str] = ("top",),
        image_size: int = 64,
        chunk_size: int = 50,
        gamma: float = 0.998,
        fps: float = 50.0,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = False,
        demonstration_sampling_prob: float = 0.5,
        success_rollout_sampling_prob: float = 0.5,
        treat_demos_as_success_rollouts: bool = True,
        rollout_dir: str | None = None,
        samples_per_epoch: int | None = None,
        stride: int = 1,
    ):
        if task not in ("transfer_cube", "insertion"):
            raise ConfigError(f"data.task: expected 'transfer_cube' or 'insertion', got '{task}'")
        if num_demos < 2:
            raise ConfigError(f"data.num_demos: expected >= 2 (one is held out for validation), got {num_demos}")
        super().__init__(
            data_dir=data_dir, cameras=cameras, image_size=image_size, chunk_size=chunk_size, gamma=gamma, fps=fps,
            batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction, seed=seed, augment=augment,
            demonstration_sampling_prob=demonstration_sampling_prob,
            success_rollout_sampling_prob=success_rollout_sampling_prob,
            treat_demos_as_success_rollouts=treat_demos_as_success_rollouts, rollout_dir=rollout_dir,
            samples_per_epoch=samples_per_epoch, stride=stride,
        )
        self.task = task
        self.num_demos = num_demos
        self.demo_seed0 = demo_seed0
        self.demo_workers = demo_workers
        self.fast_render = fast_render

    def prepare_data(self) -> None:
        from cosmos_lit.envs.aloha_expert import generate_demos

        generate_demos(
            self.data_dir, task=self.task, num_episodes=self.num_demos, seed0=self.demo_seed0,
            image_size=self.image_size, cameras=tuple(self.cameras), fast_render=self.fast_render,
            num_workers=self.demo_workers,
        )
