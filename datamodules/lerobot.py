"""LeRobotDataset DataModule: parquet frames + mp4 videos as ``huggingface/lerobot`` writes them (v3.0, v2.1, v2.0).

Layout (``src/lerobot/datasets/utils.py``, ``dataset_metadata.py``, ``dataset_writer.py``)::

    meta/info.json        codebase_version, fps, features {key: {dtype, shape, names, info}}, data_path, video_path,
                          chunks_size
    meta/stats.json       per-feature min/max/mean/std (not used: statistics are computed over the demos, as for
                          every DataModule, and cached as dataset_statistics.json)
    v3.0  meta/tasks.parquet                       task (pandas index), task_index
          meta/episodes/chunk-*/file-*.parquet     episode_index, tasks, length, data/{chunk,file}_index,
                                                   dataset_{from,to}_index, videos/<key>/{chunk_index, file_index,
                                                   from_timestamp, to_timestamp}
          data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet          many episodes per file
          videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4  episodes concatenated
    v2.x  meta/tasks.jsonl {task_index, task}, meta/episodes.jsonl {episode_index, tasks, length}
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4

Features become the spec: every ``video`` / ``image`` feature is a camera (``cameras`` picks and orders them, by
full key or by the part after ``observation.images.``; default: all, in info.json order), ``state_key``
(``observation.state``) is the proprio, ``action_key`` (``action``) the action; fps comes from info.json.
A frame of a video feature is the video frame at ``(from_timestamp + timestamp) · video.fps``; decoding uses
decord when installed, else PyAV (``cosmos_lit.video``; ``video_backend`` forces one — decord cannot decode AV1,
LeRobot's default codec, so ``auto`` picks PyAV for AV1 videos). Image features are PNG/JPEG bytes in the parquet.

The instruction of an episode is the task of its first frame (``task_index`` -> tasks), else the first entry of
the episode's ``tasks``. Rollouts (``rollout_dir``: another LeRobotDataset) need a success flag per episode: an
episodes-metadata column ``success``, else the frame feature ``next.success`` (any True = success).
"""

from __future__ import annotations

import glob
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_lit.datamodules.base import EpisodeDataModule, EpisodeReader, EpisodeRef, MissingKeyError, missing_data_dir
from cosmos_lit.images import decode_image
from cosmos_lit.registry import ConfigError, register

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
CAMERA_PREFIX = "observation.images."
INFO_PATH = "meta/info.json"


# ----------------------------------------------------------------------------------------------------------------
# Metadata


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LeRobot metadata file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not valid JSON ({e})") from None
    return rows


def _read_parquet_rows(paths: Sequence[str], skip_prefix: str = "stats/") -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            schema = pq.read_schema(path)
            table = pq.read_table(path, columns=[n for n in schema.names if not n.startswith(skip_prefix)])
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError
            raise ValueError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
        rows += table.to_pylist()
    return rows


