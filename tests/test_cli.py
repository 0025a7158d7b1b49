"""The command line: composition, config-group swaps, run directories, sweeps, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cosmos_lit.cli import CliError, build_task, compose, expand_sweep, resolve
from cosmos_lit.spec import DataSpec

ROOT = Path(__file__).resolve().parent.parent
ALOHA_SIM = str(ROOT / "configs" / "aloha_sim.yaml")


class _FakeDM:
    """Stands in for a set-up DataModule: only spec and statistics are read when building the task."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        d = {"actions": spec.action_dim, "proprio": spec.proprio_dim}
        self.statistics = {f"{g}_{s}": [float(s == "max")] * n for g, n in d.items() for s in ("min", "max")}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosmos_lit", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("primary", ["aloha_sim", "aloha", "libero", "robocasa"])
def test_every_primary_config_composes(primary):
    cfg, choices = compose(ROOT / "configs" / f"{primary}.yaml", [])
    plain = resolve(cfg)
    assert {"data", "model", "trainer"} <= set(plain)
    assert choices["model/backbone"] in ("cosmos_predict2_tiny", "cosmos_predict2_2b")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    cfg, choices = compose(ALOHA_SIM, [f"experiment={experiment}"])
    assert choices["experiment"] == experiment and {"data", "model", "trainer"} <= set(resolve(cfg))


def test_experiment_overrides_the_primary_config():
    cfg, choices = compose(ALOHA_SIM, ["experiment=aloha_sim_long"])
    plain = resolve(cfg)
    assert plain["trainer"]["max_steps"] == 6000 and plain["task"]["ema_decay"] == 0.999  # not aloha_sim.yaml's
    assert plain["task"]["future_image_loss_weight"] == 0.1
    assert choices["model/image_encoder"] == "dct" and plain["model"]["image_encoder"]["sequence_form"] == "per_image"
    assert choices["model/vector_encoder"] == "channel_time"
    spec = DataSpec(cameras=("top",), proprio_dim=14, action_dim=14, chunk_size=50, image_size=112)
    task = build_task(plain, _FakeDM(spec))
    assert task.model.frame_shape == (16, 14, 14) and task.backbone_ema is not None
    assert task.model.backbone.net.learnable_pos_embed is not None  # the experiment turns on the position codes


def test_swap_backbone_and_image_encoder_by_config():
    spec = DataSpec(cameras=("top",), proprio_dim=14, action_dim=14, chunk_size=50, image_size=64)
    cfg, choices = compose(ALOHA_SIM, ["model/backbone=cosmos_predict2_2b", "model.backbone.meta_init=true",
                                       "model/image_encoder=wan2.1", "+model.image_encoder.meta_init=true"])
    assert choices["model/backbone"] == "cosmos_predict2_2b" and choices["model/image_encoder"] == "wan2.1"
    model = build_task(resolve(cfg), _FakeDM(spec)).model
    assert sum(p.numel() for p in model.backbone.parameters()) == 1_956_413_440
    assert model.backbone.net.patch_embed.proj.weight.is_meta
    assert model.text_encoder.dim == 1024  # the tiny text embedder follows the backbone's cross-attention width
    assert 126e6 < sum(p.numel() for p in model.image_encoder.parameters()) < 128e6

    from cosmos_lit.registry import build

    cfg, _ = compose(ALOHA_SIM, [])
    tiny = build_task(resolve(cfg), _FakeDM(spec)).model
    assert sum(p.numel() for p in tiny.backbone.parameters()) < 5e6
    # the planner is chosen at test time from the config's planner node, not built into the task
    assert tiny.layout.num_frames == 7 and type(build(resolve(cfg)["planner"], "planner")).__name__ == "DirectPolicy"

    cfg, _ = compose(ALOHA_SIM, ["planner=best_of_n", "model/value_head=none"])
    swapped = build_task(resolve(cfg), _FakeDM(spec)).model
    assert type(build(resolve(cfg)["planner"], "planner")).__name__ == "BestOfN" and swapped.layout.num_frames == 6

    cfg, choices = compose(ALOHA_SIM, ["model/image_encoder=dct"])  # the weight-free plain-image ablation
    plain = build_task(resolve(cfg), _FakeDM(spec)).model
    assert type(plain.image_encoder).__name__ == "DCTFrameEncoder" and plain.frame_shape == (16, 8, 8)
    assert not list(plain.image_encoder.parameters())


