"""SMTP and LMTP intake: mail from other MTAs and the gateway into the store (see server.py)."""
