"""The wire format of ``python -m cosmos_lit serve``: openpi's (msgpack bodies over a WebSocket, numpy arrays inline).

Encoding (the one ``openpi_client.msgpack_numpy`` speaks, re-implemented here): a numpy array travels as the
msgpack map ``{b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": "<f4", b"shape": [..]}`` and a numpy
scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<f8"}``; everything else is plain msgpack.
Object, void and complex arrays are refused both ways (a message can never carry a pickle).

Protocol (one connection = one client):

1. On connect the server sends one binary message, the **metadata** map (:func:`metadata` lists its keys).
2. The client sends a **request**: a map of observation keys (the openpi convention, see :data:`DEFAULT_KEYS`), e.g.
   ALOHA ``{"images": {"cam_high": (3, H, W) uint8}, "state": (14,), "prompt": str}`` or LIBERO
   ``{"observation/image": (H, W, 3) uint8, "observation/wrist_image": ..., "observation/state": (8,), "prompt": str}``.
   Optional keys: ``"seed"`` (int: the noise seed of this query, see below) and ``"return_future_images"`` (bool).
3. The server answers with one binary message, the **response**::

       {"actions": (k, A) float32 env units,         # k = the server's execute_steps (default: the whole chunk K)
        "value": float,                               # predicted V(s') in [0, 1], when the model has a value frame
        "future_images": {camera: (S, S, 3) uint8},  # only when the request asked for them
        "seed": int,                                  # the noise seed this query used
        "server_timing": {"infer_ms", "queue_ms", "batch_size", "prev_total_ms"}}

   or, for a request it cannot serve, one **text** message starting with ``"error: "`` naming the problem (the
   key, what was expected, what came). The connection stays open: the client may send the next request. A body
   over the size limit is refused by the WebSocket layer itself: the connection is closed with code 1009 and the
   reason says the limit.

Seeds: a request without ``"seed"`` is batched with whatever else is queued and draws the noise of the server's
own query counter (``policy.seed + policy.queries``, as an in-process ``CosmosPolicy`` does). A request with
``"seed": s`` draws exactly the noise that an in-process ``policy([obs])`` call draws when
``policy.seed + policy.queries == s``, so an episode replayed through the server with ``s = metadata["seed"] + i`` for
its i-th query (what ``cosmos_lit.client.CosmosPolicyClient(reproducible=True)`` sends) gives the in-process
result, query for query. A seeded request therefore runs in a forward of its own (the noise of a batched forward
depends on the batch), i.e. reproducibility costs batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cosmos_lit.registry import suggest

# ---------------------------------------------------------------------------------------------------- encoding

_ARRAY = b"__ndarray__"
_SCALAR = b"__npgeneric__"
_REFUSED_KINDS = ("O", "V", "c")  # object (pickle), void/structured, complex: as openpi-client


class WireError(ValueError):
    """A message that cannot be decoded or a request that does not fit the policy; ``str(e)`` is one line."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise TypeError(f"cannot send a numpy {obj.dtype} value (object, void and complex dtypes are not supported)")
    if isinstance(obj, np.ndarray):
        return {_ARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def numpy_dtype(value: Any) -> np.dtype:
    """The numpy dtype a message names (``'<f4'``); WireError for a non-string, an unknown or a refused dtype."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise WireError(f"array dtype must be a string like '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except TypeError as e:
        raise WireError(f"array dtype '{value}' is not a numpy dtype ({e})") from None
    if dtype.kind in _REFUSED_KINDS:
        raise WireError(f"array dtype '{value}' is not accepted (object, void and complex dtypes are refused)")
    return dtype


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if _ARRAY in obj:
        dtype = numpy_dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise WireError(f"array shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(data, bytes):
            raise WireError(f"array data must be bytes, got {type(data).__name__}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected != len(data):
            raise WireError(f"array of shape {list(shape)} {dtype} needs {expected} bytes, the message holds {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _SCALAR in obj:
        dtype = numpy_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"numpy scalar of dtype {dtype} could not be read ({e})") from None
    return obj


def packb(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (numpy arrays and scalars inline, as ``openpi_client.msgpack_numpy.packb``)."""
    import msgpack

    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of :func:`packb`; raises :class:`WireError` (one line) on anything that is not such a message.

    Arrays come back read-only (views of the message), as openpi-client's do."""
    import msgpack

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary msgpack message, got a {'text' if isinstance(data, str) else type(data).__name__} message")
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False)
    except WireError:
        raise
    except Exception as e:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ValueError, ...
        detail = " ".join(str(e).split())[:160]
        raise WireError(f"the message is not msgpack ({type(e).__name__}: {detail})") from None


