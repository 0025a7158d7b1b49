"""Composing configs: a primary YAML file + Hydra overrides -> one plain config, with one-line errors.

Used by every verb of the CLI (``cosmos_lit.cli``) and by the benchmark protocols (``cosmos_lit.eval``). The primary
file's ``defaults`` list picks one option per config group; overrides use Hydra's grammar (``trainer.max_steps=100``,
``model/backbone=cosmos_predict2_2b``, ``+new.key=1``). A typo on the command line or in a YAML file ends in one line
that names the key or option, the closest accepted spelling and what is accepted there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


BUILTIN_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # the repository's configs/
TOP_LEVEL_KEYS = {
    "data", "model", "planner", "eval", "trainer", "logger", "task", "seed", "run_dir", "run_name", "ckpt_path",
    "callbacks", "checkpoint", "experiment", "predict", "init_from",
}
FRAMEWORK_KEYS = ("run_dir", "run_name", "ckpt_path", "seed", "init_from")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _framework_override(override: str) -> str:
    """``key=value`` → ``++key=value``; a path with ``=`` in it (Lightning's ``epoch=0-step=2000.ckpt``) is quoted."""
    key, _, value = override.partition("=")
    if key in ("ckpt_path", "run_dir") and "=" in value and value[:1] not in ("'", '"') and "'" not in value:
        value = f"'{value}'"
    return f"++{key}={value}"


def compose(config_file: str | Path, overrides: list[str], top_level_keys: set[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Compose ``config_file`` + overrides; returns (config without the hydra node, chosen group options).

    ``top_level_keys``: the keys the file may have (default: a training config's, ``TOP_LEVEL_KEYS``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    path = Path(config_file).expanduser().resolve()
    if not path.is_file():
        raise CliError(f"--config: file not found: {path}")
    # framework keys may be set whether or not the primary config declares them
    overrides = [_framework_override(o) if o.split("=", 1)[0] in FRAMEWORK_KEYS else o for o in overrides]
    search = [f"file://{BUILTIN_CONFIGS}"] if BUILTIN_CONFIGS.is_dir() and BUILTIN_CONFIGS != path.parent else []
    extra = [f"hydra.searchpath=[{','.join(search)}]"] if search else []
    def _compose(ovs: list[str]) -> Any:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
            return hydra_compose(config_name=path.stem, overrides=list(ovs) + extra, return_hydra_config=True)

    try:
        cfg = _compose(overrides)
    except Exception as e:  # our own one line, in the style of the YAML-typo messages (no Hydra internals)
        raise CliError(_composition_message(e, path, overrides, _compose)) from None
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    accepted = TOP_LEVEL_KEYS if top_level_keys is None else set(top_level_keys)
    unknown = [k for k in cfg.keys() if k not in accepted]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), sorted(accepted), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CliError(f"{path}: unknown top-level key '{unknown[0]}'{hint}; accepted: {', '.join(sorted(accepted))}")
    return cfg, choices


def _clean_hydra_text(text: str) -> str:
    """Hydra/OmegaConf text without their internals: no ``full_key:``/``object_type=`` lines, no config search path."""
    import re

    text = str(text).split("Config search path:")[0]
    text = re.sub(r"^\s*(full_key|object_type|reference_type)\s*[:=].*$", "", text, flags=re.M)
    text = re.sub(r"^\s*See https://hydra\.cc\S* for details\s*$", "", text, flags=re.M)
    return " ".join(text.split())


def hydra_message(e: BaseException) -> str:
    msg = _clean_hydra_text(str(e))
    cause = e.__cause__ or e.__context__
    cause_msg = _clean_hydra_text(str(cause)) if cause is not None else ""
    if cause_msg and cause_msg not in msg:
        msg = f"{msg}: {cause_msg}"
    return msg


def _config_dirs(path: Path) -> list[Path]:
    """The directories Hydra searches for config groups: the primary file's, then the built-in ``configs/``."""
    dirs = [path.parent]
    if BUILTIN_CONFIGS.is_dir() and BUILTIN_CONFIGS != path.parent:
        dirs.append(BUILTIN_CONFIGS)
    return dirs


def _config_groups(dirs: list[Path]) -> list[str]:
    """Group names (``data``, ``model/backbone``, ...): folders one or two levels down that hold YAML files."""
    groups = set()
    for d in dirs:
        for f in [*d.glob("*/*.yaml"), *d.glob("*/*/*.yaml")]:
            groups.add(f.parent.relative_to(d).as_posix())
    return sorted(groups)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def unknown_key_message(base: dict[str, Any], key: str, value: str) -> str | None:
    """Why the dotted ``key`` is not in ``base`` (the config composed without the override), or None if it is."""
    from cosmos_lit.registry import suggest

    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not isinstance(node, dict):
            return f"'{prefix}' holds a value ({node!r}), not a mapping with keys"
        if part not in node:
            keys = sorted(str(k) for k in node)
            if i == 0:
                return f"unknown top-level key '{part}'{suggest(part, keys)}; accepted: {', '.join(keys)}"
            return (f"unknown key '{part}' in {prefix}{suggest(part, keys)}; accepted: {', '.join(keys) or '(none)'}; "
                    f"a key the config does not have needs a '+': +{key}={value}")
        node = node[part]
    return None


def _composition_message(e: BaseException, path: Path, overrides: list[str], compose_fn: Any) -> str:
    """One line for a failed composition: the override (or defaults entry), what is wrong, the closest accepted
    spelling and what is accepted there (the keys at that level, or the options of that config group)."""
    import re

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf import OmegaConf

    from cosmos_lit.registry import suggest

    dirs = _config_dirs(path)
    if isinstance(e, OverrideParseException):
        first = (str(e.message).strip().splitlines() or [""])[0]
        return (f"override '{e.override}': not valid override syntax ({first}); "
                "see https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(e, MissingConfigException):
        group, _, option = str(e.missing_cfg_file or "").rpartition("/")
        ov = next((o for o in overrides if _override_key(o) == group and o.partition("=")[2] == option), None)
        m = re.match(r"In '([^']+)'", str(e))
        where = f"override '{ov}'" if ov else (
            f"{path} defaults" if not m or m.group(1) == path.stem else f"{path}: defaults of '{m.group(1)}'")
        if not group:
            configs = sorted({f.stem for d in dirs for f in d.glob("*.yaml")})
            return f"{where}: config '{option}' not found{suggest(option, configs)}; available: {', '.join(configs)}"
        if e.options:
            return (f"{where}: unknown {group} option '{option}'{suggest(option, list(e.options))}; "
                    f"available: {', '.join(e.options)}")
        groups = _config_groups(dirs)
        return f"{where}: unknown config group '{group}'{suggest(group, groups)}; groups: {', '.join(groups)}"
    m = re.match(r"Could not override '([^']+)'", str(e))
    if m:
        key = m.group(1)
        ov = next((o for o in overrides if _override_key(o) == key), f"{key}=...")
        value = ov.partition("=")[2]
        if "No match in the defaults list" in str(e):
            return (f"override '{ov}': config group '{key}' is not in the defaults list of {path.name}; "
                    f"add it with +{key}={value}")
        if "/" in key:
            groups = _config_groups(dirs)
            return f"override '{ov}': unknown config group '{key}'{suggest(key, groups)}; groups: {', '.join(groups)}"
        if key.startswith("trainer.") and key.count(".") == 1:
            import inspect

            import lightning as L

            if key.split(".")[1] in inspect.signature(L.Trainer).parameters:
                return (f"override '{ov}': {key} is a Trainer argument the config does not set; "
                        f"add it with +{key}={value}")
        others = [o for o in overrides if o is not ov]
        # the config without the failing override: what the key could have been (group choices change the keys)
        for attempt in (others, [o for o in others if "." not in _override_key(o)], []):
            try:
                base = compose_fn(attempt)
            except Exception:
                continue
            plain = OmegaConf.to_container(base, resolve=False)
            plain.pop("hydra", None)
            text = unknown_key_message(plain, key, value)
            if text:
                return f"override '{ov}': {text}"
            break
    m = re.match(r"Could not append to config\. An item is already at '([^']+)'", str(e))
    if m:
        ov = next((o for o in overrides if _override_key(o) == m.group(1)), f"+{m.group(1)}=...")
        return (f"override '{ov}': {m.group(1)} is already in the config; drop the '+' to change it "
                f"({ov.lstrip('+')})")
    m = re.match(r"Could not delete from config\. '([^']+)' does not exist", str(e))
    if m:
        ov = next((o for o in overrides if _override_key(o) == m.group(1)), f"~{m.group(1)}")
        return f"override '{ov}': nothing to delete, {m.group(1)} is not in the config"
    return hydra_message(e)


def resolve(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as e:
        raise CliError(f"config interpolation failed: {hydra_message(e)}") from None
