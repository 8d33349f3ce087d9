"""What a pull consumer's message reads from its acknowledgement subject."""

from __future__ import annotations

from typing import cast

import pytest

from stemd._broker.pull import JsMsg
from stemd._natsconn import NatsConnection, NatsMsg


def message(reply: str) -> JsMsg:
    """A JetStream message with the reply subject ``reply``."""
    # The connection is only used to acknowledge; these tests never do.
    return JsMsg(cast("NatsConnection", None), NatsMsg("stem.submit.x", b"", reply))


@pytest.mark.parametrize(
    ("reply", "delivered", "seq"),
    [
        ("$JS.ACK.STEM_SUBMIT.ingress.3.41.7.1700000000000000000.0", 3, 41),
        ("$JS.ACK.hub.ACC.STEM_SUBMIT.ingress.2.9.5.1700000000000000000.0.tok", 2, 9),
        ("not-an-ack-subject", 1, 0),
    ],
)
def test_delivery_count_and_sequence(reply: str, delivered: int, seq: int) -> None:
    """The delivery count and stream sequence are read from the ack subject, domain or not."""
    msg = message(reply)
    assert msg.num_delivered == delivered
    assert msg.stream_seq == seq


@pytest.mark.parametrize(
    ("delivered", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (10**6, 300.0)]
)
def test_retry_delay_doubles_up_to_its_cap(delivered: int, delay: float) -> None:
    """The retry delay doubles with each delivery, from ``first`` up to ``cap``."""
    msg = message(f"$JS.ACK.S.c.{delivered}.1.1.1700000000000000000.0")
    assert msg.retry_delay() == delay
    assert msg.retry_delay(first=0.5, cap=10.0) == min(10.0, delay / 2)
