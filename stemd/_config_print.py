"""Printing the daemon's configuration (``stemd config show``): as TOML with secrets and
credentials masked, or as plain data."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from stemd._config import Config
from stemd._natsauth import redact_url

__all__ = ["config_to_builtins", "config_to_toml"]


def config_to_toml(config: Config) -> str:
    """The effective configuration as a TOML document (unset keys as comments; encryption
    keys, NATS passwords and tokens are never printed, only whether they are set; URLs
    are shown with their credentials masked)."""
    tables = ("restart", "nats_auth", "codec", "workflow_codecs", "limits", "schedules")
    lines: list[str] = []
    data = config_to_builtins(config)
    for f in msgspec.structs.fields(Config):
        if f.name in tables:
            continue
        value = data.get(f.name)
        if value is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += _default_notes(config)
    lines += ["", "[restart]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data["restart"].items()]
    lines += ["", "[nats_auth]"]
    for k, v in data["nats_auth"].items():
        lines.append(f"# {k} = (unset)" if v is None else f"{k} = {_toml_value(v)}")
    codec = dict(data["codec"])
    encryption = codec.pop("encryption", None)
    lines += ["", "[codec]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in codec.items()]
    if encryption is not None:
        lines += ["", "[codec.encryption]", f"active = {_toml_value(encryption['active'])}"]
        lines += [f'keys.{_toml_key(k)} = "(not shown)"' for k in encryption["keys"]]
    lines += _named_tables("workflow_codecs", data["workflow_codecs"])
    lines += _named_tables("limits", data["limits"])
    lines += _schedules_toml(data["schedules"])
    return "\n".join(lines) + "\n"


def _named_tables(table: str, entries: dict[str, dict[str, Any]]) -> list[str]:
    """``[table."name"]`` sections, their unset keys left out."""
    lines: list[str] = []
    for name, keys in entries.items():
        lines += ["", f"[{table}.{_toml_key(name)}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items() if v is not None]
    return lines


def _schedules_toml(schedules: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for schedule in schedules:
        lines += ["", "[[schedules]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in schedule.items() if v is not None]
    return lines


def _default_notes(config: Config) -> list[str]:
    """Comments on the keys whose effective value comes from another key or a default."""
    notes = []
    if config.http_address is None and config.http is not None:
        notes.append(f"# http_address defaults to {config.http[0]}")
    if config.effective_nats is not None and config.nats is None:
        notes.append(f"# nats defaults to {redact_url(config.effective_nats)}")
    return notes


def config_to_builtins(config: Config) -> dict[str, Any]:
    """The configuration as plain data for printing: URLs with their credentials masked,
    NATS secrets and encryption keys replaced by ``"(not shown)"``."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    for key in ("store", "broker", "nats"):
        if isinstance(data.get(key), str):
            data[key] = redact_url(data[key])
    data["nats_auth"] = config.nats_auth.to_builtins()
    data["http_tokens"] = ["(not shown)" for _ in config.http_tokens]
    encryption = data["codec"].get("encryption")
    if encryption is not None:
        encryption["keys"] = {k: "(not shown)" for k in encryption["keys"]}
    return data


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # schedule params: TOML has no null, so None is left out
        items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"cannot print {value!r} as TOML")  # pragma: no cover
