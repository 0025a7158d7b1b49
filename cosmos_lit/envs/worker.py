"""Simulator envs in worker processes, for closed-loop evaluation.

Each env lives in its own process, started as ``<python> -m cosmos_lit.envs.worker`` (any interpreter that can
import ``cosmos_lit`` and the simulator: LIBERO needs its own venv; neither side needs torch here). Parent and
worker talk over the worker's stdin/stdout pipes; the worker moves its own stdout to stderr first, so prints from
simulators cannot corrupt the protocol, and points stdin at /dev/null (a library asking ``input()`` fails fast).

Protocol: each message is an 8-byte big-endian length followed by a pickle (protocol 4) of a tuple. Numpy arrays
travel as ``{"__ndarray__": (dtype, shape, bytes)}`` and numpy scalars as Python scalars, so the two sides may run
different numpy versions.

    parent -> worker: ("build", env_cfg) | ("reset", seed) | ("step", action) | ("render",) | ("close",)
    worker -> parent: ("ok", payload) | ("error", traceback text)

A worker that raises, dies or does not answer within the timeout is reported as a ``WorkerError`` in its slot;
the other slots go on. A dead or timed-out worker is killed; ``EnvPool.restart(slot)`` starts a fresh one.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

_HEADER = struct.Struct(">Q")
PICKLE_PROTOCOL = 4


# -- wire format ------------------------------------------------------------------------------------------------------
def encode(obj: Any) -> Any:
    """Numpy arrays -> tagged (dtype, shape, bytes) dicts, numpy scalars -> Python scalars, recursively."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {"__ndarray__": (arr.dtype.str, arr.shape, arr.tobytes())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            dtype, shape, data = obj["__ndarray__"]
            return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def write_message(stream: Any, msg: tuple) -> None:
    data = pickle.dumps(encode(msg), protocol=PICKLE_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact_blocking(stream: Any, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message_blocking(stream: Any) -> tuple | None:
    """Next message from ``stream``, or None at end of file."""
    header = _read_exact_blocking(stream, _HEADER.size)
    if header is None:
        return None
    body = _read_exact_blocking(stream, _HEADER.unpack(header)[0])
    return None if body is None else decode(pickle.loads(body))


# -- worker side ------------------------------------------------------------------------------------------------------
def _spec(env: Any) -> dict[str, Any]:
    return {
        "cameras": list(getattr(env, "cameras", ())),
        "action_dim": int(getattr(env, "action_dim", 0)),
        "max_steps": int(getattr(env, "max_steps", 0)),
        "pid": os.getpid(),
    }


def serve() -> None:
    """Worker main loop: answer messages on (the original) stdin/stdout until "close" or end of input."""
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nothing may read the protocol pipe (e.g. a library's input() prompt)
    os.dup2(2, 1)  # prints go to stderr, never into the protocol
    os.environ.setdefault("MUJOCO_GL", "egl")  # before any simulator imports mujoco

    env = None
    while True:
        msg = read_message_blocking(proto_in)
        if msg is None:  # parent went away
            break
        cmd, args = msg[0], msg[1:]
        try:
            if cmd == "build":
                from cosmos_lit.registry import build

                env = build(args[0], "env", path="env")
                reply: Any = _spec(env)
            elif env is None:
                raise RuntimeError(f"'{cmd}' before a successful 'build'")
            elif cmd == "reset":
                reply = env.reset(args[0])
            elif cmd == "step":
                reply = tuple(env.step(args[0]))
            elif cmd == "render":
                reply = env.render()
            elif cmd == "close":
                env.close()
                write_message(proto_out, ("ok", None))
                break
            else:
                raise ValueError(f"unknown command '{cmd}'")
            write_message(proto_out, ("ok", reply))
        except Exception:  # noqa: BLE001 - every error goes back to the parent
            write_message(proto_out, ("error", traceback.format_exc()))


# -- parent side ------------------------------------------------------------------------------------------------------
class WorkerError:
    """Stands in a result list for an env slot whose worker raised, died or timed out."""

    def __init__(self, slot: int, message: str):
        self.slot = slot
        self.message = message

    def __repr__(self) -> str:
        last_line = self.message.strip().splitlines()[-1] if self.message.strip() else ""
        return f"WorkerError(slot={self.slot}, {last_line!r})"

    def __str__(self) -> str:
        return f"env worker {self.slot}: {self.message}"


class _Timeout(Exception):
    pass


class _Dead(Exception):
    pass


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, slot: int, python: str, log_path: Path):
        self.slot = slot
        self.log_path = log_path
        repo_root = str(Path(__file__).resolve().parents[2])  # the folder holding the cosmos_lit package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([repo_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("MUJOCO_GL", "egl")
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [python, "-m", "cosmos_lit.envs.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            close_fds=True,
        )
        self._buffer = b""
        self.dead_reason: str | None = None

    def send(self, msg: tuple) -> None:
        if self.dead_reason:
            raise _Dead(self.dead_reason)
        try:
            write_message(self.proc.stdin, msg)
        except (BrokenPipeError, OSError):
            raise _Dead(self._exit_text()) from None

    def recv(self, deadline: float) -> tuple:
        """Next message, waiting until ``deadline`` (time.monotonic()); raises _Timeout or _Dead."""
        fd = self.proc.stdout.fileno()
        need = None
        while True:
            if need is None and len(self._buffer) >= _HEADER.size:
                need = _HEADER.size + _HEADER.unpack(self._buffer[: _HEADER.size])[0]
            if need is not None and len(self._buffer) >= need:
                body, self._buffer = self._buffer[_HEADER.size : need], self._buffer[need:]
                return decode(pickle.loads(body))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout()
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise _Dead(self._exit_text())
                self._buffer += chunk

    def _exit_text(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return f"worker process exited (code {code}){self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return ("; its stderr (" + str(self.log_path) + ") ends:\n" + "\n".join(text)) if text else ""

    def kill(self, reason: str) -> None:
        self.dead_reason = reason
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that does not take
            pass

    def close(self, timeout: float) -> None:
        if self.dead_reason is None and self.proc.poll() is None:
            try:
                self.send(("close",))
                self.recv(time.monotonic() + timeout)
            except (_Timeout, _Dead, Exception):  # noqa: BLE001 - closing anyway
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead_reason = self.dead_reason or "closed"
        self._log.close()


class EnvPool:
    """``num_workers`` copies of one env, each in its own process, stepped in parallel.

    Args:
        env_cfg: env registry node, e.g. ``{"name": "aloha_sim", "task": "transfer_cube", "image_size": 224}``
            (built in the worker with ``cosmos_lit.registry.build(env_cfg, "env")``); must be plain data.
        num_workers: number of envs (= processes).
        python_executable: interpreter for the workers (default: this one). It must be able to import
            ``cosmos_lit`` (the repo root is put on its PYTHONPATH) and the simulator.
        timeout_s: longest wait for one reset / step / render reply.
        start_timeout_s: longest wait for a worker to import and build its env.

    Every call takes one entry per slot (``None`` skips the slot) and returns one per slot: the result, ``None``
    for a skipped slot, or a ``WorkerError`` (exception text; the pool goes on with the other slots).
    """

    def __init__(
        self,
        env_cfg: dict[str, Any],
        num_workers: int,
        python_executable: str | None = None,
        timeout_s: float = 60.0,
        start_timeout_s: float = 180.0,
    ):
        if num_workers < 1:
            raise ValueError(f"EnvPool: num_workers must be >= 1, got {num_workers}")
        self.python = python_executable or sys.executable
        if not (Path(self.python).is_file() or _which(self.python)):
            raise FileNotFoundError(f"EnvPool: python_executable '{self.python}' not found")
        self.env_cfg = _plain(env_cfg)
        self.num_workers = int(num_workers)
        self.timeout_s, self.start_timeout_s = float(timeout_s), float(start_timeout_s)
        self.log_dir = Path(tempfile.mkdtemp(prefix="cosmos_lit_envpool_"))
        self._workers: list[_Worker] = []
        self.specs: list[dict[str, Any] | WorkerError] = []
        self._closed = False
        self._workers = [self._spawn(i) for i in range(self.num_workers)]
        self.specs = self._call([("build", self.env_cfg)] * self.num_workers, self.start_timeout_s)

    def _spawn(self, slot: int) -> _Worker:
        return _Worker(slot, self.python, self.log_dir / f"worker_{slot}.log")

    # -- public API ---------------------------------------------------------------------------------------------
    def reset(self, seeds: list[int | None]) -> list[Any]:
        """Reset every slot whose seed is not None; returns observations (or WorkerError / None per slot)."""
        return self._call([None if s is None else ("reset", int(s)) for s in self._per_slot(seeds, "seeds")])

    def step(self, actions: list[np.ndarray | None]) -> list[Any]:
        """Step every slot whose action is not None; returns (obs, reward, done, info) (or WorkerError / None)."""
        return self._call([None if a is None else ("step", np.asarray(a)) for a in self._per_slot(actions, "actions")])

    def render(self) -> list[Any]:
        """One frame (H, W, 3) uint8 per live slot (WorkerError for dead ones)."""
        return self._call([("render",)] * self.num_workers)

    def alive(self, slot: int) -> bool:
        w = self._workers[slot]
        return w.dead_reason is None and w.proc.poll() is None

    def restart(self, slot: int) -> dict[str, Any] | WorkerError:
        """Replace slot's worker with a fresh process and env; returns its spec (or WorkerError)."""
        self._workers[slot].kill("restarted")
        self._workers[slot].close(timeout=5)
        self._workers[slot] = self._spawn(slot)
        messages: list[tuple | None] = [None] * self.num_workers
        messages[slot] = ("build", self.env_cfg)
        self.specs[slot] = self._call(messages, self.start_timeout_s)[slot]
        return self.specs[slot]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.close(timeout=10)

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- internals ----------------------------------------------------------------------------------------------
    def _per_slot(self, values: list[Any], what: str) -> list[Any]:
        values = list(values)
        if len(values) != self.num_workers:
            raise ValueError(f"EnvPool: expected {self.num_workers} {what} (one per worker), got {len(values)}")
        return values

    def _call(self, messages: list[tuple | None], timeout: float | None = None) -> list[Any]:
        """Send each slot its message, then collect the replies against one shared deadline."""
        if self._closed:
            raise RuntimeError("EnvPool is closed")
        results: list[Any] = [None] * self.num_workers
        waiting = []
        for slot, msg in enumerate(messages):
            if msg is None:
                continue
            try:
                self._workers[slot].send(msg)
                waiting.append(slot)
            except _Dead as e:
                results[slot] = WorkerError(slot, str(e))
        deadline = time.monotonic() + (timeout or self.timeout_s)
        for slot in waiting:
            w, what = self._workers[slot], messages[slot][0]
            try:
                status, payload = w.recv(deadline)
                results[slot] = payload if status == "ok" else WorkerError(slot, f"'{what}' raised:\n{payload}")
            except _Timeout:
                reason = f"no reply to '{what}' within {timeout or self.timeout_s:.0f} s; worker killed{w.log_tail()}"
                w.kill(reason)
                results[slot] = WorkerError(slot, reason)
            except _Dead as e:
                w.kill(str(e))
                results[slot] = WorkerError(slot, f"'{what}' failed: {e}")
        return results


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def _plain(node: Any) -> dict[str, Any]:
    """OmegaConf nodes -> plain dicts (what can be pickled across interpreters)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:
        pass
    if not isinstance(node, dict):
        raise ValueError(f"EnvPool: env_cfg must be a mapping with a 'name' key, got {type(node).__name__}")
    return dict(node)


if __name__ == "__main__":
    serve()
