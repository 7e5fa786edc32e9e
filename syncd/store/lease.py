"""Leases: one process at a time syncs a target, however many replicas share the store.

A lease is a row of ``lease`` (target, holder, expires_at). Taking it is one upsert that only
succeeds when the target has no lease or its lease has expired, so two processes can never both
win; the winner renews it from a background thread while its cycle runs and ends it after.
Every replica schedules every target, so a scheduled tick also passes ``fresh_for``: a cycle
that began that recently (in whichever replica) makes the tick a no-op, and three replicas do
not sync a target three times as often as its schedule says.
A process that dies stops renewing, and its lease lapses after ``[daemon] lease_timeout``: then
another replica takes the target at its next tick. Expiry is judged by the database's clock,
never a replica's own, so replicas whose clocks disagree still agree on who holds what.

A holder that cannot renew in time (the store unreachable, the process stalled) marks its
lease ``lost``; the cycle asks between batches and stops after the batch in flight. Pushes are
idempotent and the base moves only on confirmation (rules 4 and 5), so even that last batch
cannot corrupt anything. Before a cycle reports, it asks the store itself (``Lease.confirm``):
a cycle that was not sure of its lease to the end reports ``stopped``, never ``converged``.

The renewal and the cycle share the store without starving or failing each other. On SQLite,
every connection of the store's engine, the renewal's included, waits for the write lock
(``db.SQLITE_BUSY_TIMEOUT``, 30 s) rather than failing at once. No transaction of a cycle holds
that lock longer than one chunk (``mirror.CHUNK`` rows staged, copied or compared, milliseconds
whatever the list's size; ``engine/stage.py``), so a renewal, due every third of
``lease_timeout`` (at least a second), waits milliseconds at most. And the cycle never writes
from inside a read that is still open (each page of the mirror is read whole first): SQLite
fails such a write with "database is locked" at once, without waiting, when another connection
(a renewal) committed since the read began. PostgreSQL has no store-wide write lock: a renewal
touches only its ``lease`` row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger("syncd.lease")

#: The database's own clock, in seconds since the epoch.
_NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def new_holder() -> str:
    """A name for this process, unique across restarts, readable in logs and run records."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _died_here(holder: str) -> bool:
    """Whether ``holder`` (see ``new_holder``) names a process of this machine that is gone.

    The same pid under another holder name is an earlier life of a process whose pid came back
    (pid 1 in a restarted container), so it is gone too.
    """
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


class Lease:
    """A lease this process holds; ``lost`` is set once it can no longer be sure it does, and
    ``why`` says how it was lost."""

    def __init__(self, target: str, leases: Leases | None = None) -> None:
        self.target = target
        self.lost = threading.Event()
        self.why = ""
        self._leases = leases

    def lose(self, why: str) -> None:
        self.why = why
        self.lost.set()

    def confirm(self) -> bool:
        """Whether this process still holds the lease, asked of the store itself.

        The renewal thread notices a lapse only at its next renewal, up to a third of the
        timeout later, and not at all while it cannot reach the store; a cycle about to report
        asks here instead: its holder is still this process and it has not lapsed. Any other
        answer, or none, marks the lease lost.
        """
        if self.lost.is_set():
            return False
        if self._leases is None:
            return True
        try:
            held = self._leases.holds(self.target)
        except Exception:
            log.warning("could not check the lease on %s", self.target, exc_info=True)
            self.lose("the store could not confirm it")
            return False
        if not held:
            self.lose("it lapsed or was taken over by another process")
        return held


