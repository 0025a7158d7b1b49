"""Backbone / encoder / value-head components, and swapping them by config."""

import pytest
import torch

from cosmos_lit.models.backbones import COSMOS_PREDICT2_2B
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.spec import DataSpec


def test_2b_backbone_builds_on_meta_with_the_exact_parameter_count():
    bb = build({"name": "cosmos_predict2_2b", "meta_init": True}, "backbone")
    n = sum(p.numel() for p in bb.parameters())
    assert n == 1_956_413_440
    assert all(p.is_meta for p in bb.parameters())
    assert bb.config["rope_scale"] == (1.0, 3.0, 3.0) and bb.config["num_layers"] == 28
    assert COSMOS_PREDICT2_2B["extra_pos_embed_type"] is None


def test_wan_vae_builds_on_meta_with_published_normalization():
    enc = build({"name": "wan2.1", "meta_init": True}, "image_encoder")
    n = sum(p.numel() for p in enc.parameters())
    assert 126_000_000 < n < 128_000_000
    assert enc.latents_mean.shape == (1, 16, 1, 1, 1) and abs(float(enc.latents_std[0, 0]) - 2.8184) < 1e-4


def test_tiny_backbone_forward_shapes_and_per_frame_timesteps():
    bb = build({"name": "cosmos_predict2_tiny"}, "backbone").eval()
    x = torch.randn(2, 16, 5, 8, 8)
    mask = torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    t = torch.rand(2, 5) * (1 - mask)
    out = bb(x, t, mask, torch.randn(2, 7, 32))
    assert out.shape == x.shape
    t2 = t.clone()
    t2[:, -1] += 0.3  # changing one frame's timestep changes the output (per-frame conditioning is wired)
    assert not torch.allclose(bb(x, t2, mask, torch.randn(2, 7, 32)), out)


def test_tiny_backbone_learnable_positions_start_as_random_unit_codes():
    """From scratch, the (t, h, w) position codes start as N(0, 1), not diffusers' zeros (bench_chunk_positions.py)."""
    torch.manual_seed(0)
    bb = build({"name": "cosmos_predict2_tiny", "extra_pos_embed_type": "learnable"}, "backbone")
    pe = bb.net.learnable_pos_embed
    for p in (pe.pos_emb_t, pe.pos_emb_h, pe.pos_emb_w):
        assert 0.9 < float(p.std()) < 1.1 and p.requires_grad
    # rows of a tiled frame are identical in content; the embedding tells them apart
    codes = pe(torch.zeros(1, 18, 2, 14, 14))[0].view(2, 7, 7, -1)
    assert (codes[0, 0, 0] - codes[0, 1, 0]).abs().max() > 0.1
    assert build({"name": "cosmos_predict2_tiny"}, "backbone").net.learnable_pos_embed is None  # factory default: RoPE only
    with pytest.raises(ConfigError, match="extra_pos_embed_type.*'learnable'.*'sinusoidal'"):
        build({"name": "cosmos_predict2_tiny", "extra_pos_embed_type": "sinusoidal"}, "backbone")


@pytest.mark.parametrize("extra_pos", [None, "learnable"])
def test_framewise_adaln_forward_equals_diffusers_forward(extra_pos):
    """The per-frame AdaLN path gives diffusers' output and gradients (non-zero AdaLN weights, per-frame t)."""
    from cosmos_lit.models.backbones import BackboneAdapter, COSMOS_PREDICT2_TINY

    torch.manual_seed(0)
    cfg = dict(COSMOS_PREDICT2_TINY, extra_pos_embed_type=extra_pos, max_size=(16, 32, 32))
    fast = BackboneAdapter(cfg, framewise_adaln=True)
    ref = BackboneAdapter(cfg, framewise_adaln=False)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialized projections would hide mistakes
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 5, 6, 8)
    mask = torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    t = torch.rand(2, 5) * (1 - mask)
    text = torch.randn(2, 7, 32)
    a, b = fast(x, t, mask, text), ref(x, t, mask, text)
    assert a.shape == b.shape == x.shape
    assert (a - b).abs().max() < 1e-5
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, pa), pb in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), name
    fast.net.enable_gradient_checkpointing()  # the 2B training path recomputes blocks in backward
    fast.zero_grad()
    fast(x, t, mask, text).square().mean().backward()
    for (name, pa), pb in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), name


