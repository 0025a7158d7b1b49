"""The policy server behind ``python -m cosmos_lit serve``: openpi's WebSocket protocol and the official Cosmos
Policy ``POST /act`` front (``cosmos_lit.serve.official_http``), one or both, in front of one batcher.

One asyncio event loop takes the connections of both fronts; the policy runs in one other thread (``run()``: the
calling thread, ``start()``: a worker thread), one forward at a time. Requests from all connections go to one queue;
the batcher takes the first queued request, waits up to ``batch_wait_ms`` (counted from its arrival) for more, up to
``max_batch``, and runs them as one ``policy([...])`` forward. The server reads a WebSocket's next request only after
answering the previous one (an HTTP request counts as a connection while in flight), so the wait ends early once
every open connection has a request queued (a lone client never waits). Requests queued while a forward runs are
taken together by the next one, so under load batches fill without extra waiting. Requests carrying a ``seed``
(reproducible queries, see ``cosmos_lit.serve.wire``) run one per forward.

A request that cannot be served (not msgpack or JSON, a missing camera, a wrong image shape or dtype, a wrong
proprio length, ...) is answered with one line naming the problem: an ``error: ...`` text message on its WebSocket,
which stays open, or an HTTP 4xx with ``{"error": ...}``; the other connections never see it. A forward that fails on
a batch is retried request by request, so only the request that makes it fail gets the error. A client that
disconnects while its request is in flight costs nothing but the forward it was in. ``GET /healthz`` on each front's
port answers ``200 OK`` (a load balancer's or a script's probe). With an API key both fronts require it
(``cosmos_lit.serve.access``); without one only loopback addresses are bound unless told otherwise.

Use::

    server = PolicyServer(CosmosPolicy.from_checkpoint(path), port=8000)
    server.run()                 # blocks (Ctrl-C stops it), or:
    with PolicyServer(policy, port=0).start() as server:   # a background thread; port 0: a free port
        ...  # server.port, server.url
    PolicyServer(policy, front="both", port=0, http_port=0).start()   # + POST server.http_url
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import http
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cosmos_lit.serve.access import authorized, check_bind, is_loopback
from cosmos_lit.serve.wire import (
    Answer,
    Candidate,
    Failure,
    KeyMap,
    Request,
    WireError,
    error_text,
    openpi_response,
    packb,
    parse_request,
    unpackb,
)
from cosmos_lit.serve.wire import metadata as build_metadata

log = logging.getLogger("cosmos_lit.serve")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20
FRONTS = ("openpi", "official_http", "both")


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future
    arrival: float  # perf_counter seconds


def _peer(connection: Any) -> str:
    addr = getattr(connection, "remote_address", None)
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class _CallerThreadExecutor(concurrent.futures.Executor):
    """An executor whose calls run in the thread that calls :meth:`work` (``PolicyServer.run``: the main thread)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        while cancel_futures:
            try:
                self._queue.get_nowait()[0].cancel()
            except queue.Empty:
                break

    def work(self, until: Any) -> None:
        """Run submitted calls until ``until()`` is true (checked at least every 0.1 s)."""
        while not until():
            try:
                future, fn, args, kwargs = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as e:
                future.set_exception(e)


