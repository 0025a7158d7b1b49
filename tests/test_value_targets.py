"""Value targets (Monte-Carlo return of the terminal reward, rescaled to [-1, 1]) and the epoch layout."""

import numpy as np
import pytest

from cosmos_lit.datamodules.aloha import AlohaDataModule, write_aloha_episode
from cosmos_lit.datamodules.base import epoch_layout, value_targets
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.registry import ConfigError


def test_success_hand_computed():
    # T = 5, γ = 0.9, R = 1: G = [0.9^4, 0.9^3, 0.9^2, 0.9, 1] = [0.6561, 0.729, 0.81, 0.9, 1]; v = 2G − 1
    np.testing.assert_allclose(value_targets(5, 1.0, 0.9), [0.3122, 0.458, 0.62, 0.8, 1.0], atol=1e-6)
    assert value_targets(5, 1.0, 0.9).dtype == np.float32


def test_failure_is_minus_one_everywhere():
    np.testing.assert_array_equal(value_targets(4, 0.0, 0.998), [-1.0] * 4)


def test_partial_reward_matches_success_quirk_and_gamma_one():
    # the division by R makes every R > 0 produce the success targets (docs/method.md#value-targets quirk)
    np.testing.assert_allclose(value_targets(6, 0.3, 0.95), value_targets(6, 1.0, 0.95), atol=1e-6)
    np.testing.assert_array_equal(value_targets(3, 1.0, 1.0), [1.0, 1.0, 1.0])
    v = value_targets(1000, 1.0, 0.998)
    assert v[-1] == 1.0 and np.all(np.diff(v) > 0) and v[0] == pytest.approx(2 * 0.998**999 - 1, abs=1e-6)
    with pytest.raises(ValueError, match="length must be >= 1"):
        value_targets(0, 1.0, 0.9)


@pytest.mark.parametrize(
    "counts, probs, expected",
    [
        ((100, 100, 0), (0.5, 0.5), (100, 100, 0)),  # ALOHA base: demos as success rollouts -> 50/25/25
        ((100, 0, 0), (0.5, 0.5), (100, 0, 0)),  # no rollouts: demos only
        ((1000, 100, 0), (0.5, 0.5), (1000, 1000, 0)),  # rollouts oversampled up to the demo share
        ((100, 300, 700), (0.5, 0.5), (1400, 700, 700)),  # successes oversampled to half of the rollouts
        ((1000, 300, 700), (0.1, 0.5), (1000, 4500, 4500)),  # planning model: 10/45/45
        ((100, 0, 50), (0.5, 0.5), (100, 0, 100)),  # no successes: failures take the rollout share
        ((100, 50, 50), (1.0, 0.5), (100, 0, 0)),  # demos only by probability
        ((100, 50, 50), (0.0, 0.5), (0, 50, 50)),  # rollouts only by probability
    ],
)
def test_epoch_layout(counts, probs, expected):
    assert epoch_layout(*counts, *probs) == expected


def test_epoch_layout_rejects_bad_probability():
    with pytest.raises(ConfigError, match="demonstration_sampling_prob: must be in"):
        epoch_layout(1, 1, 1, 1.5, 0.5)


def _episode(path, length, success=None, seed=0):
    rng = np.random.default_rng(seed)
    attrs = {"sim": True} if success is None else {"sim": True, "success": success}
    frames = rng.integers(0, 255, (length, 16, 16, 3), dtype=np.uint8)
    write_aloha_episode(str(path), rng.normal(size=(length, 14)), rng.normal(size=(length, 14)), {"top": frames},
                        "raw", attrs)


def test_batch_value_is_target_at_clipped_future_index(tmp_path):
    """Every sample's value = v[min(t+K, T−1)] of its episode's terminal reward (demos R=1, rollouts their flag)."""
    for i, length in enumerate((9, 14)):
        _episode(tmp_path / "demos" / f"episode_{i}.hdf5", length, seed=i)
    _episode(tmp_path / "rollouts" / "episode_0.hdf5", 11, success=False, seed=5)
    _episode(tmp_path / "rollouts" / "episode_1.hdf5", 7, success=True, seed=6)
    k, gamma = 4, 0.8
    dm = AlohaDataModule(data_dir=str(tmp_path / "demos"), rollout_dir=str(tmp_path / "rollouts"), chunk_size=k,
                         gamma=gamma, image_size=16, val_fraction=0.0, augment=False,
                         treat_demos_as_success_rollouts=False)
    dm.setup("fit")
    ds = dm.train_dataset()
    lengths = {0: 9, 1: 14, 2: 11, 3: 7}
    rewards = {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        e, t = int(s["episode"]), int(s["t"])
        length = lengths[e]
        expected = value_targets(length, rewards[e], gamma)[min(t + k, length - 1)]
        assert float(s["value"]) == pytest.approx(float(expected), abs=1e-6)
        assert int(s["sample_type"]) in ((POLICY,) if e < 2 else (WORLD_MODEL, VALUE))
        seen.add(e)
    assert seen == {0, 1, 2, 3}
    # hand check of one clipped index: demo 0 (T=9), t=7 -> future index min(11, 8) = 8 -> v = 1
    assert value_targets(9, 1.0, gamma)[min(7 + k, 8)] == 1.0
