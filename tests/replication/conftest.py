from tests.replication.support import make_pool

__all__ = ["make_pool"]
