"""The JetStream KV store's slots (:class:`~stemd._store.capabilities.Slots`): one key per
scope, ``slot.`` and the scope in unpadded base64url, holding its holders and when each
hold expires (JSON: holder → milliseconds since the epoch). Every change is a
compare-and-set on that key, so daemons on one cluster never hold more than the limit."""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING

import msgspec

from stemd._errors import StoreError
from stemd._natsconn import WrongLastSequence
from stemd._store.jetstream_doc import ms
from stemd._store.jetstream_records import MAX_TRIES, after_conflict

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from stemd._store.jetstream_bucket import Bucket

__all__ = ["acquire_slot", "release_slot", "slot_holders"]


class _Held(msgspec.Struct):
    holders: dict[str, int]
    # Unique per write: a write whose answer was lost is read back by it (Bucket.cas).
    w: str = ""


_decoder = msgspec.json.Decoder(_Held)


def _key(scope: str) -> str:
    return "slot." + base64.urlsafe_b64encode(scope.encode()).decode().rstrip("=")


async def _change(bucket: Bucket, scope: str, fn: Callable[[dict[str, int]], bool]) -> bool:
    """Apply ``fn`` to the holders of ``scope`` (it changes them in place and says whether
    to write them) in a compare-and-set loop; what ``fn`` said last."""
    key = _key(scope)
    for tries in range(MAX_TRIES):
        msg = await bucket.get(key, leader=True)
        held = _decoder.decode(msg.data).holders if msg is not None and msg.data else {}
        if not fn(held):
            return False
        data = msgspec.json.encode(_Held(holders=held, w=secrets.token_hex(6)))
        try:
            await bucket.cas(key, msg.seq if msg is not None else 0, data)
        except WrongLastSequence:
            await after_conflict(tries + 1)
            continue
        return True
    raise StoreError(f"slots of {scope}: gave up after {MAX_TRIES} conflicts")


async def acquire_slot(
    bucket: Bucket, scope: str, holder: str, limit: int, now: datetime, expires_at: datetime
) -> bool:
    """See :meth:`Slots.acquire_slot <stemd._store.capabilities.Slots.acquire_slot>`."""
    now_ms = ms(now)

    def fn(held: dict[str, int]) -> bool:
        for other, until in list(held.items()):
            if until <= now_ms:
                del held[other]
        if holder not in held and len(held) >= limit:
            return False
        held[holder] = ms(expires_at)
        return True

    return await _change(bucket, scope, fn)


async def slot_holders(bucket: Bucket, scope: str, now: datetime) -> list[str]:
    """See :meth:`Slots.slot_holders <stemd._store.capabilities.Slots.slot_holders>`."""
    msg = await bucket.get(_key(scope), leader=True)
    held = _decoder.decode(msg.data).holders if msg is not None and msg.data else {}
    now_ms = ms(now)
    return sorted(holder for holder, until in held.items() if until > now_ms)


async def release_slot(bucket: Bucket, scope: str, holder: str) -> None:
    """Free the slot ``holder`` holds in ``scope``."""

    def fn(held: dict[str, int]) -> bool:
        return held.pop(holder, None) is not None

    await _change(bucket, scope, fn)
