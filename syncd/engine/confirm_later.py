"""Batches a provider confirms later, by calling syncd back (Netcore's hosted-file bulk upload).

The life of a job, and why each step is where it is:

1. ``open_job``: the batch's rows (with the base each would move to), one part per provider call
   with its file and two fresh secrets, are committed *before* the provider is called, because
   its callback may arrive before its answer does.
2. ``record_answer``: each call's answer marks its part sent (the provider took it) or failed.
3. The provider fetches each part's file (``serve_file``) and later POSTs the part's callback
   (``receive_callback``). Rows the callback names as refused become rejections.
4. When no part is still waiting, the job's remaining rows move the base in the same
   transaction as the last callback (DESIGN rule 4: only confirmed rows move the base).

Until then the rows are neither sent again (``pending_keys``) nor counted as confirmed. A job
whose callbacks have not all come by its deadline expires (``expire``): its rows are released
and the next cycle sends them again, which is harmless because the upload is an upsert. A
callback with a wrong secret, for an unknown, finished or expired job, or a second one for the
same part, is refused and logged; it changes nothing.

Secrets travel only in the URLs handed to the provider; the store keeps their SHA-256 and the
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from syncd.clock import stamp
from syncd.core.projection import Projection
from syncd.providers.base import CallbackReport, JobTicket
from syncd.store import history, mirror, transaction
from syncd.store.models import PushJob, PushJobPart, PushJobRow, Rejection

log = logging.getLogger("syncd.engine.confirm_later")

#: Reads a callback body for the job's target: (body, content type) -> report.
CallbackReader = Callable[[bytes, str], CallbackReport]

_NO_SUCH_SECRET = hashlib.sha256(b"no such part").hexdigest()


@dataclass(frozen=True, slots=True)
class JobRowSpec:
    key: str
    op: str
    base: Projection | None  # what the base becomes once confirmed; None: the key is forgotten
    digest: str  # of the row as sent


@dataclass(frozen=True, slots=True)
class Answer:
    """What the listener sends back to the provider: an HTTP status and a short reason."""

    status: int
    reason: str
    body: bytes = b""


def _now() -> datetime:
    return datetime.now(UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _same(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, _hash(secret))


# --------------------------------------------------------------------------- the engine's side


def open_job(
    session: Session,
    target: str,
    rows: Sequence[JobRowSpec],
    files: Sequence[bytes | None],
    ttl: float,
) -> list[JobTicket | None]:
    """Record a batch and one part per call that has a file; the tickets carry the secrets.

    The caller commits before calling the provider (its callback may come before its answer).
    """
    job_id = uuid.uuid4().hex
    now = _now()
    tickets: list[JobTicket | None] = []
    for part, body in enumerate(files):
        if body is None:
            tickets.append(None)
            continue
        ticket = JobTicket(job_id, part, secrets.token_urlsafe(24), secrets.token_urlsafe(24))
        session.add(
            PushJobPart(
                job_id=job_id,
                part=part,
                file_secret=_hash(ticket.file_secret),
                callback_secret=_hash(ticket.callback_secret),
                body=body,
            )
        )
        tickets.append(ticket)
    parts = sum(t is not None for t in tickets)
    session.add(
        PushJob(
            id=job_id,
            target=target,
            created_at=stamp(now),
            expires_at=stamp(now + timedelta(seconds=ttl)),
            parts=parts,
        )
    )
    for r in rows:
        session.add(
            PushJobRow(
                job_id=job_id,
                key=r.key,
                target=target,
                op=r.op,
                base=None if r.base is None else r.base.to_json(),
                digest=r.digest,
            )
        )
    return tickets


def record_answer(session: Session, ticket: JobTicket, accepted: bool, message: str = "") -> None:
    """The provider answered the call: it took it (a callback will follow) or refused it."""
    part = session.get(PushJobPart, (ticket.job_id, ticket.part))
    if part is None:
        return
    part.requestid = ticket.requestid
    if part.state in ("pending", "sent"):  # a callback may already have marked it done
        part.state = "sent" if accepted else "failed"
        if not accepted:
            part.body, part.result = None, json.dumps({"refused": message})
    session.flush()
    job = session.get(PushJob, ticket.job_id)
    if job is not None:
        _settle_if_complete(session, job)


def release_rows(session: Session, job_id: str, keys: Iterable[str]) -> None:
    """Rows the answer already refused: they no longer wait for this job."""
    wanted = list(keys)
    for i in range(0, len(wanted), 500):
        session.execute(
            delete(PushJobRow).where(
                col(PushJobRow.job_id) == job_id, col(PushJobRow.key).in_(wanted[i : i + 500])
            )
        )


def abandon(session: Session, job_id: str, reason: str) -> None:
    """A call of the job failed outright: nothing of it is waited for; the rows go again."""
    job = session.get(PushJob, job_id)
    if job is None or job.state != "open":
        return
    session.execute(delete(PushJobRow).where(col(PushJobRow.job_id) == job_id))
    session.execute(update(PushJobPart).where(col(PushJobPart.job_id) == job_id).values(body=None))
    job.state = "failed"
    log.warning("job %s abandoned: %s", job_id, reason, extra={"target": job.target})


def pending_keys(session: Session, target: str, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` wait for a callback of an open job (they must not be sent again)."""
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        found.update(
            session.execute(
                select(col(PushJobRow.key))
                .join(PushJob, col(PushJob.id) == col(PushJobRow.job_id))
                .where(
                    col(PushJobRow.target) == target,
                    col(PushJob.state) == "open",
                    col(PushJobRow.key).in_(keys[i : i + 500]),
                )
            ).scalars()
        )
    return found


