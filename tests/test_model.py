"""The model alone, without a training task: ``CosmosPolicyModel``'s predictions, latent layout, views and config
errors, and the planners and the policy object working from the model object only."""

import copy
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cosmos_lit.diffusion import network_evaluations
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.policy import CosmosPolicy
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.spec import DataSpec

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TINY_NODES as NODES  # noqa: E402
from helpers import TINY_SPEC as SPEC  # noqa: E402
from helpers import TINY_STATS as STATS  # noqa: E402
from helpers import one_line  # noqa: E402

INSTRUCTIONS = ["stack the blocks", "open the drawer"]


def _model(seed: int = 0, spec: DataSpec = SPEC, **options) -> CosmosPolicyModel:
    torch.manual_seed(seed)
    options.setdefault("sampling", {"num_steps": 2})
    return CosmosPolicyModel(dict(NODES), spec, STATS, **options).eval()


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(b, 2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(b, 4, generator=g) * 2 - 1


class _Calls:
    """Counts the backbone's forward calls (one per denoising step) while the ``with`` block runs."""

    def __init__(self, model: CosmosPolicyModel):
        self.backbone, self.n = model.backbone, 0

    def __enter__(self) -> "_Calls":
        self._hook = self.backbone.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()


def _simple_attributes(planner) -> dict:
    return copy.deepcopy({k: v for k, v in vars(planner).items()
                          if isinstance(v, (bool, int, float, str, list, tuple, type(None)))})


# ---------------------------------------------------------------------------------------------------- predictions


def test_predict_shapes_and_the_conditioning_frames_come_back_as_given():
    model = _model()
    lay = model.layout
    assert lay.num_frames == 9 and model.frame_shape == (16, 4, 4)  # blank, s (3), a, s' (3), value
    images, proprio = _inputs()
    out = model.predict(images, proprio, INSTRUCTIONS, seed=0)
    assert out["actions"].shape == (2, 8, 3) and out["future_proprio"].shape == (2, 4)
    assert out["value_raw"].shape == (2,) and out["value"].shape == (2,)
    assert ((out["value"] >= 0) & (out["value"] <= 1)).all()
    assert out["latents"].shape == (2, 16, 9, 4, 4)
    cond, mask = model.policy_condition(images, proprio)
    assert torch.equal(mask, model.condition_mask(POLICY, 2))
    prefix = lay.num_condition_frames
    assert torch.equal(out["latents"][:, :, :prefix], cond[:, :, :prefix])  # the observation is not resampled
    read_back = model.vector_encoder.read(out["latents"][:, :, lay.current_proprio], (4,))
    assert torch.allclose(read_back, proprio, atol=1e-5)
    # the world model and the value function sample from the policy's latents
    assert model.imagine(out["latents"], INSTRUCTIONS, num_steps=1, seed=1).shape == out["latents"].shape
    v = model.value(out["latents"], INSTRUCTIONS, num_steps=1, seed=2)
    assert v.shape == (2,) and ((v >= 0) & (v <= 1)).all()
    assert model.decode_future_images(out["latents"]).shape == (2, 2, 32, 32, 3)


def test_seeded_predictions_are_deterministic_and_num_steps_defaults_to_sampling():
    model = _model()
    images, proprio = _inputs()
    a = model.predict(images, proprio, INSTRUCTIONS, seed=3)
    b = model.predict(images, proprio, INSTRUCTIONS, seed=3)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.allclose(model.predict(images, proprio, INSTRUCTIONS, seed=4)["actions"], a["actions"])
    assert torch.equal(model.predict(images, proprio, INSTRUCTIONS, num_steps=2, seed=3)["latents"], a["latents"])
    with _Calls(model) as calls:
        model.predict(images, proprio, INSTRUCTIONS, seed=3)
    assert model.sampling.num_steps == 2 and calls.n == 1  # 2 steps: the official single-evaluation case
    with _Calls(model) as calls:
        model.predict(images, proprio, INSTRUCTIONS, num_steps=3, seed=3)
    assert calls.n == 3
    again = _model()  # same seed, same config: the same weights and samples
    assert torch.equal(again.predict(images, proprio, INSTRUCTIONS, seed=3)["actions"], a["actions"])


def test_inject_then_read_outputs_round_trips_the_vectors():
    model = _model()
    lay = model.layout
    images, proprio = _inputs()
    g = torch.Generator().manual_seed(2)
    actions = torch.rand(2, 8, 3, generator=g) * 2 - 1
    future = torch.rand(2, 4, generator=g) * 2 - 1
    value = torch.tensor([-0.5, 0.75])
    latents = model.encode(images, images.flip(0))
    assert latents.shape == (2, 16, 9, 4, 4)
    x = model.inject(latents, proprio, actions, future, value)
    assert x is not latents and not torch.equal(x, latents)
    out = model.read_outputs(x)
    assert torch.allclose(out["actions"], actions, atol=1e-5)
    assert torch.allclose(out["future_proprio"], future, atol=1e-5)
    assert torch.allclose(out["value_raw"], value, atol=1e-5)
    assert torch.allclose(out["value"], (value + 1) / 2, atol=1e-5)
    assert torch.allclose(model.vector_encoder.read(x[:, :, lay.current_proprio], (4,)), proprio, atol=1e-5)
    for f in lay.image_frames + [lay.blank]:  # image frames are left as encoded
        assert torch.equal(x[:, :, f], latents[:, :, f])
    partial = model.inject(latents, actions=actions)  # only what is given is written
    assert torch.equal(partial[:, :, lay.current_proprio], latents[:, :, lay.current_proprio])
    assert torch.allclose(model.read_outputs(partial)["actions"], actions, atol=1e-5)


def test_with_backbone_shares_every_other_component_and_samples_with_the_given_backbone():
    model = _model()
    torch.manual_seed(1)
    other = build({"name": "cosmos_predict2_tiny"}, "backbone").eval()
    original = model.backbone
    view = model.with_backbone(other)
    assert view.backbone is other and model.backbone is original  # the model itself is unchanged
    for name in ("image_encoder", "vector_encoder", "value_head", "text_encoder"):
        assert getattr(view, name) is getattr(model, name), name
    assert view.layout is model.layout and view.spec is model.spec and view.sampling == model.sampling
    assert view.frame_shape == model.frame_shape and view.statistics is model.statistics
    images, proprio = _inputs()
    with _Calls(view) as on_other, _Calls(model) as on_original:
        out = view.predict(images, proprio, INSTRUCTIONS, seed=0)["actions"]
    assert on_other.n == 1 and on_original.n == 0  # 2 steps: one evaluation
    # the same as a model that holds those backbone weights
    ref = _model()
    ref.backbone.load_state_dict(other.state_dict())
    assert torch.allclose(ref.predict(images, proprio, INSTRUCTIONS, seed=0)["actions"], out, atol=1e-6)
    assert not torch.allclose(model.predict(images, proprio, INSTRUCTIONS, seed=0)["actions"], out)


def test_condition_masks_of_the_three_sample_types():
    # frames: blank, proprio, wrist, top | action | future proprio, future wrist, future top | value
    policy, wm, value = [1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]
    model = _model()
    assert torch.equal(model.condition_mask(POLICY, 2), torch.tensor([policy] * 2, dtype=torch.float))
    assert torch.equal(model.condition_mask(WORLD_MODEL, 1), torch.tensor([wm], dtype=torch.float))
    assert torch.equal(model.condition_mask(VALUE, 3), torch.tensor([value] * 3, dtype=torch.float))
    mixed = model.condition_mask(torch.tensor([VALUE, POLICY, WORLD_MODEL]))
    assert torch.equal(mixed, torch.tensor([value, policy, wm], dtype=torch.float))
    # V(s'): the value sample sees the future state alone; the policy and world-model masks stay
    v_of_next = _model(mask_current_state_for_value=True)
    assert v_of_next.mask_current_state_for_value
    mixed = v_of_next.condition_mask(torch.tensor([VALUE, POLICY, WORLD_MODEL]))
    assert torch.equal(mixed, torch.tensor([[1, 0, 0, 0, 0, 1, 1, 1, 0], policy, wm], dtype=torch.float))


# ---------------------------------------------------------------------------------------------------- config errors


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"model\.value_haed: unknown component \(did you mean 'value_head'\?\)") as e:
        CosmosPolicyModel({**NODES, "value_haed": {"name": "frame"}}, SPEC, STATS)
    one_line(e)
    with pytest.raises(ConfigError, match=r"model\.backbone: missing") as e:
        CosmosPolicyModel({"image_encoder": NODES["image_encoder"]}, SPEC, STATS)
    one_line(e)
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.dim: 16 does not match") as e:
        CosmosPolicyModel({**NODES, "text_encoder": {"name": "hash", "dim": 16}}, SPEC, STATS)
    one_line(e)
    big = DataSpec(cameras=("top",), proprio_dim=14, action_dim=14, chunk_size=50, image_size=16)
    with pytest.raises(ConfigError, match="data.chunk_size: .* does not fit one latent frame") as e:
        CosmosPolicyModel(dict(NODES), big, STATS)
    one_line(e)
    with pytest.raises(ConfigError, match=r"model\.sampling\.num_step: unknown key.*num_steps") as e:
        CosmosPolicyModel(dict(NODES), SPEC, STATS, sampling={"num_step": 3})
    one_line(e)
    with pytest.raises(ConfigError, match=r"model\.sampling\.num_steps: expected an integer >= 1, got 0") as e:
        CosmosPolicyModel(dict(NODES), SPEC, STATS, sampling={"num_steps": 0})
    one_line(e)
    no_value = CosmosPolicyModel({**NODES, "value_head": {"name": "none"}}, SPEC, STATS)
    assert no_value.layout.num_frames == 8 and not no_value.layout.has_value
    with pytest.raises(ConfigError, match="value_head"):
        no_value.value(torch.zeros(1, 16, 8, 4, 4), ["a"])


