"""Parameter-efficient post-training (``model/adapter=lora``, ``cosmos_lit.models.adapters``): what trains, what
stays bit-identical, merging for inference, checkpoints, ``init_from``, the CLI, and one-line errors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):  # CI installs the lora extra: there it must import
    pytest.importorskip("peft", reason="the lora extra is not installed (pip install 'cosmos-lit[lora]')")

from cosmos_lit.checkpoint import load_model, load_task, start_from  # noqa: E402
from cosmos_lit.models.adapters import adapter_parameter_names, merge_adapters  # noqa: E402
from cosmos_lit.policy import CosmosPolicy  # noqa: E402
from cosmos_lit.registry import ConfigError, build  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TINY_NODES, TINY_SPEC, TINY_STATS, one_line, tiny_obs, tiny_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LORA = {"name": "lora", "rank": 4}


def lora_task(adapter: dict | None = None, spec: dict | None = None, statistics: dict | None = None, **task_options):
    torch.manual_seed(0)
    model = {**copy.deepcopy(TINY_NODES), "sampling": {"num_steps": 2}, "adapter": dict(adapter or LORA)}
    return build({"name": "cosmos_policy", **task_options}, "task", model=model,
                 spec=dict(spec or TINY_SPEC.to_dict()), statistics=copy.deepcopy(statistics or TINY_STATS)).eval()


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero B matrices (a fresh adapter is B = 0, the identity), as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def backbone_inputs(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c, h, w = model.frame_shape
    t = model.layout.num_frames
    x = torch.randn(2, c, t, h, w, generator=gen)
    mask = torch.zeros(2, t)
    mask[:, :2] = 1
    return x, torch.rand(2, t, generator=gen) * (1 - mask), mask, torch.randn(2, 5, model.backbone.text_dim, generator=gen)


def linear_names(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if type(m) is torch.nn.Linear]


# ---------------------------------------------------------------------------------------------------- what trains


def test_only_the_adapters_require_grad():
    task = lora_task()
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == adapter_parameter_names(task.model)
    # attention (self + cross: q, k, v, out) and MLP (2) in each of the 2 blocks: 20 layers, A and B each
    assert len(trainable) == 2 * 2 * 10 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    frozen = sum(p.numel() for p in task.model.parameters() if not p.requires_grad)
    assert 0 < sum(p.numel() for p in task.model.parameters() if p.requires_grad) < frozen / 10
    # what the optimizer gets
    assert {id(p) for g in task.configure_optimizers()["optimizer"].param_groups for p in g["params"]} == \
        {id(p) for n, p in task.model.named_parameters() if n in trainable}


def test_targets_and_declared_extras():
    task = lora_task({"name": "lora", "targets": ["self_attention"], "target_modules": [r"ff\.net\.2"],
                      "trainable": ["backbone.net.proj_out"]})
    trainable = sorted(n for n, p in task.model.named_parameters() if p.requires_grad)
    layers = sorted({n.split(".lora_")[0] for n in trainable if ".lora_" in n})
    assert layers == [f"backbone.net.transformer_blocks.{b}.{m}" for b in range(2)
                      for m in ("attn1.to_k", "attn1.to_out.0", "attn1.to_q", "attn1.to_v", "ff.net.2")]
    assert [n for n in trainable if ".lora_" not in n] == ["backbone.net.proj_out.weight"]  # the DiT has no biases


def _aloha_dir(root: Path) -> Path:
    """Three 20-step ACT-format episodes with one 32 px camera."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        with h5py.File(root / f"episode_{i}.hdf5", "w") as f:
            f.attrs["sim"] = True
            f.create_dataset("observations/qpos", data=rng.uniform(-1, 1, (20, 14)).astype(np.float32))
            f.create_dataset("observations/images/top", data=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
            f.create_dataset("action", data=rng.uniform(-1, 1, (20, 14)).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def aloha_data(tmp_path_factory):
    return _aloha_dir(tmp_path_factory.mktemp("lora") / "episodes")


def _fit(task, dm, steps: int) -> None:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)


def _datamodule(data_dir: Path):
    from helpers import make_datamodule

    dm = make_datamodule("aloha", data_dir, image_size=32, cameras=["top"], chunk_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")  # the frozen VAE, as the CLI says
def test_training_changes_only_the_adapters(aloha_data):
    dm = _datamodule(aloha_data)
    task = lora_task(spec=dm.spec.to_dict(), statistics=dm.statistics, ema_decay=0.5,
                     optim={"lr": 1e-2, "warmup_steps": 0, "decay_steps": 10})
    before = {k: v.clone() for k, v in task.state_dict().items()}
    adapters = {f"model.{n}" for n in adapter_parameter_names(task.model)}
    _fit(task.train(), dm, steps=3)
    after = task.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    ema_adapters = {f"backbone_ema.module.{n}" for n in adapter_parameter_names(task.backbone_ema.module)}
    assert changed <= adapters | ema_adapters, sorted(changed - adapters - ema_adapters)[:5]
    assert {k for k in changed if k in adapters and ".lora_B." in k}  # B left zero: the adapters learned
    assert changed & ema_adapters  # the EMA follows the adapters; its base weights stay the frozen ones


# ---------------------------------------------------------------------------------------------------- merging


def test_merge_gives_plain_linear_layers_and_the_same_output():
    task = lora_task()
    randomize_adapters(task.model)
    model = task.model
    inputs = backbone_inputs(model)
    images = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        unmerged = model.backbone(*inputs)
        pred = model.predict(images, torch.zeros(2, 4), ["a", "b"], seed=[1, 2])
    plain = tiny_task().model  # the same architecture without an adapter
    assert merge_adapters(model) == 20 and model.adapter is None
    assert linear_names(model.backbone) == linear_names(plain.backbone)  # plain nn.Linear, same places
    assert model.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        merged = model.backbone(*inputs)
        again = model.predict(images, torch.zeros(2, 4), ["a", "b"], seed=[1, 2])
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(again["actions"], pred["actions"], atol=1e-5, rtol=0)
    assert merge_adapters(model) == 0  # nothing left
    plain.load_state_dict(model.state_dict())  # strict: merged weights fit the model built without the adapter


# ---------------------------------------------------------------------------------------------------- checkpoints


def _save(task, path: Path) -> Path:
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    return path


def test_lora_checkpoint_loads_merged_through_load_model_and_acts(tmp_path):
    task = lora_task(ema_decay=0.9)
    randomize_adapters(task.model, seed=1)
    randomize_adapters(task.backbone_ema.module, seed=2)  # the EMA's adapters differ from the trained ones
    path = _save(task, tmp_path / "lora.ckpt")
    assert isinstance(torch.load(path, weights_only=True), dict)

    restored = load_task(path)  # training / validation: the adapters stay separate
    assert restored.state_dict().keys() == task.state_dict().keys()
    assert restored.model.adapter == task.model.adapter
    model = load_model(path)  # inference: merged, plain layers
    assert model.adapter is None and not adapter_parameter_names(model)
    assert linear_names(model.backbone) == linear_names(tiny_task().model.backbone)

    obs = [tiny_obs(3), tiny_obs(4)]
    expected = CosmosPolicy(task.inference_model)(obs)["actions"]  # the EMA backbone, adapters unmerged
    np.testing.assert_allclose(CosmosPolicy(model)(obs)["actions"], expected, atol=1e-5)
    np.testing.assert_allclose(CosmosPolicy.from_checkpoint(str(path))(obs)["actions"], expected, atol=1e-5)
    trained = CosmosPolicy(task.model)(obs)["actions"]
    np.testing.assert_allclose(CosmosPolicy(load_model(path, use_ema=False))(obs)["actions"], trained, atol=1e-5)
    assert not np.allclose(trained, expected, atol=1e-4)


def test_init_from_plain_weights_into_a_lora_run_and_back():
    """``init_from``: a full fine-tuning checkpoint starts a LoRA run (base weights loaded, fresh adapters: the same
    function), and a LoRA run's deployed (merged) model starts a full fine-tuning run."""
    base = tiny_task(ema_decay=0.9)
    with torch.no_grad():
        for p in base.model.backbone.parameters():
            p.add_(0.01)
    task = lora_task(ema_decay=0.9)
    start_from(task, base.model, "base.ckpt")
    inputs = backbone_inputs(task.model)
    with torch.no_grad():
        want = base.model.backbone(*inputs)
        torch.testing.assert_close(task.model.backbone(*inputs), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(task.backbone_ema.module(*inputs), want, atol=1e-6, rtol=0)
    assert {n for n, p in task.model.named_parameters() if p.requires_grad} == adapter_parameter_names(task.model)

    randomize_adapters(task.model)
    with torch.no_grad():
        lora_out = task.model.backbone(*inputs)
    deployed = copy.deepcopy(task.model)
    merge_adapters(deployed)
    full = tiny_task()
    start_from(full, deployed, "lora.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(full.model.backbone(*inputs), lora_out, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("adapter, expected", [
    ({"target_modules": ["to_qq"]},
     r"model\.adapter\.target_modules: pattern 'to_qq' matches no nn\.Linear of the backbone; Linear layers there "
     r"include: .*net\.transformer_blocks\.0\.attn1\.to_q"),
    ({"target_modules": ["attn1"]}, r"'attn1' matches only modules that are not nn\.Linear \(net\.transformer_blocks\.0\.attn1 \(Attention\)"),
    ({"target_modules": ["(to_q"]}, r"model\.adapter\.target_modules: '\(to_q' is not a regular expression"),
    ({"targets": ["attn"]}, r"model\.adapter\.targets: unknown target 'attn' \(did you mean 'attention'\?\); accepted: "),
    ({"targets": [], "target_modules": []}, r"model\.adapter: no layers to adapt"),
    ({"trainable": ["value_head"]}, r"model\.adapter\.trainable: pattern 'value_head' matches no parameter of the model \(nor a module that "
                                  r"holds one\); modules with parameters include: image_encoder"),
    ({"rank": 0}, r"model\.adapter\.rank: expected an integer >= 1, got 0"),
    ({"dropout": 1.5}, r"model\.adapter\.dropout: expected a number in \[0, 1\)"),
    ({"rnak": 4}, r"model\.adapter.*rnak.*did you mean 'rank'"),
    ({"name": "lorra"}, r"model\.adapter\.name: unknown adapter 'lorra' \(did you mean 'lora'\?\); accepted: none, lora"),
])
def test_bad_adapter_settings_are_one_line(adapter, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        lora_task({**LORA, **adapter})
    one_line(e)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_fit_with_lora_end_to_end(tmp_path):
    data = _aloha_dir(tmp_path / "episodes")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cosmos_lit", "fit", "--config", str(ROOT / "configs" / "aloha_sim.yaml"),
         "model/adapter=lora", "model.adapter.rank=4", "data=aloha", f"data.data_dir={data}", "data.cameras=[top]",
         "data.image_size=32", "data.chunk_size=8", "data.batch_size=2", "data.num_workers=0", "data.val_fraction=0",
         "data.augment=false", "eval=none", "logger=none", "trainer.max_steps=3", "trainer.val_check_interval=3",
         "trainer.limit_val_batches=0", f"run_dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["hyper_parameters"]["model"]["adapter"] == {
        "name": "lora", "targets": ["attention", "mlp"], "target_modules": [], "rank": 4, "alpha": None,
        "dropout": 0.0, "trainable": []}
    assert any(".lora_B.default." in k for k in state["state_dict"])
    model = load_model(ckpt)
    assert model.adapter is None and not adapter_parameter_names(model)
    obs = {"images": {"top": np.zeros((32, 32, 3), np.uint8)}, "proprio": np.zeros(14, np.float32),
           "instruction": "transfer the cube"}
    assert CosmosPolicy(model)([obs])["actions"].shape == (1, 8, 14)