def test_faithful_vs_per_image_sequence_forms():
    torch.manual_seed(0)
    slots = torch.rand(2, 6, 3, 32, 32) * 2 - 1
    faithful = build({"name": "wan2.1_tiny", "normalization": "none"}, "image_encoder")
    per_image = build({"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"}, "image_encoder")
    per_image.load_state_dict(faithful.state_dict())
    a, b = faithful.encode(slots), per_image.encode(slots)
    assert a.shape == b.shape == (2, 16, 7, 4, 4)
    # frame 0 (blank, encoded alone in both forms) agrees; later frames differ through the causal cache
    assert torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-5)
    assert not torch.allclose(a[:, :, 3], b[:, :, 3], atol=1e-3)
    assert faithful.decode(a).shape == (2, 7, 3, 32, 32)


def test_data_normalization_requires_calibration():
    enc = build({"name": "wan2.1_tiny"}, "image_encoder")
    with pytest.raises(RuntimeError, match="calibrate"):
        enc.encode(torch.zeros(1, 2, 3, 16, 16))
    enc.calibrate(torch.rand(4, 2, 3, 16, 16) * 2 - 1)
    lat = enc.encode(torch.rand(4, 2, 3, 16, 16) * 2 - 1)
    assert abs(lat[:, :, 1:].mean().item()) < 0.5


def test_value_head_reads_back_to_unit_interval():
    head = build({"name": "frame"}, "value_head")
    v = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    frame = head.write(v, (16, 4, 4))
    assert torch.allclose(head.read(frame), torch.tensor([0.0, 0.5, 0.75, 1.0]))


def _task(**model_overrides):
    spec = DataSpec(cameras=("top",), proprio_dim=4, action_dim=3, chunk_size=8, image_size=32)
    model = {"backbone": {"name": "cosmos_predict2_tiny"}, "image_encoder": {"name": "wan2.1_tiny", "normalization": "none"}}
    model.update(model_overrides)
    stats = {f"{g}_{s}": [0.0 if s == "min" else 1.0] * d for g, d in (("actions", 3), ("proprio", 4)) for s in ("min", "max")}
    return build({"name": "cosmos_policy"}, "task", model=model, spec=spec.to_dict(), statistics=stats)


def _batch():
    """Two samples (policy, world model) of the data contract for ``_task()``'s spec."""
    return {"images": torch.rand(2, 2, 3, 32, 32) * 2 - 1, "proprio": torch.rand(2, 4), "actions": torch.rand(2, 8, 3),
            "future_proprio": torch.rand(2, 4), "value": torch.rand(2), "sample_type": torch.tensor([0, 1]),
            "instruction": ["a", "b"]}


def test_value_head_none_removes_the_value_frame():
    assert _task().model.layout.num_frames == 7
    assert _task(value_head={"name": "none"}).model.layout.num_frames == 6


def test_text_dim_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="text_encoder.dim"):
        _task(text_encoder={"name": "hash", "dim": 16})


def test_chunk_that_does_not_fit_is_a_config_error():
    spec = DataSpec(cameras=("top",), proprio_dim=14, action_dim=14, chunk_size=50, image_size=16)
    with pytest.raises(ConfigError, match="does not fit one latent frame"):
        build({"name": "cosmos_policy"}, "task", model={"backbone": {"name": "cosmos_predict2_tiny"},
              "image_encoder": {"name": "wan2.1_tiny"}}, spec=spec.to_dict())


def test_best_of_n_planner_picks_among_candidates():
    task = _task().eval()
    planner = build({"name": "best_of_n", "num_candidates": 3, "num_futures": 2, "num_values": 2, "action_steps": 2},
                    "planner").attach(task.model)
    batch = {"images": torch.rand(2, 2, 3, 32, 32) * 2 - 1, "proprio": torch.zeros(2, 4), "instruction": ["a", "b"]}
    out = planner.predict_step(batch)
    assert out["actions"].shape == (2, 8, 3) and out["plan_scores"].shape == (2, 3)
    assert ((out["plan_scores"] >= 0) & (out["plan_scores"] <= 1)).all()
    assert out["plan_choice"].max() < 3


