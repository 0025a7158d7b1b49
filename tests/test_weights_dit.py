"""Cosmos-Predict2 DiT weights: official key layout conversion, strict loading, sources, released-checkpoint files."""

import io
import json

import numpy as np
import pytest
import torch

from cosmos_lit.weights import checkpoints, cosmos_dit
from cosmos_lit.weights.cosmos_dit import (
    COSMOS_PREDICT2_2B_V2W,
    TINY_DIT,
    build_dit_on_meta,
    diffusers_to_official,
    load_dit_weights,
    official_key_to_diffusers,
    official_to_diffusers,
)
from cosmos_lit.weights.state_io import UntrustedPickleError

# Official names as listed in docs/method.md#checkpoint-key-names (per block i), with their diffusers counterparts.
OFFICIAL_EXPECTED = {
    "x_embedder.proj.1.weight": "patch_embed.proj.weight",
    "t_embedder.1.linear_1.weight": "time_embed.t_embedder.linear_1.weight",
    "t_embedder.1.linear_2.weight": "time_embed.t_embedder.linear_2.weight",
    "t_embedding_norm.weight": "time_embed.norm.weight",
    "final_layer.adaln_modulation.1.weight": "norm_out.linear_1.weight",
    "final_layer.adaln_modulation.2.weight": "norm_out.linear_2.weight",
    "final_layer.linear.weight": "proj_out.weight",
}
for _i in range(TINY_DIT["num_layers"]):
    for _o, _d in [("self_attn", "attn1"), ("cross_attn", "attn2")]:
        for _p, _q in [
            ("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("output_proj", "to_out.0"), ("q_norm", "norm_q"), ("k_norm", "norm_k")
        ]:
            OFFICIAL_EXPECTED[f"blocks.{_i}.{_o}.{_p}.weight"] = f"transformer_blocks.{_i}.{_d}.{_q}.weight"
    OFFICIAL_EXPECTED[f"blocks.{_i}.mlp.layer1.weight"] = f"transformer_blocks.{_i}.ff.net.0.proj.weight"
    OFFICIAL_EXPECTED[f"blocks.{_i}.mlp.layer2.weight"] = f"transformer_blocks.{_i}.ff.net.2.weight"
    for _n, _m in [(1, "self_attn"), (2, "cross_attn"), (3, "mlp")]:
        for _j in (1, 2):
            OFFICIAL_EXPECTED[f"blocks.{_i}.adaln_modulation_{_m}.{_j}.weight"] = f"transformer_blocks.{_i}.norm{_n}.linear_{_j}.weight"


def random_tiny(seed: int = 0):
    """Tiny DiT with every weight random (official init zeroes the AdaLN outputs; randomise so every path is used)."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(**TINY_DIT).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def official_layout(model, prefix="net.", extras=True):
    """The model's weights as an official checkpoint would hold them, plus the non-weight entries it carries."""
    sd = {k: v.clone() for k, v in diffusers_to_official(model.state_dict(), prefix=prefix).items()}
    if extras:
        sd[prefix + "accum_video_sample_counter"] = torch.tensor(123)
        sd[prefix + "accum_iteration"] = torch.tensor(7)
        sd[prefix + "pos_embedder.seq"] = torch.arange(128.0)
        sd[prefix + "pos_embedder.dim_spatial_range"] = torch.arange(21.0)
        sd[prefix + "pos_embedder.dim_temporal_range"] = torch.arange(22.0)
    return sd


def forward(model):
    """Per-frame timesteps (B,1,T,1,1), 2 conditioning frames, padding mask (1,1,H,W), fps=None, zero-padded text."""
    g = torch.Generator().manual_seed(1)
    b, t, h, w = 2, 3, 8, 8
    x = torch.randn(b, 16, t, h, w, generator=g)
    cond = torch.zeros(b, 1, t, h, w)
    cond[:, :, :2] = 1.0
    timestep = torch.full((b, 1, t, 1, 1), 0.7)
    timestep[:, :, :2] = 1e-4
    text = torch.randn(b, 512, TINY_DIT["text_embed_dim"], generator=g)
    text[:, 20:] = 0.0
    with torch.no_grad():
        return model(
            hidden_states=x, timestep=timestep, encoder_hidden_states=text, condition_mask=cond,
            padding_mask=torch.zeros(1, 1, h, w), fps=None, return_dict=False,
        )[0]


@pytest.fixture(scope="module")
def native():
    return random_tiny()


def test_every_official_key_maps_to_exactly_one_parameter_of_the_same_shape(native):
    params = native.state_dict()
    official = diffusers_to_official(params, prefix="")
    assert set(official) == set(OFFICIAL_EXPECTED)  # the names of docs/method.md#checkpoint-key-names, no more, no less
    mapped = {k: official_key_to_diffusers(k) for k in official}
    assert mapped == OFFICIAL_EXPECTED
    assert len(set(mapped.values())) == len(mapped) == len(params)  # injective and onto
    for k, d in mapped.items():
        assert official[k].shape == params[d].shape


def test_2b_config_bijection_and_parameter_count():
    model = build_dit_on_meta(COSMOS_PREDICT2_2B_V2W)
    params = model.state_dict()
    assert sum(v.numel() for v in params.values()) == 1_956_413_440
    official = diffusers_to_official(params)
    assert official["net.x_embedder.proj.1.weight"].shape == (2048, 72)
    back = official_to_diffusers(official)
    assert set(back) == set(params) and all(back[k].shape == params[k].shape for k in params)


def test_conversion_agrees_with_diffusers_converter(native):
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    sd = official_layout(native)
    ours = official_to_diffusers(sd)
    theirs = convert_cosmos_transformer_checkpoint_to_diffusers(dict(sd))
    assert set(ours) == set(theirs)
    assert all(ours[k] is theirs[k] for k in ours)


def test_official_pt_loads_strictly_on_meta_and_matches_native_output(native, tmp_path):
    path = tmp_path / "model-480p-16fps.pt"
    torch.save(official_layout(native), path)
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), path).eval()
    assert not any(p.is_meta for p in model.parameters())
    delta = (forward(model) - forward(native)).abs().max().item()
    assert delta <= 1e-5