def test_progress_bar_can_be_switched_off(tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar

    from cosmos_lit.cli import build_callbacks, build_trainer

    for flag, bars in ((None, 1), ("false", 0)):
        overrides = [f"+trainer.enable_progress_bar={flag}"] if flag else []
        cfg, choices = compose(ALOHA_SIM, overrides + ["eval=none", "logger=none"])
        plain = resolve(cfg)
        callbacks = build_callbacks(plain, tmp_path, overrides, choices, "fit")
        assert sum(isinstance(c, RichProgressBar) for c in callbacks) == bars
        build_trainer(plain, tmp_path, callbacks, "fit")  # Lightning refuses a progress-bar callback when off


def _fit_boring(tmp_path, callbacks, **trainer_kwargs):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path), callbacks=callbacks, **trainer_kwargs)
    trainer.fit(BoringModel())
    return trainer


def test_progress_bar_counts_steps_when_epochs_are_unbounded(tmp_path):
    import lightning as L

    from cosmos_lit.callbacks.progress import StepProgressBar
    from cosmos_lit.cli import build_callbacks

    cfg, choices = compose(ALOHA_SIM, ["eval=none", "logger=none"])
    assert any(isinstance(c, StepProgressBar) for c in build_callbacks(resolve(cfg), tmp_path, [], choices, "fit"))

    class Seen(L.Callback):  # runs after the bar's own on_train_batch_end: reads the description it shows
        def __init__(self, bar):
            self.bar, self.descriptions = bar, []

        def on_train_batch_end(self, trainer, *args):
            (task,) = [t for t in self.bar.progress.tasks if t.id == self.bar.train_progress_bar_id]
            self.descriptions.append(task.description)

    bar = StepProgressBar(leave=True)
    seen = Seen(bar)
    trainer = _fit_boring(tmp_path / "steps", [bar, seen], max_steps=3)
    assert trainer.max_epochs == -1  # what made Lightning's own bar read "Epoch 0/-2"
    assert seen.descriptions == ["Epoch 0, step 1/3", "Epoch 0, step 2/3", "Epoch 0, step 3/3"]
    assert "-2" not in bar._get_train_description(0)

    bar = StepProgressBar(leave=True)
    seen = Seen(bar)
    _fit_boring(tmp_path / "epochs", [bar, seen], max_epochs=2, limit_train_batches=1)
    assert seen.descriptions == ["Epoch 0/1 ", "Epoch 1/1 "]  # bounded epochs: as Lightning (padded to "Validation")


def test_final_paths_are_not_hard_wrapped(tmp_path, capsys):
    from types import SimpleNamespace

    from cosmos_lit.cli import _report_fit, print_config_tree

    run_dir = tmp_path.joinpath(*["a_rather_long_directory_name"] * 5, "2026-01-01_00-00-00_fit")
    ckpt = run_dir / "checkpoints" / "epoch=0-step=3.ckpt"
    trainer = SimpleNamespace(is_global_zero=True, checkpoint_callback=SimpleNamespace(last_model_path=str(ckpt)),
                              callback_metrics={"sim/success_rate": 0.5, "other": 1.0})
    _report_fit(trainer, run_dir)  # stdout is captured: not a terminal, as in a log file
    out = capsys.readouterr().out
    assert len(str(run_dir)) > 120 and f"done: run directory {run_dir}\n" in out and f"checkpoint: {ckpt}\n" in out
    assert "  sim/success_rate = 0.5000\n" in out
    print_config_tree({"data": {"data_dir": str(run_dir)}}, {"data": "aloha"}, save_to=tmp_path / "tree.txt")
    assert f"data_dir: {run_dir}\n" in capsys.readouterr().out
    assert f"data_dir: {run_dir}\n" in (tmp_path / "tree.txt").read_text()


