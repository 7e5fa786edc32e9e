"""Each side of a target as last read, and the keys that may differ: the set work of a cycle.

A cycle over a million contacts where nothing changed should cost little more than reading the
export. Three persistent tables make that so (migrations 0011 and 0012 have the triggers):

- ``local_seen``: the projection of every member, made once. The database deletes a contact's
  rows whenever the contact or one of its memberships is written, so a cycle projects only the
  members that have none (``members_to_project``). (An ingest sets SQLite's triggers aside
  inside its own transaction and deletes the rows of the contacts it wrote itself, chunk by
  chunk: ``syncd.local.ingest.write.Sql.forgetting_in_bulk``.)
- ``remote_seen``: the last complete export, one row per key, with a fingerprint of each row's
  raw cells. A cycle parses only the rows whose fingerprint it does not know, and folds them in
  (``fold_export``) only once the export has completed (rule 1).
- ``dirty``: every key whose local, base or remote row was written since it was last compared.
  Every other key is equal on all three sides, so ``compute_diff`` compares only these, and
  clears those it finds equal.

Writes go through the driver's ``executemany`` (``mirror.many``): at a million rows SQLAlchemy's
per-row parameter work would cost more than the rows themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from syncd.store import mirror
from syncd.store.mirror import LocalView, MemberRow, take_write_turn

#: bump when the reading of either side changes, so that rows read by the old code are dropped
READING_VERSION = "1"

_DIRTY_LOCK = "LOCK TABLE dirty IN SHARE ROW EXCLUSIVE MODE"


def salt_of(*parts: object) -> str:
    """A short digest of what shaped a side's rows (never the parts themselves: a target's
    settings may hold a credential). Canonical: the same settings give the same salt in every
    process, whatever order its sets iterate in."""
    text_ = json.dumps([READING_VERSION, *parts], sort_keys=True, default=_plain)
    return hashlib.blake2b(text_.encode(), digest_size=16).hexdigest()


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def _delete_in_chunks(session: Session, table: str, column: str, target: str) -> None:
    """Delete the target's rows of ``table``, ``CHUNK`` of them (picked by ``column``) per
    committed transaction, so no delete holds SQLite's write lock for long."""
    while True:
        done = session.execute(
            text(
                f"DELETE FROM {table} WHERE target = :t AND {column} IN "
                f"(SELECT {column} FROM {table} WHERE target = :t LIMIT :n)"
            ),
            {"t": target, "n": mirror.CHUNK},
        )
        session.commit()
        if int(getattr(done, "rowcount", 0) or 0) < mirror.CHUNK:
            return


def check_salt(session: Session, target: str, side: str, salt: str) -> bool:
    """Drop this side's rows if they were made under another salt; True if they were."""
    stored = session.scalar(
        text("SELECT salt FROM seen_salt WHERE target = :t AND side = :s"),
        {"t": target, "s": side},
    )
    if stored == salt:
        return False
    if side == "local":
        _delete_in_chunks(session, "local_seen", "contact_id", target)
    else:
        _delete_in_chunks(session, "remote_seen", "key", target)
    if side == "remote":
        session.execute(text("DELETE FROM export_order WHERE target = :t"), {"t": target})
    session.execute(
        text("DELETE FROM seen_salt WHERE target = :t AND side = :s"), {"t": target, "s": side}
    )
    session.execute(
        text("INSERT INTO seen_salt (target, side, salt) VALUES (:t, :s, :v)"),
        {"t": target, "s": side, "v": salt},
    )
    session.commit()
    return stored is not None


# --- the local side -----------------------------------------------------------------------


def members_to_project(session: Session, target: str, view: LocalView) -> Iterator[list[int]]:
    """The ids of the live members of the view's list that have no ``local_seen`` row for this
    target, in id order, a page of at most ``CHUNK`` at a time. Driven by the contact's primary
    key with the membership and the seen row as look-ups, so a list where nothing changed is
    one scan that returns nothing and sorts nothing. Each page is a read of its own, ended
    before it is handed out: no read stays open across the caller's writes, and the scan never
    holds the write lock."""
    sql = text(
        "SELECT c.id FROM contact c WHERE c.id > :last AND c.deleted = :no "
        "AND EXISTS (SELECT 1 FROM membership m WHERE m.contact_id = c.id AND m.list_name = :l) "
        "AND NOT EXISTS (SELECT 1 FROM local_seen s WHERE s.contact_id = c.id AND s.target = :t) "
        "ORDER BY c.id LIMIT :n"
    )
    last = 0
    while True:
        params = {"l": view.local_list, "t": target, "last": last, "no": False, "n": mirror.CHUNK}
        ids = list(session.scalars(sql, params))
        session.commit()
        if not ids:
            return
        last = ids[-1]
        yield ids


