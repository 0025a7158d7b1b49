"""One benchmark, one set of facts: the image pipeline the model is trained with, the one of the simulated evaluation
during training (``configs/eval/<benchmark>.yaml`` composed through ``configs/<benchmark>.yaml``) and the one of the
protocol (``configs/protocol/<benchmark>.yaml``) give the model the same image of the same scene: same orientation,
one JPEG round trip exactly when the training frames are JPEGs, the same crop, the same size.

Each deployment runs the env adapter's own observation code on a stub simulator that renders a known scene the way
the real renderer orients it (robosuite's OpenGL convention: bottom row first), then the policy's image pipeline; the
training side encodes the scene as the benchmark's dataset stores it and runs the DataModule's pipeline.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cosmos_lit.cli import compose, resolve
from cosmos_lit.eval import load_protocol
from cosmos_lit.images import ImagePipeline, encode_jpeg
from cosmos_lit.registry import build, registry

# How each benchmark's training data store their frames (docs/method.md#image-pipelines): the Cosmos LIBERO and
# RoboCasa datasets hold upright JPEG (q95) frames; ALOHA's preprocessed episodes raw (or MP4) frames, and our
# ALOHA-sim demos raw frames from the env's own renderer. Stored at the render size of the benchmark's env.
TRAINING_JPEG = {"libero": 95, "robocasa": 95, "aloha": None, "aloha_sim": None}
BENCHMARKS = {  # benchmark: (training config, its eval option, protocol)
    "libero": ("configs/libero.yaml", "libero", "libero"),
    "robocasa": ("configs/robocasa.yaml", "robocasa", "robocasa"),  # eval=none by default: RoboCasa is not on PyPI
    "aloha": ("configs/aloha.yaml", None, "aloha"),  # real robot: no simulated evaluation
    "aloha_sim": ("configs/aloha_sim.yaml", "aloha_sim", "aloha_sim"),
}
ALOHA_REAL_FRAME = 256  # ALOHA-Cosmos-Policy stores 256² frames; the robot's cameras are upright


def scene(size: int, seed: int = 0) -> np.ndarray:
    """Upright test scene: 8-pixel blocks (JPEG-stable) of noise, bright at the top, dark at the bottom."""
    rng = np.random.default_rng(seed)
    blocks = np.clip(rng.normal(128, 40, (size // 8, size // 8, 3)), 0, 255)
    blocks += np.linspace(60, -60, size // 8)[:, None, None]
    img = np.clip(np.repeat(np.repeat(blocks, 8, 0), 8, 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def opengl_renders_upside_down() -> bool:
    """robosuite's renders (LIBERO, RoboCasa, robosuite) come bottom row first unless IMAGE_CONVENTION is opencv."""
    try:
        import robosuite.macros as macros
    except ImportError:
        return True  # robosuite's default convention
    return macros.IMAGE_CONVENTION == "opengl"


def robot_state_keys() -> dict[str, np.ndarray]:
    return {"robot0_gripper_qpos": np.zeros(2), "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.zeros(4)}


def env_images(env: dict[str, Any], upright: np.ndarray) -> dict[str, np.ndarray]:
    """The images of the env adapter's observation when its simulator renders ``upright`` (oriented as it would)."""
    name = env["name"]
    cls = registry("env").get(name, "eval.env")
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()}
    args = {**defaults, **env}
    cameras = tuple(args["cameras"])
    stub = object.__new__(cls)  # the adapter's code, without building a simulator
    if name == "libero":
        from cosmos_lit.envs.libero import CAMERA_KEYS

        stub.__dict__.update(cameras=cameras, flip_images=bool(args["flip_images"]),
                             jpeg_roundtrip=bool(args["jpeg_roundtrip"]), instruction="")
        raw = upright[::-1]  # robosuite 1.4 renders in the OpenGL convention
        return stub._observation({**{CAMERA_KEYS[c]: raw for c in cameras}, **robot_state_keys()})["images"]
    if name in ("robosuite", "robocasa"):
        convention = "opengl" if opengl_renders_upside_down() else "opencv"
        stub.__dict__.update(cameras=cameras, env_name=args["env_name"], _instruction="task",
                             _robosuite=SimpleNamespace(macros=SimpleNamespace(IMAGE_CONVENTION=convention)))
        raw = upright[::-1] if convention == "opengl" else upright
        return stub._observation({**{f"{c}_image": raw for c in cameras}, **robot_state_keys()})["images"]
    if name == "aloha_sim":
        stub.__dict__.update(cameras=cameras, _renderer=SimpleNamespace(render=lambda camera: upright.copy()),
                             _task=SimpleNamespace(get_qpos=lambda physics: np.zeros(14, np.float32)), physics=None,
                             instruction="task")
        return stub._observation()["images"]
    raise AssertionError(f"no stub for env '{name}'")


