"""Writer of ACT / ALOHA HDF5 episodes, the one format ``cosmos_lit.datamodules.aloha`` reads.

One episode per file, T steps, D joints (14 for the bimanual ALOHA)::

    /observations/qpos          (T, D) float32   proprio
    /observations/qvel          (T, D) float32   optional (ACT's sim recorder writes it)
    /action                     (T, D) float32   action[t] is applied after observing step t
    cameras, per camera one of
      /observations/images/<cam>       (T, H, W, 3) uint8 raw frames, one frame per chunk, or
                                       (T, padded) uint8 zero-padded JPEG bytes + /compress_len (n_cams, T), attr
                                       compress=True (the ALOHA recorders), or (T,) variable-length JPEG bytes
      /observations/video_paths/<cam>  name of an H.264 MP4 beside the file
    any extra datasets the caller names (e.g. /executed_action of noisy expert demos)
    file attributes as given (ACT sim: sim, task, seed, instruction, success)

Imports neither torch nor a simulator at module level: the expert's demo workers use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cosmos_lit.io import atomic_path

# Order in which ALOHA recorders write cameras, hence the rows of /compress_len (filtered to the cameras present).
RECORDER_CAMERA_ORDER = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
STORAGES = ("raw", "jpeg", "jpeg_vlen", "mp4")


def compress_len_order(cameras: Iterable[str]) -> list[str]:
    """Cameras in /compress_len row order: the recorder's order, then any others sorted by name."""
    cameras = list(cameras)
    return [c for c in RECORDER_CAMERA_ORDER if c in cameras] + sorted(c for c in cameras if c not in RECORDER_CAMERA_ORDER)


def write_aloha_episode(
    path: str | os.PathLike[str],
    qpos: np.ndarray,
    action: np.ndarray,
    images: Mapping[str, np.ndarray],
    storage: str = "raw",
    attrs: Mapping[str, Any] | None = None,
    jpeg_quality: int = 95,
    video_gop: int = 10,
    *,
    qvel: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    compression: str | None = None,
) -> None:
    """Write one episode in the ACT/ALOHA layout atomically (a crash never leaves a partial ``path``).

    Args:
        path: the ``.hdf5`` file to write.
        qpos, action: (T, D) arrays, stored as float32.
        images: camera -> (T, H, W, 3) uint8 frames.
        storage: ``raw`` (uint8 frames), ``jpeg`` (zero-padded JPEG rows + /compress_len, attr compress=True, as the
            ALOHA recorders), ``jpeg_vlen`` (variable-length JPEG bytes) or ``mp4`` (one ``<stem>_<cam>.mp4`` beside
            the file, referenced by /observations/video_paths/<cam>; H.264, GOP ``video_gop`` for fast random access).
        attrs: file attributes, e.g. ``{"sim": True, "instruction": "...", "success": True}``.
        qvel: optional (T, D) joint velocities, stored as /observations/qvel (float32).
        extra: more datasets, HDF5 path -> array stored as given, e.g. ``{"executed_action": (T, D)}``.
        compression: HDF5 filter of raw frames (None as ACT, ``"lzf"`` or ``"gzip"``).
    """
    import h5py

    if storage not in STORAGES:
        raise ValueError(f"write_aloha_episode: storage must be raw, jpeg, jpeg_vlen or mp4, got '{storage}'")
    folder = os.path.dirname(os.path.abspath(path))
    # keep_suffix=False: a temp file left by a killed writer must not look like an episode to the *.hdf5 finders
    with atomic_path(path, keep_suffix=False) as tmp, h5py.File(tmp, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.create_dataset("observations/qpos", data=np.asarray(qpos, np.float32))
        if qvel is not None:
            f.create_dataset("observations/qvel", data=np.asarray(qvel, np.float32))
        f.create_dataset("action", data=np.asarray(action, np.float32))
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value)
        cams = list(images)
        if storage == "raw":
            for cam in cams:
                frames = np.asarray(images[cam], np.uint8)
                chunks = (1, *frames.shape[1:]) if len(frames) else None  # one frame per chunk: cheap random reads
                f.create_dataset(f"observations/images/{cam}", data=frames, chunks=chunks, compression=compression)
        elif storage == "jpeg_vlen":
            from cosmos_lit.images import encode_jpeg

            vlen = h5py.vlen_dtype(np.uint8)
            for cam in cams:
                ds = f.create_dataset(f"observations/images/{cam}", shape=(len(images[cam]),), dtype=vlen)
                for i, frame in enumerate(images[cam]):
                    ds[i] = np.frombuffer(encode_jpeg(frame, jpeg_quality), np.uint8)
        elif storage == "jpeg":
            from cosmos_lit.images import encode_jpeg

            order = compress_len_order(cams)
            encoded = {c: [encode_jpeg(fr, jpeg_quality) for fr in images[c]] for c in order}
            padded = max(len(b) for c in order for b in encoded[c])
            lens = np.zeros((len(order), len(images[order[0]])), np.int64)
            for row, cam in enumerate(order):
                data = np.zeros((len(encoded[cam]), padded), np.uint8)
                for i, b in enumerate(encoded[cam]):
                    data[i, : len(b)] = np.frombuffer(b, np.uint8)
                    lens[row, i] = len(b)
                f.create_dataset(f"observations/images/{cam}", data=data, chunks=(1, padded))
            f.create_dataset("compress_len", data=lens)
            f.attrs["compress"] = True
        else:
            stem = os.path.splitext(os.path.basename(path))[0]
            for cam in cams:
                name = f"{stem}_{cam}.mp4"
                write_mp4(os.path.join(folder, name), np.asarray(images[cam], np.uint8), video_gop)
                f.create_dataset(f"observations/video_paths/{cam}", data=name)


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, gop: int, fps: int = 50) -> None:
    """(T, H, W, 3) uint8 frames as an H.264 yuv420p MP4 (even H and W, as the codec needs), written atomically."""
    import av

    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"mp4 frames must have even height and width for H.264, got {h}x{w}")
    with atomic_path(path) as tmp, av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