def test_ema_weights_are_preferred(native, tmp_path):
    other = random_tiny(seed=5)
    sd = {**official_layout(other, "net."), **official_layout(native, "net_ema.")}
    torch.save(sd, tmp_path / "both.pt")
    ema = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "both.pt")
    reg = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "both.pt", prefer_ema=False)
    w = "transformer_blocks.1.attn1.to_q.weight"
    assert torch.equal(ema.state_dict()[w], native.state_dict()[w])
    assert torch.equal(reg.state_dict()[w], other.state_dict()[w])


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_checkpoint_and_dtype_cast(native, tmp_path, wrapper):
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in official_layout(native).items()}
    torch.save({wrapper: sd, "iteration": 10}, tmp_path / "w.pt")
    kept = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "w.pt")
    assert kept.proj_out.weight.dtype == torch.bfloat16  # meta assignment keeps the file's dtype
    cast = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "w.pt", dtype=torch.float32)
    assert cast.proj_out.weight.dtype == torch.float32
    # the cast releases the file pages it read; tensors sharing those pages must still read back from the file
    for (name, a), b in zip(kept.state_dict().items(), cast.state_dict().values()):
        assert torch.equal(a.float(), b), name
        assert torch.equal(b, native.state_dict()[name].to(torch.bfloat16).float()), name


def test_copy_into_materialised_model_keeps_its_dtype(native, tmp_path):
    torch.save(official_layout(native), tmp_path / "m.pt")
    target = random_tiny(seed=9)
    load_dit_weights(target, tmp_path / "m.pt")
    assert torch.equal(forward(target), forward(native))


def test_missing_and_unexpected_keys_are_listed(native, tmp_path):
    sd = official_layout(native)
    dropped = [k for k in sd if ".mlp." in k or ".cross_attn." in k]
    assert len(dropped) > 10
    for k in dropped:
        del sd[k]
    sd["net.blocks.0.bogus.weight"] = torch.zeros(1)
    sd["net.extra_head.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "bad.pt")
    msg = str(err.value)
    assert f"{len(dropped)} missing keys (first 10:" in msg
    assert msg.count("transformer_blocks.") >= 10 and "\n" not in msg
    assert "2 unexpected keys" in msg and "net.blocks.0.bogus.weight" in msg and "net.extra_head.weight" in msg


def test_shape_mismatch_names_key_and_shapes(native, tmp_path):
    sd = official_layout(native)
    sd["net.blocks.1.self_attn.q_proj.weight"] = torch.zeros(64, 32)
    torch.save(sd, tmp_path / "shape.pt")
    expected = (
        r"transformer_blocks\.1\.attn1\.to_q\.weight \(from net\.blocks\.1\.self_attn\.q_proj\.weight\): "
        r"checkpoint \(64, 32\) vs model \(64, 64\)"
    )
    with pytest.raises(ValueError, match=expected):
        load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "shape.pt")


