"""The [outbound] table: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.config import ConfigError, from_dict

BASE = {"node_id": "a", "data_dir": "d", "domains": ["example.test"],
        "pool_secret": "secret-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0"}


def _outbound(**raw: Any) -> Any:
    return from_dict({**BASE, "outbound": raw}, base=Path("/etc/mailmux")).outbound


def test_defaults_are_direct_mx_with_rfc5321_retries() -> None:
    config = from_dict(BASE).outbound
    assert config.enabled and config.relay is None and config.mx_port == 25
    assert [config.retry_delay(n) for n in range(1, 9)] == [
        300, 900, 1800, 3600, 7200, 14400, 14400, 14400]
    assert config.lifetime == 5 * 86400 and config.delay_warning == 4 * 3600
    assert config.relay_tls == "starttls"


def test_smarthost_and_dkim_keys() -> None:
    config = _outbound(relay="smtp.example.net:587", relay_user="u",
                       relay_password_file="relay.pw", delay_warning="off",
                       dkim={"Example.TEST": {"selector": "s1", "key_file": "k.pem"}})
    assert config.relay == ("smtp.example.net", 587)
    assert config.relay_password_file == Path("/etc/mailmux/relay.pw")
    assert config.delay_warning is None
    assert config.dkim["example.test"].key_file == Path("/etc/mailmux/k.pem")


@pytest.mark.parametrize(("raw", "key"), [
    ({"relay_tls": "maybe"}, "outbound.relay_tls"),
    ({"relay": "nohost"}, "outbound.relay"),
    ({"relay_user": "u"}, "outbound.relay_password_file"),
    ({"lifetime": "soon"}, "outbound.lifetime"),
    ({"retry_intervals": []}, "outbound.retry_intervals"),
    ({"mx_port": 0}, "outbound.mx_port"),
    ({"dkim": {"example.test": {"key_file": "k"}}}, "outbound.dkim.example.test.selector"),
    ({"smarthost": "x:25"}, "outbound.smarthost"),
    ({"enabled": "yes"}, "outbound.enabled"),
])
def test_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        _outbound(**raw)
