"""A small synchronous client for ``python -m cosmos_lit serve``, and helpers that turn action chunks into actions.

The server speaks openpi's protocol, so ``openpi_client.websocket_client_policy.WebsocketClientPolicy`` works as
well; this client needs only ``websockets`` and ``msgpack`` (the ``serve`` extra) and adds what openpi's lacks:
time-outs, the server's error messages as exceptions, and reproducible seeding::

    from cosmos_lit.client import CosmosPolicyClient, OpenLoopChunker

    with CosmosPolicyClient("127.0.0.1", 8000) as client:
        chunker = OpenLoopChunker(k=client.metadata["execute_steps"])
        obs = env.reset(seed)
        while not done:
            action = chunker.act(lambda: client.infer(obs)["actions"])   # queries only when the chunk is used up
            obs, reward, done, info = env.step(action)

Observations are sent as given: openpi-style maps (``{"images": {"cam_high": ...}, "state": ..., "prompt": ...}``)
or our own (``{"images": {camera: ...}, "proprio": ..., "instruction": ...}``), which the server's default key
mapping accepts too.

Chunk execution:

- :class:`OpenLoopChunker`: execute the first ``k`` actions of each chunk open loop, then query again (what the
  in-process evaluation does with ``execute_steps = k``).
- :class:`TemporalEnsembler`: ACT's temporal ensembling. Query every ``query_every`` steps (1 in ACT); the action
  executed at step t is the weighted mean of every stored chunk's prediction for step t. The chunk queried at step
  t0 predicts steps t0 .. t0 + K − 1; among the m chunks covering step t, ordered oldest first, chunk i weighs
  ``exp(−decay · i)`` (normalised to sum 1), so the oldest prediction weighs most and new ones fold in gradually
  (ACT, Zhao et al. 2023, with ``decay = 0.01``). ``decay = 0`` is the plain mean; a large decay keeps the oldest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cosmos_lit.seeding import episode_seed
from cosmos_lit.serve.wire import packb, unpackb


class ServerError(RuntimeError):
    """The server answered a request with an error message (the connection stays usable)."""


class CosmosPolicyClient:
    """Synchronous WebSocket client of a policy server.

    Args:
        host, port: the server (``ws://host:port``); ``host`` may be a full ``ws://...`` URL (then ``port`` is ignored
            when None).
        timeout_s: most seconds to wait for one response (``TimeoutError`` after).
        connect_timeout_s: most seconds to keep retrying the connection (a server that is still warming up).
        reproducible: send ``seed = episode_seed(metadata["seed"], episode, i)`` with the i-th query since
            :meth:`reset` ``(episode)`` (``cosmos_lit.seeding``; ``metadata["seed"] + i`` for episode 0, also since
            connecting): the episode then draws the noise the in-process evaluation (``run_episodes``) draws for the
            env seed ``episode``, query for query. Such queries run unbatched on the server.
        api_key: the server's API key, sent as ``Authorization: Api-Key <key>`` (as openpi's client does); a server
            that refuses it raises ``PermissionError``.

    ``metadata``: the server's metadata message (spec, ``execute_steps``, ``seed``, key mapping, settings).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = 8000, timeout_s: float = 60.0,
                 connect_timeout_s: float = 30.0, reproducible: bool = False, max_message_bytes: int | None = None,
                 api_key: str | None = None):
        import time

        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        self.url = host if host.startswith(("ws://", "wss://")) else f"ws://{host}"
        if port is not None and not host.startswith(("ws://", "wss://")):
            self.url += f":{int(port)}"
        self.timeout_s = float(timeout_s)
        self.reproducible = bool(reproducible)
        self.episode, self.queries = 0, 0
        deadline = time.monotonic() + float(connect_timeout_s)
        while True:
            try:
                self._ws = connect(self.url, compression=None, max_size=max_message_bytes,
                                   open_timeout=max(1.0, min(10.0, deadline - time.monotonic())),
                                   additional_headers={"Authorization": f"Api-Key {api_key}"} if api_key else None)
                self._ws.__enter__()  # what `with connect(...)` does (websockets >= 17.1 warns otherwise); closed by close()
                break
            except InvalidStatus as e:
                if e.response.status_code == 401:
                    raise PermissionError(f"{self.url} refused the connection: "
                                          f"{'wrong API key' if api_key else 'it needs an API key (api_key=...)'}") from None
                raise ConnectionError(f"{self.url} refused the connection with HTTP {e.response.status_code}") from None
            except (ConnectionRefusedError, TimeoutError, OSError):
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"no policy server answers at {self.url} (waited {connect_timeout_s} s)") from None
                time.sleep(0.2)
        try:
            first = self._ws.recv(timeout=self.timeout_s)
            self.metadata: dict[str, Any] = unpackb(first)
        except BaseException:
            self._ws.close()
            raise

    def infer(self, obs: dict[str, Any], seed: int | None = None, future_images: bool = False) -> dict[str, Any]:
        """Send one observation; returns the response (``actions`` (k, A), ``value``, ``server_timing``, ...).

        ``seed``: this query's noise seed (overrides ``reproducible``); ``future_images``: also return the imagined
        future camera images. Raises :class:`ServerError` with the server's message for a bad request."""
        msg = dict(obs)
        keys = self.metadata.get("keys") or {}
        if seed is None and self.reproducible:
            seed = episode_seed(int(self.metadata.get("seed", 0)), self.episode, self.queries)
        if seed is not None:
            msg[keys.get("seed", "seed")] = int(seed)
        if future_images:
            msg[keys.get("future_images", "return_future_images")] = True
        self._ws.send(packb(msg))
        answer = self._ws.recv(timeout=self.timeout_s)
        if isinstance(answer, str):
            raise ServerError(answer.removeprefix("error: "))
        self.queries += 1
        return unpackb(answer)

    def reset(self, episode: int = 0) -> None:
        """Start a new episode (``episode``: its env seed, for the reproducible seeds): queries count from 0 again."""
        self.episode = int(episode)
        self.queries = 0

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "CosmosPolicyClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- chunk execution


