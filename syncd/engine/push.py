"""Pushing one batch and reading its answers.

A batch (``syncd.core.batching``) is one or more provider calls over the same rows. Before the
first call the chunk's journal is committed, so a crash during the call leaves a trace the next
export reads back. Each call's answer is read row by row; a row fails if any of its calls failed it.
Only confirmed rows move the base (DESIGN §3 rule 4); refused ones are recorded as rejections
with the provider's code and message, and their keys stay differing. Each row's history step
(what was sent, and the answer) is added in the transaction that records the answer. The
batch's confirmations are committed before the next call, so a crash leaves only the batch in
flight unconfirmed.

A provider that confirms by calling back (``Capabilities.confirms_later``) gets the batch
recorded as a job before any call (a callback may beat the answer home,
``syncd.engine.confirm_later``): rows its answer leaves pending wait for the callback, which moves
their base; rows the answer already settled leave the job. A call that fails outright abandons the
job.

In a dry run nothing is sent: the calls are only described (``PlannedCall``, shown by
``syncd plan``) and their rows counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from sqlmodel import Session

# by module path, not from the package: syncd.engine imports this module (no circle)
import syncd.engine.confirm_later as confirm_later
import syncd.engine.records as records
from syncd.clock import stamp
from syncd.core.batching import Batch
from syncd.core.projection import Projection
from syncd.core.reconcile import Decision
from syncd.engine.result import PlannedCall
from syncd.engine.state import CycleState
from syncd.providers.base import JobTicket, Provider, PushCall, RowOutcome
from syncd.store import history, mirror
from syncd.store.models import Rejection

log = logging.getLogger("syncd.engine")


def push_batch(session: Session, cycle: CycleState, batch: Batch) -> None:
    cycle.check_stop()
    dry = cycle.dry_run
    if not dry:
        log.debug("pushing %d rows (%s)", len(batch.rows), batch.calls[0].op)
        session.commit()  # the journal (in_flight) is durable before the call
    outcomes: dict[str, RowOutcome] = {}
    calls = batch.calls
    answered: list[tuple[JobTicket, bool, list[RowOutcome]]] = []
    if cycle.caps.confirms_later and not dry:
        calls = _open_job(session, cycle, batch)
    for call in calls:
        cycle.result.calls.append(_describe(cycle.provider, call))
        if dry:
            continue
        try:
            answers = cycle.provider.push(call)
        except Exception as exc:
            if call.job is not None:  # no part of this batch will be waited for
                session.rollback()
                confirm_later.abandon(session, call.job.job_id, f"{type(exc).__name__}: {exc}")
                session.commit()
            raise
        cycle.rows_sent += len(call.rows)
        cycle.progress("calls sent", len(cycle.result.calls))  # systemd's STATUS, a terminal
        cycle.progress("rows sent", cycle.rows_sent, max(cycle.planned_rows, cycle.rows_sent))
        if call.job is not None:
            answered.append((call.job, any(a.ok for a in answers), answers))
        for answer in answers:
            first = outcomes.get(answer.key)
            if first is None or (first.ok and (not answer.ok or answer.pending)):
                outcomes[answer.key] = answer  # a row fails if any of its calls failed it
    counts = cycle.result.counts
    target = cycle.target.name
    job_id = next((c.job.job_id for c in calls if c.job is not None), None)
    settled_now: list[str] = []
    uniform = all(call.rows is batch.rows for call in calls)
    sent = {} if dry or uniform else _sent_by_key(cycle.provider, calls)
    sent_of = _SentOf(cycle.provider, calls) if uniform and not dry else None
    steps: list[tuple[Any, ...]] = []
    settle: list[Projection] = []
    forget: list[str] = []
    created: list[tuple[str, str]] = []  # pure creates confirmed: (key, the row's JSON)
    left: list[Projection] = []  # taken off the list, kept by the provider
    at = history.now_ms()  # when the answers were read
    run_id = cycle.run_id
    for change in batch.rows:
        key = change.row.key
        d = cycle.pending.pop(key, None)
        if dry:
            counts[change.op] += 1
            continue
        outcome = outcomes.get(key)
        if d is None:
            # a pure create (``syncd.engine.creates``): decided in bulk, as reconcile decides
            # it; confirmed, its base is the row sent and its history step the usual one
            if outcome is not None and outcome.ok and not outcome.pending:
                counts["create"] += 1
                created.append((key, change.row.to_json()))
                assert sent_of is not None  # a pure create's batch has its rows in every call
                steps.append(
                    (at, run_id, target, key, "create_remote", sent_of(change.row), _CONFIRMED)
                )
                continue
            d = pure_create(change.row)
        entry = sent_of.entry(change.row) if sent_of is not None else sent.get(d.key)
        step = partial(_step, cycle, d, entry, at)
        if outcome is not None and outcome.ok and outcome.pending:
            counts["awaiting"] += 1  # its callback moves the base (syncd.engine.confirm_later)
            steps.append(step("awaiting", reason="accepted; the provider's callback confirms it"))
            continue
        settled_now.append(d.key)  # by the answer: its callback has nothing left to settle
        if outcome is not None and outcome.ok:
            counts[change.op] += 1
            if change.op == "exclude" and cycle.caps.tags:
                left.append(change.row)  # its tags stay there (see OffList)
            if d.base is None:
                forget.append(d.key)
            else:
                settle.append(d.base)
            steps.append(step("confirmed"))
            continue
        counts["rejected"] += 1
        cycle.held_keys.add(d.key)
        cycle.result.rejected_codes[outcome.code if outcome else "no_answer"] += 1
        reason = outcome or RowOutcome(
            d.key, False, "no_answer", "the answer did not mention this row", True
        )
        session.merge(
            Rejection(
                target=target,
                key=d.key,
                digest=change.row.digest(),
                code=reason.code,
                message=reason.message,
                retryable=reason.retryable,
                at=stamp(),
            )
        )
        steps.append(
            step("rejected", code=reason.code, message=reason.message, retryable=reason.retryable)
        )
    if dry:
        return
    if job_id is not None:
        # rows the answers settled leave the job before the job can settle the rest
        confirm_later.release_rows(session, job_id, settled_now)
        for ticket, accepted, answers in answered:
            refusal = "" if accepted or not answers else answers[0].message
            confirm_later.record_answer(session, ticket, accepted, refusal)
    log.debug("answer read: moving the base of %d rows", len(settle) + len(forget))
    mirror.set_base(session, target, settle)
    # a pure create had no off-list record, rejection or base when it was chosen, and only
    # this target's cycle (under its lease) writes them: there is none of them to drop
    mirror.set_base_texts(session, target, created)
    mirror.drop_base(session, target, forget)
    mirror.drop_off_list(session, target, [p.key for p in settle])
    mirror.set_off_list(session, target, left)
    mirror.drop_in_flight(session, target, [c.row.key for c in batch.rows])
    mirror.drop_rejections(session, target, [p.key for p in settle] + forget)
    history.add_tuples(session, steps)
    session.commit()  # this batch's confirmations are durable before the next call
    log.debug("base updated")


def _open_job(session: Session, cycle: CycleState, batch: Batch) -> tuple[PushCall, ...]:
    """Record the batch as a job before any call (a callback may beat the answer home)."""
    files = [cycle.provider.hosted_file(call) for call in batch.calls]
    if all(f is None for f in files):
        return batch.calls
    rows = []
    for change in batch.rows:
        d = cycle.pending[change.row.key]
        rows.append(confirm_later.JobRowSpec(d.key, change.op, d.base, change.row.digest()))
    tickets = confirm_later.open_job(
        session, cycle.target.name, rows, files, cycle.target.callback_timeout
    )
    session.commit()
    return tuple(
        call if ticket is None else replace(call, job=ticket)
        for call, ticket in zip(batch.calls, tickets, strict=True)
    )


def _step(
    cycle: CycleState, d: Decision, sent: dict[str, Any] | None, at: str, result: str, **said: Any
) -> tuple[Any, ...]:
    notes = cycle.local_notes.pop(d.key, {})  # the local half of a merge, written in its chunk
    return history.as_tuple(
        records.step(cycle.run_id, cycle.target.name, d, result, sent=sent, at=at, **notes, **said)
    )


def pure_create(row: Projection) -> Decision:
    """What ``reconcile`` decides for a key new locally and nothing else (``create_remote``)."""
    return Decision(row.key, "create_remote", "create", row, None, base=row)


#: the outcome of a confirmed row that wrote nothing locally, met no conflict and says nothing
_CONFIRMED = history.encode({"result": "confirmed"})


class _SentOf:
    """What a row's calls carried (``_sent_by_key``'s entry) for a batch whose every call
    carries every row (a batch of creates): the parts shared by the rows made once."""

    def __init__(self, provider: Provider, calls: tuple[PushCall, ...]) -> None:
        first = calls[0]
        self.head = {"op": first.op, "call": provider.method_name(first), "calls": len(calls)}
        self.columns = [c for call in calls for c in call.columns]
        self.with_tags = any(call.with_tags for call in calls)
        self.with_status = any(call.with_status for call in calls)
        self.flags = {
            "overwrite_tags": any(call.overwrite_tags for call in calls),
            "overwrite_lists": any(call.overwrite_lists for call in calls),
        }
        self._parts: tuple[str, list[tuple[str, str]], str] | None = None

    def entry(self, row: Projection) -> dict[str, Any]:
        values = row.field_map
        entry: dict[str, Any] = {
            **self.head,
            "fields": {c: values.get(c, "") for c in self.columns},
            "flags": dict(self.flags),
        }
        if self.with_tags:
            entry["tags"] = sorted(row.tags)
        if self.with_status:
            entry["status"] = row.status
            entry["list_status"] = row.list_status
        return entry

    def __call__(self, row: Projection) -> str:
        """``history.encode(self.entry(row))``, the same text (a test compares), from parts
        encoded once, the keys in the order ``sort_keys`` puts them. A call that carries the
        status (an opt-out) takes the general way."""
        if self.with_status:
            return history.encode(self.entry(row))
        if self._parts is None:
            enc = history.encode
            self._parts = (
                f'{{"call": {enc(self.head["call"])}, "calls": {enc(self.head["calls"])}, '
                '"fields": {',
                [(c, enc(c)) for c in sorted(set(self.columns))],
                f'}}, "flags": {enc(self.flags)}, "op": {enc(self.head["op"])}',
            )
        head, names, tail = self._parts
        values = row.field_map
        # each value and tag a str: straight to the C function ``encode`` calls for one
        text = _encode_text
        fields = ", ".join([f"{name}: {text(values.get(c, ''))}" for c, name in names])
        if self.with_tags:
            tags = ", ".join(map(text, sorted(row.tags)))
            return f'{head}{fields}{tail}, "tags": [{tags}]}}'
        return f"{head}{fields}{tail}}}"


#: a str as JSON text, as ``history.encode`` writes it (not escaped to ASCII)
_encode_text: Callable[[str], str] = json.encoder.encode_basestring


def _sent_by_key(provider: Provider, calls: tuple[PushCall, ...]) -> dict[str, dict[str, Any]]:
    """What each row's calls carried: the method, the fields with their values, the tags and
    consent where a call carried them, and the flags (several calls: columns split)."""
    found: dict[str, dict[str, Any]] = {}
    for call in calls:
        method = provider.method_name(call)
        for change in call.rows:
            row = change.row
            entry = found.setdefault(
                row.key,
                {
                    "op": call.op,
                    "call": method,
                    "calls": 0,
                    "fields": {},
                    "flags": {"overwrite_tags": False, "overwrite_lists": False},
                },
            )
            entry["calls"] += 1
            values = row.field_map
            entry["fields"].update({c: values.get(c, "") for c in call.columns})
            if call.with_tags:
                entry["tags"] = sorted(row.tags)
            if call.with_status:
                entry["status"] = row.status
                entry["list_status"] = row.list_status
            flags = entry["flags"]
            flags["overwrite_tags"] = flags["overwrite_tags"] or call.overwrite_tags
            flags["overwrite_lists"] = flags["overwrite_lists"] or call.overwrite_lists
    return found


def _describe(provider: Provider, call: PushCall) -> PlannedCall:
    return PlannedCall(
        method=provider.method_name(call),
        op=call.op,
        rows=len(call.rows),
        columns=call.columns,
        overwrite_tags=call.overwrite_tags,
        overwrite_lists=call.overwrite_lists,
        first_rows=tuple(provider.wire_rows(call, 3)),
    )
