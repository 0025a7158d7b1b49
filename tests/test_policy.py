"""The policy object: observation dicts -> un-normalized action chunks, values and imagined images."""

import numpy as np
import pytest
import torch

from cosmos_lit.policy import CosmosPolicy, load_task
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.spec import DataSpec


def _task():
    torch.manual_seed(0)
    spec = DataSpec(cameras=("wrist", "top"), proprio_dim=4, action_dim=3, chunk_size=8, image_size=32)
    stats = {"actions_min": [-2.0, 0.0, 10.0], "actions_max": [2.0, 1.0, 30.0],
             "proprio_min": [0.0] * 4, "proprio_max": [1.0] * 4}
    model = {"backbone": {"name": "cosmos_predict2_tiny"},
             "image_encoder": {"name": "wan2.1_tiny", "normalization": "none"}}
    return build({"name": "cosmos_policy", "sampling": {"num_steps": 2}}, "task", model=model, spec=spec.to_dict(),
                 statistics=stats).eval()


def _obs(seed):
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for c in ("wrist", "top")},
            "proprio": rng.random(4).astype(np.float32), "instruction": "stack the blocks"}


def test_batched_query_returns_unnormalized_chunks_within_the_demo_range():
    policy = CosmosPolicy(_task(), execute_steps=4)
    out = policy([_obs(0), _obs(1)])
    a = out["actions"]
    assert a.shape == (2, 8, 3) and a.dtype == np.float32
    assert (a[..., 0] >= -2).all() and (a[..., 0] <= 2).all() and (a[..., 2] >= 10).all() and (a[..., 2] <= 30).all()
    assert out["value"].shape == (2,) and ((out["value"] >= 0) & (out["value"] <= 1)).all()
    assert policy.queries == 1
    again = CosmosPolicy(_task(), execute_steps=4)([_obs(0), _obs(1)])
    np.testing.assert_allclose(again["actions"], a, rtol=1e-5, atol=1e-5)  # seeded: deterministic evaluation


def test_imagined_future_images():
    policy = CosmosPolicy(_task())
    out = policy([_obs(0)])
    imgs = policy.imagine(out["latents"])
    assert imgs.shape == (1, 2, 32, 32, 3) and imgs.dtype == np.uint8


def test_bad_observations_and_settings():
    policy = CosmosPolicy(_task())
    bad = _obs(0)
    del bad["images"]["top"]
    with pytest.raises(KeyError, match="top"):
        policy([bad])
    bad = _obs(0)
    bad["proprio"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="proprio has 5 dims"):
        policy([bad])
    with pytest.raises(ConfigError, match="execute_steps"):
        CosmosPolicy(_task(), execute_steps=9)


def test_checkpoint_round_trip(tmp_path):
    task = _task()
    path = tmp_path / "policy.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    restored = load_task(path)
    for k, v in task.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k
    a = CosmosPolicy(task)([_obs(3)])["actions"]
    b = CosmosPolicy.from_checkpoint(str(path))([_obs(3)])["actions"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "missing.ckpt")
