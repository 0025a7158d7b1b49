import copy
import os
import sys

import pytest
import torch

from cosmos_lit.layout import VALUE, WORLD_MODEL
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.models.planner import AGGREGATIONS, aggregate_values
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.tasks.post_training import lambda_linear

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TINY_NODES, TINY_SPEC, TINY_STATS, one_line  # noqa: E402


def test_lambda_linear_schedule_matches_the_official_shape():
    f = lambda s: lambda_linear(s, warmup_steps=1000, decay_steps=30000, decay_to=0.3, tail=0.06)
    assert f(0) == pytest.approx(1e-6)
    assert f(500) == pytest.approx(0.5, abs=1e-6)
    assert f(1000) == pytest.approx(1.0)
    assert f(15500) == pytest.approx(0.65)
    assert f(29999) == pytest.approx(0.3, abs=1e-4)
    assert f(30000) == f(45000) == 0.06  # the sharp drop to the constant tail


def test_value_ensemble_aggregation():
    v = torch.tensor([[0.9, 0.8, 0.0, 0.7], [0.9, 0.0, 0.0, 0.01], [0.6, 0.6, 0.6, 0.6]])
    # majority_mean: >= half above 0.05 -> mean of those, else 0
    assert torch.allclose(aggregate_values(v, "majority_mean"), torch.tensor([0.8, 0.0, 0.6]))
    assert torch.allclose(aggregate_values(v, "average"), v.mean(dim=1))
    assert torch.allclose(aggregate_values(v, "success_vote"), torch.tensor([0.75, 0.25, 1.0]))
    # lcb: mean - sample std with Bessel's correction (N - 1), as torch.std in the official code; clamped at 0
    assert torch.allclose(aggregate_values(v, "lcb"), (v.mean(1) - v.std(1, correction=1)).clamp(0, 1))
    row = torch.tensor([[0.2, 0.4, 0.6, 0.8]])  # mean 0.5, sample std sqrt(0.2/3) = 0.2582 (population: 0.2236)
    assert aggregate_values(row, "lcb").item() == pytest.approx(0.5 - (0.2 / 3) ** 0.5, abs=1e-6)
    assert aggregate_values(torch.tensor([[0.0, 1.0]]), "lcb").item() == 0.0  # 0.5 - 0.707 clamps to 0
    for scheme in AGGREGATIONS:
        out = aggregate_values(v.double(), scheme)
        assert out.dtype == torch.float32 and out.shape == (3,) and ((out >= 0) & (out <= 1)).all()
    with pytest.raises(ConfigError, match="unknown scheme"):
        aggregate_values(v, "median")


def test_value_aggregation_ties_threshold_and_single_member():
    # exactly half the ensemble succeeds: that is a majority (>= 0.5) -> the mean of the successes
    half = torch.tensor([[0.9, 0.5, 0.0, 0.01]])
    assert aggregate_values(half, "majority_mean").item() == pytest.approx(0.7)
    assert aggregate_values(half, "success_vote").item() == 0.5
    # one fewer success: no majority -> 0
    assert aggregate_values(torch.tensor([[0.9, 0.0, 0.0, 0.01]]), "majority_mean").item() == 0.0
    # a value exactly at the threshold is not a success (strictly greater)
    at = torch.tensor([[0.05, 0.05, 0.9]])
    assert aggregate_values(at, "success_vote").item() == pytest.approx(1 / 3)
    assert aggregate_values(at, "majority_mean").item() == 0.0
    assert aggregate_values(torch.tensor([[0.3, 0.5]]), "success_vote", threshold=0.3).item() == 0.5
    # float32 comparison: float32(0.05) = 0.0500000007 is above the float64 0.05 but equal to float32(0.05), so a
    # value stored as float32(0.05) (even handed over as float64) is no success, as in the official float32 compare
    f32 = torch.tensor([[0.05, 0.05, 0.9]], dtype=torch.float32).double()
    assert (f32 > 0.05).sum().item() == 3  # what a float64 comparison would say
    assert aggregate_values(f32, "success_vote").item() == pytest.approx(1 / 3)
    assert aggregate_values(f32, "majority_mean").item() == 0.0
    just_above = torch.tensor([[0.0500001, 0.0500001, 0.0]], dtype=torch.float64)  # above float32(0.05) too
    assert aggregate_values(just_above, "success_vote").item() == pytest.approx(2 / 3)
    # a one-member ensemble: the member itself (or 0 / 1 for the vote); lcb has no sample std of one value
    one = torch.tensor([[0.7], [0.01]])
    assert aggregate_values(one, "majority_mean").tolist() == pytest.approx([0.7, 0.0])
    assert aggregate_values(one, "average").tolist() == pytest.approx([0.7, 0.01])
    assert aggregate_values(one, "success_vote").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="'lcb' needs an ensemble of at least 2 values"):
        aggregate_values(one, "lcb")