# ---------------------------------------------------------------------------------------------------- request keys

# openpi's camera names for ours: the ALOHA image keys (gym-aloha's `top` camera is openpi's `cam_high`) and the
# LIBERO keys of openpi's examples (`observation/image` is the agent view, `observation/wrist_image` the wrist).
OPENPI_CAMERA_KEYS: dict[str, tuple[str, ...]] = {
    "top": ("images/cam_high",),
    "cam_high": ("images/cam_high",),
    "cam_low": ("images/cam_low",),
    "left_wrist": ("images/cam_left_wrist",),
    "right_wrist": ("images/cam_right_wrist",),
    "cam_left_wrist": ("images/cam_left_wrist",),
    "cam_right_wrist": ("images/cam_right_wrist",),
    "primary": ("observation/image",),
    "agentview": ("observation/image",),
    "wrist": ("observation/wrist_image",),
}

DEFAULT_KEYS: dict[str, Any] = {
    "proprio": ["state", "observation/state", "proprio"],
    "instruction": ["prompt", "instruction"],
    # per camera: OPENPI_CAMERA_KEYS[camera], then images/<camera>, observation/<camera>, observation/<camera>_image
    "images": {},
    "seed": "seed",
    "future_images": "return_future_images",
}
"""The default observation key mapping. A request key is a path: ``"images/cam_high"`` is found as the flat key
``"images/cam_high"`` or as ``request["images"]["cam_high"]``. For each field the first listed key that the request
holds is used. Our own observation dicts (``{"images": {camera: ...}, "proprio", "instruction"}``) match as well."""


