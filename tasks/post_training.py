"""Cosmos Policy post-training: one denoising objective trains policy, world model and value function.

The task composes the registered components (backbone adapter, image frame encoder, vector frame encoder, value
head-as-frame, text encoder) and owns the latent-sequence logic shared by training, validation, the policy and the
planner:

    batch -> slots of images -> image encoder -> latents (B, C, T, h, w) -> vectors written into their frames
          -> sample-type conditioning mask -> σ ~ hybrid × √T -> rectified-flow loss on the other frames

Validation adds what the official code lacks: from each held-out sample's current state the policy samples the
action chunk, future proprio and value, and their L1 errors (on the normalized [-1, 1] scale) are logged.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torchmetrics

from cosmos_lit import diffusion
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL, LatentLayout
from cosmos_lit.registry import ConfigError, build, register
from cosmos_lit.spec import DataSpec

DEFAULT_OPTIM: dict[str, Any] = dict(
    lr=1e-4, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, warmup_steps=1000, decay_steps=30000, decay_to=0.3, tail=0.06
)
DEFAULT_SIGMA: dict[str, Any] = dict(p_mean=math.log(4.0), p_std=1.2, p_lognormal=0.7, u_min=1.0, u_max=85.0, adjust_video_noise=True)
DEFAULT_SAMPLING: dict[str, Any] = dict(num_steps=5, sigma_max=80.0, sigma_min=4.0, solver="2ab")


def lambda_linear(step: int, warmup_steps: int, decay_steps: int, decay_to: float, tail: float) -> float:
    """LR multiplier: 1e-6 → 1 linearly over warm-up, → ``decay_to`` linearly at ``decay_steps``, then ``tail``."""
    if step < warmup_steps:
        return 1e-6 + (1.0 - 1e-6) * step / max(1, warmup_steps)
    if step < decay_steps:
        return 1.0 + (decay_to - 1.0) * (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return tail


def _merge(defaults: dict[str, Any], given: dict[str, Any] | None, path: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = [k for k in given if k not in defaults]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path}.{unknown[0]}: unknown key{hint}; accepted: {', '.join(defaults)}")
    return {**defaults, **given}


@register("task", "cosmos_policy")
class CosmosPolicyTask(L.LightningModule):
    """Cosmos Policy post-training module.

    Args:
        model: config nodes ``backbone``, ``image_encoder``, ``vector_encoder``, ``value_head``, ``text_encoder``.
        spec: the DataModule's ``DataSpec`` as a dict (shapes of everything).
        statistics: dataset statistics (official keys ``actions_min`` ...), stored so a checkpoint is self-contained.
        planner: planner config node (``name: none`` for the direct policy).
        optim: AdamW + LambdaLinear schedule settings (defaults: lr 1e-4, wd 0.1, betas 0.9/0.99, warm-up 1000,
            decay to 0.3 at 30K, then 0.06).
        sigma: training σ distribution (defaults: Cosmos Policy's hybrid log-normal/uniform × √T).
        sampling: sampler for validation and the policy (defaults: 5 steps, σ 80 → 4, "2ab").
        mask_current_state_for_value: value samples learn V(s') from s' alone (the ALOHA planning model).
        val_sample_batches: validation batches (per epoch) on which sampled predictions are scored; the loss is
            computed on every validation batch.
        cache_latents: keep the image latents of every (episode, frame, camera) seen in training in memory and
            reuse them (C·h·w floats each). Only valid when each image is encoded alone
            (``sequence_form: per_image``) and without augmentation; a CPU speed-up for small runs.
        ema_decay: keep an exponential moving average of the backbone (timm ``ModelEmaV3``, decay warmed up as
            1 − (1 + step)^(−2/3), capped at this value) and sample with it in validation, the policy and the
            planner; saved in checkpoints. ``None`` (default) = no EMA, as the official recipe. Costs one more copy
            of the backbone's weights.
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
        planner: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        sigma: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
        mask_current_state_for_value: bool = False,
        val_sample_batches: int = 2,
        cache_latents: bool = False,
        ema_decay: float | None = None,
        future_image_loss_weight: float = 1.0,
        proprio_noise_std: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.spec = DataSpec.from_dict(dict(spec))
        self.statistics = statistics or {}
        self.optim_cfg = _merge(DEFAULT_OPTIM, optim, "task.optim")
        self.sampling_cfg = _merge(DEFAULT_SAMPLING, sampling, "task.sampling")
        self.sigma_sampler = diffusion.HybridSigmaSampler(**_merge(DEFAULT_SIGMA, sigma, "task.sigma"))
        self.mask_current_state_for_value = mask_current_state_for_value
        self.val_sample_batches = val_sample_batches
        if not float(future_image_loss_weight) >= 0.0:
            raise ConfigError(f"task.future_image_loss_weight: expected a number >= 0, got {future_image_loss_weight}")
        self.future_image_loss_weight = float(future_image_loss_weight)
        if not float(proprio_noise_std) >= 0.0:
            raise ConfigError(f"task.proprio_noise_std: expected a number >= 0, got {proprio_noise_std}")
        self.proprio_noise_std = float(proprio_noise_std)

        model = dict(model)
        for key in ("backbone", "image_encoder"):
            if key not in model:
                raise ConfigError(f"model.{key}: missing (choose one with model/{key}=...)")
        self.backbone = build(model["backbone"], "backbone", path="model.backbone")
        self.backbone_ema = None
        if ema_decay is not None:
            if not 0.0 < float(ema_decay) < 1.0:
                raise ConfigError(f"task.ema_decay: expected a number in (0, 1) or null, got {ema_decay}")
            from timm.utils import ModelEmaV3

            self.backbone_ema = ModelEmaV3(self.backbone, decay=float(ema_decay), use_warmup=True)
            self.backbone_ema.requires_grad_(False)
        self._ema_step = -1
        self.image_encoder = build(model["image_encoder"], "image_encoder", path="model.image_encoder")
        self.vector_encoder = build(model.get("vector_encoder") or {"name": "tiled"}, "vector_encoder", path="model.vector_encoder")
        self.value_head = build(model.get("value_head") or {"name": "frame"}, "value_head", path="model.value_head")
        text_node = dict(model.get("text_encoder") or {"name": "hash"})
        if text_node.get("name") == "hash" and text_node.get("dim") is None:
            text_node["dim"] = self.backbone.text_dim  # the tiny embedder simply matches the backbone
        self.text_encoder = build(text_node, "text_encoder", path="model.text_encoder")
        if getattr(self.text_encoder, "dim", self.backbone.text_dim) != self.backbone.text_dim:
            raise ConfigError(
                f"model.text_encoder.dim: {self.text_encoder.dim} does not match the backbone's text_embed_dim "
                f"{self.backbone.text_dim}"
            )
        if self.image_encoder.latent_channels != self.backbone.latent_channels:
            raise ConfigError(
                f"model.image_encoder: {self.image_encoder.latent_channels} latent channels, the backbone expects "
                f"{self.backbone.latent_channels}"
            )
        self.layout = LatentLayout(cameras=self.spec.cameras, has_value=self.spec.has_value and self.value_head.enabled)
        h, w = self.image_encoder.latent_hw(self.spec.image_size)
        self.frame_shape = (self.image_encoder.latent_channels, h, w)
        need = self.spec.chunk_size * self.spec.action_dim
        if need > math.prod(self.frame_shape):
            raise ConfigError(
                f"data.chunk_size: an action chunk of {self.spec.chunk_size}x{self.spec.action_dim} = {need} values does "
                f"not fit one latent frame of {math.prod(self.frame_shape)} elements {self.frame_shape}; use a larger "
                f"data.image_size or a smaller chunk"
            )
        self.planner = build(planner or {"name": "none"}, "planner", path="planner")
        if cache_latents and getattr(self.image_encoder, "sequence_form", None) != "per_image":
            raise ConfigError("task.cache_latents: needs model.image_encoder.sequence_form=per_image (in the faithful "
                              "form a slot's latent depends on the slots before it)")
        self.cache_latents = cache_latents
        self._latent_cache: dict[tuple[int, int, int], torch.Tensor] = {}

        self.val_action_l1 = torchmetrics.MeanMetric()
        self.val_future_proprio_l1 = torchmetrics.MeanMetric()
        self.val_value_l1 = torchmetrics.MeanMetric()

    # ---------------------------------------------------------------- latent sequence

    def slot_images(self, current: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        """Arrange camera images into the T−1 non-blank slots; vector slots (and missing futures) get black images.

        Args:
            current: (B, N, 3, S, S) current camera images in [-1, 1].
            future: (B, N, 3, S, S) future images, or None at inference.

        Returns:
            (B, T−1, 3, S, S).
        """
        b, n = current.shape[:2]
        lay = self.layout
        slots = current.new_full((b, lay.num_frames - 1, *current.shape[2:]), -1.0)
        for i in range(n):
            slots[:, lay.current_camera(i) - 1] = current[:, i]
            if future is not None:
                slots[:, lay.future_camera(i) - 1] = future[:, i]
        return slots

    def inject(self, latents: torch.Tensor, proprio: torch.Tensor | None = None, actions: torch.Tensor | None = None,
               future_proprio: torch.Tensor | None = None, value: torch.Tensor | None = None) -> torch.Tensor:
        """Write normalized vectors into their latent frames (in place on a copy). Shapes: (B, P), (B, K, A), (B,)."""
        x = latents.clone()
        lay, fs = self.layout, self.frame_shape
        if proprio is not None:
            x[:, :, lay.current_proprio] = self.vector_encoder.write(proprio.to(x.dtype), fs)
        if actions is not None:
            x[:, :, lay.action] = self.vector_encoder.write(actions.to(x.dtype), fs)
        if future_proprio is not None:
            x[:, :, lay.future_proprio] = self.vector_encoder.write(future_proprio.to(x.dtype), fs)
        if value is not None and lay.has_value:
            x[:, :, lay.value] = self.value_head.write(value.to(x.dtype), fs)
        return x

    def read_outputs(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Read action chunk (B, K, A), future proprio (B, P), value on [-1, 1] and [0, 1] from sampled latents."""
        lay, spec = self.layout, self.spec
        out = {
            "actions": self.vector_encoder.read(latents[:, :, lay.action], (spec.chunk_size, spec.action_dim)),
            "future_proprio": self.vector_encoder.read(latents[:, :, lay.future_proprio], (spec.proprio_dim,)),
        }
        if lay.has_value:
            out["value_raw"] = self.value_head.read_raw(latents[:, :, lay.value])
            out["value"] = self.value_head.read(latents[:, :, lay.value])
        return out

    def encode_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Training sample -> clean latents x0 (B, C, T, h, w) with every vector injected."""
        n = len(self.spec.cameras)
        images = batch["images"]
        if self.cache_latents:
            latents = self._cached_latents(batch)
        else:
            latents = self.image_encoder.encode(self.slot_images(images[:, :n], images[:, n:]))
        return self.inject(latents, batch["proprio"], batch["actions"], batch["future_proprio"], batch.get("value"))

    def _cached_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per-image latents from the cache (encoding only the images not seen before), assembled into slots."""
        if "future_t" not in batch or bool(batch.get("augmented", torch.tensor(False)).any()):
            raise ConfigError("task.cache_latents: batches must carry 'episode', 't', 'future_t' and be unaugmented "
                              "(set data.augment=false)")
        images, lay = batch["images"], self.layout
        n, b = len(self.spec.cameras), images.shape[0]
        keys = [[(int(e), int(t), i) for i in range(n)] + [(int(e), int(f), i) for i in range(n)]
                for e, t, f in zip(batch["episode"], batch["t"], batch["future_t"])]
        missing = {k: (j, c) for j, row in enumerate(keys) for c, k in enumerate(row) if k not in self._latent_cache}
        if missing:
            new = self.image_encoder.encode_images(torch.stack([images[j, c] for j, c in missing.values()]))
            for k, lat in zip(missing, new):
                self._latent_cache[k] = lat.detach().cpu()
        if "black" not in self.__dict__:
            size = self.spec.image_size
            self.black = self.image_encoder.encode_images(images.new_full((1, 3, size, size), -1.0))[0].cpu()
        frames = [self.black] * lay.num_frames
        out = []
        for row in keys:
            f = list(frames)
            for i in range(n):
                f[lay.current_camera(i)] = self._latent_cache[row[i]]
                f[lay.future_camera(i)] = self._latent_cache[row[n + i]]
            out.append(torch.stack(f, dim=1))
        return torch.stack(out).to(images.device)

    @property
    def sampling_backbone(self) -> torch.nn.Module:
        """The network that samples (validation, policy, planner): the EMA copy when ``ema_decay`` is set."""
        return self.backbone if self.backbone_ema is None else self.backbone_ema.module

    def velocity_fn(self, text: torch.Tensor, backbone: torch.nn.Module | None = None) -> diffusion.VelocityFn:
        net = self.backbone if backbone is None else backbone
        return lambda net_in, timesteps, cond_mask: net(net_in, timesteps, cond_mask, text)

    def sample(self, x0_cond: torch.Tensor, cond_mask: torch.Tensor, text: torch.Tensor, num_steps: int | None = None,
               seed: int | None = None) -> torch.Tensor:
        """Sample the non-conditioning frames (sampler settings from ``sampling``)."""
        cfg = dict(self.sampling_cfg)
        if num_steps is not None:
            cfg["num_steps"] = num_steps
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(x0_cond.shape, generator=gen).to(x0_cond.device)
        return diffusion.sample(self.velocity_fn(text, self.sampling_backbone), x0_cond, cond_mask, noise=noise, **cfg)

    def policy_condition(self, current_images: torch.Tensor, proprio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation -> (latents with the policy's conditioning frames filled, condition mask (B, T))."""
        latents = self.image_encoder.encode(self.slot_images(current_images))
        latents = self.inject(latents, proprio=proprio)
        mask = self.layout.condition_mask(torch.full((latents.shape[0],), POLICY, device=latents.device))
        return latents, mask

    @torch.no_grad()
    def predict_from_observation(self, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
                                 num_steps: int | None = None, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Direct policy: normalized observation -> normalized predictions (actions (B, K, A), future proprio, value).

        Also returns the sampled ``latents`` (B, C, T, h, w) so callers can decode imagined future images.
        """
        text = self.text_encoder(instructions)
        cond, mask = self.policy_condition(current_images, proprio)
        latents = self.sample(cond, mask, text, num_steps=num_steps, seed=seed)
        return {**self.read_outputs(latents), "latents": latents}

    # ---------------------------------------------------------------- Lightning hooks

    def on_fit_start(self) -> None:
        enc = self.image_encoder
        if getattr(enc, "normalization", None) == "data" and not bool(enc.calibrated):
            batch = next(iter(self.trainer.datamodule.train_dataloader()))
            n = len(self.spec.cameras)
            images = batch["images"][:32].to(self.device)
            enc.calibrate(self.slot_images(images[:, :n], images[:, n:]))

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = self.encode_batch(batch)
        sample_type = batch["sample_type"].long()
        cond_mask = self.layout.condition_mask(sample_type, self.mask_current_state_for_value)
        loss_mask = self.layout.loss_mask(sample_type, self.mask_current_state_for_value)
        if self.future_image_loss_weight != 1.0:
            future = [self.layout.future_camera(i) for i in range(self.layout.num_cameras)]
            loss_mask[:, future] = loss_mask[:, future] * self.future_image_loss_weight
        sigma = self.sigma_sampler(x0.shape[0], self.layout.num_frames, device=x0.device)
        noise = torch.randn_like(x0)
        text = self.text_encoder(list(batch["instruction"]))
        loss, _ = diffusion.diffusion_loss(self.velocity_fn(text), x0, cond_mask, sigma, noise, loss_mask)
        fractions = {
            name: (sample_type == code).float().mean() for name, code in (("policy", POLICY), ("world_model", WORLD_MODEL), ("value", VALUE))
        }
        return loss, fractions

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.proprio_noise_std > 0:
            proprio = batch["proprio"]
            batch = {**batch, "proprio": proprio + self.proprio_noise_std * torch.randn_like(proprio)}
        loss, fractions = self._loss(batch)
        bs = batch["proprio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, frac in fractions.items():
            self.log(f"train/frac_{name}", frac, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # once per optimizer step (global_step only advances on those, also under gradient accumulation)
        if self.backbone_ema is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.backbone_ema.update(self.backbone, step=self.global_step)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, _ = self._loss(batch)
        bs = batch["proprio"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        if batch_idx >= self.val_sample_batches:
            return
        n = len(self.spec.cameras)
        pred = self.predict_from_observation(batch["images"][:, :n], batch["proprio"], list(batch["instruction"]),
                                             seed=batch_idx)
        self.val_action_l1.update((pred["actions"] - batch["actions"]).abs().mean(dim=(1, 2)))
        self.val_future_proprio_l1.update((pred["future_proprio"] - batch["future_proprio"]).abs().mean(dim=1))
        if "value_raw" in pred and "value" in batch:
            self.val_value_l1.update((pred["value_raw"] - batch["value"]).abs())

    def on_validation_epoch_end(self) -> None:
        for name, metric in (("val/action_l1", self.val_action_l1), ("val/future_proprio_l1", self.val_future_proprio_l1),
                             ("val/value_l1", self.val_value_l1)):
            if metric.update_count:
                self.log(name, metric.compute(), prog_bar=name == "val/action_l1")
            metric.reset()

    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: lambda_linear(s, cfg["warmup_steps"], cfg["decay_steps"], cfg["decay_to"], cfg["tail"]),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
