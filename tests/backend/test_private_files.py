"""A node refuses to start when its data or pool secret can be read by other users."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tests.support.nodes import NodeProcess, write_config


def _run(node: NodeProcess) -> subprocess.CompletedProcess[str]:
    # The node exits at once when it refuses; a node that started would be killed by timeout.
    return subprocess.run(
        [sys.executable, "-m", "mailmux.backend", "run", "--config", str(node.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_node_refuses_a_data_dir_others_can_read(tmp_path: Path) -> None:
    node = write_config(tmp_path, "a")
    node.data_dir.chmod(0o755)
    result = _run(node)
    assert result.returncode == 1
    assert f"data_dir {node.data_dir} is accessible by group or others (mode 0755)" in result.stderr
    assert f"chmod 700 {node.data_dir}" in result.stderr


def test_node_refuses_a_pool_secret_file_others_can_read(tmp_path: Path) -> None:
    secret = tmp_path / "pool.key"
    secret.write_text("a-long-enough-secret\n")
    secret.chmod(0o644)
    node = write_config(tmp_path, "a")
    text = node.config_path.read_text().replace(
        'pool_secret = "test-pool-secret-0123456789"', f'pool_secret_file = "{secret}"')
    node.config_path.write_text(text)
    result = _run(node)
    assert result.returncode == 1
    assert f"pool_secret_file {secret} is accessible by group or others" in result.stderr


def test_node_creates_its_data_private(tmp_path: Path) -> None:
    node = write_config(tmp_path, "a")
    node.data_dir.rmdir()
    node.add_user("alice@example.test", "alice-pw")  # creates the data dir and database
    try:
        node.start()
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
        for path in node.data_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    finally:
        node.kill()
