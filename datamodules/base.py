"""Shared machinery of episode-based DataModules (ALOHA, LIBERO, RoboCasa, LeRobot, your own robot).

A benchmark DataModule is a subclass of :class:`EpisodeDataModule` plus a subclass of :class:`EpisodeReader`;
everything else (statistics, normalization, value targets, split by episode, sample-type mixing, image pipeline,
per-worker file handles, batches of the data contract) lives here. A subclass implements exactly two things::

    class MyReader(EpisodeReader):
        # one episode; self.ref (EpisodeRef: path, key, rollout), self.handles (per-process HandleCache),
        # self.options (the dict returned by MyDataModule.reader_options()).
        def length(self) -> int: ...                            # T (>= 2)
        def proprio(self) -> np.ndarray: ...                    # (T, P) float
        def actions(self) -> np.ndarray: ...                    # (T, A) float, a[t] taken at observation t
        def frames(self, camera, indices) -> list: ...          # uint8 (H, W, 3) arrays or encoded JPEG/PNG bytes
        # optional overrides:
        def instruction(self) -> str | None: ...                # None -> the DataModule's `instruction` fallback
        def success(self) -> float | None: ...                  # terminal reward of a rollout (1 success, 0 failure)
        def check(self, cameras) -> None: ...                   # validate keys/shapes cheaply, raise one clear line
        upside_down: bool = False                               # frames stored upside-down -> flipped on load

    @register("datamodule", "my_robot")
    class MyDataModule(EpisodeDataModule):
        reader_cls = MyReader
        def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]: ...   # (demos, rollouts)
        def reader_options(self) -> dict: ...                   # optional, picklable, passed to every reader

Readers open files through ``self.handles.h5(path)`` / ``self.handles.video(path)``: handles are opened lazily in
the process that reads (each loader worker has its own), cached (LRU) and never pickled, and nothing but the
per-step vectors (proprio, actions) is held in memory; images are read per sample.

``setup()`` indexes every episode once (length, proprio, actions, instruction, success; of the images only frame 0
of each camera of the first episode is decoded, so a bad first frame is named at set-up), computes or loads the
statistics (``dataset_statistics.json`` in ``data_dir``, demonstrations only, atomic write, keyed by a checksum of
the demos' values: a cache of other data is recomputed with a notice; see ``_load_or_compute_statistics``), splits
demonstrations by episode (seeded ``val_fraction``),
and publishes ``spec``, ``statistics``, ``instructions``, ``episodes`` (all refs, demos then rollouts; a batch's
``"episode"`` indexes this list), ``train_episodes`` and ``val_episodes`` (sorted ids into ``episodes``).

Training epochs follow the official index layout [demos | success rollouts | failure rollouts]
(:func:`epoch_layout`): demos give policy samples; rollout samples (rollout files, plus the training demos when
``treat_demos_as_success_rollouts``) are world-model or value samples with p = 0.5 each. Validation samples are
policy samples of the held-out demonstrations, without augmentation.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cosmos_lit.cache_keys import notice
from cosmos_lit.images import AugmentParams, ImagePipeline
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.normalization import (
    check_statistics,
    compute_statistics,
    normalize,
    read_statistics,
    save_statistics,
    source_difference,
    statistics_source,
    unnormalize,
    with_rescale,
)
from cosmos_lit.registry import ConfigError
from cosmos_lit.spec import DataSpec

STATISTICS_FILE = "dataset_statistics.json"
P_WORLD_MODEL = 0.5  # hard-coded in the official LIBERO/ALOHA datasets


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: value targets and the epoch layout


def value_targets(length: int, reward: float, gamma: float) -> np.ndarray:
    """Monte-Carlo value of a sparse terminal reward, rescaled to [-1, 1] (docs/method.md#value-targets).

    G_i = γ^(T−1−i)·R;  v_i = 2·G_i/R − 1 if R > 0 else 2·G_i − 1 (so every R > 0 gives the success targets and a
    failure gives −1 everywhere). A sample at t uses ``v[min(t+K, T−1)]``.

    Returns:
        float32 (T,).
    """
    if length < 1:
        raise ValueError(f"value_targets: episode length must be >= 1, got {length}")
    g = float(reward) * np.power(float(gamma), np.arange(length - 1, -1, -1, dtype=np.float64))
    v = 2.0 * g / reward - 1.0 if reward > 0 else 2.0 * g - 1.0
    return v.astype(np.float32)


def epoch_layout(
    num_demo: int, num_success: int, num_failure: int, demonstration_prob: float, success_prob: float
) -> tuple[int, int, int]:
    """Slots per group in one epoch laid out as [demos | success rollouts | failure rollouts].

    The groups are sized so that their shares are ``demonstration_prob`` (demos vs rollouts) and ``success_prob``
    (successes vs failures within rollouts), oversampling the smaller group (its items repeat, cycling) rather
    than dropping items of the larger one; an empty group gives its share to its sibling, a probability of 0 or 1
    drops a group. Same rule as the official ``calculate_epoch_structure``.

    Returns:
        (demo slots, success-rollout slots, failure-rollout slots).
    """
    for name, p in (("demonstration_sampling_prob", demonstration_prob), ("success_rollout_sampling_prob", success_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.{name}: must be in [0, 1], got {p}")

    def split(a: int, b: int, p: float) -> tuple[int, int]:
        """Scale the under-represented side of (a, b) up so that a : b = p : 1 − p."""
        if a == 0 and b == 0:
            return 0, 0
        if b == 0 or p == 1.0:
            return a, 0
        if a == 0 or p == 0.0:
            return 0, b
        total = max(a / p, b / (1.0 - p))
        return max(a, int(round(total * p))), max(b, int(round(total * (1.0 - p))))

    succ, fail = split(num_success, num_failure, success_prob)
    demo, rollouts = split(num_demo, succ + fail, demonstration_prob)
    if rollouts != succ + fail and succ + fail > 0:  # rollouts scaled up: keep the success/failure shares
        succ_share = succ / (succ + fail)
        succ = int(round(rollouts * succ_share))
        fail = rollouts - succ
    return demo, succ, fail


# ----------------------------------------------------------------------------------------------------------------
# Episodes, readers, handles


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: a file, a key inside it ("" = the whole file), and whether it is a rollout."""

    path: str
    key: str = ""
    rollout: bool = False

    def describe(self) -> str:
        return f"{self.path}" + (f" episode '{self.key}'" if self.key else "")


class HandleCache:
    """Per-process cache of open files (h5py files, video readers), least recently used closed first.

    Never pickled: a copy sent to a loader worker starts empty and opens its own handles. A handle opened in a
    parent process is not reused after ``fork`` (the cache notices the new pid).
    """

    def __init__(self, max_open: int = 64, video_backend: str = "auto"):
        self.max_open = max_open
        self.video_backend = video_backend
        self._pid = os.getpid()
        self._open: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._datasets: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, path: str, opener: Any) -> Any:
        if os.getpid() != self._pid:  # forked copy: drop (do not close) the parent's handles
            self._open = OrderedDict()
            self._datasets = {}
            self._pid = os.getpid()
        key = (kind, path)
        handle = self._open.get(key)
        if handle is None:
            handle = opener(path)
            self._open[key] = handle
            while len(self._open) > self.max_open:
                (_, old_path), old = self._open.popitem(last=False)
                self._datasets = {k: v for k, v in self._datasets.items() if k[0] != old_path}
                old.close()
        else:
            self._open.move_to_end(key)
        return handle

    def h5(self, path: str) -> Any:
        """The h5py.File at ``path``, opened read-only once per process."""
        import h5py

        def opener(p: str) -> Any:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"episode file not found: {p}")
            try:
                return h5py.File(p, "r")
            except OSError as e:
                raise ValueError(f"{p}: cannot open as HDF5 ({e})") from None

        return self._get("h5", path, opener)

    def h5_dataset(self, path: str, key: str) -> Any:
        """``h5(path)[key]``, with the h5py object cached (a group lookup costs ~0.1 ms)."""
        f = self.h5(path)
        ds = self._datasets.get((path, key))
        if ds is None:
            ds = self._datasets[(path, key)] = f[key]
        return ds

    def video(self, path: str) -> Any:
        """A :class:`cosmos_lit.video.VideoReader` for ``path``."""
        from cosmos_lit.video import VideoReader

        return self._get("video", path, lambda p: VideoReader(p, backend=self.video_backend))

    def close(self) -> None:
        for handle in self._open.values():
            try:
                handle.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass
        self._open.clear()
        self._datasets.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_open": self.max_open, "video_backend": self.video_backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


