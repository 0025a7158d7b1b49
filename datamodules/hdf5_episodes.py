"""Episode discovery and readers shared by the robomimic-style HDF5 benchmarks (LIBERO, RoboCasa) and Cosmos
Policy rollout files.

Two layouts, both read lazily through the per-process handle cache of ``cosmos_lit.datamodules.base``:

- demonstrations: one file holds many episodes, ``data/demo_<n>/{actions, obs/<camera key>, ...}``;
- rollouts (``*-Cosmos-Policy/all_episodes``): one episode per file, top-level datasets
  ``{primary,secondary,wrist}_images[_jpeg]``, ``proprio``, ``actions`` and attributes ``success``,
  ``task_description``.

A camera is stored either as raw frames, (T, H, W, 3) uint8, or as JPEG bytes, (T,) variable-length uint8
(the ``*_jpeg`` keys). Each camera has a list of candidate keys (:class:`CameraSource`); the first one present in
the episode is used, and it says whether its frames are stored upside down (or, None, that the file says:
:func:`recorded_upside_down` reads robosuite's ``macros_image_convention`` record).

Also shared: the robomimic ``mask/train`` / ``mask/valid`` demo lists (:func:`file_masks`; the robomimic DataModule
turns them into the split).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from cosmos_lit.datamodules.base import EpisodeReader, EpisodeRef, MissingKeyError, missing_data_dir
from cosmos_lit.images import decode_image
from cosmos_lit.registry import ConfigError

DEMO_KEY = re.compile(r"^demo_(\d+)$")


class CameraSource(NamedTuple):
    """A candidate dataset for one camera: its key (relative to the episode) and orientation (None: as the file
    records it, :meth:`Hdf5EpisodeReader.file_upside_down`)."""

    key: str
    upside_down: bool | None = False


def find_hdf5_files(folder: str, exclude: str | None = None) -> list[str]:
    """Every ``*.hdf5`` / ``*.h5`` under ``folder`` (recursively, following symlinks), sorted; files under
    ``exclude`` (e.g. a rollout folder inside the demo folder) are left out."""
    skip = os.path.abspath(exclude) + os.sep if exclude else None
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in files:
            path = os.path.join(root, name)
            if name.endswith((".hdf5", ".h5")) and not (skip and os.path.abspath(path).startswith(skip)):
                found.append(path)
    return sorted(found)


def demo_keys(f: Any, path: str) -> list[str]:
    """``data/demo_<n>`` group names of a robomimic file, sorted by n; one clear error when there are none."""
    if "data" not in f:
        raise MissingKeyError(
            f"{path}: missing group 'data' (expected the robomimic layout data/demo_<n>/...; "
            f"top-level keys: {', '.join(sorted(f.keys())) or 'none'})"
        )
    numbered = []
    for name in f["data"].keys():
        m = DEMO_KEY.match(name)
        if m:
            numbered.append((int(m.group(1)), name))
    if not numbered:
        raise ValueError(f"{path}: group 'data' holds no 'demo_<n>' episodes")
    return [f"data/{name}" for _, name in sorted(numbered)]


def find_robomimic_episodes(
    benchmark: str,
    data_dir: str | None,
    rollout_dir: str | None,
    expected: str,
    rollout_expected: str,
    select_demo_files: Callable[[list[str]], list[str]] | None = None,
    select_rollout_files: Callable[[list[str]], list[str]] | None = None,
    rollout_selection: str = "",
    inspect_file: Callable[[Any, str, list[str]], list[str] | None] | None = None,
) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
    """(demos, rollouts) of a robomimic benchmark: ``data/demo_<n>`` of every HDF5 file under ``data_dir`` (files
    under ``rollout_dir`` left out) and one episode per HDF5 file under ``rollout_dir`` (none when it is None).

    Args:
        benchmark: name used in the error messages (``libero``, ``robocasa``).
        expected, rollout_expected: what the demo / rollout folder should hold, for the missing-folder errors.
        select_demo_files, select_rollout_files: keep a subset of the found paths (e.g. LIBERO suites); may raise
            their own error when the subset is empty.
        rollout_selection: appended to "no rollout *.hdf5 files" when the selection left none (e.g. " of suites ...").
        inspect_file: called with (open h5py file, path, its ``data/demo_<n>`` keys) for every demo file while it is
            open (e.g. to read its masks); a list it returns replaces the file's keys (a subset, in its order).
    Raises:
        FileNotFoundError: a missing folder, or one without (selected) HDF5 files; ValueError: a file that is not
        HDF5 or holds no ``demo_<n>`` group.
    """
    import h5py

    if not data_dir or not os.path.isdir(data_dir):
        raise missing_data_dir(benchmark, data_dir, expected)
    files = find_hdf5_files(data_dir, exclude=rollout_dir)
    if not files:
        raise FileNotFoundError(f"{benchmark}: no *.hdf5 files under {data_dir}; expected {expected}")
    if select_demo_files is not None:
        files = select_demo_files(files)
    demos = []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                keys = demo_keys(f, path)
                if inspect_file is not None:
                    kept = inspect_file(f, path, keys)
                    keys = keys if kept is None else kept
        except OSError as e:
            raise ValueError(f"{path}: cannot open as HDF5 ({e})") from None
        demos += [EpisodeRef(path, key) for key in keys]
    if rollout_dir is None:
        return demos, []
    if not os.path.isdir(rollout_dir):
        raise missing_data_dir(f"{benchmark} rollouts", rollout_dir, rollout_expected, override="data.rollout_dir")
    rollout_files = find_hdf5_files(rollout_dir)
    if select_rollout_files is not None:
        rollout_files = select_rollout_files(rollout_files)
    if not rollout_files:
        raise FileNotFoundError(
            f"{benchmark}: no rollout *.hdf5 files{rollout_selection} under {rollout_dir} (data.rollout_dir)"
        )
    return demos, [EpisodeRef(p, rollout=True) for p in rollout_files]


def text(value: Any) -> str:
    """An HDF5 attribute (str, bytes, numpy scalar or 1-element array) as a Python string."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8")
    return str(value)


