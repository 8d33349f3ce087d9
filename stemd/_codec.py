"""Value encoding: every param, checkpoint, payload and result is encoded once, here.

A :class:`CodecChain` encodes a value with a base format (JSON or MessagePack), then
optionally compresses it (gzip or zstd, above a size threshold) and encrypts it (AES-GCM,
with a key id so that keys can rotate). Plain JSON values are stored as they are; any
other value starts with a small self-describing header, so every record says how to read
it and old records stay readable after the configuration changes::

    0xFF 'S' '1'  base(j|m)  compression(n|g|z)  key-id length  [key id]  [nonce(12)]  body

JSON text never starts with 0xFF, so headerless values are plain JSON.
"""

from __future__ import annotations

import base64
import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import msgspec

from stemd._errors import ConfigError, PayloadError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_DEPTH",
    "Codec",
    "CodecChain",
    "Versioned",
    "JsonCodec",
    "Keyring",
    "MsgpackCodec",
    "check_depth",
    "codec_for",
    "convert",
]

T = TypeVar("T")

DEFAULT_MAX_SIZE = 1024 * 1024
_MAGIC = b"\xffS1"
_NONCE = 12


class Codec(Protocol):
    """Turns values into bytes and back."""

    id: str

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`PayloadError` if it cannot be encoded."""
        ...

    def decode(self, data: bytes, type: Any = Any) -> Any:
        """Decode ``data`` (into ``type`` when given); raise :class:`PayloadError` on failure."""
        ...


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
            raise PayloadError(f"cannot encode {type(value).__name__}: {exc}") from None
        except RecursionError:
            raise PayloadError(f"cannot encode {type(value).__name__}: nested too deeply") from None

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
        except UnicodeDecodeError as exc:
            raise PayloadError(
                f"cannot decode value: a string is not valid UTF-8 ({exc.reason})"
            ) from None
        except RecursionError:
            raise PayloadError("cannot decode value: nested too deeply") from None


class JsonCodec(_MsgspecCodec):
    """JSON through msgspec (the default base format)."""

    id = "json"

    def __init__(self) -> None:
        super().__init__(msgspec.json.Encoder(), lambda t: msgspec.json.Decoder(t))


class MsgpackCodec(_MsgspecCodec):
    """MessagePack through msgspec."""

    id = "msgpack"

    def __init__(self) -> None:
        super().__init__(msgspec.msgpack.Encoder(), lambda t: msgspec.msgpack.Decoder(t))


_BASES: dict[str, tuple[bytes, type[JsonCodec] | type[MsgpackCodec]]] = {
    "json": (b"j", JsonCodec),
    "msgpack": (b"m", MsgpackCodec),
}
_COMPRESSIONS = {"none": b"n", "gzip": b"g", "zstd": b"z"}


class Keyring:
    """AES-256-GCM keys by id; new values are encrypted with the active key, and any key
    of the ring decrypts the values written with it (rotation)."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise ConfigError(f"encryption: active key {active!r} is not among the keys")
        for key_id, key in keys.items():
            if not key_id or len(key_id.encode()) > 255:
                raise ConfigError(f"encryption: bad key id {key_id!r}")
            if len(key) not in (16, 24, 32):
                raise ConfigError(
                    f"encryption: key {key_id!r} must be 16, 24 or 32 bytes, not {len(key)}"
                )
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError(
                "encryption needs the 'cryptography' package: pip install 'stemd[encryption]'"
            ) from None
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.active = active

    @classmethod
    def from_config(cls, keys: dict[str, str], active: str) -> Keyring:
        """Keys given as ``"base64:..."``, ``"hex:..."`` or ``"file:/path"`` (raw 32 bytes,
        or base64 text)."""
        decoded: dict[str, bytes] = {}
        for key_id, spec in keys.items():
            decoded[key_id] = _load_key(key_id, spec)
        return cls(decoded, active)

    def encrypt(self, header: bytes, body: bytes) -> bytes:
        key_id = self.active.encode()
        nonce = os.urandom(_NONCE)
        aad = header + bytes([len(key_id)]) + key_id
        return aad + nonce + self._ciphers[self.active].encrypt(nonce, body, aad)

    def decrypt(self, key_id: str, aad: bytes, nonce: bytes, sealed: bytes) -> bytes:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadError(f"value was encrypted with key {key_id!r}, which is not configured")
        try:
            return cipher.decrypt(nonce, sealed, aad)
        except Exception:
            raise PayloadError(f"value does not decrypt with key {key_id!r}") from None


