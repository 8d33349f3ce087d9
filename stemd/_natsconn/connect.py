"""Opening a connection: a bounded first attempt whose failure says why in words an
operator can act on (refused credentials, an untrusted certificate, a server that wants
TLS first...), then reconnection forever; nats-py's connection events logged through
structlog and forwarded to the connection's event stream."""

from __future__ import annotations

import contextlib
import ssl
from typing import TYPE_CHECKING, Any

import anyio
import nats.aio.client
import nats.errors
import structlog

from stemd._errors import TransportError
from stemd._natsauth import NatsAuth, redact_url, url_has_credentials
from stemd._natsconn.boundary import FOREIGN, boundary, suppressed
from stemd._natsconn.jetstream import NatsConnection
from stemd._natsconn.messages import split_url

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["open_connection"]

log = structlog.get_logger("stemd.nats")


class _Client(nats.aio.client.Client):
    """nats-py's client, reading subjects that are not UTF-8.

    The server relays any bytes as a subject, and nats-py decodes a message's subject
    strictly: one message published to ``stem.submit.<not UTF-8>`` (or a request on such a
    ``stem.api`` subject) would stop its read loop for good, leaving a connection that
    looks alive and reads nothing. Invalid bytes read as U+FFFD here, so such a message
    is refused like any other bad input. (This overrides a private method of nats-py 2.x,
    hence the ``<3`` pin; tests/integration/test_nats_submit_events.py sends such subjects.)
    """

    def __init__(self) -> None:
        super().__init__()
        # Subscriptions (by sid) whose messages the read loop hands at once to a function
        # (subject, data, headers) instead of queueing them for the subscription's task.
        self._direct: dict[int, Callable[[str, bytes, dict[str, str] | None], None]] = {}

    def take_directly(
        self, sub: Any, take: Callable[[str, bytes, dict[str, str] | None], None]
    ) -> None:
        """Hand each message of ``sub`` to ``take`` from the read loop (``take`` must only
        settle a future or put into a buffer: it runs inside nats-py's read loop)."""
        self._direct[sub._id] = take

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes,  # (None when the message has none)
    ) -> None:
        take = self._direct.get(sid)
        if take is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        # The replies of requests: no message object, queue or task hop for each.
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        hdr = await self._process_headers(headers) if headers else None
        take(subject.decode(errors="replace"), data, hdr)

    def _build_message(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> Any:
        return self.msg_class(
            subject=subject.decode(errors="replace"),
            reply=reply.decode(errors="replace"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )


@boundary("connect to NATS")
async def open_connection(
    url: str,
    *,
    auth: NatsAuth | None = None,
    name: str = "stemd",
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
    connect_attempts: int = 3,
    reconnect_wait: float = 0.25,
    pending_size: int = 8 * 1024 * 1024,
) -> NatsConnection:
    """Connect to ``url`` (query string ignored) with the credentials and TLS of ``auth``.

    The first connection is tried ``connect_attempts`` times; after that the client
    reconnects forever, buffering up to ``pending_size`` bytes of publishes meanwhile.
    TLS is required when ``auth`` sets any ``tls_*`` option or the URL is ``tls://``: a
    server that does not require TLS is refused rather than spoken to in clear.

    Raises:
        TransportError: the server could not be reached, refused the credentials, or the
            TLS handshake failed (the message says which; secrets are never in it).
        ConfigError: a file of ``auth`` is unreadable or malformed.
    """
    auth = auth or NatsAuth()
    server, _ = split_url(url)
    shown = redact_url(server)
    options = auth.connect_options()
    wants_tls = auth.wants_tls or server.lstrip().startswith("tls://")
    conn: NatsConnection | None = None
    trouble: list[BaseException] = []  # errors met while connecting the first time
    told: list[bool] = []  # the trouble of this outage is logged: the next at debug only
    connecting = anyio.CancelScope()

    async def error_cb(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if conn is None:
            trouble.append(exc)
            if _hopeless(exc):
                # Refused credentials or an untrusted certificate: another attempt would
                # meet the same answer (and nats-py may wait long before giving up).
                connecting.cancel()
        elif conn._permission_violation(str(exc)):
            log.warning("nats permission denied", url=shown, error=text)
            return
        if told:
            # Each reconnect attempt fails while NATS is away: one warning per outage.
            log.debug("nats connection trouble", url=shown, error=text)
            return
        if conn is not None:
            told.append(True)
        log.warning("nats connection trouble", url=shown, error=text)

    async def disconnected_cb() -> None:
        if conn is not None and conn._closed:
            return
        log.info("nats disconnected", url=shown)
        if conn is not None:
            conn._connection_lost()
            conn._event("disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected", url=shown)
        told.clear()
        if conn is not None:
            conn.reconnects += 1
            conn._event("reconnected")

    async def closed_cb() -> None:
        if conn is not None:
            conn._event("closed")

    def failed(cause: BaseException) -> TransportError:
        return TransportError(
            f"cannot connect to NATS at {shown}: {_why(cause, auth, server, wants_tls)}"
        )

    nc: Any = _Client()
    try:
        with anyio.fail_after(connect_timeout * connect_attempts + 5), connecting:
            await nc.connect(
                servers=[server],
                name=name,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                closed_cb=closed_cb,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=connect_attempts,
                reconnect_time_wait=reconnect_wait,
                pending_size=pending_size,
                ping_interval=10,
                max_outstanding_pings=3,
                **options,
            )
    except FOREIGN as exc:
        await _abandon(nc)
        cause: BaseException = exc
        if trouble and isinstance(exc, (nats.errors.NoServersError, TimeoutError)):
            # "No servers available" or our deadline hides why; the server's refusal is
            # followed by the connection's reset, which says less.
            cause = next((e for e in reversed(trouble) if _hopeless(e)), trouble[-1])
        raise failed(cause) from exc
    if connecting.cancelled_caught:
        await _abandon(nc)
        raise failed(trouble[-1])
    if wants_tls and not _uses_tls(nc):
        await _abandon(nc)
        raise TransportError(
            f"cannot connect to NATS at {shown}: TLS is configured but the server does not "
            "require it (refusing to talk in clear; configure TLS on the server)"
        )
    # Connected: from now on never give up reconnecting.
    nc.options["max_reconnect_attempts"] = -1
    conn = NatsConnection(nc, server, timeout)
    return conn


async def _abandon(nc: Any) -> None:
    """Close a client that did not (properly) connect, bounded in time, and its socket:
    a connection attempt cut short may have left it open behind nats-py's back."""
    with anyio.move_on_after(5, shield=True), suppressed():
        await nc.close()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        writer = getattr(transport, "_io_writer", None)
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.transport.abort()  # no TLS close_notify to wait for
            transport.close()
        # After a failed TLS upgrade the stream never hears of the close: do not wait long.
        with anyio.move_on_after(0.2, shield=True), contextlib.suppress(Exception):
            await transport.wait_closed()


def _hopeless(exc: BaseException) -> bool:
    """Whether a connection attempt failed in a way no retry changes."""
    text = str(exc).lower()
    return (
        isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLCertVerificationError))
        or "authorization violation" in text
        or "certificate required" in text
    )


def _uses_tls(nc: Any) -> bool:
    """Whether the connection went through a TLS handshake (nats-py upgrades when the
    server requires TLS, or first thing with ``tls_handshake_first``)."""
    info = getattr(nc, "_server_info", None) or {}
    return bool(info.get("tls_required") or nc.options.get("tls_handshake_first"))


def _why(exc: BaseException, auth: NatsAuth, server: str, wants_tls: bool) -> str:
    """Why a connection failed, in words an operator can act on."""
    text = str(exc)
    lower = text.lower()
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in lower:
        return _refused(auth, server)
    if isinstance(exc, ssl.SSLError):
        return _tls_failed(exc)
    if "authentication expired" in lower or "revoked" in lower:
        return f"the server refused {auth.method()}: {text.removeprefix('nats: ')}"
    if wants_tls:
        hint = _tls_hint(exc, auth)
        if hint is not None:
            return hint
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _refused(auth: NatsAuth, server: str) -> str:
    """The server refused the credentials (or their absence)."""
    method = auth.method()
    if method == "no credentials" and url_has_credentials(server):
        method = "the credentials in the URL"
    if method == "no credentials":
        return "authorization violation: the server requires credentials and none were given"
    return f"authorization violation: the server refused {method}"


def _tls_failed(exc: ssl.SSLError) -> str:
    """The TLS handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return (
            f"TLS: the server's certificate is not trusted ({detail}); "
            "check tls_ca_file and the server's name (tls_hostname)"
        )
    reason = str(exc.reason or str(exc)).replace("_", " ").lower()
    if "certificate required" in reason:
        return (
            f"TLS: the server requires a client certificate ({reason}); "
            "set tls_cert_file and tls_key_file"
        )
    return f"TLS handshake failed: {reason}"


def _tls_hint(exc: BaseException, auth: NatsAuth) -> str | None:
    """What a failure that says little means when TLS is wanted, if anything."""
    text = str(exc)
    closed = isinstance(exc, ConnectionError) or "unexpected eof" in text.lower()
    if closed and auth.tls_cert_file is None:
        # TLS 1.3: the server checks the client's certificate after the handshake and
        # hangs up; the client may see its write fail before it reads the alert.
        return (
            f"{type(exc).__name__}: {text}: the server closed the TLS connection; it may "
            "require a client certificate (set tls_cert_file and tls_key_file)"
        )
    no_info = isinstance(exc, TimeoutError) or "expecting INFO" in text
    if no_info and not auth.tls_handshake_first:
        return (
            "no answer in time (a server that expects the TLS handshake first needs "
            "tls_handshake_first)"
        )
    return None
