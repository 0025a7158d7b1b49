"""The policy server (``cosmos_lit.serve``): openpi wire compatibility with the released ``openpi-client``, our
client, request batching, bad input and disconnects, the health check, the ``serve`` verb, the chunk execution
helpers, and gym-aloha driven through the server with the in-process evaluation's result.

Every server here binds 127.0.0.1 on a free port; every request loop is bounded (a fixed count, time-outs on every
receive)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import msgpack  # the `serve` extra and openpi-client: scripts/setup.sh installs both; missing fails, not skips
import numpy as np
import openpi_client  # noqa: F401
import pytest
import websockets  # noqa: F401

from cosmos_lit.client import CosmosPolicyClient, OpenLoopChunker, ServerError, TemporalEnsembler
from cosmos_lit.serve import KeyMap, PolicyServer, WireError, packb, parse_request, unpackb
from cosmos_lit.spec import DataSpec
from helpers import EchoPolicy, ServeProcess, in_process

# openpi-client 0.1.2 calls websockets' connect() without a `with` (deprecated in websockets 17.1): theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"
RECV_TIMEOUT = 60.0
PROMPT = "pick up the red cube with the right arm and hand it over to the left arm"


def load_policy(**kwargs):
    from cosmos_lit.policy import CosmosPolicy

    return CosmosPolicy.from_checkpoint(CKPT, num_steps=1, **kwargs)


def observation(i: int = 0) -> dict:
    """Our observation format (64² top camera, 14-dim proprio), different for each i."""
    rng = np.random.default_rng(i)
    return {"images": {"top": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
            "proprio": rng.uniform(-0.5, 0.5, 14).astype(np.float32), "instruction": PROMPT}


def openpi_request(obs: dict, **extra) -> dict:
    """The same observation in openpi's ALOHA convention: images/cam_high (3, H, W), state, prompt."""
    return {"images": {"cam_high": np.ascontiguousarray(obs["images"]["top"].transpose(2, 0, 1))},
            "state": obs["proprio"], "prompt": obs["instruction"], **extra}


def raw_connect(port: int):
    from websockets.sync.client import connect

    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=30).__enter__()
    meta = unpackb(ws.recv(timeout=RECV_TIMEOUT))
    return ws, meta


@pytest.fixture(scope="module")
def server():
    srv = PolicyServer(load_policy(), port=0, max_batch=8, batch_wait_ms=20, max_message_bytes=1 << 20).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    return load_policy()


# ---------------------------------------------------------------------------------------------------- warm-up first


def test_warm_up_runs_before_the_first_connection(server):
    """Timing is a benchmark's job (benchmarks/bench_serve.py); here: the warm-up forwards ran before serving."""
    assert len(server.warmup_ms) == 2  # ran before the server accepted its first connection
    with CosmosPolicyClient("127.0.0.1", server.port, timeout_s=RECV_TIMEOUT) as client:
        assert client.infer(observation(0))["actions"].ndim == 2


# ---------------------------------------------------------------------------------------------------- openpi-client


def test_openpi_client_round_trip(server, reference):
    from openpi_client.action_chunk_broker import ActionChunkBroker
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    try:
        meta = client.get_server_metadata()
        assert meta["server"] == "cosmos_lit" and meta["spec"]["cameras"] == ["top"]
        assert meta["spec"]["proprio_dim"] == 14 and meta["execute_steps"] == 50
        assert meta["keys"]["images"]["top"][0] == "images/cam_high" and meta["keys"]["proprio"][0] == "state"
        obs = observation(1)
        out = client.infer(openpi_request(obs, seed=7))
        assert out["actions"].shape == (50, 14) and out["actions"].dtype == np.float32
        ref = in_process(reference, obs, seed=7)
        np.testing.assert_allclose(out["actions"], ref["actions"][0], rtol=0, atol=1e-5)
        assert out["seed"] == 7 and 0.0 <= out["value"] <= 1.0 and abs(out["value"] - float(ref["value"][0])) < 1e-5
        assert out["server_timing"]["infer_ms"] > 0 and out["server_timing"]["batch_size"] == 1
        # without a seed: the server's own counter, still a full chunk in env units
        plain = client.infer(openpi_request(obs))
        assert plain["actions"].shape == (50, 14) and np.isfinite(plain["actions"]).all()
        # openpi's ActionChunkBroker: one request per 5 actions
        before = server.requests_served
        broker = ActionChunkBroker(client, action_horizon=5)
        steps = [broker.infer(openpi_request(obs))["actions"] for _ in range(5)]
        assert all(a.shape == (14,) for a in steps) and server.requests_served == before + 1
        # a bad request: openpi's client raises with the server's message
        with pytest.raises(RuntimeError, match="missing the image of camera 'top'"):
            client.infer({"state": obs["proprio"], "prompt": PROMPT})
        assert client.infer(openpi_request(obs, seed=7))["actions"].shape == (50, 14)  # the connection still serves
    finally:
        client._ws.close()


