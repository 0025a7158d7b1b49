"""The official Cosmos Policy front of the server (``POST /act``, ``cosmos_lit.serve.official_http``) and access
control of both fronts (``cosmos_lit.serve.access``).

The client side is written to the official request format with json-numpy from PyPI and the standard library
(``urllib``), as NVIDIA's ``run_aloha_eval.py`` posts it: ``primary_image`` / ``left_wrist_image`` /
``right_wrist_image`` (H, W, 3) uint8, ``proprio``, ``task_description``. Every server binds 127.0.0.1 on free ports;
every request has a time-out. gym-aloha driven through /act: tests/test_serve.py (both fronts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import json_numpy  # the `serve` extra: scripts/setup.sh installs it; missing fails, not skips
import numpy as np
import pytest

from cosmos_lit.serve import PolicyServer
from cosmos_lit.serve.access import authorized, check_bind, is_loopback, read_api_key
from cosmos_lit.serve.official_http import HttpKeys
from cosmos_lit.serve.wire import WireError
from helpers import EchoPolicy, ServeProcess, in_process

# openpi-client 0.1.2 calls websockets' connect() without a `with` (deprecated in websockets 17.1): theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"
TIMEOUT = 120.0
PROMPT = "pick up the red cube with the right arm and hand it over to the left arm"
ECHO_KEYS = {"images": {"top": "primary_image"}, "future_images": {"top": "future_image"}}


def load_policy(**kwargs):
    from cosmos_lit.policy import CosmosPolicy

    return CosmosPolicy.from_checkpoint(CKPT, num_steps=1, **kwargs)


def official_request(i: int = 0, size: int = 64, **extra) -> dict:
    """An official ALOHA /act request: three cameras (the sim policy uses primary_image), 14-d proprio."""
    rng = np.random.default_rng(i)
    images = {k: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
              for k in ("primary_image", "left_wrist_image", "right_wrist_image")}
    return {**images, "proprio": rng.uniform(-0.5, 0.5, 14).astype(np.float32), "task_description": PROMPT, **extra}


def as_observation(request: dict) -> dict:
    return {"images": {"top": request["primary_image"]}, "proprio": request["proprio"],
            "instruction": request["task_description"]}


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def act(url: str, request: dict, double: bool = False, headers: dict | None = None) -> tuple[int, object]:
    """POST as the official clients do: json-numpy text, or {"encoded": that text} (answered as a JSON string)."""
    text = json_numpy.dumps(request)
    status, body = post(url, (json.dumps({"encoded": text}) if double else text).encode(), headers)
    decoded = json_numpy.loads(body)
    return status, (json_numpy.loads(decoded) if double and isinstance(decoded, str) else decoded)


@pytest.fixture(scope="module")
def server():
    srv = PolicyServer(load_policy(), front="both", port=0, http_port=0, max_message_bytes=1 << 20,
                       warmup=False).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference():
    return load_policy()


# ---------------------------------------------------------------------------------------------------- the format


def test_official_request_both_encodings_match_in_process(server, reference):
    request = official_request(1, seed=11)
    ref = in_process(reference, as_observation(request), seed=11)
    status, out = act(server.http_url, request)
    assert status == 200, out
    assert isinstance(out["actions"], list) and len(out["actions"]) == 50
    assert all(a.shape == (14,) and a.dtype == np.float32 for a in out["actions"])
    np.testing.assert_allclose(np.stack(out["actions"]), ref["actions"][0], rtol=0, atol=1e-5)
    assert out["value_prediction"] == pytest.approx(float(ref["value"][0]), abs=1e-5)
    images = out["future_image_predictions"]
    assert list(images) == ["future_image"] and images["future_image"].shape == (64, 64, 3)
    assert images["future_image"].dtype == np.uint8 and out["seed"] == 11
    assert out["server_timing"]["batch_size"] == 1
    # double-encoded: answered as a JSON string holding the json-numpy text, same answer
    status, body = post(server.http_url, json.dumps({"encoded": json_numpy.dumps(request)}).encode())
    assert status == 200 and isinstance(json.loads(body), str)
    twice = json_numpy.loads(json.loads(body))
    np.testing.assert_array_equal(np.stack(twice["actions"]), np.stack(out["actions"]))
    # plain JSON lists (a client without json-numpy), as the official server accepts them
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in request.items()}
    status, body = post(server.http_url, json.dumps(plain).encode())
    assert status == 200, body
    np.testing.assert_allclose(np.stack(json_numpy.loads(body)["actions"]), np.stack(out["actions"]), atol=1e-5)


def test_all_query_results_of_the_direct_policy(server):
    status, out = act(server.http_url, official_request(2, return_all_query_results=True), double=True)
    assert status == 200, out
    for key in ("all_actions", "all_future_image_predictions", "all_value_predictions"):
        assert len(out[key]) == 1 and len(out[key + "_by_depth"]) == 1 and len(out[key + "_by_depth"][0]) == 1
    np.testing.assert_array_equal(np.stack(out["all_actions"][0]), np.stack(out["actions"]))
    assert out["all_value_predictions"] == [out["value_prediction"]]
    assert list(out["all_future_image_predictions"][0]) == ["future_image"]


def test_planning_reports_every_candidate():
    policy = load_policy(planner={"name": "best_of_n", "num_candidates": 3, "num_futures": 1, "num_values": 2,
                                  "action_steps": 1})
    with PolicyServer(policy, front="official_http", http_port=0, warmup=False).start() as srv:
        status, out = act(srv.http_url, official_request(3, return_all_query_results=True, seed=5))
    assert status == 200, out
    values = out["all_value_predictions"]
    assert len(out["all_actions"]) == len(values) == len(out["all_future_image_predictions"]) == 3
    assert all(0.0 <= v <= 1.0 for v in values)
    best = int(np.argmax(values)) if max(values) > values[0] else 0  # the base candidate unless one is better
    assert out["value_prediction"] == pytest.approx(values[best])
    np.testing.assert_array_equal(np.stack(out["actions"]), np.stack(out["all_actions"][best]))
    assert out["future_image_predictions"]["future_image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(out["future_image_predictions"]["future_image"],
                                  out["all_future_image_predictions"][best]["future_image"])


# ---------------------------------------------------------------------------------------------------- bad requests


def _bad_requests() -> list[tuple[str, bytes, int, str]]:
    good = official_request(4)
    enc = json_numpy.dumps

    def with_(**kw) -> bytes:
        return enc({**good, **kw}).encode()

    obj_array = enc(good).replace('"dtype": "<f4"', '"dtype": "|O"', 1)
    short = json.loads(enc(good))
    short["proprio"]["shape"] = [15]
    return [
        ("not JSON", b"{not json", 400, "the body is not JSON (Expecting property name"),
        ("a JSON list", b"[1, 2]", 400, "expected a JSON object of observation keys, got a JSON list"),
        ("encoded and more", json.dumps({"encoded": enc(good), "x": 1}).encode(), 400,
         "a double-encoded request holds only the 'encoded' key; this one also has x"),
        ("encoded not a string", json.dumps({"encoded": 5}).encode(), 400, "encoded: expected a string"),
        ("missing camera", enc({k: v for k, v in good.items() if k != "primary_image"}).encode(), 400,
         "missing the image of camera 'top': send one of primary_image"),
        ("float image", with_(primary_image=good["primary_image"].astype(np.float32)), 400,
         "primary_image: expected dtype uint8 for camera 'top'"),
        ("gray image", with_(primary_image=good["primary_image"][..., 0]), 400,
         "primary_image: expected shape (H, W, 3) or (3, H, W) for camera 'top', got (64, 64)"),
        ("short proprio", with_(proprio=np.zeros(7, np.float32)), 400, "proprio: expected 14 numbers"),
        ("NaN proprio", with_(proprio=np.full(14, np.nan, np.float32)), 400, "proprio: the proprio state holds NaN"),
        ("no instruction", enc({k: v for k, v in good.items() if k != "task_description"}).encode(), 400,
         "missing the instruction: send one of task_description"),
        ("object array", obj_array.encode(), 400, "array dtype '|O' is not accepted (object, void and complex"),
        ("array bytes short of its shape", json.dumps(short).encode(), 400,
         "a json-numpy array of shape [15] <f4 could not be decoded"),
        ("bad flag", with_(return_all_query_results="yes"), 400, "return_all_query_results: expected true or false"),
        ("over the size limit", b"[" + b"0," * (1 << 20) + b"0]", 413, "the limit is 1048576"),
    ]


@pytest.mark.parametrize("name,body,status,expected", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_request_gets_4xx_naming_the_key(server, name, body, status, expected):
    got, answer = post(server.http_url, body)
    assert got == status, answer
    message = json.loads(answer)["error"]
    assert expected in message and "\n" not in message, message
    assert act(server.http_url, official_request(5))[0] == 200  # the server goes on serving


def test_inference_failure_is_a_500_and_the_server_goes_on():
    policy = EchoPolicy(delay_s=0.0, fail_on="boom")
    with PolicyServer(policy, front="official_http", http_port=0, http_keys=ECHO_KEYS, http_future_images=False,
                      warmup=False).start() as srv:
        request = {"primary_image": np.zeros((16, 16, 3), np.uint8), "proprio": np.ones(3, np.float32)}
        status, out = act(srv.http_url, {**request, "task_description": "boom"})
        assert status == 500 and out == {"error": "inference failed: RuntimeError: cannot do 'boom'"}
        status, out = act(srv.http_url, {**request, "task_description": "fine"})
        assert status == 200 and np.stack(out["actions"]).shape == (4, 3) and out["future_image_predictions"] is None
        assert out["value_prediction"] is None and srv.request_errors == 1


# ---------------------------------------------------------------------------------------------------- access


def test_api_key_is_required_on_both_fronts():
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from cosmos_lit.client import CosmosPolicyClient

    key = "s3cret-key"
    with PolicyServer(EchoPolicy(delay_s=0.0), front="both", port=0, http_port=0, http_keys=ECHO_KEYS,
                      http_future_images=False, api_key=key, warmup=False).start() as srv:
        request = {"primary_image": np.zeros((16, 16, 3), np.uint8), "proprio": np.full(3, 2.0, np.float32),
                   "task_description": "x"}
        status, out = act(srv.http_url, request)
        assert status == 401 and "Authorization: Bearer <key>" in out["error"]
        assert act(srv.http_url, request, headers={"Authorization": "Bearer wrong"})[0] == 401
        for header in (f"Bearer {key}", f"Api-Key {key}"):
            status, out = act(srv.http_url, request, headers={"Authorization": header})
            assert status == 200 and np.all(np.stack(out["actions"]) == 2.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/healthz", timeout=TIMEOUT) as r:
            assert r.status == 200  # a load balancer's probe needs no key
        with pytest.raises(PermissionError, match="needs an API key"):
            CosmosPolicyClient("127.0.0.1", srv.port, connect_timeout_s=5)
        with pytest.raises(PermissionError, match="wrong API key"):
            CosmosPolicyClient("127.0.0.1", srv.port, connect_timeout_s=5, api_key="wrong")
        obs = {"images": {"top": np.zeros((16, 16, 3), np.uint8)}, "state": np.full(3, 3.0, np.float32), "prompt": "x"}
        with CosmosPolicyClient("127.0.0.1", srv.port, api_key=key) as client:
            assert np.all(client.infer(obs)["actions"] == 3.0)
        openpi = WebsocketClientPolicy(host="127.0.0.1", port=srv.port, api_key=key)  # openpi's header, unchanged
        try:
            assert np.all(openpi.infer(obs)["actions"] == 3.0)
        finally:
            openpi._ws.close()


def test_access_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("robot-server")
    assert authorized(None, None) and authorized("anything", None)
    assert authorized("Bearer k1", "k1") and authorized("api-key k1", "k1") and authorized("Api-Key  k1 ", "k1")
    assert not authorized(None, "k1") and not authorized("Bearer k2", "k1") and not authorized("k1", "k1")
    assert not authorized("Basic k1", "k1")
    with pytest.raises(ValueError, match="refusing to serve without an API key.*allow_unauthenticated=true"):
        check_bind("0.0.0.0", None, False)
    check_bind("0.0.0.0", "k", False), check_bind("0.0.0.0", None, True), check_bind("127.0.0.1", None, False)
    assert read_api_key(None, environ={"COSMOS_LIT_API_KEY": " k9 \n"}) == "k9" and read_api_key(None, environ={}) is None


def test_public_bind_without_a_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="host=0.0.0.0: refusing to serve without an API key"):
        PolicyServer(EchoPolicy(), host="0.0.0.0", port=0)
    PolicyServer(EchoPolicy(), host="0.0.0.0", port=0, allow_unauthenticated=True)  # said explicitly: allowed

    def serve(*args, env=None):
        return subprocess.run([sys.executable, "-m", "cosmos_lit", "serve", f"ckpt_path={CKPT}", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, **(env or {})},
                              check=False)

    clean = {"COSMOS_LIT_API_KEY": ""}
    r = serve("host=0.0.0.0", env=clean)
    first = r.stderr.splitlines()[0]
    assert r.returncode == 2 and "COSMOS_LIT_API_KEY" in first and "allow_unauthenticated=true" in first, r.stderr
    assert "Traceback" not in r.stderr
    assert serve("host=0.0.0.0", "allow_unauthenticated=true", "--print-config", env=clean).returncode == 0
    r = serve("host=0.0.0.0", "--print-config", env={"COSMOS_LIT_API_KEY": "hidden-k3y"})
    assert r.returncode == 0 and "hidden-k3y" not in r.stdout + r.stderr, r.stderr
    key_file = tmp_path / "key"
    key_file.write_text("file-k3y\n")
    r = serve("host=0.0.0.0", f"api_key_file={key_file}", "front=both", "--print-config", env=clean)
    assert r.returncode == 0 and "front: both" in r.stdout and "file-k3y" not in r.stdout, r.stderr
    r = serve(f"api_key_file={tmp_path / 'missing'}", env=clean)
    assert r.returncode == 2 and "api_key_file: cannot read" in r.stderr, r.stderr
    r = serve("front=officail_http", env=clean)
    assert r.returncode == 2 and "did you mean 'official_http'" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------- keys


def test_http_keys_come_from_the_benchmark_config():
    aloha = HttpKeys.load(("cam_left_wrist", "cam_right_wrist", "cam_high"), "aloha")
    assert aloha.images == {"cam_left_wrist": "left_wrist_image", "cam_right_wrist": "right_wrist_image",
                            "cam_high": "primary_image"}
    assert aloha.future_images["cam_right_wrist"] == "future_wrist_image2" and aloha.proprio == "proprio"
    libero = HttpKeys.load(("wrist", "primary"), "libero")
    assert libero.images == {"wrist": "wrist_image", "primary": "primary_image"}
    robocasa = HttpKeys.load(("robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"), "robocasa")
    assert robocasa.images["robot0_agentview_right"] == "secondary_image"
    over = HttpKeys.load(("top",), "aloha", {"images": {"top": "image"}, "instruction": "prompt"})
    assert over.images == {"top": "image"} and over.instruction == "prompt" and over.future_images == {"top": "future_image"}
    with pytest.raises(WireError, match=r"http_keys.images.front: no request key for camera 'front' \(no "
                                        r"configs/serve/lerobot.yaml for spec.name 'lerobot'\); pass http_keys.images.front="):
        HttpKeys.load(("front",), "lerobot")
    with pytest.raises(WireError, match="http_keys.imgs: unknown field"):
        HttpKeys.load(("top",), "aloha", {"imgs": {}})


# ---------------------------------------------------------------------------------------------------- the verb


def test_serve_verb_official_front_answers_and_stops():
    server = ServeProcess(f"ckpt_path={CKPT}", "front=official_http", "http_port=0", "num_steps=1", "warmup=false",
                          env={"COSMOS_LIT_API_KEY": ""})
    try:
        m = server.wait_for(r"serving on (http://127\.0\.0\.1:\d+/act)")
        assert m, "".join(server.seen)
        status, out = act(m.group(1), official_request(6))
        assert status == 200 and len(out["actions"]) == 50
    finally:
        rc, log = server.stop()
    assert rc == 0, log
