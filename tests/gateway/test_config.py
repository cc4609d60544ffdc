"""The gateway config follows DESIGN.md's contract and names the bad key on errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.config import ConfigError
from mailmux.gateway import config as cfg

BASE: dict[str, Any] = {"gateway_key": "laptop:0123456789abcdef0123", "pool": ["127.0.0.1:14401"]}


def test_design_example_parses(tmp_path: Path) -> None:
    text = """
gateway_key = "laptop:change-me-0123456789"
listen_imap = "127.0.0.1:1143"
listen_submission = "127.0.0.1:1587"
selection = "least-load"
discovery_timeout = 0.5
request_timeout = 5.0
pool = ["127.0.0.1:14401", "127.0.0.1:14402", "127.0.0.1:14403"]
"""
    c = cfg.from_dict(tomllib.loads(text.replace("change-me", "change-me-now")), tmp_path)
    assert c.pool == (("127.0.0.1", 14401), ("127.0.0.1", 14402), ("127.0.0.1", 14403))
    assert c.listen_imap == ("127.0.0.1", 1143)
    assert c.selection == "least-load"
    assert c.discovery_timeout == 0.5


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"selection": "random"}, "selection"),
        ({"pool": "127.0.0.1:1"}, "pool"),
        ({"pool": []}, "pool"),
        ({"listen_imap": "0.0.0.0:143"}, "listen_imap"),
        ({"discovery_timeout": 0}, "discovery_timeout"),
        ({"gateway_key": "laptop:short"}, "gateway_key"),
        ({"gateway_key": "no colon here at all"}, "gateway_key"),
        ({"pool_secret": "the-pool-secret-0123"}, "pool_secret"),
        ({"gateway_key_file": "/nonexistent/key"}, "gateway_key_file"),
        ({"bogus": 1}, "bogus"),
        ({"event_loop": "tokio"}, "event_loop"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.from_dict({**BASE, **change}, tmp_path)
    assert str(info.value).startswith(key + ":")
