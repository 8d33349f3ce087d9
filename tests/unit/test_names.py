"""The meanings defined once: URL kinds, identifier patterns, the status parser."""

from __future__ import annotations

import msgspec
import pytest

import stemd
from stemd import _wire as wire
from stemd._errors import ConfigError
from stemd._identifiers import is_prefix, is_queue, validate_run_id, validate_topic
from stemd._model import parse_status
from stemd._urls import is_nats, nats_servers, store_kind, url_kind


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", "memory"),
        ("memory", "memory"),
        ("sqlite:///./stemd.db", "sqlite"),
        ("nats://127.0.0.1:4222", "nats"),
        ("tls://h:4222,tls://g:4222", "nats"),
        ("local://", "local"),
        ("redis://h", None),
        ("", None),
    ],
)
def test_url_kind_reads_the_scheme(url: str, kind: str | None) -> None:
    """A URL's scheme names its kind; an unknown scheme names none."""
    assert url_kind(url) == kind


def test_store_kind_refuses_what_is_not_a_store_with_the_key_and_masked_credentials() -> None:
    """store_kind names the key and masks a password; local:// is a broker, not a store."""
    assert store_kind("sqlite:///x.db") == "sqlite"
    with pytest.raises(ConfigError, match=r"^--store: unsupported URL 'redis://u:\*\*\*@h'"):
        store_kind("redis://u:secret@h", "--store")
    with pytest.raises(ConfigError, match=r"^store: unsupported URL"):
        store_kind("local://")


def test_nats_urls_and_their_servers() -> None:
    """nats:// and tls:// are NATS; servers default to port 4222 and to the nats scheme."""
    assert is_nats("tls://h:1")
    assert not is_nats("sqlite:///x")
    assert not is_nats(None)
    assert nats_servers("nats", "nats://a:1, b") == [("a", 1), ("b", 4222)]
    with pytest.raises(ConfigError, match=r"^broker: invalid NATS URL"):
        nats_servers("broker", "nats://:1")


def test_the_wire_types_use_the_same_run_id_and_topic_patterns() -> None:
    """A run id or topic the App refuses is refused by the wire's request types, and back."""
    for run_id in ("ok-1_A", "x" * 128):
        assert validate_run_id(run_id) == run_id
        assert msgspec.convert({"run_id": run_id}, wire.GetRequest).run_id == run_id
    for bad in ("", "x" * 129, "a.b", "a b"):
        with pytest.raises(stemd.InvalidRunId):
            validate_run_id(bad)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"run_id": bad}, wire.GetRequest)
    for topic in ("orders.paid", "a/b=c.d-e_f"):
        assert validate_topic(topic) == topic
        assert msgspec.convert({"topic": topic}, wire.WaitingRequest).topic == topic
    for bad in ("", "a..b", ".a", "a b", "x" * 257):
        with pytest.raises(stemd.StemError):
            validate_topic(bad)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"topic": bad}, wire.WaitingRequest)


def test_queue_and_prefix_names() -> None:
    """Queues are 1-64 name characters; prefixes dot-separated tokens of them."""
    assert is_queue("workflow")
    assert not is_queue("")
    assert not is_queue("a.b")
    assert is_prefix("acme.prod")
    assert not is_prefix("acme.")
    assert not is_prefix("a b")


def test_parse_status_reads_any_case_and_names_the_choices() -> None:
    """Statuses parse in any case; an unknown one is a StemError listing the six."""
    assert parse_status("Completed") is stemd.RunStatus.COMPLETED
    assert parse_status(stemd.RunStatus.FAILED) is stemd.RunStatus.FAILED
    assert parse_status(None) is None
    with pytest.raises(stemd.StemError, match=r"unknown status 'done' \(one of pending, "):
        parse_status("done")
