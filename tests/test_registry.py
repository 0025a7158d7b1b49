import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cosmos_lit.registry import (
    REGISTRIES,
    ConfigError,
    Registry,
    build,
    describe,
    package_modules,
    register,
    registry,
    summary,
)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"model.backbone.name: unknown backbone 'cosmos_predict2_tinny' \(did you mean 'cosmos_predict2_tiny'\?\)"):
        build({"name": "cosmos_predict2_tinny"}, "backbone", path="model.backbone")


def test_unknown_key_names_the_path_and_suggests():
    with pytest.raises(ConfigError, match=r"model.backbone.num_layer: unknown key .*did you mean 'num_layers'"):
        build({"name": "cosmos_predict2_tiny", "num_layer": 2}, "backbone", path="model.backbone")


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"eval.env: missing required key"):
        build({"name": "sim_eval"}, "callback", path="eval")


def test_target_escape_hatch_and_runtime_kwargs():
    obj = build({"_target_": "lightning.pytorch.callbacks.EarlyStopping", "patience": 7}, "callback", monitor="val/loss")
    assert obj.patience == 7 and obj.monitor == "val/loss"
    with pytest.raises(ConfigError, match=r"callback.patiense: unknown key .*did you mean 'patience'"):
        build({"_target_": "lightning.pytorch.callbacks.EarlyStopping", "patiense": 7}, "callback", monitor="x")
    with pytest.raises(ConfigError, match="cannot import"):
        build({"_target_": "no.such.Thing"}, "callback")


def test_register_and_duplicate_protection():
    @register("planner", "test_dummy_planner")
    class Dummy:
        def __init__(self, k: int = 1):
            self.k = k

    assert build({"name": "test_dummy_planner", "k": 3}, "planner").k == 3
    with pytest.raises(ValueError, match="already registered"):
        register("planner", "test_dummy_planner")(type("Other", (), {}))


def test_every_kind_lists_builtins():
    assert "cosmos_predict2_2b" in registry("backbone").names()
    assert {"wan2.1", "wan2.1_tiny"} <= set(registry("image_encoder").names())
    assert {"none", "best_of_n"} <= set(registry("planner").names())
    assert "cosmos_policy" in registry("task").names()
    with pytest.raises(ConfigError, match="unknown component kind"):
        registry("backbones")