def training_config(benchmark: str) -> dict[str, Any]:
    config, eval_option, _ = BENCHMARKS[benchmark]
    return resolve(compose(config, [f"eval={eval_option}"] if eval_option else [])[0])


def training_image(cfg: dict[str, Any], benchmark: str, size: int) -> np.ndarray:
    """What the DataModule feeds the model for the scene (no augmentation: its deployment-like pipeline)."""
    dm = build(cfg["data"], "datamodule", path="data")
    pipeline = ImagePipeline(image_size=dm.image_size, center_crop=dm.eval_center_crop)  # EpisodeDataModule._dataset
    quality = TRAINING_JPEG[benchmark]
    stored = encode_jpeg(scene(size), quality) if quality else scene(size)  # upright, as the dataset stores it
    return pipeline.frame(stored, flip=bool(dm.flip_images))  # flip_images null: the reader's, upright here


def deployed_image(env: dict[str, Any] | None, image_pipeline: dict[str, Any], image_size: int, size: int) -> np.ndarray:
    frame = scene(size) if env is None else next(iter(env_images(env, scene(size)).values()))
    return ImagePipeline(image_size=image_size, **image_pipeline).frame(frame)


def deployment_facts(env: dict[str, Any] | None, image_pipeline: dict[str, Any]) -> dict[str, Any]:
    """Orientation-independent facts: JPEG round trips and their quality, crop."""
    from cosmos_lit.envs.image_ops import JPEG_QUALITY

    jpegs = []
    if env is not None and env["name"] == "libero":
        defaults = inspect.signature(registry("env").get("libero")).parameters
        if env.get("jpeg_roundtrip", defaults["jpeg_roundtrip"].default):
            jpegs.append(JPEG_QUALITY)
    if image_pipeline.get("jpeg_quality") is not None:
        jpegs.append(int(image_pipeline["jpeg_quality"]))
    return {"jpeg": jpegs, "center_crop": bool(image_pipeline.get("center_crop", False))}


def render_size(env: dict[str, Any] | None) -> int:
    return ALOHA_REAL_FRAME if env is None else int(env["image_size"])


