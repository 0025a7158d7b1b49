"""Evaluation protocols (configs/protocol/*.yaml) and the ``python -m cosmos_lit eval`` verb: the protocol tables,
overrides, building the model from files in the released layout (tiny random weights), the episode plan, the
report, and the verb end to end on one short episode (ALOHA sim on the CPU; LIBERO in .venv-libero)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_lit.eval import (
    TINY_BACKBONE,
    TINY_IMAGE_ENCODER,
    load,
    load_protocol,
    model_from_released,
    plan_jobs,
    policy_for,
    released_model_config,
    summarize_episodes,
    tiny_random_model,
)
from cosmos_lit.eval import run as eval_run
from cosmos_lit.eval.protocols import RunOptions
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
from helpers import libero_python_or_skip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = REPO / "configs" / "protocol"
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"  # libero_spatial 0
TINY_TEXT_DIM = 32  # text_embed_dim of cosmos_predict2_tiny's defaults: the T5 cache must have this width


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


@pytest.fixture(scope="module")
def libero():
    return load_protocol("libero")


@pytest.fixture(scope="module")
def robocasa():
    return load_protocol("robocasa")


def tiny_from_released(folder: Path, **kwargs):
    return model_from_released(folder, "libero", folder / "tokenizer.pth", backbone_overrides=dict(TINY_BACKBONE),
                               trust_pickle=True, image_encoder_overrides=dict(TINY_IMAGE_ENCODER), **kwargs)


def observation(size: int = 256, instruction: str = INSTRUCTION) -> dict:
    rng = np.random.default_rng(0)
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("wrist", "primary")},
            "proprio": np.arange(9) * 10.0 + 0.5, "instruction": instruction}


def verb(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m cosmos_lit eval ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "cosmos_lit", "eval", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------------------------------------ protocol tables


def test_libero_protocol_table(libero):
    from cosmos_lit.envs.libero import SUITE_MAX_STEPS

    p = libero
    assert {s: set(t.values()) for s, t in p.horizons.items()} == {
        "libero_spatial": {220}, "libero_object": {280}, "libero_goal": {300}, "libero_10": {520}}
    assert all(list(t) == list(range(10)) for t in p.task_suites.values())
    assert all(SUITE_MAX_STEPS[s] == p.horizon(s, 0) for s in p.task_suites)  # the env's defaults, not a copy
    assert (p.trials, p.seeds, p.execute_steps, p.num_steps) == (50, (195, 196, 197), 16, 5)
    assert (p.spec["chunk_size"], p.spec["cameras"], p.spec["proprio_dim"], p.spec["action_dim"], p.spec["image_size"]) == \
        (16, ["wrist", "primary"], 9, 7, 224)
    assert p.env["num_wait_steps"] == 10 and p.env["image_size"] == 256 and p.env["cameras"] == p.spec["cameras"]
    assert "suite" not in p.env and "task_id" not in p.env  # per-job keys come from the plan
    assert p.simulated and p.python_executable.endswith(".venv-libero/bin/python")


def test_robocasa_protocol_table(robocasa):
    from cosmos_lit.envs.robosuite import ROBOCASA_LAYOUT_AND_STYLE_IDS, ROBOCASA_MAX_STEPS

    p = robocasa
    tasks = p.horizons["robocasa"]
    assert len(tasks) == 24 and tasks == ROBOCASA_MAX_STEPS and list(tasks) == list(p.task_suites["robocasa"])
    assert (tasks["PnPCounterToSink"], tasks["PnPCounterToMicrowave"], tasks["OpenDoubleDoor"], tasks["CloseDoubleDoor"],
            tasks["CoffeePressButton"], tasks["CoffeeServeMug"], tasks["OpenDrawer"]) == (700, 600, 1000, 700, 300, 600, 500)
    assert p.scenes == ROBOCASA_LAYOUT_AND_STYLE_IDS == ((1, 1), (2, 2), (4, 4), (6, 9), (7, 10))
    assert (p.trials, p.seeds, p.spec["chunk_size"], p.execute_steps, p.num_steps) == (50, (195, 196, 197), 32, 16, 5)
    assert p.spec["cameras"] == ["robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"] == p.env["cameras"]
    assert p.env["obj_instance_split"] == "B" and p.spec["action_dim"] == 7


def test_aloha_protocol_is_real_robot_only(capsys):
    p = load_protocol("aloha")
    assert (p.spec["chunk_size"], p.execute_steps, p.num_steps, p.spec["gamma"]) == (50, 50, 10, 0.998)
    assert p.spec["cameras"] == ["cam_left_wrist", "cam_right_wrist", "cam_high"] and p.max_steps == 1100
    assert not p.simulated
    with pytest.raises(ConfigError, match="real-robot"):
        plan_jobs(p)
    assert eval_run.main(str(PROTOCOLS / "aloha.yaml"), ["tiny=true"]) == 2  # the verb says so in one line
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: aloha: real-robot") and "cannot run in simulation" in err


def test_aloha_sim_protocol_keeps_clear_of_the_demo_seeds():
    p, _ = load("aloha_sim")
    assert p.task_suites == {"aloha_sim": ("transfer_cube",)} and p.horizon("aloha_sim", "transfer_cube") == 400
    assert p.num_steps is None and p.execute_steps == 50 and p.env["fast_render"] is True
    seeds = [s for job in plan_jobs(p) for s in job.env_seeds]
    assert min(seeds) == 100_000 and len(seeds) == 50  # the demos use scene seeds 0 .. num_demos - 1


def test_overrides_and_unknown_keys():
    p, opts = load("libero", ["trials=2", "seeds=[7]", "max_steps=5", "eval.env.image_size=128", "data.image_size=64",
                              "suites=[libero_goal]", "tasks=[3]", "tiny=true", "device=cpu", "num_workers=1"])
    assert (p.trials, p.seeds, p.horizon("libero_goal", 3), p.env["image_size"], p.spec["image_size"]) == (2, (7,), 5, 128, 64)
    assert opts == RunOptions(tiny=True, suites=("libero_goal",), tasks=(3,), num_workers=1)
    with pytest.raises(ConfigError, match=r"'chekpoint_dir=ckpt'.*unknown top-level key .*\(did you mean 'checkpoint_dir'\?\)"):
        load("libero", ["chekpoint_dir=ckpt"])
    with pytest.raises(ConfigError, match=r"unknown key 'imge_size' in eval.env \(did you mean 'image_size'\?\)"):
        load("libero", ["eval.env.imge_size=128"])
    with pytest.raises(ConfigError, match="precision: expected auto, fp32 or bf16"):
        load("libero", ["precision=fp16"])
    with pytest.raises(ConfigError, match=r"protocol: unknown 'libro' \(did you mean 'libero'\?\)"):
        load("libro")


@pytest.mark.parametrize("benchmark", ["libero", "robocasa"])
def test_env_and_policy_image_steps_compose_to_the_official_preset(benchmark):
    """What the env does (flip, JPEG) followed by the policy's pipeline equals the official test-time steps
    (``prepare_images_for_model``: flip, JPEG q95, resize, centre crop) on the raw render."""
    from cosmos_lit.envs.obs_utils import camera_image
    from cosmos_lit.eval import policy_image_pipeline
    from cosmos_lit.images import ImagePipeline

    p = load_protocol(benchmark)
    rng = np.random.default_rng(3)
    raw = np.clip(rng.normal(128, 40, (p.env["image_size"],) * 2 + (3,)), 0, 255).astype(np.uint8)  # upside-down render
    raw = np.ascontiguousarray(np.repeat(np.repeat(raw[::8, ::8], 8, 0), 8, 1))  # blocky: JPEG-stable content
    env_frame = camera_image(raw, flip=True, jpeg=bool(p.env.get("jpeg_roundtrip", False)))  # robosuite family: upright
    ours = policy_image_pipeline(p).frame(env_frame)
    official = ImagePipeline(image_size=224, flip=True, jpeg_quality=95, center_crop=True).frame(raw)
    assert ours.shape == official.shape == (224, 224, 3)
    # same steps in the same order (0 here); a missing JPEG round trip gives ~3.8, a missing crop ~26
    assert np.abs(ours.astype(int) - official.astype(int)).mean() < 0.5


# ------------------------------------------------------------------------------------------------ episode plan


def test_libero_episode_plan_maps_episode_index_to_initial_state(libero):
    jobs = plan_jobs(libero, suites=["libero_goal"], tasks=[3, 7])
    assert len(jobs) == 2 * 3 and {j.run_seed for j in jobs} == {195, 196, 197}
    for job in jobs:
        assert job.env["suite"] == "libero_goal" and job.env["task_id"] in (3, 7) and job.max_steps == 300
        assert job.episodes == list(range(50))
        assert [s % 50 for s in job.env_seeds] == job.episodes  # LIBERO restores initial state seed % 50
    assert len({s for j in jobs for s in j.env_seeds}) == 2 * 3 * 50 / 2  # seeds differ per run seed, not per task
    short = plan_jobs(libero, suites=["libero_10"], tasks=[0], trials=2, seeds=[7], max_steps=5,
                      env_overrides={"image_size": 128})
    assert [(j.env_seeds, j.max_steps, j.env["max_steps"], j.env["image_size"]) for j in short] == [([7000, 7001], 5, 5, 128)]
    with pytest.raises(ConfigError, match="unknown 'libero_100'"):
        plan_jobs(libero, suites=["libero_100"])
    with pytest.raises(ConfigError, match="unknown 10"):
        plan_jobs(libero, tasks=[10])


def test_robocasa_plan_splits_trials_over_the_five_kitchens(robocasa):
    jobs = plan_jobs(robocasa, tasks=["OpenDoubleDoor"], seeds=[195])
    assert [j.env["layout_and_style_ids"] for j in jobs] == [[[1, 1]], [[2, 2]], [[4, 4]], [[6, 9]], [[7, 10]]]
    assert [j.episodes for j in jobs] == [list(range(10 * i, 10 * i + 10)) for i in range(5)]
    assert all(j.env["env_name"] == "OpenDoubleDoor" and j.max_steps == 1000 for j in jobs)
    assert sum(len(j.episodes) for j in plan_jobs(robocasa, tasks=["OpenDrawer"], trials=3)) == 9


def test_summary_per_task_suite_seed_and_average():
    def ep(suite, task, seed, success, error=None):
        return {"suite": suite, "task": task, "run_seed": seed, "success": success, "error": error, "instruction": None}

    eps = [ep("a", 0, 1, True), ep("a", 0, 1, False), ep("a", 1, 2, True), ep("a", 1, 2, True), ep("a", 1, 2, False, "boom"),
           ep("b", 0, 1, False), ep("b", 0, 2, False)]
    s = summarize_episodes(eps)
    a = s["suites"]["a"]
    assert a["tasks"]["0"]["success_rate"] == 0.5 and a["tasks"]["1"]["success_rate"] == 1.0
    assert a["tasks"]["1"]["errors"] == 1 and a["tasks"]["1"]["episodes"] == 2  # errors counted, not scored
    assert a["success_rate"] == 0.75 and a["per_seed"] == {"1": 0.5, "2": 1.0} and a["std_over_seeds"] == 0.25
    assert s["average"] == (0.75 + 0.0) / 2


# ------------------------------------------------------------------------------------------------ the released model


def test_model_from_released_loads_every_file(released, libero):
    folder, weights = released
    model = tiny_from_released(folder)
    assert model.spec.image_size == 224 and model.spec.cameras == ("wrist", "primary") and model.spec.chunk_size == 16
    assert not model.training
    net = model.backbone.net
    torch.testing.assert_close(net.patch_embed.proj.weight, weights["dit"]["net.x_embedder.proj.1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(net.transformer_blocks[1].attn2.to_k.weight,
                               weights["dit"]["net.blocks.1.cross_attn.k_proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.image_encoder.vae.encoder.conv_in.weight, weights["vae"]["encoder.conv1.weight"],
                               rtol=0, atol=0)
    assert model.statistics == stats_for()
    emb = model.text_encoder([INSTRUCTION])
    assert emb.shape == (1, 512, TINY_TEXT_DIM) and emb.dtype == torch.float32
    config = released_model_config(folder, libero, folder / "tokenizer.pth", dict(TINY_BACKBONE), True,
                                   image_encoder_overrides=dict(TINY_IMAGE_ENCODER))
    assert config["components"]["backbone"]["pretrained"].endswith("Cosmos-Policy-LIBERO-Predict2-2B.pt")
    assert config["components"]["text_encoder"]["path"].endswith("libero_t5_embeddings.pkl")
    # the protocol's denoising steps go to the policy, per call; the model keeps its own default
    assert policy_for(model, libero).num_steps == libero.num_steps == 5


def test_released_policy_returns_an_unnormalized_chunk(released, libero):
    folder, _ = released
    model = tiny_from_released(folder, spec_overrides={"image_size": 64})  # 224² costs ~20 s per query on 2 CPU cores
    lo, hi = np.asarray(stats_for()["actions_min"]), np.asarray(stats_for()["actions_max"])

    clipped = policy_for(model, libero, seed=195, clip_actions=True)
    assert clipped.execute_steps == 16
    out = clipped([observation()])
    assert out["actions"].shape == (1, 16, 7) and out["actions"].dtype == np.float32
    assert np.all(out["actions"] >= lo - 1e-4) and np.all(out["actions"] <= hi + 1e-4)  # dim i in its own range
    assert out["actions"].std(axis=(0, 1)).min() > 0  # a sampled chunk, not the bounds

    raw = policy_for(model, libero, seed=195)  # official: no clipping
    out = raw([observation()])
    normalized = model.read_outputs(out["latents"])["actions"].numpy()
    np.testing.assert_allclose(out["actions"], 0.5 * (normalized + 1) * (hi - lo) + lo, rtol=1e-5, atol=1e-4)


def test_model_from_released_errors(released, tmp_path):
    from cosmos_lit.weights import UntrustedPickleError

    folder, _ = released
    with pytest.raises(UntrustedPickleError, match="libero_t5_embeddings.pkl"):
        model_from_released(folder, "libero", folder / "tokenizer.pth", backbone_overrides=dict(TINY_BACKBONE),
                            image_encoder_overrides=dict(TINY_IMAGE_ENCODER))
    with pytest.raises(FileNotFoundError, match="no_such_vae.pth"):
        model_from_released(folder, "libero", tmp_path / "no_such_vae.pth", "cpu", dict(TINY_BACKBONE), trust_pickle=True)
    with pytest.raises(FileNotFoundError, match="robocasa_dataset_statistics.json"):
        model_from_released(folder, "robocasa", folder / "tokenizer.pth", "cpu", dict(TINY_BACKBONE), trust_pickle=True)

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


def _save_lightning_checkpoint(model, path: Path) -> None:
    """A checkpoint as ``fit`` writes it: the task's hyper-parameters and state dict."""
    from cosmos_lit.tasks.post_training import CosmosPolicyTask

    components = {"backbone": dict(TINY_BACKBONE), "image_encoder": dict(TINY_IMAGE_ENCODER), "text_encoder": {"name": "hash"}}
    task = CosmosPolicyTask(model=components, spec=model.spec.to_dict(), statistics=model.statistics)
    task.model.load_state_dict(model.state_dict())
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "cosmos_lit": {"task": "cosmos_policy"}}, path)


