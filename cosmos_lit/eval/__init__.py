"""Closed-loop evaluation: rollouts, benchmark protocols, released-checkpoint loading, reports.

- :mod:`~cosmos_lit.eval.rollouts`: episodes of a policy in simulator worker processes (``run_episodes``), their
  summary and JSON (``summarize``, ``save_results``), mp4 videos (``write_video``); the training-time
  ``SimEvalCallback`` uses these too.
- :mod:`~cosmos_lit.eval.protocols`: ``configs/protocol/<benchmark>.yaml`` composed into a :class:`Protocol` and
  :class:`RunOptions` (``load``, ``load_protocol``), the plan of jobs and episode seeds (``plan_jobs``).
- :mod:`~cosmos_lit.eval.released`: ``CosmosPolicyModel``s from NVIDIA's released checkpoint folders
  (``model_from_released``) and toy-size stand-ins (``tiny_random_model``).
- :mod:`~cosmos_lit.eval.report`: success per task / suite / seed, the table, the JSON report.
- :mod:`~cosmos_lit.eval.run`: the ``python -m cosmos_lit eval --config configs/protocol/<benchmark>.yaml`` verb.
- :mod:`~cosmos_lit.rollout_files`: rollout files in the Cosmos Policy layout (one HDF5 per episode) and the
  ``index.json`` of a rollout folder; :mod:`~cosmos_lit.eval.collect`: the ``python -m cosmos_lit collect`` verb.
"""

from cosmos_lit.eval.protocols import (
    EPISODE_SEED_STRIDE,
    Job,
    Protocol,
    RunOptions,
    episode_seed,
    load,
    load_protocol,
    plan_jobs,
    policy_image_pipeline,
)
from cosmos_lit.eval.released import (
    TINY_BACKBONE,
    TINY_IMAGE_ENCODER,
    model_from_released,
    released_model_config,
    tiny_random_model,
)
from cosmos_lit.eval.report import print_table, summarize_episodes, write_report
from cosmos_lit.eval.rollouts import run_episodes, save_results, summarize, write_video
from cosmos_lit.eval.run import USAGE, evaluate, policy_for, run_protocol

__all__ = [
    "EPISODE_SEED_STRIDE", "Job", "Protocol", "RunOptions", "TINY_BACKBONE", "TINY_IMAGE_ENCODER", "USAGE", "episode_seed",
    "evaluate", "load", "load_protocol", "model_from_released", "plan_jobs", "policy_for", "policy_image_pipeline",
    "print_table", "released_model_config", "run_episodes", "run_protocol", "save_results", "summarize",
    "summarize_episodes", "tiny_random_model", "write_report", "write_video",
]
