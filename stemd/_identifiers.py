"""The names that end up in NATS subjects and store keys: run ids, topics, queues and
subject prefixes. Their patterns live here, once; the wire protocol's request types, the
engine, the config and the App all check against these.

- A run id is 1-128 ASCII letters, digits, ``-`` and ``_`` (CONTRACT.md §2).
- A topic is dot-separated tokens of letters, digits, ``-``, ``_``, ``/`` and ``=``, at
  most 256 characters.
- A queue is 1-64 letters, digits, ``-`` and ``_``.
- A subject prefix is dot-separated tokens of letters, digits, ``-`` and ``_``.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from stemd._errors import InvalidRunId, StemError

__all__ = [
    "MAX_TOPIC",
    "PREFIX_PATTERN",
    "QUEUE_PATTERN",
    "RUN_ID_PATTERN",
    "TOPIC_PATTERN",
    "RunId",
    "Topic",
    "is_prefix",
    "is_queue",
    "validate_run_id",
    "validate_topic",
]

RUN_ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"
TOPIC_PATTERN = r"[A-Za-z0-9_\-=/]+(\.[A-Za-z0-9_\-=/]+)*"
QUEUE_PATTERN = r"[A-Za-z0-9_-]{1,64}"
PREFIX_PATTERN = r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*"
MAX_TOPIC = 256

_RUN_ID = re.compile(RUN_ID_PATTERN)
_TOPIC = re.compile(TOPIC_PATTERN)
_QUEUE = re.compile(QUEUE_PATTERN)
_PREFIX = re.compile(PREFIX_PATTERN)

# The same patterns as msgspec constraints, for request types decoded at a boundary
# (msgspec's patterns search, hence the anchors).
RunId = Annotated[str, msgspec.Meta(pattern=f"^{RUN_ID_PATTERN}$")]
Topic = Annotated[str, msgspec.Meta(max_length=MAX_TOPIC, pattern=f"^{TOPIC_PATTERN}$")]


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a valid run id, else raise :class:`InvalidRunId`."""
    if not isinstance(run_id, str) or _RUN_ID.fullmatch(run_id) is None:
        raise InvalidRunId(
            f"invalid run id {run_id!r}: use 1-128 ASCII letters, digits, '-' or '_'"
        )
    return run_id


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid event topic, else raise :class:`StemError`."""
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC or _TOPIC.fullmatch(topic) is None:
        raise StemError(
            f"invalid topic {topic!r}: use dot-separated tokens of letters, digits, '-', '_', "
            f"'/', '=' (at most {MAX_TOPIC} characters)"
        )
    return topic


def is_queue(name: object) -> bool:
    """Whether ``name`` is a valid queue name."""
    return isinstance(name, str) and _QUEUE.fullmatch(name) is not None


def is_prefix(prefix: object) -> bool:
    """Whether ``prefix`` is a valid subject prefix (``stem``, ``acme.prod``)."""
    return isinstance(prefix, str) and _PREFIX.fullmatch(prefix) is not None
