"""The mirror: every table (``models``), transactions (``db``), the set operations the engine
asks of the database (``mirror``), leases for several replicas (``lease``), each contact's
history for ``syncd explain`` (``history``) and the migrations.

It may import ``core``, ``config`` and the cross-cutting root modules (errors, clock, logs,
metrics, schedule); the engine, the local side, commands and the daemon build on it.
"""

from syncd.store.db import open_engine, transaction

__all__ = ["open_engine", "transaction"]