def test_latent_cache_matches_per_image_encoding_and_reuses_entries():
    spec = DataSpec(cameras=("a", "b"), proprio_dim=4, action_dim=3, chunk_size=8, image_size=32)
    model = {"backbone": {"name": "cosmos_predict2_tiny"},
             "image_encoder": {"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"}}
    task = build({"name": "cosmos_policy", "cache_latents": True}, "task", model=model, spec=spec.to_dict())
    b = 3
    batch = {"images": torch.rand(b, 4, 3, 32, 32) * 2 - 1, "episode": torch.tensor([0, 0, 1]),
             "t": torch.tensor([0, 5, 0]), "future_t": torch.tensor([8, 13, 8])}
    cached = task.latent_cache.latents(batch)
    direct = task.model.image_encoder.encode(task.model.slot_images(batch["images"][:, :2], batch["images"][:, 2:]))
    assert torch.allclose(cached, direct, atol=1e-5)
    assert len(task.latent_cache) == 12
    batch["images"] = torch.zeros_like(batch["images"])  # cached entries win: same keys, no re-encoding
    assert torch.equal(task.latent_cache.latents(batch), cached)
    batch["augmented"] = torch.tensor([True, False, False])
    with pytest.raises(ConfigError, match="unaugmented"):
        task.latent_cache.latents(batch)
    with pytest.raises(ConfigError, match="per_image"):
        build({"name": "cosmos_policy", "cache_latents": True}, "task", spec=spec.to_dict(),
              model={"backbone": {"name": "cosmos_predict2_tiny"}, "image_encoder": {"name": "wan2.1_tiny"}})


def test_dct_encoder_is_an_exact_block_transform():
    from cosmos_lit.models.dct_image_encoder import dct_matrix, zigzag

    d = dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=d.dtype), atol=1e-12)  # orthonormal basis
    assert zigzag()[:6] == [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2)]  # JPEG order
    slots = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    full = build({"name": "dct", "luma_coefficients": 64, "chroma_coefficients": 64, "normalization": "none"},
                 "image_encoder")
    lat = full.encode(slots)
    assert lat.shape == (2, 192, 4, 4, 4)
    assert torch.allclose(full.decode(lat)[:, 1:], slots, atol=1e-5)  # all coefficients kept: exact inverse
    # the DC luma coefficient of a patch is 8 x its mean luma
    luma = (0.299 * slots[:, 0, 0] + 0.587 * slots[:, 0, 1] + 0.114 * slots[:, 0, 2])[:, :8, :8].mean(dim=(-1, -2))
    assert torch.allclose(lat[:, 0, 1, 0, 0], 8 * luma, atol=1e-5)
    small = build({"name": "dct"}, "image_encoder")
    assert small.latent_channels == 16
    with pytest.raises(RuntimeError, match="calibrate"):
        small.encode(slots)
    small.calibrate(slots)
    z = small.encode(slots)[:, :, 1:]
    assert torch.allclose(z.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-4)
    # the kept-coefficient reconstruction is the least-squares one: re-encoding it gives the same coefficients
    assert torch.allclose(small.encode(small.decode(small.encode(slots))[:, 1:]), small.encode(slots), atol=1e-3)


def test_dct_encoder_config_errors():
    with pytest.raises(ConfigError, match="sequence_form"):
        build({"name": "dct", "sequence_form": "faithful"}, "image_encoder")
    with pytest.raises(ConfigError, match="luma_coefficients"):
        build({"name": "dct", "luma_coefficients": 0}, "image_encoder")
    with pytest.raises(ConfigError, match="12 latent channels, the backbone expects 16"):
        _task(image_encoder={"name": "dct", "chroma_coefficients": 2})


def test_dct_encoder_swaps_in_and_trains():
    task = _task(image_encoder={"name": "dct", "normalization": "none"})
    b = 2
    batch = {"images": torch.rand(b, 2, 3, 32, 32) * 2 - 1, "proprio": torch.rand(b, 4), "actions": torch.rand(b, 8, 3),
             "future_proprio": torch.rand(b, 4), "value": torch.rand(b), "sample_type": torch.tensor([0, 1]),
             "instruction": ["a", "b"]}
    loss, _ = task._loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in task.model.backbone.parameters() if p.requires_grad)


def test_channel_time_vector_encoder_swaps_in_and_trains():
    task = _task(vector_encoder={"name": "channel_time"})
    batch = _batch()
    x0 = task.encode_batch(batch)
    # 32 knots >= 8 steps: exact
    assert torch.allclose(task.model.read_outputs(x0)["actions"], batch["actions"], atol=1e-5)
    loss, _ = task._loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_future_image_loss_weight_scales_only_the_future_camera_frames():
    base = _task()
    batch = _batch()

    def loss(weight):
        task = build({"name": "cosmos_policy", "future_image_loss_weight": weight}, "task", model=base.hparams.model,
                     spec=base.hparams.spec, statistics=base.hparams.statistics)
        task.load_state_dict(base.state_dict())
        torch.manual_seed(0)  # same σ and noise for every weight
        with torch.no_grad():
            return float(task._loss(batch)[0])

    l0, half, l1 = loss(0.0), loss(0.5), loss(1.0)
    assert l0 < l1 and abs(half - (l0 + l1) / 2) < 1e-5 * l1  # linear in the weight: only those frames are scaled
    with pytest.raises(ConfigError, match="task.future_image_loss_weight: expected a number >= 0, got -1"):
        loss(-1)


