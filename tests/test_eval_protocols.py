"""Evaluation recipes for the released Cosmos Policy checkpoints: protocol tables, building the task from files in the
released layout (tiny random weights), the episode plan, the report, and the CLI on one short LIBERO episode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_lit import recipes
from cosmos_lit.recipes import PROTOCOLS, TINY_BACKBONE, TINY_IMAGE_ENCODER, plan_jobs, task_from_released
from cosmos_lit.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
LIBERO_PYTHON = REPO / ".venv-libero" / "bin" / "python"
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"  # libero_spatial 0
TINY_TEXT_DIM = 32  # text_embed_dim of cosmos_predict2_tiny's defaults: the T5 cache must have this width


def libero_python_or_skip() -> str:
    """The LIBERO interpreter; CI builds it before the tests, so there its absence is a failure."""
    if LIBERO_PYTHON.exists():
        return str(LIBERO_PYTHON)
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI: {LIBERO_PYTHON} is missing; `bash scripts/setup_libero.sh` must run before the tests")
    pytest.skip(f"no {LIBERO_PYTHON} (build it with `bash scripts/setup_libero.sh`)")


def stats_for(action_dim: int = 7, proprio_dim: int = 9) -> dict[str, list[float]]:
    """Official-layout statistics with a distinct range per dimension: dim i spans [10 i, 10 i + 1 + i]."""
    out = {}
    for group, n in (("actions", action_dim), ("proprio", proprio_dim)):
        lo = np.arange(n) * 10.0
        hi = lo + 1.0 + np.arange(n)
        out.update({f"{group}_min": lo.tolist(), f"{group}_max": hi.tolist(), f"{group}_mean": ((lo + hi) / 2).tolist(),
                    f"{group}_std": np.ones(n).tolist(), f"{group}_median": ((lo + hi) / 2).tolist()})
    return out


def write_released(folder: Path, benchmark: str = "libero", text_dim: int = TINY_TEXT_DIM,
                   stats: dict | None = None) -> dict[str, torch.Tensor]:
    """A tiny checkpoint in the released layout: official-key DiT .pt, statistics JSON, T5 pickle; and tokenizer.pth."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from cosmos_lit.models.image_encoders import WAN21_VAE_TINY
    from cosmos_lit.weights import wan_vae
    from cosmos_lit.weights.checkpoints import hf_repo
    from cosmos_lit.weights.cosmos_dit import TINY_DIT, diffusers_to_official
    from cosmos_lit.weights.t5 import save_t5_cache

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_DIT.items()}
    official = {k: v.clone() for k, v in diffusers_to_official(CosmosTransformer3DModel(**cfg).state_dict()).items()}
    torch.save(official, folder / f"{hf_repo(benchmark).split('/')[1]}.pt")
    vae = AutoencoderKLWan(**WAN21_VAE_TINY)
    vae_official = {k: v.clone() for k, v in wan_vae.diffusers_to_official(vae.state_dict(), 1, 4).items()}
    torch.save(vae_official, folder / "tokenizer.pth")
    (folder / f"{benchmark}_dataset_statistics.json").write_text(json.dumps(stats or stats_for()))
    cache = {INSTRUCTION: torch.randn(1, 512, text_dim).to(torch.bfloat16), "another task": torch.zeros(1, 512, text_dim)}
    save_t5_cache(cache, folder / f"{benchmark}_t5_embeddings.pkl")
    return {"dit": official, "vae": vae_official}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    folder = tmp_path_factory.mktemp("Cosmos-Policy-LIBERO-Predict2-2B")
    weights = write_released(folder)
    return folder, weights


def tiny_from_released(folder: Path, **kwargs):
    return task_from_released(folder, "libero", folder / "tokenizer.pth", backbone_overrides=dict(TINY_BACKBONE),
                              trust_pickle=True, image_encoder_overrides=dict(TINY_IMAGE_ENCODER), **kwargs)


def observation(size: int = 256, instruction: str = INSTRUCTION) -> dict:
    rng = np.random.default_rng(0)
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("wrist", "primary")},
            "proprio": np.arange(9) * 10.0 + 0.5, "instruction": instruction}


# ------------------------------------------------------------------------------------------------ protocol tables


def test_libero_protocol_table():
    from cosmos_lit.envs.libero import SUITE_MAX_STEPS

    p = PROTOCOLS["libero"]
    assert {s: set(t.values()) for s, t in p.suites.items()} == {
        "libero_spatial": {220}, "libero_object": {280}, "libero_goal": {300}, "libero_10": {520}}
    assert all(list(t) == list(range(10)) for t in p.suites.values())
    assert all(SUITE_MAX_STEPS[s] == p.horizon(s, 0) for s in p.suites)  # the env's defaults agree
    assert (p.trials_per_task, p.seeds, p.execute_steps, p.num_steps) == (50, (195, 196, 197), 16, 5)
    assert (p.spec["chunk_size"], p.spec["cameras"], p.spec["proprio_dim"], p.spec["action_dim"], p.spec["image_size"]) == \
        (16, ["wrist", "primary"], 9, 7, 224)
    assert p.env["num_wait_steps"] == 10 and p.env["image_size"] == 256 and p.env["cameras"] == p.spec["cameras"]


