import subprocess
import sys

import pytest

from cosmos_lit.registry import ConfigError, build, register, registry


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