# ---------------------------------------------------------------------------------------------------- planning


def test_best_of_n_picks_the_highest_scoring_candidate_and_keeps_candidate_0_on_ties():
    """The scorer is scripted: candidate i's imagined futures all get the value ``scripted[b, i]`` (observation b)."""
    model = _model()
    images, proprio = _inputs()
    # row 0: candidate 2 is best; row 1: candidates 0 and 1 tie at the top -> candidate 0 is kept
    scripted = torch.tensor([[0.2, 0.5, 0.9], [0.6, 0.6, 0.3]])
    candidates: list[torch.Tensor] = []  # the policy samples' rows, in (observation, candidate) order
    real_sample = model.sample

    def recording_sample(*args, **kwargs):
        out = real_sample(*args, **kwargs)
        candidates.append(out)
        return out

    def scripted_read(frames: torch.Tensor) -> torch.Tensor:
        rows = torch.cat(candidates)[:, :, model.layout.value]
        idx = [next(r for r in range(len(rows)) if torch.equal(rows[r], f)) for f in frames]
        return scripted.flatten()[idx]

    scorer = SimpleNamespace(text_encoder=model.text_encoder, mask_future_state_for_value=False, condition_mask=model.condition_mask, layout=model.layout,
                             sample=lambda latents, *a, **k: latents,  # identity: futures and values = the candidate
                             value_head=SimpleNamespace(read=scripted_read))
    planner = build({"name": "best_of_n", "num_candidates": 3, "num_futures": 2, "num_values": 2, "action_steps": 2,
                     "aggregation": "average"}, "planner")
    planner._scorer = lambda m: scorer
    model.sample = recording_sample
    out = planner.plan(model, images, proprio, INSTRUCTIONS, seed=10)
    assert len(candidates) == 1  # all 2 x 3 candidates in one batched policy sample
    cands = torch.cat(candidates).view(2, 3, *candidates[0].shape[1:])
    assert torch.allclose(out["plan_scores"], scripted)
    assert out["plan_choice"].tolist() == [2, 0]
    for row, i in enumerate(out["plan_choice"].tolist()):
        assert torch.equal(out["latents"][row], cands[row, i])
        assert torch.equal(out["actions"][row], model.read_outputs(cands[:, i])["actions"][row])
        assert torch.equal(out["candidate_actions"][row], model.read_outputs(cands[row])["actions"])
    # candidate i is the policy's own sample with seed + i (per observation row)
    del model.sample
    for i in range(3):
        alone = model.predict(images, proprio, INSTRUCTIONS, num_steps=2, seed=[10 + i] * 2)["latents"]
        assert torch.allclose(alone, cands[:, i], atol=1e-5)  # batched GEMMs round differently
    # a strictly better candidate does replace candidate 0
    scripted[1] = torch.tensor([0.6, 0.61, 0.3])
    candidates.clear()
    model.sample = recording_sample
    assert planner.plan(model, images, proprio, INSTRUCTIONS, seed=10)["plan_choice"].tolist() == [2, 1]