def test_list_command_prints_registered_names():
    out = subprocess.run([sys.executable, "-m", "cosmos_lit", "list", "backbone"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cosmos_predict2_2b" in out.stdout and "cosmos_predict2_tiny" in out.stdout


def test_keys_forwarded_through_kwargs_are_checked_against_the_base_signature():
    class Base:
        def __init__(self, alpha: int = 1, beta: int = 2):
            self.alpha, self.beta = alpha, beta

    class Child(Base):
        def __init__(self, gamma: int = 3, **kwargs):
            super().__init__(**kwargs)
            self.gamma = gamma

    register("planner", "test_child_with_kwargs")(Child)
    obj = build({"name": "test_child_with_kwargs", "gamma": 4, "beta": 5}, "planner")
    assert (obj.alpha, obj.beta, obj.gamma) == (1, 5, 4)
    with pytest.raises(ConfigError, match=r"planner.betta: unknown key .*did you mean 'beta'"):
        build({"name": "test_child_with_kwargs", "betta": 5}, "planner")
    with pytest.raises(ConfigError, match=r"data.stide: unknown key .*did you mean 'stride'"):
        build({"name": "libero", "stide": 2}, "datamodule", path="data")


# -- discovery ------------------------------------------------------------------------------------------------------
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_a_module_dropped_into_a_discovered_package_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "cl_test_plugins"
    _write(pkg / "__init__.py", "")
    _write(pkg / "widgets.py", '''
        from cosmos_lit.registry import register

        @register("test_widget", "flat")
        class Flat:
            """A widget in a plain module."""
    ''')
    _write(pkg / "sub" / "__init__.py", "")
    _write(pkg / "sub" / "deep.py", '''
        from cosmos_lit.registry import register

        @register("test_widget", "deep")
        def make_deep():
            """A factory in a subpackage."""
    ''')
    _write(pkg / "__main__.py", "raise SystemExit('a command line is never imported by discovery')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRIES, "test_widget", Registry("test_widget", ["cl_test_plugins", "cl_no_such_package"]))
    for name in [m for m in sys.modules if m.startswith("cl_test_plugins")]:
        monkeypatch.delitem(sys.modules, name)
    assert list(package_modules("cl_test_plugins")) == [
        "cl_test_plugins", "cl_test_plugins.sub", "cl_test_plugins.sub.deep", "cl_test_plugins.widgets"
    ]
    assert registry("test_widget").names() == ["deep", "flat"]  # the missing package is skipped
    assert list(package_modules("cosmos_lit.text")) == ["cosmos_lit.text"]  # a plain module is imported as is


def test_a_module_with_a_missing_dependency_is_an_error(tmp_path, monkeypatch):
    _write(tmp_path / "cl_test_broken" / "__init__.py", "")
    _write(tmp_path / "cl_test_broken" / "needs_sim.py", "import cl_no_such_simulator\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRIES, "test_broken", Registry("test_broken", ["cl_test_broken"]))
    for _ in range(2):  # and again on the next lookup, not a silently partial registry
        with pytest.raises(ModuleNotFoundError, match="cl_no_such_simulator"):
            registry("test_broken").names()


def _source_modules():
    """(module name, source) of every .py file of the installed cosmos_lit packages, read from disk."""
    roots = {"cosmos_lit": None, "cosmos_lit.datamodules": None, "cosmos_lit.callbacks": None, "cosmos_lit.tasks": None}
    for name in roots:
        roots[name] = Path(importlib.util.find_spec(name).submodule_search_locations[0])
    for root_name, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" in parts or parts[-1:] == ["__main__"]:
                continue
            yield ".".join([root_name, *parts]), path.read_text(encoding="utf-8")


def test_every_register_call_lives_in_a_package_its_kind_discovers():
    decorator = re.compile(r"""^@register\(\s*["'](\w+)["']""", re.M)
    found = []
    for module, source in _source_modules():
        for kind in decorator.findall(source):
            found.append(kind)
            packages = REGISTRIES[kind].packages
            assert any(module == p or module.startswith(p + ".") for p in packages), (
                f"{module} registers a {kind} but the {kind} registry discovers only {packages}: add its package there"
            )
    assert {"backbone", "datamodule", "env", "task"} <= set(found)


def test_every_module_of_the_discovered_packages_is_imported():
    for kind in REGISTRIES:
        registry(kind).names()
    missing = []
    for module, _ in _source_modules():
        if any(module == p or module.startswith(p + ".") for reg in REGISTRIES.values() for p in reg.packages):
            missing += [] if module in sys.modules else [module]
    assert not missing


def test_discovery_needs_no_simulator_and_envs_need_no_torch():
    """Importing every module of every kind works with the simulators hidden; the env modules import no torch (they
    run in simulator venvs without it)."""
    code = textwrap.dedent('''
        import sys
        BLOCKED = ("mujoco", "dm_control", "gym_aloha", "gymnasium", "robosuite", "robocasa", "libero", "decord")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked optional package {name}")

        sys.meta_path.insert(0, Block())
        from cosmos_lit.registry import package_modules, registry
        import importlib
        for module in package_modules("cosmos_lit.envs"):
            importlib.import_module(module)
        assert "torch" not in sys.modules, "an env module imports torch"
        from cosmos_lit.registry import REGISTRIES
        for kind in REGISTRIES:
            registry(kind).names()
        print(sorted(registry("env").names()))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"aloha_sim", "debug", "libero", "robosuite", "robocasa"} <= set(eval(out.stdout.strip().splitlines()[-1]))


# -- list summaries -------------------------------------------------------------------------------------------------
def test_summary_is_the_whole_first_paragraph_unwrapped():
    class Wrapped:
        """LIBERO demonstrations (original or Cosmos-regenerated
        HDF5) plus optional rollout files. A second sentence,
           still the first paragraph.

        Args:
            x: not part of the summary.
        """

    assert summary(Wrapped) == (
        "LIBERO demonstrations (original or Cosmos-regenerated HDF5) plus optional rollout files. A second sentence, "
        "still the first paragraph."
    )
    assert summary(type("NoDoc", (), {"__doc__": None})) == ""


def test_describe_gives_whole_sentences():
    rows = describe()
    assert {k for k, _, _ in rows} == set(REGISTRIES)
    for kind, name, text in rows:
        obj = registry(kind).get(name)
        paragraph = (inspect.getdoc(obj) or "").split("\n\n")[0]
        assert text == " ".join(paragraph.split()), (kind, name)
        assert "\n" not in text
    libero = dict(((k, n), t) for k, n, t in rows)[("datamodule", "libero")]
    assert libero == "LIBERO demonstrations (original or Cosmos-regenerated HDF5) plus optional rollout files."


def test_list_prints_brackets_in_summaries_as_text(monkeypatch, capsys):
    import cosmos_lit.registry as reg
    from cosmos_lit.cli import list_registered

    monkeypatch.setattr(reg, "describe", lambda kind=None: [("datamodule", "x", "cameras [wrist, primary] (slot order).")])
    list_registered(None)
    assert "cameras [wrist, primary] (slot order)." in capsys.readouterr().out
