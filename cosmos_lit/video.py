"""Random-access frame reading from video files (MP4 episodes of the ALOHA / LeRobot layouts).

``VideoReader(path).frames([t, t + K])`` returns uint8 RGB (H, W, 3) arrays. The backend is decord when it is
installed (``RequirementCache("decord")``) and PyAV otherwise; both give the same frames. Encode training videos
with a short GOP (``-g 8..16``): random access decodes from the previous keyframe. Measured here on 256² GOP-10
H.264 (benchmarks/bench_loader.py), a training sample's two far-apart frames cost ~4.4 ms of CPU with PyAV and
~13 ms with decord 0.6.0; decord is faster only for long sequential reads, so pass ``backend="pyav"``
(``data.video_backend=pyav``) for random-access training.

Readers hold an open container: create them lazily inside each loader worker, never in the parent process.
A file that cannot be opened or decoded raises ValueError naming the file and frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from lightning_utilities.core.imports import RequirementCache

DECORD_AVAILABLE = RequirementCache("decord")
BACKENDS = ("auto", "decord", "pyav")
PYAV_DECODE_AHEAD = 12  # decode forward up to this many frames instead of seeking again


def default_backend() -> str:
    return "decord" if DECORD_AVAILABLE else "pyav"


class VideoReader:
    """Frames of one video file by index.

    Args:
        path: video file.
        backend: ``"auto"`` (decord if installed, else PyAV), ``"decord"`` or ``"pyav"``.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        self.path = os.fspath(path)
        if backend not in BACKENDS:
            raise ValueError(f"video backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
        self.backend = default_backend() if backend == "auto" else backend
        if self.backend == "decord" and not DECORD_AVAILABLE:
            raise ImportError(f"video backend 'decord' requested but not installed ({DECORD_AVAILABLE.message})")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"video file not found: {self.path}")
        self._vr = None  # decord.VideoReader
        self._container = None  # av container
        self._pyav_frames: list[np.ndarray] | None = None
        self._num_frames: int | None = None
        self._open()

    def _open(self) -> None:
        try:
            if self.backend == "decord":
                import decord

                self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
                self._num_frames = len(self._vr)
            else:
                import av

                self._container = av.open(self.path)
                stream = self._container.streams.video[0]
                stream.thread_type = "AUTO"
                self._num_frames = int(stream.frames) or None
        except Exception as e:  # decord raises its own error types; av raises av.error.*
            raise ValueError(f"video {self.path}: cannot open ({type(e).__name__}: {e}); expected a readable MP4") from None
        if self._num_frames == 0:
            raise ValueError(f"video {self.path}: contains no frames")

    def __len__(self) -> int:
        if self._num_frames is None:  # container without a frame count: decode once to count
            self._num_frames = len(self._decode_all())
        return self._num_frames

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        """uint8 RGB (H, W, 3) frames at ``indices`` (any order, repeats allowed)."""
        n = len(self)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"video {self.path}: frame index {bad[0]} out of range [0, {n})")
        try:
            if self.backend == "decord":
                uniq = sorted(set(int(i) for i in indices))
                batch = self._vr.get_batch(uniq).asnumpy()
                lookup = {i: batch[k] for k, i in enumerate(uniq)}
                return [lookup[int(i)] for i in indices]
            return self._pyav_frames_at([int(i) for i in indices])
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"video {self.path}: cannot decode frames {list(indices)} ({type(e).__name__}: {e})") from None

    def _decode_all(self) -> list[np.ndarray]:
        if self._pyav_frames is None:
            if self.backend == "decord":
                self._pyav_frames = list(self._vr.get_batch(list(range(len(self._vr)))).asnumpy())
            else:
                self._container.seek(0)
                self._pyav_frames = [f.to_ndarray(format="rgb24") for f in self._container.decode(video=0)]
        return self._pyav_frames

    def _pyav_frames_at(self, indices: list[int]) -> list[np.ndarray]:
        """Visit wanted indices in order: decode forward from the previous one when it is near, else seek to the
        keyframe before it (constant frame rate assumed: index = (pts − start)·time_base·rate)."""
        if self._pyav_frames is not None:
            return [self._pyav_frames[i] for i in indices]
        stream = self._container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate)
        tb = float(stream.time_base)
        start = stream.start_time or 0
        got: dict[int, np.ndarray] = {}
        it, pos = None, None
        for target in sorted(set(indices)):
            if it is None or pos is None or target <= pos or target - pos > PYAV_DECODE_AHEAD:
                self._container.seek(int(round(target / rate / tb)) + start, stream=stream, backward=True)
                it, pos = self._container.decode(stream), None
            for frame in it:
                pos = int(round((frame.pts - start) * tb * rate))
                if pos >= target:
                    break
            if pos != target:
                raise ValueError(f"video {self.path}: frame {target} not found while decoding (timestamps broken?)")
            got[target] = frame.to_ndarray(format="rgb24")
        return [got[i] for i in indices]

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._vr = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