def test_verb_model_from_a_lightning_checkpoint(tmp_path, libero, robocasa):
    from cosmos_lit.checkpoint import load_model

    model = tiny_random_model(libero, image_size=32, seed=5)
    ckpt = tmp_path / "tiny.ckpt"
    _save_lightning_checkpoint(model, ckpt)
    built, meta = eval_run.build_model(RunOptions(tiny=True, checkpoint=str(ckpt)), libero)
    assert meta["weights"] == "lightning checkpoint" and built.spec.image_size == 32
    for (k, a), b in zip(model.state_dict().items(), built.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    _save_lightning_checkpoint(tiny_random_model(robocasa, image_size=32), tmp_path / "rc.ckpt")
    with pytest.raises(ConfigError, match="cameras"):
        eval_run.build_model(RunOptions(checkpoint=str(tmp_path / "rc.ckpt")), libero)
    assert load_model(ckpt).spec.cameras == ("wrist", "primary")


def test_verb_needs_weights_and_reports_one_line(capsys):
    libero_yaml = str(PROTOCOLS / "libero.yaml")
    assert eval_run.main(libero_yaml, ["trials=1"]) == 2
    assert capsys.readouterr().err.strip() == ("error: checkpoint_dir and vae are required (a released checkpoint), "
                                               "or checkpoint=<run.ckpt>, or tiny=true for a toy model")
    assert eval_run.main(libero_yaml, ["tiny=true", "suites=[libero_100]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown 'libero_100'" in err
    assert eval_run.main(libero_yaml, ["tiny=true", "trails=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'trials'" in err


# ------------------------------------------------------------------------------------------------ the verb, closed loop


def check_report(out: Path, steps: int) -> dict:
    report = json.loads(out.read_text())
    (ep,) = report["episodes"]
    assert ep["error"] is None and ep["steps"] == steps and Path(ep["video_path"]).stat().st_size > 0
    assert report["summary"]["average"] == 0.0 and not list(out.parent.glob(".*.tmp*"))
    return report


@pytest.mark.sim
def test_verb_runs_one_aloha_sim_episode_on_the_cpu(tmp_path):
    out = tmp_path / "report" / "results.json"
    proc = verb("--config", str(PROTOCOLS / "aloha_sim.yaml"), "tiny=true", "trials=1", "max_steps=4",
                "num_workers=1", "videos=1", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aloha_sim" in proc.stdout and "average" in proc.stdout and "0.0%" in proc.stdout
    report = check_report(out, 4)
    (ep,) = report["episodes"]
    assert ep["seed"] == 100_000 and ep["task"] == "transfer_cube" and ep["instruction"].startswith("pick up the red cube")
    assert report["summary"]["suites"]["aloha_sim"]["tasks"]["transfer_cube"]["episodes"] == 1
    assert report["protocol"]["execute_steps"] == 50 and report["protocol"]["trials"] == 1
    assert report["meta"]["weights"] == "random (tiny)" and report["meta"]["num_steps"] == 5  # the model's default
    assert report["meta"]["spec"]["image_size"] == 64  # data.image_size, as the demos


@pytest.mark.sim
def test_verb_runs_one_libero_episode_from_the_released_layout(released, tmp_path):
    python = libero_python_or_skip()
    folder, _ = released
    out = tmp_path / "report" / "results.json"
    proc = verb("--config", str(PROTOCOLS / "libero.yaml"), "tiny=true", f"checkpoint_dir={folder}",
                f"vae={folder / 'tokenizer.pth'}", "trust_pickle=true", "data.image_size=64", "suites=[libero_spatial]",
                "tasks=[0]", "trials=1", "seeds=[195]", "max_steps=4", "num_workers=1", "eval.env.image_size=128",
                "videos=1", f"python_executable={python}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "libero_spatial" in proc.stdout and "average" in proc.stdout and "0.0%" in proc.stdout
    report = check_report(out, 4)
    (ep,) = report["episodes"]
    assert ep["seed"] == 195000 and ep["task"] == 0
    assert ep["instruction"] == INSTRUCTION  # the env's language matched the T5 cache key
    assert report["summary"]["suites"]["libero_spatial"]["tasks"]["0"]["episodes"] == 1
    assert report["protocol"]["execute_steps"] == 16 and report["meta"]["num_steps"] == 5


@pytest.mark.sim
def test_verb_robocasa_without_robocasa_stops_with_one_line(tmp_path):
    try:
        import robocasa  # noqa: F401
        pytest.skip("robocasa is installed here")
    except ImportError:
        pass
    proc = verb("--config", str(PROTOCOLS / "robocasa.yaml"), "tiny=true", "data.image_size=32",
                "tasks=[PnPCounterToCab]", "trials=1", "seeds=[195]", "max_steps=2", "num_workers=1",
                f"out={tmp_path / 'r.json'}")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: env robocasa could not be built: ImportError: RoboCasa is not installed")
    assert not (tmp_path / "r.json").exists()
