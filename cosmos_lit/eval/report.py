"""The report of a protocol run: success per task, suite and run seed, a table, and the JSON file.

The JSON report holds ``benchmark``, ``summary`` (:func:`summarize_episodes`), ``protocol`` (the resolved
:class:`~cosmos_lit.eval.protocols.Protocol`), ``meta`` (weights, device, precision, steps, the command line) and one
record per episode; it is written atomically (``cosmos_lit.io.write_json_atomic``), so a reader never sees half of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cosmos_lit.io import write_json_atomic


def _rate(values: list[bool]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def summarize_episodes(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and per-suite success (errors excluded, but counted), per-seed suite rates, average over suites."""
    suites: dict[str, Any] = {}
    for ep in episodes:
        s = suites.setdefault(ep["suite"], {"tasks": {}, "_seeds": {}, "_all": []})
        t = s["tasks"].setdefault(str(ep["task"]), {"_ok": [], "errors": 0, "instruction": ep.get("instruction")})
        if ep["error"] is not None:
            t["errors"] += 1
            continue
        t["_ok"].append(bool(ep["success"]))
        s["_all"].append(bool(ep["success"]))
        s["_seeds"].setdefault(str(ep["run_seed"]), []).append(bool(ep["success"]))
    for s in suites.values():
        for t in s["tasks"].values():
            ok = t.pop("_ok")
            t.update(success_rate=_rate(ok), episodes=len(ok))
        per_seed = {k: _rate(v) for k, v in s.pop("_seeds").items()}
        ok = s.pop("_all")
        rates = [r for r in per_seed.values() if r is not None]
        mean = sum(rates) / len(rates) if rates else None
        s.update(success_rate=_rate(ok), episodes=len(ok), errors=sum(t["errors"] for t in s["tasks"].values()),
                 per_seed=per_seed,
                 std_over_seeds=math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates)) if rates else None)
    suite_rates = [s["success_rate"] for s in suites.values() if s["success_rate"] is not None]
    return {"suites": suites, "average": sum(suite_rates) / len(suite_rates) if suite_rates else None}


def build_report(benchmark: str, episodes: list[dict[str, Any]], protocol: dict[str, Any],
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"benchmark": benchmark, "summary": summarize_episodes(episodes), "protocol": protocol, "meta": meta or {},
            "episodes": episodes}


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """The JSON report at ``path``, atomically."""
    write_json_atomic(path, report)


def print_table(summary: dict[str, Any], title: str) -> None:
    """Success per task and suite (± the spread over run seeds), and the average over suites."""
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(title=title)
    for col in ("suite", "task", "success", "episodes", "errors"):
        table.add_column(col, justify="left" if col in ("suite", "task") else "right")
    for name, s in summary["suites"].items():
        for task, t in s["tasks"].items():
            label = f"{task}: {t['instruction']}" if t.get("instruction") and t["instruction"] != task else task
            table.add_row(name, label, pct(t["success_rate"]), str(t["episodes"]), str(t["errors"]))
        std = f" ± {100 * s['std_over_seeds']:.1f}" if s["std_over_seeds"] is not None and len(s["per_seed"]) > 1 else ""
        table.add_row(f"[bold]{name}[/bold]", "[bold]all tasks[/bold]", f"[bold]{pct(s['success_rate'])}{std}[/bold]",
                      str(s["episodes"]), str(s["errors"]), end_section=True)
    table.add_row("[bold]average[/bold]", "over suites", f"[bold]{pct(summary['average'])}[/bold]", "", "")
    Console().print(table)
