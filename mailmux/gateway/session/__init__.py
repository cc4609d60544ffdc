"""One client's IMAP session through the gateway, split by concern.

- `states.py`: the session's life as a table (connecting, serving, failing over, closed).
- `client.py`: the session object: client plumbing and the command loop.
- `prelogin.py`: what the gateway answers itself before login (LOGIN, AUTHENTICATE, STARTTLS, ...).
- `relay.py`: one command relayed to the backend and its responses to the client.
- `view.py`: what the client has been shown of the selected mailbox.
- `failover.py`: moving the session to another node and re-sending the command in flight.
"""
