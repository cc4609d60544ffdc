"""A real Postfix on loopback for outbound tests: its own config directory, queue and Maildir.

The test writes main.cf and master.cf into a temporary directory (listening on 127.0.0.1 at a
free port, no chroot, log to a file), starts `postfix -c DIR start-fg` in its own process group,
and reads what Postfix delivered for `@remote.test` from one Maildir. Postfix needs root (its
master drops to the `postfix` user); the caller skips when `postfix` is not installed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
local     unix - n n - - local
virtual   unix - n n - - virtual
lmtp      unix - - n - - lmtp
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    return Path(POSTFIX).exists() and os.geteuid() == 0


class Postfix:
    def __init__(self, cert: Path | None = None, key: Path | None = None,
                 relay: tuple[str, int] | None = None) -> None:
        # Not the test's tmp_path: pytest makes that 0700 and Postfix's delivery agents run as
        # the postfix user, who must reach the Maildir.
        self.root = Path(tempfile.mkdtemp(prefix="mailmux-postfix-"))
        self.root.chmod(0o755)
        self.relay = relay
        self.port = free_port()
        self.maildir = self.root / "mail" / "remote"
        self.proc: subprocess.Popen[bytes] | None = None
        if cert is not None and key is not None:
            shutil.copy(cert, self.root / "cert.pem")
            shutil.copy(key, self.root / "key.pem")
            cert, key = self.root / "cert.pem", self.root / "key.pem"
        self._write_config(cert, key)

    def _write_config(self, cert: Path | None, key: Path | None) -> None:
        pw = pwd.getpwnam("postfix")
        for sub in ("queue", "data", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "data", pw.pw_uid, pw.pw_gid)
        os.chown(self.root / "mail", pw.pw_uid, pw.pw_gid)
        tls = (f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
               "smtpd_tls_security_level = may\n") if cert and key else ""
        (self.root / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.root / 'queue'}\n"
            f"data_directory = {self.root / 'data'}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "inet_interfaces = loopback-only\ninet_protocols = ipv4\n"
            "myhostname = relay.test\nmydomain = relay.test\nmydestination =\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            # virtual_mailbox_domains defaults to the (static, match-all) mailbox map: say it.
            + (f"relayhost = [{self.relay[0]}]:{self.relay[1]}\nvirtual_mailbox_domains =\n"
               if self.relay else
               "virtual_mailbox_domains = remote.test\n")
            +
            f"virtual_mailbox_base = {self.root / 'mail'}\n"
            "virtual_mailbox_maps = static:remote/\n"
            f"virtual_uid_maps = static:{pw.pw_uid}\nvirtual_gid_maps = static:{pw.pw_gid}\n"
            f"maillog_file = {self.root / 'maillog'}\nmaillog_file_prefixes = {self.root}\n"
            "smtpd_banner = $myhostname ESMTP\nbiff = no\nalias_maps =\nalias_database =\n"
            + tls)
        (self.root / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def __enter__(self) -> Postfix:
        env = {**os.environ, "MAIL_CONFIG": str(self.root)}
        subprocess.run([POSTFIX, "-c", str(self.root), "set-permissions"], env=env,
                       capture_output=True, timeout=60, check=False)
        self.proc = subprocess.Popen([POSTFIX, "-c", str(self.root), "start-fg"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix exited:\n{self.log()}")
            with contextlib.suppress(OSError, smtplib.SMTPException), \
                    smtplib.SMTP("127.0.0.1", self.port, timeout=2) as smtp:
                smtp.noop()
                return self
            time.sleep(0.1)  # polling with a deadline
        raise RuntimeError(f"postfix did not listen on {self.port}:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text() if path.exists() else ""

    def delivered(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []
