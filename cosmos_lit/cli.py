"""``python -m cosmos_lit {fit,validate,test,predict} --config FILE [OVERRIDES]``, ``python -m cosmos_lit eval --config
configs/protocol/<benchmark>.yaml [KEY=VALUE]`` (``cosmos_lit.eval``), ``python -m cosmos_lit collect ckpt_path=CKPT``
(rollout collection, ``cosmos_lit.eval.collect``) and ``python -m cosmos_lit list [KIND]``.

Configs are composed with Hydra's compose API: the primary file's ``defaults`` list picks one option per config group
(``data``, ``model/backbone``, ``model/image_encoder``, ``model/value_head``, ``planner``, ``eval``, ``trainer``,
``logger``, ``experiment``), and overrides use Hydra's grammar (``trainer.max_steps=100``, ``model/backbone=
cosmos_predict2_2b``, ``+new.key=1``). ``-m`` expands sweeps (``task.optim.lr=1e-4,3e-4``) into one subprocess per job.

Every run gets its own directory holding the resolved config, the overrides and the chosen group options; the same
three are embedded in every checkpoint, so ``validate``/``test``/``predict`` with ``ckpt_path=...`` and no
``--config`` rebuild everything from the checkpoint alone.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cosmos_lit.config import CliError, compose, hydra_message, resolve, unknown_key_message
from cosmos_lit.registry import ConfigError

COMMANDS = ("fit", "validate", "test", "predict", "refine")
VERBS = """verbs:
  fit       train: python -m cosmos_lit fit --config configs/aloha_sim.yaml [overrides]; resume a killed or
            pre-empted run with the same command + run_dir=DIR ckpt_path=last
  validate  validation metrics and closed-loop simulation of a checkpoint: validate ckpt_path=CKPT
  test      score a checkpoint on the held-out episodes: test ckpt_path=CKPT
  predict   write sampled action chunks, values and imagined future frames of the held-out episodes to
            <run_dir>/predictions.npz: predict ckpt_path=CKPT [+predict.num_images=N]
  eval      a benchmark protocol: eval --config configs/protocol/libero.yaml checkpoint_dir=DIR vae=PATH
            (or checkpoint=CKPT for a checkpoint of ours)
  refine    learning from experience: fit from a policy checkpoint on its demos + rollouts, with the settings of
            configs/experience/<data>.yaml: refine ckpt_path=CKPT data.rollout_dir=DIR [trainer.max_steps=N]
  collect   record closed-loop rollouts (HDF5 per episode + index.json) of a checkpoint's eval config, for
            learning from experience: collect ckpt_path=CKPT [eval.num_episodes=200] [eval.seed0=N] [out=DIR]
            [planner=best_of_n] [device=cuda]
  serve     a policy server for robots and simulators elsewhere: openpi's WebSocket wire and/or the official
            Cosmos Policy POST /act: serve ckpt_path=CKPT [front=openpi|official_http|both] [port=8000]
            [http_port=8777] [host=127.0.0.1] [planner=...] [max_batch=8] (API key: $COSMOS_LIT_API_KEY)
  export    a checkpoint's deployed model as a pickle-free policy folder (model.safetensors, config.yaml,
            dataset_statistics.json, README.md) for CosmosPolicy.from_pretrained(DIR): export ckpt_path=CKPT
            out=DIR [overwrite=true]
  check-data  decode every frame of every episode of a config's data, report each bad one (file, camera, frame,
            why), exit 1 if any: check-data --config configs/aloha.yaml data.data_dir=DIR
  list      registered components: list [backbone|image_encoder|planner|datamodule|env|...]
