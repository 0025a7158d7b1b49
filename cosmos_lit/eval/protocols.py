"""Benchmark protocols as config files: ``configs/protocol/<benchmark>.yaml``, composed with the CLI's Hydra machinery.

A protocol file states only what is the protocol's own: the run seeds, trials per task, the task suites, the
denoising steps, the released model's proprio/action dims. Everything else it composes from where that fact lives:

- the model's cameras, image size, chunk, γ and fps, and the training image pipeline: ``configs/data/<benchmark>.yaml``
  (``data``);
- the deployment: the env node (render size, what the env does to its frames: LIBERO flips and JPEG-round-trips
  them), the policy-side image steps and the actions executed open loop: ``configs/eval/<benchmark>.yaml`` (``eval``,
  the same node the training-time ``SimEvalCallback`` runs);
- per-task horizons and RoboCasa's evaluation kitchens: the env's own defaults (``cosmos_lit.envs``), which are what
  an env built without ``max_steps`` runs anyway;
- the run keys (checkpoint, device, subsets, output): ``configs/protocol/run_options.yaml``.

:func:`load` composes a file plus ``key=value`` overrides into a validated :class:`Protocol` and :class:`RunOptions`
(an unknown key is one line with a "did you mean"); :func:`plan_jobs` expands a protocol into env configs and
episode seeds.

Episode seeds: episode k of run seed s resets its env with ``1000·s + k``. LIBERO restores initial state
``seed % 50 = k`` (1000 is a multiple of the 50 initial states of every LIBERO task) and seeds the fixture placement
with the whole number, so the three run seeds see the same 50 initial states but different noise and fixtures; the
policy's sampling noise is seeded with s (query i uses s + i). RoboCasa's 50 trials are 10 per kitchen scene.
"""

from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cosmos_lit.registry import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
PROTOCOL_DIR = CONFIG_ROOT / "protocol"
# Episode k of run seed s resets with EPISODE_SEED_STRIDE·s + k (a multiple of LIBERO's 50 initial states).
EPISODE_SEED_STRIDE = 1000
# Config groups a protocol file composes.
GROUPS = ("data", "eval")


