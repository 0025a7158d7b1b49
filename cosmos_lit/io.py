"""Atomic file writes: a temp file in the target's folder, then ``os.replace``.

A reader never sees a half-written file, and a process killed mid-write leaves at most a hidden temp file
``.STEM.<random>.tmpSUFFIX`` beside the target (never a truncated target). Files get the usual
``0666 & ~umask`` permissions, not the 0600 of ``tempfile.mkstemp``. Text is written as UTF-8.

    write_text_atomic(run_dir / "config.yaml", text)
    write_json_atomic(path, payload)
    with atomic_path(path) as tmp:     # for libraries that write by file name (h5py, PyAV, torch.save)
        h5py.File(tmp, "w") ...
    with atomic_dir(folder) as tmp:    # a whole folder: it appears complete or not at all
        (tmp / "a.json").write_text(...)

Imports nothing beyond the standard library, so torch-free processes (simulator workers) can use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` alone must set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # briefly changes the umask for the whole process: only where /proc is missing
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block finishes it replaces ``path``, when it raises it is removed.

    Args:
        path: the file to write; missing parent folders are created.
        keep_suffix: end the temp name with ``path``'s suffix (``.tmp.mp4``), for writers that pick the format
            from the extension (PyAV). False ends it in ``.tmp``, so that a left-over temp file never matches a
            data glob such as ``*.hdf5``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` (``mode``: "w" for UTF-8 text or "wb") that replaces ``path`` only when the block
    finishes; the data is flushed to disk before the rename, so a crash right after never leaves an empty file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding="utf-8" if mode == "w" else None) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike[str], payload: Any, indent: int | None = 1) -> None:
    """Replace ``path`` with ``payload`` as JSON atomically (the text is built first: a payload that cannot be
    serialised leaves the old file and no temp file)."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; when the block finishes its files are flushed to disk and it is
    renamed to ``path``, when the block raises it is removed with everything in it (``path`` is left as it was).

    Args:
        path: the folder to write; missing parent folders are created. It may exist as an empty folder.
        replace: an existing non-empty ``path`` is swapped out once the block has finished, then deleted (without
            it such a ``path`` raises ``FileExistsError`` before the block runs). A failed swap puts it back.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    if path.is_dir() and not replace and any(path.iterdir()):
        raise FileExistsError(f"{path}: exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir() and any(path.iterdir()):  # replace: move the old folder aside, then the new one in
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)  # an empty folder at ``path`` is replaced in one rename
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
