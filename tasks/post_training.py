"""Cosmos Policy post-training: one denoising objective trains policy, world model and value function.

The task owns a ``CosmosPolicyModel`` (``cosmos_lit.model``: components, layout, injection, sampling) and keeps only
what training needs: the loss, the σ distribution, the sample-type conditioning, metrics, the optimizer and an
optional EMA of the backbone::

    batch -> model.encode + model.inject -> x0 (B, C, T, h, w) -> sample-type conditioning mask
          -> σ ~ hybrid × √T -> rectified-flow loss on the other frames

Validation adds what the official code lacks: from each held-out sample's current state the model samples the
action chunk, future proprio and value, and their L1 errors (on the normalized [-1, 1] scale) are logged. ``test``
scores the held-out split the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics

from cosmos_lit import diffusion
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.model import MODEL_OPTIONS, CosmosPolicyModel
from cosmos_lit.registry import ConfigError, bind_kwargs, register
from cosmos_lit.sample_stream import GlobalBatchStream
from cosmos_lit.tasks.latent_cache import LatentCache



@dataclass(frozen=True)
class OptimConfig:
    """AdamW + LambdaLinear schedule, the official recipe's values: lr 1e-4, weight decay 0.1, betas (0.9, 0.99),
    linear warm-up over ``warmup_steps``, linear decay to ``decay_to`` × lr at ``decay_steps``, then ``tail`` × lr.

    ``fused``: torch's fused AdamW kernel, one pass over all parameters on the CPU or a GPU (the same update within
    float rounding; on the tiny CPU configs about 5× faster than the per-tensor implementation, several ms per
    step, ``benchmarks/bench_train_step.py``); false: torch's default (a loop over the tensors on a CPU, ``foreach``
    on a GPU). Under a mixed-precision Trainer that clips gradients (``trainer.gradient_clip_val``) torch's default
    is used too: Lightning's mixed-precision plugin refuses to clip for an optimizer that can unscale gradients
    itself, as the fused one can. A resumed run keeps the implementation its checkpoint was written with (torch
    restores it with the optimizer state)."""

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    warmup_steps: int = 1000
    decay_steps: int = 30000
    decay_to: float = 0.3
    tail: float = 0.06
    fused: bool = True


def lambda_linear(step: int, warmup_steps: int, decay_steps: int, decay_to: float, tail: float) -> float:
    """LR multiplier: 1e-6 → 1 linearly over warm-up, → ``decay_to`` linearly at ``decay_steps``, then ``tail``."""
    if step < warmup_steps:
        return 1e-6 + (1.0 - 1e-6) * step / max(1, warmup_steps)
    if step < decay_steps:
        return 1.0 + (decay_to - 1.0) * (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return tail


def _non_negative(value: float, path: str) -> float:
    if not float(value) >= 0.0:
        raise ConfigError(f"{path}: expected a number >= 0, got {value}")
    return float(value)


class NonFiniteLossError(ValueError):
    """The training loss became NaN or Inf; the message names the step and the batch's samples."""


