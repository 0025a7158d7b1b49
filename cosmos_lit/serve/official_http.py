"""The official Cosmos Policy front: ``POST /act`` with json-numpy bodies, as NVIDIA's ``aloha/deploy.py`` serves it,
so robot clients written for that server (its ``run_aloha_eval.py``, LeRobot-based arms, world-model frameworks)
drive ours unchanged.

Request: a JSON object whose numpy arrays travel in json-numpy's form (``{"__numpy__": <base64 of the C-order bytes>,
"dtype": "|u1", "shape": [224, 224, 3]}``; nested lists work too), or the double-encoded form ``{"encoded": "<that
JSON as a string>"}``. Keys, per benchmark from ``configs/serve/<spec.name>.yaml`` (ALOHA: ``primary_image``,
``left_wrist_image``, ``right_wrist_image``; LIBERO: ``primary_image``, ``wrist_image``), each a uint8 (H, W, 3)
image; ``proprio`` (P numbers); ``task_description`` (str); optional ``return_all_query_results`` (bool) and ``seed``
(int, as on the openpi front: the noise seed of this query).

Response (status 200): ``actions`` (a list of k arrays (A,) float32, env units), ``value_prediction`` (float in
[0, 1]: the planner's score of the executed candidate when planning, else the value frame's V(s'); null without a
value frame), ``future_image_predictions`` ({``future_image`` / ``future_wrist_image`` / ...: (S, S, 3) uint8}, the
imagined next observation; null with ``http_future_images=false``), ``seed`` and ``server_timing``; with
``return_all_query_results`` also ``all_actions``, ``all_future_image_predictions``, ``all_value_predictions`` (one
entry per candidate) and their ``*_by_depth`` forms (search depth 1: one entry each). A double-encoded request is
answered double-encoded (the body is a JSON string holding the json-numpy text), as the official server does.
``GET /metadata`` answers the openpi front's metadata map with ``http_keys`` (JSON), ``GET /healthz`` ``OK``.

Unlike the official server (a traceback in its log and the string "error" with status 200), a request that cannot
be served gets status 400 (413 for a body over the limit, 401 without the API key) and ``{"error": "<the key, what
was expected, what came>"}``; a failed inference 500 and a shutting-down server 503, each with one line; the server
goes on serving the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from cosmos_lit.serve.access import authorized
from cosmos_lit.serve.wire import Answer, Failure, KeyMap, Request, WireError, numpy_dtype, parse_request

ALL_RESULTS_KEY = "return_all_query_results"
SEED_KEY = "seed"
DRAIN_FACTOR = 8  # an over-limit body is read and dropped up to this many times the limit before the 413
KEY_FIELDS = ("images", "future_images", "proprio", "instruction")


def keys_file(spec_name: str) -> Path:
    """``configs/serve/<spec_name>.yaml``: the official key names of a benchmark's checkpoints."""
    from cosmos_lit.config import BUILTIN_CONFIGS

    return BUILTIN_CONFIGS / "serve" / f"{spec_name}.yaml"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class HttpKeys:
    """The request / response key of each camera, of the proprio state and of the instruction for one policy."""

    images: dict[str, str]
    future_images: dict[str, str]
    proprio: str
    instruction: str

    @classmethod
    def load(cls, cameras: list[str] | tuple[str, ...], spec_name: str,
             overrides: dict[str, Any] | None = None) -> "HttpKeys":
        """``configs/serve/<spec_name>.yaml``'s ``http_keys`` with ``overrides`` (the ``http_keys`` option) on top,
        restricted to ``cameras``. Raises WireError naming the missing or malformed entry."""
        import yaml

        path = keys_file(spec_name)
        node: dict[str, Any] = {}
        if path.is_file():
            try:
                node = dict((yaml.safe_load(path.read_text()) or {}).get("http_keys") or {})
            except (yaml.YAMLError, AttributeError, TypeError) as e:
                raise WireError(f"{path}: expected a mapping with an http_keys mapping ({' '.join(str(e).split())[:120]})") from None
        where = path.name if path.is_file() else f"no {path.relative_to(path.parents[2])} for spec.name '{spec_name}'"
        node = _merge(node, dict(overrides or {}))
        unknown = [k for k in node if k not in KEY_FIELDS]
        if unknown:
            raise WireError(f"http_keys.{unknown[0]}: unknown field; expected {', '.join(KEY_FIELDS)}")
        maps = {}
        for field_name, what in (("images", "request key"), ("future_images", "response key")):
            given = node.get(field_name) or {}
            if not isinstance(given, dict):
                raise WireError(f"http_keys.{field_name}: expected a mapping camera -> {what}, got {given!r}")
            chosen = {}
            for cam in cameras:
                key = given.get(cam)
                if not isinstance(key, str) or not key:
                    raise WireError(f"http_keys.{field_name}.{cam}: no {what} for camera '{cam}' ({where}); "
                                    f"pass http_keys.{field_name}.{cam}=<key>")
                chosen[cam] = key
            maps[field_name] = chosen
        singles = {}
        for field_name, default in (("proprio", "proprio"), ("instruction", "task_description")):
            value = node.get(field_name, default)
            if not isinstance(value, str) or not value:
                raise WireError(f"http_keys.{field_name}: expected one request key, got {value!r}")
            singles[field_name] = value
        return cls(images=maps["images"], future_images=maps["future_images"], **singles)

    def key_map(self) -> KeyMap:
        """The request-side mapping in the form ``parse_request`` takes."""
        return KeyMap.build(tuple(self.images), {"images": dict(self.images), "proprio": self.proprio,
                                                  "instruction": self.instruction, "seed": SEED_KEY})

    def to_dict(self) -> dict[str, Any]:
        return {"images": dict(self.images), "future_images": dict(self.future_images), "proprio": self.proprio,
                "instruction": self.instruction}


