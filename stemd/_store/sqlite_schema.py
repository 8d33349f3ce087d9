"""The SQLite store's schema: numbered migrations, and rows to and from RunRecords.

Migrations are the files ``stemd/store/migrations/NNNN_name.sql``, applied in order at
open inside one ``BEGIN IMMEDIATE`` transaction each, and recorded in ``schema_version``;
several processes opening one database at once apply each migration exactly once.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import msgspec

from stemd._errors import StoreError
from stemd._model import CancellationPolicy, ErrorInfo, RunStatus
from stemd._store.base import RunRecord

__all__ = [
    "RUN_COLUMNS",
    "from_us",
    "migrate",
    "migrations",
    "record_from_row",
    "record_to_row",
    "to_us",
]

# The columns of ``runs`` holding a RunRecord, in RunRecord's field order. A new RunRecord
# field needs a migration and an entry here: the check below makes that impossible to miss.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "workflow",
    "status",
    "params",
    "created_at",
    "updated_at",
    "queue",
    "result",
    "error",
    "parent_run_id",
    "policy",
    "ttl",
    "wait_topic",
    "wait_key",
    "wait_child",
    "resume_at",
    "suspended_at",
    "resume_key",
    "timer_at",
    "finished_at",
    "cancel_reason",
    "lease_owner",
    "lease_expires_at",
    "token",
    "attempts",
    "attempt_step",
    "step_failures",
    "trace",
    "wait_topics",
    "wait_data",
    "event_floor",
    "cursors",
    "version",
    "paused",
    "priority",
)
if RunRecord.__struct_fields__ != RUN_COLUMNS:  # pragma: no cover - a development error
    raise ImportError("stemd._store.sqlite_schema.RUN_COLUMNS is out of date with RunRecord")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_STATUS = {s.value: s for s in RunStatus}
_json = msgspec.json.Encoder()
_error = msgspec.json.Decoder(ErrorInfo)
_policy = msgspec.json.Decoder(CancellationPolicy)
_topics = msgspec.json.Decoder(tuple[str, ...])
_cursors = msgspec.json.Decoder(dict[str, int])
_MIGRATION = re.compile(r"(\d{4})_[A-Za-z0-9_]+\.sql")


def to_us(at: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    return (at - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The aware UTC datetime of ``us`` microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def _opt_us(at: datetime | None) -> int | None:
    return None if at is None else (at - _EPOCH) // _US


def _opt_dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def record_to_row(r: RunRecord) -> tuple[Any, ...]:
    """The values of ``runs`` columns :data:`RUN_COLUMNS` for ``r``."""
    return (
        r.run_id,
        r.workflow,
        r.status.value,
        r.params,
        (r.created_at - _EPOCH) // _US,
        (r.updated_at - _EPOCH) // _US,
        r.queue,
        r.result,
        None if r.error is None else _json.encode(r.error).decode(),
        r.parent_run_id,
        None if r.policy is None else _json.encode(r.policy).decode(),
        r.ttl,
        r.wait_topic,
        r.wait_key,
        r.wait_child,
        _opt_us(r.resume_at),
        _opt_us(r.suspended_at),
        r.resume_key,
        _opt_us(r.timer_at),
        _opt_us(r.finished_at),
        r.cancel_reason,
        r.lease_owner,
        _opt_us(r.lease_expires_at),
        r.token,
        r.attempts,
        r.attempt_step,
        r.step_failures,
        r.trace,
        None if r.wait_topics is None else _json.encode(r.wait_topics).decode(),
        r.wait_data,
        r.event_floor,
        _json.encode(r.cursors).decode() if r.cursors else None,
        r.version,
        1 if r.paused else 0,
        r.priority,
    )


def record_from_row(row: tuple[Any, ...] | sqlite3.Row) -> RunRecord:
    """The RunRecord of a row selected as :data:`RUN_COLUMNS`."""
    (
        run_id,
        workflow,
        status,
        params,
        created_at,
        updated_at,
        queue,
        result,
        error,
        parent_run_id,
        policy,
        ttl,
        wait_topic,
        wait_key,
        wait_child,
        resume_at,
        suspended_at,
        resume_key,
        timer_at,
        finished_at,
        cancel_reason,
        lease_owner,
        lease_expires_at,
        token,
        attempts,
        attempt_step,
        step_failures,
        trace,
        wait_topics,
        wait_data,
        event_floor,
        cursors,
        version,
        paused,
        priority,
    ) = row
    return RunRecord(
        run_id=run_id,
        workflow=workflow,
        status=_STATUS[status],
        params=params,
        created_at=_EPOCH + timedelta(microseconds=created_at),
        updated_at=_EPOCH + timedelta(microseconds=updated_at),
        queue=queue,
        result=result,
        error=None if error is None else _error.decode(error),
        parent_run_id=parent_run_id,
        policy=None if policy is None else _policy.decode(policy),
        ttl=ttl,
        wait_topic=wait_topic,
        wait_key=wait_key,
        wait_child=wait_child,
        resume_at=_opt_dt(resume_at),
        suspended_at=_opt_dt(suspended_at),
        resume_key=resume_key,
        timer_at=_opt_dt(timer_at),
        finished_at=_opt_dt(finished_at),
        cancel_reason=cancel_reason,
        lease_owner=lease_owner,
        lease_expires_at=_opt_dt(lease_expires_at),
        token=token,
        attempts=attempts,
        attempt_step=attempt_step,
        step_failures=step_failures,
        trace=trace,
        wait_topics=None if wait_topics is None else _topics.decode(wait_topics),
        wait_data=wait_data,
        event_floor=event_floor,
        cursors={} if cursors is None else _cursors.decode(cursors),
        version=version,
        paused=bool(paused),
        priority=priority,
    )


# -- migrations ------------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every shipped migration, in order."""
    out = []
    for entry in resources.files("stemd._store").joinpath("migrations").iterdir():
        match = _MIGRATION.fullmatch(entry.name)
        if match is not None:
            out.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"SQLite migrations are not numbered 1..n: {versions}")
    return out


def _statements(script: str) -> list[str]:
    """Split an SQL script into complete statements."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf.strip())
            buf = ""
    return out


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema of ``db`` (in autocommit mode) up to date; return its version.

    Raises:
        StoreError: the database was written by a newer stemd.
    """
    shipped = migrations()
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    for version, name, script in shipped:
        db.execute("BEGIN IMMEDIATE")
        try:
            (current,) = db.execute(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            ).fetchone()
            if current < version:
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, to_us(datetime.now(UTC))),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    (current,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    if current > len(shipped):
        raise StoreError(
            f"the database has schema version {current}, newer than this stemd knows"
            f" ({len(shipped)}): upgrade stemd"
        )
    return int(current)