class OpenLoopChunker:
    """Execute ``k`` actions of each chunk open loop, then ask for a new chunk.

    Args:
        k: actions per chunk to execute (None: the whole chunk, however long).
    """

    def __init__(self, k: int | None = None):
        if k is not None and int(k) < 1:
            raise ValueError(f"OpenLoopChunker: k must be >= 1, got {k}")
        self.k = None if k is None else int(k)
        self.reset()

    def reset(self) -> None:
        self._chunk: np.ndarray | None = None
        self._i = 0

    @property
    def needs_chunk(self) -> bool:
        """True when the next action needs a new chunk (at the start and after k actions)."""
        return self._chunk is None or self._i >= self._limit

    @property
    def _limit(self) -> int:
        assert self._chunk is not None
        return len(self._chunk) if self.k is None else min(self.k, len(self._chunk))

    def add(self, chunk: Any) -> None:
        """A new (K, A) chunk; its first action is the next one executed."""
        arr = np.asarray(chunk)
        if arr.ndim != 2 or len(arr) == 0:
            raise ValueError(f"OpenLoopChunker.add: expected a (K, A) chunk, got shape {arr.shape}")
        self._chunk, self._i = arr, 0

    def step(self) -> np.ndarray:
        """The next action (A,)."""
        if self.needs_chunk:
            raise RuntimeError("OpenLoopChunker.step: no actions left; add() a new chunk first")
        assert self._chunk is not None
        action = self._chunk[self._i]
        self._i += 1
        return action

    def act(self, query: Callable[[], Any]) -> np.ndarray:
        """The next action, calling ``query() -> (K, A) chunk`` first when a new chunk is needed."""
        if self.needs_chunk:
            self.add(query())
        return self.step()


class TemporalEnsembler:
    """ACT-style temporal ensembling of overlapping chunks (see the module docstring for the weighting).

    Args:
        decay: the exponential weight's rate m in ``exp(-m * i)``, i = 0 for the oldest prediction (ACT: 0.01).
        query_every: steps between queries (1: a new chunk every step, as ACT).
    """

    def __init__(self, decay: float = 0.01, query_every: int = 1):
        if not math.isfinite(float(decay)) or float(decay) < 0:
            raise ValueError(f"TemporalEnsembler: decay must be a finite number >= 0, got {decay}")
        if int(query_every) < 1:
            raise ValueError(f"TemporalEnsembler: query_every must be >= 1, got {query_every}")
        self.decay = float(decay)
        self.query_every = int(query_every)
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, (K, A)), oldest first

    @property
    def needs_chunk(self) -> bool:
        """True on the steps where a new chunk is due (every ``query_every`` steps, and when nothing covers t)."""
        due = self.t % self.query_every == 0 and not any(start == self.t for start, _ in self._chunks)
        covered = any(start <= self.t < start + len(c) for start, c in self._chunks)
        return due or not covered

    def add(self, chunk: Any) -> None:
        """The chunk predicted from the observation at the current step (its row 0 is for this step)."""
        arr = np.asarray(chunk, dtype=np.float64)
        if arr.ndim != 2 or len(arr) == 0:
            raise ValueError(f"TemporalEnsembler.add: expected a (K, A) chunk, got shape {arr.shape}")
        if self._chunks and arr.shape[1] != self._chunks[0][1].shape[1]:
            raise ValueError(f"TemporalEnsembler.add: action size {arr.shape[1]} != {self._chunks[0][1].shape[1]}")
        self._chunks.append((self.t, arr))

    def weights(self, count: int) -> np.ndarray:
        """Normalised weights of ``count`` predictions, oldest first."""
        w = np.exp(-self.decay * np.arange(count))
        return w / w.sum()

    def step(self) -> np.ndarray:
        """The ensembled action for the current step; advances to the next step."""
        self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > self.t]  # drop chunks that ended
        preds = [c[self.t - s] for s, c in self._chunks if s <= self.t]
        if not preds:
            raise RuntimeError(f"TemporalEnsembler.step: no chunk covers step {self.t}; add() one first")
        action = (self.weights(len(preds))[:, None] * np.stack(preds)).sum(axis=0)
        self.t += 1
        return action.astype(np.float32)

    def act(self, query: Callable[[], Any]) -> np.ndarray:
        """The next action, calling ``query() -> (K, A) chunk`` on the steps a new chunk is due."""
        if self.needs_chunk:
            self.add(query())
        return self.step()
