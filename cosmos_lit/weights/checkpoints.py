"""Files of a released Cosmos Policy checkpoint directory, and its dataset statistics.

A user downloads ``nvidia/Cosmos-Policy-{LIBERO,RoboCasa,ALOHA}-Predict2-2B`` (e.g. ``huggingface-cli download
nvidia/Cosmos-Policy-LIBERO-Predict2-2B --local-dir DIR``) and points the config at DIR; nothing is fetched here.
Expected contents (docs/released_checkpoints.md#files)::

    Cosmos-Policy-LIBERO-Predict2-2B.pt       the DiT (flat ``net.*`` state dict)
    libero_dataset_statistics.json           {actions,proprio}_{min,max,mean,std,median} of the demos
    libero_t5_embeddings.pkl                 {instruction: T5 embedding (1, 512, 1024)} (pickle)

A Hugging Face cache folder (``models--nvidia--Cosmos-Policy-...``) is accepted too; its ``refs/main`` snapshot is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCHMARKS = {"libero": "LIBERO", "robocasa": "RoboCasa", "aloha": "ALOHA"}
STAT_GROUPS = ("actions", "proprio")
STAT_NAMES = ("min", "max", "mean", "std", "median")


def hf_repo(benchmark: str) -> str:
    """Hugging Face repository of the released policy for ``benchmark`` (libero / robocasa / aloha)."""
    return f"nvidia/Cosmos-Policy-{BENCHMARKS[benchmark]}-Predict2-2B"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """Paths of one released Cosmos Policy checkpoint."""

    root: Path
    benchmark: str
    weights: Path
    dataset_statistics: Path
    t5_embeddings: Path

    @property
    def hf_repo(self) -> str:
        return hf_repo(self.benchmark)


@dataclass(frozen=True)
class DatasetStatistics:
    """Per-dimension statistics of actions and proprio (float64 arrays of shape (d,), as the official code loads them)."""

    actions_min: np.ndarray
    actions_max: np.ndarray
    actions_mean: np.ndarray
    actions_std: np.ndarray
    actions_median: np.ndarray
    proprio_min: np.ndarray
    proprio_max: np.ndarray
    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    proprio_median: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def action_dim(self) -> int:
        return int(self.actions_min.shape[0])

    @property
    def proprio_dim(self) -> int:
        return int(self.proprio_min.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        out = {f"{g}_{s}": getattr(self, f"{g}_{s}") for g in STAT_GROUPS for s in STAT_NAMES}
        out.update(self.extra)
        return out


def load_dataset_statistics(path: str | Path) -> DatasetStatistics:
    """Parse a ``*_dataset_statistics.json`` (keys ``{actions,proprio}_{min,max,mean,std,median}``, lists of numbers)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset statistics not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of statistics, got {type(raw).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: key '{key}' is not a list of numbers") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: key '{key}' has non-finite values")
        arrays[key] = arr
    for group in STAT_GROUPS:
        dims = set()
        for name in STAT_NAMES:
            key = f"{group}_{name}"
            if key not in arrays:
                raise ValueError(f"{path}: missing key '{key}' (expected {{actions,proprio}}_{{{','.join(STAT_NAMES)}}})")
            if arrays[key].ndim != 1:
                raise ValueError(f"{path}: key '{key}' has shape {arrays[key].shape}, expected a 1-D list")
            dims.add(arrays[key].shape[0])
        if len(dims) != 1:
            raise ValueError(f"{path}: the {group}_* statistics have different lengths {sorted(dims)}")
    named = {f"{g}_{s}": arrays.pop(f"{g}_{s}") for g in STAT_GROUPS for s in STAT_NAMES}
    return DatasetStatistics(**named, extra=arrays)


def _snapshot(path: Path) -> Path:
    """The ``refs/main`` snapshot of a Hugging Face cache repo folder; other paths unchanged."""
    ref = path / "refs" / "main"
    if path.name.startswith("models--") and ref.is_file():
        snap = path / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    return path


def _guess_benchmark(root: Path) -> str | None:
    name = root.name.lower()
    if root.name.startswith("models--") or "snapshots" in root.parts:
        name = " ".join(p.lower() for p in root.parts)
    hits = [b for b in BENCHMARKS if f"cosmos-policy-{b}" in name]
    if len(hits) == 1:
        return hits[0]
    hits = [b for b in BENCHMARKS if (root / f"{b}_dataset_statistics.json").is_file()]
    return hits[0] if len(hits) == 1 else None


def _need(path: Path, what: str, repo: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent}: missing {path.name} ({what}); it comes with the Hugging Face repo {repo} "
            f"(download it with `huggingface-cli download {repo} --local-dir {path.parent}`)"
        )
    return path


def locate_released_checkpoint(directory: str | Path, benchmark: str | None = None) -> ReleasedCheckpoint:
    """Find the weights, dataset statistics and T5 cache of a downloaded released Cosmos Policy checkpoint.

    Args:
        directory: the downloaded repo folder (or its Hugging Face cache folder).
        benchmark: libero / robocasa / aloha; guessed from the folder or file names when None.

    Raises:
        FileNotFoundError: the folder or one of the three files is missing (names the file and the HF repo).
        ValueError: unknown benchmark, or several candidate weight files.
    """
    root = _snapshot(Path(directory).expanduser())
    if not root.is_dir():
        raise FileNotFoundError(
            f"released checkpoint folder not found: {root} (download one of "
            f"{', '.join(hf_repo(b) for b in BENCHMARKS)} there)"
        )
    benchmark = (benchmark or _guess_benchmark(root) or "").lower()
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"{root}: cannot tell which released checkpoint this is; pass benchmark= one of {', '.join(BENCHMARKS)}"
        )
    repo = hf_repo(benchmark)
    weights = root / f"{repo.split('/')[1]}.pt"
    if not weights.is_file():
        pts = sorted(root.glob("*.pt"))
        if len(pts) > 1:
            raise ValueError(f"{root}: several .pt files ({', '.join(p.name for p in pts)}); expected {weights.name}")
        weights = pts[0] if pts else weights
    return ReleasedCheckpoint(
        root=root,
        benchmark=benchmark,
        weights=_need(weights, "policy weights", repo),
        dataset_statistics=_need(root / f"{benchmark}_dataset_statistics.json", "action/proprio statistics", repo),
        t5_embeddings=_need(root / f"{benchmark}_t5_embeddings.pkl", "T5 embeddings of the task instructions", repo),
    )
