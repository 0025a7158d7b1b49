"""``python -m cosmos_lit serve ckpt_path=PATH [key=value ...]``: load a checkpoint's policy once and serve it.

Options (``key=value``, values read as YAML; dotted keys reach into the dict-valued ones, e.g.
``planner=best_of_n planner.num_candidates=4`` or ``keys.proprio=observation/state``):

=================  =========================================================================================
ckpt_path          the checkpoint (required)
front              openpi (WebSocket + msgpack), official_http (POST /act, json-numpy, as NVIDIA's deploy.py) or both
host, port         bind address (127.0.0.1: this machine only) and the openpi front's port (8000; 0 picks a free one)
http_port          the /act front's port (8777, the official server's)
http_keys          the /act key overrides (defaults: configs/serve/<spec.name>.yaml), e.g. http_keys.images.top=image
http_future_images decode the imagined future images for every /act answer (true, as the official server)
api_key_file       a file holding the shared secret both fronts then require (else $COSMOS_LIT_API_KEY, else none)
allow_unauthenticated  bind a non-loopback host without an API key (false: refused)
planner            a planner name or node (default: the checkpoint's ``planner``, else the direct policy)
num_steps          denoising steps per query (default: the checkpoint's ``eval.num_steps``, else the model's)
execute_steps      actions per response (default: the checkpoint's ``eval.execute_steps``, else the whole chunk)
image_pipeline     test-time image options (default: the checkpoint's ``eval.image_pipeline``)
seed               base noise seed (query i of the server's counter uses seed + i)
max_batch          most requests per forward (8)
batch_wait_ms      how long a request waits for others to join its batch (5)
max_message_mb     largest request body in MiB (16); a larger one closes that connection (code 1009)
keys               the observation key mapping's overrides (``cosmos_lit.serve.wire.DEFAULT_KEYS``)
default_prompt     instruction for requests that carry none (default: such a request is an error)
device             auto (CUDA when there is one), cpu, cuda, cuda:1, ...
warmup             run warm-up forwards before accepting connections (true)
trust_pickle       load a checkpoint that holds pickled objects (false)
log_level          info (a line per request), warning, debug
=================  =========================================================================================
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from cosmos_lit.config import CliError
from cosmos_lit.registry import suggest

OPTIONS: dict[str, Any] = {
    "ckpt_path": None, "front": "openpi", "host": "127.0.0.1", "port": 8000, "http_port": 8777, "planner": None,
    "num_steps": None, "execute_steps": None, "image_pipeline": None, "seed": 0, "max_batch": 8, "batch_wait_ms": 5.0,
    "max_message_mb": 16.0, "keys": None, "http_keys": None, "http_future_images": True, "default_prompt": None,
    "device": "auto", "warmup": True, "trust_pickle": False, "api_key_file": None, "allow_unauthenticated": False,
    "log_level": "info",
}
DICT_OPTIONS = ("planner", "image_pipeline", "keys", "http_keys")
STRING_OPTIONS = ("ckpt_path", "host", "default_prompt", "device", "log_level", "front", "api_key_file")


def parse_options(overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """``key=value`` strings -> (options with defaults, the keys given). One-line CliError for a bad one."""
    import yaml

    opts = dict(OPTIONS)
    given: set[str] = set()
    for ov in overrides:
        key, eq, text = ov.partition("=")
        if not eq or not key:
            raise CliError(f"serve: expected key=value, got '{ov}' (options: {', '.join(OPTIONS)})")
        key = key.lstrip("+")
        top, _, rest = key.partition(".")
        if top not in OPTIONS:
            raise CliError(f"serve: unknown option '{top}'{suggest(top, list(OPTIONS))}; options: {', '.join(OPTIONS)}")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as e:
            raise CliError(f"serve: {key}: not a YAML value ({' '.join(str(e).split())[:120]})") from None
        if top in STRING_OPTIONS and value is not None:
            value = text  # as typed: a path or prompt like "1e5" or "yes" stays a string
        if rest:
            if top not in DICT_OPTIONS:
                raise CliError(f"serve: {key}: '{top}' has no sub-keys (only {', '.join(DICT_OPTIONS)} do)")
            node = opts[top] if isinstance(opts[top], dict) else ({"name": opts[top]} if opts[top] else {})
            opts[top] = node = dict(node)
            parts = rest.split(".")
            for p in parts[:-1]:
                node[p] = node = dict(node.get(p) or {})
            node[parts[-1]] = value
        else:
            opts[top] = value
        given.add(top)
    return opts, given


def _int(opts: dict[str, Any], key: str, lo: int, hi: int | None = None, allow_none: bool = False) -> int | None:
    v = opts[key]
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise CliError(f"serve: {key}: expected an integer {rng}{' or null' if allow_none else ''}, got {v!r}")
    return v


def _checkpoint_defaults(ckpt_path: Path, trust_pickle: bool) -> dict[str, Any]:
    """``planner`` and ``eval.{num_steps, execute_steps, image_pipeline}`` of the checkpoint's embedded config."""
    import torch

    try:  # memory-mapped: the tensors are not read (a 2B checkpoint is loaded once, by the policy)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except Exception:  # not loadable this way: the policy's loader says why
        return {}
    meta = ckpt.get("cosmos_lit") if isinstance(ckpt, dict) else None
    cfg = (meta or {}).get("config") or {}  # none in a converted checkpoint: the policy's own defaults
    ev = cfg.get("eval") if isinstance(cfg.get("eval"), dict) else {}
    out = {k: ev.get(k) for k in ("num_steps", "execute_steps", "image_pipeline") if ev.get(k) is not None}
    if isinstance(cfg.get("planner"), dict):
        out["planner"] = cfg["planner"]
    return out


