"""Planners: turn the model's predictions into the action chunk to execute.

- ``none``: the direct policy, one parallel-decoding sample of all generated frames (the paper's main setting).
- ``best_of_n``: model-based planning (docs/method.md#best-of-n-planning). For each of N candidates (seed = base + i): sample an
  action chunk with the policy model, imagine ``num_futures`` futures s' with the world model (the action frame now
  conditioning), predict ``num_values`` values V(s') per future with the value function (everything but the value
  frame conditioning), aggregate the ensemble, and execute the best candidate's chunk. Step counts per stage follow
  the official autoregressive decoding (linspace(1, 5, futures) / linspace(1, 5, values) by default).
  A separate planning model (the rollout-fine-tuned checkpoint) can score the candidates: ``planning_checkpoint``.

A planner is a LightningModule so it can run alone through ``predict_step`` on batches of observations, given the
model it plans with (``planner.attach(model)``). It talks to the model only (``cosmos_lit.model``), never to a task.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from cosmos_lit.layout import VALUE, WORLD_MODEL
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.registry import ConfigError, register


def aggregate_values(values: torch.Tensor, scheme: str = "majority_mean", threshold: float = 0.05) -> torch.Tensor:
    """Aggregate an ensemble of [0, 1] values (B, E) -> (B,).

    ``majority_mean``: if at least half the predictions exceed ``threshold``, the mean of those, else 0.
    ``average``: mean. ``lcb``: mean − std. ``success_vote``: fraction above ``threshold``.
    """
    if scheme == "average":
        out = values.mean(dim=1)
    elif scheme == "lcb":
        out = values.mean(dim=1) - values.std(dim=1, unbiased=False)
    elif scheme == "success_vote":
        out = (values > threshold).float().mean(dim=1)
    elif scheme == "majority_mean":
        ok = values > threshold
        frac = ok.float().mean(dim=1)
        mean_ok = (values * ok).sum(dim=1) / ok.sum(dim=1).clamp_min(1)
        out = torch.where(frac >= 0.5, mean_ok, torch.zeros_like(mean_ok))
    else:
        raise ConfigError(f"planner.aggregation: unknown scheme '{scheme}'; expected majority_mean, average, lcb or success_vote")
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
             seed: int = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@register("planner", "none")
class DirectPolicy(Planner):
    """No planning: execute the policy's own sample (parallel decoding)."""

    @torch.no_grad()
    def plan(self, model: CosmosPolicyModel, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
             seed: int = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        return model.predict(current_images, proprio, instructions, num_steps=num_steps, seed=seed)


@register("planner", "best_of_n")
class BestOfN(Planner):
    """Best-of-N over imagined futures and values (V(s') by default).

    Args:
        num_candidates: N action chunks sampled from the policy.
        num_futures: world-model samples per candidate.
        num_values: value samples per future.
        action_steps: denoising steps of the policy sample when a call passes none (10 in the official planning
            setting); a per-call ``num_steps`` (``eval.num_steps``) wins.
        future_steps / value_steps: step counts per ensemble member; default linspace(1, 5, n) as the official code.
        aggregation: value ensemble aggregation (see ``aggregate_values``).
        keep_base_unless_better: execute candidate 0 unless another is strictly better ("seed switching").
        planning_checkpoint: optional path of a separate (rollout-fine-tuned) model used for futures and values.
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
    ):
        super().__init__()
        if num_candidates < 1 or num_futures < 1 or num_values < 1:
            raise ConfigError("planner: num_candidates, num_futures and num_values must be >= 1")
        aggregate_values(torch.zeros(1, 2), aggregation)  # validate the scheme name early
        self.num_candidates = num_candidates
        self.num_futures = num_futures
        self.num_values = num_values
        self.action_steps = action_steps
        self.future_steps = list(future_steps) if future_steps else np.linspace(1, 5, num_futures).astype(int).tolist()
        self.value_steps = list(value_steps) if value_steps else np.linspace(1, 5, num_values).astype(int).tolist()
        if len(self.future_steps) != num_futures or len(self.value_steps) != num_values:
            raise ConfigError("planner.future_steps / value_steps: one step count per ensemble member expected")
        self.aggregation = aggregation
        self.threshold = threshold
        self.keep_base_unless_better = keep_base_unless_better
        self.planning_checkpoint = planning_checkpoint
        self._planning_model: CosmosPolicyModel | None = None

    def _scorer(self, model: CosmosPolicyModel) -> CosmosPolicyModel:
        """The model that imagines futures and predicts values: ``planning_checkpoint``'s, else the policy's."""
        if self.planning_checkpoint is None:
            return model
        if self._planning_model is None:
            from cosmos_lit.checkpoint import load_model

            self._planning_model = load_model(self.planning_checkpoint, map_location=model.device)
        return self._planning_model

    @torch.no_grad()
    def plan(self, model: CosmosPolicyModel, current_images: torch.Tensor, proprio: torch.Tensor, instructions: list[str],
             seed: int = 0, num_steps: int | None = None) -> dict[str, torch.Tensor]:
        if not model.layout.has_value:
            raise ConfigError("planner=best_of_n needs a value frame (model/value_head=frame)")
        scorer = self._scorer(model)
        b = proprio.shape[0]
        text = model.text_encoder(instructions)
        s_text = scorer.text_encoder(instructions)
        cond, mask = model.policy_condition(current_images, proprio)
        wm_mask = scorer.condition_mask(WORLD_MODEL, b)  # policy prefix + the sampled action frame are clean
        v_mask = scorer.condition_mask(VALUE, b)
        steps = self.action_steps if num_steps is None else num_steps
        cand_latents, cand_scores = [], []
        for i in range(self.num_candidates):
            latents = model.sample(cond, mask, text, num_steps=steps, seed=seed + i)
            vals = []
            for j, f_steps in enumerate(self.future_steps):
                fut = scorer.sample(latents, wm_mask, s_text, num_steps=f_steps, seed=seed + i + j)
                for k, v_steps in enumerate(self.value_steps):
                    val_lat = scorer.sample(fut, v_mask, s_text, num_steps=v_steps, seed=seed + i + j + k)
                    vals.append(scorer.value_head.read(val_lat[:, :, scorer.layout.value]))
            cand_scores.append(aggregate_values(torch.stack(vals, dim=1), self.aggregation, self.threshold))
            cand_latents.append(latents)
        scores = torch.stack(cand_scores, dim=1)  # (B, N)
        best = scores.argmax(dim=1)
        if self.keep_base_unless_better:
            best = torch.where(scores.gather(1, best[:, None])[:, 0] > scores[:, 0], best, torch.zeros_like(best))
        latents = torch.stack(cand_latents, dim=1)[torch.arange(b, device=best.device), best]
        return {**model.read_outputs(latents), "latents": latents, "plan_scores": scores, "plan_choice": best}