def test_pickled_entries_need_trust(native, tmp_path):
    sd = official_layout(native)
    sd["net.blocks.0.self_attn.q_proj._extra_state"] = io.BytesIO(b"te-fp8-meta")  # TransformerEngine stores these
    torch.save(sd, tmp_path / "te.pt")
    with pytest.raises(UntrustedPickleError, match="trust_pickle"):
        load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "te.pt")
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "te.pt", trust_pickle=True)
    assert torch.equal(forward(model), forward(native))


def test_diffusers_folder_and_config_check(native, tmp_path):
    native.save_pretrained(tmp_path / "transformer")
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path)
    assert torch.equal(forward(model), forward(native))
    with pytest.raises(ValueError, match=r"config\.json: adaln_lora_dim=16 but the model was built with adaln_lora_dim=8"):
        load_dit_weights(build_dit_on_meta(dict(TINY_DIT, adaln_lora_dim=8)), tmp_path / "transformer")


def test_safetensors_in_official_layout(native, tmp_path):
    from safetensors.torch import save_file

    save_file(official_layout(native, extras=False), str(tmp_path / "dit.safetensors"))
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "dit.safetensors")
    assert torch.equal(forward(model), forward(native))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_distributed_checkpoint_folder_needs_trust(native, tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save(official_layout(native, extras=False), checkpoint_id=str(tmp_path / "iter_000001000" / "model"))
    with pytest.raises(UntrustedPickleError, match="trust_pickle"):
        load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "iter_000001000")
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "iter_000001000", trust_pickle=True)
    assert torch.equal(forward(model), forward(native))


def test_missing_path_and_ambiguous_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nvidia/Cosmos-Predict2-2B-Video2World"):
        load_dit_weights(build_dit_on_meta(TINY_DIT), tmp_path / "nope.pt")
    (tmp_path / "a.pt").write_bytes(b"")
    (tmp_path / "b.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="found 2 .pt files: a.pt, b.pt"):
        cosmos_dit.resolve_dit_source(tmp_path)


STATS = {
    f"{g}_{s}": [float(v) for v in np.linspace(-1 + i, 1 + i, d)]
    for g, d in (("actions", 7), ("proprio", 9))
    for i, s in enumerate(("min", "max", "mean", "std", "median"))
}


def released_dir(root, native):
    root.mkdir()
    torch.save(official_layout(native), root / "Cosmos-Policy-LIBERO-Predict2-2B.pt")
    (root / "libero_dataset_statistics.json").write_text(json.dumps(STATS))
    (root / "libero_t5_embeddings.pkl").write_bytes(b"")
    return root


def test_released_checkpoint_directory(native, tmp_path):
    root = released_dir(tmp_path / "Cosmos-Policy-LIBERO-Predict2-2B", native)
    ckpt = checkpoints.locate_released_checkpoint(root)
    assert ckpt.benchmark == "libero" and ckpt.hf_repo == "nvidia/Cosmos-Policy-LIBERO-Predict2-2B"
    assert ckpt.weights.name == "Cosmos-Policy-LIBERO-Predict2-2B.pt"
    model = load_dit_weights(build_dit_on_meta(TINY_DIT), root)  # the folder itself: its one .pt
    assert torch.equal(forward(model), forward(native))
    stats = checkpoints.load_dataset_statistics(ckpt.dataset_statistics)
    assert stats.action_dim == 7 and stats.proprio_dim == 9
    np.testing.assert_array_equal(stats.actions_max, np.asarray(STATS["actions_max"]))
    assert stats.proprio_median.dtype == np.float64
    (root / "libero_t5_embeddings.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing libero_t5_embeddings\.pkl .*nvidia/Cosmos-Policy-LIBERO-Predict2-2B"):
        checkpoints.locate_released_checkpoint(root)


def test_hf_cache_snapshot_and_unknown_benchmark(native, tmp_path):
    cache = tmp_path / "models--nvidia--Cosmos-Policy-LIBERO-Predict2-2B"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("abc123\n")
    (cache / "snapshots").mkdir()
    released_dir(cache / "snapshots" / "abc123", native)
    assert checkpoints.locate_released_checkpoint(cache).benchmark == "libero"
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="pass benchmark= one of libero, robocasa, aloha"):
        checkpoints.locate_released_checkpoint(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="Cosmos-Policy-ALOHA-Predict2-2B.pt"):
        checkpoints.locate_released_checkpoint(tmp_path / "plain", benchmark="aloha")


def test_dataset_statistics_errors(tmp_path):
    bad = dict(STATS)
    del bad["proprio_std"]
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="missing key 'proprio_std'"):
        checkpoints.load_dataset_statistics(tmp_path / "s.json")
    bad = dict(STATS, actions_mean=[0.0] * 6)
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"actions_\* statistics have different lengths \[6, 7\]"):
        checkpoints.load_dataset_statistics(tmp_path / "s.json")