def test_lightning_advertising_tips_are_silenced(tmp_path):
    import logging

    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from cosmos_lit.cli import build_callbacks, build_trainer

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    keep = Keep()
    logging.getLogger("lightning.pytorch").addHandler(keep)
    try:
        cfg, choices = compose(ALOHA_SIM, ["eval=none", "logger=none"])
        plain = resolve(cfg)
        # validate: Lightning adds its default ModelCheckpoint (the litmodels tip); every Trainer: the litlogger tip
        trainer = build_trainer(plain, tmp_path, build_callbacks(plain, tmp_path, [], choices, "validate"), "validate")
        trainer.validate(BoringModel())
        rank_zero_info("💡 Tip: For seamless cloud anything, try installing [litsomething]")
        rank_zero_info("an ordinary Lightning info line")
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(keep)
    assert not [m for m in keep.messages if "Tip:" in m or "litlogger" in m or "litmodels" in m], keep.messages
    # only the tips: Lightning's other info lines are still there
    assert any(m.startswith("GPU available:") for m in keep.messages) and "an ordinary Lightning info line" in keep.messages


def test_checkpoint_path_with_equals_signs():
    cfg, _ = compose(ALOHA_SIM, ["ckpt_path=runs/x/checkpoints/epoch=0-step=2000.ckpt", "run_dir=runs/a=b"])
    assert cfg.ckpt_path == "runs/x/checkpoints/epoch=0-step=2000.ckpt" and cfg.run_dir == "runs/a=b"


def _compose_error(overrides, config=ALOHA_SIM) -> str:
    with pytest.raises(CliError) as info:
        compose(config, overrides)
    msg = str(info.value)
    assert "\n" not in msg and "object_type" not in msg and "search path" not in msg.lower() and "full_key" not in msg
    return msg


def test_override_typo_is_one_line():
    # our own wording, as for YAML typos: the override, the key, the closest accepted key, what is accepted there
    msg = _compose_error(["trainer.max_stepz=5"])
    assert msg.startswith("override 'trainer.max_stepz=5': unknown key 'max_stepz' in trainer (did you mean 'max_steps'?)")
    assert "accepted: " in msg and "val_check_interval" in msg and "+trainer.max_stepz=5" in msg
    msg = _compose_error(["data.batch_sise=4"])
    assert "'data.batch_sise=4'" in msg and "in data (did you mean 'batch_size'?)" in msg and "num_demos" in msg
    # the keys of the data option the command line picks, not of the primary file's
    msg = _compose_error(["data=aloha", "data.demo_noise_stdd=1"])
    assert "'demo_noise_stdd' in data" in msg and "demonstration_sampling_prob" in msg and "num_demos" not in msg
    msg = _compose_error(["model.backbone.num_layerz=2"])
    assert "in model.backbone (did you mean 'num_layers'?)" in msg
    msg = _compose_error(["trainr.max_steps=3"])
    assert "unknown top-level key 'trainr' (did you mean 'trainer'?)" in msg and "accepted: " in msg and "model" in msg
    msg = _compose_error(["trainer.max_epochs=3"])  # a real Trainer argument the config does not set
    assert "Trainer argument" in msg and "+trainer.max_epochs=3" in msg and "did you mean" not in msg
    # group options: the options of that group (configs/<group>/*.yaml)
    msg = _compose_error(["model/backbone=cosmos_predict2_tinyy"])
    assert msg == ("override 'model/backbone=cosmos_predict2_tinyy': unknown model/backbone option 'cosmos_predict2_tinyy' "
                   "(did you mean 'cosmos_predict2_tiny'?); available: cosmos_predict2_2b, cosmos_predict2_tiny")
    msg = _compose_error(["model/backbone=tinny"])
    assert "unknown model/backbone option 'tinny'" in msg and "cosmos_predict2_tiny" in msg
    msg = _compose_error(["experiment=aloha_sim_lng"])  # not silently skipped
    assert "unknown experiment option 'aloha_sim_lng' (did you mean 'aloha_sim_long'?)" in msg
    msg = _compose_error(["modl/backbone=x"])
    assert "unknown config group 'modl/backbone' (did you mean 'model/backbone'?)" in msg and "planner" in msg
    msg = _compose_error(["+trainer.max_steps=3"])
    assert "already in the config" in msg and "(trainer.max_steps=3)" in msg
    msg = _compose_error(["x=["])
    assert msg.startswith("override 'x=[': not valid override syntax")