def test_robocasa_protocol_table():
    from cosmos_lit.envs.robosuite import ROBOCASA_LAYOUT_AND_STYLE_IDS, ROBOCASA_MAX_STEPS

    p = PROTOCOLS["robocasa"]
    tasks = p.suites["robocasa"]
    assert len(tasks) == 24 and tasks == ROBOCASA_MAX_STEPS
    assert (tasks["PnPCounterToSink"], tasks["PnPCounterToMicrowave"], tasks["OpenDoubleDoor"], tasks["CloseDoubleDoor"],
            tasks["CoffeePressButton"], tasks["CoffeeServeMug"], tasks["OpenDrawer"]) == (700, 600, 1000, 700, 300, 600, 500)
    assert p.scenes == ROBOCASA_LAYOUT_AND_STYLE_IDS == ((1, 1), (2, 2), (4, 4), (6, 9), (7, 10))
    assert (p.trials_per_task, p.seeds, p.spec["chunk_size"], p.execute_steps, p.num_steps) == (50, (195, 196, 197), 32, 16, 5)
    assert p.spec["cameras"] == ["robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"] == p.env["cameras"]
    assert p.env["obj_instance_split"] == "B"


def test_aloha_protocol_is_real_robot_only():
    p = PROTOCOLS["aloha"]
    assert (p.spec["chunk_size"], p.execute_steps, p.num_steps, p.spec["gamma"]) == (50, 50, 10, 0.998)
    assert not p.simulated
    with pytest.raises(ConfigError, match="real-robot"):
        plan_jobs(p)
    assert "aloha" not in recipes.build_parser()._actions[1].choices


@pytest.mark.parametrize("benchmark", ["libero", "robocasa"])
def test_env_and_policy_image_steps_compose_to_the_official_preset(benchmark):
    """What the env does (flip, JPEG) followed by the policy's pipeline equals the official test-time preset."""
    from cosmos_lit.envs.obs_utils import camera_image
    from cosmos_lit.images import ImagePipeline, eval_pipeline

    p = PROTOCOLS[benchmark]
    rng = np.random.default_rng(3)
    raw = np.clip(rng.normal(128, 40, (p.env["image_size"],) * 2 + (3,)), 0, 255).astype(np.uint8)  # upside-down render
    raw = np.ascontiguousarray(np.repeat(np.repeat(raw[::8, ::8], 8, 0), 8, 1))  # blocky: JPEG-stable content
    env_frame = camera_image(raw, flip=True, jpeg=bool(p.env.get("jpeg_roundtrip", False)))  # robosuite family: upright
    ours = ImagePipeline(image_size=224, **p.image_pipeline).frame(env_frame)
    official = eval_pipeline(benchmark, 224).frame(raw)
    assert ours.shape == official.shape == (224, 224, 3)
    # same steps in the same order (0 here); a missing JPEG round trip gives ~3.8, a missing crop ~26
    assert np.abs(ours.astype(int) - official.astype(int)).mean() < 0.5


# ------------------------------------------------------------------------------------------------ episode plan


def test_libero_episode_plan_maps_episode_index_to_initial_state():
    jobs = plan_jobs(PROTOCOLS["libero"], suites=["libero_goal"], tasks=[3, 7])
    assert len(jobs) == 2 * 3 and {j.run_seed for j in jobs} == {195, 196, 197}
    for job in jobs:
        assert job.env["suite"] == "libero_goal" and job.env["task_id"] in (3, 7) and job.max_steps == 300
        assert job.episodes == list(range(50))
        assert [s % 50 for s in job.env_seeds] == job.episodes  # LIBERO restores initial state seed % 50
    assert len({s for j in jobs for s in j.env_seeds}) == 2 * 3 * 50 / 2  # seeds differ per run seed, not per task
    short = plan_jobs(PROTOCOLS["libero"], suites=["libero_10"], tasks=[0], trials=2, seeds=[7], max_steps=5,
                      env_overrides={"image_size": 128})
    assert [(j.env_seeds, j.max_steps, j.env["max_steps"], j.env["image_size"]) for j in short] == [([7000, 7001], 5, 5, 128)]
    with pytest.raises(ConfigError, match="unknown 'libero_100'"):
        plan_jobs(PROTOCOLS["libero"], suites=["libero_100"])
    with pytest.raises(ConfigError, match="unknown 10"):
        plan_jobs(PROTOCOLS["libero"], tasks=[10])