class PolicyServer:
    """Serve a ``CosmosPolicy`` (or anything with its ``__call__``/``spec``/``seed``/``queries``/``execute_steps``/
    ``imagine``) over openpi's WebSocket wire, the official ``POST /act`` HTTP front, or both.

    Args:
        policy: the policy; used from one worker thread only.
        host: bind address; the loopback interface unless told otherwise. Another address needs ``api_key`` or
            ``allow_unauthenticated=True`` (``cosmos_lit.serve.access``).
        port: TCP port of the openpi front; 0 picks a free one (read ``server.port`` after ``start()``).
        max_batch: most requests per forward (of both fronts together).
        batch_wait_ms: how long the first queued request waits for others to join its batch.
        keys: the openpi front's observation key mapping overrides (``cosmos_lit.serve.wire.KeyMap.build``).
        default_prompt: instruction for requests without one (None: such a request is an error).
        max_message_bytes: largest request body; a larger one closes that WebSocket (code 1009) or gets HTTP 413.
        warmup: run warm-up forwards before accepting connections (the first query then costs what the others do).
        metadata: extra entries for the metadata message.
        front: ``openpi``, ``official_http`` or ``both``.
        http_port: TCP port of the ``/act`` front (8777, the official server's; 0: a free one).
        http_keys: the ``/act`` key overrides (``cosmos_lit.serve.official_http.HttpKeys.load``; the defaults come
            from ``configs/serve/<spec.name>.yaml``).
        http_future_images: decode the imagined future images for every ``/act`` answer (the official server does).
        api_key: the shared secret both fronts require (``Authorization: Api-Key <key>`` or ``Bearer <key>``).
        allow_unauthenticated: bind a non-loopback ``host`` without ``api_key``.
    """

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                 batch_wait_ms: float = 5.0, keys: dict[str, Any] | None = None, default_prompt: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, warmup: bool = True,
                 metadata: dict[str, Any] | None = None, front: str = "openpi", http_port: int = 8777,
                 http_keys: dict[str, Any] | None = None, http_future_images: bool = True, api_key: str | None = None,
                 allow_unauthenticated: bool = False):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch: expected an integer >= 1, got {max_batch}")
        if float(batch_wait_ms) < 0:
            raise ValueError(f"batch_wait_ms: expected >= 0, got {batch_wait_ms}")
        if int(max_message_bytes) < 1024:
            raise ValueError(f"max_message_bytes: expected at least 1024, got {max_message_bytes}")
        for name, value in (("port", port), ("http_port", http_port)):
            if not 0 <= int(value) < 65536:
                raise ValueError(f"{name}: expected 0..65535, got {value}")
        if front not in FRONTS:
            raise ValueError(f"front: expected one of {', '.join(FRONTS)}, got {front!r}")
        check_bind(str(host), api_key, allow_unauthenticated)
        self.policy = policy
        self.host = str(host)
        self.port = int(port)
        self.http_port = int(http_port)
        self.fronts = ("openpi", "official_http") if front == "both" else (front,)
        self.max_batch = int(max_batch)
        self.batch_wait_s = float(batch_wait_ms) / 1000.0
        try:
            self.keys = KeyMap.build(tuple(policy.spec.cameras), keys)
            self.http_keys = None
            if "official_http" in self.fronts:
                from cosmos_lit.serve.official_http import HttpKeys

                self.http_keys = HttpKeys.load(tuple(policy.spec.cameras), str(policy.spec.name), http_keys)
        except WireError as e:
            raise ValueError(str(e)) from None
        self.http_future_images = bool(http_future_images)
        self.api_key = api_key or None
        self.default_prompt = default_prompt
        self.max_message_bytes = int(max_message_bytes)
        self.warmup = bool(warmup)
        settings = {"max_batch": self.max_batch, "batch_wait_ms": float(batch_wait_ms),
                    "max_message_bytes": self.max_message_bytes, "default_prompt": default_prompt}
        self.metadata = build_metadata(policy, self.keys, **settings, **dict(metadata or {}))
        self._metadata_bytes = packb(self.metadata)
        # counters (read them from any thread; written by the event loop / worker thread)
        self.forward_calls = 0
        self.batch_sizes: list[int] = []
        self.requests_served = 0
        self.request_errors = 0
        self.open_connections = 0
        self.warmup_ms: list[float] = []
        self.bound_addresses: list[Any] = []
        self._pending: collections.deque[_Pending] = collections.deque()
        self._inflight: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._executor: concurrent.futures.Executor | None = None

    @property
    def url(self) -> str:
        """The openpi front's address."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """The official front's ``/act`` address."""
        return f"http://{self.host}:{self.http_port}/act"

    # ------------------------------------------------------------------------------------------------ inference

    def _forward(self, requests: list[Request]) -> list[Answer]:
        """One ``policy`` call for ``requests`` (runs in the worker thread)."""
        policy = self.policy
        observations = [r.observation for r in requests]
        seed = requests[0].seed
        if seed is not None:
            assert len(requests) == 1, "a seeded request runs alone"
            saved = policy.queries
            policy.queries = seed - policy.seed  # the policy draws the noise of seed + queries
            try:
                out = policy(observations)
            finally:
                policy.queries = saved
        else:
            seed = int(policy.seed + policy.queries)
            out = policy(observations)
        self.forward_calls += 1
        self.batch_sizes.append(len(requests))
        k = int(policy.execute_steps)
        cameras = list(policy.spec.cameras)
        actions = np.asarray(out["actions"])
        values = np.asarray(out["value"]) if "value" in out else None
        scores, choice = out.get("plan_scores"), out.get("plan_choice")
        futures = out.get("candidate_futures")  # world-model futures of every candidate (planning)

        def images(frames: np.ndarray) -> dict[str, np.ndarray]:  # (cameras, S, S, 3) -> {camera: image}
            return {cam: np.ascontiguousarray(frames[n]) for n, cam in enumerate(cameras)}

        def ensemble_mean(frames: np.ndarray) -> np.ndarray:  # (F, cameras, S, S, 3): the futures' mean image
            return np.rint(frames.astype(np.float32).mean(axis=0)).astype(np.uint8)

        want = [i for i, r in enumerate(requests) if r.future_images]
        executed: dict[int, np.ndarray] = {}
        if want and futures is not None:
            import torch

            rows = torch.as_tensor(want, dtype=torch.long)
            chosen = futures[rows, torch.as_tensor(choice[want], dtype=torch.long)]  # (R, F, C, T, H, W)
            executed = {i: ensemble_mean(f) for i, f in zip(want, policy.imagine(chosen))}
        elif want:
            executed = dict(zip(want, policy.imagine(out["latents"][want])))
        answers = []
        for i, r in enumerate(requests):
            answer = Answer(actions=np.ascontiguousarray(actions[i, :k], dtype=np.float32), seed=seed,
                            value=None if values is None else float(values[i]),
                            plan_score=None if scores is None else float(scores[i, choice[i]]),
                            future_images=images(executed[i]) if i in executed else None)
            if r.all_candidates and scores is not None:
                cand_images = None
                if r.future_images and futures is not None:
                    cand_images = [images(ensemble_mean(f)) for f in policy.imagine(futures[i])]
                answer.candidates = [Candidate(np.ascontiguousarray(a[:k], dtype=np.float32), float(sc),
                                               None if cand_images is None else cand_images[n])
                                     for n, (a, sc) in enumerate(zip(out["candidate_actions"][i], scores[i]))]
            elif r.all_candidates:  # the direct policy: its one sample
                answer.candidates = [Candidate(answer.actions, answer.value, answer.future_images)]
            answers.append(answer)
        return answers

    def _run_group(self, group: list[_Pending]) -> list[Answer | Failure]:
        """Forward a group; a failing batch is retried one by one so only the culprit gets the error."""
        start = time.perf_counter()
        try:
            answers: list[Answer | Failure] = list(self._forward([p.request for p in group]))
        except Exception as e:
            if len(group) > 1:
                return [self._run_group([p])[0] for p in group]
            log.warning("inference failed: %s: %s", type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
            return [Failure(f"inference failed: {type(e).__name__}: {e}", 500)]
        end = time.perf_counter()
        for p, answer in zip(group, answers):
            if isinstance(answer, Answer):
                answer.timing = {"infer_ms": _ms(end - start), "queue_ms": _ms(start - p.arrival),
                                 "batch_size": len(group)}
        return answers

    def _warm_up(self) -> None:
        """Two forwards on a blank observation (lazy initialisation, allocator and kernel caches), then the query
        counter is put back: the first client's noise is the one an untouched policy would draw."""
        spec = self.policy.spec
        s = int(spec.image_size)
        obs = {"images": {c: np.zeros((s, s, 3), np.uint8) for c in spec.cameras},
               "proprio": np.zeros(int(spec.proprio_dim), np.float32), "instruction": self.default_prompt or ""}
        saved = self.policy.queries
        try:
            for _ in range(2):
                t0 = time.perf_counter()
                self.policy([obs])
                self.warmup_ms.append(_ms(time.perf_counter() - t0))
        finally:
            self.policy.queries = saved
        log.info("warm-up forwards: %s ms", ", ".join(f"{t:.1f}" for t in self.warmup_ms))

    # ------------------------------------------------------------------------------------------------ batching

    def _submit(self, pending: _Pending) -> None:
        self._pending.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()

    def _take(self) -> list[_Pending]:
        """The next group: the first pending seeded request alone, or up to max_batch unseeded ones."""
        first = self._pending[0]
        if first.request.seed is not None:
            return [self._pending.popleft()]
        group, keep = [], collections.deque()
        while self._pending and len(group) < self.max_batch:
            p = self._pending.popleft()
            (group if p.request.seed is None else keep).append(p)
        self._pending.extendleft(reversed(keep))
        return group

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pending[0]
            if first.request.seed is None:
                deadline = first.arrival + self.batch_wait_s
                while sum(p.request.seed is None for p in self._pending) < self.max_batch:
                    remaining = deadline - time.perf_counter()
                    # a connection's next request is read only after its answer: once every open connection has one
                    # queued, no other can join (a lone robot pays no waiting window)
                    if remaining <= 0 or len(self._pending) >= self.open_connections:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            group = [p for p in self._take() if not p.future.done()]
            if not group:
                continue
            self._inflight = group
            try:
                results = await loop.run_in_executor(self._executor, self._run_group, group)
            except Exception as e:  # never let the batcher die
                log.exception("batcher: unexpected failure")
                results = [Failure(f"server failure: {type(e).__name__}: {e}", 500)] * len(group)
            self._inflight = []
            for p, r in zip(group, results):
                if not p.future.done():
                    p.future.set_result(r)

    def _fail_waiting(self, message: str) -> None:
        for p in [*self._inflight, *self._pending]:
            if not p.future.done():
                p.future.set_result(Failure(message, 503))
        self._pending.clear()
        self._inflight = []

    # ------------------------------------------------------------------------------------------------ connections

    async def _infer(self, request: Request, arrival: float) -> Answer | Failure:
        """Queue one validated request (of either front) for the batcher and wait for its answer."""
        assert self._loop is not None
        future = self._loop.create_future()
        self._submit(_Pending(request, future, arrival))
        return await future

    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path.split("?")[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not authorized(request.headers.get("Authorization"), self.api_key):
            log.warning("client %s: refused (missing or wrong API key)", _peer(connection))
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n")
        return None

    async def _handler(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = _peer(connection)
        log.info("client %s connected", peer)
        prev_total_ms: float | None = None
        self.open_connections += 1
        try:
            await connection.send(self._metadata_bytes)
            async for message in connection:
                arrival = time.perf_counter()
                try:
                    request = parse_request(unpackb(message), self.policy.spec, self.keys, self.default_prompt)
                except WireError as e:
                    self._count_error(peer, str(e))
                    await connection.send(error_text(str(e)))
                    continue
                answer = await self._infer(request, arrival)
                if isinstance(answer, Failure):
                    self.request_errors += 1
                    await connection.send(error_text(answer.message))
                    continue
                answer.timing["prev_total_ms"] = prev_total_ms
                # counted before the send: a client that has its answer must already see it counted
                self.requests_served += 1
                await connection.send(packb(openpi_response(answer)))
                prev_total_ms = _ms(time.perf_counter() - arrival)
                self._log_served(peer, answer.timing, prev_total_ms)
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code not in (1000, 1001):
                log.info("client %s: connection closed (%s %s)", peer, e.rcvd.code, e.rcvd.reason)
            elif e.sent is not None and e.sent.code not in (1000, 1001):
                log.warning("client %s: connection closed by the server (%s %s)", peer, e.sent.code, e.sent.reason)
        finally:
            self.open_connections -= 1
            log.info("client %s disconnected", peer)

    def _count_error(self, peer: str, message: str) -> None:
        self.request_errors += 1
        log.warning("client %s: bad request: %s", peer, message)

    def _log_served(self, peer: str, timing: dict[str, Any], total_ms: float) -> None:
        log.info("infer client=%s batch=%d queue_ms=%.1f infer_ms=%.1f total_ms=%.1f", peer, timing["batch_size"],
                 timing["queue_ms"], timing["infer_ms"], total_ms)

    async def _http_infer(self, request: Request, arrival: float) -> Answer | Failure:
        """The ``/act`` front's inference: an HTTP request counts as an open connection while it is in flight."""
        self.open_connections += 1
        try:
            answer = await self._infer(request, arrival)
        finally:
            self.open_connections -= 1
        if isinstance(answer, Answer):
            answer.timing["prev_total_ms"] = None
        return answer

    async def _start_http(self) -> tuple[Any, asyncio.Task]:
        """Bind the ``/act`` front and serve it from this event loop (uvicorn); returns (uvicorn server, task)."""
        import socket

        import uvicorn

        from cosmos_lit.serve.official_http import build_app

        def served() -> None:
            self.requests_served += 1

        app = build_app(self._http_infer, self.policy.spec, self.http_keys, default_prompt=self.default_prompt,
                        max_body_bytes=self.max_message_bytes, api_key=self.api_key,
                        future_images=self.http_future_images, metadata=self.metadata,
                        on_error=lambda peer, message: self._count_error(peer, message), on_served=served)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.http_port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.http_port = int(sock.getsockname()[1])
        self.bound_addresses.append(sock.getsockname())
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():  # failed to start: raise its error here
                task.result()
                raise RuntimeError("the /act front stopped while starting")
            await asyncio.sleep(0.01)
        return server, task

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Warm up, bind, serve until :meth:`stop` (or cancellation)."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        if self._executor is None:  # start(): a worker thread; run() has set the calling thread's executor
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cosmos-policy")
        try:
            if self.warmup:
                await self._loop.run_in_executor(self._executor, self._warm_up)
            async with contextlib.AsyncExitStack() as stack:
                self.bound_addresses = []
                if "openpi" in self.fronts:
                    ws = await stack.enter_async_context(
                        serve(self._handler, self.host, self.port, process_request=self._process_request,
                              max_size=self.max_message_bytes, compression=None))
                    self.bound_addresses += [sock.getsockname() for sock in ws.sockets]
                    self.port = int(self.bound_addresses[0][1])
                    log.info("serving on %s (openpi front; health check: http://%s:%d/healthz)", self.url, self.host,
                             self.port)
                if "official_http" in self.fronts:
                    http_server, http_task = await self._start_http()

                    async def stop_http() -> None:
                        http_server.should_exit = True
                        await asyncio.gather(http_task, return_exceptions=True)

                    stack.push_async_callback(stop_http)
                    log.info("serving on %s (official front, POST; health check: http://%s:%d/healthz)",
                             self.http_url, self.host, self.http_port)
                batcher = asyncio.create_task(self._batcher())
                log.info("serving %s: max_batch=%d, batch_wait_ms=%.1f, API key %s", " + ".join(self.fronts),
                         self.max_batch, self.batch_wait_s * 1000, "required" if self.api_key else "off")
                if not self.api_key and not is_loopback(self.host):
                    log.warning("listening on %s without an API key: anyone reaching the port can query the policy",
                                self.host)
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    batcher.cancel()
                    await asyncio.gather(batcher, return_exceptions=True)
                    self._fail_waiting("the server is shutting down")
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def run(self) -> None:
        """Serve until Ctrl-C: the event loop runs in a background thread, the policy's forwards in this one.

        On a CPU, forwards in the thread that loaded the model are about twice as fast as in another thread (measured
        with torch 2.14 on 2 cores: a second thread using the intra-op pool slows both down), so ``serve`` keeps them
        here; :meth:`start` (a server inside another program) runs them in a worker thread instead."""
        if self._thread is not None:
            raise RuntimeError("PolicyServer.run: already started")
        executor = _CallerThreadExecutor()
        self._executor = executor
        self._thread = threading.Thread(target=self._thread_main, name="cosmos-serve", daemon=True)
        self._thread.start()
        try:
            executor.work(until=lambda: not self._thread.is_alive())  # type: ignore[union-attr]
        except KeyboardInterrupt:
            log.info("stopping (interrupted)")
        finally:
            self.stop()
        if self._failure is not None and not isinstance(self._failure, asyncio.CancelledError):
            raise self._failure

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:  # reported by start() (or kept for the caller to inspect)
            self._failure = e
            self._ready.set()

    def start(self, timeout_s: float = 300.0) -> "PolicyServer":
        """Serve from a background thread; returns once the server accepts connections (after the warm-up)."""
        if self._thread is not None:
            raise RuntimeError("PolicyServer.start: already started")
        self._thread = threading.Thread(target=self._thread_main, name="cosmos-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"PolicyServer did not start within {timeout_s} s")
        if self._failure is not None:
            raise RuntimeError(f"PolicyServer failed to start: {type(self._failure).__name__}: {self._failure}") from self._failure
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop a server started with :meth:`start` (idempotent)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
                if not self._ready.is_set() and self._task is not None:  # still warming up: nothing to close
                    self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # the loop closed in between
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "PolicyServer":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
