"""A workflow's params against the type it declares (a flow's ``params=``, a script's
second parameter): checked when a run is started, so that a wrong shape is refused with
nothing written, and decoded for a flow's steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd._errors import PayloadError

if TYPE_CHECKING:
    from stemd._codec import Codec

__all__ = ["check_params", "decode_params"]


def decode_params(name: str, params_type: Any, raw: bytes, codec: Codec) -> Any:
    """The encoded params ``raw`` of a run of ``name`` decoded into ``params_type``.

    Raises:
        PayloadError: they do not fit it (the message names the workflow and the field).
    """
    try:
        return codec.decode(raw, type=params_type)
    except PayloadError as exc:
        raise PayloadError(f"params of {name}: {exc}") from None


def check_params(name: str, definition: Any, raw: bytes, codec: Codec) -> None:
    """Raise :class:`PayloadError` if ``raw`` does not decode into the params type that
    ``definition`` declares; a workflow that declares none (or is not known here) takes
    any params."""
    params_type = getattr(definition, "params_type", Any)
    if params_type is not Any:
        decode_params(name, params_type, raw, codec)