class HttpError(Exception):
    """A request answered with a 4xx/5xx status and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------------- decoding


def _numpy_hook(obj: dict[str, Any]) -> Any:
    """json-numpy's ``object_hook`` after checks of our own (refused dtypes, malformed entries -> WireError)."""
    if "__numpy__" not in obj:
        return obj
    import json_numpy

    dtype_text = obj.get("dtype")
    numpy_dtype(dtype_text)  # a string naming an accepted dtype (no object, void or complex arrays)
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError(f"a json-numpy array needs its shape as a list of non-negative integers, got {shape!r}")
    try:
        return json_numpy.object_hook(obj)
    except Exception as e:  # bad base64, a byte count that does not fit the shape, ...
        raise WireError(f"a json-numpy array of shape {shape} {dtype_text} could not be decoded "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text, object_hook=_numpy_hook)
    except json.JSONDecodeError as e:
        raise HttpError(400, f"{what} is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except WireError as e:
        raise HttpError(400, str(e)) from None
    except RecursionError:
        raise HttpError(400, f"{what} is nested too deeply") from None


def decode_body(body: bytes) -> tuple[dict[str, Any], bool]:
    """The request object and whether it came double-encoded (``{"encoded": "<json-numpy text>"}``)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not UTF-8 text; expected a JSON object (json-numpy arrays)") from None
    payload = _loads(text, "the body")
    double = isinstance(payload, dict) and "encoded" in payload
    if double:
        others = [k for k in payload if k != "encoded"]
        if others:
            raise HttpError(400, f"encoded: a double-encoded request holds only the 'encoded' key; this one also has "
                                 f"{', '.join(map(str, others))}")
        if not isinstance(payload["encoded"], str):
            raise HttpError(400, f"encoded: expected a string (json_numpy.dumps of the observation), got "
                                 f"{type(payload['encoded']).__name__}")
        payload = _loads(payload["encoded"], "encoded")
    if not isinstance(payload, dict):
        raise HttpError(400, f"expected a JSON object of observation keys, got a JSON {type(payload).__name__}")
    return payload, double


def _as_image(value: Any) -> Any:
    """Nested lists or an integer array of 0..255 -> uint8 (what the official server accepts); else unchanged, for
    ``parse_request`` to name what is wrong."""
    if isinstance(value, list):
        try:
            value = np.asarray(value)
        except ValueError:  # ragged lists
            return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.dtype != np.uint8 and value.size:
        if int(value.min()) >= 0 and int(value.max()) <= 255:
            return value.astype(np.uint8)
    return value


def to_request(payload: dict[str, Any], spec: Any, keys: HttpKeys, default_prompt: str | None,
               future_images: bool) -> Request:
    """Validate an official request against the policy ``spec``; raises HttpError(400) naming the bad key."""
    payload = dict(payload)
    for key in keys.images.values():
        if key in payload:
            payload[key] = _as_image(payload[key])
    all_results = payload.get(ALL_RESULTS_KEY, False)
    if not isinstance(all_results, (bool, np.bool_)):
        raise HttpError(400, f"{ALL_RESULTS_KEY}: expected true or false, got {all_results!r}")
    try:
        request = parse_request(payload, spec, keys.key_map(), default_prompt)
    except WireError as e:
        raise HttpError(400, str(e)) from None
    request.future_images = bool(future_images)
    request.all_candidates = bool(all_results)
    return request


# ---------------------------------------------------------------------------------------------------- responses


def _rows(actions: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(a, dtype=np.float32) for a in actions]


def _futures(images: dict[str, np.ndarray] | None, keys: HttpKeys) -> dict[str, np.ndarray] | None:
    return None if images is None else {keys.future_images[cam]: img for cam, img in images.items()}


def response_body(answer: Answer, keys: HttpKeys, all_results: bool) -> dict[str, Any]:
    """The official response object of one answer (see the module docstring)."""
    value = answer.plan_score if answer.plan_score is not None else answer.value
    body: dict[str, Any] = {"actions": _rows(answer.actions), "value_prediction": value,
                            "future_image_predictions": _futures(answer.future_images, keys)}
    if all_results:
        cands = answer.candidates or []
        actions = [_rows(c.actions) for c in cands]
        images = [_futures(c.future_images, keys) for c in cands]
        values = [c.score if c.score is not None else value for c in cands]
        body.update(all_actions=actions, all_future_image_predictions=images, all_value_predictions=values,
                    all_actions_by_depth=[[a] for a in actions],
                    all_future_image_predictions_by_depth=[[i] for i in images],
                    all_value_predictions_by_depth=[[v] for v in values])
    body["seed"] = answer.seed
    body["server_timing"] = dict(answer.timing)
    return body


def encode_body(obj: Any, double_encoded: bool) -> bytes:
    """json-numpy text of ``obj``; for a double-encoded request, that text as a JSON string."""
    import json_numpy

    text = json_numpy.dumps(obj)
    return (json.dumps(text) if double_encoded else text).encode("utf-8")


# ---------------------------------------------------------------------------------------------------- the app

Infer = Callable[[Request, float], Awaitable["Answer | Failure"]]


def build_app(infer: Infer, spec: Any, keys: HttpKeys, *, default_prompt: str | None = None,
              max_body_bytes: int = 16 * 2**20, api_key: str | None = None, future_images: bool = True,
              metadata: dict[str, Any] | None = None, on_error: Callable[[str, str], None] | None = None,
              on_served: Callable[[], None] | None = None) -> Any:
    """A Starlette app with ``POST /act``, ``GET /metadata`` (the openpi front's metadata map plus ``http_keys``, as
    JSON; behind the API key) and ``GET /healthz``.

    ``infer(request, arrival_perf_counter)`` runs one validated request (the server's batcher); ``on_error(peer,
    message)`` / ``on_served()`` count and log."""
    import time

    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str, double: bool = False) -> Response:
        return Response(encode_body({"error": message}, double), status_code=status, media_type="application/json")

    async def read_body(request: HttpRequest) -> bytes:
        # A body over the limit is read on and dropped (up to DRAIN_FACTOR x the limit) before the 413, so that the
        # client, still sending, gets the answer rather than a reset connection; a larger one is cut off.
        declared = request.headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                too_big = True
            if too_big:
                chunks = []
                if size > DRAIN_FACTOR * max_body_bytes:
                    break
            else:
                chunks.append(chunk)
        if too_big:
            shown = f"{int(declared)} bytes" if declared and declared.isdigit() else f"over {max_body_bytes} bytes"
            raise HttpError(413, f"the body is {shown}; the limit is {max_body_bytes} (max_message_mb)")
        return b"".join(chunks)

    async def act(request: HttpRequest) -> Response:
        arrival = time.perf_counter()
        peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
        double = False
        try:
            if not authorized(request.headers.get("authorization"), api_key):
                raise HttpError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
            payload, double = decode_body(await read_body(request))
            parsed = to_request(payload, spec, keys, default_prompt, future_images)
        except HttpError as e:
            if on_error:
                on_error(peer, e.message)
            return error(e.status, e.message, double)
        result = await infer(parsed, arrival)
        if isinstance(result, Failure):
            if on_error:
                on_error(peer, result.message)
            return error(result.status, result.message, double)
        if on_served:
            on_served()
        body = response_body(result, keys, parsed.all_candidates)
        return Response(encode_body(body, double), media_type="application/json")

    async def healthz(request: HttpRequest) -> Response:
        return PlainTextResponse("OK\n")

    meta_body = encode_body({**dict(metadata or {}), "http_keys": keys.to_dict()}, False)

    async def meta(request: HttpRequest) -> Response:
        if not authorized(request.headers.get("authorization"), api_key):
            return error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        return Response(meta_body, media_type="application/json")

    return Starlette(routes=[Route("/act", act, methods=["POST"]), Route("/metadata", meta, methods=["GET"]),
                             Route("/healthz", healthz, methods=["GET"])])