def test_best_of_n_runs_from_the_model_alone():
    model = _model()
    images, proprio = _inputs()
    planner = build({"name": "best_of_n", "num_candidates": 2, "num_futures": 1, "num_values": 1, "action_steps": 1},
                    "planner")
    out = planner.plan(model, images, proprio, INSTRUCTIONS, seed=0)
    assert out["actions"].shape == (2, 8, 3) and out["plan_scores"].shape == (2, 2)
    assert ((out["plan_scores"] >= 0) & (out["plan_scores"] <= 1)).all() and out["plan_choice"].max() < 2
    alone = planner.attach(model).predict_step({"images": images, "proprio": proprio, "instruction": INSTRUCTIONS})
    assert torch.equal(alone["actions"], out["actions"])  # predict_step: seed = batch index 0


def test_planners_take_num_steps_per_call():
    model = _model()
    images, proprio = _inputs()
    direct = build({"name": "none"}, "planner")
    assert not hasattr(direct, "num_steps")
    for steps in (None, 1, 3):
        with _Calls(model) as calls:
            out = direct.plan(model, images, proprio, INSTRUCTIONS, seed=4, num_steps=steps)
        assert calls.n == network_evaluations(steps or model.sampling.num_steps)
        ref = model.predict(images, proprio, INSTRUCTIONS, num_steps=steps, seed=4)
        assert torch.equal(out["actions"], ref["actions"]) and torch.equal(out["latents"], ref["latents"])
    best = build({"name": "best_of_n", "num_candidates": 2, "num_futures": 1, "num_values": 1, "action_steps": 3,
                  "future_steps": [1], "value_steps": [1]}, "planner")
    for steps, action_evaluations in ((None, 3), (2, 1)):  # action_steps when the call passes none
        with _Calls(model) as calls:
            best.plan(model, images, proprio, INSTRUCTIONS, seed=0, num_steps=steps)
        assert calls.n == action_evaluations + 1 + 1  # batched: all candidates' policy sample, future, value
    assert best.action_steps == 3


