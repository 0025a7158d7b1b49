"""Policy exports (``python -m cosmos_lit export``, ``cosmos_lit.export``): a folder of safetensors, YAML, JSON and a
README that ``CosmosPolicy.from_pretrained`` turns into the checkpoint's deployed policy without unpickling anything;
bad folders are one line naming the file; an export is written whole or not at all and never over a foreign folder."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cosmos_lit import cli
from cosmos_lit.checkpoint import load_model
from cosmos_lit.export import (
    CONFIG_FILE,
    README_FILE,
    STATISTICS_FILE,
    TEXT_FILE,
    WEIGHTS_FILE,
    export_policy,
    load_pretrained,
    save_weights,
)
from cosmos_lit.policy import CosmosPolicy
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TINY_NODES, TINY_SPEC, TINY_STATS, one_line, tiny_obs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"  # written before the model object existed
EXPORT_FILES = {WEIGHTS_FILE, CONFIG_FILE, STATISTICS_FILE, README_FILE}
OBS = [{"images": {"top": np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)},
        "proprio": np.random.default_rng(10 + i).normal(size=14).astype(np.float32), "instruction": "stack the blocks"}
       for i in range(2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """last.ckpt of a 3-step CPU fit (tiny DiT and VAE, 3 ALOHA episodes of 32² images, EMA backbone, validation)."""
    from cosmos_lit.datamodules.act_format import write_aloha_episode

    root = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_aloha_episode(root / "demos" / f"episode_{i}.hdf5", rng.normal(size=(12, 14)), rng.normal(size=(12, 14)),
                            {"top": rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)},
                            attrs={"instruction": "stack the blocks"})
    env = dict(os.environ)  # the CLI sets COSMOS_LIT_RUN_DIR and the seed variables for its own process
    try:
        cli.main(["fit", "--config", str(ROOT / "configs" / "aloha_sim.yaml"), "data=aloha", "eval=none", "logger=none",
                  f"data.data_dir={root / 'demos'}", "data.cameras=[top]", "data.image_size=32", "data.chunk_size=5",
                  "data.batch_size=2", "data.num_workers=0", "data.augment=false", "data.val_fraction=0.34",
                  "task.ema_decay=0.9", "+task.val_sample_batches=1", "+model.sampling.num_steps=2",
                  "trainer.max_steps=3", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                  "checkpoint.every_n_train_steps=3", "+trainer.enable_progress_bar=false",
                  "trainer.enable_model_summary=false", f"run_dir={root / 'run'}"])
    finally:
        os.environ.clear()
        os.environ.update(env)
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    return export_policy(trained, tmp_path_factory.mktemp("exports") / "policy")


def _no_pickle(monkeypatch) -> None:
    """Every way into the unpickler used by this code base (torch.load, pickle) raises from here on."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during from_pretrained")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(target, name, refuse)


def _actions(policy: CosmosPolicy, obs: list[dict]) -> np.ndarray:
    policy.reset()
    return policy(obs)["actions"]


# ---------------------------------------------------------------------------------------------------- round trip


def test_an_export_acts_as_the_checkpoint_it_came_from(trained, exported, monkeypatch):
    assert isinstance(torch.load(trained, map_location="cpu", weights_only=True), dict)  # our .ckpt: weights only
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES
    reference = load_model(trained)
    expected = CosmosPolicy(reference, seed=3)(OBS)
    _no_pickle(monkeypatch)
    policy = CosmosPolicy.from_pretrained(exported, seed=3)
    got = policy(OBS)
    assert got["actions"].shape == (2, 5, 14)
    np.testing.assert_array_equal(got["actions"], expected["actions"])
    np.testing.assert_array_equal(got["value"], expected["value"])
    assert policy.spec == reference.spec and policy.model.sampling == reference.sampling
    assert policy.model.statistics == reference.statistics
    monkeypatch.undo()
    # the deployed weights: the EMA backbone, as load_model chooses (the trained one differs after 3 steps)
    state = load_pretrained(exported).state_dict()
    assert state.keys() == reference.state_dict().keys()
    for k, v in reference.state_dict().items():
        assert torch.equal(state[k], v), k
    trained_backbone = load_model(trained, use_ema=False).backbone.state_dict()
    assert any(not torch.equal(state[f"backbone.{k}"], v) for k, v in trained_backbone.items())


