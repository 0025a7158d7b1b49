"""Learning from experience: ``refine`` (the base run's config + configs/experience/<data>.yaml, from the base's
weights and statistics), ``init_from`` and ``cosmos_lit.checkpoint.start_from``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_lit.checkpoint import embedded_config, load_model, start_from
from cosmos_lit.experience import experience_overrides
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TINY_SPEC, tiny_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", "cosmos_lit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_refine_config_applies_the_experience_settings_on_the_base_run():
    r = cli("refine", f"ckpt_path={FIXTURE}", "data.rollout_dir=/somewhere/rollouts", "trainer.max_steps=7",
            "--print-config")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    embedded = embedded_config(FIXTURE)["config"]
    for line in ("demonstration_sampling_prob: 0.1", "success_rollout_sampling_prob: 0.5",
                 "treat_demos_as_success_rollouts: false", "mask_current_state_for_value: true",
                 "rollout_dir: /somewhere/rollouts", f"init_from: {FIXTURE}", "max_steps: 7", "decay_steps: 7",
                 f"run_name: {embedded.get('run_name') or 'aloha_sim'}_refined"):
        assert line in out, (line, out)
    overrides = experience_overrides(embedded, ROOT / "configs" / "experience" / "aloha_sim.yaml")
    assert "+data.treat_demos_as_success_rollouts=false" in overrides  # not in the base's data config: added
    assert {"data.demonstration_sampling_prob=0.1", "+data.demonstration_sampling_prob=0.1"} & set(overrides)
    assert not any(o.startswith(("eval.", "+eval.")) for o in overrides)  # the base run has eval: null


def test_refine_one_line_errors():
    r = cli("refine", f"ckpt_path={FIXTURE}", "--print-config")
    assert r.returncode == 2 and "refine: needs data.rollout_dir=" in r.stderr, r.stderr
    r = cli("refine", "--config", "configs/aloha_sim.yaml", f"ckpt_path={FIXTURE}", "data.rollout_dir=x")
    assert r.returncode == 2 and "not --config" in r.stderr and "init_from=CKPT" in r.stderr, r.stderr
    r = cli("refine", "ckpt_path=/nonexistent.ckpt", "data.rollout_dir=x")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_start_from_copies_the_deployed_weights_and_checks_the_layout():
    base_task = tiny_task(ema_decay=0.9)
    with torch.no_grad():  # the EMA backbone differs from the trained one: start_from takes what is deployed
        for p in base_task.backbone_ema.module.parameters():
            p.add_(0.01)
    base = base_task.inference_model
    torch.manual_seed(1)
    new = tiny_task(ema_decay=0.9)
    assert not torch.equal(next(new.model.backbone.parameters()), next(base.backbone.parameters()))
    start_from(new, base, "base.ckpt")
    for (k, a), b in zip(new.model.state_dict().items(), base.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(new.backbone_ema.module.state_dict().values(), base.backbone.state_dict().values()):
        assert torch.equal(a, b)
    from cosmos_lit.registry import build
    from helpers import TINY_NODES, TINY_STATS

    other_spec = {**TINY_SPEC.to_dict(), "chunk_size": TINY_SPEC.chunk_size * 2}
    other = build({"name": "cosmos_policy"}, "task", model=dict(TINY_NODES), spec=other_spec, statistics=TINY_STATS)
    with pytest.raises(ConfigError, match=r"init_from: base.ckpt: the checkpoint's data layout differs .*chunk_size"):
        start_from(other, base, "base.ckpt")


@pytest.mark.sim
def test_refine_trains_from_the_base_on_demos_and_rollouts(tmp_path):
    pytest.importorskip("gym_aloha")
    from cosmos_lit.rollout_files import write_rollout

    rng = np.random.default_rng(0)
    rollouts = tmp_path / "rollouts"
    rollouts.mkdir()
    for i, success in enumerate((True, False)):
        t = 60
        write_rollout(rollouts / f"episode_{i:05d}.hdf5", {"top": [rng.integers(0, 256, (64, 64, 3), np.uint8)
                                                                  for _ in range(t)]},
                      rng.uniform(-0.3, 0.3, (t, 14)), rng.uniform(-0.3, 0.3, (t, 14)), np.zeros(t), success=success,
                      task_description="transfer the cube")
    run = tmp_path / "run"
    r = cli("refine", f"ckpt_path={FIXTURE}", f"data.rollout_dir={rollouts}", f"data.data_dir={tmp_path / 'demos'}",
            "data.num_demos=2", "data.num_workers=0", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "task.optim.lr=0.0", f"run_dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    refined_path = run / "checkpoints" / "last.ckpt"
    refined, base = load_model(refined_path), load_model(FIXTURE)
    for (k, a), b in zip(refined.state_dict().items(), base.state_dict().values()):  # lr 0: still the base's
        assert torch.equal(a, b), k
    assert refined.statistics == base.statistics  # normalized as the base policy is
    assert refined.mask_current_state_for_value is True
    cfg = embedded_config(refined_path)["config"]
    assert cfg["init_from"] == str(FIXTURE) and cfg["data"]["demonstration_sampling_prob"] == 0.1
    assert cfg["data"]["rollout_dir"] == str(rollouts)


def test_planner_options_after_a_planner_name_on_a_checkpoint_config():
    """``planner=best_of_n planner.num_candidates=3`` on a checkpoint's config (validate, collect, the loop's
    evaluations): the named planner's defaults, then its options; a typo in them is the planner's own error."""
    r = cli("validate", f"ckpt_path={FIXTURE}", "planner=best_of_n", "planner.num_candidates=3",
            f"planner.planning_checkpoint={FIXTURE}", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "name: best_of_n" in r.stdout and "num_candidates: 3" in r.stdout and "planning_checkpoint:" in r.stdout


def _loop_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("experience_loop", ROOT / "scripts" / "experience_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experience_loop_stages_resume_and_report(tmp_path):
    """The driver's mechanics (the whole loop ran on a real checkpoint: docs/method.md#learning-from-experience):
    a finished stage is skipped, a failed one stops the loop without its marker, the report reads the episodes."""
    loop = _loop_script()
    done = tmp_path / "done"
    done.mkdir()
    (done / "stage.json").write_text("{}")
    assert loop.stage(tmp_path, "done", ["no-such-verb"]) == done  # skipped: never run
    with pytest.raises(SystemExit, match="stage broken failed"):
        loop.stage(tmp_path, "broken", ["no-such-verb"])
    assert not (tmp_path / "broken" / "stage.json").exists()
    ev = tmp_path / "ev" / "eval" / "step_0000000"
    ev.mkdir(parents=True)
    from cosmos_lit.envs.base import EpisodeResult
    from cosmos_lit.eval.rollouts import save_results

    save_results(ev / "episodes_rank0.json", [
        EpisodeResult("aloha_sim", "transfer_cube", 1, True, 4.0, 4.0, 120, 6.0, predicted_values=[0.5, 0.6, 0.9]),
        EpisodeResult("aloha_sim", "transfer_cube", 2, False, 1.0, 1.0, 400, 10.0, predicted_values=[0.1] * 8),
        EpisodeResult("aloha_sim", "transfer_cube", 3, False, 0.0, 0.0, 0, 0.0, error="worker crashed")])
    assert loop.row("base", tmp_path / "ev", 4) == "| base | 2 | 1/2 (50%) | 2.50 | 4 | 1.45 |"
