"""mailmux next to Dovecot and nginx's mail proxy, on one machine, in one run: a table of ratios.

Starts, each in its own temporary directory and on loopback ports:
- a mailmux node (and a mailmux gateway in front of it),
- Dovecot (Debian `dovecot-imapd`; Maildir, passwd-file users with ARGON2ID hashes, its own
  config, base_dir and log; mail owned by the `dovecot` user),
- nginx with `libnginx-mod-mail` in front of the same mailmux node, with a small auth_http
  endpoint (a thread here) that sends every login to that node.
For every size in `--sizes` one user holds an INBOX of that many ~2 KB messages on both servers
(mailmux filled through the store API, Dovecot as Maildir files); for the mixed-load figures
MIX_USERS more users hold MIX_MESSAGES each, one client per user. Each figure is the median of
`--rounds` repetitions, mailmux and Dovecot interleaved so machine noise hits both alike. Asserts
nothing; prints figures and ratios (for times, mailmux ÷ Dovecot > 1 means mailmux is slower).

    python bench/compare.py [--sizes 1000,10000,100000] [--rounds 3] [--seconds 2]
        [--only "SELECT,FETCH 1:* (FLAGS),UID FETCH"] [--fill-cache DIR] [--baseline TREE]

`--only` keeps the figures whose label starts with one of the given prefixes ("mixed" for
the mixed loads, "proxy" for the gateway/nginx table); without it every figure runs.
`--fill-cache DIR` keeps the filled mailmux database in DIR and starts later runs with the same
sizes from a copy of it (filling 100k messages through the store takes many minutes; the
bench messages are the same every run, so the copy holds the same mail).
`--baseline TREE` also runs a node from another mailmux checkout (e.g. `git worktree add
/tmp/base main`) on a copy of the same database, measured in the same rounds: a change's
before/after ratio from one run, on a machine whose speed drifts between runs.
    python bench/compare.py --proxies-only [--sizes 1000]   # the gateway vs nginx table alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailmux.backend.store.sqlite import SqliteStore
from mailmux.backend.store.writer import Tx
from tests.support.gateway import write_gateway_config
from tests.support.nodes import NodeProcess, split_address, write_config

PASSWORD = "bench-password"
DOMAIN = "example.test"
Address = tuple[str, int]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray"]


MIX_USERS = 50
MIX_MESSAGES = 200


def user_for(size: int) -> str:
    return f"u{size}@{DOMAIN}"


def mix_user(k: int) -> str:
    return f"mix{k}@{DOMAIN}"


def _mailboxes(sizes: list[int]) -> list[tuple[str, int]]:
    """(user, messages) of every INBOX the run fills."""
    return ([(user_for(s), s) for s in sizes]
            + [(mix_user(k), MIX_MESSAGES) for k in range(MIX_USERS)])


def message(i: int) -> bytes:
    """About 2 KB; subject and body carry tokens unique to the message."""
    rng = random.Random(i)
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i % 1_000_000)
    head = (f"From: Sender {i % 97} <sender{i % 97}@example.org>\r\nTo: someone@{DOMAIN}\r\n"
            f"Subject: report {i} subj{i}q\r\nDate: {when:%a, %d %b %Y %H:%M:%S +0000}\r\n"
            f"Message-ID: <m{i}@example.org>\r\n\r\n")
    lines = [" ".join(rng.choice(WORDS) for _ in range(11)) for _ in range(24)]
    lines.insert(12, f"the reference is tok{i}x here")
    return (head + "\r\n".join(lines) + "\r\n").encode()


# --- filling the stores ------------------------------------------------------------------


def _fill_mailmux_cached(db: Path, sizes: list[int], cache: Path | None) -> None:
    if cache is None:
        asyncio.run(_fill_mailmux(db, sizes))
        return
    cache.mkdir(parents=True, exist_ok=True)
    kept = cache / f"mailmux-{'-'.join(map(str, sizes))}-mix{MIX_USERS}x{MIX_MESSAGES}.sqlite3"
    if not kept.exists():
        partial = kept.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        asyncio.run(_fill_mailmux(partial, sizes))  # closed: checkpointed into one file
        partial.rename(kept)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept, db)


async def _fill_mailmux(db: Path, sizes: list[int]) -> None:
    async with SqliteStore.open(db, "bench", (DOMAIN,)) as store:
        for user, size in _mailboxes(sizes):
            await store.add_user(user, PASSWORD)
            for start in range(0, size, 1000):
                batch = range(start, min(size, start + 1000))

                def job(tx: Tx, batch: range = batch, user: str = user, size: int = size) -> None:
                    # The store's own insert path (counters, index, FTS), 1000 per commit.
                    row = store._mailbox_row(tx.conn, user, "INBOX")
                    for i in batch:
                        body = message(i)
                        store._add_message(
                            tx, row, body, _sha(body), frozenset(["\\Seen"] if i % 3 else []),
                            datetime(2024, 1, 1, tzinfo=UTC), f"g{size}-{i}", user)

                await store._write(job)


def _sha(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


def _fill_maildir(root: Path, sizes: list[int]) -> None:
    for user, size in _mailboxes(sizes):
        box = root / "mail" / user
        for sub in ("cur", "new", "tmp"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        base = int(time.time()) - size
        for i in range(size):
            data = message(i).replace(b"\r\n", b"\n")
            flags = "S" if i % 3 else ""
            (box / "cur" / f"{base + i}.M{i}P1.bench,S={len(data)}:2,{flags}").write_bytes(data)


# --- the servers ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_port(address: Address, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
            return
        time.sleep(0.05)  # polling a port that is coming up, with a deadline
    raise RuntimeError(f"{what} did not listen on {address} in {timeout}s")


@contextlib.contextmanager
def dovecot(root: Path, sizes: list[int]) -> Iterator[Address]:
    for d in ("run", "state", "mail", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    hashed = subprocess.run(["doveadm", "pw", "-s", "ARGON2ID", "-p", PASSWORD],
                            capture_output=True, text=True, check=True).stdout.strip()
    (root / "passwd").write_text("".join(f"{u}:{hashed}\n" for u, _ in _mailboxes(sizes)))
    _fill_maildir(root, sizes)
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(root / "mail"), str(root / "home")],
                   check=True)
    port = _free_port()
    conf = root / "dovecot.conf"
    conf.write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailmux-bench-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
""")
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(("127.0.0.1", port), "dovecot")
        yield ("127.0.0.1", port)
    finally:
        _group_kill(proc)