@dataclass(frozen=True)
class Protocol:
    """One benchmark's evaluation protocol, resolved.

    Attributes:
        benchmark: libero / robocasa / aloha / aloha_sim (names the released checkpoint files too).
        spec: ``DataSpec`` fields of the evaluated model (cameras in latent-slot order, dims, chunk K, γ, fps, S).
        num_steps: denoising steps per policy query (None: the model's own default), passed to the policy per call.
        trials: episodes per task and run seed.
        seeds: run seeds; results are reported per seed and averaged.
        task_suites: suite -> tasks (LIBERO: task ids, RoboCasa: env names, ALOHA sim: task names).
        env: env node of the deployment (``cosmos_lit.envs``) without the per-job keys.
        image_pipeline: the policy's test-time image options (what the env has not done already).
        execute_steps: actions run open loop per query.
        env_keys: which env keys receive the suite and the task of a job (e.g. ``{suite: suite, task: task_id}``).
        scene_key: env key whose list of scenes the trials are split over evenly (RoboCasa: ``layout_and_style_ids``).
        scenes: the values of ``scene_key`` (the env node's, else the env's default).
        max_steps: a horizon for every task (None: each task's own, the env's default).
        horizons: suite -> {task: horizon in policy steps}.
        simulated: False when the protocol needs the real robot.
        python_executable: interpreter of the env workers (LIBERO runs in .venv-libero), or None.
        notes: why a protocol cannot run here, and the like.
        source: the protocol file.
    """

    benchmark: str
    spec: dict[str, Any]
    num_steps: int | None
    trials: int
    seeds: tuple[int, ...]
    task_suites: dict[str, tuple[Any, ...]]
    env: dict[str, Any]
    image_pipeline: dict[str, Any]
    execute_steps: int
    env_keys: dict[str, str] = field(default_factory=dict)
    scene_key: str | None = None
    scenes: tuple[Any, ...] = ()
    max_steps: int | None = None
    horizons: dict[str, dict[Any, int]] = field(default_factory=dict)
    simulated: bool = True
    python_executable: str | None = None
    notes: str = ""
    source: str = ""

    def horizon(self, suite: str, task: Any) -> int:
        return int(self.max_steps) if self.max_steps else int(self.horizons[suite][task])

    def job_keys(self, suite: str, task: Any) -> dict[str, Any]:
        """The env keys of one job (``{suite: ..., task_id: ...}`` for LIBERO, ``{env_name: ...}`` for RoboCasa)."""
        return _job_keys(self.env_keys, suite, task)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able containers (task keys as strings), for reports."""
        d = asdict(self)
        d["horizons"] = {s: {str(t): h for t, h in tasks.items()} for s, tasks in self.horizons.items()}
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class RunOptions:
    """The run keys of ``configs/protocol/run_options.yaml`` (see that file for what each does)."""

    checkpoint_dir: str | None = None
    vae: str | None = None
    checkpoint: str | None = None
    tiny: bool = False
    trust_pickle: bool = False
    device: str = "cpu"
    precision: str = "auto"
    suites: tuple[str, ...] | None = None
    tasks: tuple[Any, ...] | None = None
    num_workers: int = 2
    out: str | None = None
    videos: int = 0
    python_executable: str | None = None
    clip_actions: bool = False
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: expected auto, fp32 or bf16, got '{self.precision}'")
        if int(self.num_workers) < 1:
            raise ConfigError(f"num_workers: expected >= 1, got {self.num_workers}")
        if int(self.videos) < 0:
            raise ConfigError(f"videos: expected >= 0, got {self.videos}")


PROTOCOL_KEYS = ("benchmark", "spec", "num_steps", "trials", "seeds", "task_suites", "env_keys", "scene_key",
                 "max_steps", "simulated", "notes")
RUN_KEYS = tuple(f.name for f in fields(RunOptions))
TOP_LEVEL_KEYS = frozenset((*PROTOCOL_KEYS, *RUN_KEYS, *GROUPS))


def protocol_file(config: str | Path) -> Path:
    """A protocol file: a path, or a benchmark name (``libero`` -> ``configs/protocol/libero.yaml``)."""
    p = Path(config).expanduser()
    if p.suffix not in (".yaml", ".yml") and not p.exists():
        named = PROTOCOL_DIR / f"{config}.yaml"
        if not named.is_file():
            have = sorted(f.stem for f in PROTOCOL_DIR.glob("*.yaml") if f.stem != "run_options")
            raise ConfigError(f"protocol: unknown '{config}'{_hint(str(config), have)}; expected one of "
                              f"{', '.join(have)} or a protocol file")
        return named
    return p


def _hint(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def compose_protocol(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved protocol file + overrides, composed as every ``python -m cosmos_lit`` verb composes its config
    (Hydra grammar; an unknown key or option is one line with the closest accepted spelling)."""
    from cosmos_lit.config import CliError, compose, resolve

    try:
        cfg, _ = compose(protocol_file(config), list(overrides), top_level_keys=set(TOP_LEVEL_KEYS))
        return resolve(cfg)
    except CliError as e:
        raise ConfigError(str(e)) from None


def _tuple(value: Any) -> tuple[Any, ...] | None:
    if value is None:
        return None
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def env_default(env: dict[str, Any], key: str) -> Any:
    """The default of constructor argument ``key`` of the env ``env["name"]`` (what it uses when not given)."""
    from cosmos_lit.registry import registry

    cls = registry("env").get(str(env.get("name")), "eval.env")
    param = inspect.signature(cls).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def env_horizon(env: dict[str, Any]) -> int:
    """The episode length an env built from ``env`` runs: its ``max_steps``, else the env's default for the task."""
    if env.get("max_steps"):
        return int(env["max_steps"])
    name = str(env.get("name"))
    if name == "libero":
        from cosmos_lit.envs.libero import suite_max_steps

        return suite_max_steps(str(env.get("suite", env_default(env, "suite"))))
    from cosmos_lit.envs.robosuite import RobosuiteEnv
    from cosmos_lit.registry import registry

    cls = registry("env").get(name, "eval.env")
    if issubclass(cls, RobosuiteEnv):  # the robosuite family: per-task tables
        return int(cls.default_max_steps(str(env.get("env_name", env_default(env, "env_name")))))
    default = env_default(env, "max_steps")
    if not default:
        raise ConfigError(f"eval.env.max_steps: env '{name}' has no default horizon; set max_steps")
    return int(default)