def read_info(info_path: str) -> dict[str, Any]:
    """``meta/info.json``, checked: a JSON object with codebase_version, fps, data_path and a features mapping of
    {key: {dtype, shape, ...}}; one clear error naming the file and the key otherwise."""
    info = _read_json(info_path)
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected a JSON object (LeRobot's info.json), got {type(info).__name__}")
    for key in ("codebase_version", "fps", "features", "data_path"):
        if key not in info:
            raise MissingKeyError(f"{info_path}: missing key '{key}' (expected a LeRobotDataset info.json)")
    features = info["features"]
    if not isinstance(features, dict) or not all(isinstance(ft, dict) and "dtype" in ft for ft in features.values()):
        raise ValueError(f"{info_path}: key 'features' must map each feature name to {{dtype, shape, ...}}")
    return info


def load_metadata(root: str) -> dict[str, Any]:
    """info, tasks (index -> text) and episode rows of the LeRobotDataset at ``root``; one clear error otherwise."""
    info_path = os.path.join(root, INFO_PATH)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"{root}: missing {INFO_PATH} (expected a LeRobotDataset folder written by lerobot)")
    info = read_info(info_path)
    version = str(info["codebase_version"])
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{info_path}: codebase_version '{version}' is not supported; expected one of {SUPPORTED_VERSIONS}")
    if version == "v3.0":
        tasks_path = os.path.join(root, "meta/tasks.parquet")
        if not os.path.isfile(tasks_path):
            raise FileNotFoundError(f"LeRobot metadata file not found: {tasks_path}")
        task_rows = _read_parquet_rows([tasks_path])
        text_key = next((k for k in ("task", "__index_level_0__") if task_rows and k in task_rows[0]), None)
        if task_rows and (text_key is None or "task_index" not in task_rows[0]):
            raise MissingKeyError(f"{tasks_path}: expected columns 'task' and 'task_index', got {list(task_rows[0])}")
        tasks = {int(r["task_index"]): str(r[text_key]) for r in task_rows}
        episode_files = sorted(glob.glob(os.path.join(root, "meta/episodes/*/*.parquet")))
        if not episode_files:
            raise FileNotFoundError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (LeRobotDataset v3.0 episodes)")
        episodes = _read_parquet_rows(episode_files)
    else:
        tasks = {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(os.path.join(root, "meta/tasks.jsonl"))}
        episodes = _read_jsonl(os.path.join(root, "meta/episodes.jsonl"))
    for row in episodes:
        if "episode_index" not in row:
            raise MissingKeyError(f"{root}: episode metadata row without 'episode_index': {sorted(row)}")
    episodes.sort(key=lambda r: int(r["episode_index"]))
    return {"root": root, "info": info, "version": version, "tasks": tasks, "episodes": episodes}


def camera_features(info: dict[str, Any]) -> list[str]:
    return [k for k, ft in info["features"].items() if ft.get("dtype") in ("video", "image")]


def _video_codec(feature: dict[str, Any]) -> str:
    meta = feature.get("info") or feature.get("video_info") or {}
    return str(meta.get("video.codec", "")).lower()


