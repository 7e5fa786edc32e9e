"""One cycle for one target: export, stage, diff, reconcile, guard, push, apply, record.

The order of writes is what keeps the safety rules (DESIGN §3):

- the remote export and the local projection are staged, and the database finds the keys that
  differ; nothing is inferred from an export that did not complete (rule 1);
- a first pass reconciles every differing key and counts deletions before anything is written,
  so the mass-delete guard can stop the cycle while both sides are untouched (rule 2);
- remote-born changes are applied to the mirror chunk by chunk, each chunk in one transaction;
- each provider call's answer is read row by row, and only confirmed rows move the base
  (rule 4) — a crash anywhere leaves a difference the next cycle sees again;
- a provider that confirms by calling back (``Capabilities.confirms_later``) gets its batch
  recorded as a job first (``syncd.jobs``): its rows wait for the callback, are not sent again
  meanwhile, and move the base when it comes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd import jobs
from syncd.clock import stamp
from syncd.config import TargetConfig
from syncd.errors import ExportIncomplete, MassDeleteRefused, ProviderError, ProviderUnreachable
from syncd.plan import Batch, Batcher
from syncd.projection import Projection, digest_of
from syncd.providers.base import (
    Capabilities,
    JobTicket,
    Provider,
    PushCall,
    RowChange,
    RowOutcome,
)
from syncd.reconcile import Decision, FieldConflict, Rules, Sent, Take, reconcile
from syncd.references import Owners, find_owners
from syncd.store import mirror
from syncd.store.models import Base, Conflict, Contact, Rejection, Run, StageLocal, StageRemote

log = logging.getLogger("syncd.engine")

#: Below this many deletions the share guard does not apply: on a small list one deletion is
#: already a large share, and stopping there would only teach people to pass --allow-mass-delete.
MASS_DELETE_FLOOR = 10

Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class RemoteChange:
    """A change that came from the provider and was applied to the mirror (for the outbox)."""

    target: str
    key: str
    kind: str  # the reconciliation case: pull, create_local, remote_deleted, merge, ...
    before: Projection | None
    after: Projection | None


@dataclass
class CycleOptions:
    dry_run: bool = False
    allow_mass_delete: bool = False
    progress: Progress | None = None
    # Called inside the transaction that applies a remote-born change to the mirror, so that
    # what it records (the outbox) commits or rolls back together with the change.
    on_remote_change: Callable[[Session, RemoteChange], None] | None = None
    # Asked between batches: when it says stop, the cycle ends after the batch in flight.
    should_stop: Callable[[], bool] | None = None
    cycle_id: str | None = None  # given by the daemon so its log lines can carry it
    holder: str | None = None  # the process holding the target's lease, kept in the run record


class _Stopped(Exception):
    """The daemon is stopping: leave after the batch in flight, everything confirmed kept."""


@dataclass(frozen=True, slots=True)
class PlannedCall:
    method: str
    op: str
    rows: int
    columns: tuple[str, ...]
    overwrite_tags: bool
    overwrite_lists: bool
    first_rows: tuple[dict[str, str], ...]


@dataclass
class CycleResult:
    target: str
    cycle_id: str
    outcome: str = (
        "running"  # converged | rejected | conflicts | refused | unreachable | failed | planned
    )
    message: str = ""
    export_complete: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    rejected_codes: Counter[str] = field(default_factory=Counter)  # provider code -> rows
    unsupported: list[str] = field(default_factory=list)  # first contacts the provider cannot serve
    calls: list[PlannedCall] = field(default_factory=list)
    api_calls: int = 0
    write_calls: int = 0

    @property
    def exit_code(self) -> int:
        if self.outcome in ("converged", "planned", "stopped"):
            return 0
        if self.outcome in ("unreachable", "failed"):
            return 3
        return 1

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "target": self.target,
            "cycle": self.cycle_id,
            "outcome": self.outcome,
            "message": self.message,
            "export_complete": self.export_complete,
            "pushed": c["create"] + c["update"],
            "created": c["create"],
            "updated": c["update"],
            "deleted": c["delete"] + c["exclude"],
            "pulled": c["pulled"],
            "removed_local": c["removed_local"],
            "rejected": c["rejected"] + c["held_rejected"],
            "conflicts": c["conflicts_open"],
            "deferred": c["deferred"],
            "edited_during_cycle": c["edited_during_cycle"],
            "kept_opted_out": c["keep_opted_out"],
            "unsupported": c["unsupported"],
            "withheld_opted_out": c["withheld_opted_out"],
            "awaiting_confirmation": c["awaiting"],
            "still_awaiting": c["still_awaiting"],
            "confirmed_later": c["confirmed_later"],
            "api_calls": self.api_calls,
            "write_calls": self.write_calls,
        }


def run_cycle(
    db: Engine, target: TargetConfig, provider: Provider, options: CycleOptions | None = None
) -> CycleResult:
    return _Cycle(db, target, provider, options or CycleOptions()).run()


def project_local(
    contact: mirror.MemberRow, view: mirror.LocalView, caps: Capabilities
) -> Projection | None:
    """The mirror's contact as this target sees it (remote field names, folded status)."""
    key = getattr(contact, view.key)
    if not key:
        return None
    local_fields: dict[str, Any] = json.loads(contact.fields)
    fields: dict[str, str | None] = {}
    for remote_name, local_name in view.fields.items():
        value = (
            getattr(contact, local_name)
            if local_name in ("email", "phone")
            else local_fields.get(local_name)
        )
        fields[remote_name] = None if value is None else str(value)
    if view.reference is not None:
        fields[view.reference] = contact.ref
    tags = json.loads(contact.tags) if caps.tags else ()
    return Projection.build(key, fields, tags, caps.fold_status(contact.status))


