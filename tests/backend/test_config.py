"""The backend config is validated at start and every error names the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailmux.backend import config as cfg

BASE: dict[str, Any] = {
    "node_id": "a",
    "data_dir": "data/a",
    "domains": ["Example.TEST"],
    "pool_secret": "long-enough-secret",
    "listen_imap": "127.0.0.1:14301",
    "listen_smtp": "127.0.0.1:12501",
    "listen_control": "127.0.0.1:14401",
}


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    c = cfg.from_dict(dict(BASE), base=tmp_path)
    assert c.node_id == "a"
    assert c.data_dir == tmp_path / "data/a"
    assert c.domains == ("example.test",)
    assert c.listen_imap == ("127.0.0.1", 14301)
    assert c.replication.mode == "immediate"
    assert c.replication.copies == cfg.CopiesConfig(high=None, normal=2, bulk=1)
    assert c.idle_timeout == 1800.0
    assert c.serves_domain("alice@EXAMPLE.test")


def test_design_example_replication_section(tmp_path: Path) -> None:
    raw = dict(BASE, replication={
        "listen": "127.0.0.1:14501",
        "peers": ["b=127.0.0.1:14502", "c=127.0.0.1:14503"],
        "mode": "batch",
        "batch_window": "02:00-05:00",
        "copies": {"high": "all", "normal": 2, "bulk": 1},
    })
    r = cfg.from_dict(raw, base=tmp_path).replication
    assert r.peers == (("b", "127.0.0.1", 14502), ("c", "127.0.0.1", 14503))
    assert r.batch_window == (120, 300)
    assert r.mode == "batch"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"listen_imap": "nonsense"}, "listen_imap"),
        ({"listen_smtp": "127.0.0.1:99999"}, "listen_smtp"),
        ({"domains": []}, "domains"),
        ({"pool_secret": "short"}, "pool_secret"),
        ({"node_id": "a b"}, "node_id"),
        ({"idle_timeout": "forever"}, "idle_timeout"),
        ({"max_message_size": -1}, "max_message_size"),
        ({"tls_cert": "cert.pem"}, "tls_key"),
        ({"listen_imap": "0.0.0.0:143"}, "listen_imap"),
        ({"replication": {"mode": "sometimes"}}, "replication.mode"),
        ({"replication": {"batch_window": "25:00-26:00"}}, "replication.batch_window"),
        ({"replication": {"copies": {"normal": 0}}}, "replication.copies.normal"),
        ({"replication": {"peers": ["nohost"]}}, "replication.peers"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.from_dict({**BASE, **change}, base=tmp_path)
    assert str(info.value).startswith(key + ":")


def test_pool_secret_file(tmp_path: Path) -> None:
    (tmp_path / "pool.key").write_text("from-a-file-secret\n")
    raw = {k: v for k, v in BASE.items() if k != "pool_secret"}
    c = cfg.from_dict({**raw, "pool_secret_file": "pool.key"}, base=tmp_path)
    assert c.pool_secret == b"from-a-file-secret"


def test_load_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read config"):
        cfg.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = \n")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(bad)


def test_durations_accept_units() -> None:
    assert cfg.parse_duration("250ms", "k") == 0.25
    assert cfg.parse_duration("30m", "k") == 1800
    assert cfg.parse_duration(5, "k") == 5.0
