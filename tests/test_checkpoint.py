"""Checkpoints: files written before the model object existed still load and act the same, today's files round-trip,
loading is weights-only unless trusted, and unreadable files are one clear error."""

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_lit.checkpoint import EMA_PREFIX, embedded_config, load_model, load_task, read
from cosmos_lit.policy import CosmosPolicy
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
from helpers import one_line, tiny_obs, tiny_task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# written at commit 8d7df7d, before the model object existed (scripts/make_checkpoint_fixture.py)
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"
EXPECTED = FIXTURE.with_name("checkpoint_v0_expected.json")


def _fixture_script():
    script = ROOT / "scripts" / "make_checkpoint_fixture.py"
    spec = importlib.util.spec_from_file_location("make_checkpoint_fixture", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Foreign:
    """Not a tensor or a plain container: ``torch.load(weights_only=True)`` refuses to unpickle it."""

    def __init__(self) -> None:
        self.note = "arbitrary python object"


# ---------------------------------------------------------------------------------------------------- the v0 fixture


def test_v0_checkpoint_acts_as_when_it_was_written():
    expected = json.loads(EXPECTED.read_text())
    observations = _fixture_script().fixture_observations()
    policy = CosmosPolicy.from_checkpoint(str(FIXTURE), num_steps=expected["num_steps"], seed=expected["seed"])
    official = policy(observations)["actions"]
    # the record was written with 2 steps as two evaluations; the official step count makes 2 steps one evaluation
    # (exactly 1 step), so the record is reproduced with the former count, which the sampling config still offers
    policy.model.sampling = dataclasses.replace(policy.model.sampling, official_step_count=False)
    policy.reset()
    actions = policy(observations)["actions"]
    assert actions.shape == (2, 50, 14)
    np.testing.assert_allclose(actions, np.asarray(expected["actions"], np.float32), atol=1e-5, rtol=0)
    one_step = CosmosPolicy.from_checkpoint(str(FIXTURE), num_steps=1, seed=expected["seed"])(observations)["actions"]
    np.testing.assert_array_equal(official, one_step)


def test_v0_checkpoint_loads_as_a_task_that_samples_with_the_ema_backbone():
    raw = torch.load(FIXTURE, map_location="cpu", weights_only=True)["state_dict"]
    ema = {k[len(EMA_PREFIX):]: v for k, v in raw.items() if k.startswith(EMA_PREFIX)}
    trained = {k[len("backbone."):]: v for k, v in raw.items() if k.startswith("backbone.")}
    assert ema and ema.keys() == trained.keys()
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)  # (task.ema_decay=0.9): the EMA is its own copy

    task = load_task(FIXTURE)
    assert type(task).__name__ == "CosmosPolicyTask" and not task.training and task.backbone_ema is not None
    assert "planner" not in task.hparams and "sampling" not in task.hparams  # converted to today's layout
    assert task.model.sampling.num_steps == 5 and task.model.mask_current_state_for_value is False
    assert bool(task.model.image_encoder.calibrated)  # the data-normalization statistics came with the weights
    inference = task.inference_model
    assert inference.backbone is task.backbone_ema.module
    for k, v in inference.backbone.state_dict().items():
        assert torch.equal(v, ema[k]), k
    for k, v in task.model.backbone.state_dict().items():
        assert torch.equal(v, trained[k]), k

    model = load_model(FIXTURE)  # the model alone takes the EMA backbone as well (use_ema=False: the trained one)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ema[k]), k
    for k, v in load_model(FIXTURE, use_ema=False).backbone.state_dict().items():
        assert torch.equal(v, trained[k]), k

    expected = json.loads(EXPECTED.read_text())
    inference.sampling = dataclasses.replace(inference.sampling, official_step_count=False)  # as the record's
    policy = CosmosPolicy(inference, num_steps=expected["num_steps"])
    actions = policy(_fixture_script().fixture_observations())["actions"]
    np.testing.assert_allclose(actions, np.asarray(expected["actions"], np.float32), atol=1e-5, rtol=0)
    assert embedded_config(FIXTURE)["task"] == "cosmos_policy"


# ---------------------------------------------------------------------------------------------------- today's files


def _task():
    task = tiny_task(ema_decay=0.9)
    with torch.no_grad():  # training moved the backbone away from its EMA
        for p in task.model.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return task


def _save(task, path: Path, **extra) -> Path:
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(), **extra}, path)
    return path