def _now_ms() -> str:
    """Run records to the millisecond: cycles a second apart must still be told apart."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Cycle:
    def __init__(self, db: Engine, target: TargetConfig, provider: Provider, options: CycleOptions):
        self.db = db
        self.target = target
        self.provider = provider
        self.options = options
        self.caps = provider.capabilities
        self.view = mirror.LocalView(
            target.key, target.local_list_name, dict(target.fields), target.reference_field
        )
        self.rules = Rules(
            policy=target.policy_for,
            edit_beats_delete=target.on_edit_delete == "edit",
            reference=target.reference_field,
        )
        self.owners = Owners()  # remote rows that are syncd's own (reference_field)
        self.sent: dict[str, Sent] = {}  # the chunk's writes whose answer was lost
        self.off_list: dict[str, Projection] = {}  # the chunk's keys syncd took off the list
        self.result = CycleResult(target.name, options.cycle_id or uuid.uuid4().hex[:12])
        self.pending: dict[str, Decision] = {}
        self.held_keys: set[str] = set()

    # -- the cycle ------------------------------------------------------------------------

    def run(self) -> CycleResult:
        dry = self.options.dry_run
        run_id = None if dry else self._record_start()
        calls_before = self.provider.stats.total()
        writes_before = self.provider.stats.writes
        try:
            self.provider.prepare(
                self.target.remote_fields,
                create_missing=self.target.create_missing_fields and not dry,
            )
            with Session(self.db) as session:
                try:
                    self._stage(session)
                    self.owners = find_owners(session, self.target.name, self.view, self.rules)
                    self._guard(session)
                    self._execute(session)
                finally:
                    if dry:
                        # plan writes nothing anywhere: what is not committed goes back, and the
                        # export's scratch rows (committed as they streamed in) go
                        session.rollback()
                        mirror.clear_stage(session, self.target.name)
                        session.commit()
            self.result.outcome = "planned" if dry else self._outcome()
            if self.result.outcome == "rejected" and not self.result.unsupported:
                said = (self.result.message, self._rejected_message())  # e.g. export incomplete
                self.result.message = "; ".join(part for part in said if part)
            if self.result.unsupported and not self.result.message:
                more = self.result.counts["unsupported"] - len(self.result.unsupported)
                self.result.message = (
                    "cannot be done at this provider: "
                    + "; ".join(self.result.unsupported)
                    + (f"; and {more} more" if more > 0 else "")
                )
        except MassDeleteRefused as exc:
            self.result.outcome, self.result.message = "refused", str(exc)
        except _Stopped:
            self.result.outcome = "stopped"
            self.result.message = "stopped by shutdown; the next cycle carries on from the base"
        except ProviderUnreachable as exc:
            self.result.outcome, self.result.message = "unreachable", str(exc)
        except ProviderError as exc:
            self.result.outcome, self.result.message = "failed", f"{exc.code}: {exc}"
        except Exception as exc:  # a bug or a broken store: record it, never half-report it
            log.exception("cycle failed unexpectedly", extra={"target": self.target.name})
            self.result.outcome = "failed"
            self.result.message = f"internal error: {type(exc).__name__}: {exc}"
        self.result.api_calls = self.provider.stats.total() - calls_before
        self.result.write_calls = self.provider.stats.writes - writes_before
        if run_id is not None:
            self._record_end(run_id)
        return self.result

    def _outcome(self) -> str:
        c = self.result.counts
        if c["conflicts_open"]:
            return "conflicts"
        if c["rejected"] or c["held_rejected"] or c["unsupported"]:
            return "rejected"
        if c["awaiting"] or c["still_awaiting"]:
            return "awaiting"  # sent; the provider's callback will confirm (syncd.jobs)
        return "converged"

    def _rejected_message(self) -> str:
        """Why a cycle did not converge although every call was answered: the refused rows."""
        c, codes = self.result.counts, self.result.rejected_codes
        parts = []
        if c["rejected"]:
            by_code = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            parts.append(f"{c['rejected']} rows refused by the provider ({by_code})")
        if c["held_rejected"]:
            parts.append(
                f"{c['held_rejected']} rows held since an earlier refusal until their local "
                "record changes"
            )
        return "; ".join(parts)

    def _progress(self, stage: str, n: int) -> None:
        if self.options.progress:
            self.options.progress(stage, n)

    # -- stage and diff -------------------------------------------------------------------

    def _stage(self, session: Session) -> None:
        name = self.target.name
        mirror.clear_stage(session, name)
        if self.caps.export:
            log.debug("exporting the remote list")
            session.commit()  # no write lock held while the provider prepares the export
            try:
                n = mirror.stage_rows(session, StageRemote, self._remote_rows(), commit_chunks=True)
                self._progress("exported", n)
            except ExportIncomplete as exc:
                # Rule 1: a partial export proves nothing about absence. Start over from the base.
                session.rollback()
                mirror.clear_stage(session, name)
                mirror.stage_remote_as_base(session, name)
                self.result.export_complete = False
                self.result.message = f"export incomplete, pushing local changes only: {exc}"
        else:
            mirror.stage_remote_as_base(session, name)
        n = mirror.stage_rows(session, StageLocal, self._local_rows(session))
        self._progress("staged local", n)
        n = mirror.compute_diff(session, name)
        self._progress("differing keys", n)
        log.debug("planning: %d differing keys", n)
        if not self.options.dry_run:
            session.commit()

    def _remote_rows(self) -> Iterator[dict[str, str]]:
        for remote in self.provider.export():
            data = remote.projection.to_json()
            yield {
                "target": self.target.name,
                "key": remote.projection.key,
                "digest": digest_of(data),
                "data": data,
                "raw_status": remote.raw_status,
            }

    def _local_rows(self, session: Session) -> Iterator[dict[str, str]]:
        for contact in mirror.iter_local_members(session, self.view):
            p = project_local(contact, self.view, self.caps)
            if p is None:
                self.result.counts["no_key"] += 1  # a phone target meets a contact with no phone
                continue
            data = p.to_json()
            yield {
                "target": self.target.name,
                "key": p.key,
                "digest": digest_of(data),
                "data": data,
            }

    def _in_flight(self, session: Session, chunk: list[mirror.DiffRow]) -> None:
        """The lost answers among this chunk's keys (see InFlight), and those taken off the list
        that the provider keeps (see OffList), for ``_decide``."""
        keys = [row.key for row in chunk]
        self.sent = mirror.in_flight(session, self.target.name, keys)
        self.off_list = mirror.off_list(session, self.target.name, keys) if self.caps.tags else {}

    def _decide(self, row: mirror.DiffRow, takes: dict[str, Take]) -> Decision:
        return reconcile(
            row.local,
            row.base,
            row.remote,
            self.rules,
            takes.get(row.key),
            self.owners.by_remote_key.get(row.key),
            self.owners.moved.get(row.key),
            self.sent.get(row.key),
            self.off_list.get(row.key),
        )

    # -- pass 1: count before writing -----------------------------------------------------

    def _guard(self, session: Session) -> None:
        remote_deletes = local_removes = 0
        takes = self._resolutions(session)
        for chunk in mirror.iter_diff(session, self.target.name):
            self._in_flight(session, chunk)
            for row in chunk:
                d = self._decide(row, takes)
                # only deletions the provider can carry out count towards the guard
                remote_deletes += d.remote_op == "delete" and (
                    self.caps.delete or self.caps.exclude
                )
                local_removes += d.local_op == "remove"
        synced = mirror.count_rows(session, Base, self.target.name)
        limit = self.target.max_delete_fraction * synced
        for side, n in (("remote", remote_deletes), ("local", local_removes)):
            if n > MASS_DELETE_FLOOR and n > limit and not self.options.allow_mass_delete:
                raise MassDeleteRefused(
                    f"{self.target.name}: this cycle would delete {n} of {synced} synced contacts "
                    f"on the {side} side, more than max_delete_fraction="
                    f"{self.target.max_delete_fraction}; nothing was written. Check the source, "
                    f"then run once with --allow-mass-delete if it is intended."
                )

    # -- pass 2: carry out ----------------------------------------------------------------

    def _execute(self, session: Session) -> None:
        if self.caps.confirms_later and not self.options.dry_run:
            jobs.expire(session, self.target.name)  # released rows are in the diff: sent again
            session.commit()
        takes = self._resolutions(session)
        rejections = self._rejections(session)
        batcher = Batcher(self.caps, tuple(self.target.remote_fields))
        for chunk in mirror.iter_diff(session, self.target.name):
            self._check_stop()
            full = self._apply_chunk(session, chunk, takes, rejections, batcher)
            if not self.options.dry_run:
                session.commit()  # the chunk's local writes with their journal, then the calls
            for batch in full:
                self._push(session, batch)
        for batch in batcher.flush():
            self._push(session, batch)
        if not self.options.dry_run:
            self._forget_stale(session, rejections)
            if self.result.export_complete:
                # every write of this cycle was answered, and every lost answer of an earlier
                # one has been read back from this export (or settled with its key)
                mirror.drop_in_flight(session, self.target.name)
            mirror.clear_stage(session, self.target.name)
            session.commit()

    def _apply_chunk(
        self,
        session: Session,
        chunk: list[mirror.DiffRow],
        takes: dict[str, Take],
        rejections: dict[str, Rejection],
        batcher: Batcher,
    ) -> list[Batch]:
        """Decide the chunk and write its local half; return the batches it filled, to be
        pushed once that is committed (the lock taken here is not held across a call)."""
        counts = self.result.counts
        if not self.options.dry_run:
            mirror.take_write_turn(session)
        self._in_flight(session, chunk)
        decisions = [(row, self._decide(row, takes)) for row in chunk]
        edited = self._edited_since_staged(session, decisions)
        wanted = [d.key for _, d in decisions if d.local_op or d.remote_op == "delete"]
        wanted += [d.rekey_from for _, d in decisions if d.rekey_from]
        contacts = mirror.contacts_by_key(session, self.view, wanted) if wanted else {}
        full: list[Batch] = []
        awaiting = (
            jobs.pending_keys(session, self.target.name, [d.key for _, d in decisions])
            if self.caps.confirms_later
            else set()
        )
        settle: list[Projection] = []
        forget: list[str] = []
        flying: list[tuple[Projection, Projection | None]] = []
        leaving: list[Projection] = []
        for row, d in decisions:
            if d.key in edited:
                counts["edited_during_cycle"] += 1  # decided on a stale read: next cycle
                self.held_keys.add(d.key)
                continue
            if d.held:
                counts["conflicts_open"] += 1
                self.held_keys.add(d.key)
                self._record_conflict(session, d, row)
                continue
            if d.keep_base:
                counts[d.case] += 1
                continue
            if d.key in awaiting and d.remote_op is not None:
                counts["still_awaiting"] += 1  # sent before; its callback has not come yet
                self.held_keys.add(d.key)
                continue
            counts["conflicts_settled"] += len(d.conflicts)
            if d.local_op is not None:
                self._apply_local(session, d, row, contacts.get(d.rekey_from or d.key))
            if d.rekey_from is not None:
                forget.append(d.rekey_from)  # the old key's base goes with the move
            if d.remote_op is None:
                if d.base is None:
                    forget.append(d.key)
                else:
                    settle.append(d.base)
                continue
            change = self._row_change(d, contacts.get(d.key))
            if change is None:
                if d.remote_op == "delete" and not self.options.dry_run:
                    forget.append(d.key)  # reported once; the provider cannot act on it
                continue
            if change.op in ("delete", "exclude") and d.remote_op != "delete":
                # an opt-out the provider cannot hold: off the list, and forget what was there
                d = replace(d, base=None)
            held = rejections.get(d.key)
            if held is not None and not held.retryable and held.digest == change.row.digest():
                counts["held_rejected"] += 1  # refused before; waits until the record changes
                self.held_keys.add(d.key)
                continue
            if not self.result.export_complete and change.op in ("create", "delete", "exclude"):
                counts["deferred"] += 1  # the remote state is unknown: no creates or deletes
                continue
            self.pending[d.key] = d
            if change.op in ("create", "update"):
                flying.append((change.row, change.remote))
            elif change.op == "exclude" and self.caps.tags:
                leaving.append(change.row)
            full += batcher.add(
                change, with_status=d.pushes_status, overwrite_tags=d.overwrite_tags
            )
        if not self.options.dry_run:
            mirror.set_base(session, self.target.name, settle)
            mirror.drop_base(session, self.target.name, forget)
            mirror.drop_off_list(session, self.target.name, [p.key for p in settle])
            self._journal(session, flying, leaving)
            # a lost answer is settled once its key's base moves: kept, it would misread the
            # next export against a base it no longer belongs to
            mirror.drop_in_flight(session, self.target.name, [p.key for p in settle] + forget)
            self._clear_conflicts(session, [d.key for _, d in decisions if not d.held])
        return full

    def _edited_since_staged(
        self, session: Session, decisions: list[tuple[mirror.DiffRow, Decision]]
    ) -> set[str]:
        """Keys whose decision writes the mirror but whose contact changed since it was staged
        (an inbox file applied during this cycle). Written back, the pulled row would undo that
        local edit; left alone, the next cycle decides them again from what is there now.
        Called with the write lock held, so nothing can change them between this read and the
        chunk's commit."""
        staged: dict[str, Projection | None] = {}
        for row, d in decisions:
            if d.local_op is not None:
                staged[d.key] = row.local
            if d.rekey_from is not None and self.owners.by_remote_key.get(d.key) is not None:
                staged[d.rekey_from] = self.owners.by_remote_key[d.key].local
        if not staged or self.options.dry_run:
            return set()
        now: dict[str, Projection] = {}
        for member in mirror.local_members(session, self.view, sorted(staged)):
            p = project_local(member, self.view, self.caps)
            if p is not None:
                now[p.key] = p
        changed = {key for key, was in staged.items() if now.get(key) != was}
        keys = {d.key for _, d in decisions if d.key in changed or d.rekey_from in changed}
        if keys:
            log.info(
                "%d contacts were edited locally while this cycle ran; the next cycle takes "
                "them up",
                len(keys),
                extra={"target": self.target.name},
            )
        return keys

    def _journal(
        self,
        session: Session,
        flying: list[tuple[Projection, Projection | None]],
        leaving: list[Projection],
    ) -> None:
        """Record the chunk's writes before they are sent, in the transaction of its local
        writes, so that a local write is never committed without its remote half and a lost
        answer still leaves a trace:

        - creates and updates (InFlight), for the next export to read back;
        - excludes at a provider that keeps the contact and its tags (OffList): the state left
          there, from which a later return to the list starts. Recorded only on confirmation,
          an exclude whose answer was lost would leave no record, and tags removed locally in
          the meantime would stay at the provider. A record whose exclude did not land is
          harmless: it is read only when the contact is created again, and dropped once the
          key has a base.
        """
        if self.caps.export:  # only an export can read them back
            mirror.set_in_flight(session, self.target.name, flying)
        mirror.set_off_list(session, self.target.name, leaving)

    def _row_change(self, d: Decision, contact: Contact | None) -> RowChange | None:
        """The write for a decision, as far as the provider's capabilities allow (or None)."""
        assert d.remote_op is not None and d.remote_row is not None
        if d.pushes_status and d.remote_row.status not in self.caps.statuses:
            return self._opt_out_without_status(d)
        if d.remote_op != "delete":
            return RowChange(d.remote_op, d.remote_row, d.remote_before)
        tombstoned = contact is None or contact.deleted
        if tombstoned and self.target.on_local_delete == "delete" and self.caps.delete:
            return RowChange("delete", d.remote_row, d.remote_before)
        return self._off_the_list(d, "the provider has no documented way to delete a contact")

    def _opt_out_without_status(self, d: Decision) -> RowChange | None:
        """The provider cannot record an opt-out: it must not be asked to hold the contact.

        Never created there (it would be messaged as active); if it is there already, it is
        taken off the list, and reported where even that is impossible.
        """
        if d.remote_op == "create":
            self.result.counts["withheld_opted_out"] += 1
            return None
        return self._off_the_list(d, "opted out, but the provider can neither record an opt-out "
                                  "nor remove the contact: remove it by hand")  # fmt: skip

    def _off_the_list(self, d: Decision, reason: str) -> RowChange | None:
        assert d.remote_row is not None
        if self.caps.exclude:
            return RowChange("exclude", d.remote_row, d.remote_before)
        if self.caps.delete:
            return RowChange("delete", d.remote_row, d.remote_before)
        self.result.counts["unsupported"] += 1
        self._report_unsupported(d.key, reason)
        return None

    def _report_unsupported(self, key: str, reason: str) -> None:
        """Per contact, never silently: a log line each, and the first few in the run message."""
        log.warning("%s: %s", key, reason, extra={"target": self.target.name})
        shown = self.result.unsupported
        if len(shown) < 20:
            shown.append(f"{key}: {reason}")

    def _apply_local(
        self, session: Session, d: Decision, row: mirror.DiffRow, contact: Contact | None
    ) -> None:
        counts = self.result.counts
        if self.options.dry_run:
            counts["pulled" if d.local_op == "upsert" else "removed_local"] += 1
            return
        if d.local_op == "upsert":
            assert d.local_row is not None
            mirror.apply_remote_state(session, self.view, d.local_row, row.raw_status, contact)
            counts["pulled"] += 1
        elif mirror.remove_from_list(session, self.view, contact):
            counts["removed_local"] += 1
        if self.options.on_remote_change is not None:
            change = RemoteChange(self.target.name, d.key, d.case, row.local, d.local_row)
            self.options.on_remote_change(session, change)

    def _check_stop(self) -> None:
        if self.options.should_stop is not None and self.options.should_stop():
            raise _Stopped

    def _push(self, session: Session, batch: Batch) -> None:
        self._check_stop()
        if not self.options.dry_run:
            log.debug("pushing %d rows (%s)", len(batch.rows), batch.calls[0].op)
            session.commit()  # the journal (in_flight) is durable before the call
        outcomes: dict[str, RowOutcome] = {}
        calls = batch.calls
        answered: list[tuple[JobTicket, bool, list[RowOutcome]]] = []
        if self.caps.confirms_later and not self.options.dry_run:
            calls = self._open_job(session, batch)
        for call in calls:
            self.result.calls.append(self._describe(call))
            if self.options.dry_run:
                continue
            try:
                answers = self.provider.push(call)
            except Exception as exc:
                if call.job is not None:  # no part of this batch will be waited for
                    session.rollback()
                    jobs.abandon(session, call.job.job_id, f"{type(exc).__name__}: {exc}")
                    session.commit()
                raise
            if call.job is not None:
                answered.append((call.job, any(a.ok for a in answers), answers))
            for answer in answers:
                first = outcomes.get(answer.key)
                if first is None or (first.ok and (not answer.ok or answer.pending)):
                    outcomes[answer.key] = answer  # a row fails if any of its calls failed it
        counts = self.result.counts
        job_id = next((c.job.job_id for c in calls if c.job is not None), None)
        settled_now: list[str] = []
        settle: list[Projection] = []
        forget: list[str] = []
        left: list[Projection] = []  # taken off the list, kept by the provider
        for change in batch.rows:
            d = self.pending.pop(change.row.key)
            if self.options.dry_run:
                counts[change.op] += 1
                continue
            outcome = outcomes.get(change.row.key)
            if outcome is not None and outcome.ok and outcome.pending:
                counts["awaiting"] += 1  # the job's callback moves the base (syncd.jobs)
                continue
            settled_now.append(d.key)  # by the answer: its callback has nothing left to settle
            if outcome is not None and outcome.ok:
                counts[change.op] += 1
                if change.op == "exclude" and self.caps.tags:
                    left.append(change.row)  # its tags stay there (see OffList)
                if d.base is None:
                    forget.append(d.key)
                else:
                    settle.append(d.base)
                continue
            counts["rejected"] += 1
            self.held_keys.add(d.key)
            self.result.rejected_codes[outcome.code if outcome else "no_answer"] += 1
            reason = outcome or RowOutcome(
                d.key, False, "no_answer", "the answer did not mention this row", True
            )
            session.merge(
                Rejection(
                    target=self.target.name,
                    key=d.key,
                    digest=change.row.digest(),
                    code=reason.code,
                    message=reason.message,
                    retryable=reason.retryable,
                    at=stamp(),
                )
            )
        if self.options.dry_run:
            return
        if job_id is not None:
            # rows the answers settled leave the job before the job can settle the rest
            jobs.release_rows(session, job_id, settled_now)
            for ticket, accepted, answers in answered:
                refusal = "" if accepted or not answers else answers[0].message
                jobs.record_answer(session, ticket, accepted, refusal)
        log.debug("answer read: moving the base of %d rows", len(settle) + len(forget))
        mirror.set_base(session, self.target.name, settle)
        mirror.drop_base(session, self.target.name, forget)
        mirror.drop_off_list(session, self.target.name, [p.key for p in settle])
        mirror.set_off_list(session, self.target.name, left)
        mirror.drop_in_flight(session, self.target.name, [c.row.key for c in batch.rows])
        mirror.drop_rejections(session, self.target.name, [p.key for p in settle] + forget)
        session.commit()  # this batch's confirmations are durable before the next call
        log.debug("base updated")

    def _open_job(self, session: Session, batch: Batch) -> tuple[PushCall, ...]:
        """Record the batch as a job before any call (a callback may beat the answer home)."""
        files = [self.provider.hosted_file(call) for call in batch.calls]
        if all(f is None for f in files):
            return batch.calls
        rows = []
        for change in batch.rows:
            d = self.pending[change.row.key]
            rows.append(jobs.JobRowSpec(d.key, change.op, d.base, change.row.digest()))
        tickets = jobs.open_job(
            session, self.target.name, rows, files, self.target.callback_timeout
        )
        session.commit()
        return tuple(
            call if ticket is None else replace(call, job=ticket)
            for call, ticket in zip(batch.calls, tickets, strict=True)
        )

    def _describe(self, call: PushCall) -> PlannedCall:
        return PlannedCall(
            method=self.provider.method_name(call),
            op=call.op,
            rows=len(call.rows),
            columns=call.columns,
            overwrite_tags=call.overwrite_tags,
            overwrite_lists=call.overwrite_lists,
            first_rows=tuple(self.provider.wire_rows(call, 3)),
        )

    # -- conflicts, rejections, runs ------------------------------------------------------

    def _resolutions(self, session: Session) -> dict[str, Take]:
        rows = session.execute(
            select(col(Conflict.key), col(Conflict.resolution)).where(
                col(Conflict.target) == self.target.name,
                col(Conflict.resolution).is_not(None),
            )
        )
        return {k: r for k, r in rows if r in ("local", "remote")}

    def _rejections(self, session: Session) -> dict[str, Rejection]:
        rows = session.execute(
            select(Rejection).where(col(Rejection.target) == self.target.name)
        ).scalars()
        return {r.key: r for r in rows}

    def _record_conflict(self, session: Session, d: Decision, row: mirror.DiffRow) -> None:
        if self.options.dry_run:
            return
        session.merge(
            Conflict(
                target=self.target.name,
                key=d.key,
                fields=json.dumps([_conflict_dict(c) for c in d.conflicts]),
                local=row.local.to_json() if row.local else None,
                remote=row.remote.to_json() if row.remote else None,
                base=row.base.to_json() if row.base else None,
                resolution=None,
                at=stamp(),
            )
        )

    def _clear_conflicts(self, session: Session, keys: list[str]) -> None:
        for i in range(0, len(keys), 500):
            session.execute(
                delete(Conflict).where(
                    col(Conflict.target) == self.target.name,
                    col(Conflict.key).in_(keys[i : i + 500]),
                )
            )

    def _forget_stale(self, session: Session, rejections: dict[str, Rejection]) -> None:
        """Rejections and conflicts whose key no longer differs have settled by themselves."""
        stale = [k for k in rejections if k not in self.held_keys]
        mirror.drop_rejections(session, self.target.name, stale)
        open_keys = session.execute(
            select(col(Conflict.key)).where(col(Conflict.target) == self.target.name)
        ).scalars()
        self._clear_conflicts(session, [k for k in open_keys if k not in self.held_keys])

    def _record_start(self) -> int:
        with Session(self.db) as session:
            run = Run(target=self.target.name, started_at=_now_ms(), holder=self.options.holder)
            session.add(run)
            session.commit()
            assert run.id is not None
            return run.id

    def _record_end(self, run_id: int) -> None:
        with Session(self.db) as session:
            run = session.get(Run, run_id)
            if run is None:
                return
            run.finished_at = _now_ms()
            run.outcome = self.result.outcome
            run.summary = json.dumps(self.result.summary())
            run.message = self.result.message
            session.commit()


def _conflict_dict(c: FieldConflict) -> dict[str, str | None]:
    return {"field": c.field, "local": c.local, "remote": c.remote, "base": c.base}