def resolve_options(overrides: list[str]) -> dict[str, Any]:
    opts, given = parse_options(overrides)
    if not opts["ckpt_path"]:
        raise CliError("serve: needs ckpt_path=<checkpoint>")
    ckpt = Path(str(opts["ckpt_path"])).expanduser()
    if not ckpt.is_file():
        raise CliError(f"serve: ckpt_path: checkpoint not found: {ckpt}")
    opts["ckpt_path"] = str(ckpt)
    _int(opts, "port", 0, 65535)
    _int(opts, "http_port", 0, 65535)
    from cosmos_lit.serve.server import FRONTS

    if opts["front"] not in FRONTS:
        raise CliError(f"serve: front: expected {', '.join(FRONTS)}, got {opts['front']!r}{suggest(str(opts['front']), list(FRONTS))}")
    _int(opts, "max_batch", 1)
    _int(opts, "seed", 0)
    _int(opts, "num_steps", 1, allow_none=True)
    _int(opts, "execute_steps", 1, allow_none=True)
    for key in ("batch_wait_ms", "max_message_mb"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "max_message_mb" and v < 0.001):
            raise CliError(f"serve: {key}: expected a non-negative number, got {v!r}")
    for key in ("warmup", "trust_pickle", "http_future_images", "allow_unauthenticated"):
        if not isinstance(opts[key], bool):
            raise CliError(f"serve: {key}: expected true or false, got {opts[key]!r}")
    if isinstance(opts["planner"], str):
        opts["planner"] = {"name": opts["planner"]}
    for key in DICT_OPTIONS:
        if opts[key] is not None and not isinstance(opts[key], dict):
            raise CliError(f"serve: {key}: expected a mapping{' or a planner name' if key == 'planner' else ''}, got {opts[key]!r}")
    if str(opts["log_level"]).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(f"serve: log_level: expected debug, info, warning or error, got {opts['log_level']!r}")
    _api_key(opts)  # an unreadable key file or a refused bind ends here, before the model loads
    for key, value in _checkpoint_defaults(ckpt, bool(opts["trust_pickle"])).items():
        if key not in given:
            opts[key] = value
    return opts


