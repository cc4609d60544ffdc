"""Outbound mail: the replicated delivery queue for recipients outside the pool's domains.

Pieces, lowest first: `config.py` (the `[outbound]` table), `schema.py` (the queue table),
`records.py` (how each change record kind changes that table — the same function for local writes
and for records from peers, so replicas converge by construction), `queue.py` (the async API over
the node's store), `routes.py` (smarthost or MX hosts), `client.py` (one SMTP conversation with
aiosmtplib), `dsn.py` (RFC 3464 reports), `dkim_sign.py`, and `worker.py` (leases, retries,
bounces). `gateway_auth.py` is the pool gateway's AUTH XMAILMUX exchange: `intake.py` is the
node's side of it, `handoff.py` the gateway's. `cli.py` holds `mailmux-backend queue` and `dkim`.
"""
