"""Values nested too deeply are refused where they enter, and never crash a reader: msgspec
recurses on the interpreter's stack, so a value accepted near its limit by one caller
could not be read back by another deeper in its stack. Found by tests/fuzz/test_wire_fuzz.py."""

from __future__ import annotations

import msgspec
import pytest

import stemd
from stemd import _wire as wire
from stemd._codec import MAX_DEPTH, check_depth, codec_for
from stemd._errors import PayloadError
from tests.helpers import open_app

pytestmark = pytest.mark.anyio

flow = stemd.Flow("nest.flow")


@flow.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Returns ``"ok"``."""
    return "ok"


def nested(depth: int) -> list[object]:
    """A list nested ``depth`` levels deep."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_request_nested_past_the_interpreter_limit_is_a_decode_error() -> None:
    """A request body nested 100,000 levels deep is malformed, not a RecursionError."""
    body = b'{"workflow": "x", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(msgspec.DecodeError):
        wire.decode_request("start", body)


def test_the_codec_turns_recursion_into_payload_errors() -> None:
    """Encoding or decoding a value too deep for the stack raises PayloadError."""
    codec = codec_for("json")
    with pytest.raises(PayloadError):
        codec.decode(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(PayloadError):
        codec.encode(nested(100_000))


def test_check_depth_allows_the_limit_and_refuses_one_more() -> None:
    """Lists and dicts may nest MAX_DEPTH levels, not more."""
    check_depth(nested(MAX_DEPTH))
    check_depth({"a": [{"b": nested(MAX_DEPTH - 3)}]})
    with pytest.raises(PayloadError):
        check_depth(nested(MAX_DEPTH + 1))


async def test_start_and_emit_refuse_deep_values_and_write_nothing() -> None:
    """start_workflow and emit refuse params and payloads nested too deeply."""
    async with open_app(flow) as app:
        with pytest.raises(PayloadError):
            await app.start_workflow("nest.flow", nested(MAX_DEPTH + 1), run_id="deep")
        assert await app.get_run("deep") is None
        with pytest.raises(PayloadError):
            await app.emit("some.topic", {"x": nested(MAX_DEPTH + 1)})