Projected = tuple[str | None, str | None, str | None]  # key, digest, data (all None: no key)


def project_members(
    session: Session,
    target: str,
    view: LocalView,
    ids: Sequence[int],
    project: Callable[[MemberRow], Projected],
) -> int:
    """Project these members and record it, in one transaction that holds off every writer of
    their rows from the read to the commit (``take_write_turn``, which every writer of the
    local contacts takes): an edit committed in between would find no row to delete, and its
    contact would keep the projection of the state before it. Returns how many were
    projected (members that gained a row or left the list since the scan are skipped)."""
    take_write_turn(session)
    projected = _project(session, target, view, ids, project)
    session.commit()
    return projected


def _project(
    session: Session,
    target: str,
    view: LocalView,
    ids: Sequence[int],
    project: Callable[[MemberRow], Projected],
) -> int:
    if not ids:
        return 0
    # through the driver, the ids written out: at a page of 5,000 members SQLAlchemy's
    # expanding parameter and result rows cost more than the query
    rows: list[Any] = []
    for start in range(0, len(ids), mirror.CHUNK):  # within every driver's parameter limit
        part = ids[start : start + mirror.CHUNK]
        rows += mirror.driver_rows(
            session,
            "SELECT c.id, c.email, c.phone, c.fields, c.tags, c.status, c.ref, m.state FROM "
            "contact c JOIN membership m ON m.contact_id = c.id AND m.list_name = ? "
            f"WHERE c.id IN ({', '.join(['?'] * len(part))}) AND c.deleted = ? AND NOT "
            "EXISTS (SELECT 1 FROM local_seen s WHERE s.contact_id = c.id AND s.target = ?)",
            (view.local_list, *part, False, target),
        )
    member = MemberRow._make
    projected = [(row[0], target, *project(member(row[1:]))) for row in rows]
    # in key order: the key's index and the trigger's ``dirty`` rows are then written page
    # after page, not a page per row (a page of members by id has its keys in any order)
    projected.sort(key=_by_key)
    mirror.many(
        session,
        "INSERT INTO local_seen (contact_id, target, key, digest, data) VALUES (?, ?, ?, ?, ?)",
        projected,
    )
    return len(rows)


def _by_key(row: tuple[Any, ...]) -> str:
    return row[2] or ""


def keyed_count(session: Session, target: str) -> int:
    """Members this target matches (those with its key): the local side's size."""
    return int(
        session.scalar(text("SELECT count(key) FROM local_seen WHERE target = :t"), {"t": target})
        or 0
    )


def keyless_count(session: Session, target: str) -> int:
    """Members this target cannot match for want of its key, from the key index's entries
    without a key alone (every cycle asks it; ``keyed_count`` reads the target's every row)."""
    return int(
        session.scalar(
            text("SELECT count(*) FROM local_seen WHERE target = :t AND key IS NULL"),
            {"t": target},
        )
        or 0
    )


# --- the remote side ----------------------------------------------------------------------


def export_order(session: Session, target: str) -> array[int]:
    """The fingerprints of the last complete export, in its order (8 bytes a row: a million
    rows take 8 MB, read as one blob)."""
    found = array("q")
    blob = session.scalar(text("SELECT fps FROM export_order WHERE target = :t"), {"t": target})
    if blob:
        found.frombytes(blob)
        if sys.byteorder == "big":
            found.byteswap()
    return found


def known_fingerprints(session: Session, target: str, fps: Sequence[int]) -> set[int]:
    """Those of ``fps`` that ``remote_seen`` has."""
    rows = session.scalars(
        text("SELECT fp FROM remote_seen WHERE target = :t AND fp IN :fps").bindparams(
            bindparam("fps", expanding=True)
        ),
        {"t": target, "fps": list(fps)},
    )
    return set(rows)