def test_robocasa_plan_splits_trials_over_the_five_kitchens():
    jobs = plan_jobs(PROTOCOLS["robocasa"], tasks=["OpenDoubleDoor"], seeds=[195])
    assert [j.env["layout_and_style_ids"] for j in jobs] == [[[1, 1]], [[2, 2]], [[4, 4]], [[6, 9]], [[7, 10]]]
    assert [j.episodes for j in jobs] == [list(range(10 * i, 10 * i + 10)) for i in range(5)]
    assert all(j.env["env_name"] == "OpenDoubleDoor" and j.max_steps == 1000 for j in jobs)
    assert sum(len(j.episodes) for j in plan_jobs(PROTOCOLS["robocasa"], tasks=["OpenDrawer"], trials=3)) == 9


def test_summary_per_task_suite_seed_and_average():
    def ep(suite, task, seed, success, error=None):
        return {"suite": suite, "task": task, "run_seed": seed, "success": success, "error": error, "instruction": None}

    eps = [ep("a", 0, 1, True), ep("a", 0, 1, False), ep("a", 1, 2, True), ep("a", 1, 2, True), ep("a", 1, 2, False, "boom"),
           ep("b", 0, 1, False), ep("b", 0, 2, False)]
    s = recipes.summarize_episodes(eps)
    a = s["suites"]["a"]
    assert a["tasks"]["0"]["success_rate"] == 0.5 and a["tasks"]["1"]["success_rate"] == 1.0
    assert a["tasks"]["1"]["errors"] == 1 and a["tasks"]["1"]["episodes"] == 2  # errors counted, not scored
    assert a["success_rate"] == 0.75 and a["per_seed"] == {"1": 0.5, "2": 1.0} and a["std_over_seeds"] == 0.25
    assert s["average"] == (0.75 + 0.0) / 2


# ------------------------------------------------------------------------------------------------ the released task