def build_protocol(cfg: dict[str, Any]) -> Protocol:
    """The :class:`Protocol` of a resolved protocol config (see :func:`compose_protocol`)."""
    source = str(cfg.get("_source", ""))
    for key in ("benchmark", "spec"):
        if not cfg.get(key):
            raise ConfigError(f"{source or 'protocol'}: missing '{key}' (not a protocol file?)")
    deploy = dict(cfg.get("eval") or {})
    simulated = bool(cfg.get("simulated", True))
    env = dict(deploy.get("env") or {})
    env_keys = {str(k): str(v) for k, v in dict(cfg.get("env_keys") or {}).items()}
    bad = [k for k in env_keys if k not in ("suite", "task")]
    if bad:
        raise ConfigError(f"env_keys.{bad[0]}: expected 'suite' and/or 'task' (mapped to env keys)")
    for env_key in env_keys.values():  # the per-job keys come from the plan, not from the deployment node
        env.pop(env_key, None)
    suites = {str(s): tuple(t) for s, t in dict(cfg.get("task_suites") or {}).items()}
    if simulated and (not env or not suites):
        raise ConfigError(f"{source or cfg['benchmark']}: a simulated protocol needs eval.env and task_suites")
    execute_steps = deploy.get("execute_steps") or cfg["spec"].get("chunk_size")
    scene_key = cfg.get("scene_key")
    scenes: tuple[Any, ...] = ()
    if scene_key:
        values = (deploy.get("env") or {}).get(scene_key) or env_default(env, scene_key) or ()
        scenes = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in values)
        env.pop(scene_key, None)
    horizons: dict[str, dict[Any, int]] = {}
    if simulated:
        for suite, tasks in suites.items():
            for task in tasks:
                horizons.setdefault(suite, {})[task] = env_horizon({**env, **_job_keys(env_keys, suite, task)})
    env.pop("max_steps", None)  # each job sets its own
    trials = int(cfg.get("trials") or 0)
    if simulated and trials < 1:
        raise ConfigError(f"trials: expected >= 1, got {cfg.get('trials')}")
    num_steps = cfg.get("num_steps")
    if num_steps is not None and int(num_steps) < 1:
        raise ConfigError(f"num_steps: expected >= 1 or null (the model's default), got {num_steps}")
    max_steps = cfg.get("max_steps")
    if max_steps is not None and int(max_steps) < 1:
        raise ConfigError(f"max_steps: expected >= 1 or null (each task's horizon), got {max_steps}")
    return Protocol(
        benchmark=str(cfg["benchmark"]),
        spec=dict(cfg["spec"]),
        num_steps=None if num_steps is None else int(num_steps),
        trials=trials,
        seeds=tuple(int(s) for s in cfg.get("seeds") or ()),
        task_suites=suites,
        env=env,
        image_pipeline=dict(deploy.get("image_pipeline") or {}),
        execute_steps=int(execute_steps),
        env_keys=env_keys,
        scene_key=str(scene_key) if scene_key else None,
        scenes=scenes,
        max_steps=None if max_steps is None else int(max_steps),
        horizons=horizons,
        simulated=simulated,
        python_executable=deploy.get("python_executable"),
        notes=str(cfg.get("notes") or ""),
        source=source,
    )


def _job_keys(env_keys: dict[str, str], suite: str, task: Any) -> dict[str, Any]:
    values = {"suite": suite, "task": task}
    return {env_key: values[what] for what, env_key in env_keys.items()}