def unreadable_episode(ref: EpisodeRef, error: BaseException) -> ValueError:
    """One line naming an episode file that HDF5 opened but cannot read (h5py's OSError / RuntimeError / KeyError)."""
    detail = " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args else error).split())
    return ValueError(f"{ref.describe()}: cannot read the episode, the file is corrupt or truncated "
                      f"({type(error).__name__}: {detail[:200]})")


@dataclass(frozen=True)
class DataProblem:
    """One bad episode or run of frames found by :meth:`EpisodeDataModule.check_frames`."""

    episode: str  # EpisodeRef.describe(): the file (and the episode inside it)
    camera: str | None
    frames: tuple[int, int] | None  # first and last bad frame (equal for one frame); None: the episode itself
    reason: str

    def line(self) -> str:
        where = self.episode
        if self.camera is not None:
            where += f" camera '{self.camera}'"
        if self.frames is not None:
            a, b = self.frames
            where += f" frame {a}" if a == b else f" frames {a}-{b}"
        return f"{where}: {self.reason}"


JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def frame_problem(frame: Any) -> str | None:
    """None for a frame that decodes to a uint8 RGB image; else why not (corrupt, truncated, wrong shape)."""
    from cosmos_lit.images import decode_image, is_encoded

    if is_encoded(frame):
        data = bytes(np.asarray(frame, dtype=np.uint8).reshape(-1)) if isinstance(frame, np.ndarray) else bytes(frame)
        if data.startswith(JPEG_SOI) and JPEG_EOI not in data.rstrip(b"\x00")[-256:]:  # EOI ends a whole JPEG
            return f"corrupt or truncated JPEG ({len(data)} bytes, no end-of-image marker)"
        try:
            img = decode_image(data)
        except ValueError as err:
            return str(err)
    else:
        img = frame
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
        desc = f"shape {img.shape} dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        return f"expected a uint8 RGB image of shape (H, W, 3), got {desc}"
    return None


