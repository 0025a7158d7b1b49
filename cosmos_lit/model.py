"""The Cosmos Policy model: one network that is a policy, a world model and a value function.

``CosmosPolicyModel`` is a plain ``nn.Module`` built from the ``model`` config (one node per component) and the
DataModule's ``DataSpec``. It owns the components, the latent layout derived from the spec, latent injection and
read-out, and sampling; training (``tasks/``), the policy object, the planners, evaluation and serving all talk to it::

    model = CosmosPolicyModel({"backbone": {"name": "cosmos_predict2_tiny"}, "image_encoder": {"name": "wan2.1_tiny"}},
                              spec=DataSpec(cameras=("top",), proprio_dim=14, action_dim=14, chunk_size=50))
    out = model.predict(images, proprio, ["transfer the cube"])   # images (B, N, 3, S, S) in [-1, 1], proprio (B, P)
    out["actions"]                                                 # (B, K, A) on the normalized [-1, 1] scale

Everything here works on normalized values; ``CosmosPolicy`` (``cosmos_lit.policy``) adds the observation
processing and un-normalization.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cosmos_lit import diffusion
from cosmos_lit.components import Backbone, FrameEncoder, TextEncoder, ValueHead, VectorEncoder, check_component
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL, LatentLayout
from cosmos_lit.models.adapters import apply_adapter
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.spec import DataSpec

COMPONENT_KEYS = ("backbone", "image_encoder", "vector_encoder", "value_head", "text_encoder")


@dataclass(frozen=True)
class SamplingConfig:
    """The sampler's settings (the official policy's): ``num_steps`` denoising steps from σ_max to σ_min with the
    ``"2ab"`` (second-order Adams–Bashforth) solver. ``num_steps`` is the default of every call that passes none.
    ``official_step_count``: count steps as the official sampler (2 steps = the single evaluation of 1 step;
    ``cosmos_lit.diffusion.sample``); false gives 2 steps two evaluations, as this package did before."""

    num_steps: int = 5
    sigma_max: float = 80.0
    sigma_min: float = 4.0
    solver: str = "2ab"
    official_step_count: bool = True

    @classmethod
    def from_node(cls, node: dict[str, Any] | None, path: str = "model.sampling") -> "SamplingConfig":
        from cosmos_lit.registry import bind_kwargs

        node = dict(node or {})
        bind_kwargs(cls, node, path)
        cfg = cls(**node)
        if int(cfg.num_steps) < 1:
            raise ConfigError(f"{path}.num_steps: expected an integer >= 1, got {cfg.num_steps}")
        return cfg


# the model's options beside its components (the keys of a ``model`` config node that are not components)
MODEL_OPTIONS = ("sampling", "mask_current_state_for_value", "mask_future_state_for_value")


class CosmosPolicyModel(nn.Module):
    """Components + latent layout + sampling.

    Args:
        components: config nodes ``backbone``, ``image_encoder`` (required), ``vector_encoder`` (default ``tiled``),
            ``value_head`` (default ``frame``), ``text_encoder`` (default ``hash`` at the backbone's text width),
            and ``adapter`` (default none; ``name: lora``: peft LoRA layers in the backbone and every other weight
            frozen, ``cosmos_lit.models.adapters``).
        spec: the DataModule's ``DataSpec`` (or its dict).
        statistics: dataset statistics (official keys ``actions_min`` ...), kept so the model is self-contained.
        sampling: ``SamplingConfig`` keys (default: 5 steps, σ 80 → 4, "2ab").
        mask_current_state_for_value: value samples see s' alone: V(s') (the official planning model's setting).
        mask_future_state_for_value: value samples see (s, a) alone: the model-free Q(s, a) (the official
            ``mask_future_state_for_qvalue_prediction``; the paper finds V(s') plans better). Not with the former.
    """

    def __init__(self, components: dict[str, Any], spec: DataSpec | dict[str, Any], statistics: dict[str, Any] | None = None,
                 sampling: dict[str, Any] | None = None, mask_current_state_for_value: bool = False,
                 mask_future_state_for_value: bool = False):
        super().__init__()
        components = dict(components)
        adapter = components.pop("adapter", None)
        unknown = [k for k in components if k not in COMPONENT_KEYS]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], COMPONENT_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"model.{unknown[0]}: unknown component{hint}; accepted: {', '.join(COMPONENT_KEYS)}, adapter, "
                              f"{', '.join(MODEL_OPTIONS)}")
        for key in ("backbone", "image_encoder"):
            if not components.get(key):
                raise ConfigError(f"model.{key}: missing (choose one with model/{key}=...)")
        self.spec = spec if isinstance(spec, DataSpec) else DataSpec.from_dict(dict(spec))
        self.statistics: dict[str, Any] = dict(statistics or {})
        self.sampling = SamplingConfig.from_node(sampling)
        self.mask_current_state_for_value = bool(mask_current_state_for_value)
        self.mask_future_state_for_value = bool(mask_future_state_for_value)
        if self.mask_current_state_for_value and self.mask_future_state_for_value:
            raise ConfigError("model.mask_current_state_for_value and model.mask_future_state_for_value: one or the "
                              "other (V(s') sees s' alone, Q(s, a) sees s and a alone)")

        self.backbone = build(components["backbone"], "backbone", path="model.backbone")
        check_component(self.backbone, Backbone, "model.backbone")
        self.image_encoder = build(components["image_encoder"], "image_encoder", path="model.image_encoder")
        check_component(self.image_encoder, FrameEncoder, "model.image_encoder")
        self.vector_encoder = build(components.get("vector_encoder") or {"name": "tiled"}, "vector_encoder",
                                    path="model.vector_encoder")
        check_component(self.vector_encoder, VectorEncoder, "model.vector_encoder")
        self.value_head = build(components.get("value_head") or {"name": "frame"}, "value_head", path="model.value_head")
        if self.value_head.enabled:
            check_component(self.value_head, ValueHead, "model.value_head")
        text_node = dict(components.get("text_encoder") or {"name": "hash"})
        if text_node.get("name") == "hash" and text_node.get("dim") is None:
            text_node["dim"] = self.backbone.text_dim  # the tiny embedder simply matches the backbone
        self.text_encoder = build(text_node, "text_encoder", path="model.text_encoder")
        check_component(self.text_encoder, TextEncoder, "model.text_encoder")
        if self.text_encoder.dim != self.backbone.text_dim:
            raise ConfigError(f"model.text_encoder.dim: {self.text_encoder.dim} does not match the backbone's "
                              f"text_embed_dim {self.backbone.text_dim}")
        if self.image_encoder.latent_channels != self.backbone.latent_channels:
            raise ConfigError(f"model.image_encoder: {self.image_encoder.latent_channels} latent channels, the backbone "
                              f"expects {self.backbone.latent_channels}")

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
        # last, once every weight exists: LoRA layers in the backbone, only they train (None: no adapter, or merged)
        self.adapter = apply_adapter(self, adapter)

    # ---------------------------------------------------------------- construction

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model (without weights): plain containers only."""
        return {"sampling": asdict(self.sampling), "mask_current_state_for_value": self.mask_current_state_for_value,
                "mask_future_state_for_value": self.mask_future_state_for_value,
                "spec": self.spec.to_dict(), "statistics": self.statistics}

    def with_backbone(self, backbone: nn.Module) -> "CosmosPolicyModel":
        """A view of this model that samples with ``backbone`` (e.g. an EMA copy); every other component is shared."""
        view = copy.copy(self)
        view._modules = dict(self._modules)
        view._modules["backbone"] = backbone
        return view

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ---------------------------------------------------------------- env units <-> model units

    def statistics_of(self, group: str) -> dict[str, Any]:
        """``{group}_min`` / ``{group}_max`` cut to the model's dims (``group``: "actions" or "proprio"), with the
        rescale options when the statistics carry them."""
        from cosmos_lit.normalization import RESCALE_KEY

        lo, hi = f"{group}_min", f"{group}_max"
        if lo not in self.statistics or hi not in self.statistics:
            raise ConfigError(f"model statistics: expected {lo} and {hi} (the dataset statistics the model was trained with)")
        dim = self.spec.action_dim if group == "actions" else self.spec.proprio_dim
        # the model's action may be a prefix of the dataset's (RoboCasa: 7 of 12)
        out: dict[str, Any] = {lo: list(self.statistics[lo])[:dim], hi: list(self.statistics[hi])[:dim]}
        if RESCALE_KEY in self.statistics:
            out[RESCALE_KEY] = dict(self.statistics[RESCALE_KEY])
        return out

    def normalize_proprio(self, proprio: Any) -> Any:
        """Proprio in env units (..., P) -> [-1, 1] (numpy or torch)."""
        from cosmos_lit.normalization import normalize

        return normalize(proprio, self.statistics_of("proprio"), "proprio")

    def unnormalize(self, x: Any, group: str) -> Any:
        """Model units [-1, 1] -> env units, for ``group`` ``"actions"`` (..., A) or ``"proprio"`` (..., P)."""
        from cosmos_lit.normalization import unnormalize

        return unnormalize(x, self.statistics_of(group), group)

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
        """Write normalized vectors into their latent frames of a copy of ``latents`` (B, C, T, h, w).

        Shapes: proprio (B, P), actions (B, K, A), future_proprio (B, P), value (B,) on [-1, 1].
        """
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
        """Sampled latents -> ``actions`` (B, K, A), ``future_proprio`` (B, P) normalized, and with a value frame
        ``value_raw`` (B,) on [-1, 1] and ``value`` (B,) in [0, 1]."""
        lay, spec = self.layout, self.spec
        out = {
            "actions": self.vector_encoder.read(latents[:, :, lay.action], (spec.chunk_size, spec.action_dim)),
            "future_proprio": self.vector_encoder.read(latents[:, :, lay.future_proprio], (spec.proprio_dim,)),
        }
        if lay.has_value:
            out["value_raw"] = self.value_head.read_raw(latents[:, :, lay.value])
            out["value"] = self.value_head.read(latents[:, :, lay.value])
        return out

    def encode(self, current: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        """Camera images (B, N, 3, S, S), and optionally their futures, -> latents (B, C, T, h, w) without vectors.

        In the ``per_image`` form a slot's latent depends on its image alone, so only the camera images and one black
        image are encoded (not the black vector and missing-future slots: 2 of 7 images per ALOHA query instead of
        7); the result equals ``image_encoder.encode(slot_images(current, future))`` up to float rounding.
        """
        encoder = self.image_encoder
        if encoder.sequence_form != "per_image":
            return encoder.encode(self.slot_images(current, future))
        if not bool(encoder.calibrated):
            raise RuntimeError("image encoder with normalization='data' used before calibrate(images)")
        b, n = current.shape[:2]
        images = current if future is None else torch.cat([current, future], dim=1)  # (B, N or 2N, 3, S, S)
        black = images.new_full((1, *images.shape[2:]), -1.0)
        lat = encoder.encode_images(torch.cat([images.flatten(0, 1), black]))  # (B·N' + 1, C, h, w)
        cams = lat[:-1].view(b, images.shape[1], *lat.shape[1:])
        out = lat[-1][None, :, None].repeat(b, 1, self.layout.num_frames, 1, 1)  # every frame black ...
        for i in range(n):  # ... but the camera slots
            out[:, :, self.layout.current_camera(i)] = cams[:, i]
            if future is not None:
                out[:, :, self.layout.future_camera(i)] = cams[:, n + i]
        return out

    def calibrate(self, current: torch.Tensor, future: torch.Tensor) -> None:
        """Fit a ``normalization: data`` image encoder on training images (B, N, 3, S, S); no-op for the others."""
        if self.image_encoder.normalization == "data" and not bool(self.image_encoder.calibrated):
            self.image_encoder.calibrate(self.slot_images(current, future))

    def condition_mask(self, sample_type: int | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """(B, T) conditioning mask of a sample type (``POLICY`` / ``WORLD_MODEL`` / ``VALUE``, or (B,) codes)."""
        if not isinstance(sample_type, torch.Tensor):
            sample_type = torch.full((int(batch_size or 1),), int(sample_type), device=self.device)
        return self.layout.condition_mask(sample_type.long(), self.mask_current_state_for_value,
                                          self.mask_future_state_for_value)

    def loss_mask(self, sample_type: torch.Tensor) -> torch.Tensor:
        """(B, T) loss weights of training samples of types ``sample_type`` (``LatentLayout.loss_mask``)."""
        return self.layout.loss_mask(sample_type.long(), self.mask_current_state_for_value,
                                     self.mask_future_state_for_value)

    # ---------------------------------------------------------------- sampling

    def velocity_fn(self, text: torch.Tensor) -> diffusion.VelocityFn:
        net = self.backbone
        return lambda net_in, timesteps, cond_mask: net(net_in, timesteps, cond_mask, text)

    def sample(self, x0_cond: torch.Tensor, cond_mask: torch.Tensor, text: torch.Tensor, num_steps: int | None = None,
               seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Sample the non-conditioning frames of ``x0_cond`` (B, C, T, h, w) given ``cond_mask`` (B, T).

        ``num_steps``: denoising steps (None: ``sampling.num_steps``; see ``diffusion.sample`` for how they count).
        ``seed`` seeds the initial noise, drawn on the CPU so a seed gives the same sample on every device:

        - an ``int``: one generator for the whole (B, ...) noise tensor (rows differ, row b depends on b);
        - a sequence of B ints: each row r draws its (1, C, T, h, w) noise from its own generator seeded ``seed[r]``,
          so a row's sample does not depend on the rest of the batch: B rows in one call give the rows of B calls
          with one row each and ``seed=seed[r]`` (``[s]`` and ``s`` are the same noise for a single row);
        - None: the global CPU generator.
        """
        cfg = asdict(self.sampling)
        if num_steps is not None:
            cfg["num_steps"] = int(num_steps)
        noise = self.initial_noise(x0_cond.shape, seed).to(x0_cond.device)
        return diffusion.sample(self.velocity_fn(text), x0_cond, cond_mask, noise=noise, **cfg)

    @staticmethod
    def initial_noise(shape: Sequence[int], seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Standard normal CPU noise of ``shape`` (B, ...) for a ``sample`` seed (an int, B ints, or None)."""
        shape = tuple(int(n) for n in shape)
        if seed is None or isinstance(seed, (int, np.integer)):
            gen = torch.Generator(device="cpu").manual_seed(int(seed)) if seed is not None else None
            return torch.randn(shape, generator=gen)
        seeds = [int(s) for s in seed]
        if len(seeds) != shape[0]:
            raise ValueError(f"seed: expected one seed per batch row ({shape[0]}), got {len(seeds)}")
        if not seeds:
            return torch.empty(shape)
        gen = torch.Generator(device="cpu")
        return torch.cat([torch.randn((1, *shape[1:]), generator=gen.manual_seed(s)) for s in seeds])

    def policy_condition(self, current_images: torch.Tensor, proprio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation -> (latents with the policy's conditioning frames filled, condition mask (B, T))."""
        latents = self.inject(self.encode(current_images), proprio=proprio)
        return latents, self.condition_mask(POLICY, latents.shape[0])

    @torch.no_grad()
    def predict(self, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
                num_steps: int | None = None, seed: int | Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Direct policy (parallel decoding): normalized observation -> ``read_outputs`` of one sample + ``latents``.

        Args:
            current_images: (B, N, 3, S, S) in [-1, 1], cameras in ``spec.cameras`` order.
            proprio: (B, P) normalized.
            instructions: B strings.
        """
        text = self.text_encoder(instructions)
        cond, mask = self.policy_condition(current_images, proprio)
        latents = self.sample(cond, mask, text, num_steps=num_steps, seed=seed)
        return {**self.read_outputs(latents), "latents": latents}

    @torch.no_grad()
    def imagine(self, latents: torch.Tensor, instructions: list[str], num_steps: int | None = None,
                seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """World model: latents whose policy prefix and action frame are set -> sampled future frames (B, C, T, h, w)."""
        text = self.text_encoder(instructions)
        return self.sample(latents, self.condition_mask(WORLD_MODEL, latents.shape[0]), text, num_steps=num_steps, seed=seed)

    @torch.no_grad()
    def value(self, latents: torch.Tensor, instructions: list[str], num_steps: int | None = None,
              seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Value function: latents with the future state set -> predicted value (B,) in [0, 1]."""
        if not self.layout.has_value:
            raise ConfigError("model.value_head: this model has no value frame (model/value_head=frame)")
        text = self.text_encoder(instructions)
        out = self.sample(latents, self.condition_mask(VALUE, latents.shape[0]), text, num_steps=num_steps, seed=seed)
        return self.value_head.read(out[:, :, self.layout.value])

    @torch.no_grad()
    def decode_future_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the predicted future camera images of sampled latents: (B, N, S, S, 3) uint8."""
        lay = self.layout
        size = self.spec.image_size
        # undo latent injection: vector frames go back to the latents of their black placeholder images
        black = latents.new_full((latents.shape[0], lay.num_frames - 1, 3, size, size), -1.0)
        placeholders = self.image_encoder.encode(black)
        z = latents.clone()
        for f in lay.vector_frames:
            z[:, :, f] = placeholders[:, :, f]
        frames = self.image_encoder.decode(z)
        fut = torch.stack([frames[:, lay.future_camera(i)] for i in range(lay.num_cameras)], dim=1)
        return ((fut.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2)