def test_an_export_holds_no_pickle(exported):
    from safetensors import safe_open

    for path in exported.iterdir():
        assert path.suffix in (".safetensors", ".yaml", ".json", ".md"), path
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and head != b"PK\x03\x04", path  # no pickle, no torch.save archive
    cfg = yaml.safe_load((exported / CONFIG_FILE).read_text())
    assert cfg["format_version"] == 1 and cfg["spec"]["cameras"] == ["top"]
    assert cfg["model"]["backbone"]["name"] == "cosmos_predict2_tiny" and cfg["model"]["sampling"]["num_steps"] == 2
    assert cfg["policy"]["planner"] == {"name": "none"} and cfg["source"]["global_step"] == 3
    stats = json.loads((exported / STATISTICS_FILE).read_text())
    assert len(stats["actions_min"]) == 14 and len(stats["proprio_max"]) == 14
    with safe_open(str(exported / WEIGHTS_FILE), framework="pt") as f:
        assert any(k.startswith("backbone.") for k in f.keys())
        assert f.metadata()["cosmos_lit_export"] == "1"


def test_the_model_card_says_what_the_policy_is(trained, exported):
    card = (exported / README_FILE).read_text()
    for text in ("| cameras (latent-slot order) | top |", "| proprio dim | 14 |", "| action dim | 14 |",
                 "| chunk size | 5 |", "| image size | 32 px |", "at step 3", "- step: 3", str(trained),
                 "data config: `aloha`", str(trained.parents[2] / "demos"), "- episodes: 3 (2 train, 1 val)",
                 "| val/loss |", "| train/loss |", "the EMA copy", "| backbone | cosmos_predict2_tiny |",
                 "CosmosPolicy.from_pretrained"):
        assert text in card, (text, card)


def test_tied_and_strided_tensors_are_written_as_copies(tmp_path):
    from safetensors.torch import load_file

    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "tied": base, "view": base[1], "strided": base.t(), "empty": torch.zeros(0), "empty2": torch.zeros(0)}
    save_weights(state, tmp_path / "w.safetensors")
    back = load_file(str(tmp_path / "w.safetensors"))
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(back[k], v), k


# ---------------------------------------------------------------------------------------------------- bad folders


def _copy(exported: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(exported, tmp_path / name))


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        CosmosPolicy.from_pretrained(path)
    return one_line(e)


