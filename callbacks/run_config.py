"""Embeds the run's resolved config, overrides and chosen config-group options in every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L

from cosmos_lit.registry import register


@register("callback", "run_config")
class RunConfigInCheckpoint(L.Callback):
    """Adds ``checkpoint["cosmos_lit"] = {config, overrides, choices, task, version}``.

    With it, ``python -m cosmos_lit validate ckpt_path=...`` rebuilds data, model and evaluation from the file alone.
    """

    def __init__(self, config: dict[str, Any], overrides: list[str], choices: dict[str, Any], task: str = "cosmos_policy"):
        self.payload = {"config": config, "overrides": list(overrides), "choices": dict(choices), "task": task}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        from cosmos_lit import __version__

        checkpoint["cosmos_lit"] = {**self.payload, "version": __version__}
