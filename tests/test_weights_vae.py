"""Wan2.1 VAE weights: official tokenizer.pth layout <-> diffusers AutoencoderKLWan, strict loading."""

import io

import pytest
import torch

from cosmos_lit.weights import wan_vae
from cosmos_lit.weights.state_io import UntrustedPickleError
from cosmos_lit.weights.wan_vae import TINY_VAE, diffusers_to_official, load_vae_weights, official_to_diffusers


def build(config=TINY_VAE, meta=False, seed=0):
    from diffusers import AutoencoderKLWan

    if meta:
        with torch.device("meta"):
            return AutoencoderKLWan(**config)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**config).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0.0, 0.2)
    return vae


def encode_decode(vae):
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(video).latent_dist.mode()
        return mu, vae.decode(mu).sample


@pytest.fixture(scope="module")
def native():
    return build()


def test_hand_checked_names_for_one_res_block():
    official = diffusers_to_official(build(meta=True).state_dict(), num_res_blocks=1, num_levels=4)
    # decoder.upsamples: per level 2 resnets then an upsampler (none after the last level) -> 0,1 | 2 | 3,4 | 5 | 6,7 | 8 | 9,10
    expected = {
        "decoder.upsamples.2.resample.1.weight": "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
        "decoder.upsamples.2.time_conv.weight": "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
        "decoder.upsamples.3.residual.0.gamma": "decoder.up_blocks.1.resnets.0.norm1.gamma",
        "decoder.upsamples.3.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.upsamples.10.residual.6.bias": "decoder.up_blocks.3.resnets.1.conv2.bias",
        "encoder.downsamples.3.time_conv.bias": "encoder.down_blocks.3.time_conv.bias",
        "encoder.downsamples.4.residual.3.gamma": "encoder.down_blocks.4.norm2.gamma",
        "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
        "decoder.middle.2.residual.2.weight": "decoder.mid_block.resnets.1.conv1.weight",
        "conv1.weight": "quant_conv.weight",
        "conv2.bias": "post_quant_conv.bias",
        "encoder.head.2.weight": "encoder.conv_out.weight",
        "decoder.head.0.gamma": "decoder.norm_out.gamma",
    }
    assert set(expected) <= set(official)
    back = official_to_diffusers({k: official[k] for k in expected}, num_res_blocks=1, num_levels=4)
    assert sorted(back) == sorted(expected.values())
    assert max(int(k.split(".")[2]) for k in official if k.startswith("decoder.upsamples.")) == 10


@pytest.mark.parametrize("config", [TINY_VAE, dict(TINY_VAE, num_res_blocks=2), {}], ids=["tiny-1res", "tiny-2res", "wan21"])
def test_round_trip_is_a_bijection(config):
    vae = build(config, meta=True)
    sd = vae.state_dict()
    nrb, levels = wan_vae.vae_layout(vae)
    official = diffusers_to_official(sd, nrb, levels)
    assert len(official) == len(sd)
    back = official_to_diffusers(official, nrb, levels)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)


def test_agrees_with_diffusers_converter_on_the_wan21_config():
    # diffusers' converter is hard-wired to Wan2.1 sizes (2 res blocks, one decoder shortcut at upsamples.4), so it
    # is an independent check for the real config only; the tiny configs are covered by the hand-checked names.
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = build({}, meta=True).state_dict()
    official = diffusers_to_official(sd)
    theirs = convert_wan_vae_to_diffusers(dict(official))
    ours = official_to_diffusers(official)
    assert set(ours) == set(theirs) and all(ours[k] is theirs[k] for k in ours)


def test_tokenizer_pth_loads_on_meta_with_identical_encode_decode(native, tmp_path):
    nrb, levels = wan_vae.vae_layout(native)
    path = tmp_path / "tokenizer" / "tokenizer.pth"
    path.parent.mkdir()
    torch.save({k: v.clone() for k, v in diffusers_to_official(native.state_dict(), nrb, levels).items()}, path)
    for source in (path, tmp_path):  # the file, or the checkpoint folder holding tokenizer/tokenizer.pth
        vae = load_vae_weights(build(meta=True), source).eval()
        mu, rec = encode_decode(vae)
        mu_ref, rec_ref = encode_decode(native)
        assert mu.shape == (1, 16, 2, 4, 4)
        assert (mu - mu_ref).abs().max().item() <= 1e-5 and (rec - rec_ref).abs().max().item() <= 1e-5


def test_diffusers_vae_folder_and_safetensors(native, tmp_path):
    native.save_pretrained(tmp_path / "vae")
    vae = load_vae_weights(build(meta=True), tmp_path)
    assert torch.equal(encode_decode(vae)[1], encode_decode(native)[1])
    vae = load_vae_weights(build(meta=True), tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(encode_decode(vae)[0], encode_decode(native)[0])


def test_missing_unexpected_and_pickle_errors(native, tmp_path):
    official = dict(diffusers_to_official(native.state_dict(), 1, 4))
    del official["decoder.upsamples.3.shortcut.weight"]
    official["decoder.upsamples.99.residual.0.gamma"] = torch.ones(1)
    torch.save(official, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_vae_weights(build(meta=True), tmp_path / "bad.pth")
    msg = str(err.value)
    missing = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight (file name decoder.upsamples.3.shortcut.weight)"
    assert f"1 missing keys (first 10: {missing})" in msg
    assert "1 unexpected keys (first 10: decoder.upsamples.99.residual.0.gamma)" in msg
    official = dict(diffusers_to_official(native.state_dict(), 1, 4), note=io.BytesIO(b"x"))
    torch.save(official, tmp_path / "pickled.pth")
    with pytest.raises(UntrustedPickleError, match="trust_pickle"):
        load_vae_weights(build(meta=True), tmp_path / "pickled.pth")
    load_vae_weights(build(meta=True), tmp_path / "pickled.pth", trust_pickle=True)


def test_rejects_forms_it_does_not_convert():
    with pytest.raises(ValueError, match="only the Wan2.1 VAE form"):
        wan_vae.vae_layout(build(dict(TINY_VAE, attn_scales=[0.5]), meta=True))
