"""Value encoding: every param, checkpoint, payload and result is encoded once here."""

from __future__ import annotations

import functools
from typing import Any, Protocol

import msgspec

from stemd.errors import PayloadError

__all__ = ["Codec", "JsonCodec", "MsgpackCodec", "codec_for"]


class Codec(Protocol):
    """Turns values into bytes and back."""

    id: str

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`PayloadError` if it cannot be encoded."""
        ...

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Decode ``data`` (into ``type`` when given); raise :class:`PayloadError` on failure."""
        ...


def _describe(value: Any) -> str:
    return type(value).__name__


class _MsgspecCodec:
    id = ""

    def __init__(self, encoder: Any, decoder_factory: Any) -> None:
        self._encoder = encoder
        self._decoder_factory = decoder_factory
        self._decoders: dict[Any, Any] = {}

    def encode(self, value: Any) -> bytes:
        try:
            return self._encoder.encode(value)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(f"cannot encode {_describe(value)}: {exc}") from None

    def decode(self, data: bytes, type: Any = Any) -> Any:
        decoder = self._decoders.get(type)
        if decoder is None:
            try:
                decoder = self._decoder_factory(type)
            except TypeError as exc:
                raise PayloadError(f"cannot decode into {type!r}: {exc}") from None
            self._decoders[type] = decoder
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise PayloadError(f"cannot decode value: {exc}") from None


class JsonCodec(_MsgspecCodec):
    """JSON through msgspec (the default)."""

    id = "json"

    def __init__(self) -> None:
        super().__init__(msgspec.json.Encoder(), lambda t: msgspec.json.Decoder(t))


class MsgpackCodec(_MsgspecCodec):
    """MessagePack through msgspec."""

    id = "msgpack"

    def __init__(self) -> None:
        super().__init__(msgspec.msgpack.Encoder(), lambda t: msgspec.msgpack.Decoder(t))


@functools.cache
def codec_for(codec_id: str) -> Codec:
    """Return the shared codec named ``codec_id``."""
    if codec_id == "json":
        return JsonCodec()
    if codec_id == "msgpack":
        return MsgpackCodec()
    raise PayloadError(f"unknown codec {codec_id!r}")


def convert(value: Any, type: Any, *, what: str) -> Any:
    """Convert a plain decoded value into ``type``; raise :class:`PayloadError` naming ``what``."""
    if type is Any or type is None:
        return value
    try:
        return msgspec.convert(value, type, strict=False)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what}: {exc}") from None
