"""Checkpoints that survive being killed: atomic writes, and a last checkpoint on SIGTERM.

- ``AtomicCheckpointIO``: Lightning's ``TorchCheckpointIO`` writes the file in place, so a kill during the write
  leaves a truncated ``last.ckpt`` that ``ckpt_path=last`` then picks up. This one writes a temp file beside the
  target and renames it (``cosmos_lit.io.atomic_path``); a left-over temp file never matches ``last*.ckpt``.
- ``CheckpointOnSigterm``: a scheduler's pre-emption (SIGTERM, e.g. Kubernetes, or SLURM without Lightning's
  SIGUSR1 requeue) otherwise stops a Lightning run only at the end of an epoch, with nothing saved since the last
  periodic checkpoint. This callback writes ``last.ckpt`` right after the step that saw the signal (all ranks agree
  first) and stops the run; ``fit ... run_dir=SAME ckpt_path=last`` continues it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cosmos_lit.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file in the target's folder, then ``os.replace`` (never a half checkpoint)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options are not supported, got {storage_options}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, keep_suffix=False) as tmp:
            torch.save(checkpoint, tmp)


class CheckpointOnSigterm(Callback):
    """On SIGTERM: write ``<checkpoint dir>/last.ckpt`` after the current step, then stop (``SIGTERMException``)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = torch.tensor(float(trainer.received_sigterm), device=pl_module.device)
        if trainer.world_size > 1:  # the signal may reach one rank first; every rank must join the save
            stop = trainer.strategy.reduce(stop, reduce_op="max")
        if not bool(stop > 0):
            return
        ck = trainer.checkpoint_callback
        folder = Path(ck.dirpath) if isinstance(ck, ModelCheckpoint) and ck.dirpath else Path(trainer.default_root_dir)
        path = folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: wrote {path} at step {trainer.global_step}; continue with ckpt_path=last and the "
                       f"same run_dir")
        raise SIGTERMException()
