"""The configuration of the codec chain as data (``[codec]`` and ``[workflow_codecs.*]``
of the daemon's config), and the codecs it makes.

See docs/reference/config.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from stemd._codec import Codec, CodecChain, Keyring
from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CodecConfig", "EncryptionConfig", "WorkflowCodecConfig", "build_codecs"]


class EncryptionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """AES-GCM encryption at rest: ``keys`` maps key ids to ``"base64:..."``, ``"hex:..."`` or
    ``"file:/path"``; new values are sealed with ``active``, and every listed key still
    opens the values sealed with it (rotation: add the new key, make it active, keep the
    old ones)."""

    keys: dict[str, str]
    active: str


class CodecConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How stored values (params, checkpoints, payloads, results) are encoded.

    Attributes:
        format: ``json`` or ``msgpack``.
        compression: ``none``, ``gzip`` or ``zstd`` (values of ``compress_threshold`` bytes
            or more).
        compress_threshold: smallest value, in bytes, that is compressed.
        max_payload: largest encoded value accepted, in bytes; larger ones are refused with
            a PayloadError before anything is written (NATS' default limit is 1 MiB).
        encryption: encrypt every value (see :class:`EncryptionConfig`).
    """

    format: Literal["json", "msgpack"] = "json"
    compression: Literal["none", "gzip", "zstd"] = "none"
    compress_threshold: Annotated[int, msgspec.Meta(ge=0)] = 1024
    max_payload: Annotated[int, msgspec.Meta(ge=64)] = 1024 * 1024
    encryption: EncryptionConfig | None = None


class WorkflowCodecConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A workflow's own encoding; unset fields take the daemon's ``[codec]`` values, and its
    values are sealed with the daemon's keys when ``encrypt`` is true (the default when the
    daemon encrypts)."""

    format: Literal["json", "msgpack"] | None = None
    compression: Literal["none", "gzip", "zstd"] | None = None
    compress_threshold: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_payload: Annotated[int, msgspec.Meta(ge=64)] | None = None
    encrypt: bool | None = None


def build_codecs(
    codec: CodecConfig, workflow_codecs: Mapping[str, WorkflowCodecConfig]
) -> tuple[Codec, dict[str, Codec]]:
    """The codec ``codec`` describes, and the per-workflow ones.

    Raises:
        ConfigError: an unreadable or malformed key, a missing compression package.
    """
    c = codec
    keyring = None
    if c.encryption is not None:
        try:
            keyring = Keyring.from_config(dict(c.encryption.keys), c.encryption.active)
        except ConfigError as exc:
            # Named as in the config file: [codec.encryption].
            message = str(exc)
            if message.startswith(("encryption.", "encryption:")):
                raise ConfigError(f"codec.{message}") from None
            raise
    main = CodecChain(
        c.format,
        compression=c.compression,
        compress_threshold=c.compress_threshold,
        keyring=keyring,
        max_size=c.max_payload,
    )
    per_workflow: dict[str, Codec] = {}
    for name, w in workflow_codecs.items():
        encrypt = keyring is not None if w.encrypt is None else w.encrypt
        if encrypt and keyring is None:
            raise ConfigError(
                f"workflow_codecs.{name}.encrypt: no [codec.encryption] keys are configured"
            )
        per_workflow[name] = CodecChain(
            w.format or c.format,
            compression=w.compression or c.compression,
            compress_threshold=(
                c.compress_threshold if w.compress_threshold is None else w.compress_threshold
            ),
            # Encrypted or not, it must read the daemon's values: keep its keys for reading.
            keyring=keyring,
            encrypt=encrypt,
            max_size=w.max_payload or c.max_payload,
        )
    return main, per_workflow
