"""`mailmux-backend` user and board commands, through click's runner and as a real process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailmux.backend.cli import main
from mailmux.backend.config import load
from tests.support.nodes import write_config

PASSWORD = "correct horse battery staple"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, "a").config_path


def cli(config_path: Path, *args: str, stdin: str = "") -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config_path)], input=stdin)


def authenticate(config_path: Path, user: str, password: str) -> bool:
    from mailmux.backend.store.sqlite import SqliteStore

    config = load(config_path)

    async def check() -> bool:
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            return await store.authenticate(user, password)

    return asyncio.run(check())


def test_user_add_reads_the_password_from_stdin_and_never_echoes_it(config_path: Path) -> None:
    result = cli(config_path, "user", "add", "alice@example.test", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output and PASSWORD not in result.stderr
    assert authenticate(config_path, "alice@example.test", PASSWORD)  # spaces kept
    listed = cli(config_path, "user", "list")
    assert listed.exit_code == 0
    assert listed.stdout.splitlines() == ["alice@example.test"]


@pytest.mark.parametrize("command", ["add", "passwd"])
def test_empty_password_is_refused(config_path: Path, command: str) -> None:
    if command == "passwd":
        assert cli(config_path, "user", "add", "bob@example.test", stdin="old-pw\n").exit_code == 0
    result = cli(config_path, "user", command, "bob@example.test", stdin="\n")
    assert result.exit_code == 1
    assert "empty password" in result.stderr
    assert not authenticate(config_path, "bob@example.test", "")


def test_passwd_changes_the_password(config_path: Path) -> None:
    assert cli(config_path, "user", "add", "bob@example.test", stdin="old-pw\n").exit_code == 0
    result = cli(config_path, "user", "passwd", "bob@example.test", stdin="new-pw\r\n")
    assert result.exit_code == 0, result.stderr
    assert authenticate(config_path, "bob@example.test", "new-pw")
    assert not authenticate(config_path, "bob@example.test", "old-pw")


def test_user_del(config_path: Path) -> None:
    assert cli(config_path, "user", "add", "bob@example.test", stdin="pw-bob\n").exit_code == 0
    assert cli(config_path, "user", "del", "bob@example.test").exit_code == 0
    assert cli(config_path, "user", "list").stdout == ""
    missing = cli(config_path, "user", "del", "bob@example.test")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("error: ")


def test_store_refusals_are_errors_not_tracebacks(config_path: Path) -> None:
    assert cli(config_path, "user", "add", "carol@example.test", stdin="pw-1\n").exit_code == 0
    again = cli(config_path, "user", "add", "carol@example.test", stdin="pw-2\n")
    assert again.exit_code == 1 and again.stderr.startswith("error: ")
    foreign = cli(config_path, "user", "add", "carol@elsewhere.example", stdin="pw-3\n")
    assert foreign.exit_code == 1 and foreign.stderr.startswith("error: ")


def test_boards(config_path: Path) -> None:
    assert cli(config_path, "board", "add", "news").exit_code == 0
    assert cli(config_path, "board", "add", "sports").exit_code == 0
    listed = cli(config_path, "board", "list")
    assert sorted(listed.stdout.splitlines()) == ["news", "sports"]


def test_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('node_id = "a"\nlisten_imap = "nowhere"\n')
    result = CliRunner().invoke(main, ["user", "list", "--config", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith("config error: ")
    missing = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "missing.toml")])
    assert missing.exit_code == 2
    assert "config error: cannot read config" in missing.stderr


def _module(config_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailmux.backend", *args, "--config", str(config_path)],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def test_python_m_mailmux_backend_as_a_real_process(config_path: Path) -> None:
    added = _module(config_path, "user", "add", "dave@example.test", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    listed = _module(config_path, "user", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["dave@example.test"]
    assert authenticate(config_path, "dave@example.test", PASSWORD)
