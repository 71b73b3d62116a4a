"""The one registry helper: register once, look up with a message naming the known ones."""

from __future__ import annotations

import pytest

from huse._registry import Registry
from huse.errors import ConfigError


def test_register_get_and_list_in_registration_order():
    reg: Registry[int] = Registry("index type")

    @reg.register("flat")
    def flat() -> int:
        return 1

    assert reg.add("hnsw", 2) == 2
    assert reg.get("flat") is flat and reg.get("hnsw") == 2
    assert reg.names() == ["flat", "hnsw"] == list(reg)
    assert reg.items() == [("flat", flat), ("hnsw", 2)] and reg.values() == [flat, 2]
    assert "flat" in reg and "ivf" not in reg and ["flat"] not in reg and len(reg) == 2


def test_a_second_registration_of_one_name_is_refused():
    reg: Registry[int] = Registry("method")
    reg.add("huse", 1)
    with pytest.raises(ValueError, match="method 'huse' is registered twice"):
        reg.add("huse", 2)
    with pytest.raises(ValueError, match="method 'huse' is registered twice"):
        reg.register("huse")(3)
    assert reg.get("huse") == 1  # the first one stays
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", 4)


def test_an_unknown_name_is_a_config_error_listing_the_known_ones():
    reg: Registry[int] = Registry("method", hint=" (see `huse fit --help`)")
    reg.add("huse", 1)
    reg.add("shared", 2)
    with pytest.raises(ConfigError) as e:
        reg.get("hues")
    assert str(e.value) == "unknown method 'hues'; known: huse, shared (see `huse fit --help`)"
    with pytest.raises(ConfigError, match="unknown method None"):
        reg.get(None)  # type: ignore[arg-type]
