"""Learning from experience in one command: collect rollouts -> refine -> evaluate with planning (docs/method.md).

    python scripts/experience_loop.py --base runs/r/checkpoints/last.ckpt --run-dir runs/experience_r

Stages, each a ``python -m cosmos_lit`` job whose artefacts stay in ``--run-dir``; a stage that finished is skipped
when the command is run again (resumable: its ``<stage>/stage.json`` is written, atomically, only after the job
exits 0), so a killed loop continues where it stopped:

1. ``rollouts/``: ``collect`` with the base policy on seeds from ``--rollout-seed0`` (disjoint from the demos'
   and the evaluation's), one HDF5 per episode + index.json;
2. ``refine/``: ``refine`` from the base checkpoint on its demos + those rollouts (``configs/experience/<data>.yaml``:
   10% demonstrations, successes and failures balanced, V(s') from s' alone);
3. ``eval_base/``, ``eval_base_planning/``, ``eval_refined_planning/``: ``validate`` on the same ``--eval-episodes``
   seeds from ``--eval-seed0``: the base policy alone; best-of-N with the base model as its own world model and
   value function; best-of-N with the base policy proposing and the refined model imagining and scoring ("dual
   deployment", ``planner.planning_checkpoint``);
4. ``report.md``: one row per evaluation (episodes, successes, mean max reward, candidates, wall time per chunk).

Defaults are the ALOHA-sim CPU scale of the README's experiment; every stage's extra overrides can be given with
``--collect-args``, ``--refine-args``, ``--eval-args`` (space-separated ``key=value``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cosmos_lit.io import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


def stage(run_dir: Path, name: str, args: list[str]) -> Path:
    """Run ``python -m cosmos_lit ARGS`` once for stage ``name`` (skipped when its stage.json exists)."""
    out = run_dir / name
    marker = out / "stage.json"
    if marker.is_file():
        print(f"[{name}] done before ({marker}); skipped", flush=True)
        return out
    cmd = [sys.executable, "-m", "cosmos_lit", *args]
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"experience_loop: stage {name} failed (exit {rc}); fix it and run the same command again")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"command": cmd, "seconds": round(time.monotonic() - t0, 1)})
    return out


def episodes(eval_dir: Path) -> list[dict[str, Any]]:
    found = sorted(eval_dir.glob("eval/step_*/episodes_rank*.json"))
    if not found:
        raise SystemExit(f"experience_loop: no episode results under {eval_dir}/eval/")
    data = json.loads(found[-1].read_text())
    return list(data["episodes"] if isinstance(data, dict) else data)


def row(name: str, eval_dir: Path, candidates: int) -> str:
    eps = [e for e in episodes(eval_dir) if not e.get("error")]
    n, wins = len(eps), sum(bool(e["success"]) for e in eps)
    max_reward = sum(float(e["max_reward"]) for e in eps) / max(n, 1)
    chunks = sum(max(len(e.get("predicted_values") or []), 1) for e in eps)
    per_chunk = sum(float(e["seconds"]) for e in eps) / max(chunks, 1)
    return (f"| {name} | {n} | {wins}/{n} ({100.0 * wins / max(n, 1):.0f}%) | {max_reward:.2f} | {candidates} | "
            f"{per_chunk:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base policy checkpoint (a fit of ours)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--rollouts", type=int, default=100, help="rollout episodes to collect")
    p.add_argument("--rollout-seed0", type=int, default=200000)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--eval-seed0", type=int, default=100000)
    p.add_argument("--candidates", type=int, default=4, help="best-of-N candidates (the official ALOHA setting: 8)")
    p.add_argument("--workers", type=int, default=2, help="simulator processes per stage")
    p.add_argument("--seed", type=int, default=0, help="training seed of the refine stage")
    p.add_argument("--collect-args", default="", help="extra key=value overrides of the collect stage")
    p.add_argument("--refine-args", default="", help="extra key=value overrides of the refine stage")
    p.add_argument("--eval-args", default="", help="extra key=value overrides of every evaluation")
    args = p.parse_args(argv)
    base = Path(args.base).resolve()
    if not base.is_file():
        raise SystemExit(f"experience_loop: --base: checkpoint not found: {base}")
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    rollouts = stage(run_dir, "rollouts", [
        "collect", f"ckpt_path={base}", f"eval.num_episodes={args.rollouts}", f"eval.seed0={args.rollout_seed0}",
        f"eval.num_workers={args.workers}", f"out={run_dir / 'rollouts'}", *shlex.split(args.collect_args)])
    refine = stage(run_dir, "refine", [
        "refine", f"ckpt_path={base}", f"data.rollout_dir={rollouts}", f"run_dir={run_dir / 'refine'}",
        f"seed={args.seed}", f"eval.num_workers={args.workers}", *shlex.split(args.refine_args)])
    refined = refine / "checkpoints" / "last.ckpt"
    if not refined.is_file():
        raise SystemExit(f"experience_loop: the refine stage left no checkpoint at {refined}")
    common = [f"eval.num_episodes={args.eval_episodes}", f"eval.seed0={args.eval_seed0}",
              f"eval.num_workers={args.workers}", "eval.num_videos=0", "eval.time_budget_s=null",
              *shlex.split(args.eval_args)]
    planning = ["planner=best_of_n", f"planner.num_candidates={args.candidates}"]
    evals = [
        ("base policy", "eval_base", [], 1),
        ("base + planning (base model scores)", "eval_base_planning", planning, args.candidates),
        ("base + planning with the refined model (dual deployment)", "eval_refined_planning",
         [*planning, f"planner.planning_checkpoint={refined}"], args.candidates),
    ]
    rows = []
    for title, name, extra, n in evals:
        out = stage(run_dir, name, ["validate", f"ckpt_path={base}", f"run_dir={run_dir / name}", *common, *extra])
        rows.append(row(title, out, n))
    report = [f"# Learning from experience: {base.name}", "",
              f"base `{base}`; {args.rollouts} rollouts from seed {args.rollout_seed0}; evaluation seeds "
              f"{args.eval_seed0}..{args.eval_seed0 + args.eval_episodes - 1}", "",
              "| policy | episodes | success | mean max reward | candidates | s / chunk (episode wall time / queries) |",
              "|---|---:|---:|---:|---:|---:|", *rows, ""]
    write_text_atomic(run_dir / "report.md", "\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