def _world_size() -> int:
    """Processes in the default process group (1 without one, e.g. a task used outside a Trainer)."""
    return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def _mix(seed: int, key: int) -> int:
    """A 63-bit generator seed from (run seed, sample key), well spread for neighbouring keys."""
    a, b = np.random.SeedSequence([int(seed) % (1 << 63), int(key)]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


@register("task", "cosmos_policy")
class CosmosPolicyTask(L.LightningModule):
    """Cosmos Policy post-training module.

    Args:
        model: the ``model`` config: one node per component (``backbone``, ``image_encoder``, ``vector_encoder``,
            ``value_head``, ``text_encoder``) plus the ``MODEL_OPTIONS`` (``sampling``, the value masks)
            (``CosmosPolicyModel``'s arguments).
        spec: the DataModule's ``DataSpec`` as a dict (shapes of everything).
        statistics: dataset statistics (official keys ``actions_min`` ...), stored so a checkpoint is self-contained.
        optim: ``OptimConfig`` keys (defaults: the official recipe).
        sigma: ``diffusion.HybridSigmaSampler`` keys (defaults: Cosmos Policy's hybrid log-normal/uniform × √T).
        val_sample_batches: validation batches (per epoch) on which sampled predictions are scored; the loss is
            computed on every validation batch.
        cache_latents: keep the image latents of every (episode, frame, camera) seen in training in memory and
            reuse them (``LatentCache``). Only valid when each image is encoded alone
            (``sequence_form: per_image``) and without augmentation; a CPU speed-up for small runs.
        ema_decay: keep an exponential moving average of the backbone (timm ``ModelEmaV3``, decay warmed up as
            1 − (1 + step)^(−2/3), capped at this value) and sample with it in validation and in the inference model
            (``inference_model``); saved in checkpoints. ``None`` (default) = no EMA, as the official recipe.
        future_image_loss_weight: weight of the future-camera frames in the loss (1.0 = official). Below 1 the
            actions, proprio and value get a larger share of a small network's capacity; the world model's image
            predictions get less.
        proprio_noise_std: standard deviation of Gaussian noise added to the *current* proprio condition of training
            samples (normalized [-1, 1] units; validation, the policy and the targets stay clean; 0 = official). A
            scripted expert's first few steps already reveal where the arm is heading, so a net given exact proprio
            learns to extrapolate it instead of finding the object in the image (the "copycat" shortcut); noise the
            size of those first steps makes the image the only reliable cue there.
    """

    def __init__(
        self,
        model: dict[str, Any],
        spec: dict[str, Any],
        statistics: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        sigma: dict[str, Any] | None = None,
        val_sample_batches: int = 2,
        cache_latents: bool = False,
        ema_decay: float | None = None,
        future_image_loss_weight: float = 1.0,
        proprio_noise_std: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        node = dict(model)
        options = {k: node.pop(k) for k in MODEL_OPTIONS if k in node}
        self.model = CosmosPolicyModel(node, spec, statistics, **options)
        self.optim_cfg = OptimConfig(**bind_kwargs(OptimConfig, dict(optim or {}), "task.optim"))
        if not isinstance(self.optim_cfg.fused, bool):
            raise ConfigError(f"task.optim.fused: expected true or false, got {self.optim_cfg.fused!r}")
        self.sigma_sampler = diffusion.HybridSigmaSampler(**bind_kwargs(diffusion.HybridSigmaSampler, dict(sigma or {}), "task.sigma"))
        self.val_sample_batches = val_sample_batches
        self.future_image_loss_weight = _non_negative(future_image_loss_weight, "task.future_image_loss_weight")
        self.proprio_noise_std = _non_negative(proprio_noise_std, "task.proprio_noise_std")
        self.backbone_ema = None
        if ema_decay is not None:
            if not 0.0 < float(ema_decay) < 1.0:
                raise ConfigError(f"task.ema_decay: expected a number in (0, 1) or null, got {ema_decay}")
            from timm.utils import ModelEmaV3

            self.backbone_ema = ModelEmaV3(self.model.backbone, decay=float(ema_decay), use_warmup=True)
            self.backbone_ema.requires_grad_(False)
        self._noise_seed = 0  # set from the run seed at fit start
        if cache_latents and self.model.image_encoder.sequence_form != "per_image":
            raise ConfigError("task.cache_latents: needs model.image_encoder.sequence_form=per_image (in the faithful "
                              "form a slot's latent depends on the slots before it)")
        self.latent_cache = LatentCache(self.model) if cache_latents else None

        self.val_action_l1 = torchmetrics.MeanMetric()
        self.val_future_proprio_l1 = torchmetrics.MeanMetric()
        self.val_value_l1 = torchmetrics.MeanMetric()

    @property
    def inference_model(self) -> CosmosPolicyModel:
        """The model that samples (validation, the policy, the planners): with the EMA backbone when there is one."""
        return self.model if self.backbone_ema is None else self.model.with_backbone(self.backbone_ema.module)

    def encode_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Training sample -> clean latents x0 (B, C, T, h, w) with every vector injected."""
        n = len(self.model.spec.cameras)
        images = batch["images"]
        if self.latent_cache is not None:
            latents = self.latent_cache.latents(batch)
        else:
            latents = self.model.encode(images[:, :n], images[:, n:])
        return self.model.inject(latents, batch["proprio"], batch["actions"], batch["future_proprio"], batch.get("value"))

    # ---------------------------------------------------------------- Lightning hooks

    def on_fit_start(self) -> None:
        # the run's seed (seed_everything gives every rank the same): with sample_key, the seed of σ and the noise
        self._noise_seed = torch.initial_seed()
        if self.latent_cache is not None:  # one cache per fit: its data cannot change under it
            self.latent_cache = LatentCache(self.model)
        if self.model.image_encoder.normalization == "data":
            self.calibrate_from(self.trainer.datamodule.train_dataloader())

    def calibrate_from(self, loader: Any) -> None:
        """Fit a ``normalization: data`` image encoder on 32 training samples of ``loader`` (no-op otherwise)."""
        if self.model.image_encoder.normalization != "data":
            return
        if isinstance(loader.sampler, GlobalBatchStream):  # the stream's head: the same images on every rank
            images = torch.stack([loader.dataset[key]["images"] for key in loader.sampler.head(32)])
        else:
            images = next(iter(loader))["images"][:32]
        n = len(self.model.spec.cameras)
        images = images.to(self.device)
        self.model.calibrate(images[:, :n], images[:, n:])

    def _sample_generators(self, batch: dict[str, Any]) -> list[torch.Generator] | None:
        """One CPU generator per sample of a training-stream batch, seeded by (run seed, ``sample_key``), so σ and
        the noise of a sample do not depend on the rank or the step it was resumed at (``cosmos_lit.sample_stream``);
        ``None`` for batches without keys (validation, other loaders), which use the global RNG."""
        keys = batch.get("sample_key")
        if keys is None:
            return None
        return [torch.Generator().manual_seed(_mix(self._noise_seed, int(k))) for k in keys.tolist()]

    def _loss(self, batch: dict[str, Any], generators: list[torch.Generator] | None = None,
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model, lay = self.model, self.model.layout
        x0 = self.encode_batch(batch)
        sample_type = batch["sample_type"].long()
        cond_mask = model.condition_mask(sample_type)
        loss_mask = model.loss_mask(sample_type)
        if self.future_image_loss_weight != 1.0:
            future = [lay.future_camera(i) for i in range(lay.num_cameras)]
            loss_mask[:, future] = loss_mask[:, future] * self.future_image_loss_weight
        if generators is None:
            sigma = self.sigma_sampler(x0.shape[0], lay.num_frames, device=x0.device)
            noise = torch.randn_like(x0)
        else:
            sigma = torch.cat([self.sigma_sampler(1, lay.num_frames, generator=g) for g in generators]).to(x0.device)
            noise = torch.cat([torch.randn((1, *x0.shape[1:]), generator=g) for g in generators]).to(x0)
        text = model.text_encoder(list(batch["instruction"]))
        loss, _ = diffusion.diffusion_loss(model.velocity_fn(text), x0, cond_mask, sigma, noise, loss_mask)
        fractions = {
            name: (sample_type == code).float().mean() for name, code in (("policy", POLICY), ("world_model", WORLD_MODEL), ("value", VALUE))
        }
        return loss, fractions

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        generators = self._sample_generators(batch)
        if self.proprio_noise_std > 0:
            proprio = batch["proprio"]
            if generators is None:
                noise = torch.randn_like(proprio)
            else:
                noise = torch.cat([torch.randn((1, *proprio.shape[1:]), generator=g) for g in generators]).to(proprio)
            batch = {**batch, "proprio": proprio + self.proprio_noise_std * noise}
        loss, fractions = self._loss(batch, generators)
        self._stop_on_non_finite(loss, batch)
        bs = batch["proprio"].shape[0]
        # the mean over all ranks: with equal shards, the loss of the global batch (the same curve for any world size)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=_world_size() > 1)
        for name, frac in fractions.items():
            self.log(f"train/frac_{name}", frac, batch_size=bs)
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """A NaN/Inf loss on any rank stops every rank (no rank is left waiting in an all-reduce) with the step and
        the batch's (episode id, t) pairs, instead of training on."""
        finite = torch.isfinite(loss.detach()).float()
        if _world_size() > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if bool(finite > 0):
            return
        where = ""
        if "episode" in batch and "t" in batch:
            pairs = ", ".join(f"({int(e)}, {int(t)})" for e, t in zip(batch["episode"].tolist(), batch["t"].tolist()))
            where = f"; this rank's samples (episode id, t): {pairs}"
        raise NonFiniteLossError(
            f"training stopped at step {self.global_step}: the loss is {float(loss.detach())} on rank "
            f"{self.global_rank}{where} (check those episodes for NaN/Inf, or lower task.optim.lr)")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.backbone_ema is not None:
            # inside the step, so the checkpoint written at this step's end holds this update (an exact resume);
            # Lightning counts the step after this hook returns, hence + 1
            self.backbone_ema.update(self.model.backbone, step=self.global_step + 1)

    def _score(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        """Loss on every batch; sampled-prediction L1 errors on the first ``val_sample_batches``."""
        loss, _ = self._loss(batch)
        bs = batch["proprio"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        if batch_idx >= self.val_sample_batches:
            return
        n = len(self.model.spec.cameras)
        pred = self.inference_model.predict(batch["images"][:, :n], batch["proprio"], list(batch["instruction"]),
                                            seed=batch_idx)
        self.val_action_l1.update((pred["actions"] - batch["actions"]).abs().mean(dim=(1, 2)))
        self.val_future_proprio_l1.update((pred["future_proprio"] - batch["future_proprio"]).abs().mean(dim=1))
        if "value_raw" in pred and "value" in batch:
            self.val_value_l1.update((pred["value_raw"] - batch["value"]).abs())

    def _log_sampled_errors(self, stage: str) -> None:
        for name, metric in (("action_l1", self.val_action_l1), ("future_proprio_l1", self.val_future_proprio_l1),
                             ("value_l1", self.val_value_l1)):
            if metric.update_count:
                self.log(f"{stage}/{name}", metric.compute(), prog_bar=name == "action_l1")
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_sampled_errors("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_sampled_errors("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Held-out samples -> the sampled action chunk and future proprio (env units), the value in [0, 1], and the
        sampled ``latents`` (for decoding imagined future frames), beside the recorded targets."""
        model = self.inference_model
        n = len(model.spec.cameras)
        pred = model.predict(batch["images"][:, :n], batch["proprio"], list(batch["instruction"]), seed=batch_idx)
        out = {
            "actions": model.unnormalize(pred["actions"].float(), "actions"),
            "target_actions": model.unnormalize(batch["actions"].float(), "actions"),
            "future_proprio": model.unnormalize(pred["future_proprio"].float(), "proprio"),
            "latents": pred["latents"],
        }
        if "value" in pred:
            out["value"] = pred["value"].float()
        for key in ("episode", "t"):
            if key in batch:
                out[key] = batch[key]
        return out

    def _fused_optimizer(self) -> bool:
        """``optim.fused``, unless the Trainer clips gradients under mixed precision (``OptimConfig``)."""
        trainer = self._trainer  # None outside a Trainer
        clipping_mixed = (trainer is not None and "mixed" in str(trainer.precision)
                          and bool(trainer.gradient_clip_val))
        return self.optim_cfg.fused and not clipping_mixed

    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), eps=cfg.eps,
                                **({"fused": True} if self._fused_optimizer() else {}))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lambda_linear(s, cfg.warmup_steps, cfg.decay_steps, cfg.decay_to, cfg.tail)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