def run_options(cfg: dict[str, Any]) -> RunOptions:
    opts = {k: cfg.get(k) for k in RUN_KEYS if k in cfg}
    for key in ("suites", "tasks"):
        opts[key] = _tuple(opts.get(key))
    for key, default in (("tiny", False), ("trust_pickle", False), ("clip_actions", False)):
        opts[key] = bool(opts.get(key) if opts.get(key) is not None else default)
    for key, default in (("num_workers", 2), ("videos", 0)):
        opts[key] = int(opts.get(key) if opts.get(key) is not None else default)
    opts["device"] = str(opts.get("device") or "cpu")
    opts["precision"] = str(opts.get("precision") or "auto")
    return RunOptions(**opts)


def load(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Protocol, RunOptions]:
    """Compose and validate a protocol file (a path or a benchmark name) with ``key=value`` overrides."""
    cfg = compose_protocol(config, overrides)
    cfg["_source"] = str(protocol_file(config))
    return build_protocol(cfg), run_options(cfg)


def load_protocol(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Protocol:
    """The :class:`Protocol` of a protocol file or benchmark name (``load_protocol("libero")``)."""
    return load(config, overrides)[0]


def policy_image_pipeline(protocol: Protocol) -> Any:
    """The ``ImagePipeline`` the policy applies under ``protocol`` (after what the env did to its frames)."""
    from cosmos_lit.images import ImagePipeline

    return ImagePipeline(image_size=int(protocol.spec["image_size"]), **protocol.image_pipeline)


# ------------------------------------------------------------------------------------------------ planning the runs


@dataclass
class Job:
    """Episodes of one env configuration for one run seed."""

    suite: str
    task: Any
    env: dict[str, Any]
    run_seed: int
    episodes: list[int]  # episode indices k
    max_steps: int
    scene: Any = None

    @property
    def env_seeds(self) -> list[int]:
        return [episode_seed(self.run_seed, k) for k in self.episodes]


def episode_seed(run_seed: int, episode: int) -> int:
    """Env reset seed of episode ``episode`` under ``run_seed`` (LIBERO: initial state ``episode % 50``)."""
    if not 0 <= episode < EPISODE_SEED_STRIDE:
        raise ConfigError(f"trials: episode index {episode} out of range 0..{EPISODE_SEED_STRIDE - 1}")
    return EPISODE_SEED_STRIDE * int(run_seed) + int(episode)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _pick(available: list[Any], wanted: Any, what: str) -> list[Any]:
    if not wanted:
        return list(available)
    bad = [w for w in wanted if w not in available]
    if bad:
        raise ConfigError(f"{what}: unknown {bad[0]!r}{_hint(str(bad[0]), available)}; expected some of "
                          f"{', '.join(map(str, available))}")
    return list(wanted)


def plan_jobs(
    protocol: Protocol,
    suites: Any = None,
    tasks: Any = None,
    trials: int | None = None,
    seeds: Any = None,
    max_steps: int | None = None,
    env_overrides: dict[str, Any] | None = None,
) -> list[Job]:
    """Expand a protocol into jobs (defaults: every suite and task, the protocol's trials, seeds and horizons)."""
    if not protocol.simulated:
        raise ConfigError(f"{protocol.benchmark}: {protocol.notes or 'not a simulator protocol'}")
    trials = protocol.trials if trials is None else int(trials)
    if trials < 1:
        raise ConfigError(f"trials: expected >= 1, got {trials}")
    seeds = list(protocol.seeds) if not seeds else [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("seeds: the protocol has no run seeds; pass seeds=[...]")
    jobs = []
    for suite in _pick(list(protocol.task_suites), suites, "suites"):
        for task in _pick(list(protocol.task_suites[suite]), tasks, f"tasks of {suite}"):
            horizon = int(max_steps) if max_steps else protocol.horizon(suite, task)
            base = {**protocol.env, **protocol.job_keys(suite, task), "max_steps": horizon, **(env_overrides or {})}
            scenes = protocol.scenes or (None,)
            for i, scene in enumerate(scenes):
                episodes = [k for k in range(trials) if k * len(scenes) // trials == i]
                if not episodes:
                    continue
                env = dict(base) if scene is None else {**base, protocol.scene_key: [_plain(scene)]}
                for run_seed in seeds:
                    jobs.append(Job(suite, task, env, run_seed, episodes, horizon, scene))
    return jobs