def expire(session: Session, target: str | None = None, now: datetime | None = None) -> int:
    """Expire open jobs past their deadline; returns the rows released to be sent again."""
    deadline = stamp(now or _now())
    query = select(PushJob).where(col(PushJob.state) == "open", col(PushJob.expires_at) < deadline)
    if target is not None:
        query = query.where(col(PushJob.target) == target)
    released = 0
    for job in session.execute(query).scalars().all():
        rows = session.execute(
            select(func.count()).select_from(PushJobRow).where(col(PushJobRow.job_id) == job.id)
        ).scalar_one()
        session.execute(delete(PushJobRow).where(col(PushJobRow.job_id) == job.id))
        session.execute(
            update(PushJobPart).where(col(PushJobPart.job_id) == job.id).values(body=None)
        )
        job.state = "expired"
        released += rows
        log.warning(
            "job %s: no confirmation from the provider by %s; its %d rows will be sent again",
            job.id,
            job.expires_at,
            rows,
            extra={"target": job.target},
        )
    return released


def waiting_rows(session: Session, target: str) -> int:
    """Rows of the target that wait for a callback."""
    return int(
        session.execute(
            select(func.count())
            .select_from(PushJobRow)
            .join(PushJob, col(PushJob.id) == col(PushJobRow.job_id))
            .where(col(PushJobRow.target) == target, col(PushJob.state) == "open")
        ).scalar_one()
    )


def open_jobs(db: Engine, targets: Sequence[str]) -> int:
    """How many jobs of these targets still wait for callbacks."""
    with Session(db) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(PushJob)
                .where(col(PushJob.state) == "open", col(PushJob.target).in_(targets))
            ).scalar_one()
        )


# --------------------------------------------------------------------------- the listener's side


def serve_file(db: Engine, job_id: str, part_no: int, secret: str) -> Answer:
    """The part's file, to whoever holds its secret, while the job waits for it."""
    with Session(db) as session:
        part = session.get(PushJobPart, (job_id, part_no))
        if not _same(part.file_secret if part else _NO_SUCH_SECRET, secret) or part is None:
            log.warning("refused a request for the file of job %s part %s", job_id, part_no)
            return Answer(404, "not found")
        if part.body is None:
            return Answer(410, "this file is no longer served")
        return Answer(200, "ok", part.body)


