import pytest
import torch

from cosmos_lit.models.planner import aggregate_values
from cosmos_lit.registry import ConfigError
from cosmos_lit.tasks.post_training import lambda_linear


def test_lambda_linear_schedule_matches_the_official_shape():
    f = lambda s: lambda_linear(s, warmup_steps=1000, decay_steps=30000, decay_to=0.3, tail=0.06)
    assert f(0) == pytest.approx(1e-6)
    assert f(500) == pytest.approx(0.5, abs=1e-6)
    assert f(1000) == pytest.approx(1.0)
    assert f(15500) == pytest.approx(0.65)
    assert f(29999) == pytest.approx(0.3, abs=1e-4)
    assert f(30000) == f(45000) == 0.06  # the sharp drop to the constant tail


def test_value_ensemble_aggregation():
    v = torch.tensor([[0.9, 0.8, 0.0, 0.7], [0.9, 0.0, 0.0, 0.01], [0.6, 0.6, 0.6, 0.6]])
    # majority_mean: >= half above 0.05 -> mean of those, else 0
    assert torch.allclose(aggregate_values(v, "majority_mean"), torch.tensor([0.8, 0.0, 0.6]))
    assert torch.allclose(aggregate_values(v, "average"), v.mean(dim=1))
    assert torch.allclose(aggregate_values(v, "success_vote"), torch.tensor([0.75, 0.25, 1.0]))
    assert torch.allclose(aggregate_values(v, "lcb"), (v.mean(1) - v.std(1, unbiased=False)).clamp(0, 1))
    with pytest.raises(ConfigError, match="unknown scheme"):
        aggregate_values(v, "median")
