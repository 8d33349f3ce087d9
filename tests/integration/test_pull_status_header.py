"""A stream message whose publisher set a ``Status`` header (as a server's status reply
to a pull request has) is still delivered, not mistaken for a status reply and dropped
(it would then be redelivered forever). Found by tests/fuzz/test_wire_fuzz.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stemd._broker.pull import PullConsumer

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("status", ["408", "404", "100", "503"])
async def test_a_message_with_a_status_header_is_delivered(
    conn: NatsConnection, status: str
) -> None:
    """A stored message with ``Status: <code>`` comes out of the pull consumer and is acked."""
    await conn.ensure_stream({"name": "ODD", "subjects": ["odd.>"], "retention": "workqueue"})
    await conn.js_publish("odd.one", b"", headers={"Status": status, "Description": "x"})
    consumer = PullConsumer(
        conn,
        "ODD",
        {"durable_name": "odd", "ack_policy": "explicit", "filter_subject": "odd.>"},
        expires=1.0,
    )
    try:
        msg = await consumer.next()
        assert msg.subject == "odd.one"
        await msg.ack()
    finally:
        await consumer.close()
