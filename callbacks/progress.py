"""Lightning's rich progress bar with a training description that makes sense for step-bounded runs.

``RichProgressBar`` labels the training bar ``Epoch {e}/{max_epochs - 1}``; a run bounded by ``trainer.max_steps``
has ``max_epochs = -1`` and reads ``Epoch 0/-2``. Here an unbounded epoch count shows ``Epoch {e}`` alone, followed
by ``step {global_step}/{max_steps}`` whenever ``max_steps`` is set (refreshed after every training batch).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training description reads ``Epoch 0, step 123/3000`` (or ``Epoch 0/9``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        max_epochs = trainer.max_epochs
        description = f"Epoch {current_epoch}"
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps > 0:
            description += f", step {trainer.global_step}/{max_steps}"
        if len(self.validation_description) > len(description):  # as Lightning: no flicker against "Validation"
            description = f"{description:{len(self.validation_description)}}"
        return description

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None and trainer.max_steps > 0:
            description = self._get_train_description(trainer.current_epoch)
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.progress.update(self.train_progress_bar_id, description=description)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # updates the count and refreshes