"""


# ---------------------------------------------------------------------------------------------------- run directory


class Preempted(Exception):
    """A fit stopped by SIGTERM after writing its last checkpoint (exit status 143, as a shell reports SIGTERM)."""


def launched_processes() -> int:
    """The number of processes an external launcher started for this job (torchrun's WORLD_SIZE, srun's
    SLURM_NTASKS; 1 when started by hand — Lightning's own launcher passes COSMOS_LIT_RUN_DIR to its children)."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def make_run_dir(cfg: dict[str, Any], command: str) -> Path:
    """``run_dir`` if given; else ``runs/<run_name or data name>/<timestamp>_<command>`` (shared with DDP children)."""
    env = os.environ.get("COSMOS_LIT_RUN_DIR")
    if env:
        path = Path(env)
    elif cfg.get("run_dir"):
        path = Path(cfg["run_dir"])
    elif launched_processes() > 1:
        raise CliError(f"run_dir: a launch of {launched_processes()} processes (torchrun / srun) needs "
                       "run_dir=<one directory on a shared file system>, so that every rank writes the same run")
    else:
        name = cfg.get("run_name") or (cfg.get("data") or {}).get("name", "run")
        path = Path("runs") / str(name) / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{command}"
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["COSMOS_LIT_RUN_DIR"] = str(path)
    return path


def save_run_config(run_dir: Path, cfg: dict[str, Any], overrides: list[str], choices: dict[str, Any]) -> None:
    from omegaconf import OmegaConf

    from cosmos_lit.io import write_text_atomic

    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    write_text_atomic(run_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    write_text_atomic(run_dir / "choices.yaml", OmegaConf.to_yaml(OmegaConf.create(choices)))


LOG_WIDTH = 1000  # columns for rich output that goes to a file or pipe (rich's default there is 80, cutting paths)


def console(file: Any = None, **kwargs: Any) -> Any:
    """The CLI's rich console: never hard-wraps (a path stays one line when stdout is a log file, not a terminal)."""
    from rich.console import Console

    c = Console(file=file, soft_wrap=True, **kwargs)
    if not c.is_terminal and "width" not in kwargs:
        c = Console(file=file, soft_wrap=True, width=LOG_WIDTH, **kwargs)
    return c


def print_config_tree(cfg: dict[str, Any], choices: dict[str, Any], save_to: Path | None = None, echo: bool = True) -> None:
    """Rich tree of the resolved config (groups first, with their chosen option)."""
    from omegaconf import OmegaConf
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("[bold]config[/bold]")
    for key, value in cfg.items():
        label = f"[bold cyan]{key}[/bold cyan]"
        picked = [f"{g}={c}" for g, c in choices.items() if g.split("/")[0] == key and c is not None]
        if picked:
            label += f"  [dim]({', '.join(picked)})[/dim]"
        branch = tree.add(label)
        text = OmegaConf.to_yaml(OmegaConf.create({key: value}) if not isinstance(value, dict) else OmegaConf.create(value))
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    if echo:
        console().print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            console(file=f, width=LOG_WIDTH, color_system=None).print(tree)


# ---------------------------------------------------------------------------------------------------- building


def trainer_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg.trainer`` checked against ``lightning.Trainer``'s signature (one clear line per bad key), with
    ``precision: auto`` resolved. Called before any data is prepared, and again to build the Trainer."""
    import lightning as L

    from cosmos_lit.registry import bind_kwargs

    trainer_cfg = dict(cfg.get("trainer") or {})
    for key in ("callbacks", "logger", "default_root_dir"):
        if key in trainer_cfg:
            raise CliError(f"trainer.{key}: set by cosmos_lit (use the '{key if key != 'default_root_dir' else 'run_dir'}' config instead)")
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, dict) and "_target_" in strategy:  # a configured strategy (configs/trainer/fsdp.yaml)
        from hydra.utils import instantiate

        try:
            trainer_cfg["strategy"] = instantiate(strategy)
        except Exception as e:
            raise CliError(f"trainer.strategy: {hydra_message(e)}") from None
    if trainer_cfg.get("precision") == "auto":
        from cosmos_lit.precision import trainer_precision

        trainer_cfg["precision"] = trainer_precision("auto", trainer_cfg.get("accelerator"))
    try:
        bind_kwargs(L.Trainer, trainer_cfg, "trainer")
    except ConfigError as e:
        raise CliError(str(e)) from None
    return trainer_cfg


LIGHTNING_TIP_PREFIX = "💡 Tip:"  # Lightning 2.6's litlogger / litmodels advertisements (logged with rank_zero_info)


class _NoLightningTips:
    """``logging`` filter: drops Lightning's advertising tips and nothing else."""

    def filter(self, record: Any) -> bool:
        return not str(record.msg).lstrip().startswith(LIGHTNING_TIP_PREFIX)


def silence_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip: ... try installing litlogger/litmodels" lines; its other info messages stay.

    There is no switch for them: they are logged by ``rank_zero_info``, whose logger is the one named
    ``lightning.pytorch.utilities.rank_zero`` (a logger's filters see the records it creates). Idempotent."""
    import logging

    import lightning_utilities.core.rank_zero as rank_zero_module

    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
             "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
    for logger in {rank_zero_module.log, *(logging.getLogger(n) for n in names)}:
        if not any(isinstance(f, _NoLightningTips) for f in logger.filters):
            logger.addFilter(_NoLightningTips())


def build_trainer(cfg: dict[str, Any], run_dir: Path, callbacks: list[Any], command: str) -> Any:
    import lightning as L

    from cosmos_lit.registry import build

    trainer_cfg = trainer_kwargs(cfg)
    loggers = []
    log_cfg = cfg.get("logger")
    if log_cfg and command != "predict":
        nodes = log_cfg.values() if isinstance(log_cfg, dict) and "_target_" not in log_cfg else [log_cfg]
        for node in nodes:
            if node:
                loggers.append(build(dict(node), "callback", path="logger", save_dir=str(run_dir)))
    silence_lightning_tips()
    from cosmos_lit.callbacks.checkpointing import AtomicCheckpointIO

    plugins = list(trainer_cfg.pop("plugins", None) or [])
    if not any(isinstance(p, AtomicCheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a kill during a save never leaves a half checkpoint
    from cosmos_lit.precision import training_device, warn_if_emulated_bf16

    if training_device(trainer_cfg.get("accelerator")) == "cpu":  # here, so bad data is still reported first
        warn_if_emulated_bf16(trainer_cfg.get("precision", "32-true"), "cpu", "trainer.precision")
    return L.Trainer(**trainer_cfg, default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers or False,
                     plugins=plugins)


def build_callbacks(cfg: dict[str, Any], run_dir: Path, overrides: list[str], choices: dict[str, Any], command: str) -> list[Any]:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from cosmos_lit.callbacks import RunConfigInCheckpoint
    from cosmos_lit.callbacks.progress import StepProgressBar
    from cosmos_lit.registry import build

    # trainer.enable_progress_bar=false (batch jobs, logs to a file): Lightning refuses a progress-bar callback then
    show_progress = (cfg.get("trainer") or {}).get("enable_progress_bar", True) is not False
    callbacks: list[Any] = [StepProgressBar(leave=True)] if show_progress else []  # "Epoch 0, step 5/3000"
    task_name = str((cfg.get("task") or {}).get("name", "cosmos_policy"))
    if command == "fit":
        ck = dict(cfg.get("checkpoint") or {})
        ck.setdefault("dirpath", str(run_dir / "checkpoints"))
        ck.setdefault("save_last", True)
        from cosmos_lit.callbacks.checkpointing import CheckpointOnSigterm

        callbacks += [ModelCheckpoint(**ck), RunConfigInCheckpoint(cfg, overrides, choices, task_name),
                      CheckpointOnSigterm()]
        if cfg.get("logger"):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
    if command == "predict":
        from cosmos_lit.callbacks.prediction_writer import PredictionWriter
        from cosmos_lit.registry import bind_kwargs

        callbacks.append(PredictionWriter(**bind_kwargs(PredictionWriter, dict(cfg.get("predict") or {}), "predict")))
    ev = cfg.get("eval")
    if ev and command in ("fit", "validate"):
        from cosmos_lit.callbacks.sim_eval import SimEvalCallback

        sim_eval = build(ev, "callback", path="eval", planner=cfg.get("planner"))
        if isinstance(sim_eval, SimEvalCallback):  # provenance of recorded rollouts (eval.record_rollouts)
            sim_eval.checkpoint_path = cfg.get("ckpt_path") or cfg.get("init_from")
        callbacks.append(sim_eval)
    for i, node in enumerate((cfg.get("callbacks") or {}).values() if isinstance(cfg.get("callbacks"), dict) else cfg.get("callbacks") or []):
        if node:
            callbacks.append(build(node, "callback", path=f"callbacks[{i}]"))
    return callbacks


def check_names(cfg: dict[str, Any]) -> None:
    """Fail on an unknown registry name before any data is prepared (generating demos can take a minute)."""
    from cosmos_lit.registry import REGISTRIES, registry

    nodes: list[tuple[str, str, Any]] = [("data", "datamodule", cfg.get("data")), ("task", "task", cfg.get("task")),
                                         ("planner", "planner", cfg.get("planner")), ("eval", "callback", cfg.get("eval"))]
    nodes += [(f"model.{k}", k, v) for k, v in (cfg.get("model") or {}).items() if k in REGISTRIES]
    if isinstance(cfg.get("eval"), dict):
        nodes.append(("eval.env", "env", cfg["eval"].get("env")))
    for path, kind, node in nodes:
        if isinstance(node, dict) and "name" in node and "_target_" not in node:
            registry(kind).get(str(node["name"]), path)


def build_datamodule(cfg: dict[str, Any]) -> Any:
    from cosmos_lit.registry import build

    if not cfg.get("data"):
        raise CliError("data: missing (pick one with data=<option>, e.g. data=aloha_sim)")
    return build(cfg["data"], "datamodule", path="data")


def build_task(cfg: dict[str, Any], dm: Any) -> Any:
    from cosmos_lit.registry import build

    task_cfg = dict(cfg.get("task") or {"name": "cosmos_policy"})
    return build(task_cfg, "task", path="task", model=cfg.get("model") or {}, spec=dm.spec.to_dict(),
                 statistics=dm.statistics)


# ---------------------------------------------------------------------------------------------------- commands


def _config_from_checkpoint(ckpt_path: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml
    from omegaconf import OmegaConf

    from cosmos_lit.checkpoint import embedded_config

    p = Path(ckpt_path).expanduser()
    if not p.is_file():
        raise CliError(f"ckpt_path: checkpoint not found: {p}")
    meta = embedded_config(p)
    cfg = OmegaConf.create(meta["config"])
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if "/" in key:
            raise CliError(f"override '{ov}': config-group overrides need --config (the checkpoint holds a resolved config)")
    plain = OmegaConf.to_container(cfg)
    # planner=NAME replaces the planner node by that planner's defaults; its options (planner.num_candidates=4)
    # are then new keys, checked against the planner's constructor when it is built
    renamed = {"planner"} if any(o.split("=", 1)[0] == "planner" for o in overrides) else set()
    for ov in overrides:
        key, _, value = ov.partition("=")
        if not key.startswith(("+", "~")) and key.split(".")[0] not in renamed:
            problem = unknown_key_message(plain, key, value)  # type: ignore[arg-type]
            if problem:
                raise CliError(f"override '{ov}': {problem}")
    try:
        OmegaConf.set_struct(cfg, True)
        for ov in overrides:
            key, _, value = ov.partition("=")
            if key.startswith("+") or key.split(".")[0] in renamed:
                OmegaConf.set_struct(cfg, False)
            parsed = yaml.safe_load(value) if value else None
            if key == "planner" and isinstance(parsed, str):  # planner=best_of_n: that planner with its defaults
                OmegaConf.set_struct(cfg, False)
                OmegaConf.update(cfg, "planner", {"name": parsed}, merge=False)
            else:
                OmegaConf.update(cfg, key.lstrip("+"), parsed, merge=True)
            OmegaConf.set_struct(cfg, True)
    except Exception as e:
        raise CliError(f"override: {hydra_message(e)}") from None
    return OmegaConf.to_container(cfg, resolve=True), dict(meta.get("choices") or {})  # type: ignore[return-value]


def load_run_config(command: str, config: str | None, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved config, group choices): composed from ``config``, or the checkpoint's embedded config
    (``ckpt_path=...`` without ``--config``) with the overrides applied."""
    ckpt_override = next((o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")), None)
    if command == "refine":
        return refine_config(config, ckpt_override, overrides)
    if config:
        cfg_node, choices = compose(config, overrides)
        cfg = resolve(cfg_node)
    elif ckpt_override and command != "fit":
        cfg, choices = _config_from_checkpoint(ckpt_override, [o for o in overrides if not o.startswith("ckpt_path=")])
        cfg["ckpt_path"] = ckpt_override
    else:
        raise CliError("--config is required (or, for validate/test/predict/collect, ckpt_path=<checkpoint>)")
    return cfg, choices


def refine_config(config: str | None, ckpt_path: str | None, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config of ``refine ckpt_path=BASE``: the base run's embedded config, then
    ``configs/experience/<data.name>.yaml`` (``cosmos_lit.experience``), then the overrides; ``init_from`` = BASE."""
    from cosmos_lit.checkpoint import embedded_config
    from cosmos_lit.experience import experience_file, experience_overrides

    if config:
        raise CliError("refine: takes the base run's config from ckpt_path=<checkpoint>, not --config (to start a "
                       "fit of another config from a checkpoint's weights: fit --config FILE init_from=CKPT)")
    if not ckpt_path:
        raise CliError("refine: needs ckpt_path=<the policy checkpoint to start from> and data.rollout_dir=<rollouts>")
    p = Path(ckpt_path).expanduser()
    if not p.is_file():
        raise CliError(f"refine: ckpt_path: checkpoint not found: {p}")
    embedded = dict(embedded_config(p)["config"])
    name = str((embedded.get("data") or {}).get("name", ""))
    path = experience_file(name)
    if not path.is_file():
        known = ", ".join(sorted(f.stem for f in path.parent.glob("*.yaml")))
        raise CliError(f"refine: no configs/experience/{name}.yaml for the checkpoint's data '{name}' (there are: "
                       f"{known}); write one, or run fit --config FILE init_from={p}")
    user = [o for o in overrides if not o.startswith("ckpt_path=")]
    if "rollout_dir" not in (embedded.get("data") or {}):  # runs whose data config predates the key
        user = [f"+{o}" if o.startswith("data.rollout_dir=") else o for o in user]
    cfg, choices = _config_from_checkpoint(str(p), [*experience_overrides(embedded, path), *user])
    if not (cfg.get("data") or {}).get("rollout_dir"):
        raise CliError("refine: needs data.rollout_dir=<folder of rollout files> (written by python -m cosmos_lit "
                       "collect ckpt_path=... out=DIR)")
    cfg["init_from"], cfg["ckpt_path"] = str(p), None
    if not any(o.startswith("run_name=") for o in user):
        cfg["run_name"] = f"{cfg.get('run_name') or name}_refined"
    return cfg, choices


def collect(config: str | None, overrides: list[str], print_only: bool = False) -> int:
    """The ``collect`` verb (``cosmos_lit.eval.collect``): the checkpoint's eval config with recording on."""
    from cosmos_lit.callbacks.sim_eval import SimEvalCallback
    from cosmos_lit.eval import collect as collecting
    from cosmos_lit.registry import build
    from cosmos_lit.rollout_files import check_folder

    opts, rest = collecting.split_options(overrides)
    ckpt_arg = next((o.split("=", 1)[1] for o in rest if o.startswith("ckpt_path=")), None)
    if not ckpt_arg:
        raise CliError(f"collect: needs ckpt_path=<checkpoint>; usage: {collecting.USAGE}")
    ckpt = Path(ckpt_arg).expanduser()
    if not ckpt.is_file():
        raise CliError(f"ckpt_path: checkpoint not found: {ckpt}")
    cfg, choices = load_run_config("collect", config, rest)
    ev = cfg.get("eval")
    if not isinstance(ev, dict):
        where = f"--config {config}" if config else f"the config embedded in {ckpt}"
        raise CliError(f"eval: {where} has no eval section (the run had eval=none), so there is no env to collect "
                       "in; pass a config that has one, e.g. --config configs/aloha_sim.yaml ckpt_path=...")
    ev = dict(ev, record_rollouts=True)
    if not any(o.lstrip("+").startswith("eval.time_budget_s=") for o in rest):
        ev["time_budget_s"] = None  # a collection runs every episode; the training-time budget does not apply
    cfg["eval"] = ev
    if print_only:
        print_config_tree(cfg, choices)
        return 0
    check_names({"eval": ev, "planner": cfg.get("planner")})
    collector = build(ev, "callback", path="eval", planner=cfg.get("planner"))
    if not isinstance(collector, SimEvalCallback):
        raise CliError(f"eval.name: {ev.get('name')!r} cannot collect rollouts (expected sim_eval)")
    if not collector.seeds:
        raise CliError("eval.num_episodes: expected at least 1 episode to collect")
    out = Path(opts["out"]).expanduser() if opts["out"] else collecting.default_out(cfg)
    try:
        previous = check_folder(out)  # before any model or env is loaded: a refused folder costs nothing
    except ValueError as e:
        raise CliError(f"out: {e}") from None
    return collecting.record(collector, ckpt, out, opts["device"], cfg, overrides, previous,
                             write_config=lambda folder: save_run_config(folder, cfg, overrides, choices))


def export(overrides: list[str]) -> int:
    """The ``export`` verb (``cosmos_lit.export``): ``ckpt_path=CKPT out=DIR [overwrite=true] [trust_pickle=true]``."""
    from rich.markup import escape

    from cosmos_lit.export import export_policy, parse_options

    opts = parse_options(overrides)
    out = export_policy(**opts)
    console().print(f"exported {escape(str(opts['ckpt_path']))} -> {escape(str(out))}")
    return 0


def run(command: str, config: str | None, overrides: list[str], print_only: bool = False) -> Any:
    """Compose, build and run one job; returns the trainer (predictions go to ``<run_dir>/predictions.npz``)."""
    import lightning as L

    cfg, choices = load_run_config(command, config, overrides)
    if command in ("test", "predict") and not cfg.get("ckpt_path"):
        raise CliError(f"{command}: needs ckpt_path=<checkpoint> (the model to score on the held-out episodes)")
    if cfg.get("ckpt_path") == "last":
        if command != "fit":
            raise CliError(f"ckpt_path=last: resumes a fit; {command} needs a checkpoint file")
        if not (cfg.get("run_dir") or os.environ.get("COSMOS_LIT_RUN_DIR")):
            raise CliError("ckpt_path=last: needs run_dir=<the run's directory> (its checkpoints/last.ckpt is resumed; "
                           "a first start with no checkpoint there trains from scratch)")
    if print_only:
        print_config_tree(cfg, choices)
        return None
    import warnings

    # The frozen VAE is deliberately in eval mode; Lightning's pytree notice is about its own internals.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # errors first: nothing is printed (no config tree, no "Seed set to") until the data is set up
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)

    check_names(cfg)
    trainer_kwargs(cfg)
    dm = build_datamodule(cfg)
    base = None
    if cfg.get("init_from"):  # start from a policy checkpoint: its weights, and its statistics for the data
        from cosmos_lit.checkpoint import load_model

        if command not in ("fit", "refine"):
            raise CliError(f"init_from: only fit and refine start from a checkpoint's weights (use ckpt_path for {command})")
        if cfg.get("ckpt_path"):
            raise CliError("init_from and ckpt_path: one or the other (ckpt_path resumes a run, init_from starts a new one)")
        base = load_model(str(cfg["init_from"]))
        dm.load_state_dict({"statistics": base.statistics})
    dm.prepare_data()
    dm.setup("fit" if command in ("fit", "refine") else command)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and command != "fit":
        from cosmos_lit.checkpoint import layout_differences, load_task

        task = load_task(ckpt_path)
        ckpt_path = None  # weights are loaded; Lightning need not restore training state
        diff = layout_differences(task.model.spec, dm.spec)
        if diff:
            raise CliError(f"ckpt_path: {cfg['ckpt_path']}: the checkpoint's data layout differs from this config's "
                           f"data ({'; '.join(diff)}); pass the data it was trained on, or drop --config")
    else:
        task = build_task(cfg, dm)
        if base is not None:
            from cosmos_lit.checkpoint import start_from

            start_from(task, base, cfg["init_from"])
    # the run directory is made once the data and the model are known to be good: a run that cannot start leaves
    # nothing behind
    run_dir = make_run_dir(cfg, command)
    save_run_config(run_dir, cfg, overrides, choices)
    print_config_tree(cfg, choices, save_to=run_dir / "config_tree.txt")
    if ckpt_path == "last":  # fit: resume the run directory's newest checkpoint, if it has one
        ckpt_path = last_checkpoint(cfg, run_dir)
    command = "fit" if command == "refine" else command
    callbacks = build_callbacks(cfg, run_dir, overrides, choices, command)
    trainer = build_trainer(cfg, run_dir, callbacks, command)
    if command == "fit":
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
        except SIGTERMException:
            raise Preempted(f"stopped by SIGTERM at step {trainer.global_step}; continue with the same command and "
                            f"run_dir={run_dir} ckpt_path=last") from None
        _report_fit(trainer, run_dir)
        return trainer
    if command == "validate":
        trainer.validate(task, datamodule=dm)
    elif command == "test":
        trainer.test(task, datamodule=dm)
    else:
        trainer.predict(task, datamodule=dm, return_predictions=False)
    return trainer


def last_checkpoint(cfg: dict[str, Any], run_dir: Path) -> str | None:
    """What ``ckpt_path=last`` resumes: the newest of the run's ``last*.ckpt`` (periodic, or written on SIGTERM) and
    Lightning's SLURM requeue checkpoints ``hpc_ckpt_*.ckpt``; None (train from scratch, with a notice) when the run
    has none yet, so that a job's first start and its restarts share one command."""
    folder = Path((cfg.get("checkpoint") or {}).get("dirpath") or run_dir / "checkpoints")
    found = [p for p in folder.glob("last*.ckpt")] + [p for p in run_dir.glob("hpc_ckpt_*.ckpt")]
    if not found:
        console(stderr=True).print(f"ckpt_path=last: no checkpoint in {folder} yet; training from step 0")
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    console(stderr=True).print(f"ckpt_path=last: resuming {newest}")
    return str(newest)


def _report_fit(trainer: Any, run_dir: Path) -> None:
    from rich.markup import escape

    if not trainer.is_global_zero:  # one report per run, not one per rank
        return

    best = getattr(trainer.checkpoint_callback, "last_model_path", "") if trainer.checkpoint_callback else ""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "sim/", "train/loss"))}
    c = console()  # no hard wrap: the paths stay whole in a log file
    c.print(f"[bold green]done[/bold green]: run directory {escape(str(run_dir))}")
    if best:
        c.print(f"checkpoint: {escape(str(best))}")
    for k in sorted(metrics):
        c.print(f"  {k} = {metrics[k]:.4f}")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep syntax (``a=1,2``, ``choice(...)``, ``range(...)``) -> the list of per-job override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except Exception as e:
        raise CliError(f"sweep overrides: {hydra_message(e)}") from None
    axes = []
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            axes.append([f"{key}={ov.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*axes)]


def run_sweep(command: str, config: str, overrides: list[str], dry_run: bool) -> int:
    jobs = expand_sweep(overrides)
    base = Path("runs") / "multirun" / time.strftime("%Y-%m-%d_%H-%M-%S")
    failures = 0
    for i, job in enumerate(jobs):
        job = [o for o in job if not o.startswith("run_dir=")] + [f"run_dir={base / str(i)}"]
        cmd = [sys.executable, "-m", "cosmos_lit", command, "--config", config, *job]
        print(f"[job {i}] {shlex.join(cmd)}", flush=True)
        if dry_run:
            continue
        env = {k: v for k, v in os.environ.items() if k != "COSMOS_LIT_RUN_DIR"}
        failures += subprocess.call(cmd, env=env) != 0
    if not dry_run:
        print(f"{len(jobs) - failures}/{len(jobs)} jobs succeeded; runs under {base}")
    return 1 if failures else 0


def list_registered(kind: str | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cosmos_lit.registry import describe

    table = Table(title="cosmos_lit registry")
    for col in ("kind", "name", "summary"):
        table.add_column(col)
    for row in describe(kind):
        table.add_row(*(escape(cell) for cell in row))  # a docstring's "[a, b]" is text, not rich markup
    Console().print(table)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cosmos_lit", description="Cosmos Policy post-training and evaluation.",
                                epilog=VERBS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=[*COMMANDS, "eval", "collect", "serve", "export", "check-data", "list"], metavar="command",
                   help="one of the verbs below")
    p.add_argument("--config", "-c", help="primary config file, e.g. configs/aloha_sim.yaml")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.add_argument("-m", "--multirun", action="store_true", help="expand sweep overrides; one subprocess per job")
    p.add_argument("--dry-run", action="store_true", help="with -m: print the job commands only")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option); for 'list': a kind")
    args = p.parse_intermixed_args(argv)
    # LightningCLI muscle memory: --trainer.max_steps=5 -> trainer.max_steps=5
    args.overrides = [o[2:] if o.startswith("--") and "=" in o else o for o in args.overrides]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    silence_lightning_tips()  # every verb (build_trainer does it too, for library use)
    try:
        if args.command == "list":
            list_registered(args.overrides[0] if args.overrides else None)
            return
        if args.command == "eval":  # a benchmark protocol: configs/protocol/<benchmark>.yaml
            from cosmos_lit.eval.run import main as eval_main

            sys.exit(eval_main(args.config, args.overrides, print_only=args.print_config))
        if args.command == "export":  # a pickle-free policy folder: cosmos_lit.export
            sys.exit(export(args.overrides))
        if args.command == "check-data":  # every frame of every episode: cosmos_lit.check_data
            from cosmos_lit.check_data import main as check_data_main

            sys.exit(check_data_main(args.config, args.overrides, print_only=args.print_config))
        if args.command == "collect":  # rollouts of a checkpoint for learning from experience
            sys.exit(collect(args.config, args.overrides, print_only=args.print_config))
        if args.command == "serve":  # a policy server: cosmos_lit.serve (docs/serving.md)
            from cosmos_lit.serve.cli import main as serve_main

            sys.exit(serve_main(args.overrides, config=args.config, print_only=args.print_config))
        if args.multirun:
            if not args.config:
                raise CliError("-m needs --config")
            sys.exit(run_sweep(args.command, args.config, args.overrides, args.dry_run))
        run(args.command, args.config, args.overrides, print_only=args.print_config)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(143)
    except (CliError, ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        if os.environ.get("COSMOS_LIT_DEBUG"):
            raise
        msg = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        print("(set COSMOS_LIT_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