def test_a_folder_that_is_no_export_is_one_line(exported, tmp_path):
    assert "not found" in _error(tmp_path / "nowhere")
    (tmp_path / "x.ckpt").write_bytes(b"PK")
    assert "not a folder" in (msg := _error(tmp_path / "x.ckpt")) and "from_checkpoint" in msg
    (tmp_path / "empty").mkdir()
    msg = _error(tmp_path / "empty")
    assert str(tmp_path / "empty" / CONFIG_FILE) in msg and "missing" in msg and "python -m cosmos_lit export" in msg
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text("data: {name: aloha}\nmodel: {}\n")  # a run directory's config.yaml
    assert "no format_version" in _error(run_dir)
    (run_dir / CONFIG_FILE).write_text("format_version: 1\nmodel: [oops\n")
    assert "not readable YAML" in _error(run_dir)

    newer = _copy(exported, tmp_path, "newer")
    cfg = yaml.safe_load((newer / CONFIG_FILE).read_text())
    (newer / CONFIG_FILE).write_text(yaml.safe_dump({**cfg, "format_version": 99}))
    assert "format_version 99 is newer" in _error(newer)
    for name in (WEIGHTS_FILE, STATISTICS_FILE):
        folder = _copy(exported, tmp_path, f"no_{name}")
        (folder / name).unlink()
        msg = _error(folder)
        assert str(folder / name) in msg and "missing" in msg, msg
    damaged = _copy(exported, tmp_path, "damaged")
    data = (damaged / WEIGHTS_FILE).read_bytes()
    (damaged / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    assert str(damaged / WEIGHTS_FILE) in (msg := _error(damaged)) and "not a readable safetensors file" in msg
    typo = _copy(exported, tmp_path, "typo")
    (typo / CONFIG_FILE).write_text((typo / CONFIG_FILE).read_text().replace("cosmos_predict2_tiny", "cosmos_predict3"))
    msg = _error(typo)
    assert str(typo / CONFIG_FILE) in msg and "cosmos_predict3" in msg and "model.backbone" in msg, msg


def test_weights_that_do_not_match_the_config_name_the_key(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(exported / WEIGHTS_FILE))
    key = next(k for k in state if k.startswith("backbone."))
    cases = {"missing": ({k: v for k, v in state.items() if k != key}, f"missing key '{key}'"),
             "unexpected": ({**state, "backbone.extra.weight": torch.zeros(2)}, "unexpected key 'backbone.extra.weight'"),
             "shape": ({**state, key: torch.zeros(*state[key].shape, 2)}, f"key '{key}' has shape")}
    for name, (tensors, expected) in cases.items():
        folder = _copy(exported, tmp_path, name)
        save_file(tensors, str(folder / WEIGHTS_FILE))
        msg = _error(folder)
        assert str(folder / WEIGHTS_FILE) in msg and expected in msg, msg


# ---------------------------------------------------------------------------------------------------- writing


def test_an_existing_out_is_refused_unless_it_is_an_export_and_overwrite(trained, exported, tmp_path):
    missing = tmp_path / "missing.ckpt"  # refused before the checkpoint is read: no error about it
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is not a policy export; choose another folder") as e:
            export_policy(missing, foreign, overwrite=overwrite)
        assert str(foreign) in one_line(e)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="already holds a policy export; pass overwrite=true") as e:
        export_policy(missing, exported)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        export_policy(missing, tmp_path / "file")
    with pytest.raises(ConfigError, match="holds the checkpoint"):
        export_policy(trained, trained.parent, overwrite=True)

    (tmp_path / "empty").mkdir()  # an empty folder is filled
    assert {p.name for p in export_policy(trained, tmp_path / "empty").iterdir()} == EXPORT_FILES
    again = _copy(exported, tmp_path, "again")
    (again / README_FILE).write_text("old card")
    export_policy(trained, again, overwrite=True)
    assert {p.name for p in again.iterdir()} == EXPORT_FILES and (again / README_FILE).read_text() != "old card"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left beside it


def test_a_failed_export_leaves_nothing_behind(trained, exported, tmp_path, monkeypatch):
    import cosmos_lit.export as export_module

    def half_then_fail(state, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_weights", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_policy(trained, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    previous = _copy(exported, tmp_path, "previous")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    with pytest.raises(OSError, match="disk full"):
        export_policy(trained, previous, overwrite=True)
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before  # the previous export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]


# ---------------------------------------------------------------------------------------------------- the verb


def _main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code), out, err


