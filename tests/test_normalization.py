"""Statistics (official layout), min-max normalization round trip, cache file I/O and mismatch errors."""

import json
import os

import numpy as np
import pytest
import torch

from cosmos_lit.normalization import (
    STAT_NAMES,
    check_statistics,
    compute_statistics,
    load_statistics,
    normalize,
    normalized_range,
    read_statistics,
    save_statistics,
    source_difference,
    statistics_source,
    unnormalize,
    with_rescale,
)


@pytest.fixture()
def episodes():
    rng = np.random.default_rng(0)
    acts = [(rng.normal(size=(n, 3)) * [1, 10, 0.1] + [0, 5, -2]).astype(np.float32) for n in (7, 11, 4)]
    prop = [rng.uniform(-3, 3, size=(len(a), 2)).astype(np.float32) for a in acts]
    return acts, prop


def test_statistics_layout_and_values(episodes):
    acts, prop = episodes
    stats = compute_statistics({"actions": acts, "proprio": prop})
    assert set(stats) == {f"{g}_{s}" for g in ("actions", "proprio") for s in STAT_NAMES}
    pooled = np.concatenate(acts).astype(np.float64)
    np.testing.assert_allclose(stats["actions_min"], pooled.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions_max"], pooled.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions_mean"], pooled.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions_std"], pooled.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions_median"], np.median(pooled, 0), rtol=1e-6)
    # mean / std / median in float32, as the official datasets compute them; min / max exact
    f32 = np.concatenate(acts).astype(np.float32)
    assert stats["actions_mean"] == f32.mean(0).astype(np.float64).tolist()
    assert stats["actions_std"] == f32.std(0).astype(np.float64).tolist()
    assert stats["actions_min"] == pooled.min(0).tolist() and stats["actions_max"] == pooled.max(0).tolist()
    assert all(isinstance(v, list) and len(v) == 2 for k, v in stats.items() if k.startswith("proprio"))


def test_round_trip_numpy_and_torch(episodes):
    acts, prop = episodes
    stats = compute_statistics({"actions": acts, "proprio": prop})
    x = np.concatenate(acts)
    xn = normalize(x, stats, "actions")
    assert xn.dtype == np.float32 and xn.shape == x.shape
    assert xn.min() == pytest.approx(-1.0, abs=1e-6) and xn.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(unnormalize(xn, stats, "actions"), x, atol=1e-5)
    # hand-computed: x' = 2 (x - min) / (max - min) - 1
    lo, hi = np.array(stats["actions_min"]), np.array(stats["actions_max"])
    np.testing.assert_allclose(xn, 2 * (x - lo) / (hi - lo) - 1, atol=1e-6)
    xt = torch.from_numpy(x)
    xtn = normalize(xt, stats, "actions")
    assert isinstance(xtn, torch.Tensor) and xtn.dtype == torch.float32
    np.testing.assert_allclose(xtn.numpy(), xn, atol=1e-6)
    np.testing.assert_allclose(unnormalize(xtn, stats, "actions").numpy(), x, atol=1e-5)
    # batched (B, K, D) works on the last axis
    assert normalize(xt.reshape(1, -1, 3), stats, "actions").shape == (1, len(x), 3)


def test_constant_dimension_maps_to_zero_and_back():
    x = np.array([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]], np.float32)
    stats = compute_statistics({"proprio": x})
    xn = normalize(x, stats, "proprio")
    assert np.isfinite(xn).all() and (xn[:, 1] == 0).all()
    np.testing.assert_allclose(unnormalize(xn, stats, "proprio"), x, atol=1e-6)
    xt = normalize(torch.from_numpy(x), stats, "proprio")
    assert torch.isfinite(xt).all() and (xt[:, 1] == 0).all()


def test_dimension_mismatch_is_a_clear_error(episodes):
    acts, prop = episodes
    stats = compute_statistics({"actions": acts, "proprio": prop})
    with pytest.raises(ValueError, match="'actions' has 3 dimensions but the data has 5"):
        normalize(np.zeros((2, 5)), stats, "actions")


def test_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        compute_statistics({"actions": np.array([[np.nan, 1.0]])})