def test_task_from_released_loads_every_file(released):
    folder, weights = released
    task = tiny_from_released(folder)
    assert task.spec.image_size == 224 and task.spec.cameras == ("wrist", "primary") and task.spec.chunk_size == 16
    assert task.sampling_cfg["num_steps"] == 5 and not task.training
    net = task.backbone.net
    torch.testing.assert_close(net.patch_embed.proj.weight, weights["dit"]["net.x_embedder.proj.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(net.transformer_blocks[1].attn2.to_k.weight,
                               weights["dit"]["net.blocks.1.cross_attn.k_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(task.image_encoder.vae.encoder.conv_in.weight, weights["vae"]["encoder.conv1.weight"],
                               rtol=0, atol=0)
    assert task.statistics == stats_for()
    emb = task.text_encoder([INSTRUCTION])
    assert emb.shape == (1, 512, TINY_TEXT_DIM) and emb.dtype == torch.float32
    hp = task.hparams["model"]
    assert hp["backbone"]["pretrained"].endswith("Cosmos-Policy-LIBERO-Predict2-2B.pt")
    assert hp["text_encoder"]["path"].endswith("libero_t5_embeddings.pkl")


def test_released_policy_returns_an_unnormalized_chunk(released):
    folder, _ = released
    task = tiny_from_released(folder, spec_overrides={"image_size": 64})  # 224² costs ~20 s per query on 2 CPU cores
    lo, hi = np.asarray(stats_for()["actions_min"]), np.asarray(stats_for()["actions_max"])

    clipped = recipes.policy_for(task, PROTOCOLS["libero"], seed=195, clip_actions=True)
    assert clipped.execute_steps == 16
    out = clipped([observation()])
    assert out["actions"].shape == (1, 16, 7) and out["actions"].dtype == np.float32
    assert np.all(out["actions"] >= lo - 1e-4) and np.all(out["actions"] <= hi + 1e-4)  # dim i in its own range
    assert out["actions"].std(axis=(0, 1)).min() > 0  # a sampled chunk, not the bounds

    raw = recipes.policy_for(task, PROTOCOLS["libero"], seed=195)  # official: no clipping
    out = raw([observation()])
    normalized = task.read_outputs(out["latents"])["actions"].numpy()
    np.testing.assert_allclose(out["actions"], 0.5 * (normalized + 1) * (hi - lo) + lo, rtol=1e-5, atol=1e-4)


def test_task_from_released_errors(released, tmp_path):
    from cosmos_lit.weights import UntrustedPickleError

    folder, _ = released
    with pytest.raises(UntrustedPickleError, match="libero_t5_embeddings.pkl"):
        task_from_released(folder, "libero", folder / "tokenizer.pth", backbone_overrides=dict(TINY_BACKBONE),
                           image_encoder_overrides=dict(TINY_IMAGE_ENCODER))
    with pytest.raises(FileNotFoundError, match="no_such_vae.pth"):
        task_from_released(folder, "libero", tmp_path / "no_such_vae.pth", dict(TINY_BACKBONE), trust_pickle=True)
    with pytest.raises(FileNotFoundError, match="robocasa_dataset_statistics.json"):
        task_from_released(folder, "robocasa", folder / "tokenizer.pth", dict(TINY_BACKBONE), trust_pickle=True)

    bad = tmp_path / "Cosmos-Policy-LIBERO-Predict2-2B"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "libero_dataset_statistics.json").unlink()
    (bad / "libero_dataset_statistics.json").write_text(json.dumps(stats_for(proprio_dim=8)))
    with pytest.raises(ConfigError, match="proprio statistics have 8 dims.*expects 9"):
        tiny_from_released(bad)
    (bad / "libero_dataset_statistics.json").write_text(json.dumps(stats_for()))
    (bad / "libero_t5_embeddings.pkl").unlink()
    from cosmos_lit.weights.t5 import save_t5_cache

    save_t5_cache({INSTRUCTION: torch.zeros(1, 512, 16)}, bad / "libero_t5_embeddings.pkl")
    with pytest.raises(ConfigError, match="has dim 16, expected 32"):
        tiny_from_released(bad)


def test_cli_tiny_model_from_a_lightning_checkpoint(tmp_path):
    from cosmos_lit.policy import load_task

    task = recipes.tiny_random_task("libero", image_size=32, seed=5)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "cosmos_lit": {"task": "cosmos_policy"}}, ckpt)
    args = recipes.build_parser().parse_args(["libero", "--tiny", "--checkpoint", str(ckpt)])
    built, meta = recipes._build_task(args, PROTOCOLS["libero"])
    assert meta["weights"] == "lightning checkpoint" and built.spec.image_size == 32
    for (k, a), b in zip(task.state_dict().items(), built.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    other = recipes.tiny_random_task("robocasa", image_size=32)
    torch.save({"hyper_parameters": dict(other.hparams), "state_dict": other.state_dict()}, tmp_path / "rc.ckpt")
    args = recipes.build_parser().parse_args(["libero", "--tiny", "--checkpoint", str(tmp_path / "rc.ckpt")])
    with pytest.raises(ConfigError, match="cameras"):
        recipes._build_task(args, PROTOCOLS["libero"])
    assert load_task(ckpt).spec.cameras == ("wrist", "primary")


def test_cli_needs_weights_and_reports_one_line(capsys):
    assert recipes.main(["libero", "--trials", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --checkpoint-dir and --vae are required (or --tiny for a toy model)"
    assert recipes.main(["libero", "--tiny", "--suites", "libero_100"]) == 2
    assert "unknown 'libero_100'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI, closed loop


@pytest.mark.sim
def test_cli_runs_one_libero_episode_from_the_released_layout(released, tmp_path):
    python = libero_python_or_skip()
    folder, _ = released
    out = tmp_path / "report" / "results.json"
    cmd = [sys.executable, "-m", "cosmos_lit.recipes", "libero", "--tiny", "--checkpoint-dir", str(folder),
           "--vae", str(folder / "tokenizer.pth"), "--trust-pickle", "--image-size", "64", "--suites", "libero_spatial",
           "--tasks", "0", "--trials", "1", "--seeds", "195", "--max-steps", "4", "--num-workers", "1",
           "--env-image-size", "128", "--videos", "1", "--python-executable", python, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "libero_spatial" in proc.stdout and "average" in proc.stdout and "0.0%" in proc.stdout
    report = json.loads(out.read_text())
    (ep,) = report["episodes"]
    assert ep["error"] is None and ep["steps"] == 4 and ep["seed"] == 195000 and ep["task"] == 0
    assert ep["instruction"] == INSTRUCTION  # the env's language matched the T5 cache key
    assert report["summary"]["suites"]["libero_spatial"]["tasks"]["0"]["episodes"] == 1
    assert report["summary"]["average"] == 0.0 and report["protocol"]["execute_steps"] == 16
    assert report["meta"]["num_steps"] == 5 and Path(ep["video_path"]).stat().st_size > 0
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.sim
def test_cli_robocasa_without_robocasa_stops_with_one_line(tmp_path):
    cmd = [sys.executable, "-m", "cosmos_lit.recipes", "robocasa", "--tiny", "--image-size", "32", "--tasks",
           "PnPCounterToCab", "--trials", "1", "--seeds", "195", "--max-steps", "2", "--num-workers", "1",
           "--out", str(tmp_path / "r.json")]
    try:
        import robocasa  # noqa: F401
        pytest.skip("robocasa is installed here")
    except ImportError:
        pass
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: env robocasa could not be built: ImportError: RoboCasa is not installed")
    assert not (tmp_path / "r.json").exists()