@contextlib.contextmanager
def nginx(root: Path, backend: Address) -> Iterator[Address]:
    root.mkdir(parents=True, exist_ok=True)

    class Auth(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Auth-Status", "OK")
            self.send_header("Auth-Server", backend[0])
            self.send_header("Auth-Port", str(backend[1]))
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    auth = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    port = _free_port()
    modules = "/usr/lib/nginx/modules/ngx_mail_module.so"
    (root / "nginx.conf").write_text(f"""
load_module {modules};
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
mail {{
    auth_http 127.0.0.1:{auth.server_address[1]}/auth;
    proxy on;
    server {{ listen 127.0.0.1:{port}; protocol imap; imap_auth plain login; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf"),
                             "-e", str(root / "error.log")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(("127.0.0.1", port), "nginx")
        yield ("127.0.0.1", port)
    finally:
        _group_kill(proc)
        auth.shutdown()


@contextlib.contextmanager
def mailmux(root: Path, sizes: list[int],
            cache: Path | None = None) -> Iterator[tuple[NodeProcess, Address]]:
    node = write_config(root, "bench")
    _fill_mailmux_cached(node.data_dir / "mailmux.sqlite3", sizes, cache)
    node.start(env={"MAILMUX_LOG_LEVEL": "WARNING"})
    gateway = write_gateway_config(root / "gateway.toml", [node.control])
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailmux.gateway", "run", "--config", str(gateway.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={**os.environ, "MAILMUX_LOG_LEVEL": "WARNING"})
    try:
        assert proc.stdout is not None
        import json

        ready = json.loads(proc.stdout.readline())
        yield node, split_address(ready["imap"])
    finally:
        _group_kill(proc)  # type: ignore[arg-type]
        node.kill()


@contextlib.contextmanager
def baseline_node(root: Path, sizes: list[int], cache: Path | None,
                  tree: Path | None) -> Iterator[NodeProcess | None]:
    if tree is None:
        yield None
        return
    node = write_config(root, "base")
    node.with_gateway_key = False  # registering it opens the store with this checkout's code
    _fill_mailmux_cached(node.data_dir / "mailmux.sqlite3", sizes, cache)
    # PYTHONSAFEPATH: the working directory (this checkout) must not shadow the baseline's
    node.start(env={"MAILMUX_LOG_LEVEL": "WARNING", "PYTHONSAFEPATH": "1",
                    "PYTHONPATH": str(tree.resolve())})
    try:
        yield node
    finally:
        node.kill()


# --- a small raw IMAP client --------------------------------------------------------------


class Client:
    def __init__(self, address: Address, user: str | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.n = 0
        if user is not None:
            self.run(f'LOGIN "{user}" "{PASSWORD}"')

    def run(self, command: str, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = f"b{self.n}".encode()
        if literal is None:
            self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + command.encode() + f" {{{len(literal)}}}\r\n".encode())
            self.file.readline()  # "+ go ahead"
            self.sock.sendall(literal + b"\r\n")
        out = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            while line.endswith(b"}\r\n") and b"{" in line:
                count = int(line[line.rindex(b"{") + 1:-3])
                line += self.file.read(count) + self.file.readline()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{command[:40]!r}: {line!r}")
                return out
            out.append(line)

    def run_bulk(self, command: str) -> int:
        """Octets of the answer to `command`, read in large pieces and not parsed: for
        throughput figures, where parsing each response here would measure this client. The
        answer's end is its tagged line (the bench's messages never hold one)."""
        self.n += 1
        tag = f"b{self.n}".encode()
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        end = b"\r\n" + tag + b" "
        total, tail = 0, b"\r\n"
        while True:
            chunk = self.file.read1(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            total += len(chunk)
            window = tail + chunk
            at = window.rfind(end)
            if at >= 0 and window.endswith(b"\r\n") and window.find(b"\r\n", at + 2) == (
                    len(window) - 2):
                if window[at + len(end):at + len(end) + 2] != b"OK":
                    raise RuntimeError(f"{command[:40]!r}: {window[at:]!r}")
                return total
            tail = window[-200:]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, ConnectionError):
            self.run("LOGOUT")
        self.sock.close()


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


# --- the figures ---------------------------------------------------------------------------


def select_ms(address: Address, size: int) -> float:
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")  # warm
    t = statistics.median(timed(lambda: c.run("SELECT INBOX")) for _ in range(5))
    c.close()
    return t * 1000


def fetch_flags_ms(address: Address, size: int) -> float:
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")
    t = timed(lambda: c.run("FETCH 1:* (FLAGS)"))
    c.close()
    return t * 1000


def uid_fetch_ms(address: Address, size: int) -> float:
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")
    rng = random.Random(1)
    times = [timed(lambda: c.run(f"UID FETCH {rng.randint(1, size)} (FLAGS)"))
             for _ in range(300)]
    c.close()
    return statistics.median(times) * 1000


def search_ms(address: Address, size: int, key: str) -> float:
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")
    target = size // 2 + 7
    t = timed(lambda: c.run(f"UID SEARCH {key} {'subj' if key == 'SUBJECT' else 'tok'}"
                            f"{target}{'q' if key == 'SUBJECT' else 'x'}"))
    c.close()
    return t * 1000


def store_rate(address: Address, size: int, clients: int, seconds: float) -> float:
    def worker(k: int) -> int:
        c = Client(address, user_for(size))
        c.run("SELECT INBOX")
        rng = random.Random(k)
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sign = "+" if done % 2 == 0 else "-"
            c.run(f"UID STORE {rng.randint(1, size)} {sign}FLAGS.SILENT (\\Flagged)")
            done += 1
        c.close()
        return done

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(worker, range(clients))) / seconds


def append_rate(address: Address, size: int, clients: int = 8, each: int = 40) -> float:
    setup = Client(address, user_for(size))
    with contextlib.suppress(RuntimeError):
        setup.run("CREATE Bench")
    setup.close()

    def worker(k: int) -> None:
        c = Client(address, user_for(size))
        for i in range(each):
            c.run("APPEND Bench", message(10_000_000 + k * 1000 + i + int(time.time() * 1000)))
        c.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return clients * each / (time.perf_counter() - began)


def login_rate(address: Address, size: int, clients: int, seconds: float) -> float:
    def worker(_: int) -> int:
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            Client(address, user_for(size)).close()
            done += 1
        return done

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(worker, range(clients))) / seconds


def round_trip_ms(address: Address, size: int, command: str) -> tuple[float, float]:
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")
    rng = random.Random(2)
    times = sorted(timed(lambda: c.run(command.format(n=rng.randint(1, size))))
                   for _ in range(1000))
    c.close()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def fetch_bodies_mb_s(address: Address, size: int) -> float:
    """`FETCH 1:* BODY.PEEK[]` over the whole INBOX (at most 20,000 messages: 40 MB), MB/s."""
    c = Client(address, user_for(size))
    c.run("SELECT INBOX")
    last = min(size, 20_000)
    received = 0

    def fetch() -> None:
        nonlocal received
        received = c.run_bulk(f"FETCH 1:{last} BODY.PEEK[]")

    t = timed(fetch)
    c.close()
    return received / t / 1e6


def mixed_rate(address: Address, clients: int, seconds: float) -> float:
    """ops/s of `clients` clients, each in its own INBOX of MIX_MESSAGES messages, each doing
    what a mail client does between syncs: mostly flag reads and changes, some bodies, a
    search, a NOOP, now and then a new message and a re-SELECT."""
    def worker(k: int) -> int:
        c = Client(address, mix_user(k))
        c.run("SELECT INBOX")
        rng = random.Random(k)
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            n = rng.randint(1, MIX_MESSAGES)
            pick = rng.random()
            if pick < 0.35:
                c.run(f"UID FETCH {n} (FLAGS)")
            elif pick < 0.55:
                c.run(f"UID STORE {n} {'+-'[done % 2]}FLAGS.SILENT (\\Flagged)")
            elif pick < 0.70:
                c.run(f"FETCH {n} BODY.PEEK[]")
            elif pick < 0.80:
                c.run(f"UID SEARCH SUBJECT subj{n}q")
            elif pick < 0.90:
                c.run("NOOP")
            elif pick < 0.95:
                c.run("APPEND Bench", message(20_000_000 + k * 100_000 + done))
            else:
                c.run("SELECT INBOX")
            done += 1
        c.close()
        return done

    for k in range(clients):
        setup = Client(address, mix_user(k))
        with contextlib.suppress(RuntimeError):
            setup.run("CREATE Bench")
        setup.close()
    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(worker, range(clients))) / seconds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the run -------------------------------------------------------------------------------

# (label, function, higher is better)
FIGURES: list[tuple[str, Callable[..., float], bool]] = [
    ("SELECT ms", select_ms, False),
    ("FETCH 1:* (FLAGS) ms", fetch_flags_ms, False),
    ("UID FETCH n (FLAGS) p50 ms", uid_fetch_ms, False),
    ("SEARCH SUBJECT ms", lambda a, s, _: search_ms(a, s, "SUBJECT"), False),
    ("SEARCH BODY ms", lambda a, s, _: search_ms(a, s, "BODY"), False),
    ("STORE ops/s, 1 client", lambda a, s, sec: store_rate(a, s, 1, sec), True),
    ("STORE ops/s, 4 clients", lambda a, s, sec: store_rate(a, s, 4, sec), True),
    ("APPEND msg/s, 8 clients", lambda a, s, _: append_rate(a, s), True),
    ("logins/s, 10 clients", lambda a, s, sec: login_rate(a, s, 10, sec), True),
    ("FETCH 1:* BODY.PEEK[] MB/s", lambda a, s, _: fetch_bodies_mb_s(a, s), True),
]
# Figures that do not depend on the big INBOX's size: measured once, after the sizes.
MIXED: list[tuple[str, Callable[[Address, float], float]]] = [
    ("mixed ops/s, 10 clients", lambda a, sec: mixed_rate(a, 10, sec)),
    ("mixed ops/s, 50 clients", lambda a, sec: mixed_rate(a, 50, sec)),
]


def _call(fn: Callable[..., float], address: Address, size: int, seconds: float) -> float:
    if fn in (select_ms, fetch_flags_ms, uid_fetch_ms):
        return fn(address, size)
    return fn(address, size, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per rate figure")
    parser.add_argument("--only", default="", help="comma-separated label prefixes")
    parser.add_argument("--fill-cache", type=Path, default=None,
                        help="keep and reuse the filled mailmux database here")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another mailmux checkout to measure side by side")
    parser.add_argument("--proxies-only", action="store_true",
                        help="only the direct / gateway / nginx table (no Dovecot)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.proxies_only:
        sys.exit(_proxies_only(sizes[0], args.rounds))
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]

    def chosen(label: str) -> bool:
        return not wanted or any(label.startswith(w) for w in wanted)

    if not any(chosen(label) for label, _ in MIXED):
        global MIX_USERS
        MIX_USERS = 0  # nobody needs the mixed-load users: not filled on either server
    for tool in ("dovecot", "doveadm", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install dovecot-imapd nginx libnginx-mod-mail")
    with tempfile.TemporaryDirectory(prefix="mailmux-compare-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # Dovecot's auth and mail processes run as the dovecot user
        began = time.perf_counter()
        with mailmux(root / "mailmux", sizes, args.fill_cache) as (node, gateway), \
                baseline_node(root / "baseline", sizes, args.fill_cache,
                              args.baseline) as base, \
                dovecot(root / "dovecot", sizes) as dove, \
                nginx(root / "nginx", node.imap) as proxy:
            print(f"filled {sizes} messages on both in {time.perf_counter() - began:.0f}s",
                  flush=True)
            rows: list[Row] = []
            others = [base.imap] if base is not None else []
            for size in sizes:
                for address in (node.imap, dove, *others):  # warm-up: Dovecot's index
                    Client(address, user_for(size)).run("SELECT INBOX")
                    fetch_flags_ms(address, size)
                for label, fn, higher in FIGURES:
                    if not chosen(label):
                        continue
                    ours, theirs, before = [], [], []
                    for _ in range(args.rounds):
                        ours.append(_call(fn, node.imap, size, args.seconds))
                        theirs.append(_call(fn, dove, size, args.seconds))
                        before += [_call(fn, a, size, args.seconds) for a in others]
                    rows.append(_row(label, size, ours, theirs, before, higher))
                print(f"  {size:>7} node RSS {rss_mb(node.pid):.0f} MB", flush=True)
            for label, mixed in MIXED:
                if not chosen(label):
                    continue
                ours, theirs, before = [], [], []
                for _ in range(args.rounds):
                    ours.append(mixed(node.imap, args.seconds))
                    theirs.append(mixed(dove, args.seconds))
                    before += [mixed(a, args.seconds) for a in others]
                rows.append(_row(label, MIX_MESSAGES, ours, theirs, before, True))
            proxies = (_proxies(node.imap, gateway, proxy, sizes[0], args.rounds)
                       if chosen("proxy") else [])
        _print(rows, proxies)


def _proxies_only(size: int, rounds: int) -> None:
    if shutil.which("nginx") is None:
        sys.exit("nginx not found: apt-get install nginx libnginx-mod-mail")
    with tempfile.TemporaryDirectory(prefix="mailmux-compare-") as tmp:
        root = Path(tmp)
        with mailmux(root / "mailmux", [size]) as (node, gateway), \
                nginx(root / "nginx", node.imap) as proxy:
            Client(node.imap, user_for(size)).run("SELECT INBOX")  # warm-up
            _print([], _proxies(node.imap, gateway, proxy, size, rounds))


def _proxies(direct: Address, gateway: Address, proxy: Address, size: int,
             rounds: int) -> list[tuple[str, float, float, float]]:
    out = []
    for label, command in (("UID FETCH n (FLAGS)", "UID FETCH {n} (FLAGS)"), ("NOOP", "NOOP")):
        samples: dict[str, list[tuple[float, float]]] = {"d": [], "g": [], "n": []}
        for _ in range(rounds):
            for key, address in (("d", direct), ("g", gateway), ("n", proxy)):
                samples[key].append(round_trip_ms(address, size, command))
        for i, stat in enumerate(("p50", "p99")):
            d, g, n = (statistics.median(s[i] for s in samples[k]) for k in "dgn")
            out.append((f"{label} {stat}", d, g, n))
    samples_mb: dict[str, list[float]] = {"d": [], "g": [], "n": []}
    for _ in range(rounds):
        for key, address in (("d", direct), ("g", gateway), ("n", proxy)):
            samples_mb[key].append(fetch_bodies_mb_s(address, size))
    d, g, n = (statistics.median(samples_mb[k]) for k in "dgn")
    out.append(("FETCH 1:* BODY.PEEK[] MB/s (higher is better)", d, g, n))
    return out


# (label, messages, mailmux, Dovecot, higher is better, baseline mailmux or None)
Row = tuple[str, int, float, float, bool, float | None]


def _row(label: str, size: int, ours: list[float], theirs: list[float], before: list[float],
         higher: bool) -> Row:
    row = (label, size, statistics.median(ours), statistics.median(theirs), higher,
           statistics.median(before) if before else None)
    print(f"  {size:>7} {label:<28} mailmux {row[2]:10.2f}  dovecot {row[3]:10.2f}"
          + (f"  baseline {row[5]:10.2f}" if row[5] is not None else ""), flush=True)
    return row


def _print(rows: list[Row], proxies: list[tuple[str, float, float, float]]) -> None:
    based = any(r[5] is not None for r in rows)
    if rows:
        print()
        print("| figure | messages | mailmux | Dovecot | mailmux ÷ Dovecot | verdict |"
              + (" baseline | baseline ÷ Dovecot |" if based else ""))
        print("|---|---|---|---|---|---|" + ("---|---|" if based else ""))
    for label, size, ours, theirs, higher, before in rows:
        ratio = ours / theirs if theirs else float("inf")
        better = ratio > 1 if higher else ratio < 1
        extra = (f" {before:.2f} | {before / theirs if theirs else float('inf'):.2f} |"
                 if before is not None else "")
        print(f"| {label} | {size} | {ours:.2f} | {theirs:.2f} | {ratio:.2f} | "
              f"{'mailmux ahead' if better else 'Dovecot ahead'} |{extra}")
    print()
    print("| through a proxy (ms, or MB/s where said) | direct | gateway | nginx | "
          "gateway ÷ direct | nginx ÷ direct |")
    print("|---|---|---|---|---|---|")
    for label, d, g, n in proxies:
        print(f"| {label} | {d:.3f} | {g:.3f} | {n:.3f} | {g / d:.2f} | {n / d:.2f} |")


if __name__ == "__main__":
    main()