def test_todays_checkpoint_round_trips(tmp_path):
    task = _task()
    path = _save(task, tmp_path / "today.ckpt")
    assert isinstance(torch.load(path, weights_only=True), dict)  # plain containers and tensors only

    restored = load_task(path)
    assert restored.state_dict().keys() == task.state_dict().keys()
    for k, v in task.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k
    assert restored.model.sampling == task.model.sampling and restored.model.spec == task.model.spec

    model = load_model(path)
    reference = task.inference_model.state_dict()  # the EMA backbone with the shared other components
    assert model.state_dict().keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(v, model.state_dict()[k]), k
    for k, v in load_model(path, use_ema=False).state_dict().items():
        assert torch.equal(v, task.model.state_dict()[k]), k

    obs = [tiny_obs(3), tiny_obs(4)]
    a = CosmosPolicy(task.inference_model)(obs)["actions"]
    np.testing.assert_allclose(CosmosPolicy.from_checkpoint(str(path))(obs)["actions"], a, atol=1e-6)
    np.testing.assert_allclose(CosmosPolicy(restored.inference_model)(obs)["actions"], a, atol=1e-6)
    assert not np.allclose(CosmosPolicy(task.model)(obs)["actions"], a, atol=1e-4)  # the EMA made a difference


# ---------------------------------------------------------------------------------------------------- trust, errors


def test_foreign_pickled_objects_need_trust_pickle(tmp_path):
    task = _task()
    path = _save(task, tmp_path / "foreign.ckpt", extra=_Foreign())
    for load in (read, load_model, load_task, CosmosPolicy.from_checkpoint):
        with pytest.raises(ConfigError) as e:
            load(path)
        msg = one_line(e)
        assert str(path) in msg and "trust_pickle" in msg, msg
    assert isinstance(read(path, trust_pickle=True)["extra"], _Foreign)
    model = load_model(path, trust_pickle=True)
    for k, v in task.inference_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert isinstance(load_task(path, trust_pickle=True).model.backbone, torch.nn.Module)
    obs = [tiny_obs(5)]
    np.testing.assert_allclose(CosmosPolicy.from_checkpoint(path, trust_pickle=True)(obs)["actions"],
                               CosmosPolicy(task.inference_model)(obs)["actions"], atol=1e-6)


def test_missing_file_is_file_not_found(tmp_path):
    for load in (read, load_model, load_task, CosmosPolicy.from_checkpoint):
        with pytest.raises(FileNotFoundError, match="missing.ckpt"):
            load(tmp_path / "missing.ckpt")


def test_truncated_or_corrupt_file_is_one_config_error(tmp_path):
    data = FIXTURE.read_bytes()
    corrupt = bytearray(data)
    mid = slice(len(data) // 2, len(data) // 2 + 4096)
    corrupt[mid] = bytes(b ^ 0xFF for b in corrupt[mid])  # flipped bytes inside a stored tensor record
    cases = {"half.ckpt": data[: len(data) // 2], "tail_cut.ckpt": data[:-100], "empty.ckpt": b"",
             "corrupt.ckpt": bytes(corrupt)}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for load in (load_model, load_task):
            with pytest.raises(ConfigError) as e:
                load(path)
            msg = one_line(e)
            assert str(path) in msg and "not a readable checkpoint" in msg, msg


# A file that is no torch archive (a Git LFS pointer, an HTML error page, random bytes), with or without trust_pickle.
@pytest.mark.parametrize("content", [b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 6517509\n",
                                     b"hello world", bytes(range(256)) * 4], ids=["lfs_pointer", "text", "bytes"])
def test_a_file_that_is_no_torch_archive_is_one_config_error(tmp_path, content):
    path = tmp_path / "not_an_archive.ckpt"
    path.write_bytes(content)
    for trust in (False, True):
        with pytest.raises(ConfigError) as e:
            load_model(path, trust_pickle=trust)
        msg = one_line(e)
        assert str(path) in msg and "not a readable checkpoint" in msg, msg


def test_a_checkpoint_that_is_not_cosmos_lit_is_one_config_error(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, other)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}}, bare)
    for path in (other, bare):
        for load in (load_model, load_task, CosmosPolicy.from_checkpoint):
            with pytest.raises(ConfigError, match="not a cosmos_lit task checkpoint") as e:
                load(path)
            assert str(path) in one_line(e)
    with pytest.raises(ConfigError, match="no embedded cosmos_lit config"):
        embedded_config(other)


# A file whose top-level object is not a dict (a bare tensor, a list).
@pytest.mark.parametrize("payload", [torch.zeros(3), [1, 2]], ids=["tensor", "list"])
def test_a_file_that_holds_no_checkpoint_dict_is_one_config_error(tmp_path, payload):
    path = tmp_path / "payload.ckpt"
    torch.save(payload, path)
    with pytest.raises(ConfigError, match="not a cosmos_lit task checkpoint"):
        load_model(path)