def _key_list(value: Any, path: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise WireError(f"{path}: expected a request key or a list of them, got {value!r}")


@dataclass(frozen=True)
class KeyMap:
    """Which request key is which camera / proprio / instruction (resolved for one policy's cameras)."""

    images: dict[str, list[str]]
    proprio: list[str]
    instruction: list[str]
    seed: str = "seed"
    future_images: str = "return_future_images"

    @classmethod
    def build(cls, cameras: tuple[str, ...] | list[str], overrides: dict[str, Any] | None = None) -> "KeyMap":
        """The default mapping for ``cameras`` with ``overrides`` (the ``keys`` option of ``serve``) applied.

        ``overrides``: any of ``proprio``/``instruction`` (a key or a list), ``images`` ({camera: key or list}),
        ``seed``/``future_images`` (one key each)."""
        overrides = dict(overrides or {})
        fields = list(DEFAULT_KEYS)
        for k in overrides:
            if k not in fields:
                raise WireError(f"keys.{k}: unknown field{suggest(str(k), fields)}; expected one of {', '.join(fields)}")
        images: dict[str, list[str]] = {}
        for cam in cameras:
            default = [*OPENPI_CAMERA_KEYS.get(cam, ()), f"images/{cam}", f"observation/{cam}", f"observation/{cam}_image"]
            images[cam] = list(dict.fromkeys(default))
        for cam, keys in dict(overrides.get("images") or {}).items():
            if cam not in images:
                raise WireError(f"keys.images.{cam}: not a camera of this policy{suggest(str(cam), list(images))}; "
                                f"cameras: {', '.join(images)}")
            images[cam] = _key_list(keys, f"keys.images.{cam}")
        single = {}
        for name in ("seed", "future_images"):
            value = overrides.get(name, DEFAULT_KEYS[name])
            if not isinstance(value, str) or not value:
                raise WireError(f"keys.{name}: expected one request key, got {value!r}")
            single[name] = value
        return cls(images=images,
                   proprio=_key_list(overrides.get("proprio", DEFAULT_KEYS["proprio"]), "keys.proprio"),
                   instruction=_key_list(overrides.get("instruction", DEFAULT_KEYS["instruction"]), "keys.instruction"),
                   **single)

    def to_dict(self) -> dict[str, Any]:
        return {"images": {c: list(k) for c, k in self.images.items()}, "proprio": list(self.proprio),
                "instruction": list(self.instruction), "seed": self.seed, "future_images": self.future_images}


_MISSING = object()


def lookup(request: dict[str, Any], path: str) -> Any:
    """``request[path]`` if present, else the nested value along ``path.split("/")``; a sentinel when absent."""
    if path in request:
        return request[path]
    node: Any = request
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _first(request: dict[str, Any], keys: list[str]) -> tuple[str | None, Any]:
    for k in keys:
        v = lookup(request, k)
        if v is not _MISSING:
            return k, v
    return None, _MISSING


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {tuple(value.shape)} {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return type(value).__name__


def _request_keys(request: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in request.items():
        name = f"{prefix}{k}"
        out += _request_keys(v, name + "/") if isinstance(v, dict) and v else [name]
    return out


# ---------------------------------------------------------------------------------------------------- validation

MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 4096


@dataclass
class Request:
    """A validated request (of either front): the policy observation and the per-request options.

    ``future_images``: decode the imagined future camera images; ``all_candidates``: report every planning
    candidate (the official ``return_all_query_results``)."""

    observation: dict[str, Any]
    seed: int | None = None
    future_images: bool = False
    keys_used: dict[str, str] = field(default_factory=dict)
    all_candidates: bool = False


@dataclass
class Candidate:
    """One planning candidate of a query: its chunk (k, A) float32 env units, its aggregated value-ensemble score in
    [0, 1] (None without a planner) and its imagined future images ({camera: (S, S, 3) uint8}, when asked)."""

    actions: np.ndarray
    score: float | None
    future_images: dict[str, np.ndarray] | None = None


@dataclass
class Answer:
    """What one query returns, before a front formats it.

    ``actions``: (k, A) float32 env units (k = the server's execute_steps). ``value``: the executed sample's value
    frame V(s') in [0, 1] (None without one). ``plan_score``: the planner's score of the executed candidate (None
    without a planner). ``future_images``: {camera: (S, S, 3) uint8} of the executed candidate (the world model's,
    averaged over its futures, when planning), when asked. ``candidates``: every candidate, when asked (the direct
    policy has one). ``timing``: the server's ``server_timing`` entries."""

    actions: np.ndarray
    seed: int
    value: float | None = None
    plan_score: float | None = None
    future_images: dict[str, np.ndarray] | None = None
    candidates: list[Candidate] | None = None
    timing: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    """A query that failed after it was accepted: one line, and the HTTP status it maps to (500 inference failed,
    503 shutting down)."""

    message: str
    status: int = 500


def openpi_response(answer: Answer) -> dict[str, Any]:
    """The openpi front's response map (see the module docstring)."""
    resp: dict[str, Any] = {"actions": answer.actions, "seed": answer.seed}
    if answer.value is not None:
        resp["value"] = answer.value
    if answer.future_images is not None:
        resp["future_images"] = answer.future_images
    resp["server_timing"] = dict(answer.timing)
    return resp


def _image(value: Any, key: str, camera: str) -> np.ndarray:
    expected = f"a uint8 image (H, W, 3) or (3, H, W) for camera '{camera}'"
    if not isinstance(value, np.ndarray):
        raise WireError(f"{key}: expected {expected}, got {_describe(value)}")
    if value.dtype != np.uint8:
        raise WireError(f"{key}: expected dtype uint8 for camera '{camera}' (RGB 0..255), got {value.dtype} "
                        f"(shape {tuple(value.shape)})")
    if value.ndim != 3 or 3 not in (value.shape[-1], value.shape[0]):
        raise WireError(f"{key}: expected shape (H, W, 3) or (3, H, W) for camera '{camera}', got {tuple(value.shape)}")
    img = value if value.shape[-1] == 3 else value.transpose(1, 2, 0)
    h, w = img.shape[:2]
    if not (MIN_IMAGE_SIDE <= h <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= w <= MAX_IMAGE_SIDE):
        raise WireError(f"{key}: image of camera '{camera}' is {h}x{w}; expected sides of "
                        f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels")
    return img


def _proprio(value: Any, key: str, dim: int) -> np.ndarray:
    expected = f"{dim} numbers (the proprio state, shape ({dim},))"
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except Exception:
        raise WireError(f"{key}: expected {expected}, got {_describe(value)}") from None
    if arr.dtype.kind not in "fiu":
        raise WireError(f"{key}: expected {expected}, got {_describe(value)} of {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise WireError(f"{key}: expected {expected}, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise WireError(f"{key}: the proprio state holds NaN or inf")
    return arr


def parse_request(request: Any, spec: Any, keys: KeyMap, default_prompt: str | None = None) -> Request:
    """Check one decoded request against the policy ``spec`` (cameras, proprio_dim) and map it to a policy
    observation ``{"images": {camera: (H, W, 3) uint8}, "proprio": (P,), "instruction": str}``.

    Raises :class:`WireError` naming the first bad key and what was expected."""
    if not isinstance(request, dict):
        raise WireError(f"expected a map of observation keys, got {_describe(request)}")
    used: dict[str, str] = {}
    images = {}
    for cam in spec.cameras:
        key, value = _first(request, keys.images[cam])
        if key is None:
            raise WireError(f"missing the image of camera '{cam}': send one of {', '.join(keys.images[cam])} "
                            f"(the request has {', '.join(_request_keys(request)) or 'no keys'})")
        images[cam] = _image(value, key, cam)
        used[cam] = key
    key, value = _first(request, keys.proprio)
    if key is None:
        raise WireError(f"missing the proprio state: send one of {', '.join(keys.proprio)} with "
                        f"{spec.proprio_dim} numbers")
    proprio = _proprio(value, key, int(spec.proprio_dim))
    used["proprio"] = key
    key, value = _first(request, keys.instruction)
    if key is None:
        if default_prompt is None:
            raise WireError(f"missing the instruction: send one of {', '.join(keys.instruction)} (a string), or start "
                            "the server with default_prompt=...")
        value = default_prompt
    elif isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(f"{key}: the instruction is not UTF-8 text") from None
    if not isinstance(value, str):
        raise WireError(f"{key}: expected the instruction as a string, got {_describe(value)}")
    if key:
        used["instruction"] = key
    seed = request.get(keys.seed)
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise WireError(f"{keys.seed}: expected a non-negative integer noise seed, got {seed!r}")
        seed = int(seed)
    want_images = request.get(keys.future_images, False)
    if not isinstance(want_images, (bool, np.bool_)):
        raise WireError(f"{keys.future_images}: expected true or false, got {want_images!r}")
    return Request({"images": images, "proprio": proprio, "instruction": value}, seed, bool(want_images), used)


def error_text(message: str) -> str:
    """The text frame of an error: one line starting with ``error: ``."""
    return "error: " + " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------------- metadata


def metadata(policy: Any, keys: KeyMap, **extra: Any) -> dict[str, Any]:
    """The map sent on connect: ``server``, ``spec`` (cameras, proprio_dim, action_dim, chunk_size, image_size, fps,
    has_value), ``execute_steps`` (actions per response), ``num_steps``, ``planner``, ``seed`` (the base noise seed),
    ``keys`` (the request key mapping) and the server settings in ``extra``."""
    spec = policy.spec
    planner = getattr(policy, "planner", None)
    return {
        "server": "cosmos_lit",
        "protocol": 1,
        "spec": {"cameras": list(spec.cameras), "proprio_dim": int(spec.proprio_dim), "action_dim": int(spec.action_dim),
                 "chunk_size": int(spec.chunk_size), "image_size": int(spec.image_size), "fps": float(spec.fps),
                 "has_value": bool(spec.has_value), "name": str(spec.name)},
        "execute_steps": int(policy.execute_steps),
        "num_steps": getattr(policy, "num_steps", None),
        "planner": type(planner).__name__ if planner is not None else None,
        "seed": int(policy.seed),
        "keys": keys.to_dict(),
        **extra,
    }