def test_override_typo_in_a_user_config_and_its_defaults(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("defaults:\n  - data: aloha_sim\n  - _self_\ntrainer:\n  max_steps: 3\n")
    msg = _compose_error(["model/text_encoder=hash"], mine)
    assert "not in the defaults list of mine.yaml" in msg and "+model/text_encoder=hash" in msg
    mine.write_text("defaults:\n  - data: alhoa\n  - _self_\n")
    msg = _compose_error([], mine)
    assert msg.startswith(f"{mine} defaults: unknown data option 'alhoa' (did you mean 'aloha'?); available: aloha, aloha_sim")


def test_override_typos_on_the_command_line_are_one_line():
    for override, key, hint in (("trainer.max_stepz=3", "max_stepz", "did you mean 'max_steps'"),
                                ("model/backbone=cosmos_predict2_tinyy", "cosmos_predict2_tinyy",
                                 "did you mean 'cosmos_predict2_tiny'")):
        proc = cli("fit", "--config", ALOHA_SIM, override)
        line = one_line_error(proc)
        assert override in line and key in line and hint in line
        assert "object_type" not in proc.stderr and "search path" not in proc.stderr.lower()
        assert proc.stdout == ""  # nothing before the error


def test_yaml_key_typos_are_one_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("defaults:\n  - /aloha_sim\n  - _self_\ntrainer:\n  max_stepz: 3\n")
    line = one_line_error(cli("fit", "--config", str(bad), f"data.data_dir={tmp_path}/none", f"run_dir={tmp_path}/run"))
    assert "trainer.max_stepz" in line and "max_steps" in line
    assert not (tmp_path / "none").exists() and not (tmp_path / "run").exists()  # caught before data and run dir
    bad.write_text("defaults:\n  - /aloha_sim\n  - _self_\ndata:\n  batch_sise: 3\n")
    line = one_line_error(cli("fit", "--config", str(bad)))
    assert "data.batch_sise" in line and "batch_size" in line
    bad.write_text("defaults:\n  - /aloha_sim\n  - _self_\ntrainr:\n  max_steps: 3\n")
    line = one_line_error(cli("fit", "--config", str(bad)))
    assert "trainr" in line and "did you mean 'trainer'" in line


def test_unknown_registry_name_is_one_line(tmp_path):
    # checked before any data is prepared: no demos are generated for a run that cannot start
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, "model.backbone.name=cosmos_predict3",
                              f"data.data_dir={tmp_path}/demos"))
    assert "model.backbone.name" in line and "cosmos_predict3" in line
    assert not (tmp_path / "demos").exists()
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, "eval.env.name=aloha_simm", f"data.data_dir={tmp_path}/demos"))
    assert "eval.env.name" in line and "did you mean 'aloha_sim'" in line
    assert not (tmp_path / "demos").exists()


def test_missing_data_directory_is_one_line(tmp_path):
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, "data=aloha", f"data.data_dir={tmp_path}/nowhere",
                              "model/text_encoder=hash"))
    assert "nowhere" in line and "data.data_dir" in line


def test_bad_demo_noise_is_one_line(tmp_path):
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, f"data.data_dir={tmp_path}/demos", "data.demo_noise_std=-1"))
    assert "data.demo_noise_std: expected a number >= 0" in line


def test_bad_demo_expert_option_is_one_line(tmp_path):
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, f"data.data_dir={tmp_path}/demos",
                              "+data.demo_expert.left_approach=slide"))
    assert "data.demo_expert: TransferCubeExpert.left_approach: expected one of ('wait', 'glide')" in line
    assert not (tmp_path / "demos").exists()


def test_make_aloha_demos_bad_expert_option_is_one_line(tmp_path):
    script = str(ROOT / "scripts" / "make_aloha_demos.py")
    for arg, message in (("glide", "--expert: expected KEY=VALUE"), ("left_aproach=glide", "unknown option(s) ['left_aproach']")):
        proc = subprocess.run([sys.executable, script, str(tmp_path / "demos"), "--expert", arg], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "demos").exists()


