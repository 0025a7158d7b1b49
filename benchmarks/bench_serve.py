"""Loopback load test of ``python -m cosmos_lit serve``: N concurrent clients against in-process calls, same run.

The server runs as its own process (the ``serve`` verb with ``front=both``, exactly as deployed) on 127.0.0.1; the
clients are threads of this process, each sending a fixed number of requests one after the other (closed loop: a
client sends its next observation when the previous answer is back, as a robot does), over openpi's WebSocket wire
(``cosmos_lit.client``) or the official ``POST /act`` front (json-numpy bodies on a keep-alive HTTP connection per
client, the official response with its future images). For every front and N in ``--clients`` it reports the
client-side latency (p50/p99, request sent -> answer decoded), the throughput (requests / wall time) and the mean
batch the server formed. The in-process rows are ``policy([obs] * B)`` calls in this process with the same
checkpoint and settings, measured before the server starts (so the two never share the CPU):
B = 1 is the latency floor of one query, B = N the throughput a perfectly batched server could reach.

Bounded: a fixed request count per client, a receive time-out per request, and a time budget after which no new
requests are sent (the rows then say how many were done).

    python benchmarks/bench_serve.py                         # the tiny test checkpoint on the CPU
    python benchmarks/bench_serve.py --ckpt runs/.../last.ckpt --device cuda --requests 50
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def observation(spec, i: int) -> dict:
    rng = np.random.default_rng(i)
    s = int(spec.image_size)
    return {"images": {c: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for c in spec.cameras},
            "proprio": rng.uniform(-0.5, 0.5, int(spec.proprio_dim)).astype(np.float32), "instruction": "benchmark"}


def stats(latencies_s: list[float], wall_s: float) -> tuple[float, float, float]:
    lat = np.asarray(latencies_s) * 1000.0
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), len(lat) / wall_s


def in_process_rows(args: argparse.Namespace) -> list[tuple]:
    from cosmos_lit.policy import CosmosPolicy

    policy = CosmosPolicy.from_checkpoint(args.ckpt, map_location=args.device, num_steps=args.num_steps)
    spec = policy.spec
    rows = []
    for b in sorted({1, *args.clients}):
        obs = [observation(spec, i) for i in range(b)]
        for _ in range(2):  # warm-up, as the server does
            policy(obs)
        calls = max(3, args.requests if b == 1 else args.requests // 2)
        lat = []
        t0 = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            policy(obs)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        p50, p99, _ = stats(lat, wall)
        rows.append(("in-process", f"batch {b}", calls * b, p50, p99, calls * b / wall, float(b)))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int, http_port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cosmos_lit", "serve", f"ckpt_path={args.ckpt}", "front=both", f"port={port}",
           f"http_port={http_port}", f"device={args.device}", f"max_batch={args.max_batch}",
           f"batch_wait_ms={args.batch_wait_ms}", "log_level=warning", *extra]
    if args.num_steps:
        cmd.append(f"num_steps={args.num_steps}")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("the server did not come up within 300 s")


class ActClient:
    """``POST /act`` in the official request format on one keep-alive connection; ``infer`` takes our observation."""

    def __init__(self, port: int, timeout_s: float):
        import http.client

        import json_numpy

        self._json = json_numpy
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        self.keys = self._call("GET", "/metadata")["http_keys"]

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict:
        self._conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return self._json.loads(data)

    def infer(self, obs: dict) -> dict:
        request = {self.keys["images"][c]: img for c, img in obs["images"].items()}
        request[self.keys["proprio"]] = obs["proprio"]
        request[self.keys["instruction"]] = obs["instruction"]
        return self._call("POST", "/act", self._json.dumps(request).encode())

    def close(self) -> None:
        self._conn.close()


def served_row(args: argparse.Namespace, front: str, port: int, spec, n: int, deadline: float) -> tuple:
    from cosmos_lit.client import CosmosPolicyClient

    if front == "openpi":
        clients: list = [CosmosPolicyClient("127.0.0.1", port, timeout_s=args.timeout_s) for _ in range(n)]
    else:
        clients = [ActClient(port, args.timeout_s) for _ in range(n)]
    for c in clients:  # one request each first: connections and first messages out of the measurement
        c.infer(observation(spec, 0))
    lat: list[list[float]] = [[] for _ in range(n)]
    batches: list[list[int]] = [[] for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    errors: list[str] = []

    def run(i: int) -> None:
        obs = [observation(spec, 100 * i + r) for r in range(min(args.requests, 8))]
        barrier.wait()
        for r in range(args.requests):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            try:
                out = clients[i].infer(obs[r % len(obs)])
            except Exception as e:  # reported in the table's note, never hangs the run
                errors.append(f"{type(e).__name__}: {e}")
                break
            lat[i].append(time.perf_counter() - t)
            batches[i].append(int(out["server_timing"]["batch_size"]))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=args.timeout_s * args.requests)
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    flat = [x for xs in lat for x in xs]
    if errors:
        print(f"  {n} clients: {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    p50, p99, thr = stats(flat, wall)
    mode = {"openpi": "server, openpi WebSocket", "official_http": "server, official POST /act",
            "official_http_no_images": "server, POST /act, http_future_images=false"}[front]
    return (mode, f"{n} client{'s' if n > 1 else ''}", len(flat), p50, p99, thr,
            float(np.mean([b for bs in batches for b in bs])))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(ROOT / "tests" / "data" / "checkpoint_v0.ckpt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-steps", type=int, default=None, help="denoising steps per query (default: the model's)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--timeout-s", type=float, default=60.0, help="most seconds to wait for one answer")
    p.add_argument("--time-budget-s", type=float, default=600.0, help="no new requests after this long")
    args = p.parse_args()
    import torch

    start = time.monotonic()
    rows = in_process_rows(args)
    from cosmos_lit.policy import CosmosPolicy

    spec = CosmosPolicy.from_checkpoint(args.ckpt).spec
    # the official front decodes the imagined next images for every answer (as NVIDIA's server): a VAE decode per
    # query, measured as deployed and, from a second server, without it
    for extra, fronts in (((), ("openpi", "official_http")), (("http_future_images=false",), ("official_http_no_images",))):
        port, http_port = free_port(), free_port()
        proc = start_server(args, port, http_port, *extra)
        try:
            for front in fronts:
                for n in args.clients:
                    rows.append(served_row(args, front, port if front == "openpi" else http_port, spec, n,
                                           start + args.time_budget_s))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    steps = args.num_steps or "model default"
    print(f"\n{Path(args.ckpt).name}: cameras {list(spec.cameras)} at {spec.image_size}², chunk {spec.chunk_size}x"
          f"{spec.action_dim}, num_steps {steps}, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; server max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms}\n")
    print("| mode | load | requests | p50 ms | p99 ms | throughput req/s | mean batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode, load, count, p50, p99, thr, batch in rows:
        print(f"| {mode} | {load} | {count} | {p50:.1f} | {p99:.1f} | {thr:.1f} | {batch:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
