"""cosmos_lit.io: atomic writes keep the old file on failure, leave no temp file, and get normal permissions."""

import os
import stat

import pytest

from cosmos_lit.io import atomic_open, atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_a_write_that_raises_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "config.yaml"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path) as f:
            f.write("new, half wri")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert _siblings(path) == ["config.yaml"]


def test_atomic_path_raising_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "episode_0.hdf5"
    path.write_bytes(b"old")
    for keep_suffix in (True, False):
        with pytest.raises(KeyboardInterrupt):
            with atomic_path(path, keep_suffix=keep_suffix) as tmp:
                assert tmp.parent == path.parent and tmp.name.startswith(".")
                assert tmp.name.endswith(".tmp.hdf5" if keep_suffix else ".tmp")
                tmp.write_bytes(b"partial")
                raise KeyboardInterrupt  # a BaseException, as a Ctrl-C mid-write
        assert path.read_bytes() == b"old"
        assert _siblings(path) == ["episode_0.hdf5"]


def test_json_that_cannot_be_serialised_keeps_the_old_file(tmp_path):
    path = tmp_path / "stats.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert path.read_text() == '{\n "a": 1\n}'
    assert _siblings(path) == ["stats.json"]


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        os.umask(0o027)
        write_bytes_atomic(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a.txt", "b.bin", "c.bin")}
    assert modes == {"a.txt": 0o644, "b.bin": 0o644, "c.bin": 0o640}


def test_round_trips_and_missing_folders(tmp_path):
    import json

    payload = {"actions_min": [-1.0, 0.5], "name": "ünïcode", "nested": {"k": [1, 2]}, "none": None}
    path = tmp_path / "new" / "folder" / "stats.json"
    write_json_atomic(path, payload, indent=2)
    assert json.loads(path.read_text(encoding="utf-8")) == payload
    write_json_atomic(path, [1, 2], indent=None)  # replaces the existing file
    assert path.read_text() == "[1, 2]"
    write_bytes_atomic(tmp_path / "b.bin", bytes(range(256)))
    assert (tmp_path / "b.bin").read_bytes() == bytes(range(256))
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    assert not [p for p in tmp_path.rglob(".*")]


def test_atomic_open_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert not list(tmp_path.iterdir())