def test_malformed_hdf5_is_one_line(tmp_path):
    d = tmp_path / "episodes"
    d.mkdir()
    for i in range(3):
        with h5py.File(d / f"episode_{i}.hdf5", "w") as f:
            f.attrs["sim"] = True
            f.create_dataset("observations/qpos", data=np.zeros((20, 14), np.float32))
            f.create_dataset("observations/images/top", data=np.zeros((20, 32, 32, 3), np.uint8))
            if i != 1:
                f.create_dataset("action", data=np.zeros((20, 14), np.float32))
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, "data=aloha", f"data.data_dir={d}", "data.cameras=[top]"))
    assert "episode_1.hdf5" in line and "action" in line
    with h5py.File(d / "episode_1.hdf5", "a") as f:
        f.create_dataset("action", data=np.zeros((20, 9), np.float32))
    line = one_line_error(cli("fit", "--config", ALOHA_SIM, "data=aloha", f"data.data_dir={d}", "data.cameras=[top]"))
    assert "episode_1.hdf5" in line and "14" in line


def test_robocasa_without_data_says_what_and_where(tmp_path):
    proc = cli("fit", "--config", str(ROOT / "configs" / "robocasa.yaml"), f"data.data_dir={tmp_path}/rc")
    line = one_line_error(proc)
    assert "data.data_dir" in line and "RoboCasa" in line
    # errors first: no config tree (nor "Seed set to ...") before it; the error is the first thing printed
    assert proc.stdout == "", proc.stdout[:2000]
    assert proc.stderr.lstrip().startswith("error:"), proc.stderr[:2000]


def test_print_config_and_list():
    out = cli("fit", "--config", ALOHA_SIM, "--print-config", "planner=best_of_n")
    assert out.returncode == 0, out.stderr
    assert "best_of_n" in out.stdout and "cosmos_predict2_tiny" in out.stdout


def test_sweep_expansion_and_dry_run():
    jobs = expand_sweep(["task.optim.lr=1e-4,3e-4", "model/value_head=frame,none", "seed=1"])
    assert len(jobs) == 4 and ["task.optim.lr=0.0001", "model/value_head=frame", "seed=1"] in jobs
    out = cli("fit", "--config", ALOHA_SIM, "-m", "--dry-run", "seed=1,2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[job ") == 2 and "run_dir=" in out.stdout


@pytest.mark.slow
@pytest.mark.sim
def test_fit_then_validate_from_the_checkpoint_alone(tmp_path):
    """The main job end to end at toy size: scripted demos, fit with closed-loop eval, then `validate ckpt_path=`."""
    run = tmp_path / "run"
    out = cli("fit", "--config", ALOHA_SIM, f"data.data_dir={tmp_path}/demos", "data.num_demos=2", "data.image_size=64",
              "data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "eval.every_n_steps=4", "eval.num_episodes=1", "eval.env.max_steps=30", "eval.num_workers=1",
              f"run_dir={run}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("config.yaml", "overrides.yaml", "choices.yaml", "config_tree.txt", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    metrics = (run / "logs" / "version_0" / "metrics.csv").read_text()
    assert "sim/success_rate" in metrics and "val/action_l1" in metrics
    assert list((run / "eval" / "step_0000004" / "videos").glob("*.mp4"))

    again = tmp_path / "validate"
    out = cli("validate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "eval.num_episodes=1",
              "eval.env.max_steps=20", f"run_dir={again}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sim/success_rate" in out.stdout and "val/action_l1" in out.stdout
    assert list((again / "eval").glob("step_*/episodes_rank0.json"))

    # every verb of --help works with that checkpoint
    ckpt = run / "checkpoints" / "last.ckpt"
    out = cli("test", f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'test'}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/action_l1" in out.stdout and "test/loss" in out.stdout
    out = cli("predict", f"ckpt_path={ckpt}", "+predict.num_images=2", f"run_dir={tmp_path / 'predict'}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(tmp_path / "predict" / "predictions.npz") as pred:
        n = len(pred["actions"])
        assert n > 0 and pred["actions"].shape == pred["target_actions"].shape == (n, 50, 14)
        assert pred["value"].shape == (n,) and pred["future_images"].shape == (2, 1, 64, 64, 3)
    report = tmp_path / "eval.json"
    out = cli("eval", "--config", str(ROOT / "configs" / "protocol" / "aloha_sim.yaml"), f"checkpoint={ckpt}",
              "trials=1", "max_steps=20", "num_workers=1", f"out={report}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(report.read_text())["summary"]["suites"]["aloha_sim"]["tasks"]["transfer_cube"]["episodes"] == 1
    out = cli("list", "planner")
    assert out.returncode == 0 and "best_of_n" in out.stdout