def json_attr(attrs: Any, name: str, where: str) -> dict[str, Any] | None:
    """Parse a JSON-string attribute; None when absent, one clear error when it is not a JSON object."""
    if name not in attrs:
        return None
    try:
        value = json.loads(text(attrs[name]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: attribute '{name}' is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: attribute '{name}' is JSON {type(value).__name__}; expected an object")
    return value


def flag(value: Any) -> float:
    """A ``success`` attribute (bool, int, float, string 'True'/'False') as a terminal reward in [0, 1]."""
    if isinstance(value, (bytes, str, np.bytes_, np.str_)):
        s = text(value).strip().lower()
        if s in ("true", "false"):
            return float(s == "true")
        return float(s)
    return float(np.asarray(value).reshape(-1)[0])


IMAGE_CONVENTION_ATTR = "macros_image_convention"
IMAGE_CONVENTIONS = {"opengl": True, "opencv": False}  # robosuite's macros.IMAGE_CONVENTION -> stored upside down
ORIENTATIONS = {"upright": False, "upside_down": True}  # data.image_orientation -> stored upside down


def recorded_upside_down(attrs: Any, where: str) -> bool | None:
    """Whether a robomimic-style file says its frames are stored upside down; None when it records nothing.

    The one record robosuite-based writers leave is the ``data`` group attribute ``macros_image_convention``
    (LIBERO's ``create_dataset.py`` writes robosuite's ``macros.IMAGE_CONVENTION`` next to the frames it stores as
    rendered): ``"opengl"`` = bottom row first (upside down), ``"opencv"`` = upright. robosuite has no env keyword
    for the convention (it is a module macro), so ``env_args`` never records it.
    """
    if IMAGE_CONVENTION_ATTR not in attrs:
        return None
    value = text(attrs[IMAGE_CONVENTION_ATTR]).strip().lower()
    if value not in IMAGE_CONVENTIONS:
        raise ValueError(
            f"{where}: attribute '{IMAGE_CONVENTION_ATTR}' is '{value}'; expected one of {list(IMAGE_CONVENTIONS)}"
        )
    return IMAGE_CONVENTIONS[value]


def parse_orientation(value: str | None, key: str = "data.image_orientation") -> bool | None:
    """``upright`` / ``upside_down`` / None as stored-upside-down True / False / None; a ConfigError otherwise."""
    if value is None:
        return None
    name = str(value).strip().lower()
    if name not in ORIENTATIONS:
        raise ConfigError(f"{key}: expected one of {list(ORIENTATIONS)} or null, got '{value}'")
    return ORIENTATIONS[name]


MASK_KEYS = ("train", "valid")


def file_masks(f: Any, path: str, keys: Sequence[str]) -> dict[str, list[str]]:
    """The ``mask/train`` and ``mask/valid`` demo lists of a robomimic file (those present), as ``data/demo_<n>``
    keys in the mask's order.

    robomimic writes each mask as an array of demo names (bytes, ``b"demo_3"``). A name that is not a demo of the
    file, or a demo listed in both masks, is one error naming file, mask and demo.
    """
    masks: dict[str, list[str]] = {}
    if "mask" not in f:
        return masks
    present = set(keys)
    for name in MASK_KEYS:
        key = f"mask/{name}"
        if key not in f:
            continue
        values = np.asarray(f[key][()]).reshape(-1)
        listed: list[str] = []
        for value in values:
            demo = text(value).strip()
            full = demo if demo.startswith("data/") else f"data/{demo}"
            if full not in present:
                raise ValueError(
                    f"{path}: {key} names demo '{demo}', which is not in group 'data' "
                    f"({len(present)} demos: {describe_demos(keys)})"
                )
            if full not in listed:
                listed.append(full)
        masks[name] = listed
    both = set(masks.get("train", ())) & set(masks.get("valid", ()))
    if both:
        first = sorted(both, key=list(keys).index)[0]
        raise ValueError(f"{path}: demo '{first[len('data/'):]}' is listed in both mask/train and mask/valid")
    return masks


def describe_demos(keys: Sequence[str], limit: int = 4) -> str:
    """``demo_0, demo_1, ..., demo_9`` for error messages."""
    names = [k.split("/")[-1] for k in keys]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 1]) + f", ..., {names[-1]}"