# ---------------------------------------------------------------------------------------------------- our client


def test_our_client_formats_seeds_and_future_images(server, reference):
    obs = observation(2)
    with CosmosPolicyClient("127.0.0.1", server.port, timeout_s=RECV_TIMEOUT) as client:
        native = client.infer(obs, seed=11, future_images=True)  # our own observation keys
        openpi = client.infer(openpi_request(obs), seed=11)  # openpi's keys, CHW image
        np.testing.assert_array_equal(native["actions"], openpi["actions"])
        ref = in_process(reference, obs, seed=11)
        np.testing.assert_allclose(native["actions"], ref["actions"][0], rtol=0, atol=1e-5)
        fut = native["future_images"]["top"]
        assert fut.shape == (64, 64, 3) and fut.dtype == np.uint8 and "future_images" not in openpi
        expected = reference.imagine(ref["latents"])[0, 0]
        assert np.abs(fut.astype(int) - expected.astype(int)).max() <= 1
        with pytest.raises(ServerError, match="expected 14 numbers"):
            client.infer({**obs, "proprio": np.zeros(3, np.float32)})
    with CosmosPolicyClient("127.0.0.1", server.port, timeout_s=RECV_TIMEOUT, reproducible=True) as client:
        base = client.metadata["seed"]
        first = [client.infer(obs)["seed"], client.infer(obs)["seed"]]
        client.reset()
        again = client.infer(obs)
        assert first == [base, base + 1] and again["seed"] == base
        np.testing.assert_allclose(again["actions"], in_process(reference, obs, base)["actions"][0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- batching


def test_concurrent_clients_are_batched_and_get_their_own_answers():
    policy = EchoPolicy(delay_s=0.1)
    clients, per_client = 8, 3
    with PolicyServer(policy, port=0, max_batch=4, batch_wait_ms=50).start() as srv:
        policy.calls.clear()  # the warm-up's
        barrier = threading.Barrier(clients)
        answers: dict[int, list[bool]] = {}

        def run(c: int) -> None:
            with CosmosPolicyClient("127.0.0.1", srv.port, timeout_s=RECV_TIMEOUT) as client:
                barrier.wait(timeout=30)
                got = []
                for r in range(per_client):
                    value = np.float32(c * 10 + r)
                    obs = {"images": {"top": np.zeros((16, 16, 3), np.uint8)}, "proprio": np.full(3, value), "prompt": "x"}
                    got.append(bool(np.all(client.infer(obs)["actions"] == value)))
                answers[c] = got

        threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(answers.get(c) == [True] * per_client for c in range(clients)), answers
        requests = clients * per_client
        assert sum(policy.calls) == requests and len(policy.calls) < requests, policy.calls
        assert max(policy.calls) > 1 and max(policy.calls) <= 4 and srv.batch_sizes[-len(policy.calls):] == policy.calls


def test_real_policy_batches_concurrent_openpi_clients(server):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    calls = []
    planner = server.policy.planner
    original = planner.plan

    def counting_plan(model, images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(model, images, *args, **kwargs)

    planner.plan = counting_plan
    wait = server.batch_wait_s
    server.batch_wait_s = 0.5  # the four requests surely meet in one window on a busy machine
    try:
        clients = [WebsocketClientPolicy(host="127.0.0.1", port=server.port) for _ in range(4)]
        barrier = threading.Barrier(len(clients))
        shapes: dict[int, tuple] = {}

        def run(i: int) -> None:
            barrier.wait(timeout=30)
            shapes[i] = clients[i].infer(openpi_request(observation(10 + i)))["actions"].shape

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for c in clients:
            c._ws.close()
    finally:
        server.batch_wait_s = wait
        del planner.plan  # back to the class's method
    assert shapes == {i: (50, 14) for i in range(4)}
    assert sum(calls) == 4 and len(calls) < 4, calls  # fewer forwards than requests


# ---------------------------------------------------------------------------------------------------- bad input


def _bad_requests() -> list[tuple[str, object, str]]:
    obs = observation(3)
    good = openpi_request(obs)
    chw = good["images"]["cam_high"]
    return [
        ("missing camera", packb({"state": obs["proprio"], "prompt": PROMPT}), "missing the image of camera 'top'"),
        ("image shape", packb({**good, "images": {"cam_high": chw[0]}}), "expected shape (H, W, 3) or (3, H, W)"),
        ("image channels", packb({**good, "images": {"cam_high": np.zeros((64, 64, 4), np.uint8)}}), "got (64, 64, 4)"),
        ("image dtype", packb({**good, "images": {"cam_high": chw.astype(np.float32)}}), "expected dtype uint8"),
        ("proprio length", packb({**good, "state": np.zeros(7, np.float32)}), "expected 14 numbers"),
        ("proprio type", packb({**good, "state": "fourteen"}), "expected 14 numbers"),
        ("prompt type", packb({**good, "prompt": 3}), "instruction as a string"),
        ("seed type", packb({**good, "seed": "x"}), "seed: expected a non-negative integer"),
        ("not msgpack", b"\xc1\xc1 definitely not msgpack", "not msgpack"),
        ("truncated array", packb(good)[:-100], "not msgpack"),
        ("text frame", "hello", "expected a binary msgpack message"),
        ("not a map", packb([1, 2, 3]), "expected a map of observation keys"),
    ]


@pytest.mark.parametrize("name,message,expected", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_request_gets_an_error_on_its_connection_only(server, name, message, expected):
    bad, _ = raw_connect(server.port)
    other, _ = raw_connect(server.port)
    try:
        errors = server.request_errors
        bad.send(message)
        answer = bad.recv(timeout=RECV_TIMEOUT)
        assert isinstance(answer, str) and answer.startswith("error: ") and expected in answer, answer
        assert "\n" not in answer and server.request_errors == errors + 1
        # the other client is served, and so is the next good request on the same connection
        for ws in (other, bad):
            ws.send(packb(openpi_request(observation(4))))
            assert unpackb(ws.recv(timeout=RECV_TIMEOUT))["actions"].shape == (50, 14)
    finally:
        bad.close()
        other.close()


def test_oversized_body_closes_that_connection_only(server):
    from websockets.exceptions import ConnectionClosed

    bad, _ = raw_connect(server.port)
    other, _ = raw_connect(server.port)
    try:
        big = openpi_request(observation(5))
        big["images"]["cam_high"] = np.zeros((3, 1024, 1024), np.uint8)  # 3 MiB > the 1 MiB limit
        try:
            bad.send(packb(big))
        except ConnectionClosed:  # the server may close before the client has written it all
            pass
        with pytest.raises(ConnectionClosed) as closed:
            bad.recv(timeout=RECV_TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # "message too big"
        other.send(packb(openpi_request(observation(5))))
        assert unpackb(other.recv(timeout=RECV_TIMEOUT))["actions"].shape == (50, 14)
    finally:
        bad.close()
        other.close()


def test_client_that_disconnects_mid_request_does_not_disturb_the_others(server):
    for _ in range(3):
        ws, _ = raw_connect(server.port)
        ws.send(packb(openpi_request(observation(6))))
        ws.close()  # gone before the answer
    ws, _ = raw_connect(server.port)
    ws.send(packb(openpi_request(observation(6))))
    ws.socket.close()  # gone without a close handshake
    with CosmosPolicyClient("127.0.0.1", server.port, timeout_s=RECV_TIMEOUT) as client:
        for i in range(3):
            assert client.infer(observation(7 + i))["actions"].shape == (50, 14)


# ---------------------------------------------------------------------------------------------------- health, bind


def test_health_check_and_loopback_bind(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as r:
        assert r.status == 200 and r.read() == b"OK\n"
    assert server.host == "127.0.0.1" and all(addr[0] == "127.0.0.1" for addr in server.bound_addresses)
    policy = EchoPolicy(delay_s=0.0)
    assert PolicyServer(policy).host == "127.0.0.1"  # the default
    from cosmos_lit.serve.cli import OPTIONS

    assert OPTIONS["host"] == "127.0.0.1"


# ---------------------------------------------------------------------------------------------------- wire format


def test_wire_format_matches_openpi_msgpack_numpy():
    from openpi_client import msgpack_numpy

    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((2, 0, 3), np.uint8),
             "c": {"d": np.array([1, -2], np.int64), "e": "text", "f": [1, 2.5, None]}, "g": np.float32(2.5),
             "h": np.bool_(True), "i": np.ones((4, 4), np.float16)[:, ::2]}
    for packed, unpack in ((packb(value), msgpack_numpy.unpackb), (msgpack_numpy.packb(value), unpackb)):
        out = unpack(packed)
        for key in ("a", "b", "i"):
            assert out[key].dtype == value[key].dtype
            np.testing.assert_array_equal(out[key], value[key])
        np.testing.assert_array_equal(out["c"]["d"], value["c"]["d"])
        assert out["c"]["e"] == "text" and out["c"]["f"] == [1, 2.5, None]
        assert out["g"] == 2.5 and isinstance(out["g"], np.float32) and bool(out["h"]) is True
    with pytest.raises(TypeError):
        packb({"x": np.array([object()])})
    forged = msgpack_numpy.packb({"x": np.zeros(4, np.float32)}).replace(b"<f4", b"|O8")
    with pytest.raises(WireError, match="not accepted"):
        unpackb(forged)
    short = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 5, b"dtype": "<f4", b"shape": [2]})
    with pytest.raises(WireError, match="needs 8 bytes"):
        unpackb(short)


def test_key_mapping_is_configurable():
    spec = DataSpec(cameras=("wrist", "primary"), proprio_dim=8, action_dim=7, chunk_size=16, image_size=32)
    keys = KeyMap.build(spec.cameras)  # openpi's LIBERO convention by default
    assert keys.images["primary"][0] == "observation/image" and keys.images["wrist"][0] == "observation/wrist_image"
    img = np.zeros((32, 32, 3), np.uint8)
    libero = {"observation/image": img, "observation/wrist_image": img + 1, "observation/state": np.zeros(8), "prompt": "p"}
    req = parse_request(libero, spec, keys)
    assert req.observation["images"]["wrist"][0, 0, 0] == 1 and req.keys_used["proprio"] == "observation/state"
    custom = KeyMap.build(spec.cameras, {"images": {"primary": "cams/front", "wrist": ["cams/hand"]}, "proprio": "joints",
                                         "instruction": "task"})
    req = parse_request({"cams": {"front": img, "hand": img}, "joints": np.zeros(8), "task": "t"}, spec, custom)
    assert req.observation["instruction"] == "t" and req.keys_used["primary"] == "cams/front"
    with pytest.raises(WireError, match="missing the instruction"):
        parse_request({"cams": {"front": img, "hand": img}, "joints": np.zeros(8)}, spec, custom)
    assert parse_request({"cams": {"front": img, "hand": img}, "joints": np.zeros(8)}, spec, custom,
                         default_prompt="dflt").observation["instruction"] == "dflt"
    with pytest.raises(WireError, match="did you mean 'proprio'"):
        KeyMap.build(spec.cameras, {"propio": "x"})
    with pytest.raises(WireError, match="not a camera of this policy"):
        KeyMap.build(spec.cameras, {"images": {"top": "x"}})


# ---------------------------------------------------------------------------------------------------- chunk helpers


def test_open_loop_chunker_executes_k_actions_per_query():
    chunks = [np.arange(5)[:, None] + 10 * q for q in range(4)]
    queries = []

    def query():
        queries.append(len(queries))
        return chunks[len(queries) - 1]

    chunker = OpenLoopChunker(k=3)
    actions = [int(chunker.act(query)[0]) for _ in range(7)]
    assert actions == [0, 1, 2, 10, 11, 12, 20] and len(queries) == 3
    whole = OpenLoopChunker()
    whole.add(chunks[0])
    assert [int(whole.step()[0]) for _ in range(5)] == [0, 1, 2, 3, 4] and whole.needs_chunk
    with pytest.raises(RuntimeError, match="add"):
        whole.step()


def test_temporal_ensembler_weights_overlapping_chunks():
    k, decay = 3, 0.5
    ens = TemporalEnsembler(decay=decay)
    # the chunk queried at step t predicts the value t + 100 * j for its j-th step
    out = [float(ens.act(lambda t=t: (t + 100 * np.arange(k, dtype=float))[:, None])[0]) for t in range(5)]

    def expected(t: int) -> float:
        starts = [s for s in range(t + 1) if t - s < k]  # chunks covering step t, oldest first
        w = np.exp(-decay * np.arange(len(starts)))
        preds = [s + 100 * (t - s) for s in starts]
        return float(np.dot(w / w.sum(), preds))

    np.testing.assert_allclose(out, [expected(t) for t in range(5)], rtol=1e-6)
    # step 3 uses the chunks of steps 1, 2, 3 (the one of step 0 ended): weights e^0, e^-0.5, e^-1
    w = np.exp(-0.5 * np.arange(3))
    assert out[3] == pytest.approx(float(np.dot(w / w.sum(), [201.0, 102.0, 3.0])), rel=1e-6)
    mean = TemporalEnsembler(decay=0.0, query_every=2)
    chunks = {0: np.array([[0.0], [2.0], [4.0], [6.0]]), 2: np.array([[10.0], [20.0], [30.0], [40.0]])}
    got = [float(mean.act(lambda: chunks[mean.t])[0]) for _ in range(4)]
    assert got == [0.0, 2.0, (4.0 + 10.0) / 2, (6.0 + 20.0) / 2]  # queries at steps 0 and 2 only


# ---------------------------------------------------------------------------------------------------- the CLI verb


def test_serve_verb_starts_and_answers_openpi_client():
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    server = ServeProcess(f"ckpt_path={CKPT}", "port=0", "num_steps=1", "max_batch=4")
    try:
        m = server.wait_for(r"serving on ws://127\.0\.0\.1:(\d+)")
        assert m, "".join(server.seen)
        assert any("warm-up forwards" in line for line in server.seen)
        client = WebsocketClientPolicy(host="127.0.0.1", port=int(m.group(1)))
        out = client.infer(openpi_request(observation(8)))
        assert out["actions"].shape == (50, 14)
        client._ws.close()
    finally:
        rc, log = server.stop()
    assert rc == 0, log
    assert re.search(r"infer client=127\.0\.0\.1:\d+ batch=1 queue_ms=[\d.]+ infer_ms=[\d.]+ total_ms=", log), log


def test_serve_verb_one_line_errors():
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "cosmos_lit", "serve", *args], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    r = serve(f"ckpt_path={CKPT}", "prot=9000")
    assert r.returncode == 2 and "unknown option 'prot' (did you mean 'port'?)" in r.stderr, r.stderr
    r = serve("ckpt_path=/nonexistent.ckpt")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    r = serve(f"ckpt_path={CKPT}", "max_batch=0")
    assert r.returncode == 2 and "max_batch: expected an integer >= 1" in r.stderr
    r = serve(f"ckpt_path={CKPT}", "planner=best_of_n", "planner.num_candidates=2", "port=0",
              "keys.images.top=observation/image", "keys.proprio=[observation/state]", "--print-config")
    assert r.returncode == 0 and "num_candidates: 2" in r.stdout and "host: 127.0.0.1" in r.stdout, r.stderr
    assert "top: observation/image" in r.stdout and "- observation/state" in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------------- gym-aloha


def _example():
    spec = importlib.util.spec_from_file_location("serve_aloha_example", ROOT / "scripts" / "serve_aloha_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.sim
@pytest.mark.parametrize("front,client_kind", [("openpi", "cosmos"), ("official_http", "official")])
def test_gym_aloha_through_the_server_matches_in_process_evaluation(front, client_kind):
    """Each front driven as a robot would drive it (openpi's wire with our client; POST /act in the official request
    format): the in-process evaluation's successes, rewards and steps on the same seeds and checkpoint."""
    pytest.importorskip("gym_aloha")
    from cosmos_lit.eval.rollouts import run_episodes

    seeds, horizon = [100000, 100001], 40
    example = _example()
    with PolicyServer(load_policy(execute_steps=10), front=front, port=0, http_port=0, warmup=False).start() as srv:
        port = srv.port if front == "openpi" else srv.http_port
        client = example.connect("127.0.0.1", port, client=client_kind, reproducible=True)
        try:
            served = example.drive_episodes(client, seeds, max_steps=horizon, verbose=False)
        finally:
            client.close()
        # one forward per query (seeded queries run alone): at most 4 per episode of 40 steps
        assert srv.forward_calls == sum(len(r.predicted_values) for r in served) <= 2 * (horizon // 10)
    env_cfg = {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 64, "max_steps": 400,
               "fast_render": True}
    local = run_episodes(load_policy(execute_steps=10), env_cfg, seeds, num_workers=1, max_steps=horizon)
    for s, ref in zip(served, local):
        assert ref.error is None, ref.error
        assert (s.seed, s.success, s.steps) == (ref.seed, ref.success, ref.steps)
        assert s.total_reward == pytest.approx(ref.total_reward) and s.max_reward == pytest.approx(ref.max_reward)
        np.testing.assert_allclose(s.predicted_values, ref.predicted_values, rtol=0, atol=1e-5)