class Leases:
    """Takes, renews and gives back one process's leases on targets."""

    def __init__(self, engine: Engine, holder: str, timeout: float) -> None:
        self.engine = engine
        self.holder = holder
        self.timeout = timeout
        now = _NOW[engine.dialect.name]
        self._now = now
        self._take = text(
            "INSERT INTO lease (target, holder, expires_at, started_at) "
            f"VALUES (:t, :h, {now} + :ttl, {now}) ON CONFLICT (target) DO UPDATE "
            "SET holder = excluded.holder, expires_at = excluded.expires_at, "
            f"started_at = excluded.started_at WHERE lease.expires_at < {now} "
            f"AND lease.started_at <= {now} - :fresh"
        )
        # the same, for work that is not a cycle (a webhook's few keys): it leaves started_at
        # alone, so a scheduled cycle right after it is not taken for a needless one
        self._take_quietly = text(
            "INSERT INTO lease (target, holder, expires_at, started_at) "
            f"VALUES (:t, :h, {now} + :ttl, 0) ON CONFLICT (target) DO UPDATE "
            "SET holder = excluded.holder, expires_at = excluded.expires_at "
            f"WHERE lease.expires_at < {now}"
        )
        self._renew = text(
            f"UPDATE lease SET expires_at = {now} + :ttl WHERE target = :t AND holder = :h"
        )

    def acquire(self, target: str, fresh_for: float = 0.0, *, cycle: bool = True) -> bool:
        """Take the target's lease if it is free or expired, and no cycle of it began in the
        last ``fresh_for`` seconds; False otherwise. ``cycle=False``: the work is not a cycle
        of the list and is not remembered as its start."""
        params = {"t": target, "h": self.holder, "ttl": self.timeout, "fresh": fresh_for}
        take = self._take if cycle else self._take_quietly
        if not cycle:
            params.pop("fresh")
        with self.engine.begin() as conn:
            if conn.execute(take, params).rowcount == 1:
                return True
        if not self._end_if_dead(target):
            return False
        with self.engine.begin() as conn:
            return conn.execute(take, params).rowcount == 1

    def _end_if_dead(self, target: str) -> bool:
        """End a lease whose holder was a process of this machine that is gone (a crash, a
        SIGKILL, a restart under systemd or Docker), so a restarted daemon does not wait out
        ``lease_timeout`` behind its own dead self. Holders elsewhere lapse by the clock."""
        holder = self.holder_of(target)
        if holder is None or holder == self.holder or not _died_here(holder):
            return False
        with self.engine.begin() as conn:
            ended = conn.execute(
                text("UPDATE lease SET expires_at = 0 WHERE target = :t AND holder = :h"),
                {"t": target, "h": holder},
            )
        if ended.rowcount:
            log.warning("%s held %s and is gone: its lease is ended", holder, target)
        return bool(ended.rowcount)

    def renew(self, target: str) -> bool:
        """Push the expiry out again; False when the lease is no longer ours."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                self._renew, {"t": target, "h": self.holder, "ttl": self.timeout}
            )
            return renewed.rowcount == 1

    def release(self, target: str) -> None:
        """End the lease now (the row stays: it remembers when the last cycle began)."""
        with self.engine.begin() as conn:
            conn.execute(
                text("UPDATE lease SET expires_at = 0 WHERE target = :t AND holder = :h"),
                {"t": target, "h": self.holder},
            )

    def holds(self, target: str) -> bool:
        """Whether this process holds the target's lease now, by the database's clock."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT 1 FROM lease WHERE target = :t AND holder = :h "
                    f"AND expires_at >= {self._now}"
                ),
                {"t": target, "h": self.holder},
            )
            return row.first() is not None

    def holder_of(self, target: str) -> str | None:
        """Who holds the target's lease now, if anyone."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT holder FROM lease WHERE target = :t AND expires_at >= {self._now}"),
                {"t": target},
            )
            return row.scalar_one_or_none()

    @contextmanager
    def hold(
        self, target: str, *, wait: bool = False, fresh_for: float = 0.0, cycle: bool = True
    ) -> Iterator[Lease | None]:
        """The target's lease for the length of the block, renewed meanwhile. None when another
        process holds it or a cycle began within ``fresh_for`` seconds; with ``wait``, it waits
        until the lease has been given back or has lapsed instead. ``cycle``: see ``acquire``."""
        while not self.acquire(target, fresh_for, cycle=cycle):
            if not wait:
                yield None
                return
            log.info("waiting for %s to finish syncing %s", self.holder_of(target), target)
            time.sleep(min(1.0, self.timeout / 4))
        lease = Lease(target, self)
        done = threading.Event()
        renewer = threading.Thread(
            target=self._keep, args=(lease, done), name=f"syncd-lease-{target}", daemon=True
        )
        renewer.start()
        try:
            yield lease
        finally:
            done.set()
            renewer.join()
            try:
                self.release(target)
            except Exception:  # it lapses by itself; the next holder only waits longer
                log.warning("could not give back the lease on %s", target, exc_info=True)

    def _keep(self, lease: Lease, done: threading.Event) -> None:
        """Renew every third of the timeout; a lease not renewed in time is lost."""
        last_renewed = time.monotonic()
        while not done.wait(self.timeout / 3):
            try:
                if self.renew(lease.target):
                    last_renewed = time.monotonic()
                    continue
                log.error("the lease on %s was taken over: stopping its cycle", lease.target)
                lease.lose("it was taken over by another process")
            except Exception:
                if time.monotonic() - last_renewed < self.timeout * 2 / 3:
                    log.warning("could not renew the lease on %s", lease.target, exc_info=True)
                    continue
                log.error("the lease on %s could not be renewed in time", lease.target)
                lease.lose(f"it could not be renewed within lease_timeout ({self.timeout:g} s)")
            return