def _reason(ref: EpisodeRef, err: BaseException) -> str:
    """An exception as a reason without the episode prefix the readers put in front of it."""
    msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    msg = " ".join(msg.split())
    for prefix in (f"{ref.describe()}: ", f"{ref.path}: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    if not isinstance(err, (ValueError, FileNotFoundError)):
        msg = f"{type(err).__name__}: {msg}"
    return msg[:300]


class MissingKeyError(ValueError):
    """A required key is missing from an episode (a ValueError, so the message prints as one plain line)."""


class EpisodeReader:
    """Reads one episode. Subclasses implement :meth:`length`, :meth:`proprio`, :meth:`actions`, :meth:`frames`.

    Args:
        ref: the episode.
        handles: per-process open files; fetch them on every call (they may be closed and reopened by the LRU).
        options: the DataModule's ``reader_options()``.
    """

    upside_down: bool = False

    def __init__(self, ref: EpisodeRef, handles: HandleCache, **options: Any):
        self.ref = ref
        self.handles = handles
        self.options = options

    # --- to implement ---
    def length(self) -> int:
        raise NotImplementedError

    def proprio(self) -> np.ndarray:
        raise NotImplementedError

    def actions(self) -> np.ndarray:
        raise NotImplementedError

    def frames(self, camera: str, indices: Sequence[int]) -> list[Any]:
        raise NotImplementedError

    # --- optional ---
    def instruction(self) -> str | None:
        return None

    def success(self) -> float | None:
        return None

    def check(self, cameras: Sequence[str]) -> None:
        """Validate that every camera can be read (keys, shapes); default: nothing to check."""

    # --- helpers for HDF5 readers ---
    @property
    def h5(self) -> Any:
        """The episode's group (or the whole file when ``ref.key`` is empty)."""
        f = self.handles.h5(self.ref.path)
        return f[self.ref.key] if self.ref.key else f

    def require(self, key: str, expected: str) -> Any:
        """``self.h5[key]`` or one clear error naming file, episode, key and what was expected."""
        group = self.h5
        if key not in group:
            raise MissingKeyError(f"{self.ref.describe()}: missing key '{key}' (expected {expected})")
        return group[key]

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.ref.describe()}: {message}")


@dataclass
class EpisodeInfo:
    """Index entry of one episode: its vectors in memory (raw, then normalized), never its images."""

    ref: EpisodeRef
    length: int
    proprio: np.ndarray  # (T, P) float32, normalized after setup
    actions: np.ndarray  # (T, A) float32, normalized after setup
    instruction: str
    reward: float  # terminal reward used for value targets (demos: 1)
    upside_down: bool = False
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (T,) in [-1, 1]


# ----------------------------------------------------------------------------------------------------------------
# Dataset


class EpisodeDataset(Dataset):
    """Samples of the data contract from indexed episodes.

    Args:
        episodes: all episode infos (ids = positions; only those referenced by the groups are read).
        groups: (demo, success-rollout, failure-rollout) step lists, each an int64 (n, 2) array of (episode, t).
        counts: slots per group in one epoch (see :func:`epoch_layout`); a group's items cycle to fill its slots.
        policy_only: every sample is a policy sample (validation).
    """

    def __init__(
        self,
        episodes: list[EpisodeInfo],
        groups: tuple[np.ndarray, np.ndarray, np.ndarray],
        counts: tuple[int, int, int],
        reader_cls: type[EpisodeReader],
        reader_options: dict[str, Any],
        cameras: Sequence[str],
        chunk_size: int,
        pipeline: ImagePipeline,
        augment: bool,
        policy_only: bool = False,
        seed: int = 0,
        video_backend: str = "auto",
    ):
        self.episodes = episodes
        self.groups = groups
        self.counts = counts
        self.offsets = np.cumsum((0,) + tuple(counts))
        self.reader_cls = reader_cls
        self.reader_options = reader_options
        self.cameras = tuple(cameras)
        self.chunk_size = int(chunk_size)
        self.pipeline = pipeline
        self.augment = augment
        self.policy_only = policy_only
        self.seed = int(seed)
        self.video_backend = video_backend
        for g, n in zip(groups, counts):
            if n > 0 and len(g) == 0:
                raise ValueError("EpisodeDataset: a group has slots but no steps")
        self._local: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_local"] = {}  # handles, readers and the RNG belong to the process that uses them
        return state

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int, int]:
        """(episode id, t, group) of a slot: group 0 demo, 1 success rollout, 2 failure rollout."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        group = int(np.searchsorted(self.offsets, index, side="right") - 1)
        steps = self.groups[group]
        e, t = steps[(index - self.offsets[group]) % len(steps)]
        return int(e), int(t), group

    def _process_local(self) -> dict[str, Any]:
        """Handles, readers and RNG of the current process (re-created after fork / in each worker)."""
        key = (os.getpid(), torch.initial_seed())
        if self._local.get("key") != key:
            old = self._local.get("handles")
            if old is not None and self._local.get("key", (None,))[0] == os.getpid():
                old.close()
            seed_seq = np.random.SeedSequence([self.seed, torch.initial_seed() % (1 << 63)])
            self._local = {
                "key": key,
                "handles": HandleCache(video_backend=self.video_backend),
                "readers": {},
                "rng": np.random.default_rng(seed_seq),
            }
        return self._local

    def reader(self, episode: int) -> EpisodeReader:
        local = self._process_local()
        readers = local["readers"]
        if episode not in readers:
            readers[episode] = self.reader_cls(self.episodes[episode].ref, local["handles"], **self.reader_options)
        return readers[episode]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``index``, or ``(index, key)`` from the training stream (``cosmos_lit.sample_stream``): then its
        sample type and augmentation come from ``default_rng([seed, key])`` and the item carries ``sample_key``,
        so the sample does not depend on the process or loader worker that reads it."""
        key = None
        if isinstance(index, tuple):
            index, key = index
        e, t, group = self.locate(int(index))
        info = self.episodes[e]
        local = self._process_local()
        rng: np.random.Generator = local["rng"] if key is None else np.random.default_rng([self.seed, int(key)])
        if self.policy_only or group == 0:
            sample_type = POLICY
        else:
            sample_type = WORLD_MODEL if rng.random() < P_WORLD_MODEL else VALUE
        last = info.length - 1
        future = min(t + self.chunk_size, last)
        params = AugmentParams.sample(rng) if self.augment else None
        images = self._images(e, info, (t, future), params)
        return {
            "images": images,
            "proprio": torch.from_numpy(np.ascontiguousarray(info.proprio[t], dtype=np.float32)),
            "future_proprio": torch.from_numpy(np.ascontiguousarray(info.proprio[future], dtype=np.float32)),
            "actions": self._chunk(info, t),
            "value": torch.tensor(float(info.values[future]), dtype=torch.float32),
            # the chunk after this one and the value at its end (the official next_action_chunk and
            # next_value_function_return, for Q-style targets; the default objective does not use them)
            "next_actions": self._chunk(info, future),
            "next_value": torch.tensor(float(info.values[min(future + self.chunk_size, last)]), dtype=torch.float32),
            "sample_type": torch.tensor(sample_type, dtype=torch.int64),
            "instruction": info.instruction,
            "episode": torch.tensor(e, dtype=torch.int64),
            "t": torch.tensor(t, dtype=torch.int64),
            "future_t": torch.tensor(future, dtype=torch.int64),
            "augmented": torch.tensor(params is not None),
            **({} if key is None else {"sample_key": torch.tensor(int(key), dtype=torch.int64)}),
        }

    def _chunk(self, info: EpisodeInfo, start: int) -> torch.Tensor:
        """(K, A) normalized actions from step ``start``; past the episode's end the last action repeats."""
        chunk = info.actions[start : start + self.chunk_size]
        if len(chunk) < self.chunk_size:
            chunk = np.concatenate([chunk, np.repeat(info.actions[-1:], self.chunk_size - len(chunk), axis=0)])
        return torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))

    def _images(self, e: int, info: EpisodeInfo, steps: tuple[int, int], params: AugmentParams | None) -> torch.Tensor:
        """(2N, 3, S, S): current cameras in order, then future cameras in order."""
        reader = self.reader(e)
        per_camera = []
        for cam in self.cameras:
            try:
                per_camera.append(reader.frames(cam, list(steps)))
            except (ValueError, FileNotFoundError) as err:
                msg = str(err)
                raise type(err)(msg if info.ref.path in msg else f"{info.ref.describe()} camera '{cam}': {msg}") from None
            except (OSError, RuntimeError, KeyError) as err:  # a file damaged after setup read it
                raise unreadable_episode(info.ref, err) from None
        out = []
        for k, step in enumerate(steps):
            for cam, frames in zip(self.cameras, per_camera):
                try:
                    out.append(self.pipeline.frame(frames[k], params, flip=info.upside_down))
                except ValueError as err:
                    raise ValueError(f"{info.ref.describe()} camera '{cam}' frame {step}: {err}") from None
        from cosmos_lit.images import to_tensor

        return to_tensor(out)