def _load_key(key_id: str, spec: str) -> bytes:
    try:
        if spec.startswith("base64:"):
            return base64.b64decode(spec[7:], validate=True)
        if spec.startswith("hex:"):
            return bytes.fromhex(spec[4:])
        if spec.startswith("file:"):
            try:
                raw = Path(spec[5:]).read_bytes()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ConfigError(
                    f"encryption.keys.{key_id}: cannot read {spec[5:]}: {reason}"
                ) from None
            if len(raw) in (16, 24, 32):
                return raw
            return base64.b64decode(raw.strip(), validate=True)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"encryption.keys.{key_id}: {exc}") from None
    raise ConfigError(f"encryption.keys.{key_id}: use base64:..., hex:... or file:/path")


class CodecChain:
    """Base format → compression above a threshold → encryption, with a size limit.

    Args:
        base: ``"json"`` or ``"msgpack"``.
        compression: ``None``, ``"gzip"`` or ``"zstd"``.
        compress_threshold: values shorter than this (bytes) are not compressed.
        keyring: the keys that open encrypted values; with ``encrypt`` (the default when a
            keyring is given), new values are sealed with its active key.
        encrypt: seal new values; ``False`` keeps the keyring for reading only.
        max_size: largest encoded value accepted (bytes); ``None`` for no limit.
    """

    def __init__(
        self,
        base: str = "json",
        *,
        compression: str | None = None,
        compress_threshold: int = 1024,
        keyring: Keyring | None = None,
        encrypt: bool | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
    ) -> None:
        if base not in _BASES:
            raise ConfigError(f"codec: unknown base format {base!r} (json or msgpack)")
        if compression not in (None, "none", "gzip", "zstd"):
            raise ConfigError(f"codec: unknown compression {compression!r} (gzip or zstd)")
        self._base_tag, base_cls = _BASES[base]
        self._base: _MsgspecCodec = base_cls()
        self._others: dict[bytes, _MsgspecCodec] = {tag: cls() for tag, cls in _BASES.values()}
        self.compression = None if compression in (None, "none") else compression
        self.compress_threshold = compress_threshold
        self.keyring = keyring
        self.encrypt = keyring is not None if encrypt is None else encrypt
        if self.encrypt and keyring is None:
            raise ConfigError("codec: encryption needs a keyring")
        self.max_size = max_size
        self._plain = base == "json" and self.compression is None and not self.encrypt
        parts = [base]
        if self.compression:
            parts.append(self.compression)
        if self.encrypt:
            parts.append("aesgcm")
        self.id = "+".join(parts)
        if self.compression == "zstd":
            _zstd()

    def encode(self, value: Any) -> bytes:
        body = self._base.encode(value)
        if not self._plain:
            body = self._wrap(body)
        if self.max_size is not None and len(body) > self.max_size:
            raise PayloadError(
                f"value of {len(body)} bytes exceeds the {self.max_size}-byte payload limit"
            )
        return body

    def _wrap(self, body: bytes) -> bytes:
        comp = b"n"
        if self.compression is not None and len(body) >= self.compress_threshold:
            if self.compression == "gzip":
                body, comp = gzip.compress(body, compresslevel=6, mtime=0), b"g"
            else:
                body, comp = _zstd().ZstdCompressor().compress(body), b"z"
        header = _MAGIC + self._base_tag + comp
        if self.encrypt and self.keyring is not None:
            return self.keyring.encrypt(header, body)
        return header + b"\x00" + body

    def decode(self, data: bytes, type: Any = Any) -> Any:
        if isinstance(type, Versioned):
            return type.decode(self.decode(data))
        if data[:3] != _MAGIC:
            return self._others[b"j"].decode(data, type)
        return self._others_for(data, type)

    def _others_for(self, data: bytes, type: Any) -> Any:
        if len(data) < 6:
            raise PayloadError("truncated stemd value header")
        base, comp, key_len = data[3:4], data[4:5], data[5]
        codec = self._others.get(base)
        if codec is None:
            raise PayloadError(f"unknown base format {base!r} in stored value")
        pos = 6
        body = data[pos:]
        if key_len:
            key_id = data[pos : pos + key_len].decode(errors="replace")
            aad = data[: pos + key_len]
            nonce = data[pos + key_len : pos + key_len + _NONCE]
            if self.keyring is None:
                raise PayloadError(f"value is encrypted (key {key_id!r}) but no keys are set")
            body = self.keyring.decrypt(key_id, aad, nonce, data[pos + key_len + _NONCE :])
        if comp == b"g":
            body = gzip.decompress(body)
        elif comp == b"z":
            body = _zstd().ZstdDecompressor().decompress(body)
        elif comp != b"n":
            raise PayloadError(f"unknown compression {comp!r} in stored value")
        return codec.decode(body, type)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError(
            "zstd compression needs the 'zstandard' package: pip install 'stemd[zstd]'"
        ) from None
    return zstandard


