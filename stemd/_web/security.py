"""Who may use the HTTP API and the dashboard, and protection against cross-site requests.

- Bearer tokens (config ``http_tokens``): when any is set, every route but ``/healthz``,
  ``/readyz`` and ``/metrics`` needs ``Authorization: Bearer TOKEN``, or the session
  cookie the dashboard's sign-in page sets (an HMAC of the token, never the token).
- Cross-site requests: a request that changes anything (``POST``) must carry JSON
  (``Content-Type: application/json``, which a cross-site form cannot send without a CORS
  preflight, and none is ever answered), an ``Origin`` that is the server's own when it
  carries one, and, when it is authenticated by the cookie, the page's CSRF token in
  ``X-CSRF-Token``.
- DNS rebinding: a server bound to a loopback address answers only requests whose
  ``Host`` is a loopback name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from stemd._urls import is_loopback

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.requests import Request

__all__ = ["COOKIE", "Guard"]

COOKIE = "stemd_session"
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/login", "/static/")


def _host_name(host: str) -> str:
    """``127.0.0.1:8080`` → ``127.0.0.1``; ``[::1]:8080`` → ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class Guard:
    """The checks of one server: ``tokens`` (none: no authentication), and whether it is
    bound to a loopback address (``loopback``)."""

    def __init__(self, tokens: Iterable[str], *, loopback: bool) -> None:
        self.tokens = tuple(tokens)
        self.loopback = loopback
        self._secret = secrets.token_bytes(32)
        self._sessions = {self._sign(b"session:" + t.encode()): t for t in self.tokens}

    @property
    def required(self) -> bool:
        """Whether requests must authenticate."""
        return bool(self.tokens)

    def _sign(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def open_path(self, path: str) -> bool:
        """Whether ``path`` is served to anyone (health, metrics, sign-in, assets)."""
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in _OPEN_PATHS)

    def host_ok(self, request: Request) -> bool:
        """Whether the ``Host`` header may be answered (see DNS rebinding above)."""
        if not self.loopback:
            return True
        host = request.headers.get("host")
        return host is None or is_loopback(_host_name(host))

    def session_for(self, token: str) -> str | None:
        """The session cookie's value for ``token``, or ``None`` if it is not a token."""
        for session, known in self._sessions.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return session
        return None

    def identity(self, request: Request) -> str | None:
        """How ``request`` authenticates: ``"bearer"``, ``"cookie"``, ``"open"`` (no tokens
        configured) or ``None`` (it does not)."""
        if not self.tokens:
            return "open"
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            if any(hmac.compare_digest(value.encode(), t.encode()) for t in self.tokens):
                return "bearer"
            return None
        cookie = request.cookies.get(COOKIE)
        if cookie and any(hmac.compare_digest(cookie, s) for s in self._sessions):
            return "cookie"
        return None

    def csrf_token(self, request: Request) -> str:
        """The CSRF token the pages put in forms and scripts: bound to the session cookie
        (or to nothing when there are no tokens)."""
        return self._sign(b"csrf:" + request.cookies.get(COOKIE, "").encode())

    def cross_site(self, request: Request, identity: str) -> str | None:
        """Why a state-changing ``request`` looks cross-site, or ``None`` if it does not."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return "a request that changes state must have Content-Type: application/json"
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            return f"cross-origin request from {origin} refused"
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "cross-site request refused"
        if identity == "cookie" or request.headers.get("x-csrf-token") is not None:
            given = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(given, self.csrf_token(request)):
                return "missing or wrong X-CSRF-Token (reload the page)"
        return None


def _own_origin(request: Request) -> str:
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"