def _api_key(opts: dict[str, Any]) -> str | None:
    """The API key (``api_key_file``, else ``$COSMOS_LIT_API_KEY``), after the bind check; CliError on a problem."""
    from cosmos_lit.serve.access import check_bind, read_api_key

    try:
        key = read_api_key(opts["api_key_file"])
        check_bind(str(opts["host"]), key, bool(opts["allow_unauthenticated"]))
    except ValueError as e:
        raise CliError(f"serve: {e}") from None
    return key


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"serve: device={name}: CUDA is not available on this machine")
    return name


def build_server(opts: dict[str, Any]) -> Any:
    """Load the policy and wrap it in a (not yet started) ``PolicyServer``."""
    from cosmos_lit.policy import CosmosPolicy
    from cosmos_lit.serve.server import PolicyServer

    log = logging.getLogger("cosmos_lit.serve")
    device = _device(str(opts["device"]))
    t0 = time.perf_counter()
    policy = CosmosPolicy.from_checkpoint(opts["ckpt_path"], map_location=device, planner=opts["planner"],
                                          trust_pickle=opts["trust_pickle"], num_steps=opts["num_steps"],
                                          execute_steps=opts["execute_steps"], image_pipeline=opts["image_pipeline"],
                                          seed=opts["seed"])
    spec = policy.spec
    log.info("loaded %s in %.1f s on %s: cameras %s, proprio %d, actions %d x %d (execute %d), planner %s, num_steps %s",
             opts["ckpt_path"], time.perf_counter() - t0, device, list(spec.cameras), spec.proprio_dim, spec.chunk_size,
             spec.action_dim, policy.execute_steps, type(policy.planner).__name__, policy.num_steps)
    try:
        return PolicyServer(policy, host=str(opts["host"]), port=int(opts["port"]), max_batch=int(opts["max_batch"]),
                            batch_wait_ms=float(opts["batch_wait_ms"]), keys=opts["keys"],
                            default_prompt=opts["default_prompt"],
                            max_message_bytes=int(float(opts["max_message_mb"]) * 2**20), warmup=bool(opts["warmup"]),
                            metadata={"checkpoint": Path(opts["ckpt_path"]).name}, front=str(opts["front"]),
                            http_port=int(opts["http_port"]), http_keys=opts["http_keys"],
                            http_future_images=bool(opts["http_future_images"]), api_key=_api_key(opts),
                            allow_unauthenticated=bool(opts["allow_unauthenticated"]))
    except ValueError as e:
        raise CliError(f"serve: {e}") from None


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("cosmos_lit.serve").setLevel(level.upper())
    # websockets logs every failed handshake (a port scanner, an HTTP probe) with a traceback at INFO/ERROR
    logging.getLogger("websockets").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL)


def main(overrides: list[str], config: str | None = None, print_only: bool = False) -> int:
    if config:
        raise CliError("serve: takes ckpt_path=<checkpoint> and key=value options, not --config")
    opts = resolve_options(overrides)
    if print_only:
        import yaml

        print(yaml.safe_dump(opts, sort_keys=False).rstrip())
        return 0
    configure_logging(str(opts["log_level"]))
    try:
        import msgpack  # noqa: F401
        import websockets  # noqa: F401
        if opts["front"] != "openpi":
            import json_numpy  # noqa: F401
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
    except ImportError as e:
        raise CliError(f"serve: needs the 'serve' extra (pip install -e '.[serve]'): {e}") from None
    server = build_server(opts)

    def _terminate(signum: int, frame: Any) -> None:  # SIGTERM (docker stop, kill): stop as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        server.run()
    except OSError as e:
        ports = {"openpi": f"port={opts['port']}", "official_http": f"http_port={opts['http_port']}"}
        which = " / ".join(v for k, v in ports.items() if opts["front"] in (k, "both"))
        raise CliError(f"serve: cannot listen on {opts['host']} ({which}): {e.strerror or e}") from None
    return 0
