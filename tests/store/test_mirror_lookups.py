"""The mirror's per-key look-ups (``syncd.store.mirror``) on SQLite and PostgreSQL alike."""

from __future__ import annotations

from sqlmodel import Session

from syncd.store import mirror, open_engine
from syncd.store.models import Contact


def test_own_contacts_reads_live_contacts_and_tombstones_past_one_page(store_url: str) -> None:
    db = open_engine(store_url)
    try:
        # more keys than one IN list holds (500), so that the second page is read too
        emails = [f"user{i:04}@example.com" for i in range(1203)]
        with Session(db) as session:
            session.add_all(
                Contact(
                    email=email,
                    phone=f"+4470000{i:05}",
                    status=("active", "unsubscribed", "blocked")[i % 3],
                    deleted=i % 7 == 0,  # a delete's tombstone keeps its status
                )
                for i, email in enumerate(emails)
            )
            session.commit()
            by_email = mirror.LocalView("email", "news", {})
            asked = [*emails, "nobody@example.com", emails[0]]  # unknown and repeated keys
            found = mirror.own_contacts(session, by_email, asked)
            assert {e: m.status for e, m in found.items()} == {
                e: ("active", "unsubscribed", "blocked")[i % 3] for i, e in enumerate(emails)
            }
            # off the list, the contact has no consent of the list's: it reads as active there
            assert {m.state for m in found.values()} == {"active"}
            by_phone = mirror.LocalView("phone", "news", {})
            (member,) = mirror.own_contacts(session, by_phone, ["+447000000004", "+1555"]).values()
            assert (member.email, member.phone, member.status) == (
                "user0004@example.com",
                "+447000000004",
                "unsubscribed",
            )
            assert mirror.own_contacts(session, by_email, []) == {}
    finally:
        db.dispose()