@pytest.mark.parametrize("benchmark", list(BENCHMARKS))
def test_training_simulated_evaluation_and_protocol_see_the_same_image(benchmark):
    cfg = training_config(benchmark)
    data = cfg["data"]
    protocol = load_protocol(BENCHMARKS[benchmark][2])
    deployments = {"protocol": (protocol.env or None, protocol.image_pipeline, int(protocol.spec["image_size"]))}
    if BENCHMARKS[benchmark][1]:
        ev = cfg["eval"]
        deployments["simulated evaluation"] = (ev["env"], dict(ev.get("image_pipeline") or {}), int(data["image_size"]))
        assert list(ev["env"]["cameras"]) == list(data["cameras"])  # the env renders the cameras the model reads
        assert int(ev.get("execute_steps") or data["chunk_size"]) == protocol.execute_steps
    assert [protocol.spec[k] for k in ("cameras", "image_size", "chunk_size", "gamma", "fps")] == \
        [data[k] for k in ("cameras", "image_size", "chunk_size", "gamma", "fps")]

    size = render_size(protocol.env or None)
    trained = training_image(cfg, benchmark, size)
    want_jpeg = [TRAINING_JPEG[benchmark]] if TRAINING_JPEG[benchmark] else []
    for where, (env, pipeline, image_size) in deployments.items():
        assert render_size(env) == size, where
        facts = deployment_facts(env, pipeline)
        assert facts["jpeg"] == want_jpeg, f"{benchmark} {where}: JPEG round trips {facts['jpeg']}, training {want_jpeg}"
        assert facts["center_crop"] == bool(data.get("augment", True)), f"{benchmark} {where}: crop"
        assert image_size == int(data["image_size"]), f"{benchmark} {where}: size"
        seen = deployed_image(env, pipeline, image_size, size)
        assert seen.shape == trained.shape == (int(data["image_size"]),) * 2 + (3,), where
        # same orientation, JPEG and crop: ~0; a missing or second JPEG round trip ~3-4, no crop ~8-29, a flip ~70
        diff = np.abs(seen.astype(int) - trained.astype(int)).mean()
        assert diff < 1.5, f"{benchmark} {where}: the model sees a different image than in training (mean |Δ| {diff:.1f})"


@pytest.mark.parametrize("benchmark", [b for b in BENCHMARKS if BENCHMARKS[b][1]])
def test_the_check_catches_a_pipeline_that_redoes_the_envs_work(benchmark):
    """The official all-in-one test-time preset (flip + JPEG + crop) on top of the env's own steps: caught."""
    cfg = training_config(benchmark)
    ev = cfg["eval"]
    size = render_size(ev["env"])
    trained = training_image(cfg, benchmark, size)
    redone = deployed_image(ev["env"], {"flip": True, "jpeg_quality": 95, "center_crop": True}, int(cfg["data"]["image_size"]), size)
    assert np.abs(redone.astype(int) - trained.astype(int)).mean() > 10


def test_the_policy_does_what_the_env_left():
    """LIBERO's env flips and JPEGs its renders: the policy resizes and crops. RoboCasa's env returns upright frames:
    the policy JPEGs and crops. ALOHA: the crop only."""
    from cosmos_lit.eval import policy_image_pipeline

    pipelines = {b: policy_image_pipeline(load_protocol(b)) for b in ("libero", "robocasa", "aloha")}
    assert pipelines["libero"] == ImagePipeline(image_size=224, flip=False, jpeg_quality=None, center_crop=True)
    assert pipelines["robocasa"] == ImagePipeline(image_size=224, flip=False, jpeg_quality=95, center_crop=True)
    assert pipelines["aloha"] == ImagePipeline(image_size=224, flip=False, jpeg_quality=None, center_crop=True)
    env = load_protocol("libero").env
    assert env["flip_images"] is True and env["jpeg_roundtrip"] is True


def test_horizons_and_scenes_are_the_envs_own():
    """The protocols take per-task horizons and RoboCasa's kitchens from the env adapters, not from a copy."""
    from cosmos_lit.envs.libero import suite_max_steps
    from cosmos_lit.envs.robosuite import ROBOCASA_LAYOUT_AND_STYLE_IDS, ROBOCASA_MAX_STEPS

    libero = load_protocol("libero")
    assert all(h == suite_max_steps(s) for s, tasks in libero.horizons.items() for h in tasks.values())
    robocasa = load_protocol("robocasa")
    assert robocasa.horizons["robocasa"] == {t: ROBOCASA_MAX_STEPS[t] for t in robocasa.task_suites["robocasa"]}
    assert robocasa.scenes == ROBOCASA_LAYOUT_AND_STYLE_IDS
    aloha_sim = load_protocol("aloha_sim")
    cfg = training_config("aloha_sim")
    assert aloha_sim.horizon("aloha_sim", cfg["data"]["task"]) == cfg["eval"]["env"]["max_steps"]
    assert cfg["eval"]["env"]["fast_render"] == cfg["data"]["fast_render"]  # rendered as the demos were