def test_save_load_atomic_and_check(tmp_path, episodes):
    acts, prop = episodes
    stats = compute_statistics({"actions": acts, "proprio": prop})
    path = tmp_path / "dataset_statistics.json"
    save_statistics(path, stats)
    assert sorted(os.listdir(tmp_path)) == ["dataset_statistics.json"]  # no temp file left behind
    loaded = load_statistics(path)
    assert set(loaded) == set(stats) and all(np.allclose(loaded[k], stats[k]) for k in stats)
    check_statistics(loaded, {"actions": 3, "proprio": 2}, source=str(path))
    with pytest.raises(ValueError, match=r"dataset_statistics.json: key 'actions_min' has 3 values but the data has 14"):
        check_statistics(loaded, {"actions": 14}, source=str(path))
    broken = dict(loaded)
    del broken["proprio_median"]
    with pytest.raises(ValueError, match="missing key 'proprio_median'"):
        check_statistics(broken, {"proprio": 2}, source="x.json")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="statistics file not found"):
        load_statistics(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_statistics(bad)
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_statistics(arr)


def test_statistics_source_is_a_checksum_of_the_values(episodes, tmp_path):
    acts, prop = episodes
    source = statistics_source({"actions": acts, "proprio": prop})
    assert source["episodes"] == 3 and source["steps"] == 22 and source["dims"] == {"actions": 3, "proprio": 2}
    assert len(source["checksum"]) == 32
    # the episode order does not change the statistics, nor the key; any value does
    assert statistics_source({"actions": acts[::-1], "proprio": prop[::-1]}) == source
    assert source_difference(source, source) is None
    changed = [a.copy() for a in acts]
    changed[1][3, 2] += 1e-3
    other = statistics_source({"actions": changed, "proprio": prop})
    assert source_difference(source, other) == "it was computed from other data (same sizes, other values)"
    fewer = statistics_source({"actions": acts[:2], "proprio": prop[:2]})
    assert source_difference(source, fewer) == "it was computed from other data (episodes 3 -> 2; steps 22 -> 18)"
    assert "records no source" in source_difference(None, source)
    # written under "_source" beside the official keys; load_statistics leaves it out
    stats = compute_statistics({"actions": acts, "proprio": prop})
    save_statistics(tmp_path / "s.json", stats, source=source)
    assert json.loads((tmp_path / "s.json").read_text())["_source"] == source
    assert load_statistics(tmp_path / "s.json") == stats and read_statistics(tmp_path / "s.json") == (stats, source)
    save_statistics(tmp_path / "official.json", stats)
    assert read_statistics(tmp_path / "official.json") == (stats, None)


@pytest.mark.parametrize("multiplier,non_negative,low", [(1.0, True, 0.0), (2.5, False, -2.5), (0.5, True, 0.0)])
def test_official_rescale_options(episodes, multiplier, non_negative, low):
    """rescale_data's options: [0, m] with non_negative_only, [-m, m] otherwise; the inverse returns the data."""
    acts, prop = episodes
    stats = with_rescale(compute_statistics({"actions": acts, "proprio": prop}), multiplier, non_negative)
    x = np.concatenate(acts)
    lo, hi = np.array(stats["actions_min"]), np.array(stats["actions_max"])
    unit = (x - lo) / (hi - lo)
    xn = normalize(x, stats, "actions")
    np.testing.assert_allclose(xn, multiplier * (unit if non_negative else 2 * unit - 1), atol=1e-5)
    assert normalized_range(stats) == (low, multiplier)
    assert xn.min() == pytest.approx(low, abs=1e-5) and xn.max() == pytest.approx(multiplier, abs=1e-5)
    np.testing.assert_allclose(unnormalize(xn, stats, "actions"), x, atol=1e-4)
    xt = normalize(torch.from_numpy(x), stats, "actions")
    np.testing.assert_allclose(unnormalize(xt, stats, "actions").numpy(), x, atol=1e-4)


def test_default_rescale_adds_nothing_and_mismatch_is_an_error(episodes):
    acts, prop = episodes
    stats = compute_statistics({"actions": acts, "proprio": prop})
    assert with_rescale(stats) == stats and normalized_range(stats) == (-1.0, 1.0)
    rescaled = with_rescale(stats, 2.0, True)
    assert rescaled["_rescale"] == {"scale_multiplier": 2.0, "non_negative_only": True}
    assert with_rescale(rescaled, 2.0, True) == rescaled
    with pytest.raises(ValueError, match="normalized with scale_multiplier=2.0, non_negative_only=True, but the "
                                         "data asks for scale_multiplier=1.0"):
        with_rescale(rescaled)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale_multiplier must be a positive number"):
            with_rescale(stats, bad)
    with pytest.raises(ValueError, match="'_rescale' must map"):
        normalize(np.zeros((1, 3)), {**stats, "_rescale": {"scale": 2}}, "actions")
