"""Planners: turn the model's predictions into the action chunk to execute.

- ``none``: the direct policy, one parallel-decoding sample of all generated frames (the paper's main setting).
- ``best_of_n``: model-based planning (docs/method.md#best-of-n-planning). For each of N candidates (seed = base + i): sample an
  action chunk with the policy model, imagine ``num_futures`` futures s' with the world model (the action frame now
  conditioning), predict ``num_values`` values V(s') per future with the value function (everything but the value
  frame conditioning), aggregate the ensemble, and execute the best candidate's chunk. Step counts per stage follow
  the official autoregressive decoding (linspace(1, 5, futures) / linspace(1, 5, values) by default).
  A separate planning model (the rollout-fine-tuned checkpoint) can score the candidates: ``planning_checkpoint``.
  All candidates, futures and values of a batch of observations run as batched samples (rows bounded by
  ``micro_batch``), with one seed per row, so batching never changes the plan.

A planner is a LightningModule so it can run alone through ``predict_step`` on batches of observations, given the
model it plans with (``planner.attach(model)``). It talks to the model only (``cosmos_lit.model``), never to a task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from cosmos_lit import diffusion
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.registry import ConfigError, register

AGGREGATIONS = ("majority_mean", "average", "lcb", "success_vote")


def aggregate_values(values: torch.Tensor, scheme: str = "majority_mean", threshold: float = 0.05) -> torch.Tensor:
    """Aggregate an ensemble of [0, 1] values (B, E) -> (B,) float32, as the official ``aggregate_value_predictions``.

    Values and ``threshold`` are compared in float32 (both are cast first, as the official code compares a float32
    tensor with a Python float); a success is a value strictly above the threshold (one exactly at it is not).

    - ``majority_mean``: if the fraction of successes is >= 0.5, the mean of the successful values, else 0;
    - ``average``: the mean;
    - ``lcb``: mean − sample std (Bessel's correction, N − 1, as ``torch.std``); needs E >= 2 (a one-member
      ensemble has no sample std: NaN in the official code, a ValueError here);
    - ``success_vote``: the fraction of successes.

    Every result is clamped to [0, 1].
    """
    if scheme not in AGGREGATIONS:
        raise ConfigError(f"planner.aggregation: unknown scheme '{scheme}'; expected majority_mean, average, lcb or success_vote")
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"aggregate_values: expected values of shape (B, E) with E >= 1, got {tuple(values.shape)}")
    v = values.to(torch.float32)
    thr = torch.tensor(threshold, dtype=torch.float32, device=v.device)
    ok = v > thr
    if scheme == "average":
        out = v.mean(dim=1)
    elif scheme == "lcb":
        if v.shape[1] < 2:
            raise ValueError("aggregate_values: 'lcb' needs an ensemble of at least 2 values (the sample std of one is "
                             "undefined); got 1")
        out = v.mean(dim=1) - v.std(dim=1, correction=1)
    elif scheme == "success_vote":
        out = ok.to(torch.float32).mean(dim=1)
    else:  # majority_mean
        n_ok = ok.to(torch.float32).sum(dim=1)
        mean_ok = torch.where(ok, v, torch.zeros_like(v)).sum(dim=1) / n_ok.clamp(min=1.0)
        out = torch.where(n_ok / v.shape[1] >= 0.5, mean_ok, torch.zeros_like(mean_ok))
    return out.clamp(0.0, 1.0)


class Planner(L.LightningModule):
    """Base of the registered planners (the ``cosmos_lit.components.Planner`` contract).

    ``plan(model, current_images, proprio, instructions, seed, num_steps) -> dict`` with normalized ``actions``.
    Alone, a planner runs plan-and-act on batches of normalized observations through ``predict_step`` once it is
    given the model it plans with (``planner.attach(model)``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._model: CosmosPolicyModel | None = None

    def attach(self, model: CosmosPolicyModel) -> "Planner":
        self._model = model
        return self

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, torch.Tensor]:
        if self._model is None:
            raise RuntimeError("planner.predict_step needs a model: call planner.attach(model) first")
        n = len(self._model.spec.cameras)
        return self.plan(self._model, batch["images"][:, :n], batch["proprio"], list(batch["instruction"]), seed=batch_idx)

    def plan(self, model: CosmosPolicyModel, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
             seed: int | Sequence[int] = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def observation_seeds(seed: int | Sequence[int], batch: int) -> list[int]:
    """One base seed per observation: ``seed`` for all (the official scheme: candidate i of every observation
    uses seed + i), or the given per-observation seeds (each observation's plan then does not depend on the others
    in its batch)."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed)] * batch
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"seed: expected one seed per observation ({batch}), got {len(seeds)}")
    return seeds


@register("planner", "none")
class DirectPolicy(Planner):
    """No planning: execute the policy's own sample (parallel decoding)."""

    @torch.no_grad()
    def plan(self, model: CosmosPolicyModel, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
             seed: int | Sequence[int] = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        return model.predict(current_images, proprio, instructions, num_steps=num_steps, seed=seed)


DEPTH_AGGREGATIONS = ("last", "average")
DEPTH_SEED_STRIDE = 1000  # seed offset of each further search depth (beyond any candidate + future + value offset)


@register("planner", "best_of_n")
class BestOfN(Planner):
    """Best-of-N over imagined futures and values (V(s') by default), batched.

    The N candidates of all B observations are one batch of B·N rows for the policy sample; their N·F futures and
    N·F·V values are batches of rows too, one sampler run per distinct step count of a stage, each run split into
    network forwards of at most ``micro_batch`` rows. Every row draws its noise from its own seed (official seeds:
    candidate i: seed + i; future j of it: seed + i + j; value k of that future: seed + i + j + k), so the result
    does not depend on the batching: it equals the loop over observations and candidates with one sample each, and
    ``micro_batch`` only trades memory for speed. With a Q(s, a) planning model (``model.mask_future_state_for_value``,
    the model-free variant) there is no world-model stage: each candidate gets V values from (s, a) directly
    (seed + i + k).

    Args:
        num_candidates: N action chunks sampled from the policy.
        num_futures: world-model samples per candidate.
        num_values: value samples per future.
        action_steps: denoising steps of the policy sample when a call passes none (10 in the official planning
            setting); a per-call ``num_steps`` (``eval.num_steps``) wins.
        future_steps / value_steps: step counts per ensemble member; default linspace(1, 5, n) cast to int, as the
            official code ([1, 3, 5] for 3 futures, [1, 2, 3, 4, 5] for 5 values).
        aggregation: value ensemble aggregation (see ``aggregate_values``); ``lcb`` needs num_futures·num_values >= 2.
        threshold: success threshold of ``majority_mean`` / ``success_vote`` on the [0, 1] value scale.
        keep_base_unless_better: execute candidate 0 unless another is strictly better ("seed switching").
        planning_checkpoint: optional path of a separate (rollout-fine-tuned) model used for futures and values.
        micro_batch: most rows per network forward (bounds the memory of a plan); null: all rows of a run at once.
        search_depth: imagined chunks per candidate (official ``search_depth``). At depth d > 1 the candidate's first
            imagined future becomes the state (its future-state latents copied into the current-state slots, no
            VAE), the policy samples the next chunk from it (seed + i + d·DEPTH_SEED_STRIDE), and futures and values
            are scored as at depth 1. The executed chunk is still the depth-1 candidate's. Both models must share
            the latent space (the same image encoder), as a base checkpoint and its rollout fine-tune do.
        depth_aggregation: a candidate's score over depths: ``last`` (the official ``use_last_value``) or
            ``average``.
    """

    def __init__(
        self,
        num_candidates: int = 8,
        num_futures: int = 3,
        num_values: int = 5,
        action_steps: int = 10,
        future_steps: list[int] | None = None,
        value_steps: list[int] | None = None,
        aggregation: str = "majority_mean",
        threshold: float = 0.05,
        keep_base_unless_better: bool = True,
        planning_checkpoint: str | None = None,
        micro_batch: int | None = 32,
        search_depth: int = 1,
        depth_aggregation: str = "last",
    ):
        super().__init__()
        if num_candidates < 1 or num_futures < 1 or num_values < 1:
            raise ConfigError("planner: num_candidates, num_futures and num_values must be >= 1")
        aggregate_values(torch.zeros(1, 2), aggregation)  # validate the scheme name early
        if aggregation == "lcb" and num_futures * num_values < 2:
            raise ConfigError(f"planner.aggregation: 'lcb' needs an ensemble of at least 2 values, got num_futures x "
                              f"num_values = {num_futures} x {num_values} = 1; raise planner.num_futures or "
                              "planner.num_values, or choose planner.aggregation=majority_mean, average or success_vote")
        if micro_batch is not None and (isinstance(micro_batch, bool) or int(micro_batch) != micro_batch or micro_batch < 1):
            raise ConfigError(f"planner.micro_batch: expected an integer >= 1 or null, got {micro_batch!r}")
        self.num_candidates = num_candidates
        self.num_futures = num_futures
        self.num_values = num_values
        self.action_steps = action_steps
        self.future_steps = list(future_steps) if future_steps else np.linspace(1, 5, num_futures).astype(int).tolist()
        self.value_steps = list(value_steps) if value_steps else np.linspace(1, 5, num_values).astype(int).tolist()
        if len(self.future_steps) != num_futures or len(self.value_steps) != num_values:
            raise ConfigError("planner.future_steps / value_steps: one step count per ensemble member expected")
        if any(int(n) < 1 for n in (action_steps, *self.future_steps, *self.value_steps)):
            raise ConfigError("planner.action_steps / future_steps / value_steps: step counts must be >= 1")
        if isinstance(search_depth, bool) or int(search_depth) != search_depth or search_depth < 1:
            raise ConfigError(f"planner.search_depth: expected an integer >= 1, got {search_depth!r}")
        if depth_aggregation not in DEPTH_AGGREGATIONS:
            raise ConfigError(f"planner.depth_aggregation: expected one of {', '.join(DEPTH_AGGREGATIONS)}, got "
                              f"{depth_aggregation!r}")
        self.aggregation = aggregation
        self.threshold = threshold
        self.keep_base_unless_better = keep_base_unless_better
        self.search_depth = int(search_depth)
        self.depth_aggregation = depth_aggregation
        self.planning_checkpoint = planning_checkpoint
        self.micro_batch = None if micro_batch is None else int(micro_batch)
        self._planning_model: CosmosPolicyModel | None = None

    def _scorer(self, model: CosmosPolicyModel) -> CosmosPolicyModel:
        """The model that imagines futures and predicts values: ``planning_checkpoint``'s, else the policy's."""
        if self.planning_checkpoint is None:
            return model
        if self._planning_model is None:
            from cosmos_lit.checkpoint import load_model

            self._planning_model = load_model(self.planning_checkpoint, map_location=model.device)
        return self._planning_model

    def _run(self, model: CosmosPolicyModel, source: torch.Tensor, rows: torch.Tensor, sample_type: int,
             text: torch.Tensor, text_rows: torch.Tensor, num_steps: int, seeds: list[int],
             read: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Sample ``source[rows]`` (conditioning frames of ``sample_type``) with text ``text[text_rows]`` and one
        seed per row, in forwards of at most ``micro_batch`` rows; ``read`` reduces each chunk's latents."""
        step = self.micro_batch or max(len(rows), 1)
        out = []
        for start in range(0, len(rows), step):
            r = rows[start:start + step]
            lat = model.sample(source[r], model.condition_mask(sample_type, len(r)), text[text_rows[start:start + step]],
                               num_steps=num_steps, seed=seeds[start:start + step])
            out.append(read(lat) if read is not None else lat)
        return torch.cat(out)

    def _stage(self, model: CosmosPolicyModel, source: torch.Tensor, sample_type: int, text: torch.Tensor,
               members: list[int], seed_of: Callable[[int, int], int], outer: int, per_obs: int,
               read: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """One stage over rows (o, m): ``outer`` source rows o (B·N candidates, or B·N·F futures) × ``len(members)``
        ensemble members m with step counts ``members[m]``; source row o belongs to observation o // ``per_obs``.
        Members whose step counts make the same number of network evaluations share runs. Returns the (outer·M, ...)
        results in (o, m) order."""
        m_count = len(members)
        result: torch.Tensor | None = None
        groups: dict[int, list[int]] = {}
        for m, n in enumerate(members):
            groups.setdefault(diffusion.network_evaluations(int(n)), []).append(m)
        for ms in groups.values():
            steps = min(int(members[m]) for m in ms)  # same evaluations (1 and 2 steps are one evaluation)
            o = torch.arange(outer).repeat_interleave(len(ms))
            mm = torch.tensor(ms).repeat(outer)
            flat = (o * m_count + mm).to(source.device)
            seeds = [seed_of(int(a), int(b)) for a, b in zip(o, mm)]
            part = self._run(model, source, o.to(source.device), sample_type, text,
                             (o // per_obs).to(text.device), steps, seeds, read)
            if result is None:
                result = part.new_empty((outer * m_count, *part.shape[1:]))
            result[flat] = part
        assert result is not None
        return result

    def _deeper(self, model: CosmosPolicyModel, scorer: CosmosPolicyModel, state: torch.Tensor, text: torch.Tensor,
                s_text: torch.Tensor, steps: int, base: list[int], depth: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One more depth for the B·N candidate rows of ``state`` (imagined latents (B·N, C, T, h, w)): the state
        moved into the current slots, a new policy chunk, its futures and values -> ((B, N) scores, next state)."""
        n, f, v = self.num_candidates, self.num_futures, self.num_values
        lay = model.layout
        (c0, c1), (f0, f1) = lay.current_state, lay.future_state
        cond = state.clone()
        cond[:, :, c0:c1 + 1] = state[:, :, f0:f1 + 1]  # s' is the new s (the slots have the same order)
        offset = depth * DEPTH_SEED_STRIDE
        chunks = self._stage(model, cond, POLICY, text, [steps], lambda o, _: base[o // n] + o % n + offset,
                             outer=b * n, per_obs=n)
        futures = self._stage(scorer, chunks, WORLD_MODEL, s_text, self.future_steps,
                              lambda o, j: base[o // n] + o % n + j + offset, outer=b * n, per_obs=n)
        values = self._stage(scorer, futures, VALUE, s_text, self.value_steps,
                             lambda o, k: base[o // (n * f)] + (o // f) % n + o % f + k + offset, outer=b * n * f,
                             per_obs=n * f, read=lambda lat: scorer.value_head.read(lat[:, :, scorer.layout.value]))
        scores = aggregate_values(values.view(b * n, f * v).to(torch.float32), self.aggregation, self.threshold)
        return scores.view(b, n), futures.view(b * n, f, *futures.shape[1:])[:, 0]

    @torch.no_grad()
    def plan(self, model: CosmosPolicyModel, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
             seed: int | Sequence[int] = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        """Plan for B observations (``seed``: the base seed of all, or one per observation).

        Returns ``model.read_outputs`` of the chosen candidate (``actions`` (B, K, A) normalized, ...) and
            latents            (B, C, T, h, w)        the chosen candidate's sampled latents
            plan_scores        (B, N) float32         aggregated value of each candidate, in [0, 1]
            plan_choice        (B,) long              index of the executed candidate
            candidate_actions  (B, N, K, A)           normalized action chunks of all candidates
            candidate_values   (B, N, F·V) float32    raw ensemble values in [0, 1] (future j, value k at j·V + k);
                                                      (B, N, V) from a Q(s, a) planning model
            candidate_futures  (B, N, F, C, T, h, w)  world-model latents of each candidate's imagined futures (the
                                                      scorer's; decode with ``decode_future_images``); absent for Q
            depth_scores       (B, N, D) float32      with search_depth D > 1: each depth's aggregated value
        with N = num_candidates, F = num_futures, V = num_values.
        """
        if not model.layout.has_value:
            raise ConfigError("planner=best_of_n needs a value frame (model/value_head=frame)")
        scorer = self._scorer(model)
        b = proprio.shape[0]
        n, f, v = self.num_candidates, self.num_futures, self.num_values
        text = model.text_encoder(instructions)
        s_text = scorer.text_encoder(instructions)
        cond, _ = model.policy_condition(current_images, proprio)
        steps = self.action_steps if num_steps is None else num_steps
        # rows (b, i): candidate i of observation b, seed + i
        base = observation_seeds(seed, b)
        cands = self._stage(model, cond, POLICY, text, [steps] * n, lambda o, i: base[o] + i, outer=b, per_obs=1)
        read_value = lambda lat: scorer.value_head.read(lat[:, :, scorer.layout.value])  # noqa: E731
        if scorer.mask_future_state_for_value:  # model-free Q(s, a): values of each candidate, no imagined future
            if self.search_depth > 1:
                raise ConfigError("planner.search_depth > 1 needs imagined futures; the planning model is a Q(s, a) "
                                  "model (model.mask_future_state_for_value)")
            if self.aggregation == "lcb" and v < 2:
                raise ConfigError("planner.aggregation: 'lcb' needs at least 2 values; a Q(s, a) planning model has "
                                  f"num_values = {v} per candidate (no futures)")
            futures = None
            # rows (b, i, k): value k of candidate i, seed + i + k
            values = self._stage(scorer, cands, VALUE, s_text, self.value_steps, lambda o, k: base[o // n] + o % n + k,
                                 outer=b * n, per_obs=n, read=read_value)
            values = values.view(b, n, v).to(torch.float32)
        else:
            # rows (b, i, j): future j of candidate i, seed + i + j
            futures = self._stage(scorer, cands, WORLD_MODEL, s_text, self.future_steps,
                                  lambda o, j: base[o // n] + o % n + j, outer=b * n, per_obs=n)
            # rows (b, i, j, k): value k of future j, seed + i + j + k
            values = self._stage(scorer, futures, VALUE, s_text, self.value_steps,
                                 lambda o, k: base[o // (n * f)] + (o // f) % n + o % f + k, outer=b * n * f,
                                 per_obs=n * f, read=read_value)
            values = values.view(b, n, f * v).to(torch.float32)
        scores = aggregate_values(values.flatten(0, 1), self.aggregation, self.threshold).view(b, n)
        depth_scores = [scores]
        for depth in range(1, self.search_depth):
            if depth == 1:
                state = futures.view(b * n, f, *futures.shape[1:])[:, 0]  # each candidate's first imagined future
            d_scores, state = self._deeper(model, scorer, state, text, s_text, steps, base, depth, b)
            depth_scores.append(d_scores)
        if self.depth_aggregation == "average":
            scores = torch.stack(depth_scores).mean(dim=0)
        else:
            scores = depth_scores[-1]
        scores = scores.to(cands.device)
        best = scores.argmax(dim=1)  # the first of equal maxima
        if self.keep_base_unless_better:
            best = torch.where(scores.gather(1, best[:, None])[:, 0] > scores[:, 0], best, torch.zeros_like(best))
        cands = cands.view(b, n, *cands.shape[1:])
        latents = cands[torch.arange(b, device=best.device), best]
        spec = model.spec
        actions = model.read_outputs(cands.flatten(0, 1))["actions"].view(b, n, spec.chunk_size, spec.action_dim)
        extra = {"depth_scores": torch.stack(depth_scores, dim=-1).to(cands.device)} if self.search_depth > 1 else {}
        if futures is not None:
            extra["candidate_futures"] = futures.view(b, n, f, *futures.shape[1:])
        return {**model.read_outputs(latents), "latents": latents, "plan_scores": scores, "plan_choice": best.long(), **extra,
                "candidate_actions": actions, "candidate_values": values.to(cands.device)}