class Hdf5EpisodeReader(EpisodeReader):
    """Frames of an HDF5 episode whose cameras are resolved from candidate keys.

    Subclasses implement :meth:`camera_sources` (and the vectors of :class:`EpisodeReader`). ``frames`` returns
    decoded uint8 (H, W, 3) arrays; a corrupt JPEG is an error naming file, episode, key and frame.
    """

    def camera_sources(self, camera: str) -> list[CameraSource]:
        raise NotImplementedError

    def frame_index(self, indices: Sequence[int]) -> list[int]:
        """Stored row of each step index (identity; overridden when steps are filtered)."""
        return [int(i) for i in indices]

    def stored_length(self) -> int:
        """Rows in the stored arrays (before any step filtering)."""
        return self.length()

    # --- camera resolution ---
    def source(self, camera: str) -> tuple[CameraSource, bool]:
        """(source, is_jpeg) of ``camera`` in this episode, cached."""
        cache = self.__dict__.setdefault("_sources", {})
        if camera not in cache:
            group = self.h5
            candidates = self.camera_sources(camera)
            for cand in candidates:
                if cand.key in group:
                    ds = group[cand.key]
                    if ds.ndim == 1 and ds.dtype.kind == "O":
                        cache[camera] = (cand, True)
                    elif ds.ndim == 4 and ds.shape[3] == 3 and ds.dtype == np.uint8:
                        cache[camera] = (cand, False)
                    else:
                        raise self.fail(
                            f"key '{cand.key}' has shape {ds.shape} dtype {ds.dtype}; expected (T, H, W, 3) uint8 "
                            "frames or (T,) variable-length JPEG bytes"
                        )
                    break
            else:
                raise self.missing_camera(camera, candidates)
        return cache[camera]

    def missing_camera(self, camera: str, candidates: Sequence[CameraSource]) -> MissingKeyError:
        """The error for a camera none of whose candidate keys is in the episode (plus :meth:`camera_inventory`)."""
        tried = " or ".join(f"'{c.key}'" for c in candidates)
        inventory = self.camera_inventory()
        message = f"{self.ref.describe()}: missing key {tried} (images of camera '{camera}')"
        return MissingKeyError(message + (f"; {inventory}" if inventory else ""))

    def camera_inventory(self) -> str:
        """What the episode holds instead, for :meth:`missing_camera` (e.g. "the file has cameras: a, b")."""
        return ""

    def file_upside_down(self) -> bool:
        """Orientation of the sources whose ``upside_down`` is None (subclasses that use them implement it)."""
        raise NotImplementedError(
            f"{type(self).__name__}: a CameraSource with upside_down=None needs file_upside_down()"
        )

    def camera_upside_down(self, cameras: Sequence[str]) -> bool:
        """Orientation shared by ``cameras``; an episode mixing orientations is an error."""
        flags = {}
        for cam in cameras:
            flipped = self.source(cam)[0].upside_down
            flags[cam] = self.file_upside_down() if flipped is None else flipped
        if len(set(flags.values())) > 1:
            raise self.fail(f"cameras mix stored orientations {flags}; set data.flip_images explicitly")
        return next(iter(flags.values()))

    def check(self, cameras: Sequence[str]) -> None:
        rows = self.stored_length()
        group = self.h5
        for cam in cameras:
            src, _ = self.source(cam)
            n = group[src.key].shape[0]
            if n != rows:
                raise self.fail(f"key '{src.key}' has {n} frames; expected {rows} (one per action)")
        self.upside_down = self.camera_upside_down(cameras)

    def frames(self, camera: str, indices: Sequence[int]) -> list[np.ndarray]:
        src, is_jpeg = self.source(camera)
        ds = self._dataset(src.key)
        out = []
        for step, row in zip(indices, self.frame_index(indices)):
            data = ds[row]
            if is_jpeg:
                try:
                    data = decode_image(data)
                except ValueError as e:
                    raise self.fail(f"key '{src.key}' frame {row} (step {step}): {e}") from None
            out.append(data)
        return out

    def _dataset(self, key: str) -> Any:
        """``self.h5[key]`` through the handle cache's dataset cache (a group lookup costs ~0.1 ms)."""
        return self.handles.h5_dataset(self.ref.path, f"{self.ref.key}/{key}" if self.ref.key else key)

    def vector(self, key: str, expected: str) -> np.ndarray:
        """A (T, D) float array ``key`` of the episode (1-D becomes (T, 1))."""
        a = np.asarray(self.require(key, expected)[()], dtype=np.float64)
        return a[:, None] if a.ndim == 1 else a
