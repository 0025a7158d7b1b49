"""``python -m cosmos_lit check-data --config FILE [overrides]``: decode every frame of every episode of the config's
DataModule and report every bad one.

The DataModule is built from the config's ``data`` node as ``fit`` would build it (without ``prepare_data``: nothing
is generated or downloaded), then ``EpisodeDataModule.check_frames`` reads each episode's vectors and every frame of
every camera, with a progress bar on stderr. Every bad episode or frame is one line on stdout (file, camera, frame
index or range, why); the exit status is 1 when there is any, 0 otherwise (2 for a config or folder error, as for
the other verbs).
"""

from __future__ import annotations

import sys
from typing import Any

from cosmos_lit.config import CliError, compose, resolve

USAGE = "python -m cosmos_lit check-data --config configs/aloha.yaml [data.data_dir=DIR] [other overrides]"


def build_checked_datamodule(cfg: dict[str, Any]) -> Any:
    """The config's DataModule (one clear line for a missing node, an unknown name or one that cannot be checked)."""
    from cosmos_lit.registry import build

    data = cfg.get("data")
    if not isinstance(data, dict) or not data:
        raise CliError("data: missing (pick one with data=<option>, e.g. data=aloha)")
    dm = build(data, "datamodule", path="data")
    if not callable(getattr(dm, "check_frames", None)):
        raise CliError(f"data.name: '{data.get('name')}' is not an episode DataModule (no check_frames); check-data "
                       "reads EpisodeDataModule subclasses")
    return dm


def check(dm: Any, show_progress: bool = True, out: Any = None) -> int:
    """Run ``dm.check_frames`` with a rich progress bar and print the report; 1 when a frame is bad, else 0."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = out or sys.stdout
    progress = Progress(TextColumn("check-data"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                        TimeRemainingColumn(), console=Console(stderr=True), disable=not show_progress, transient=True)
    with progress:
        bar = progress.add_task("frames", total=None)

        def advance(n: int, total: int | None) -> None:
            if total is not None:
                progress.update(bar, total=total)
            if n:
                progress.advance(bar, n)

        problems, counts = dm.check_frames(progress=advance)
    cameras = ", ".join(dm.cameras)
    where = f"{counts['episodes']} episode(s), {counts['frames']} frames, cameras {cameras}"
    if not problems:
        print(f"check-data: no bad frame ({where})", file=out)
        return 0
    bad = {p.episode for p in problems}
    frames = sum(p.frames[1] - p.frames[0] + 1 for p in problems if p.frames is not None)
    print(f"check-data: {len(problems)} problem(s) in {len(bad)} of {counts['episodes']} episode(s) ({frames} bad "
          f"frame(s); {where}):", file=out)
    for p in problems:
        print(f"  {p.line()}", file=out)
    return 1


def main(config: str | None, overrides: list[str], print_only: bool = False) -> int:
    """The ``check-data`` verb; returns the exit status."""
    if not config:
        raise CliError(f"check-data: needs --config FILE (its data node is checked); usage: {USAGE}")
    cfg_node, _ = compose(config, overrides)
    cfg = resolve(cfg_node)
    if print_only:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.create({"data": cfg.get("data")})))
        return 0
    return check(build_checked_datamodule(cfg))


__all__ = ["USAGE", "build_checked_datamodule", "check", "main"]