# ----------------------------------------------------------------------------------------------------------------
# DataModule


class EpisodeDataModule(L.LightningDataModule):
    """Base of episode DataModules; see the module docstring for what a subclass implements.

    Args:
        data_dir: folder of the demonstrations (statistics are cached here).
        cameras: camera names in latent-slot order.
        image_size: S, output image side.
        chunk_size: K, actions per chunk; future observation at min(t+K, T−1).
        gamma: discount of the value targets.
        fps: control rate (Hz), published in the spec.
        batch_size, num_workers: loader settings (per device).
        val_fraction: share of demonstration episodes held out for validation (at least one episode when > 0
            and there are two or more demonstrations).
        seed: split and sampling seed.
        augment: training-time augmentation (validation never augments).
        eval_center_crop: centre-crop validation images as at deployment; default: the value of ``augment``.
        demonstration_sampling_prob, success_rollout_sampling_prob: epoch layout shares (see :func:`epoch_layout`).
        treat_demos_as_success_rollouts: the training demos also feed world-model/value samples as successes.
        rollout_dir: optional folder of rollout episodes (success and failure) for world-model/value samples.
        instruction: fallback task instruction for episodes that carry none.
        samples_per_epoch: optional epoch length in samples (default: the layout's length). Training draws one
            endless seeded stream (``cosmos_lit.sample_stream``); an epoch is ceil(this / global batch) steps of it.
        stride: use every ``stride``-th start index t (1 = all).
        start_steps, start_repeat: training demonstration steps ``t < start_steps`` appear ``start_repeat`` times in
            an epoch's demonstration group (default 1: uniform over steps). At an episode's start the robot's state
            is the same in every episode and only the images say where the objects are; oversampling those steps
            gives that image-to-action mapping more of the training signal.
        scale_multiplier, non_negative_only: the official ``rescale_data`` options: actions and proprio normalize to
            [-m, m] (default m = 1: [-1, 1]) or, with ``non_negative_only``, to [0, m]; carried in the statistics
            (``cosmos_lit.normalization.with_rescale``), so the model un-normalizes with the same rule.
        statistics_path: statistics JSON; default ``<data_dir>/dataset_statistics.json`` (a cache: recomputed when it
            was computed from other data). A file given here is written when missing, used when it was computed from
            these demos or carries no record of its source (official statistics files), and an error otherwise.
        flip_images: force the orientation (True: flip every frame); default: the reader's ``upside_down``.
        proprio_dim, action_dim: expected dims (None: take them from the data); a mismatch is an error.
        video_backend: ``auto``, ``decord`` or ``pyav`` for video-stored episodes.
        pin_memory: DataLoader ``pin_memory``.
    """

    reader_cls: ClassVar[type[EpisodeReader]] = EpisodeReader
    benchmark_name: ClassVar[str] = "custom"

    def __init__(
        self,
        data_dir: str | None = None,
        cameras: Sequence[str] = (),
        image_size: int = 224,
        chunk_size: int = 16,
        gamma: float = 0.99,
        fps: float = 20.0,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.01,
        seed: int = 0,
        augment: bool = True,
        eval_center_crop: bool | None = None,
        demonstration_sampling_prob: float = 0.5,
        success_rollout_sampling_prob: float = 0.5,
        treat_demos_as_success_rollouts: bool = False,
        rollout_dir: str | None = None,
        instruction: str | None = None,
        samples_per_epoch: int | None = None,
        stride: int = 1,
        start_steps: int = 0,
        start_repeat: int = 1,
        scale_multiplier: float = 1.0,
        non_negative_only: bool = False,
        statistics_path: str | None = None,
        flip_images: bool | None = None,
        proprio_dim: int | None = None,
        action_dim: int | None = None,
        video_backend: str = "auto",
        pin_memory: bool = False,
    ):
        super().__init__()
        if not cameras:
            raise ConfigError("data.cameras: at least one camera name is required")
        for key, value in (("image_size", image_size), ("chunk_size", chunk_size), ("batch_size", batch_size),
                           ("stride", stride), ("start_repeat", start_repeat)):
            if int(value) <= 0:
                raise ConfigError(f"data.{key}: must be a positive integer, got {value}")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {num_workers}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
        if not 0.0 < float(gamma) <= 1.0:
            raise ConfigError(f"data.gamma: must be in (0, 1], got {gamma}")
        if int(start_steps) < 0:
            raise ConfigError(f"data.start_steps: must be >= 0, got {start_steps}")
        if samples_per_epoch is not None and int(samples_per_epoch) <= 0:
            raise ConfigError(f"data.samples_per_epoch: must be positive or null, got {samples_per_epoch}")
        if video_backend not in ("auto", "decord", "pyav"):
            raise ConfigError(f"data.video_backend: expected auto, decord or pyav, got '{video_backend}'")
        self.data_dir = None if data_dir is None else os.path.expanduser(str(data_dir))
        self.cameras = tuple(str(c) for c in cameras)
        self.image_size = int(image_size)
        self.chunk_size = int(chunk_size)
        self.gamma = float(gamma)
        self.fps = float(fps)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.eval_center_crop = self.augment if eval_center_crop is None else bool(eval_center_crop)
        self.demonstration_sampling_prob = float(demonstration_sampling_prob)
        self.success_rollout_sampling_prob = float(success_rollout_sampling_prob)
        epoch_layout(1, 1, 1, self.demonstration_sampling_prob, self.success_rollout_sampling_prob)  # validates
        self.treat_demos_as_success_rollouts = bool(treat_demos_as_success_rollouts)
        self.rollout_dir = None if rollout_dir is None else os.path.expanduser(str(rollout_dir))
        self.instruction = instruction
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.stride = int(stride)
        self.start_steps, self.start_repeat = int(start_steps), int(start_repeat)
        try:
            with_rescale({}, scale_multiplier, non_negative_only)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.scale_multiplier / data.non_negative_only: {e}") from None
        self.scale_multiplier, self.non_negative_only = float(scale_multiplier), bool(non_negative_only)
        self.statistics_path = statistics_path
        self.flip_images = flip_images
        self.expected_proprio_dim = proprio_dim
        self.expected_action_dim = action_dim
        self.video_backend = video_backend
        self.pin_memory = bool(pin_memory)
        self._ready = False
        self._checkpoint_statistics: dict[str, list[float]] | None = None

    # --- subclass API ---
    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        """(demonstrations, rollouts) of this dataset; raise one clear error when there are none."""
        raise NotImplementedError

    def reader_options(self) -> dict[str, Any]:
        """Picklable keyword arguments for every reader (e.g. the storage layout)."""
        return {}

    def default_instruction(self, ref: EpisodeRef) -> str:
        """Instruction for an episode whose file carries none and no ``instruction`` is configured."""
        name = os.path.basename(os.path.dirname(os.path.abspath(ref.path)))
        return name.replace("_", " ").strip() or "do the task"

    # --- published after setup ---
    @property
    def spec(self) -> DataSpec:
        self._require_setup("spec")
        return self._spec

    @property
    def statistics(self) -> dict[str, list[float]]:
        self._require_setup("statistics")
        return self._statistics

    @property
    def instructions(self) -> list[str]:
        self._require_setup("instructions")
        return sorted({info.instruction for info in self._episodes})

    @property
    def episodes(self) -> list[EpisodeRef]:
        self._require_setup("episodes")
        return [info.ref for info in self._episodes]

    @property
    def train_episodes(self) -> list[int]:
        self._require_setup("train_episodes")
        return list(self._train_ids)

    @property
    def val_episodes(self) -> list[int]:
        self._require_setup("val_episodes")
        return list(self._val_ids)

    def _require_setup(self, what: str) -> None:
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.{what} is available after setup(); call dm.setup('fit') first")

    @property
    def statistics_file(self) -> str:
        if self.statistics_path:
            return os.path.expanduser(self.statistics_path)
        return os.path.join(self.data_dir or ".", STATISTICS_FILE)

    # --- setup ---
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        demos, rollouts = self.find_episodes()
        if not demos:
            raise ValueError(f"{type(self).__name__}: no demonstration episodes found in {self.data_dir}")
        handles = HandleCache(video_backend=self.video_backend)
        try:
            infos = [self._index(ref, handles) for ref in list(demos) + list(rollouts)]
            self._check_first_frames(infos[0], handles)
        finally:
            handles.close()  # workers open their own handles; none may cross a fork
        self._check_dims(infos)
        n_demo = len(demos)
        try:
            stats = with_rescale(self._load_or_compute_statistics(infos[:n_demo]), self.scale_multiplier,
                                 self.non_negative_only)
        except ValueError as e:
            raise ConfigError(f"data.scale_multiplier / data.non_negative_only: {e}") from None
        for info in infos:
            info.proprio = normalize(info.proprio, stats, "proprio").astype(np.float32)
            info.actions = normalize(info.actions, stats, "actions").astype(np.float32)
            info.values = value_targets(info.length, info.reward, self.gamma)
        self._episodes = infos
        self._statistics = stats
        self._train_ids, self._val_ids = self._split(n_demo)
        self._rollout_ids = list(range(n_demo, len(infos)))
        self._spec = DataSpec(
            cameras=self.cameras,
            proprio_dim=int(infos[0].proprio.shape[1]),
            action_dim=int(infos[0].actions.shape[1]),
            chunk_size=self.chunk_size,
            gamma=self.gamma,
            fps=self.fps,
            image_size=self.image_size,
            has_value=True,
            name=self.benchmark_name,
        )
        self._ready = True

    def _check_first_frames(self, info: EpisodeInfo, handles: HandleCache) -> None:
        """Decode frame 0 of every camera of the first episode as training will (shapes, encoding): a bad frame
        stops set-up with one line naming the file, camera and frame, not the first training step."""
        reader = self.reader_cls(info.ref, handles, **self.reader_options())
        pipeline = ImagePipeline(image_size=self.image_size)
        for cam in self.cameras:
            try:
                frame = reader.frames(cam, [0])[0]
            except (ValueError, FileNotFoundError) as err:
                msg = str(err)
                raise type(err)(msg if info.ref.path in msg else f"{info.ref.describe()} camera '{cam}': {msg}") from None
            except (OSError, RuntimeError, KeyError, IndexError) as err:
                raise unreadable_episode(info.ref, err) from None
            problem = frame_problem(frame)
            if problem is None:
                try:
                    pipeline.frame(frame, flip=info.upside_down)
                except ValueError as err:
                    problem = str(err)
            if problem is not None:
                raise ValueError(f"{info.ref.describe()} camera '{cam}' frame 0: {problem}")

    # --- check-data ---
    def check_frames(self, progress: Any = None, chunk: int = 32) -> tuple[list[DataProblem], dict[str, int]]:
        """Read and decode every frame of every camera of every episode (demonstrations and rollouts).

        Args:
            progress: optional ``progress(advance, total)``, called with ``(0, total frames)`` once the episodes are
                known, then with the number of frames checked after each read.
            chunk: frames read per call of the reader.

        Returns:
            (problems, counts): every bad episode or frame (consecutive frames with the same reason are one problem,
            a frame range), and ``{"episodes", "frames"}`` checked.
        """
        demos, rollouts = self.find_episodes()
        refs = list(demos) + list(rollouts)
        problems: list[DataProblem] = []
        handles = HandleCache(video_backend=self.video_backend)
        try:
            readers, lengths = [], []
            for ref in refs:
                reader = self.reader_cls(ref, handles, **self.reader_options())
                try:
                    length = int(reader.length())
                except Exception as err:  # noqa: BLE001 - a checker reports every kind of failure
                    problems.append(DataProblem(ref.describe(), None, None, _reason(ref, err)))
                    length = 0
                readers.append(reader)
                lengths.append(length)
            total = sum(lengths) * len(self.cameras)
            if progress is not None:
                progress(0, total)
            for ref, reader, length in zip(refs, readers, lengths):
                if length == 0:
                    continue
                episode_problem = None
                try:
                    self._index(ref, handles)
                except Exception as err:  # noqa: BLE001
                    episode_problem = DataProblem(ref.describe(), None, None, _reason(ref, err))
                found = [p for cam in self.cameras for p in self._check_camera(ref, reader, cam, length, chunk, progress)]
                # the reader's own check may have stopped at a frame listed below: say it once
                if episode_problem is not None and not any(episode_problem.reason.endswith(p.reason) for p in found):
                    problems.append(episode_problem)
                problems += found
                handles.close()  # one episode's files open at a time
        finally:
            handles.close()
        return problems, {"episodes": len(refs), "frames": total}

    def _check_camera(self, ref: EpisodeRef, reader: EpisodeReader, cam: str, length: int, chunk: int,
                      progress: Any) -> list[DataProblem]:
        bad: list[tuple[int, str, str | None]] = []  # (frame, reason, exception type when the read itself failed)
        for start in range(0, length, chunk):
            idx = list(range(start, min(start + chunk, length)))
            try:
                got = list(reader.frames(cam, idx))
                if len(got) != len(idx):
                    raise ValueError(f"the reader returned {len(got)} frames for {len(idx)} indices")
                results: list[tuple[str | None, str | None]] = [(frame_problem(f), None) for f in got]
            except Exception:  # noqa: BLE001 - retry frame by frame to name the bad ones
                results = []
                for i in idx:
                    try:
                        results.append((frame_problem(reader.frames(cam, [i])[0]), None))
                    except Exception as err:  # noqa: BLE001
                        results.append((_reason(ref, err), type(err).__name__))
            bad += [(i, r, kind) for i, (r, kind) in zip(idx, results) if r is not None]
            if progress is not None:
                progress(len(idx), None)
        # consecutive frames with one reason, or that could not be read for one kind of error (a missing or short
        # video), are one problem over a frame range
        out: list[DataProblem] = []
        last_kind: str | None = None
        for i, reason, kind in bad:
            last = out[-1] if out else None
            if (last is not None and last.frames is not None and last.frames[1] == i - 1
                    and (last.reason == reason or (kind is not None and kind == last_kind))):
                out[-1] = DataProblem(last.episode, cam, (last.frames[0], i), last.reason)
            else:
                out.append(DataProblem(ref.describe(), cam, (i, i), reason))
            last_kind = kind
        return out

    def _index(self, ref: EpisodeRef, handles: HandleCache) -> EpisodeInfo:
        """The episode's index entry; a file HDF5 cannot read (corrupt, truncated) is one ValueError naming it."""
        try:
            return self._read_index(ref, handles)
        except (FileNotFoundError, ValueError):
            raise
        except (OSError, RuntimeError, KeyError) as e:  # h5py's errors for damaged metadata inside an opened file
            raise unreadable_episode(ref, e) from None

    def _read_index(self, ref: EpisodeRef, handles: HandleCache) -> EpisodeInfo:
        reader = self.reader_cls(ref, handles, **self.reader_options())
        length = int(reader.length())
        if length < 2:
            raise ValueError(
                f"{ref.describe()}: episode has {length} step(s); expected at least 2 (a current and a future observation)"
            )
        arrays = {}
        for name, fn in (("proprio", reader.proprio), ("actions", reader.actions)):
            a = np.asarray(fn(), dtype=np.float32)
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2 or a.shape[0] != length:
                raise ValueError(f"{ref.describe()}: {name} has shape {a.shape}; expected ({length}, D)")
            if not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))
                step, dim = (int(v) for v in bad[0])
                raise ValueError(f"{ref.describe()}: {name} contains NaN or inf ({a[step, dim]} at step {step}, "
                                 f"dimension {dim}; {len(bad)} value(s) in all); expected finite numbers")
            arrays[name] = a
        reader.check(self.cameras)
        if ref.rollout:
            reward = reader.success()
            if reward is None:
                raise ValueError(f"{ref.describe()}: rollout episode has no 'success' attribute (expected 0/1 or a score)")
        else:
            reward = 1.0
        text = reader.instruction() or self.instruction or self.default_instruction(ref)
        upside_down = bool(reader.upside_down) if self.flip_images is None else bool(self.flip_images)
        return EpisodeInfo(ref, length, arrays["proprio"], arrays["actions"], str(text), float(reward), upside_down)

    def _check_dims(self, infos: list[EpisodeInfo]) -> None:
        first = infos[0]
        for name, expected in (("proprio", self.expected_proprio_dim), ("actions", self.expected_action_dim)):
            want = expected if expected is not None else getattr(first, name).shape[1]
            for info in infos:
                got = getattr(info, name).shape[1]
                if got != want:
                    if expected is not None:
                        source = "data." + ("proprio_dim" if name == "proprio" else "action_dim")
                    else:
                        source = f"in {first.ref.describe()}"
                    raise ValueError(f"{info.ref.describe()}: {name} has dimension {got}; expected {want} (as {source})")

    def _load_or_compute_statistics(self, demos: list[EpisodeInfo]) -> dict[str, list[float]]:
        """The checkpoint's statistics (resume, ``init_from``), else the cache if it was computed from these
        demonstrations, else freshly computed ones (written to the cache atomically).

        A cache records what it was computed from (``statistics_source``: a checksum of the demos' values). In
        ``data_dir`` (the default) a cache of other data, an older cache without that record, or an unreadable one
        is recomputed with a one-line notice. A file named by ``data.statistics_path`` is the user's: missing, it is
        written; recorded from other data, it is an error naming the file (nothing is overwritten); without a record
        (official statistics files) it is used as given.
        """
        dims = {"actions": demos[0].actions.shape[1], "proprio": demos[0].proprio.shape[1]}
        if self._checkpoint_statistics is not None:
            check_statistics(self._checkpoint_statistics, dims, source="statistics from the checkpoint")
            return self._checkpoint_statistics
        arrays = {"actions": [d.actions for d in demos], "proprio": [d.proprio for d in demos]}
        source = statistics_source(arrays)
        path = self.statistics_file
        explicit = bool(self.statistics_path)
        if os.path.exists(path):
            if explicit:
                stats, recorded = read_statistics(path)
                why = source_difference(recorded, source) if recorded is not None else None
                if why is not None:
                    raise ValueError(
                        f"statistics file {path} (data.statistics_path): {why}; delete it to recompute it for this "
                        f"data, or point data.statistics_path to another file"
                    )
                check_statistics(stats, dims, source=f"statistics file {path}")
                if recorded is None:
                    self._check_range(stats, arrays, path)
                return stats
            try:
                stats, recorded = read_statistics(path)
                why = source_difference(recorded, source)
                if why is None:
                    check_statistics(stats, dims, source=f"statistics file {path}")
                    return stats
            except ValueError as e:
                why = str(e).replace(f"statistics file {path}: ", "")
            notice(f"dataset statistics {path}: {why}; recomputing them from the {source['episodes']} "
                   f"demonstrations")
        stats = compute_statistics(arrays)
        try:
            save_statistics(path, stats, source=source)
        except OSError as e:
            warnings.warn(f"could not cache dataset statistics at {path} ({e}); set data.statistics_path to a writable file")
        return stats

    @staticmethod
    def _check_range(stats: dict[str, list[float]], arrays: dict[str, list[np.ndarray]], path: str,
                     limit: float = 1.5) -> None:
        """A notice when statistics given without a source record normalize the demos far outside [-1, 1]."""
        for group, parts in arrays.items():
            rows = np.concatenate(parts)
            worst = float(np.abs(normalize(rows, stats, group)).max()) if len(rows) else 0.0
            if worst > limit:
                notice(f"statistics file {path}: the demonstrations' {group} normalize to values up to {worst:.1f} "
                       f"(expected within [-1, 1]): these statistics were computed from other data")

    def _split(self, n_demo: int) -> tuple[list[int], list[int]]:
        n_val = 0
        if self.val_fraction > 0 and n_demo >= 2:
            n_val = min(n_demo - 1, max(1, int(round(self.val_fraction * n_demo))))
        order = np.random.default_rng(self.seed).permutation(n_demo)
        return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])

    # --- datasets and loaders ---
    def _steps(self, ids: Sequence[int]) -> np.ndarray:
        parts = [np.stack([np.full_like(ts, e), ts], 1) for e in ids
                 for ts in [np.arange(0, self._episodes[e].length, self.stride, dtype=np.int64)]]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)

    def train_dataset(self) -> EpisodeDataset:
        self._require_setup("train_dataset")
        demo_steps = self._steps(self._train_ids)
        if self.start_repeat > 1 and self.start_steps > 0:
            early = demo_steps[demo_steps[:, 1] < self.start_steps]
            demo_steps = np.concatenate([demo_steps] + [early] * (self.start_repeat - 1))
        rollouts = [e for e in self._rollout_ids]
        success_ids = [e for e in rollouts if self._episodes[e].reward > 0]
        failure_ids = [e for e in rollouts if self._episodes[e].reward <= 0]
        if self.treat_demos_as_success_rollouts:
            success_ids = list(self._train_ids) + success_ids
        groups = (demo_steps, self._steps(success_ids), self._steps(failure_ids))
        counts = epoch_layout(len(groups[0]), len(groups[1]), len(groups[2]),
                              self.demonstration_sampling_prob, self.success_rollout_sampling_prob)
        if sum(counts) == 0:
            raise ValueError(f"{type(self).__name__}: no training samples (all demonstrations held out for validation?)")
        return self._dataset(groups, counts, augment=self.augment, policy_only=False)

    def val_dataset(self) -> EpisodeDataset:
        self._require_setup("val_dataset")
        steps = self._steps(self._val_ids)
        empty = np.zeros((0, 2), np.int64)
        return self._dataset((steps, empty, empty), (len(steps), 0, 0), augment=False, policy_only=True)

    def _dataset(self, groups: Any, counts: Any, augment: bool, policy_only: bool) -> EpisodeDataset:
        pipeline = ImagePipeline(image_size=self.image_size, center_crop=not augment and self.eval_center_crop)
        return EpisodeDataset(
            self._episodes, groups, counts, self.reader_cls, self.reader_options(), self.cameras, self.chunk_size,
            pipeline, augment=augment, policy_only=policy_only, seed=self.seed, video_backend=self.video_backend,
        )

    def train_dataloader(self) -> DataLoader:
        """The training stream (``cosmos_lit.sample_stream.GlobalBatchStream``): the same global batches and sample
        randomness for any number of ranks, resumed at the trainer's step."""
        from cosmos_lit.sample_stream import GlobalBatchStream

        ds = self.train_dataset()
        trainer = getattr(self, "trainer", None)
        rank, world, accumulate = 0, 1, 1
        if trainer is not None:
            rank, world, accumulate = trainer.global_rank, trainer.world_size, trainer.accumulate_grad_batches
        stream = GlobalBatchStream(
            len(ds), self.batch_size, seed=self.seed, rank=rank, world_size=world, accumulate=accumulate,
            samples_per_epoch=self.samples_per_epoch, start_batch=self._trained_batches,
        )
        return DataLoader(
            ds, batch_size=self.batch_size, sampler=stream, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0, drop_last=True,
        )

    def _trained_batches(self) -> int:
        """Per-rank forwards already trained (optimizer steps × accumulation): where the stream resumes."""
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches

    def val_dataloader(self) -> DataLoader | list:
        ds = self.val_dataset()
        if len(ds) == 0:
            return []
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> DataLoader | list:
        """The held-out demonstration episodes (the validation split): what ``python -m cosmos_lit test`` scores."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The held-out demonstration episodes, for ``python -m cosmos_lit predict``."""
        loader = self.val_dataloader()
        if not loader:
            raise ValueError(f"{type(self).__name__}: no held-out episodes to predict on (data.val_fraction is "
                             f"{self.val_fraction}; set it above 0)")
        return loader

    # --- checkpoint ---
    def state_dict(self) -> dict[str, Any]:
        """Stored in every checkpoint: the statistics and spec the model was trained with."""
        if not self._ready:
            return {}
        return {"statistics": self._statistics, "spec": self._spec.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume the checkpoint's statistics win: the model was trained with them."""
        stats = state_dict.get("statistics")
        if not stats:
            return
        if not self._ready:
            self._checkpoint_statistics = stats
            return
        if stats == self._statistics:
            return
        dims = {"actions": self._spec.action_dim, "proprio": self._spec.proprio_dim}
        check_statistics(stats, dims, source="statistics from the checkpoint")
        warnings.warn(
            f"{type(self).__name__}: the checkpoint's statistics differ from {self.statistics_file}; "
            "normalizing with the checkpoint's (the model was trained with them)"
        )
        for info in self._episodes:
            for group in ("proprio", "actions"):
                raw = unnormalize(getattr(info, group), self._statistics, group)
                setattr(info, group, normalize(raw, stats, group).astype(np.float32))
        self._statistics = stats


def missing_data_dir(name: str, data_dir: str | None, expected: str, override: str = "data.data_dir") -> FileNotFoundError:
    """The error for a missing dataset folder: what is expected, where, and how to point to it."""
    where = f"'{data_dir}' does not exist" if data_dir else "no data directory was given"
    return FileNotFoundError(f"{name}: {where}; expected {expected}; point to it with the override {override}=/path/to/data")


def sample_type_fractions(dataset: EpisodeDataset) -> dict[int, float]:
    """Expected share of each sample type over one epoch of ``dataset`` (policy, world model, value)."""
    demo, succ, fail = dataset.counts
    total = max(1, demo + succ + fail)
    if dataset.policy_only:
        return {POLICY: 1.0, WORLD_MODEL: 0.0, VALUE: 0.0}
    rollout = (succ + fail) / total
    return {POLICY: demo / total, WORLD_MODEL: P_WORLD_MODEL * rollout, VALUE: (1 - P_WORLD_MODEL) * rollout}


__all__ = [
    "DataProblem", "EpisodeDataModule", "EpisodeDataset", "EpisodeInfo", "EpisodeReader", "EpisodeRef", "HandleCache", "MissingKeyError",
    "STATISTICS_FILE", "epoch_layout", "frame_problem", "missing_data_dir", "sample_type_fractions", "value_targets",
]
