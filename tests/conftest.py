"""Shared test setup: no test touches ~/.cache or the network."""

from __future__ import annotations

import os

import pytest

# Before anything imports transformers: the backbones ship in wheels, never from the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point the default feature cache (``$HUSE_CACHE``) at a per-session temp folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUSE_CACHE", str(tmp_path_factory.mktemp("huse-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield
