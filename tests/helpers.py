"""Helpers for tests that drive an App: waiting on conditions with a deadline."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

import stemd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from stemd._store.base import Store
    from stemd.testing import ManualClock

__all__ = ["RUN_STATE_CONTRACT_FIELDS", "open_app", "wait_status", "wait_until"]

DEADLINE = 5.0

# The RunState fields CONTRACT.md §2 names (in Python and, by name, in wire JSON).
RUN_STATE_CONTRACT_FIELDS = frozenset(
    {
        "run_id",
        "workflow",
        "status",
        "params",
        "result",
        "error",
        "checkpoints",
        "wait_topic",
        "resume_at",
        "parent_run_id",
        "policy",
        "created_at",
        "updated_at",
        "cancel_reason",
        "lease_owner",
        "lease_expires_at",
        "attempts",
    }
)


async def wait_until(
    check: Callable[..., Awaitable[bool]],
    *args: Any,
    timeout: float = DEADLINE,
    what: str = "condition",
) -> None:
    """Poll ``check(*args)`` until it holds; fail the test if ``timeout`` (real seconds)
    passes. For state that lives in the store, where there is no event to await."""
    try:
        with anyio.fail_after(timeout):
            while not await check(*args):  # noqa: ASYNC110 - the store offers no event
                await anyio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def wait_status(
    app: stemd.App, run_id: str, *statuses: stemd.RunStatus, timeout: float = DEADLINE
) -> stemd.RunState:
    """Wait until ``run_id`` is in one of ``statuses``; return its state."""
    state: stemd.RunState | None = None

    async def reached() -> bool:
        nonlocal state
        state = await app.get_run(run_id)
        return state is not None and state.status in statuses

    await wait_until(reached, timeout=timeout, what=f"run {run_id} to be {statuses}")
    assert state is not None
    return state


@asynccontextmanager
async def open_app(
    *workflows: Any,
    clock: ManualClock | None = None,
    store: str | Store = "memory://",
    **options: Any,
) -> AsyncIterator[stemd.App]:
    """An App on the memory store (or ``store``) with the given workflows."""
    async with stemd.App(store=store, workflows=workflows, clock=clock, **options) as app:
        yield app


class HttpReply:
    """A reply read by :func:`http`."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        import json

        return json.loads(self.content)


def http_sync(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpReply:
    """One HTTP request with the standard library (no redirect followed)."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as reply:
            return HttpReply(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, dict(exc.headers), exc.read())


async def http(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpReply:
    """:func:`http_sync` in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: http_sync(url, method, body, headers))