@pytest.mark.parametrize("planner_node", [{"name": "none"}, {"name": "best_of_n", "num_candidates": 2, "num_futures": 1,
                                                             "num_values": 1, "action_steps": 4}])
def test_policy_num_steps_is_passed_per_query_and_does_not_stick_to_the_planner(planner_node):
    model = _model()
    planner = build(planner_node, "planner")
    before = _simple_attributes(planner)
    obs = [{"images": {c: np.full((40, 48, 3), 30 * i, np.uint8) for c in SPEC.cameras},
            "proprio": np.full(4, 0.25 * i, np.float32), "instruction": "stack the blocks"} for i in range(2)]
    extra = 2 if planner_node["name"] == "best_of_n" else 0  # the scoring samples (1 step each), batched
    policy = CosmosPolicy(model, planner=planner, num_steps=3)
    assert policy.planner is planner
    with _Calls(model) as calls:
        out = policy(obs)
    assert calls.n == 3 + extra and out["actions"].shape == (2, 8, 3)  # the candidates run as one batch
    assert _simple_attributes(planner) == before and not hasattr(planner, "num_steps")
    default_steps = planner_node.get("action_steps", model.sampling.num_steps)
    with _Calls(model) as calls:
        CosmosPolicy(model, planner=planner)(obs)  # the same planner, no num_steps: its own default again
    assert calls.n == network_evaluations(default_steps) + extra
    assert _simple_attributes(planner) == before
