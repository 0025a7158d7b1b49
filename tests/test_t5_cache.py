"""T5 instruction-embedding caches: official pickle layout, safetensors layout, building from a local encoder."""

import pickle

import pytest
import torch

from cosmos_lit.weights import t5
from cosmos_lit.weights.state_io import UntrustedPickleError

WORDS = "<pad> </s> <unk> pick up the black bowl open top drawer put it in basket".split()


def random_cache(n=3, length=512, dim=1024):
    g = torch.Generator().manual_seed(0)
    return {f"task {i}: put the bowl in the drawer": torch.randn(1, length, dim, generator=g).to(torch.bfloat16) for i in range(n)}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny random T5 encoder + word-level tokenizer saved as a local transformers folder (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("t5_tiny")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # T5 appends EOS
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(WORDS), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def test_safetensors_round_trip(tmp_path):
    cache = random_cache()
    path = t5.save_t5_cache(cache, tmp_path / "cache.safetensors")
    loaded = t5.load_t5_cache(path)
    assert list(loaded) == list(cache)
    for key in cache:
        assert loaded[key].shape == (1, 512, 1024) and loaded[key].dtype == torch.bfloat16
        assert torch.equal(loaded[key], cache[key])
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_official_pickle_needs_trust(tmp_path):
    cache = random_cache(n=2)
    with open(tmp_path / "libero_t5_embeddings.pkl", "wb") as fh:  # written the way the official scripts do
        pickle.dump(cache, fh)
    with pytest.raises(UntrustedPickleError, match=r"libero_t5_embeddings\.pkl.*trust_pickle=True"):
        t5.load_t5_cache(tmp_path / "libero_t5_embeddings.pkl")
    loaded = t5.load_t5_cache(tmp_path / "libero_t5_embeddings.pkl", trust_pickle=True)
    assert all(torch.equal(loaded[k], cache[k]) for k in cache)
    t5.save_t5_cache(loaded, tmp_path / "ours.pkl")
    assert all(torch.equal(t5.load_t5_cache(tmp_path / "ours.pkl", trust_pickle=True)[k], cache[k]) for k in cache)


def test_bad_cache_contents(tmp_path):
    with pytest.raises(ValueError, match=r"embedding of 'x' is \(2, 4, 8\)"):
        t5.save_t5_cache({"x": torch.zeros(2, 4, 8)}, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="different shapes"):
        t5.save_t5_cache({"a": torch.zeros(1, 4, 8), "b": torch.zeros(1, 5, 8)}, tmp_path / "c.safetensors")
    with pytest.raises(FileNotFoundError):
        t5.load_t5_cache(tmp_path / "missing.safetensors")


def test_build_cache_zeroes_padding_and_matches_unpadded_encoding(encoder_dir, tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    instructions = ["pick up the black bowl", "open top drawer", "pick up the black bowl", "put it in basket"]
    cache = t5.build_t5_cache(instructions, encoder_dir, tmp_path / "cache.safetensors", max_length=16)
    assert list(cache) == ["pick up the black bowl", "open top drawer", "put it in basket"]  # duplicates once
    loaded = t5.load_t5_cache(tmp_path / "cache.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    encoder = T5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True).eval()
    for text, emb in loaded.items():
        assert emb.shape == (1, 16, 32) and emb.dtype == torch.bfloat16
        ids = tokenizer([text], return_tensors="pt")["input_ids"]  # no padding: words + EOS
        n = ids.shape[1]
        with torch.no_grad():
            ref = encoder(input_ids=ids).last_hidden_state[0]
        assert torch.count_nonzero(emb[0, n:]) == 0
        assert torch.all(emb[0, :n].abs().sum(-1) > 0)
        torch.testing.assert_close(emb[0, :n].float(), ref, rtol=2e-2, atol=2e-2)  # bf16 storage


def test_cli_writes_official_layout(encoder_dir, tmp_path, capsys):
    (tmp_path / "tasks.txt").write_text("open top drawer\n\nput it in basket\n")
    out = tmp_path / "t5_embeddings.pkl"
    t5.main(["--encoder-dir", str(encoder_dir), "--instructions", str(tmp_path / "tasks.txt"), "--out", str(out), "--max-length", "8"])
    assert "wrote 2 embeddings" in capsys.readouterr().out
    with open(tmp_path / "t5_embeddings.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert set(data) == {"open top drawer", "put it in basket"} and data["open top drawer"].shape == (1, 8, 32)


def test_missing_encoder_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="google-t5/t5-11b"):
        t5.build_t5_cache(["x"], tmp_path / "nope", tmp_path / "c.safetensors")


def test_built_cache_records_its_source_reuses_and_rebuilds(encoder_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cache.safetensors"
    first = t5.build_t5_cache(["open top drawer"], encoder_dir, out, max_length=8)
    assert t5.cache_source(out) == t5.encoder_source(encoder_dir, 8, torch.bfloat16)
    encoded = []
    real = t5.encode_instructions
    monkeypatch.setattr(t5, "encode_instructions", lambda texts, *a, **k: encoded.append(list(texts)) or real(texts, *a, **k))
    stamp = out.stat().st_mtime_ns
    again = t5.build_t5_cache(["open top drawer"], encoder_dir, out, max_length=8)  # same source, nothing new
    assert encoded == [] and out.stat().st_mtime_ns == stamp and torch.equal(again["open top drawer"], first["open top drawer"])
    both = t5.build_t5_cache(["open top drawer", "put it in basket"], encoder_dir, out, max_length=8)
    assert encoded == [["put it in basket"]] and set(t5.load_t5_cache(out)) == set(both)  # only the new one encoded
    assert "[cache]" not in capsys.readouterr().err
    t5.build_t5_cache(["open top drawer"], encoder_dir, out, max_length=16)  # another length: another source
    assert encoded[-1] == ["open top drawer"] and "built from another encoder or length; rebuilding" in capsys.readouterr().err
    assert t5.load_t5_cache(out)["open top drawer"].shape == (1, 16, 32)
    t5.save_t5_cache(random_cache(n=1, length=16, dim=32), out)  # no source recorded (written by hand)
    t5.build_t5_cache(["open top drawer"], encoder_dir, out, max_length=16)
    assert "records no source; rebuilding" in capsys.readouterr().err and set(t5.load_t5_cache(out)) == {"open top drawer"}


def test_official_cache_is_verified_not_rebuilt(tmp_path):
    from cosmos_lit.text import MissingInstructionError, T5CacheEmbedder

    path = tmp_path / "libero_t5_embeddings.pkl"
    cache = {"put the bowl in the drawer": torch.randn(1, 8, 16).to(torch.bfloat16)}
    with open(path, "wb") as fh:
        pickle.dump(cache, fh)
    before = path.read_bytes()
    embedder = T5CacheEmbedder(str(path), dim=16, trust_pickle=True)
    embedder.check_instructions(["put the bowl in the drawer"])
    assert embedder(["put the bowl in the drawer"]).shape == (1, 8, 16)
    for call in (lambda: embedder.check_instructions(["put the bowl in the drawers", "x"]),
                 lambda: embedder(["put the bowl in the drawers"])):
        with pytest.raises(MissingInstructionError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith("instruction 'put the bowl in the drawers'") and str(path) in msg and "\n" not in msg
        assert "closest cached: 'put the bowl in the drawer'" in msg
    assert path.read_bytes() == before