def test_ema_backbone_samples_and_follows_training():
    task = _task()
    assert task.inference_model is task.model  # no EMA: the trained backbone samples
    task = build({"name": "cosmos_policy", "ema_decay": 0.9}, "task", model=task.hparams.model, spec=task.hparams.spec,
                 statistics=task.hparams.statistics)
    ema = task.backbone_ema.module
    assert task.inference_model.backbone is ema and not any(p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in task.model.backbone.parameters())
    assert all(p in set(task.parameters()) for p in ema.parameters())  # saved in the checkpoint's state dict
    with torch.no_grad():
        for p in task.model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    task.backbone_ema.update(task.model.backbone, step=1)  # warm-up: the first update copies the weights
    for b, p, q in zip(before, ema.parameters(), task.model.backbone.parameters()):
        assert torch.allclose(p, q) and not torch.allclose(p, b)
    with torch.no_grad():
        for p in task.model.backbone.parameters():
            p.add_(1.0)
    task.backbone_ema.update(task.model.backbone, step=10_000)  # later updates move by (1 - decay)
    for p, q in zip(ema.parameters(), task.model.backbone.parameters()):
        assert torch.allclose(p, q - 0.9, atol=1e-5)
    with pytest.raises(ConfigError, match="task.ema_decay"):
        build({"name": "cosmos_policy", "ema_decay": 1.5}, "task", model=task.hparams.model, spec=task.hparams.spec)
    clone = build({"name": "cosmos_policy", "ema_decay": 0.9}, "task", model=task.hparams.model, spec=task.hparams.spec,
                  statistics=task.hparams.statistics)
    clone.load_state_dict(task.state_dict())  # strict: the EMA copy round-trips through a checkpoint
    for p, q in zip(clone.backbone_ema.module.parameters(), ema.parameters()):
        assert torch.equal(p, q)


def test_proprio_noise_perturbs_only_the_training_condition():
    base = _task()
    task = build({"name": "cosmos_policy", "proprio_noise_std": 0.2}, "task", model=base.hparams.model,
                 spec=base.hparams.spec, statistics=base.hparams.statistics)
    batch = _batch()
    clean = batch["proprio"].clone()
    seen = []
    task._loss = lambda b, generators=None: (seen.append(b) or torch.zeros(()), {})
    torch.manual_seed(0)
    task.training_step(batch, 0)
    noisy = seen[0]["proprio"]
    assert torch.equal(batch["proprio"], clean)  # the caller's batch is left as it was
    assert 0.1 < float((noisy - clean).std()) < 0.3
    for key in ("actions", "future_proprio", "images"):  # targets and images stay clean
        assert seen[0][key] is batch[key]
    off = build({"name": "cosmos_policy"}, "task", model=base.hparams.model, spec=base.hparams.spec,
                statistics=base.hparams.statistics)
    off._loss = lambda b, generators=None: (seen.append(b) or torch.zeros(()), {})
    off.training_step(batch, 0)
    assert torch.equal(seen[1]["proprio"], clean)  # 0 (default) = official: no noise
    with pytest.raises(ConfigError, match="task.proprio_noise_std: expected a number >= 0, got -0.1"):
        build({"name": "cosmos_policy", "proprio_noise_std": -0.1}, "task", model=base.hparams.model,
              spec=base.hparams.spec, statistics=base.hparams.statistics)


def test_keyed_samples_draw_their_own_sigma_and_noise():
    """With ``sample_key`` (the training stream) a sample's σ and noise depend on its key only: the loss of a batch is
    the mean of its halves' losses (what DDP's gradient averaging relies on), whatever the global RNG."""
    task = _task()
    task._noise_seed = 7
    batch = {**_batch(), "sample_key": torch.tensor([11, 12])}
    halves = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(2)]

    def loss(b, rng_seed):
        torch.manual_seed(rng_seed)
        with torch.no_grad():
            return float(task._loss(b, task._sample_generators(b))[0])

    full = loss(batch, 0)
    assert loss(batch, 1) == full
    assert abs((loss(halves[0], 2) + loss(halves[1], 3)) / 2 - full) < 1e-5 * abs(full)
    task._noise_seed = 8  # another run seed: other noise
    assert loss(batch, 0) != full
    assert task._sample_generators(_batch()) is None  # validation batches keep the global RNG