def stage_new(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Export rows not known by their fingerprint: (target, seq, key, fp, digest, data,
    raw_status, opted_out_elsewhere)."""
    mirror.many(
        session,
        "INSERT INTO stage_new (target, seq, key, fp, digest, data, raw_status, "
        "opted_out_elsewhere) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def stage_differing(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Keys found differing elsewhere (a narrowed cycle's few): (target, key, local, base,
    remote, raw_status, opted_out_elsewhere), the rows as JSON."""
    mirror.many(
        session,
        "INSERT INTO stage_diff (target, key, local, base, remote, raw_status, "
        "opted_out_elsewhere) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def stage_gone(session: Session, target: str, fps: Sequence[int]) -> None:
    mirror.many(
        session,
        "INSERT INTO stage_gone (target, fp) VALUES (?, ?)",
        [(target, fp) for fp in fps],
    )


def fold_export(session: Session, target: str, order: array[int] | None) -> None:
    """The export completed: make ``remote_seen`` what it showed, and ``order`` (unless None:
    nothing moved) the order the next export is checked against. Rows no longer there go,
    new and changed rows come in (the first of a key in the export's order, unless the key's
    known row was read again: then that one stays). One transaction: a crash leaves the last
    complete export in place, and the staged rows are read again by the next cycle."""
    params = {"t": target}
    session.execute(
        text(
            "DELETE FROM remote_seen WHERE target = :t AND fp IN "
            "(SELECT fp FROM stage_gone WHERE target = :t)"
        ),
        params,
    )
    session.execute(
        text(
            "INSERT INTO remote_seen "
            "(target, key, fp, digest, data, raw_status, opted_out_elsewhere) "
            "SELECT target, key, fp, digest, data, raw_status, opted_out_elsewhere FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY key ORDER BY seq) AS nth "
            "  FROM stage_new WHERE target = :t) AS n "
            "WHERE nth = 1 ON CONFLICT (target, key) DO NOTHING"
        ),
        params,
    )
    if order is not None:  # rows came, went or moved: the next export is checked against this
        # a new row that lost its key to another is not kept: left in the order, it would
        # pass for a kept one, and never be read again should the other go
        lost = set(
            session.scalars(
                text(
                    "SELECT fp FROM stage_new n WHERE target = :t AND NOT EXISTS "
                    "(SELECT 1 FROM remote_seen r WHERE r.target = :t AND r.fp = n.fp)"
                ),
                params,
            )
        )
        if lost:
            order = array("q", (fp for fp in order if fp not in lost))
        if sys.byteorder == "big":
            order = array("q", order)
            order.byteswap()
        session.execute(text("DELETE FROM export_order WHERE target = :t"), params)
        session.execute(
            text("INSERT INTO export_order (target, fps) VALUES (:t, :fps)"),
            {"t": target, "fps": order.tobytes()},
        )
    session.commit()


def remote_count(session: Session, target: str) -> int:
    return int(
        session.scalar(text("SELECT count(*) FROM remote_seen WHERE target = :t"), {"t": target})
        or 0
    )


def clear_scratch(session: Session, target: str) -> None:
    """Empty this target's scratch tables, ``CHUNK`` rows per committed transaction."""
    for table, column in (("stage_new", "seq"), ("stage_gone", "fp"), ("stage_diff", "seq")):
        _delete_in_chunks(session, table, column, target)


# --- the comparison -----------------------------------------------------------------------


def compute_diff(
    session: Session,
    target: str,
    view: LocalView,
    project: Callable[[MemberRow], Projected],
    *,
    remote_read: bool,
    settle: bool,
) -> int:
    """Fill ``stage_diff`` with the keys whose local, base and remote rows are not all equal,
    among the dirty keys and the keys whose base still counts the exports that lacked them
    (``Base.unseen``), one range of at most ``CHUNK`` dirty keys per transaction.

    ``remote_read``: the remote side is ``remote_seen``, this cycle's complete export; else the
    base stands in for it (no export, or one that did not complete: rule 1). ``settle``: clear
    the dirty keys found equal, in the transaction that compared them, with every writer of
    ``dirty`` held off (SQLite: the write lock; PostgreSQL: a table lock that waits for the
    writers in flight), so that a key written meanwhile stays dirty. Not after an incomplete
    export: what it would have said about those keys is not known.

    A member written after the scan passed it has lost its projection, and its key is dirty:
    it is projected again here, under the lock, so that it never reads as a local delete.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    same = "IS NOT DISTINCT FROM" if postgres else "IS"
    if remote_read:
        remote_join = "LEFT JOIN remote_seen r ON r.target = :t AND r.key = k.key "
        remote_columns = "r.data, r.raw_status, r.opted_out_elsewhere"
        remote_digest = "r.digest"
    else:  # the base as it stands, as ``remote_seen`` would hold it
        remote_join = ""
        remote_columns = "b.data, CASE WHEN b.key IS NULL THEN NULL ELSE '' END, NULL"
        remote_digest = "b.digest"
    low: str | None = None
    while True:
        # the range's end is read before the range's transaction, which takes the lock first:
        # on SQLite a read would pin a snapshot that the lock could find stale. Keys that
        # become dirty meanwhile fall in this range or a later one (the last is open-ended).
        params = {"t": target, "lo": low, "n": mirror.CHUNK - 1}
        high = session.scalar(
            text(
                "SELECT key FROM dirty WHERE target = :t"
                + ("" if low is None else " AND key > :lo")
                + " ORDER BY key LIMIT 1 OFFSET :n"
            ),
            params,
        )
        session.commit()
        params["hi"] = high
        bounds = ("" if low is None else " AND key > :lo") + (
            "" if high is None else " AND key <= :hi"
        )
        take_write_turn(session)
        if postgres:
            session.execute(text(_DIRTY_LOCK))
        # a key with a projection is its contact's (keys are unique, and any write to a
        # contact drops its projection): only the others are looked up
        unprojected = session.scalars(
            text(
                f"SELECT c.id FROM dirty d JOIN contact c ON c.{view.key} = d.key "
                f"WHERE d.target = :t{bounds.replace('key', 'd.key')} "
                "AND NOT EXISTS (SELECT 1 FROM local_seen k WHERE k.target = :t AND k.key = d.key) "
                "AND c.deleted = :no "
                "AND EXISTS (SELECT 1 FROM membership m "
                "  WHERE m.contact_id = c.id AND m.list_name = :l) "
                "AND NOT EXISTS (SELECT 1 FROM local_seen s "
                "  WHERE s.contact_id = c.id AND s.target = :t)"
            ),
            {**params, "no": False, "l": view.local_list},
        ).all()
        _project(session, target, view, unprojected, project)
        # this range's rows of ``stage_diff`` are those numbered after it: the settle step
        # looks at them alone (all of the target's rows, by their key, made each range scan
        # every range's before it: a first push of a million keys, 500 ranges of 2,000)
        params["seq"] = session.scalar(text("SELECT coalesce(max(seq), 0) FROM stage_diff"))
        session.execute(
            text(
                "INSERT INTO stage_diff "
                "(target, key, local, base, remote, raw_status, opted_out_elsewhere) "
                f"SELECT :t, k.key, l.data, b.data, {remote_columns} FROM ("
                f"  SELECT key FROM dirty WHERE target = :t{bounds}"
                # the unseen keys not dirty already: no temporary index of the keys for a UNION
                f"  UNION ALL SELECT key FROM base u WHERE target = :t AND unseen > 0{bounds} "
                "   AND NOT EXISTS (SELECT 1 FROM dirty e WHERE e.target = :t AND e.key = u.key)"
                ") AS k "
                "LEFT JOIN local_seen l ON l.target = :t AND l.key = k.key "
                "LEFT JOIN base b ON b.target = :t AND b.key = k.key "
                f"{remote_join}"
                f"WHERE NOT (l.digest {same} b.digest AND {remote_digest} {same} b.digest) "
                "OR b.unseen > 0"
            ),
            params,
        )
        if settle:
            session.execute(
                text(
                    f"DELETE FROM dirty WHERE target = :t{bounds} AND key NOT IN "
                    "(SELECT key FROM stage_diff WHERE seq > :seq AND target = :t)"
                ),
                params,
            )
        session.commit()
        if high is None:
            break
        low = high
    return int(
        session.scalar(text("SELECT count(*) FROM stage_diff WHERE target = :t"), {"t": target})
        or 0
    )