def test_lcb_with_a_one_member_ensemble_is_a_config_error_at_construction():
    node = {"name": "best_of_n", "num_futures": 1, "num_values": 1, "aggregation": "lcb"}
    with pytest.raises(ConfigError) as e:
        build(node, "planner")
    msg = one_line(e)
    for option in ("planner.num_futures", "planner.num_values", "majority_mean", "average", "success_vote"):
        assert option in msg, option
    assert build({**node, "num_values": 2}, "planner").aggregation == "lcb"  # 2 members: fine
    assert build({**node, "aggregation": "average"}, "planner").num_values == 1
    with pytest.raises(ConfigError, match="planner.micro_batch: expected an integer >= 1 or null"):
        build({"name": "best_of_n", "micro_batch": 0}, "planner")
    assert build({"name": "best_of_n", "micro_batch": None}, "planner").micro_batch is None


def test_best_of_n_defaults_follow_the_official_settings():
    p = build({"name": "best_of_n"}, "planner")
    assert (p.num_candidates, p.num_futures, p.num_values, p.action_steps) == (8, 3, 5, 10)
    assert p.future_steps == [1, 3, 5] and p.value_steps == [1, 2, 3, 4, 5]
    assert p.aggregation == "majority_mean" and p.threshold == 0.05 and p.keep_base_unless_better
    assert p.micro_batch == 32
    assert build({"name": "best_of_n", "num_futures": 4}, "planner").future_steps == [1, 2, 3, 5]  # cast to int


# ---------------------------------------------------------------------------------------------------- batched planning


