"""Name -> class registries, one per component kind, and signature-checked ``build()``.

A config node names its class with ``name:``; every other key is bound to the constructor's signature::

    backbone:
      name: cosmos_predict2_tiny
      num_layers: 2

``build(node, "backbone", path="model.backbone")`` looks ``cosmos_predict2_tiny`` up in the backbone registry and
calls it with ``num_layers=2`` plus any runtime keyword arguments (shapes derived from the data spec, say).
An unknown name, an unknown key or a missing required argument stops with one line that gives the node path,
the bad key and the closest accepted spelling.

Built-in components are discovered lazily: each kind names the packages where its built-ins live, and the first
lookup imports every module of those packages (subpackages included), whose ``@register(...)`` decorators then run.
A new module dropped into such a package is found without editing this file; importing a module must therefore stay
cheap and must not need an optional simulator (import those inside the functions that use them). Third-party
packages register through the ``cosmos_lit.plugins`` entry-point group, whose targets are imported on the first
lookup as well.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

ENTRY_POINT_GROUP = "cosmos_lit.plugins"


class ConfigError(ValueError):
    """Bad configuration: the message is one line naming the node path, the key or value, and what was expected."""


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def package_modules(package: str) -> Iterator[str]:
    """``package`` and every module below it (a plain module yields only itself), in name order, importing each
    package to list its folder. Yields nothing when ``package`` itself does not exist (an optional package)."""
    try:
        pkg = importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name != package:  # a dependency of an existing module is missing: that is a real error
            raise
        return
    yield package
    for info in sorted(pkgutil.iter_modules(getattr(pkg, "__path__", [])), key=lambda i: i.name):
        if info.name == "__main__":  # a command line, not a component module
            continue
        yield from package_modules(f"{package}.{info.name}") if info.ispkg else [f"{package}.{info.name}"]


class Registry:
    """Names to classes (or factory functions) for one component kind.

    Args:
        kind: the component kind, e.g. ``"backbone"``.
        packages: dotted names of the packages (or plain modules) whose modules define the built-ins of this kind;
            all their modules are imported on the first lookup.
    """

    def __init__(self, kind: str, packages: Sequence[str]):
        self.kind = kind
        self.packages = list(packages)
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(obj, "__name__")
            existing = self._entries.get(key)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise ValueError(f"{self.kind} '{key}' is already registered by {_qualname(existing)}")
            self._entries[key] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a discovered module that looks this kind up must not recurse
        try:
            for package in self.packages:
                for module in package_modules(package):
                    importlib.import_module(module)
        except BaseException:
            self._loaded = False  # the next lookup raises the same error instead of answering from a partial list
            raise
        load_plugins()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str, path: str = "") -> Callable[..., Any]:
        self._load()
        if name not in self._entries:
            where = f"{path}.name" if path else "name"
            raise ConfigError(
                f"{where}: unknown {self.kind} '{name}'{suggest(name, list(self._entries))}; "
                f"registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        self._load()
        return sorted(self._entries.items())


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


_plugins_loaded = False


def load_plugins() -> None:
    """Import every module named in the ``cosmos_lit.plugins`` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


# Where the built-ins of each kind live. cosmos_lit.datamodules, .callbacks and .tasks map to the top-level
# folders datamodules/, callbacks/ and tasks/ (pyproject.toml, package-dir).
_MODELS = ["cosmos_lit.models"]
REGISTRIES: dict[str, Registry] = {
    "backbone": Registry("backbone", _MODELS),
    "image_encoder": Registry("image_encoder", _MODELS),
    "vector_encoder": Registry("vector_encoder", _MODELS),
    "value_head": Registry("value_head", _MODELS),
    "text_encoder": Registry("text_encoder", ["cosmos_lit.text"]),
    "planner": Registry("planner", _MODELS),
    "datamodule": Registry("datamodule", ["cosmos_lit.datamodules"]),
    "env": Registry("env", ["cosmos_lit.envs"]),
    "callback": Registry("callback", ["cosmos_lit.callbacks"]),
    "task": Registry("task", ["cosmos_lit.tasks"]),
}


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise ConfigError(f"unknown component kind '{kind}'{suggest(kind, list(REGISTRIES))}; kinds: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def register(kind: str, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register("datamodule", "my_robot")`` adds a class to the named registry."""
    return registry(kind).register(name)


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(node, Mapping):
        return dict(node)
    raise ConfigError(f"expected a mapping with a 'name' key, got {type(node).__name__}: {node!r}")


def _has_var_kw(params: Mapping[str, inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def bind_kwargs(target: Callable[..., Any], kwargs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``target``'s signature; return them unchanged or raise one clear ConfigError."""
    params = dict(inspect.signature(target).parameters)
    accepts_var_kw = _has_var_kw(params)
    if accepts_var_kw and inspect.isclass(target):
        # A subclass that forwards **kwargs to its base: the accepted keys are the union along the MRO.
        for base in target.__mro__[1:]:
            if base is object or "__init__" not in vars(base):
                continue
            base_params = inspect.signature(base.__init__).parameters
            for n, p in base_params.items():
                if n != "self" and n not in params:
                    params[n] = p
            if not _has_var_kw(base_params):
                accepts_var_kw = False
                break
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    if not accepts_var_kw:
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"{path}.{key}: unknown key for {getattr(target, '__name__', target)}{suggest(key, accepted)}; "
                    f"accepted: {', '.join(accepted)}"
                )
    for n in accepted:
        p = params[n]
        if p.default is inspect.Parameter.empty and n not in kwargs:
            raise ConfigError(f"{path}.{n}: missing required key for {getattr(target, '__name__', target)}")
    return dict(kwargs)


def build(node: Any, kind: str, path: str | None = None, **runtime: Any) -> Any:
    """Build the component a config node describes.

    Args:
        node: mapping with ``name`` (a registered name) or ``_target_`` (a dotted import path) plus constructor keys.
        kind: registry kind, e.g. ``"backbone"``.
        path: dotted config path used in error messages (defaults to ``kind``).
        runtime: keyword arguments supplied by code (shapes from the data spec); config keys win on conflict
            only if the constructor does not already receive them from code.
    """
    path = path or kind
    cfg = _plain(node)
    if "_target_" in cfg:
        target_path = cfg.pop("_target_")
        module_name, _, attr = str(target_path).rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{path}._target_: cannot import '{target_path}': {e}") from None
    else:
        if "name" not in cfg:
            raise ConfigError(f"{path}: missing 'name' (one of: {', '.join(registry(kind).names())})")
        target = registry(kind).get(str(cfg.pop("name")), path)
    kwargs = {**cfg, **runtime}
    bind_kwargs(target, kwargs, path)
    return target(**kwargs)


def summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring as one line (wrapped lines joined); "" without a docstring."""
    doc = inspect.getdoc(obj) or ""
    first = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return " ".join(first.split())


def describe(kind: str | None = None) -> list[tuple[str, str, str]]:
    """Rows (kind, name, summary) for ``python -m cosmos_lit list``; the summary is the docstring's first
    paragraph, whole and unwrapped."""
    return [(k, name, summary(obj)) for k in ([kind] if kind else list(REGISTRIES)) for name, obj in registry(k).items()]
