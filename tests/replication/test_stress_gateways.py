"""imaptest stress with state checking through TWO gateways in front of a 3-node pool.

One user, six clients: one imaptest whose connections alternate between the two gateways
(a round-robin TCP front), all appending, fetching, storing and expunging at once. imaptest
compares what its clients see (`checkpoint=`, so sessions of both gateways are compared) and
reports a UID that names another message, MODSEQs that differ between sessions, a message
count that drops, a message whose data changed. Each such line is a broken invariant of
docs/consistency.md ("one name, one message", "MODSEQ belongs to the change"), and there must
be none. The short profile (CI) runs 20 s; `-m slow` runs 60 s while a seeded fault injector
SIGKILLs/SIGSTOPs nodes and restarts them (MAILMUX_FAULT_SEED picks the sequence).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.imaptest.suite import BINARY, WHY_MISSING
from tests.imaptest.targets import PASSWORD
from tests.replication.cluster import Cluster, FaultInjector, cluster
from tests.support.tcp_proxy import RoundRobinProxy

USER = "stress2@example.test"
SHORT_SECONDS = 20
LONG_SECONDS = 60
CLIENTS_PER_GATEWAY = 3
# imaptest's state-checking complaints: one UID naming two messages, a message whose data
# changed under its UID, sessions disagreeing on MODSEQs, messages vanishing from a view, and
# at a checkpoint sessions disagreeing on a sequence number's UID or on the message count.
CONSISTENCY = re.compile(r"changed|differ|Message count dropped|went backwards"
                         r"|UIDNEXT|HIGHESTMODSEQ|UID \d+ != \d+|Mailbox has only"
                         # and what a client notices of a failover: the session ended, an
                         # EXPUNGE while its command still named the message, two sessions
                         # given one message's \Recent
                         r"|Unexpected BYE|Referenced message expunged|Invalid untagged input"
                         r"|Tried to expunge|Recent flag in multiple sessions",
                         re.IGNORECASE)
# The short run passes since the home lease (one node commits a user's changes); under faults,
# seeds 1-17 pass since the read barrier, MODSEQ-exact replication, the gateway's MODSEQ
# reconcile (docs/consistency.md, rules 8-10) and its flags learned with their MODSEQ. The
# rare lines left before were the harness's (one imaptest per gateway: the other program's
# changes landed between the CHECK answers; seeds 7, 10, 11 "Mailbox has only N of M") and
# the reconcile's (flags told without their MODSEQ after a failover; seed 9 "modseqs differ").


def consistency_errors(output: str) -> list[str]:
    errors = []
    for line in output.splitlines():
        # imaptest writes its complaints where its per-second statistics line happens to be
        line = line[min((i for i in (line.find("Error: "), line.find("Panic: ")) if i >= 0),
                        default=0):]
        if line.startswith("Panic:") and "client_update_plan" in line:
            # imaptest's own assertion as its clients disconnect at the end of a run (with
            # or without faults, docs/consistency.md); what follows is its backtrace
            break
        if line.startswith("Error:") and CONSISTENCY.search(line):
            errors.append(line)
    return errors


def test_consistency_errors_are_the_state_checkers_lines() -> None:
    out = ("Error: stress2@example.test[3]: UID 45 changed Message-Id: <a> -> <b>\n"
           "Error: Checkpoint: client 2: modseqs differ: 391 vs 396\n"
           "Error: stress2@example.test[1]: Message count dropped 28 -> 25\n"
           "Error: Checkpoint: client 4: Message seq=9 UID 61 != 64\n"
           "Error: Checkpoint: client 4: Mailbox has only 35 of 36 messages\n"
           "Error: stress2@example.test[1]: Keyword used without being in FLAGS: $x\n"
           "   7    6  Error: stress2@example.test[2]: Referenced message expunged seq=3\n"
           "   5    3  Panic: file client-state.c: line 222 (client_update_plan): assertion\n"
           "Error: UID 9 changed after the panic\n")
    assert consistency_errors(out) == [
        "Error: stress2@example.test[3]: UID 45 changed Message-Id: <a> -> <b>",
        "Error: Checkpoint: client 2: modseqs differ: 391 vs 396",
        "Error: stress2@example.test[1]: Message count dropped 28 -> 25",
        "Error: Checkpoint: client 4: Message seq=9 UID 61 != 64",
        "Error: Checkpoint: client 4: Mailbox has only 35 of 36 messages",
        "Error: stress2@example.test[2]: Referenced message expunged seq=3"]


def _imaptest(front: tuple[str, int], clients: int, seconds: int) -> subprocess.Popen[str]:
    assert BINARY is not None
    mbox = BINARY.parent / "tests" / "default.mbox"
    host, port = front
    return subprocess.Popen(
        # Line-buffered: its output is a pipe, and its end-of-run abort (below) would drop
        # what the C library still buffers, and with it complaints and statistics.
        ["stdbuf", "-oL", str(BINARY), f"host={host}", f"port={port}", f"user={USER}",
         f"pass={PASSWORD}", f"mbox={mbox}", f"clients={clients}", f"secs={seconds}",
         "checkpoint=5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        env={**os.environ, "LD_LIBRARY_PATH": "/usr/lib/dovecot"}, start_new_session=True)


def _stress(pool: Cluster, seconds: int, keep: Path) -> list[str]:
    """ONE imaptest whose connections alternate between the gateways. A checkpoint quiesces
    only its own program's clients and then compares what each saw after a CHECK: with one
    imaptest per gateway, the other program's changes landed between the CHECK answers (far
    apart when one CHECK waited out a failover), and sessions rightly differed by them."""
    front = RoundRobinProxy([gateway.imap for gateway in pool.gateways])
    run = _imaptest(("127.0.0.1", front.port), CLIENTS_PER_GATEWAY * len(pool.gateways),
                    seconds)
    try:
        out, _ = run.communicate(timeout=seconds + 180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait(timeout=10)
        front.close()
    # kept beside the nodes' and gateways' logs, for a post-mortem of a failed run
    (keep / "imaptest.out").write_text(out)
    return [out]


def _verdict(pool: Cluster, outputs: list[str], actions: list[str]) -> None:
    errors = [e for out in outputs for e in consistency_errors(out)]
    tails = "\n---\n".join(out[-2000:] for out in outputs)
    assert errors == [], (f"{len(errors)} consistency error line(s):\n" + "\n".join(errors[:30])
                          + "\nfaults: " + "; ".join(actions) + "\n" + tails)
    # Both gateways really served imaptest's clients.
    for gateway in pool.gateways:
        logins = re.findall(rf"login of {re.escape(USER)} on \w+ \(load", gateway.log())
        assert len(logins) >= CLIENTS_PER_GATEWAY, tails


@pytest.mark.timeout(SHORT_SECONDS + 400)
def test_stress_through_two_gateways_has_no_consistency_errors(tmp_path: Path) -> None:
    if BINARY is None:
        pytest.skip(WHY_MISSING)
    with cluster(tmp_path, [USER]) as pool:
        _verdict(pool, _stress(pool, SHORT_SECONDS, tmp_path), [])


@pytest.mark.slow
@pytest.mark.timeout(LONG_SECONDS + 600)
def test_stress_through_two_gateways_with_faults(tmp_path: Path) -> None:
    if BINARY is None:
        pytest.skip(WHY_MISSING)
    seed = int(os.environ.get("MAILMUX_FAULT_SEED", "7"))
    with cluster(tmp_path, [USER]) as pool:
        with FaultInjector(pool, seed) as faults:
            outputs = _stress(pool, LONG_SECONDS, tmp_path)
        assert faults.errors == [], faults.errors
        _verdict(pool, outputs, [f"seed {seed}", *faults.actions])
