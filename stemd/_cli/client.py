"""The CLI's ways to reach runs, behind one interface (:class:`Client`).

- :class:`StoreClient`: straight to the store, through ``App(store=URL, workers=False)``;
  works with no daemon up.
- :class:`~stemd._cli.nats_client.NatsClient`: request/reply with a daemon over NATS.
- :class:`~stemd._cli.http_client.HttpClient`: a daemon's HTTP API.
"""

from __future__ import annotations

import difflib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from stemd import _wire as wire
from stemd._app import App
from stemd._cli.nats_client import NatsClient, raise_error
from stemd._codec import Codec, codec_for
from stemd._engine.groups import check_new_runs, group_filter
from stemd._errors import (
    StoreError,
    TransportError,
    UnknownWorkflow,
)
from stemd._model import CancellationPolicy, RunPage, RunState, parse_status
from stemd._natsauth import NatsAuth, redact_url
from stemd._options import DEFAULT_EVENT_RETENTION, AppOptions
from stemd._reachability import check_nats, check_sqlite
from stemd._store import store_from_url
from stemd._urls import sqlite_path, url_kind

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from datetime import datetime

    from stemd._engine.groups import GroupOp
    from stemd._loading import Workflow
    from stemd._store.base import Store

__all__ = ["Client", "NatsClient", "StoreClient", "open_client", "raise_error"]

# Run ids a dry run of a group operation lists at most.
PREVIEW = 1000


class Client(Protocol):
    """What every ``stemd workflow`` command needs."""

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
        *,
        force: bool = False,
        ttl: float | None = None,
        parent: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        """Start a run; return its id and whether it was created (``False``: it existed).
        ``force``: start a workflow no daemon has registered (straight to the store);
        ``ttl``: seconds it is kept after it ends; ``parent``: the run it is a child of."""
        ...

    async def get(self, run_id: str) -> RunState | None:
        """The run, or ``None``."""
        ...

    async def list_runs(
        self,
        workflow: str | None,
        status: str | None,
        limit: int,
        after: str | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> RunPage:
        """A page of runs, newest first, from the cursor ``after`` on, created within
        ``window`` (after, before; ``None``: no bound)."""
        ...

    async def emit(self, topic: str, payload: Any, retain: float | None = None) -> int:
        """Emit on ``topic`` (kept ``retain`` seconds; ``None``: the default retention);
        return how many waiting runs it resumed."""
        ...

    async def send(self, run_id: str, topic: str, payload: Any, key: str | None) -> bool:
        """Send a message to one run; ``False`` if one with ``key`` was sent to it before.

        Raises:
            RunNotFound: there is no such run.
            StemError: the run has ended.
        """
        ...

    async def waiting(self, topic: str, limit: int = 1000, after: str | None = None) -> RunPage:
        """A page of the runs waiting on ``topic``, oldest first."""
        ...

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the run; ``False`` if unknown or already ended."""
        ...

    async def rewind(self, run_id: str, step: str) -> bool:
        """Re-run from ``step``; ``False`` if the run is unknown."""
        ...

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        """Wait until the run ends or ``timeout`` passes; return its state and whether the
        timeout passed first."""
        ...

    async def group(
        self,
        op: GroupOp,
        filters: dict[str, Any],
        reason: str,
        dry_run: bool,
        new_runs: bool = False,
    ) -> tuple[int, list[str] | None]:
        """Pause, resume or cancel (``op``) the runs ``filters`` select: how many were
        changed (with ``dry_run``: would be, and the ids of the first 1000 of them);
        ``new_runs``: the workflow's new runs start paused (pause) or no longer (resume)."""
        ...

    async def types(self) -> list[wire.WorkflowType]:
        """The registered workflows, by name."""
        ...


def _unregistered(workflow: str, registered: list[str]) -> UnknownWorkflow:
    """The error for a start of ``workflow``, which no daemon registered in the store."""
    force = "or pass --force to start it before any daemon serving it has run"
    if not registered:
        return UnknownWorkflow(
            f"unknown workflow {workflow!r}: no daemon has run with this store yet, so it "
            f"knows no workflow (is this the right store?); start `stemd run` with it, {force}"
        )
    close = difflib.get_close_matches(workflow, registered, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(registered[:10]) + (", …" if len(registered) > 10 else "")
    return UnknownWorkflow(
        f"unknown workflow {workflow!r}: no daemon has registered it in this store "
        f"(registered: {shown}); {hint}check the name, {force}"
    )


class StoreClient:
    """A :class:`Client` over an open ``App(workers=False)``.

    A start is refused, before anything is written, when the workflow is neither known to
    the app (the config's modules) nor registered in the store by some daemon, unless
    forced.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    async def start(
        self,
        workflow: str,
        params: Any,
        run_id: str | None,
        policy: CancellationPolicy | None,
        *,
        force: bool = False,
        ttl: float | None = None,
        parent: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        if not force and not self.app.workflows:
            registered = [w.name for w in await self.app.registered_workflows()]
            if workflow not in registered:
                raise _unregistered(workflow, registered)
        return await self.app.start_run(
            workflow,
            params,
            run_id=run_id,
            policy=policy,
            ttl=ttl,
            parent_run_id=parent,
            dedup_key=dedup_key,
            priority=priority,
        )

    async def get(self, run_id: str) -> RunState | None:
        return await self.app.get_run(run_id)

    async def list_runs(
        self,
        workflow: str | None,
        status: str | None,
        limit: int,
        after: str | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> RunPage:
        return await self.app.page_runs(
            workflow=workflow,
            status=parse_status(status),
            limit=limit,
            after=after,
            created_after=window[0],
            created_before=window[1],
        )

    async def emit(self, topic: str, payload: Any, retain: float | None = None) -> int:
        return await self.app.emit(topic, payload, retain=retain)

    async def send(self, run_id: str, topic: str, payload: Any, key: str | None) -> bool:
        return await self.app.send(run_id, topic, payload, key=key)

    async def waiting(self, topic: str, limit: int = 1000, after: str | None = None) -> RunPage:
        return await self.app.page_waiting(topic, limit, after=after)

    async def cancel(self, run_id: str, reason: str) -> bool:
        return await self.app.cancel_run(run_id, reason=reason)

    async def rewind(self, run_id: str, step: str) -> bool:
        return await self.app.rewind_run(run_id, step)

    async def wait(self, run_id: str, timeout: float | None) -> tuple[RunState, bool]:
        result = await self.app.wait_for_completion(run_id, timeout=timeout)
        assert result.state is not None
        return result.state, result.timed_out

    async def types(self) -> list[wire.WorkflowType]:
        return [wire.workflow_type(w) for w in await self.app.registered_workflows()]

    async def group(
        self,
        op: GroupOp,
        filters: dict[str, Any],
        reason: str,
        dry_run: bool,
        new_runs: bool = False,
    ) -> tuple[int, list[str] | None]:
        app = self.app
        if dry_run:
            if new_runs:
                check_new_runs(op, group_filter(**filters))
            return await app.preview_runs(op, limit=PREVIEW, **filters)
        if op == "pause":
            return await app.pause_runs(new_runs=new_runs, **filters), None
        if op == "resume":
            return await app.resume_runs(new_runs=new_runs, **filters), None
        return await app.cancel_runs(reason=reason, **filters), None


# -- through a daemon, over NATS ------------------------------------------------------------


@asynccontextmanager
async def open_client(
    *,
    store: str | None = None,
    nats_url: str | None = None,
    workflows: Iterable[Workflow] = (),
    prefix: str = "stem",
    timeout: float = 5.0,
    codecs: tuple[Codec, dict[str, Codec]] | None = None,
    auth: NatsAuth | None = None,
    create_store: bool = True,
    missing_hint: str = "",
    event_retention: float | None = None,
) -> AsyncIterator[Client]:
    """A :class:`Client` over ``nats_url`` if given, else straight to ``store``; ``auth``
    gives the credentials and TLS of a NATS connection; ``event_retention`` how long an
    event emitted straight to the store is kept (``None``: the App's default). With
    ``create_store=False`` a
    SQLite store must exist already: a missing file is an error (ending with
    ``missing_hint``) and none is created.

    Raises:
        ConfigError: the store or NATS cannot be reached (naming ``--store``/``--nats``).
        StoreError: ``create_store=False`` and there is no SQLite file at the store's path.
        TransportError: NATS refused the credentials or the TLS handshake failed.
    """
    if nats_url is not None:
        # TCP first, for the plain "cannot reach" message; the handshake is the real open.
        await check_nats("--nats", nats_url, timeout=timeout, handshake=False)
        # Here, not at the top: the NATS client (nats-py) takes ~0.1 s to import, which
        # `stemd run` on SQLite, importing this module with the CLI, does not need.
        from stemd._natsconn import open_connection

        try:
            conn = await open_connection(
                nats_url,
                auth=auth,
                name="stemd-cli",
                timeout=timeout,
                connect_timeout=min(timeout, 2.0),
                connect_attempts=1,
            )
        except TransportError as exc:
            raise TransportError(f"--nats: {exc}") from None
        try:
            yield NatsClient(conn, redact_url(nats_url), prefix=prefix, timeout=timeout)
        finally:
            await conn.close()
        return
    assert store is not None
    opened: str | Store = store
    kind = url_kind(store)
    if kind == "sqlite":
        if create_store or await anyio.Path(sqlite_path(store)).exists():
            check_sqlite("--store", store)  # for its messages (permissions, directory)
        if not create_store:
            # SQLite itself refuses to open a missing file in this mode: no file is
            # created, whatever happens between a look and the open.
            opened = store_from_url(store, create=False)
            try:
                await opened.open()
            except StoreError as exc:
                raise StoreError(
                    f"--store: {exc} (is this the directory the daemon runs in? "
                    f"give --store sqlite:///PATH{missing_hint})"
                ) from None
    elif kind == "nats":
        await check_nats("--store", store, timeout=timeout, handshake=False)
    codec, per_workflow = codecs if codecs is not None else (codec_for("json"), {})
    async with App(
        store=opened,
        workers=False,
        workflows=workflows,
        codec=codec,
        workflow_codecs=per_workflow,
        options=AppOptions(
            nats_auth=auth,
            event_retention=DEFAULT_EVENT_RETENTION if event_retention is None else event_retention,
        ),
    ) as app:
        yield StoreClient(app)
