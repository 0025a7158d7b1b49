"""Who may talk to the server: the shared secret (API key) of both fronts and the refusal of an open public bind.

- A request is authorized when the server has no key, or when its ``Authorization`` header carries the key as
  ``Api-Key <key>`` (what ``openpi_client.websocket_client_policy.WebsocketClientPolicy(api_key=...)`` sends) or as
  ``Bearer <key>`` (the usual HTTP form). Keys are compared in constant time.
- The key is read from a file (``api_key_file=PATH``) or the environment variable ``COSMOS_LIT_API_KEY``, never from
  the command line (where ``ps`` and the shell history would show it).
- Without a key the server binds loopback addresses only: another address is refused unless the caller says
  ``allow_unauthenticated=True`` (anyone who reaches the port could drive the robot).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

API_KEY_ENV = "COSMOS_LIT_API_KEY"
SCHEMES = ("Api-Key", "Bearer")


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1 (this machine only); any other name or address is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Raise ValueError (one line, saying how to proceed) for an unauthenticated bind beyond this machine."""
    if api_key or allow_unauthenticated or is_loopback(host):
        return
    raise ValueError(f"host={host}: refusing to serve without an API key on an address other machines can reach "
                     f"(anyone reaching the port could drive the robot); set {API_KEY_ENV} or api_key_file=PATH "
                     "(clients then send 'Authorization: Api-Key <key>' or 'Bearer <key>'), or pass "
                     "allow_unauthenticated=true on a network you trust")


def authorized(header: str | None, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` (always true without a key)."""
    if not api_key:
        return True
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() not in (s.lower() for s in SCHEMES):
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def read_api_key(api_key_file: str | Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The key of ``api_key_file`` (its stripped text), else ``$COSMOS_LIT_API_KEY``, else None.

    Raises ValueError naming the file when it is missing or empty."""
    if api_key_file is not None:
        path = Path(api_key_file).expanduser()
        try:
            key = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"api_key_file: cannot read {path}: {e.strerror or e}") from None
        if not key:
            raise ValueError(f"api_key_file: {path} is empty; expected the API key on its first line")
        return key
    key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    return key or None
