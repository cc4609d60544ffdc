"""`mailmux-gateway demo` as a user meets it: start, log in, stop, re-run, busy ports, cleanup."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

READY_DEADLINE = 120.0


class Demo:
    """A demo process; its stdout is read by a thread so every wait has a deadline."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailmux.gateway", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr = ""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def ready(self) -> dict[str, object]:
        line = self.lines.get(timeout=READY_DEADLINE)
        if line is None:
            self.proc.wait(timeout=30)
            raise AssertionError(f"demo exited before ready: {self.rest_of_stderr()}")
        ready: dict[str, object] = json.loads(line)
        return ready

    def stop(self) -> list[str]:
        """SIGINT (what Ctrl-C sends); returns the lines printed after the ready line."""
        os.killpg(self.proc.pid, signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0, self.rest_of_stderr()
        out = []
        while (line := self.lines.get(timeout=30)) is not None:
            out.append(line)
        return out

    def rest_of_stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is not None and not self.stderr:
            self.stderr = self.proc.stderr.read()
        return self.stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def demos(tmp_path: Path) -> Iterator[list[Demo]]:
    started: list[Demo] = []
    try:
        yield started
    finally:
        for demo in started:
            demo.kill()
        _kill_nodes_under(tmp_path)


def _kill_nodes_under(directory: Path) -> None:
    """Nodes run in sessions of their own (the demo stops them in order), so killing a demo's
    group does not reach them: any node whose config lies under the test's directory is
    killed here, whatever happened to the demo (one was once found still running)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mailmux.backend" in argv and any(str(directory).encode() in a for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _login(address: object, user: dict[str, str]) -> None:
    host, _, port = str(address).rpartition(":")
    client = imaplib.IMAP4(host, int(port), timeout=30)
    try:
        client.login(user["user"], user["password"])
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()


def _users(ready: dict[str, object]) -> list[dict[str, str]]:
    users = ready["users"]
    assert isinstance(users, list)
    return users


def _nodes(ready: dict[str, object]) -> list[dict[str, object]]:
    nodes = ready["nodes"]
    assert isinstance(nodes, list)
    return nodes


def test_demo_serves_a_login_stops_each_process_and_removes_its_temp_dir(
    tmp_path: Path, demos: list[Demo],
) -> None:
    demo = Demo("--nodes", "3", env={"TMPDIR": str(tmp_path)})
    demos.append(demo)
    ready = demo.ready()
    data_dir = Path(str(ready["data_dir"]))
    assert data_dir.parent == tmp_path and data_dir.is_dir()
    _login(ready["imap"], _users(ready)[0])
    nodes = _nodes(ready)
    assert len(nodes) == 3 and all(n["pid"] for n in nodes)

    after = demo.stop()

    assert sorted(line.split(" (")[0] for line in after if line.startswith("stopped")) == [
        "stopped gateway", "stopped node a", "stopped node b", "stopped node c"]
    assert f"removed temporary data dir {data_dir}" in after
    assert not data_dir.exists()
    for node in nodes:
        assert not Path(f"/proc/{node['pid']}").exists() or _is_zombie(int(str(node["pid"])))


def test_demo_keep_leaves_the_temp_dir_and_says_where(
    tmp_path: Path, demos: list[Demo],
) -> None:
    demo = Demo("--nodes", "1", "--keep", env={"TMPDIR": str(tmp_path)})
    demos.append(demo)
    data_dir = Path(str(demo.ready()["data_dir"]))
    after = demo.stop()
    assert any(line.startswith(f"kept data dir {data_dir}") for line in after)
    assert data_dir.is_dir()


def test_rerun_on_the_same_data_dir_prints_passwords_that_work(
    tmp_path: Path, demos: list[Demo],
) -> None:
    data_dir = tmp_path / "demo"
    first = Demo("--nodes", "2", "--data-dir", str(data_dir))
    demos.append(first)
    first_users = _users(first.ready())
    first.stop()

    second = Demo("--nodes", "2", "--data-dir", str(data_dir))
    demos.append(second)
    ready = second.ready()
    for user in _users(ready):
        _login(ready["imap"], user)
    assert _users(ready) == first_users  # reused, since the old ones still work too
    second.stop()


def test_rerun_without_the_state_file_resets_passwords_on_every_node(
    tmp_path: Path, demos: list[Demo],
) -> None:
    data_dir = tmp_path / "demo"
    first = Demo("--nodes", "2", "--data-dir", str(data_dir))
    demos.append(first)
    first.ready()
    first.stop()
    (data_dir / "demo.json").unlink()

    second = Demo("--nodes", "2", "--data-dir", str(data_dir))
    demos.append(second)
    ready = second.ready()
    # Straight to each node, not only through the gateway: whichever node a session lands on
    # must accept the printed password.
    for node in _nodes(ready):
        for user in _users(ready):
            _login(node["imap"], user)
    second.stop()


def test_demo_files_are_private(tmp_path: Path, demos: list[Demo]) -> None:
    data_dir = tmp_path / "demo"
    demo = Demo("--nodes", "1", "--data-dir", str(data_dir))
    demos.append(demo)
    demo.ready()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("pool.key", "demo.json", "a.toml"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    assert len((data_dir / "pool.key").read_text().strip()) >= 32
    demo.stop()


def _busy_base() -> tuple[socket.socket, int]:
    """A port base whose node-a IMAP port (base + 10) we hold, listening."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1] - 10


def test_busy_port_names_the_port_and_its_role(tmp_path: Path, demos: list[Demo]) -> None:
    holder, base = _busy_base()
    with holder:
        demo = Demo("--nodes", "1", "--port-base", str(base), "--data-dir", str(tmp_path / "d"))
        demos.append(demo)
        assert demo.proc.wait(timeout=120) == 1
        err = demo.rest_of_stderr()
    assert f"port {base + 10} (node a IMAP)" in err
    assert "already in use" in err


def test_node_that_fails_to_start_names_its_log_file(tmp_path: Path, demos: list[Demo]) -> None:
    data_dir = tmp_path / "demo"
    (data_dir / "a").mkdir(parents=True)
    (data_dir / "a").chmod(0o755)  # a node refuses a data dir others can read
    demo = Demo("--nodes", "1", "--data-dir", str(data_dir))
    demos.append(demo)
    assert demo.proc.wait(timeout=120) == 1
    err = demo.rest_of_stderr()
    assert f"its log is {data_dir / 'a.log'}" in err
    assert "node a exited before it was ready" in err
    assert f"data_dir {data_dir / 'a'} is accessible by group or others" in err  # log tail


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
