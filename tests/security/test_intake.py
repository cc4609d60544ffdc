"""Finding 14: the node's SMTP intake can be restricted to the pool's own networks."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from tests.security.support import BOB
from tests.support.nodes import NodeProcess


def test_intake_networks_refuse_outsiders_before_rcpt(
    victim: Callable[..., NodeProcess],
) -> None:
    closed = victim('intake_networks = ["10.9.8.0/24"]', node_id="closed")
    with smtplib.SMTP(*closed.smtp, timeout=30) as smtp:
        smtp.ehlo()
        code, reply = smtp.mail("x@outside.test")
        assert code == 550 and reply.startswith(b"5.7.1"), reply
        # RCPT cannot tell known users from unknown ones: it is never reached.
        assert smtp.rcpt(BOB[0])[0] == smtp.rcpt("nobody@example.test")[0] == 503
    open_node = victim('intake_networks = ["127.0.0.0/8"]', node_id="open")
    with smtplib.SMTP(*open_node.smtp, timeout=30) as smtp:
        smtp.sendmail("x@outside.test", [BOB[0]], b"Subject: hi\r\n\r\nhi\r\n")
