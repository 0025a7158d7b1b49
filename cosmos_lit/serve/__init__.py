"""Serving a policy over the network (``python -m cosmos_lit serve``); see docs/serving.md.

- ``cosmos_lit.serve.wire``: the wire format (openpi's msgpack + numpy arrays), the request key mapping, validation.
- ``cosmos_lit.serve.server``: ``PolicyServer``, the WebSocket server with request batching.
- ``cosmos_lit.serve.cli``: the ``serve`` verb.
- ``cosmos_lit.client``: our own client and the chunk execution helpers.
"""

from cosmos_lit.serve.server import PolicyServer
from cosmos_lit.serve.wire import (
    DEFAULT_KEYS,
    KeyMap,
    WireError,
    packb,
    parse_request,
    unpackb,
)

__all__ = ["DEFAULT_KEYS", "KeyMap", "PolicyServer", "WireError", "packb", "parse_request", "unpackb"]
