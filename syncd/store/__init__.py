"""The mirror: tables, transactions and the set operations the engine asks of the database."""

from syncd.store.db import open_engine, transaction

__all__ = ["open_engine", "transaction"]