def receive_callback(
    db: Engine,
    job_id: str,
    part_no: int,
    secret: str,
    body: bytes,
    content_type: str,
    reader_for: Callable[[str], CallbackReader | None],
) -> Answer:
    """Apply one part's callback; everything it changes commits together or not at all."""
    with transaction(db) as session:
        part = session.get(PushJobPart, (job_id, part_no))
        job = session.get(PushJob, job_id)
        if not _same(part.callback_secret if part else _NO_SUCH_SECRET, secret) or not (
            part and job
        ):
            log.warning("refused a callback for job %s part %s: wrong secret", job_id, part_no)
            return Answer(403, "forbidden")
        where = {"target": job.target}
        if part.state in ("done", "failed"):
            log.warning(
                "refused a second callback for job %s part %s", job_id, part_no, extra=where
            )
            return Answer(409, "this part was already settled")
        if job.state != "open":
            log.warning(
                "refused a callback for job %s part %s: the job is %s",
                job_id,
                part_no,
                job.state,
                extra=where,
            )
            return Answer(410, f"this job is {job.state}")
        reader = reader_for(job.target)
        if reader is None:
            log.warning(
                "callback for job %s: target %s is no longer configured", job_id, job.target
            )
            return Answer(410, "the target is no longer configured")
        try:
            report = reader(body, content_type)
        except ValueError as exc:
            log.warning("callback for job %s part %s: %s", job_id, part_no, exc, extra=where)
            return Answer(400, str(exc))
        part.state, part.body, part.callback_at = "done", None, stamp(_now())
        part.result = json.dumps(
            {"processed": report.processed, "message": report.message, "failed": len(report.failed)}
        )
        _reject(session, job, report)
        session.flush()
        _settle_if_complete(session, job)
        log.info(
            "job %s part %s confirmed by the provider (%d rows refused)",
            job_id,
            part_no,
            len(report.failed),
            extra=where,
        )
        return Answer(200, "ok")


def _reject(session: Session, job: PushJob, report: CallbackReport) -> None:
    """Rows the callback refused (all of them when the call failed as a whole)."""
    query = select(PushJobRow).where(col(PushJobRow.job_id) == job.id)
    if report.processed:
        if not report.failed:
            return
        query = query.where(col(PushJobRow.key).in_(list(report.failed)))
    now = stamp(_now())
    steps = []
    for row in session.execute(query).scalars().all():
        reason = report.failed.get(row.key) or report.message or "the provider's job failed"
        said = {"code": "invalid" if report.processed else "job_failed", "message": reason}
        steps.append(_step(job, row, "rejected", **said))
        session.merge(
            Rejection(
                target=job.target,
                key=row.key,
                digest=row.digest,
                code="invalid" if report.processed else "job_failed",
                message=reason,
                retryable=not report.processed,  # a failed job is tried again, a bad row is held
                at=now,
            )
        )
        session.delete(row)
    history.add(session, steps)


def _step(job: PushJob, row: PushJobRow, result: str, **said: str) -> dict[str, object]:
    """A row's history step when the provider's callback settles it (``syncd explain``)."""
    outcome = {"result": result, "job": job.id, **said}
    return history.row(None, job.target, row.key, "confirmed_later", outcome, {"op": row.op})


def _settle_if_complete(session: Session, job: PushJob) -> None:
    """Once no part waits any more, the rows left move the base and the job is done."""
    if job.state != "open":
        return
    waiting = session.execute(
        select(func.count())
        .select_from(PushJobPart)
        .where(
            col(PushJobPart.job_id) == job.id,
            col(PushJobPart.state).in_(["pending", "sent"]),
        )
    ).scalar_one()
    if waiting:
        return
    rows = session.execute(select(PushJobRow).where(col(PushJobRow.job_id) == job.id)).scalars()
    settle: list[Projection] = []
    forget: list[str] = []
    steps = []
    for row in rows.all():
        steps.append(_step(job, row, "confirmed"))
        if row.base is None:
            forget.append(row.key)
        else:
            settle.append(Projection.from_json(row.base))
    mirror.set_base(session, job.target, settle)
    mirror.drop_base(session, job.target, forget)
    mirror.drop_rejections(session, job.target, [p.key for p in settle] + forget)
    history.add(session, steps)
    session.execute(delete(PushJobRow).where(col(PushJobRow.job_id) == job.id))
    failed = session.execute(
        select(func.count())
        .select_from(PushJobPart)
        .where(col(PushJobPart.job_id) == job.id, col(PushJobPart.state) == "failed")
    ).scalar_one()
    job.state = "failed" if failed else "done"
