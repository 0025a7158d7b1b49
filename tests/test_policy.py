"""The policy object: observation dicts -> un-normalized action chunks, values and imagined images."""

import os
import sys

import numpy as np
import pytest
import torch

from cosmos_lit.checkpoint import load_task
from cosmos_lit.policy import CosmosPolicy
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
from helpers import tiny_obs, tiny_task  # noqa: E402


def _model():
    return tiny_task().model


def test_batched_query_returns_unnormalized_chunks_within_the_demo_range():
    policy = CosmosPolicy(_model(), execute_steps=4)
    out = policy([tiny_obs(0), tiny_obs(1)])
    a = out["actions"]
    assert a.shape == (2, 8, 3) and a.dtype == np.float32
    assert (a[..., 0] >= -2).all() and (a[..., 0] <= 2).all() and (a[..., 2] >= 10).all() and (a[..., 2] <= 30).all()
    assert out["value"].shape == (2,) and ((out["value"] >= 0) & (out["value"] <= 1)).all()
    assert policy.queries == 1
    again = CosmosPolicy(_model(), execute_steps=4)([tiny_obs(0), tiny_obs(1)])
    np.testing.assert_allclose(again["actions"], a, rtol=1e-5, atol=1e-5)  # seeded: deterministic evaluation


def test_imagined_future_images():
    policy = CosmosPolicy(_model())
    out = policy([tiny_obs(0)])
    imgs = policy.imagine(out["latents"])
    assert imgs.shape == (1, 2, 32, 32, 3) and imgs.dtype == np.uint8


def test_bad_observations_and_settings():
    policy = CosmosPolicy(_model())
    bad = tiny_obs(0)
    del bad["images"]["top"]
    with pytest.raises(KeyError, match="top"):
        policy([bad])
    bad = tiny_obs(0)
    bad["proprio"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="proprio has 5 dims"):
        policy([bad])
    with pytest.raises(ConfigError, match="execute_steps"):
        CosmosPolicy(_model(), execute_steps=9)


def test_checkpoint_round_trip(tmp_path):
    task = tiny_task()
    path = tmp_path / "policy.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    restored = load_task(path)
    for k, v in task.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k
    a = CosmosPolicy(task.model)([tiny_obs(3)])["actions"]
    b = CosmosPolicy.from_checkpoint(str(path))([tiny_obs(3)])["actions"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "missing.ckpt")
