"""Store and broker options from a URL's query or keywords."""

from __future__ import annotations

import pytest

from stemd._errors import ConfigError
from stemd._options import as_bool, convert_options, keep


def test_options_are_converted_by_kind() -> None:
    """Strings from a query become ints, floats and booleans; keyword objects pass through."""
    marker = object()
    kinds = {"n": int, "t": float, "on": as_bool, "off": as_bool, "auth": keep}
    out = convert_options(
        {"n": "3", "t": "0.5", "on": "yes", "off": "0", "auth": marker}, kinds, what="store"
    )
    assert out == {"n": 3, "t": 0.5, "on": True, "off": False, "auth": marker}


def test_unknown_or_bad_options_name_the_key_and_place() -> None:
    """An unknown option or a bad value is a ConfigError naming the key and where it was."""
    with pytest.raises(ConfigError, match="broker: unknown option 'x' in URL"):
        convert_options({"x": "1"}, {}, what="broker", where=" in URL")
    with pytest.raises(ConfigError, match="store: bad value for option 'n'"):
        convert_options({"n": "many"}, {"n": int}, what="store")
