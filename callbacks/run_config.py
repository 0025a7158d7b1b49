"""Embeds the run's resolved config, overrides and chosen config-group options in every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L

from cosmos_lit.registry import register


@register("callback", "run_config")
class RunConfigInCheckpoint(L.Callback):
    """Adds ``checkpoint["cosmos_lit"] = {config, overrides, choices, task, version, metrics, data}``.

    With it, ``python -m cosmos_lit validate ckpt_path=...`` rebuilds data, model and evaluation from the file alone.
    ``metrics``: the trainer's latest scalar metrics at the save (``val/*``, ``sim/*``, ``train/loss`` ...);
    ``data``: the DataModule's episode counts (``episodes``, ``train_episodes``, ``val_episodes``) when it has them.
    Both are for the record (``python -m cosmos_lit export`` puts them in the model card).
    """

    def __init__(self, config: dict[str, Any], overrides: list[str], choices: dict[str, Any], task: str = "cosmos_policy"):
        self.payload = {"config": config, "overrides": list(overrides), "choices": dict(choices), "task": task}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        from cosmos_lit import __version__

        metrics = {}
        for key, value in trainer.callback_metrics.items():
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError, RuntimeError):  # not a scalar
                continue
        checkpoint["cosmos_lit"] = {**self.payload, "version": __version__, "metrics": metrics,
                                    "data": episode_counts(getattr(trainer, "datamodule", None))}


def episode_counts(dm: Any) -> dict[str, int]:
    """``episodes`` / ``train_episodes`` / ``val_episodes`` of a set-up ``EpisodeDataModule`` (empty for others)."""
    counts = {}
    for key in ("episodes", "train_episodes", "val_episodes"):
        try:
            counts[key] = len(getattr(dm, key))
        except (AttributeError, RuntimeError, TypeError):  # no such list, or not set up
            continue
    return counts