def episode_files(meta: dict[str, Any], row: dict[str, Any], cameras: dict[str, str]) -> dict[str, Any]:
    """Data file and per-camera (video file, from_timestamp, fps) of one episode row."""
    info, root, ep = meta["info"], meta["root"], int(row["episode_index"])
    chunks = int(info.get("chunks_size", 1000))
    fmt = {"episode_chunk": ep // chunks, "episode_index": ep}
    where = f"{root} episode {ep}"
    if meta["version"] == "v3.0":
        for key in ("data/chunk_index", "data/file_index"):
            if key not in row:
                raise MissingKeyError(f"{where}: episode metadata has no '{key}'")
        fmt = {"chunk_index": int(row["data/chunk_index"]), "file_index": int(row["data/file_index"])}
    data = os.path.join(root, info["data_path"].format(**fmt))
    videos = {}
    for name, key in cameras.items():
        ft = info["features"][key]
        if ft["dtype"] != "video":
            continue
        if not info.get("video_path"):
            raise MissingKeyError(f"{os.path.join(root, INFO_PATH)}: feature '{key}' is a video but 'video_path' is not set")
        if meta["version"] == "v3.0":
            cols = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
            missing = [c for c in cols if c not in row]
            if missing:
                raise MissingKeyError(f"{where}: episode metadata has no '{missing[0]}'")
            path = info["video_path"].format(video_key=key, chunk_index=int(row[cols[0]]), file_index=int(row[cols[1]]))
            start = float(row[cols[2]])
        else:
            path = info["video_path"].format(video_key=key, episode_chunk=ep // chunks, episode_index=ep)
            start = 0.0
        fps = float((ft.get("info") or ft.get("video_info") or {}).get("video.fps", info["fps"]))
        videos[name] = (os.path.join(root, path), start, fps, _video_codec(ft))
    return {"root": root, "data": data, "episode_index": ep, "videos": videos}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_stored_image(data: bytes) -> np.ndarray:
    """PNG (LeRobot's embedded image features) or JPEG bytes -> uint8 RGB (H, W, 3).

    PNG goes through Pillow: once decord is loaded, its bundled zlib 1.2.3 shadows the one OpenCV's libpng needs
    and ``cv2.imdecode`` fails on every PNG ("bad parameters to zlib").
    """
    if bytes(data[:8]) != PNG_SIGNATURE:
        return decode_image(data)
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"corrupt PNG bytes ({len(data)} bytes): {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# Per-process parquet cache


def _file_stamp(path: str) -> tuple[int, int]:
    """(size, modification time) of a file: a rewritten file is read again, never served from the cache."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return st.st_size, st.st_mtime_ns


class _ParquetCache:
    """Per-process cache of a few parquet files' small columns and of image row groups (LRU), keyed by each file's
    path, size and modification time."""

    def __init__(self, max_files: int = 8, max_row_groups: int = 4):
        self.pid = os.getpid()
        self.columns: OrderedDict[tuple[str, tuple[int, int], tuple[str, ...]], dict[str, np.ndarray]] = OrderedDict()
        self.row_groups: OrderedDict[tuple[str, tuple[int, int], int, str], Any] = OrderedDict()
        self.max_files, self.max_row_groups = max_files, max_row_groups

    def _fresh(self) -> None:
        if os.getpid() != self.pid:
            self.__init__(self.max_files, self.max_row_groups)

    def read_columns(self, path: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        """name -> numpy array ((n,) scalars or (n, d) fixed-size lists); absent columns are left out."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._fresh()
        key = (path, _file_stamp(path), tuple(names))
        if key not in self.columns:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"LeRobot data file not found: {path}")
            try:
                schema = pq.read_schema(path)
                present = [n for n in names if n in schema.names]
                table = pq.read_table(path, columns=present)
            except Exception as e:
                raise ValueError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
            out = {}
            for n in present:
                col = table.column(n).combine_chunks()
                t = col.type
                if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
                    values = np.asarray(col.flatten().to_numpy(zero_copy_only=False))
                    out[n] = values.reshape(len(col), -1) if len(col) else values.reshape(0, 0)
                else:
                    out[n] = np.asarray(col.to_numpy(zero_copy_only=False))
            out["__columns__"] = np.asarray(schema.names, dtype=object)
            self.columns[key] = out
            while len(self.columns) > self.max_files:
                self.columns.popitem(last=False)
        self.columns.move_to_end(key)
        return self.columns[key]

    def cell(self, path: str, column: str, row: int) -> Any:
        """One cell of ``column`` at file row ``row``, reading (and caching) only its row group."""
        import pyarrow.parquet as pq

        self._fresh()
        pf = pq.ParquetFile(path)
        stamp = _file_stamp(path)
        start = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row < start + n:
                key = (path, stamp, rg, column)
                if key not in self.row_groups:
                    self.row_groups[key] = pf.read_row_group(rg, columns=[column]).column(column)
                    while len(self.row_groups) > self.max_row_groups:
                        self.row_groups.popitem(last=False)
                return self.row_groups[key][row - start].as_py()
            start += n
        raise ValueError(f"{path}: row {row} out of range ({start} rows)")


_CACHE = _ParquetCache()


# ----------------------------------------------------------------------------------------------------------------
# Reader and DataModule


class LeRobotEpisodeReader(EpisodeReader):
    """One episode of a LeRobotDataset: ``ref.path`` is its data parquet file, ``ref.key`` ``episode_index=<i>``."""

    def _meta(self) -> dict[str, Any]:
        return self.options["episodes"][(self.ref.path, self.ref.key)]

    def _columns(self) -> dict[str, np.ndarray]:
        o = self.options
        names = ["episode_index", "timestamp", "task_index", "next.success", o["state_key"], o["action_key"]]
        return _CACHE.read_columns(self.ref.path, names)

    def _rows(self) -> np.ndarray:
        if "_row_cache" not in self.__dict__:
            cols = self._columns()
            if "episode_index" not in cols:
                raise MissingKeyError(f"{self.ref.describe()}: missing column 'episode_index'")
            self._row_cache = np.flatnonzero(cols["episode_index"] == self._meta()["episode_index"])
            expected = self._meta().get("length")
            if expected is not None and len(self._row_cache) != int(expected):
                raise self.fail(
                    f"{len(self._row_cache)} frames in the data file; the episode metadata says length {expected}"
                )
        return self._row_cache

    def _vector(self, key: str) -> np.ndarray:
        cols = self._columns()
        if key not in cols:
            have = ", ".join(str(c) for c in cols["__columns__"])
            raise MissingKeyError(f"{self.ref.describe()}: missing column '{key}' (columns: {have})")
        a = cols[key][self._rows()].astype(np.float64)
        return a[:, None] if a.ndim == 1 else a

    def length(self) -> int:
        return len(self._rows())

    def proprio(self) -> np.ndarray:
        return self._vector(self.options["state_key"])

    def actions(self) -> np.ndarray:
        return self._vector(self.options["action_key"])

    def instruction(self) -> str | None:
        return self._meta().get("task")

    def success(self) -> float | None:
        meta = self._meta()
        if meta.get("success") is not None:
            return float(meta["success"])
        cols = self._columns()
        if "next.success" in cols:
            return float(np.asarray(cols["next.success"][self._rows()]).astype(bool).any())
        return None

    def check(self, cameras: Sequence[str]) -> None:
        videos = self._meta()["videos"]
        columns = set(self._columns()["__columns__"])
        for cam in cameras:
            key = self.options["cameras"][cam]
            if cam in videos:
                path = videos[cam][0]
                if not os.path.isfile(path):
                    raise self.fail(f"video of feature '{key}' not found: {path}")
            elif key not in columns:
                raise self.fail(f"missing column '{key}' (image feature of camera '{cam}')")

    def frames(self, camera: str, indices: Sequence[int]) -> list[np.ndarray]:
        key = self.options["cameras"][camera]
        rows = self._rows()[np.asarray(indices, dtype=np.int64)]
        videos = self._meta()["videos"]
        if camera in videos:
            path, start, fps, codec = videos[camera]
            ts = self._columns()["timestamp"][rows].astype(np.float64)
            index = [int(round((start + float(t)) * fps)) for t in ts]
            try:
                return self.handles.video(path).frames(index)
            except (ValueError, FileNotFoundError) as e:
                raise self.fail(f"feature '{key}' frames {list(indices)}: {e}") from None
        out = []
        for step, row in zip(indices, rows):
            cell = _CACHE.cell(self.ref.path, key, int(row))
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not data:
                raise self.fail(f"column '{key}' frame {step}: no embedded image bytes (path {cell!r})")
            try:
                out.append(decode_stored_image(data))
            except ValueError as e:
                raise self.fail(f"column '{key}' frame {step}: {e}") from None
        return out


@register("datamodule", "lerobot")
class LeRobotDataModule(EpisodeDataModule):
    """A local LeRobotDataset (v3.0 or v2.x) as a DataModule; see the module docstring.

    Args:
        data_dir: the dataset root (holding ``meta/info.json``).
        cameras: camera features in latent-slot order (full keys or names after ``observation.images.``); None =
            every image/video feature in info.json order.
        state_key, action_key: the proprio and action features.
        episodes: episode indices to use (None = all).
        fps: control rate; None = info.json's fps.
        rollout_dir: another LeRobotDataset of rollouts with per-episode success (see the module docstring).
        Other keys: see ``EpisodeDataModule`` (defaults: K = 16, γ = 0.99).
    """

    reader_cls = LeRobotEpisodeReader
    benchmark_name = "lerobot"

    def __init__(
        self,
        data_dir: str | None = None,
        cameras: Sequence[str] | None = None,
        state_key: str = "observation.state",
        action_key: str = "action",
        episodes: Sequence[int] | None = None,
        fps: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            data_dir=data_dir, cameras=tuple(cameras) if cameras else ("<from meta/info.json>",),
            fps=0.0 if fps is None else fps, **kwargs,
        )
        self.requested_cameras = list(cameras) if cameras else None
        self.state_key, self.action_key = str(state_key), str(action_key)
        self.episode_subset = None if episodes is None else [int(e) for e in episodes]
        self.requested_fps = fps
        self._options: dict[str, Any] | None = None

    def reader_options(self) -> dict[str, Any]:
        if self._options is None:
            raise RuntimeError("LeRobotDataModule.reader_options() is available after find_episodes()")
        return self._options

    def _camera_map(self, info: dict[str, Any], info_path: str) -> dict[str, str]:
        available = camera_features(info)
        if self.requested_cameras is None:
            if not available:
                raise ValueError(f"{info_path}: no image or video features (expected at least one camera)")
            return {k: k for k in available}
        out = {}
        for name in self.requested_cameras:
            key = name if name in available else CAMERA_PREFIX + name
            if key not in available:
                raise ConfigError(
                    f"data.cameras: '{name}' is not an image/video feature of {info_path}; available: {', '.join(available)}"
                )
            out[name] = key
        return out

    def _dataset_refs(self, root: str, cameras: dict[str, str], rollout: bool,
                      options: dict[tuple[str, str], Any]) -> list[EpisodeRef]:
        meta = load_metadata(root)
        info, info_path = meta["info"], os.path.join(root, INFO_PATH)
        for key in (self.state_key, self.action_key, *cameras.values()):
            if key not in info["features"]:
                raise MissingKeyError(f"{info_path}: no feature '{key}'; features: {', '.join(info['features'])}")
        rows = meta["episodes"]
        if self.episode_subset is not None and not rollout:
            known = {int(r["episode_index"]) for r in rows}
            missing = [e for e in self.episode_subset if e not in known]
            if missing:
                raise ConfigError(f"data.episodes: episode {missing[0]} is not in {root} ({len(known)} episodes)")
            rows = [r for r in rows if int(r["episode_index"]) in set(self.episode_subset)]
        refs = []
        for row in rows:
            files = episode_files(meta, row, cameras)
            tasks = row.get("tasks") or []
            files["task"] = str(tasks[0]) if len(tasks) else None
            files["length"] = row.get("length")
            files["success"] = row.get("success")
            ref = EpisodeRef(files["data"], f"episode_index={files['episode_index']}", rollout=rollout)
            options[(ref.path, ref.key)] = files
            refs.append(ref)
        if not refs:
            raise ValueError(f"{root}: no episodes in the metadata")
        self._task_tables[root] = meta["tasks"]
        return refs

    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        expected = "a LeRobotDataset folder (meta/info.json, meta/episodes..., data/chunk-*/..., videos/...)"
        if not self.data_dir or not os.path.isdir(self.data_dir):
            raise missing_data_dir("lerobot", self.data_dir, expected)
        info_path = os.path.join(self.data_dir, INFO_PATH)
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"lerobot: {self.data_dir} has no {INFO_PATH}; expected {expected}")
        info = read_info(info_path)
        cameras = self._camera_map(info, info_path)
        self.cameras = tuple(cameras)
        if self.requested_fps is None:
            self.fps = float(info.get("fps", 0.0))
        if self.video_backend == "auto" and any(
            _video_codec(info["features"][k]) in ("av1", "libsvtav1", "libdav1d") for k in cameras.values()
        ):
            self.video_backend = "pyav"  # decord's FFmpeg has no AV1 decoder
        per_episode: dict[tuple[str, str], Any] = {}
        self._task_tables: dict[str, dict[int, str]] = {}
        demos = self._dataset_refs(self.data_dir, cameras, False, per_episode)
        rollouts: list[EpisodeRef] = []
        if self.rollout_dir is not None:
            if not os.path.isdir(self.rollout_dir):
                raise missing_data_dir("lerobot rollouts", self.rollout_dir, "a LeRobotDataset of rollouts with a "
                                       "per-episode 'success' column or a 'next.success' feature",
                                       override="data.rollout_dir")
            rollouts = self._dataset_refs(self.rollout_dir, cameras, True, per_episode)
        self._options = {"episodes": per_episode, "cameras": cameras,
                         "state_key": self.state_key, "action_key": self.action_key}
        self._resolve_tasks(demos + rollouts)
        return demos, rollouts

    def _resolve_tasks(self, refs: list[EpisodeRef]) -> None:
        """The task of each episode's first frame (task_index -> tasks table) wins over the episode's tasks list."""
        for ref in refs:
            meta = self._options["episodes"][(ref.path, ref.key)]
            table = self._task_tables[meta["root"]]
            cols = _CACHE.read_columns(ref.path, ["episode_index", "task_index"])
            if "task_index" in cols and "episode_index" in cols:
                rows = np.flatnonzero(cols["episode_index"] == meta["episode_index"])
                if len(rows) and int(cols["task_index"][rows[0]]) in table:
                    meta["task"] = table[int(cols["task_index"][rows[0]])]
