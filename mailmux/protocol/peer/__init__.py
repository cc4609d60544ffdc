"""The replication peer protocol between backend nodes (sans-IO)."""
