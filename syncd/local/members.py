"""A local list's members as the two ways that replace a whole list see them.

A snapshot file (``syncd.local.inbox.apply``) and a full read of a ``[[source]]``
(``syncd.local.source.pull``) both set a list's membership to what they name: they find the
live contacts their rows' keys name, count the members before, and ask the mass-delete guard
(DESIGN §3 rule 2) whether so many may leave. The guard is one rule, so it is written once here:
more than ``MASS_DELETE_MIN`` members leaving AND more than the smallest ``max_delete_fraction``
among the targets fed by the list (the targets' default when no target is) of the members before
refuses the whole file or read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlmodel import col

from syncd.config import Config, TargetConfig
from syncd.store.models import Contact, Membership

MASS_DELETE_MIN = 10  # a list replacement may always remove this many members
CHUNK = 500  # keys per IN (...) query


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ids_by_key(conn: Connection, emails: Sequence[str], phones: Sequence[str]) -> dict[str, int]:
    """Live contacts' ids by email and by phone (one dict: emails and phones never collide)."""
    found: dict[str, int] = {}
    for column, keys in (
        (Contact.email, sorted(set(emails))),
        (Contact.phone, sorted(set(phones))),
    ):
        for chunk in _chunks(keys):
            for key, contact_id in conn.execute(
                select(col(column), col(Contact.id)).where(
                    col(column).in_(chunk), col(Contact.deleted).is_(False)
                )
            ):
                if key is not None and contact_id is not None:
                    found[key] = contact_id
    return found


def member_count(conn: Connection, list_name: str) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(Membership)
            .where(col(Membership.list_name) == list_name)
        ).scalar_one()
    )


def mass_delete_fraction(config: Config, list_name: str) -> tuple[float, list[str]]:
    """The share of ``list_name``'s members that may leave at once, and the targets it feeds."""
    fed = [t for t in config.target if t.local_list_name == list_name]
    if not fed:
        default = TargetConfig.model_fields["max_delete_fraction"].default
        return float(default), []
    return min(t.max_delete_fraction for t in fed), [t.name for t in fed]


def mass_delete_refusal(
    config: Config, list_name: str, leaving: int, before: int, what: str
) -> str | None:
    """Why the guard refuses ``what`` (``the snapshot``, ``the read``) taking ``leaving`` of the
    ``before`` members off ``list_name``; ``None`` when it may."""
    fraction, targets = mass_delete_fraction(config, list_name)
    if leaving <= MASS_DELETE_MIN or leaving <= fraction * before:
        return None
    fed = f"targets {', '.join(targets)}" if targets else "the default"
    return (
        f"mass-delete guard: {what} would remove {leaving} of the {before} members of list "
        f"{list_name!r} ({leaving / before:.0%}), more than the {fraction:.0%} allowed by {fed} "
        "(max_delete_fraction); nothing was applied"
    )
