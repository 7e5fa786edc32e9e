"""Pure creates: keys new locally and nothing else, decided, journalled and sent in bulk.

A first push of a large list is almost all keys with a local row and nothing else: no base,
no remote row, no write in flight, no record kept off the list, no rejection, no conflict.
``reconcile`` decides each of them the same way, ``create_remote``: create the local row at
the provider, whose base it becomes once confirmed. The store finds them in one query a chunk
(``mirror.pure_creates``) instead of each going through the full decision with its look-ups.

What this path leaves to the general one (``syncd.engine.chunk``), unchanged: a key whose
contact the provider moved (``Owners.moved``) and a contact not mailable on the list (its
create carries its opt-out, or is withheld where the provider cannot hold one: DESIGN §3
rule 3). It runs only where its creates would go out in the general path too: a complete
export of this cycle (rule 1), no dry run, a provider that answers each call itself
(no ``confirms_later``).

The safety rules are kept as the general path keeps them: each chunk's creates are journalled
(``InFlight``) and taken out of the diff in one transaction, committed before any of them is
sent; the answer is read row by row in ``syncd.engine.push``, where a confirmed create gets its
base and its history step and a refused one its rejection, as any other row.
"""

from __future__ import annotations

from sqlmodel import Session

from syncd.core.batching import Batcher
from syncd.core.calls import create_of
from syncd.core.projection import Projection
from syncd.engine.push import push_batch
from syncd.engine.state import CycleState
from syncd.providers.base import RowChange
from syncd.store import mirror

CHUNK = 2000  # keys read, journalled and taken out of the diff in one transaction


def eligible(cycle: CycleState) -> bool:
    return (
        not cycle.dry_run
        and cycle.options.scope is None
        and cycle.caps.export
        and cycle.remote_read
        and cycle.result.export_complete
        and not cycle.caps.confirms_later
    )


def push_creates(session: Session, cycle: CycleState, batcher: Batcher) -> None:
    """Push the pure creates in full calls of their own; the last part-filled call's rows
    join ``batcher``, the cycle's, so that they share a call with the other creates."""
    if not eligible(cycle):
        return
    target = cycle.target.name
    moved = cycle.owners.moved
    waiting: list[RowChange] = []  # journalled, not yet a whole call's worth
    from_json = Projection.from_json
    last = 0
    while True:  # each push checks for a stop first (``push_batch``)
        mirror.take_write_turn(session)
        rows = mirror.pure_creates(session, target, cycle.options.peers, last, CHUNK)
        if not rows:
            session.rollback()
            break
        last = rows[-1][0]
        seqs: list[int] = []
        journal: list[tuple[str, str]] = []
        for seq, key, data in rows:
            if key in moved:
                continue  # the new key's decision carries the move
            row = from_json(data, keep_text=True)
            if not row.mailable:
                continue  # its opt-out goes with it, or it is withheld: the general path
            seqs.append(seq)
            journal.append((key, data))
            waiting.append(create_of(row))
        mirror.set_in_flight_texts(session, target, journal)
        mirror.drop_diff_rows(session, seqs)
        session.commit()  # journalled, and decided: the general path does not see them
        full, waiting = batcher.whole_calls(waiting)
        for batch in full:
            push_batch(session, cycle, batch)
    # the last part-filled call's rows share a call with the cycle's other creates
    full = []
    for change in waiting:
        full += batcher.add(change, with_status=False, overwrite_tags=False)
    for batch in full:
        push_batch(session, cycle, batch)