class _RowwiseNet(torch.nn.Module):
    """A toy velocity net whose rows are computed independently with exact arithmetic (elementwise only), so a batch
    gives bit for bit the rows of smaller batches; it reads the timesteps, the mask and the text."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, net_in, timesteps, cond_mask, text):
        t = timesteps[:, None, :, None, None]
        return torch.tanh(self.w * net_in + t) * (1 + cond_mask[:, None, :, None, None]) + text[:, :1, :1, None, None]


def _tiny_model(rowwise: bool = False):
    torch.manual_seed(0)
    model = CosmosPolicyModel(dict(TINY_NODES), TINY_SPEC, TINY_STATS, sampling={"num_steps": 2}).eval()
    return model.with_backbone(_RowwiseNet()) if rowwise else model


def _obs(b: int = 2):
    g = torch.Generator().manual_seed(5)
    return torch.rand(b, 2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(b, 4, generator=g) * 2 - 1


INSTRUCTIONS = ["stack the blocks", "open the drawer"]


def _sequential_plan(planner, model, images, proprio, seed, steps):
    """The reference: the official loop over candidates, futures and values (one B-row sample each, every row
    seeded with the official seed), then aggregation and the choice."""
    b = proprio.shape[0]
    text = model.text_encoder(INSTRUCTIONS[:b])
    cond, mask = model.policy_condition(images, proprio)
    wm, vm = model.condition_mask(WORLD_MODEL, b), model.condition_mask(VALUE, b)
    cands, futures, values = [], [], []
    for i in range(planner.num_candidates):
        lat = model.sample(cond, mask, text, num_steps=steps, seed=[seed + i] * b)
        futs, vals = [], []
        for j, f_steps in enumerate(planner.future_steps):
            fut = model.sample(lat, wm, text, num_steps=f_steps, seed=[seed + i + j] * b)
            futs.append(fut)
            for k, v_steps in enumerate(planner.value_steps):
                val = model.sample(fut, vm, text, num_steps=v_steps, seed=[seed + i + j + k] * b)
                vals.append(model.value_head.read(val[:, :, model.layout.value]))
        cands.append(lat)
        futures.append(torch.stack(futs, 1))
        values.append(torch.stack(vals, 1))
    values = torch.stack(values, 1)  # (B, N, F*V)
    scores = aggregate_values(values.flatten(0, 1), planner.aggregation, planner.threshold).view(b, -1)
    best = scores.argmax(1)
    best = torch.where(scores.gather(1, best[:, None])[:, 0] > scores[:, 0], best, torch.zeros_like(best))
    return {"candidates": torch.stack(cands, 1), "candidate_futures": torch.stack(futures, 1), "candidate_values": values,
            "plan_scores": scores, "plan_choice": best}


NODE = {"name": "best_of_n", "num_candidates": 3, "num_futures": 2, "num_values": 3, "action_steps": 3}


@torch.no_grad()
def test_batched_plan_equals_the_sequential_loop_exactly_and_does_not_depend_on_micro_batch():
    model = _tiny_model(rowwise=True)
    images, proprio = _obs(2)
    seed = 11
    planners = [build({**NODE, "micro_batch": mb}, "planner") for mb in (None, 32, 4, 1)]
    assert planners[1].future_steps == [1, 5] and planners[1].value_steps == [1, 3, 5]
    ref = _sequential_plan(planners[0], model, images, proprio, seed, steps=3)
    outs = [p.plan(model, images, proprio, INSTRUCTIONS, seed=seed) for p in planners]
    out = outs[0]
    b, n, f, v = 2, 3, 2, 3
    c, t, h, w = ref["candidates"].shape[2:]
    assert out["plan_scores"].shape == (b, n) and out["plan_scores"].dtype == torch.float32
    assert out["plan_choice"].shape == (b,) and out["plan_choice"].dtype == torch.long
    assert out["candidate_actions"].shape == (b, n, 8, 3)
    assert out["candidate_values"].shape == (b, n, f * v)
    assert out["candidate_futures"].shape == (b, n, f, c, t, h, w) and out["latents"].shape == (b, c, t, h, w)
    for key in ("candidate_futures", "candidate_values", "plan_scores", "plan_choice"):
        assert torch.equal(out[key], ref[key]), key
    chosen = ref["candidates"][torch.arange(b), ref["plan_choice"]]
    assert torch.equal(out["latents"], chosen)
    assert torch.equal(out["actions"], model.read_outputs(chosen)["actions"])
    assert torch.equal(out["candidate_actions"], model.read_outputs(ref["candidates"].flatten(0, 1))["actions"].view(b, n, 8, 3))
    for other in outs[1:]:  # micro_batch only changes how rows are split into forwards
        assert other.keys() == out.keys()
        for key in out:
            assert torch.equal(other[key], out[key]), key
    # a per-call num_steps wins over action_steps
    ref5 = _sequential_plan(planners[0], model, images, proprio, seed, steps=5)
    out5 = planners[2].plan(model, images, proprio, INSTRUCTIONS, seed=seed, num_steps=5)
    assert torch.equal(out5["candidate_values"], ref5["candidate_values"])


@torch.no_grad()
def test_batched_plan_with_the_tiny_dit_matches_the_loop_and_bounds_rows_per_forward():
    model = _tiny_model()
    images, proprio = _obs(2)
    planner = build({**NODE, "num_values": 2, "micro_batch": 4}, "planner")
    rows: list[int] = []
    hook = model.backbone.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    try:
        out = planner.plan(model, images, proprio, INSTRUCTIONS, seed=3)
    finally:
        hook.remove()
    # 6 candidates (3 evaluations), 12 futures (1 + 5 steps), 24 values (1 + 5 steps), at most 4 rows a forward
    assert max(rows) == 4 and sum(rows) == 6 * 3 + 6 * (1 + 5) + 12 * (1 + 5)
    ref = _sequential_plan(planner, model, images, proprio, 3, steps=3)
    # the DiT's small-row GEMMs round differently for other batch sizes: equal to float round-off, same choice
    assert torch.allclose(out["candidate_futures"], ref["candidate_futures"], atol=1e-4)
    assert torch.allclose(out["candidate_values"], ref["candidate_values"], atol=1e-5)
    assert torch.allclose(out["plan_scores"], ref["plan_scores"], atol=1e-5)
    assert torch.equal(out["plan_choice"], ref["plan_choice"])
    assert torch.allclose(out["latents"], ref["candidates"][torch.arange(2), ref["plan_choice"]], atol=1e-4)


@torch.no_grad()
def test_value_members_of_equal_evaluations_share_forwards():
    """1 and 2 steps are both one evaluation: their rows share one forward (5 values: 1 + 3 + 4 + 5 forwards)."""
    model = _tiny_model(rowwise=True)
    images, proprio = _obs(1)
    planner = build({"name": "best_of_n", "num_candidates": 2, "num_futures": 1, "num_values": 5, "action_steps": 1},
                    "planner")
    calls = []
    hook = model.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        out = planner.plan(model, images, proprio, INSTRUCTIONS[:1], seed=0)
    finally:
        hook.remove()
    assert calls == [2, 2] + [4] + [2] * (3 + 4 + 5)  # actions; future (1 step); values {1, 2}, 3, 4, 5 steps
    ref = _sequential_plan(planner, model, images, proprio, 0, steps=1)
    assert torch.equal(out["candidate_values"], ref["candidate_values"])


def test_per_row_seeds_of_model_sample():
    model = _tiny_model(rowwise=True)
    x = torch.zeros(3, 16, 9, 4, 4)
    mask = model.condition_mask(WORLD_MODEL, 3)
    text = model.text_encoder(["a", "b", "c"])
    rows = model.sample(x, mask, text, num_steps=3, seed=[4, 9, 4])
    for r, s in enumerate([4, 9, 4]):
        alone = model.sample(x[r:r + 1], mask[r:r + 1], text[r:r + 1], num_steps=3, seed=s)  # an int, one row
        assert torch.equal(rows[r:r + 1], alone)
    assert torch.equal(model.initial_noise((1, 2, 3), [7]), model.initial_noise((1, 2, 3), 7))
    assert not torch.equal(model.initial_noise((2, 2, 3), 7)[1], model.initial_noise((2, 2, 3), [7, 7])[1])
    with pytest.raises(ValueError, match="one seed per batch row"):
        model.sample(x, mask, text, seed=[1, 2])


def test_best_of_n_keeps_candidate_0_on_ties_and_takes_a_strictly_better_one(monkeypatch):
    model = _tiny_model(rowwise=True)
    images, proprio = _obs(2)
    scripted = torch.tensor([[0.4, 0.4, 0.4], [0.3, 0.7, 0.7]])
    import cosmos_lit.models.planner as planner_module

    monkeypatch.setattr(planner_module, "aggregate_values", lambda values, *a, **k: scripted.flatten())
    keep = build({**NODE, "num_futures": 1, "num_values": 1, "action_steps": 1}, "planner")
    assert keep.plan(model, images, proprio, INSTRUCTIONS)["plan_choice"].tolist() == [0, 1]  # first of the best
    free = build({**NODE, "num_futures": 1, "num_values": 1, "action_steps": 1, "keep_base_unless_better": False},
                 "planner")
    assert free.plan(model, images, proprio, INSTRUCTIONS)["plan_choice"].tolist() == [0, 1]
    scripted[0] = torch.tensor([0.4, 0.41, 0.41])
    assert keep.plan(model, images, proprio, INSTRUCTIONS)["plan_choice"].tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------------- DiT q/k norm eps


def _attention_norms(net):
    from diffusers.models.attention_processor import Attention

    return [getattr(m, name) for m in net.modules() if isinstance(m, Attention) for name in ("norm_q", "norm_k")]


@torch.no_grad()
def test_dit_qk_rmsnorm_eps_is_the_official_1e_6():
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    adapter = build({"name": "cosmos_predict2_tiny"}, "backbone").eval()
    norms = _attention_norms(adapter.net)
    assert len(norms) == 2 * 2 * adapter.config["num_layers"]  # q and k of self- and cross-attention per block
    assert all(n.eps == 1e-6 for n in norms)
    # the same weights in a plain diffusers net (its own default eps), the eps then set to 1e-6 by hand
    by_hand = copy.deepcopy(adapter)
    by_hand.net = CosmosTransformer3DModel(**adapter.config).eval()
    by_hand.net.load_state_dict(adapter.net.state_dict())
    for n in _attention_norms(by_hand.net):
        n.eps = 1e-6
    # tiny q/k heads (rms ~1e-3, mean square ~1e-6, as large as eps) make the eps matter
    for net in (adapter.net, by_hand.net):
        for m in net.modules():
            if hasattr(m, "norm_q") and m.norm_q is not None:
                m.to_q.weight.mul_(1e-3)
                m.to_k.weight.mul_(1e-3)
    g = torch.Generator().manual_seed(1)
    x, ts = torch.randn(2, 16, 3, 4, 4, generator=g), torch.rand(2, 3, generator=g)
    mask, text = torch.tensor([[1.0, 0, 0], [1.0, 1, 0]]), torch.randn(2, 5, 32, generator=g)
    out = adapter(x, ts, mask, text)
    assert torch.equal(out, by_hand(x, ts, mask, text))
    for n in _attention_norms(by_hand.net):
        n.eps = 1e-5  # diffusers' default
    assert (out - by_hand(x, ts, mask, text)).abs().max() > 1e-4


@torch.no_grad()
def test_search_depth_plans_again_from_each_candidates_first_imagined_future():
    """Depth 2: the candidate's first future becomes the state (future-state latents in the current slots), the policy
    samples the next chunk from it, and its futures and values are scored as at depth 1 (reproduced here by hand)."""
    from cosmos_lit.layout import POLICY
    from cosmos_lit.models.planner import DEPTH_SEED_STRIDE, aggregate_values

    model = _tiny_model(rowwise=True)
    images, proprio = _obs(2)
    node = {**NODE, "num_futures": 1, "num_values": 2}
    one = build(node, "planner").plan(model, images, proprio, INSTRUCTIONS, seed=4)
    last = build({**node, "search_depth": 2}, "planner").plan(model, images, proprio, INSTRUCTIONS, seed=4)
    mean = build({**node, "search_depth": 2, "depth_aggregation": "average"}, "planner").plan(
        model, images, proprio, INSTRUCTIONS, seed=4)
    d = last["depth_scores"]
    assert d.shape == (2, 3, 2) and torch.equal(d[..., 0], one["plan_scores"])
    assert torch.equal(last["plan_scores"], d[..., 1]) and torch.allclose(mean["plan_scores"], d.mean(-1))
    assert torch.equal(last["candidate_actions"], one["candidate_actions"])  # the executed chunk is depth 1's

    lay = model.layout
    (c0, c1), (f0, f1) = lay.current_state, lay.future_state
    b, i = 1, 2
    state = one["candidate_futures"][b, i, 0][None].clone()
    state[:, :, c0:c1 + 1] = state[:, :, f0:f1 + 1]
    text = model.text_encoder(INSTRUCTIONS[b:b + 1])
    s = 4 + i + DEPTH_SEED_STRIDE
    chunk = model.sample(state, model.condition_mask(POLICY, 1), text, num_steps=3, seed=[s])
    future = model.sample(chunk, model.condition_mask(WORLD_MODEL, 1), text, num_steps=1, seed=[s])
    values = torch.cat([model.value_head.read(model.sample(future, model.condition_mask(VALUE, 1), text, num_steps=n,
                                                           seed=[s + k])[:, :, lay.value]) for k, n in enumerate([1, 5])])
    expected = aggregate_values(values.view(1, 2).float(), "majority_mean", 0.05)
    assert torch.equal(d[b, i, 1], expected[0])
    with pytest.raises(ConfigError, match="planner.search_depth"):
        build({**node, "search_depth": 0}, "planner")
    with pytest.raises(ConfigError, match="planner.depth_aggregation"):
        build({**node, "depth_aggregation": "max"}, "planner")


@torch.no_grad()
def test_one_seed_per_observation_makes_each_plan_independent_of_its_batch():
    model = _tiny_model(rowwise=True)
    images, proprio = _obs(2)
    planner = build(NODE, "planner")
    shared = planner.plan(model, images, proprio, INSTRUCTIONS, seed=7)
    assert torch.equal(planner.plan(model, images, proprio, INSTRUCTIONS, seed=[7, 7])["plan_scores"], shared["plan_scores"])
    both = planner.plan(model, images, proprio, INSTRUCTIONS, seed=[7, 30])
    alone = planner.plan(model, images[1:], proprio[1:], INSTRUCTIONS[1:], seed=30)
    for key in ("candidate_values", "plan_scores", "plan_choice", "candidate_actions"):
        assert torch.equal(both[key][1:], alone[key]), key
    with pytest.raises(ValueError, match="one seed per observation"):
        planner.plan(model, images, proprio, INSTRUCTIONS, seed=[1, 2, 3])


@torch.no_grad()
def test_a_q_value_planning_model_scores_candidates_without_imagined_futures():
    """Q(s, a) (model.mask_future_state_for_value): no world-model stage; each candidate's V values come from its own
    latents with s' masked, seeds base + i + k (reproduced by hand)."""
    model = _tiny_model(rowwise=True)
    torch.manual_seed(0)
    q = CosmosPolicyModel(dict(TINY_NODES), TINY_SPEC, TINY_STATS, sampling={"num_steps": 2},
                          mask_future_state_for_value=True).eval().with_backbone(model.backbone)
    images, proprio = _obs(2)
    planner = build({**NODE, "num_values": 2}, "planner")
    out = planner.plan(q, images, proprio, INSTRUCTIONS, seed=5)
    assert out["candidate_values"].shape == (2, 3, 2) and "candidate_futures" not in out
    b, i = 1, 1
    cands = planner.plan(model, images, proprio, INSTRUCTIONS, seed=5)["candidate_actions"]
    assert torch.equal(out["candidate_actions"], cands)  # the same policy samples
    text = q.text_encoder(INSTRUCTIONS[b:b + 1])
    cond, mask = q.policy_condition(images[b:b + 1], proprio[b:b + 1])
    chunk = q.sample(cond, mask, text, num_steps=3, seed=[5 + i])
    vm = q.condition_mask(VALUE, 1)
    assert vm[0, q.layout.future_proprio] == 0 and vm[0, q.layout.action] == 1
    values = [q.value_head.read(q.sample(chunk, vm, text, num_steps=n, seed=[5 + i + k])[:, :, q.layout.value])
              for k, n in enumerate([1, 5])]
    assert torch.equal(out["candidate_values"][b, i], torch.cat(values).float())
    with pytest.raises(ConfigError, match="search_depth > 1 needs imagined futures"):
        build({**NODE, "search_depth": 2}, "planner").plan(q, images, proprio, INSTRUCTIONS, seed=5)
    with pytest.raises(ConfigError, match="one or the other"):
        CosmosPolicyModel(dict(TINY_NODES), TINY_SPEC, TINY_STATS, mask_current_state_for_value=True,
                          mask_future_state_for_value=True)


