"""The CLI through a daemon's HTTP API (``--http URL``): the same requests and replies as
over NATS (:class:`~stemd._cli.client.NatsClient`, whose verbs it inherits), each one a
``POST URL/api/<verb>`` with a JSON body, and ``Authorization: Bearer`` when a token is
given (``--http-token`` or ``STEMD_HTTP_TOKEN``).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import anyio
import msgspec

from stemd import _wire as wire
from stemd._cli.client import NatsClient, raise_error
from stemd._errors import PayloadError, RunNotFound, StemError, TransportError
from stemd._model import RunState, validate_run_id
from stemd._tracing import trace_headers

__all__ = ["HttpClient", "check_http_url"]

_POLL = 0.25  # seconds between two reads of a run that `wait` follows


def check_http_url(url: str) -> str:
    """``url`` without a trailing slash.

    Raises:
        StemError: it is not an ``http://`` or ``https://`` URL.
    """
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise StemError(f"--http: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class HttpClient(NatsClient):
    """A :class:`~stemd._cli.client.Client` speaking to a daemon's HTTP API at ``url``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 5.0) -> None:
        super().__init__(None, url, timeout=timeout)  # type: ignore[arg-type]
        self.url = check_http_url(url)
        self.token = token

    def _post(self, verb: str, data: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", **(trace_headers() or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            f"{self.url}/api/{verb}", data=data, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(
                f"--http: cannot reach {self.url} ({reason}); is `stemd run` serving HTTP there?"
            ) from None

    async def _request(self, verb: str, request: msgspec.Struct) -> Any:
        try:
            data = wire.encode(request)
        except (TypeError, msgspec.EncodeError) as exc:
            raise PayloadError(f"cannot encode the request as JSON: {exc}") from None
        status, body = await anyio.to_thread.run_sync(self._post, verb, data)
        if status == 401:
            raise StemError(
                f"--http: {self.url} wants a token: give --http-token or STEMD_HTTP_TOKEN"
            )
        try:
            reply = wire.decode_reply(verb, body)
        except msgspec.DecodeError:
            raise TransportError(
                f"unexpected reply from {self.url}/api/{verb} (HTTP {status}): {body[:200]!r}"
            ) from None
        if isinstance(reply, wire.ErrorReply):
            raise_error(reply.error)
        return reply

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        """Read the run until it has ended or ``timeout`` passed."""
        validate_run_id(run_id)
        state: RunState | None = None
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            while True:
                state = await self.get(run_id)
                if state is None:
                    raise RunNotFound(f"no run {run_id}")
                if state.status.is_terminal:
                    return state, False
                await anyio.sleep(_POLL)
        state = await self.get(run_id) or state
        if state is None:
            raise RunNotFound(f"no run {run_id}")
        return state, not state.status.is_terminal