def codec_for(codec_id: str) -> Codec:
    """A new codec chain for ``"json"`` or ``"msgpack"`` with the default size limit."""
    if codec_id not in _BASES:
        raise PayloadError(f"unknown codec {codec_id!r}")
    return CodecChain(codec_id)


class Versioned(Generic[T]):
    """A payload type whose schema evolves: values are stored with their schema version
    beside them, and each version has its own decoder.

    Example::

        orders = Versioned(2, {1: upgrade_v1, 2: OrderV2}, legacy=1)
        await app.emit("orders.placed", orders.wrap(OrderV2(...)))    # stored as version 2
        order = await ctx.wait_for_event("orders.placed", type=orders)  # always an OrderV2

    Args:
        current: the version :meth:`wrap` writes.
        decoders: version → a type (the value is converted into it) or a function taking
            the plain stored value and returning the current type (an upgrade).
        legacy: the version assumed for values stored without one (before versioning);
            ``None`` refuses them.
    """

    field = "__stemd_version__"

    def __init__(
        self,
        current: int,
        decoders: Mapping[int, Any],
        *,
        legacy: int | None = None,
    ) -> None:
        if current not in decoders:
            raise ValueError(f"no decoder for the current version {current}")
        if legacy is not None and legacy not in decoders:
            raise ValueError(f"no decoder for the legacy version {legacy}")
        self.current = current
        self.decoders = dict(decoders)
        self.legacy = legacy

    def wrap(self, value: Any, version: int | None = None) -> dict[str, Any]:
        """``value`` with its schema version beside it, ready to be stored."""
        return {self.field: self.current if version is None else version, "value": value}

    def decode(self, plain: Any, what: str = "value") -> T:
        """The current type from a stored plain value (of any known version)."""
        if isinstance(plain, dict) and self.field in plain:
            version, body = plain[self.field], plain.get("value")
        elif self.legacy is not None:
            version, body = self.legacy, plain
        else:
            raise PayloadError(f"{what}: no schema version stored (and no legacy version set)")
        decoder = self.decoders.get(version) if isinstance(version, int) else None
        if decoder is None:
            known = ", ".join(str(v) for v in sorted(self.decoders))
            raise PayloadError(f"{what}: unknown schema version {version!r} (known: {known})")
        if isinstance(decoder, type) or getattr(decoder, "__origin__", None) is not None:
            return convert(body, decoder, what=f"{what} (schema version {version})")  # type: ignore[no-any-return]
        try:
            return decoder(body)  # type: ignore[no-any-return]
        except PayloadError:
            raise
        except Exception as exc:
            raise PayloadError(f"{what} (schema version {version}): {exc}") from exc


def convert(value: Any, type: Any, *, what: str) -> Any:
    """Convert a plain decoded value into ``type``; raise :class:`PayloadError` naming ``what``."""
    if type is Any or type is None:
        return value
    if isinstance(type, Versioned):
        return type.decode(value, what)
    try:
        return msgspec.convert(value, type, strict=False)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what}: nested too deeply") from None


# Values nested deeper than this are refused where they enter (params, event payloads):
# msgspec recurses once per level on the interpreter's stack (1000 frames by default), so
# a value accepted near that limit by one caller could not be read back by another,
# deeper in its stack (a worker, a listing).
MAX_DEPTH = 256


def check_depth(value: Any, what: str = "value", limit: int = MAX_DEPTH) -> None:
    """Raise :class:`PayloadError` if lists and dicts in ``value`` nest deeper than
    ``limit`` levels."""
    if not isinstance(value, (list, dict, tuple)):
        return
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise PayloadError(f"{what} is nested more than {limit} levels deep")
        below: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            below.extend(c for c in children if isinstance(c, (list, dict, tuple)))
        level = below
