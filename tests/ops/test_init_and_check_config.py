"""`mailmux-backend init`, `check-config` on node and gateway, and the systemd units."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nodes import NodeProcess

ROOT = Path(__file__).resolve().parents[2]


def _cli(package: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"mailmux.{package}", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_private_config_with_a_fresh_random_secret(tmp_path: Path) -> None:
    first = _cli("backend", "init", "--data-dir", str(tmp_path / "a"), "--node-id", "a",
                 "--domain", "example.org")
    assert first.returncode == 0, first.stderr
    config, key = tmp_path / "a" / "node.toml", tmp_path / "a" / "pool.key"
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(config) == 0o600 and _mode(key) == 0o600
    secret = key.read_text().strip()
    assert len(secret) >= 32 and secret not in config.read_text()
    assert f"pool secret in {key}" in first.stdout

    second = _cli("backend", "init", "--data-dir", str(tmp_path / "x"))
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "x" / "pool.key").read_text().strip() != secret  # random each time

    checked = _cli("backend", "check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "config OK" in checked.stdout


def test_init_reuses_a_given_secret_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _cli("backend", "init", "--data-dir", str(tmp_path / "a")).returncode == 0
    key = tmp_path / "a" / "pool.key"
    b = _cli("backend", "init", "--data-dir", str(tmp_path / "b"), "--node-id", "b",
             "--secret-file", str(key))
    assert b.returncode == 0, b.stderr
    assert "existing pool secret" in b.stdout
    assert str(key) in (tmp_path / "b" / "node.toml").read_text()
    again = _cli("backend", "init", "--data-dir", str(tmp_path / "a"))
    assert again.returncode == 1 and "exists; use --force" in again.stderr


def test_a_node_made_by_init_starts(tmp_path: Path) -> None:
    assert _cli("backend", "init", "--data-dir", str(tmp_path / "a")).returncode == 0
    config = tmp_path / "a" / "node.toml"
    # Port 0 everywhere: the test must not depend on the default ports being free.
    text = re.sub(r'127\.0\.0\.1:\d+"', '127.0.0.1:0"', config.read_text())
    config.write_text(text)
    node = NodeProcess("a", config, tmp_path / "a")
    try:
        node.start()
        assert node.ready["node"] == "a"
    finally:
        node.kill()


@pytest.mark.parametrize(("line", "key"), [
    ('max_line_length = "long"', "max_line_length"),
    ('listen_imap = "nowhere"', "listen_imap"),
    ("no_such_key = 1", "no_such_key"),
    ("boards_autosubscribe = 3", "boards_autosubscribe"),
    ('metrics_listen = "127.0.0.1:99999"', "metrics_listen"),
])
def test_backend_check_config_names_the_bad_key(tmp_path: Path, line: str, key: str) -> None:
    assert _cli("backend", "init", "--data-dir", str(tmp_path / "a")).returncode == 0
    config = tmp_path / "a" / "node.toml"
    text = config.read_text()
    name = line.split(" =")[0]
    text = re.sub(rf"(?m)^{name} = .*\n", "", text)
    config.write_text(line + "\n" + text)
    result = _cli("backend", "check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"config error: {key}:"), result.stderr


def test_backend_check_config_reports_a_secret_others_can_read(tmp_path: Path) -> None:
    assert _cli("backend", "init", "--data-dir", str(tmp_path / "a")).returncode == 0
    (tmp_path / "a" / "pool.key").chmod(0o644)
    result = _cli("backend", "check-config", "--config", str(tmp_path / "a" / "node.toml"))
    assert result.returncode == 1
    assert "pool_secret_file" in result.stderr and "chmod 600" in result.stderr


def test_gateway_check_config(tmp_path: Path) -> None:
    good = tmp_path / "gw.toml"
    good.write_text('gateway_key = "laptop:0123456789abcdef0123"\npool = ["127.0.0.1:14401"]\n')
    result = _cli("gateway", "check-config", "--config", str(good))
    assert result.returncode == 0 and "config OK" in result.stdout, result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('gateway_key = "laptop:0123456789abcdef0123"\npool = ["127.0.0.1:14401"]\n'
                   'selection = "random"\n')
    result = _cli("gateway", "check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("config error: selection:")


UNITS = ROOT / "contrib" / "systemd"
SANDBOXING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
              "PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallFilter=", "UMask=0077")


@pytest.mark.parametrize("unit", ["mailmux-backend@.service", "mailmux-gateway.service"])
def test_systemd_units_are_sandboxed_and_valid(unit: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    for option in SANDBOXING:
        assert option in text, option
    assert "check-config" in text and "User=mailmux" in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: apt-get install systemd")
    # Point the units at this machine's commands so `verify` checks everything else.
    for name in ("mailmux-backend", "mailmux-gateway"):
        text = text.replace(f"/usr/local/bin/{name}", shutil.which(name) or sys.executable)
    path = tmp_path / unit.replace("@.", "@a.")
    path.write_text(text)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if path.name in line]
    assert problems == [], problems


def test_docs_and_readme_link_only_to_files_in_the_repository() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), (doc, target)
    for name in ("architecture.md", "deploy.md", "clients.md"):
        assert (ROOT / "docs" / name).exists()


def test_every_config_key_is_documented_in_readme() -> None:
    from mailmux.backend import config as backend
    from mailmux.gateway import config as gateway
    from mailmux.outbound import config as outbound

    readme = (ROOT / "README.md").read_text()
    for module in (backend, gateway, outbound):
        for key in module._KNOWN:
            assert f"`{key}`" in readme or f"[{key}" in readme or f".{key}." in readme, (
                module.__name__, key)