def test_the_export_verb_end_to_end(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli_export"
    code, stdout, _ = _main(capsys, "export", f"ckpt_path={trained}", f"out={out}")
    assert code == 0 and f"-> {out}" in stdout
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    code, _, err = _main(capsys, "export", f"ckpt_path={trained}", f"out={out}")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "overwrite=true" in lines[0], err
    code, _, err = _main(capsys, "export", f"ckpt_path={trained}", f"out={out}", "overwrite=true")
    assert code == 0, err
    code, _, err = _main(capsys, "export", f"ckpt_path={trained}", f"out={out}", "overwrite=maybe")
    assert code == 2 and "overwrite: expected true or false" in err
    code, _, err = _main(capsys, "export", f"ckpt_path={trained}", f"ouput={out}")
    assert code == 2 and "did you mean 'out'" in err
    code, _, err = _main(capsys, "export", f"ckpt_path={trained}")
    assert code == 2 and "export: needs out=" in err
    code, _, err = _main(capsys, "export", f"ckpt_path={tmp_path / 'none.ckpt'}", f"out={tmp_path / 'x'}")
    assert code == 2 and "checkpoint not found" in err and not (tmp_path / "x").exists()
    assert "export" in cli.VERBS
    expected = _actions(CosmosPolicy(load_model(trained)), OBS[:1])
    _no_pickle(monkeypatch)
    np.testing.assert_array_equal(_actions(CosmosPolicy.from_pretrained(out), OBS[:1]), expected)


# ---------------------------------------------------------------------------------------------------- older files


def test_the_v0_fixture_exports_and_acts_as_its_loaded_model(tmp_path, monkeypatch):
    import importlib.util

    script = ROOT / "scripts" / "make_checkpoint_fixture.py"
    spec = importlib.util.spec_from_file_location("make_checkpoint_fixture", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    observations = module.fixture_observations()
    expected = CosmosPolicy.from_checkpoint(FIXTURE, num_steps=2, seed=5)(observations)
    out = export_policy(FIXTURE, tmp_path / "v0")
    _no_pickle(monkeypatch)
    got = CosmosPolicy.from_pretrained(out, num_steps=2, seed=5)(observations)
    assert got["actions"].shape == (2, 50, 14)
    np.testing.assert_array_equal(got["actions"], expected["actions"])
    np.testing.assert_array_equal(got["value"], expected["value"])
    card = (out / README_FILE).read_text()
    assert "| chunk size | 50 |" in card and "| cameras (latent-slot order) | top |" in card


def test_a_t5_cache_goes_into_the_export_as_safetensors(tmp_path, monkeypatch):
    """A model whose text encoder reads a pickled T5 cache exports its embeddings: the folder loads without it."""
    import copy

    from cosmos_lit.registry import build

    rng = torch.Generator().manual_seed(0)
    cache = {"stack the blocks": torch.randn(1, 6, 32, generator=rng), "unstack": torch.randn(1, 6, 32, generator=rng)}
    pkl = tmp_path / "t5_embeddings.pkl"
    pkl.write_bytes(pickle.dumps(cache))
    torch.manual_seed(0)
    nodes = {**copy.deepcopy(TINY_NODES), "sampling": {"num_steps": 2},
             "text_encoder": {"name": "t5_cache", "path": str(pkl), "dim": 32, "trust_pickle": True}}
    task = build({"name": "cosmos_policy"}, "task", model=nodes, spec=TINY_SPEC.to_dict(), statistics=dict(TINY_STATS)).eval()
    ckpt = tmp_path / "t5.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(), "global_step": 7}, ckpt)
    obs = [tiny_obs(1), tiny_obs(2)]
    expected = CosmosPolicy(task.inference_model)(obs)["actions"]
    out = export_policy(ckpt, tmp_path / "export")
    assert {p.name for p in out.iterdir()} == EXPORT_FILES | {TEXT_FILE}
    node = yaml.safe_load((out / CONFIG_FILE).read_text())["model"]["text_encoder"]
    assert node["path"] == TEXT_FILE and "trust_pickle" not in node
    pkl.unlink()  # the export does not need the original cache
    moved = Path(shutil.move(str(out), str(tmp_path / "moved")))  # nor its own location
    _no_pickle(monkeypatch)
    np.testing.assert_array_equal(CosmosPolicy.from_pretrained(moved)(obs)["actions"], expected)
    assert "at step 7" in (moved / README_FILE).read_text()


def test_a_lora_run_exports_its_merged_weights(tmp_path, monkeypatch):
    """load_model folds LoRA adapters into the base weights: the export holds those plain weights and no adapter."""
    pytest.importorskip("peft")
    import copy

    from cosmos_lit.registry import build

    torch.manual_seed(0)
    nodes = {**copy.deepcopy(TINY_NODES), "sampling": {"num_steps": 2}, "adapter": {"name": "lora", "rank": 2}}
    task = build({"name": "cosmos_policy"}, "task", model=nodes, spec=TINY_SPEC.to_dict(), statistics=dict(TINY_STATS)).eval()
    with torch.no_grad():  # trained adapters (B starts at zero: the adapter would change nothing)
        for name, p in task.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ckpt = tmp_path / "lora.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, ckpt)
    obs = [tiny_obs(3)]
    expected = CosmosPolicy(load_model(ckpt))(obs)["actions"]
    np.testing.assert_allclose(expected, CosmosPolicy(task.model)(obs)["actions"], atol=1e-4)  # merged = adapted
    out = export_policy(ckpt, tmp_path / "export")
    assert "adapter" not in yaml.safe_load((out / CONFIG_FILE).read_text())["model"]
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "base_layer" in k]
    _no_pickle(monkeypatch)
    np.testing.assert_array_equal(CosmosPolicy.from_pretrained(out)(obs)["actions"], expected)
