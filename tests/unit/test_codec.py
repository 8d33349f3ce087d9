"""The codec chain: formats, compression, encryption with rotation, size limits."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from stemd._codec import CodecChain, Keyring, codec_for
from stemd._errors import ConfigError, PayloadError


class Order(msgspec.Struct):
    id: str
    amount: int
    at: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


VALUES: list[Any] = [
    None,
    True,
    42,
    1.5,
    "text",
    b"\x00bytes\xff",
    [1, "two", None],
    {"nested": {"list": [1, 2, 3]}},
    "x" * 5000,
]


def _chains() -> list[CodecChain]:
    ring = Keyring({"k1": os.urandom(32)}, "k1")
    return [
        CodecChain("json"),
        CodecChain("msgpack"),
        CodecChain("json", compression="gzip", compress_threshold=16),
        CodecChain("msgpack", compression="zstd", compress_threshold=0),
        CodecChain("json", keyring=ring),
        CodecChain("json", compression="zstd", compress_threshold=16, keyring=ring),
    ]


@pytest.mark.parametrize("chain", _chains(), ids=lambda c: c.id)
@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_values_round_trip(chain: CodecChain, value: Any) -> None:
    """Every supported value decodes to what was encoded, through every chain."""
    data = chain.encode(value)
    expected = value
    if isinstance(value, bytes):
        assert chain.decode(data, type=bytes) == value
        return
    assert chain.decode(data) == expected


@pytest.mark.parametrize("chain", _chains(), ids=lambda c: c.id)
def test_typed_values_round_trip(chain: CodecChain) -> None:
    """Structs, dataclasses and datetimes decode into their types."""
    order = Order(id="o-1", amount=3, at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert chain.decode(chain.encode(order), type=Order) == order
    assert chain.decode(chain.encode(Point(1, 2)), type=Point) == Point(1, 2)


def test_plain_json_has_no_header_and_others_do() -> None:
    """Default JSON values are stored as plain JSON; other chains are self-describing."""
    assert CodecChain().encode({"a": 1}) == b'{"a":1}'
    assert CodecChain("msgpack").encode({"a": 1}).startswith(b"\xffS1m")


def test_any_chain_reads_values_written_by_another() -> None:
    """A reader configured differently still decodes older records (codec id is stored)."""
    ring = Keyring({"k1": os.urandom(32)}, "k1")
    written = [
        CodecChain().encode({"v": 1}),
        CodecChain("msgpack", compression="gzip", compress_threshold=0).encode({"v": 1}),
        CodecChain(keyring=ring).encode({"v": 1}),
    ]
    reader = CodecChain("msgpack", keyring=ring)
    assert [reader.decode(w) for w in written] == [{"v": 1}] * 3


def test_compression_only_above_threshold() -> None:
    """Small values are not compressed; large ones shrink."""
    chain = CodecChain(compression="gzip", compress_threshold=100)
    assert chain.encode("short")[4:5] == b"n"
    big = chain.encode("y" * 10_000)
    assert big[4:5] == b"g"
    assert len(big) < 1000


def test_key_rotation_keeps_old_values_readable() -> None:
    """After rotating to a new active key, values sealed with the old key still decode."""
    k1, k2 = os.urandom(32), os.urandom(32)
    old = CodecChain(keyring=Keyring({"k1": k1}, "k1")).encode("secret")
    rotated = CodecChain(keyring=Keyring({"k1": k1, "k2": k2}, "k2"))
    new = rotated.encode("secret")
    assert b"k2" in new[:10]
    assert b"k1" in old[:10]
    assert rotated.decode(old) == rotated.decode(new) == "secret"


def test_missing_key_and_tampering_are_payload_errors() -> None:
    """A value sealed with an unknown key, or altered, is refused with PayloadError."""
    sealed = CodecChain(keyring=Keyring({"k1": os.urandom(32)}, "k1")).encode("secret")
    other = CodecChain(keyring=Keyring({"k9": os.urandom(32)}, "k9"))
    with pytest.raises(PayloadError, match="k1"):
        other.decode(sealed)
    with pytest.raises(PayloadError, match="no keys"):
        CodecChain().decode(sealed)
    right = CodecChain(keyring=Keyring({"k1": os.urandom(32)}, "k1"))
    with pytest.raises(PayloadError):
        right.decode(sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_ciphertext_contains_no_plaintext() -> None:
    """Encrypted values do not contain the plaintext bytes."""
    chain = CodecChain(keyring=Keyring({"k1": os.urandom(32)}, "k1"))
    assert b"top-secret-value" not in chain.encode({"card": "top-secret-value"})


def test_size_limit_rejects_oversized_values() -> None:
    """A value larger than max_size raises PayloadError naming the limit."""
    with pytest.raises(PayloadError, match="1024-byte"):
        CodecChain(max_size=1024).encode("z" * 2000)
    assert CodecChain(max_size=None).encode("z" * 2_000_000)


def test_unencodable_value_is_payload_error() -> None:
    """Objects msgspec cannot encode raise PayloadError, not TypeError."""
    with pytest.raises(PayloadError, match="cannot encode"):
        codec_for("json").encode(object())


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_string_that_is_not_utf8_is_payload_error(fmt: str) -> None:
    """Stored bytes whose strings are not UTF-8 raise PayloadError, not UnicodeDecodeError."""
    codec = codec_for(fmt)
    data = codec.encode({"a": "zz"}).replace(b"zz", b"\xc5E")
    # The wording after stemd's prefix is msgspec's (it changed in msgspec 0.23).
    with pytest.raises(PayloadError, match=r"^cannot decode value: "):
        codec.decode(data)


def test_bad_configuration_is_config_error() -> None:
    """Unknown formats, compressions and bad keys are ConfigErrors."""
    with pytest.raises(ConfigError):
        CodecChain("xml")
    with pytest.raises(ConfigError):
        CodecChain(compression="lz4")
    with pytest.raises(ConfigError, match="32 bytes"):
        Keyring({"k": b"short"}, "k")
    with pytest.raises(ConfigError, match="active"):
        Keyring({"k": os.urandom(32)}, "other")


def test_keys_load_from_config_specs(tmp_path: Any) -> None:
    """Keys are read from base64:, hex: and file: specifications."""
    key = os.urandom(32)
    path = tmp_path / "k.bin"
    path.write_bytes(key)
    import base64

    ring = Keyring.from_config(
        {
            "a": "base64:" + base64.b64encode(key).decode(),
            "b": "hex:" + key.hex(),
            "c": f"file:{path}",
        },
        "c",
    )
    data = CodecChain(keyring=ring).encode(1)
    assert CodecChain(keyring=Keyring({"c": key}, "c")).decode(data) == 1
    with pytest.raises(ConfigError, match=r"keys\.x"):
        Keyring.from_config({"x": "plain"}, "x")