def test_fused_adamw_is_the_default_and_updates_as_the_per_tensor_one():
    """task.optim.fused (default true) is a speed lever only: after 3 steps on the same gradients the parameters are
    within float rounding of torch's default AdamW (task.optim.fused=false)."""
    from cosmos_lit.tasks.post_training import CosmosPolicyTask

    torch.manual_seed(0)
    fused = CosmosPolicyTask(copy.deepcopy(TINY_NODES), TINY_SPEC.to_dict(), copy.deepcopy(TINY_STATS),
                             optim={"lr": 1e-3, "warmup_steps": 0})
    loop = copy.deepcopy(fused)
    loop.optim_cfg = type(loop.optim_cfg)(lr=1e-3, warmup_steps=0, fused=False)
    opts = [task.configure_optimizers()["optimizer"] for task in (fused, loop)]
    assert opts[0].defaults["fused"] is True and not opts[1].defaults["fused"]
    start = [p.detach().clone() for p in fused.parameters()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(fused.parameters(), loop.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=gen)
                b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    apart = max((a - b).abs().max().item() for a, b in zip(fused.parameters(), loop.parameters()))
    moved = max((a - p0).abs().max().item() for a, p0 in zip(fused.parameters(), start))
    assert apart < 1e-6 < moved


def test_a_fused_that_is_not_a_bool_is_one_config_error():
    from cosmos_lit.tasks.post_training import CosmosPolicyTask

    with pytest.raises(ConfigError, match=r"^task.optim.fused: expected true or false, got 'yes'$"):
        CosmosPolicyTask(copy.deepcopy(TINY_NODES), TINY_SPEC.to_dict(), copy.deepcopy(TINY_STATS),
                         optim={"fused": "yes"})


def test_a_bf16_mixed_fit_with_gradient_clipping_trains_with_the_unfused_adamw(tmp_path):
    """Lightning's mixed-precision plugin refuses to clip gradients for a fused optimizer, so under
    trainer.precision=bf16-mixed (the CPU config clips at 1.0) the task falls back to torch's default AdamW."""
    from tests.test_distributed import cli, tiny_fit_args, write_episodes

    data = write_episodes(tmp_path / "eps", n=2, length=20)
    out = cli(*tiny_fit_args(data, tmp_path / "run", 2), "eval=none", "trainer.precision=bf16-mixed")
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not ckpt["optimizer_states"][0]["param_groups"][0]["fused"]
